//! The legacy DES/3DES suites end to end behind their gate (issue 12, item 7): a 3DES
//! tunnel carries 64 MiB with its keys rotated before the 2^20-block cap, and a server
//! without the opt-in refuses the offer in words.
#![cfg(feature = "legacy-ciphers")]

use std::net::Shutdown;
use std::sync::mpsc;
use std::time::Duration;

mod support;

use support::*;

#[test]
fn a_3des_tunnel_carries_64_mib_and_rotates_its_keys() {
    let env = Env::new("legacy-3des");
    let server_key = env.keygen("server");
    let client_key = env.keygen("client");
    // The target hashes what arrives and sends the summary back.
    let (tx, rx) = mpsc::channel();
    let target = Target::start(move |mut conn, _| {
        let got = receive_stream(&mut conn);
        let _ = tx.send(got.map(|s| (s.bytes, s.sha256)).map_err(|e| e.to_string()));
    });
    let (mut server, server_port) = env.start_listening(
        "server",
        |port| {
            let mut args = Env::server_args(
                "server",
                port,
                &server_key,
                target.addr,
                &[&client_key.public],
            );
            args.extend(["--insecure-legacy-cipher", "3des"].map(String::from));
            args
        },
        "tunnel server ready",
    );
    let (client, local) = env.tunnel_client(
        "client",
        &client_key,
        server_port,
        &[
            "--server-key",
            &server_key.public,
            "--insecure-legacy-cipher",
            "3des",
            "-v",
        ],
    );
    let mut conn = connect(local);
    let sent = send_stream(&mut conn, 12, 64 * MIB).expect("send through the tunnel");
    conn.shutdown(Shutdown::Write).expect("shutdown");
    let got = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the target never got the end of the stream")
        .expect("the target's read failed");
    assert_eq!(got, (sent.bytes, sent.sha256), "the data differs");
    let log = client.stderr();
    assert!(log.contains("insecure-legacy-cipher"), "no warning:\n{log}");
    assert!(log.contains("3des-ede-cbc-hmac-sha256"), "{log}");
    // 64 MiB at one update per 4 MiB: at least 15 on the sending side.
    let updates = log
        .lines()
        .filter(|l| l.contains("key updated") && l.contains("Send"))
        .count();
    assert!(updates >= 15, "only {updates} key updates:\n{log}");
    assert!(server.try_exit().is_none(), "{}", server.stderr());
}

#[test]
fn a_server_without_the_opt_in_refuses_a_legacy_offer() {
    let env = Env::new("legacy-refused");
    let server_key = env.keygen("server");
    let client_key = env.keygen("client");
    let target = echo_target();
    let (_server, server_port) =
        env.tunnel_server("server", &server_key, target.addr, &[&client_key.public]);
    let (mut client, local) = env.tunnel_client(
        "client",
        &client_key,
        server_port,
        &[
            "--server-key",
            &server_key.public,
            "--insecure-legacy-cipher",
            "des",
        ],
    );
    let mut conn = connect(local);
    let _ = std::io::Write::write_all(&mut conn, b"x");
    let _ = receive_stream(&mut conn);
    let log = client
        .wait_log("does not allow this cipher suite", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("no refusal in words: {e}"));
    assert!(!log.contains("des-cbc-hmac-sha256;"), "{log}");
    assert_eq!(target.accepted(), 0);
}
