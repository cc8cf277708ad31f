//! SIGHUP reloads (issue 16, item 2): a server re-reads its authorized peers and cuts the
//! live sessions of a key no longer listed while the others carry on; a broken file is
//! rejected and the running configuration kept; `tunnel --config` starts added tunnels and
//! stops removed ones; `status` shows when the configuration was loaded.

use std::io::{Read, Write};
use std::net::TcpStream;

mod bounded;
mod support;

use std::process::{Command, Stdio};

use support::*;

fn hup(p: &Proc) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("send SIGHUP");
}

/// One line through an echo tunnel and back.
fn round_trip(conn: &mut TcpStream, line: &str) {
    conn.write_all(line.as_bytes())
        .expect("write through the tunnel");
    let mut back = vec![0u8; line.len()];
    conn.read_exact(&mut back).expect("read the echo");
    assert_eq!(String::from_utf8_lossy(&back), line);
}

/// Whether a new connection through a tunnel client gets an echo (false: reset or closed).
fn new_session_works(port: u16) -> bool {
    // A refused client may reset the local connection before connect() returns.
    let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    if conn.write_all(b"hello\n").is_err() {
        return false;
    }
    let mut back = [0u8; 6];
    conn.read_exact(&mut back).is_ok() && &back == b"hello\n"
}

fn server_status(env: &Env, pid: u32) -> serde_json::Value {
    env.status()
        .as_array()
        .expect("an array of processes")
        .iter()
        .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        .cloned()
        .unwrap_or_else(|| panic!("no process {pid} in status"))
}

#[test]
fn sighup_cuts_the_sessions_of_a_removed_key_and_keeps_the_others() {
    let env = Env::new("reload-revoke");
    let server_key = env.keygen("server");
    let alice = env.keygen("alice");
    let bob = env.keygen("bob");
    let target = echo_target();
    let authorized = env.path("authorized_peers");
    let write_peers = |lines: &[&str]| {
        std::fs::write(&authorized, lines.join("\n") + "\n").expect("write authorized peers")
    };
    write_peers(&[&alice.public, &bob.public]);
    let (mut server, port) = env.start_listening(
        "server",
        |port| {
            [
                "tunnel",
                "server",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--to",
                &target.addr.to_string(),
                "--key",
                server_key.file(),
                "--authorized-peers",
                authorized.to_str().unwrap(),
            ]
            .map(String::from)
            .to_vec()
        },
        "tunnel server ready",
    );
    let pin = ["--server-key", server_key.public.as_str()];
    let (_alice_client, alice_port) = env.tunnel_client("alice", &alice, port, &pin);
    let (_bob_client, bob_port) = env.tunnel_client("bob", &bob, port, &pin);
    let mut alice_conn = connect(alice_port);
    let mut bob_conn = connect(bob_port);
    round_trip(&mut alice_conn, "alice 1\n");
    round_trip(&mut bob_conn, "bob 1\n");
    let loaded = server_status(&env, server.pid())["config_loaded_unix"]
        .as_u64()
        .expect("status shows when the configuration was loaded");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        loaded <= now && loaded + 60 > now,
        "loaded at {loaded}, now {now}"
    );

    // A broken file: rejected, with the reason; the old set stays (bob still gets in).
    write_peers(&[&alice.public, "sessionkey-x25519 not-base64!"]);
    hup(&server);
    let log = server.expect_log("reload rejected");
    assert!(
        log.contains("the running configuration is kept") && log.contains("authorized_peers:2"),
        "the rejection names the file and line:\n{log}"
    );
    round_trip(&mut alice_conn, "alice 2\n");
    round_trip(&mut bob_conn, "bob 2\n");
    assert!(
        new_session_works(bob_port),
        "bob was refused after a rejected reload"
    );

    // Bob removed: his live sessions are cut at once, he is refused afterwards, alice's
    // session carries on.
    write_peers(&[&alice.public]);
    hup(&server);
    let log = server.expect_log("configuration reloaded");
    assert!(
        log.contains(&format!("key {} is no longer authorized", bob.fingerprint)),
        "the cut names bob's fingerprint:\n{log}"
    );
    assert!(!log.contains(&format!("key {} is no longer", alice.fingerprint)));
    expect_reset(&mut bob_conn, "bob's session after his key was removed");
    round_trip(&mut alice_conn, "alice 3\n");
    assert!(
        !new_session_works(bob_port),
        "bob got in after his key was removed"
    );
    server.expect_log(&format!("refused peer key {}", bob.fingerprint));
    round_trip(&mut alice_conn, "alice 4\n");
    assert!(new_session_works(alice_port));
    let status = server_status(&env, server.pid());
    assert!(status["config_loaded"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert!(status["config_loaded_unix"].as_u64() >= Some(loaded));
    let table = env.run(&["status"]);
    assert!(
        table
            .stdout
            .contains(&format!("pid {}: configuration loaded 20", server.pid())),
        "{table:?}"
    );
}

#[test]
fn sighup_starts_added_tunnels_and_stops_removed_ones() {
    let env = Env::new("reload-config");
    let server_key = env.keygen("server");
    let client_key = env.keygen("client");
    let target = echo_target();
    let (a, b, c, front) = (free_port(), free_port(), free_port(), free_port());
    let config = env.path("tunnels.toml");
    let server = |name: &str, port: u16| {
        format!(
            "[[tunnel]]\nrole = \"server\"\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\n\
             to = \"{}\"\nkey = \"server.key\"\nallow = [\"{}\"]\n\n",
            target.addr, client_key.public
        )
    };
    let client = format!(
        "[[tunnel]]\nrole = \"client\"\nname = \"front\"\nlisten = \"127.0.0.1:{front}\"\n\
         server = \"127.0.0.1:{a}\"\nkey = \"client.key\"\nserver_key = \"{}\"\n\n",
        server_key.public
    );
    std::fs::write(&config, server("a", a) + &server("b", b) + &client).unwrap();
    let mut p = env
        .start_on(
            "tunnels",
            &["tunnel", "--config", config.to_str().unwrap()].map(String::from),
            "tunnel client ready",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    wait_listening(b, &mut p).unwrap();
    let mut conn = connect(front);
    round_trip(&mut conn, "before\n");

    // b removed, c added; a and front unchanged.
    std::fs::write(&config, server("a", a) + &server("c", c) + &client).unwrap();
    hup(&p);
    let log = p.expect_log("configuration reloaded");
    assert!(
        log.contains("tunnel removed from the configuration; stopped"),
        "{log}"
    );
    wait_listening(c, &mut p).unwrap();
    assert!(
        TcpStream::connect(("127.0.0.1", b)).is_err(),
        "the removed tunnel still listens:\n{log}"
    );
    // The session through the unchanged tunnels carries on, and new ones open.
    round_trip(&mut conn, "after\n");
    assert!(new_session_works(front));

    // A file that does not parse changes nothing.
    std::fs::write(&config, "[[tunnel]]\nrole = \"server\"\nlisten = 5\n").unwrap();
    hup(&p);
    let log = p.expect_log("reload rejected");
    assert!(log.contains("tunnels.toml:3"), "{log}");
    round_trip(&mut conn, "still\n");
    assert!(TcpStream::connect(("127.0.0.1", c)).is_ok());
}

fn openssl(args: &[&str]) -> String {
    let out = bounded::run_within(
        Command::new("openssl").args(args).stdin(Stdio::null()),
        EXIT_TIMEOUT,
        &format!("openssl {args:?}"),
    );
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first certificate the TLS server at `addr` presents, as PEM.
fn presented_cert(addr: &str) -> String {
    let text = openssl(&["s_client", "-connect", addr, "-showcerts"]);
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end = text[start..]
        .find("-----END CERTIFICATE-----")
        .expect("its end")
        + start;
    text[start..end].to_string()
}

#[test]
fn sighup_makes_the_relay_serve_its_renewed_certificate() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new("reload-relay");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    for name in ["first", "second"] {
        let (key, crt) = (
            env.path(&format!("{name}.key.pem")),
            env.path(&format!("{name}.pem")),
        );
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &s(&key),
            "-out",
            &s(&crt),
        ]);
    }
    let pem = |name: &str| {
        let text = std::fs::read_to_string(env.path(name)).unwrap();
        let end = text.find("-----END CERTIFICATE-----").unwrap();
        text[..end].to_string()
    };
    let (cert, key) = (env.path("relay.pem"), env.path("relay.key.pem"));
    let install = |name: &str| {
        std::fs::copy(env.path(&format!("{name}.pem")), &cert).unwrap();
        std::fs::copy(env.path(&format!("{name}.key.pem")), &key).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    install("first");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let state = env.path("state");
    let mut relay = env.spawn(
        "relay",
        &[
            "--state",
            &s(&state),
            "relay",
            "serve",
            "--listen",
            &addr,
            "--cert",
            &s(&cert),
            "--key",
            &s(&key),
        ],
        Stdio::null(),
    );
    wait_listening(port, &mut relay).unwrap();
    assert_eq!(presented_cert(&addr), pem("first.pem"));

    // A key file that does not parse: rejected, the certificate in use stays.
    std::fs::write(&key, "not a key\n").unwrap();
    hup(&relay);
    let log = relay.expect_log("reload rejected, the certificate in use is kept");
    assert!(
        log.contains("relay.key.pem"),
        "the error names the file:\n{log}"
    );
    assert_eq!(presented_cert(&addr), pem("first.pem"));

    // The renewed pair: new connections get it.
    install("second");
    hup(&relay);
    relay.expect_log("certificate reloaded with a new key");
    assert_eq!(presented_cert(&addr), pem("second.pem"));
    assert!(relay.try_exit().is_none());
}
