//! A tunnel server under abuse, as an attacker on the network sees it: floods of idle
//! connections under a low descriptor limit, a flood on one tunnel of several, and a
//! control directory planted by someone else.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use support::*;

/// The descriptor limit the servers here run under (`ulimit -n`, soft and hard).
const NOFILE: u32 = 64;

/// Idle connections the attacker opens: several times the descriptor limit.
const FLOOD: usize = 200;

/// Open `n` idle TCP connections to `port` (those the server resets at once are counted
/// as made too: the attack is the attempt).
fn flood(port: u16, n: usize) -> Vec<TcpStream> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    (0..n)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok())
        .collect()
}

/// One round trip through a tunnel client listening on `local`.
fn round_trip(local: u16, text: &[u8]) -> Result<(), String> {
    let addr: SocketAddr = ([127, 0, 0, 1], local).into();
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("connect: {e}"))?;
    conn.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    conn.write_all(text).map_err(|e| format!("send: {e}"))?;
    let mut got = vec![0u8; text.len()];
    conn.read_exact(&mut got)
        .map_err(|e| format!("receive: {e}"))?;
    if got != text {
        return Err("the echo differs".into());
    }
    Ok(())
}

/// Start a process under the descriptor limit; ready when `ready` is logged.
fn start_limited(env: &Env, name: &str, args: &[String], ready: &str) -> Proc {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = env.spawn_limited(name, &args, Stdio::null(), Some(NOFILE));
    p.wait_log(ready, READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    p
}

/// The reproduction: a tunnel server under `ulimit -n 64` with its handshake
/// bounds lifted, so that a flood of idle connections runs it out of descriptors (accept
/// fails with EMFILE). It stays up, says so in a few log lines, and serves an authorized
/// client once the flood ends.
#[test]
fn a_flood_past_the_descriptor_limit_does_not_stop_the_server() {
    let env = Env::new("flood-emfile");
    let server_key = env.keygen("server");
    let client_key = env.keygen("client");
    let target = echo_target();
    let port = free_port();
    let mut args = Env::server_args(
        "flooded",
        port,
        &server_key,
        target.addr,
        &[&client_key.public],
    );
    args.extend(
        [
            "--max-handshakes",
            "1000",
            "--max-handshakes-per-source",
            "1000",
            "--handshakes-per-second-per-source",
            "100000",
        ]
        .map(String::from),
    );
    let mut server = start_limited(&env, "server", &args, "tunnel server ready");
    let log = server.expect_log("open-files limit");
    assert!(log.contains(&format!("open-files limit {NOFILE}")), "{log}");

    let held = flood(port, FLOOD);
    let log = server.expect_log("out of descriptors");
    assert!(log.contains("Too many open files"), "{log}");
    assert_eq!(
        server.try_exit(),
        None,
        "the flood stopped the server:\n{log}"
    );
    drop(held);

    let (_client, local) = env.tunnel_client(
        "client",
        &client_key,
        port,
        &["--server-key", &server_key.public],
    );
    // The server works through what the flood left in its accept queue, then serves.
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let mut last = String::new();
    while Instant::now() < deadline {
        match round_trip(local, b"after the flood") {
            Ok(()) => break,
            Err(e) => last = e,
        }
        assert_eq!(
            server.try_exit(),
            None,
            "the server exited:\n{}",
            server.stderr()
        );
        thread::sleep(Duration::from_millis(200));
    }
    round_trip(local, b"after the flood, again")
        .unwrap_or_else(|e| panic!("not served after the flood: {e} (before: {last})"));
    assert_eq!(server.try_exit(), None);
    // Rate-limited: a few lines per 10 s, not one per connection.
    let log = server.stderr();
    let lines = log
        .lines()
        .filter(|l| l.contains("cannot accept") || l.contains("handshake failed"))
        .count();
    assert!(
        lines < FLOOD / 4,
        "{lines} failure lines for {FLOOD} connections:\n{log}"
    );
}

/// Two server tunnels of one config file in one process, under `ulimit -n 64` with the
/// default bounds: a flood on one is reset before any handshake work, and the other
/// serves during the flood; the flooded one serves after it.
#[test]
fn a_flood_on_one_tunnel_does_not_stop_another() {
    let env = Env::new("flood-two");
    let server_key = env.keygen("server");
    let client_key = env.keygen("client");
    let target = echo_target();
    let (port_a, port_b) = (free_port(), free_port());
    let config = env.path("tunnels.toml");
    let table = |name: &str, port: u16, extra: &str| {
        format!(
            "[[tunnel]]\nrole = \"server\"\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\n\
             to = \"{}\"\nkey = \"{}\"\nallow = [\"{}\"]\n{extra}\n",
            target.addr,
            server_key.file(),
            client_key.public
        )
    };
    fs::write(
        &config,
        table("a", port_a, "") + &table("b", port_b, "max_connections = 10"),
    )
    .expect("write the config");
    let mut server = start_limited(
        &env,
        "server",
        &[
            "tunnel".into(),
            "--config".into(),
            config.display().to_string(),
        ],
        "tunnel server ready tunnel=b",
    );
    let trust = ["--server-key", server_key.public.as_str()];
    let (_client_b, local_b) = env.tunnel_client("client-b", &client_key, port_b, &trust);
    let (_client_a, local_a) = env.tunnel_client("client-a", &client_key, port_a, &trust);

    let held = flood(port_a, FLOOD);
    round_trip(local_b, b"tunnel b during the flood on a")
        .unwrap_or_else(|e| panic!("tunnel b not served during the flood on a: {e}"));
    assert_eq!(server.try_exit(), None, "{}", server.stderr());
    // The flood was turned away before it could take the descriptors.
    let log = server.stderr();
    assert!(!log.contains("Too many open files"), "{log}");
    let log = server.expect_log("connection refused");
    assert!(
        log.contains("handshakes in progress from this source"),
        "{log}"
    );
    drop(held);

    let deadline = Instant::now() + EXIT_TIMEOUT;
    while let Err(e) = round_trip(local_a, b"tunnel a after the flood") {
        assert!(
            Instant::now() < deadline,
            "tunnel a not served after the flood: {e}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    round_trip(local_b, b"tunnel b after").expect("tunnel b after the flood");
}

/// A control directory someone else could have made (not mode 0700): `status` is disabled
/// with a warning, no socket is put there, and the tunnel runs.
#[test]
fn a_foreign_control_directory_disables_status() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new("control-dir");
    let server_key = env.keygen("server");
    let client_key = env.keygen("client");
    let target = echo_target();
    let planted = env.run_dir.join("sessionkey");
    fs::create_dir_all(&planted).expect("mkdir");
    fs::set_permissions(&planted, fs::Permissions::from_mode(0o777)).expect("chmod");
    let (mut server, _port) =
        env.tunnel_server("server", &server_key, target.addr, &[&client_key.public]);
    let log = server.expect_log("`sessionkey status` is disabled");
    assert!(log.contains("chmod 700"), "{log}");
    assert_eq!(
        fs::read_dir(&planted).expect("read dir").count(),
        0,
        "a socket was put in a directory others can write"
    );
    let out = env.run(&["status"]);
    assert_ne!(
        out.code,
        Some(0),
        "status read a foreign directory: {out:?}"
    );
    assert!(out.stderr.contains("chmod 700"), "{out:?}");

    // Owned by another user (only root can make one here): refused as well.
    if nix_euid_is_root() {
        fs::set_permissions(&planted, fs::Permissions::from_mode(0o700)).expect("chmod");
        let status = std::process::Command::new("chown")
            .args(["65534", planted.to_str().expect("UTF-8")])
            .status()
            .expect("chown");
        assert!(status.success());
        let (mut server, _) =
            env.tunnel_server("server2", &server_key, target.addr, &[&client_key.public]);
        let log = server.expect_log("`sessionkey status` is disabled");
        assert!(log.contains("owned by uid 65534"), "{log}");
    }
}

fn nix_euid_is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}
