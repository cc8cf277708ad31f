//! End-to-end tests: the real `sessionkey` binary in child processes, real TCP sockets on
//! 127.0.0.1, plain TCP applications and targets played by this test.
//!
//! Every child runs with a private `XDG_RUNTIME_DIR` (so `sessionkey status` sees only the
//! processes of its own test), is killed by a guard when the test ends, and every wait is
//! bounded: a hang fails the test instead of blocking CI. On failure the logs of the test's
//! processes are printed and its temporary directory is kept.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

mod support;

use support::*;

/// `sessionkey pipe listen` on a free port (another one if that port was taken meanwhile).
fn pipe_listen(env: &Env, key: &Key, allow: &Key, stdin: impl Fn() -> Stdio) -> (Proc, u16) {
    let mut last = String::new();
    for _ in 0..5 {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut p = env.spawn(
            "pipe-listen",
            &[
                "pipe",
                "listen",
                &addr,
                "--key",
                key.file(),
                "--allow",
                &allow.public,
            ],
            stdin(),
        );
        match wait_listening(port, &mut p) {
            Ok(()) => return (p, port),
            Err(e) if e.contains("cannot listen") => last = e,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("pipe listen found no free port: {last}");
}

// ---------------------------------------------------------------------------------------
// 1. Bulk data both ways, hashed on both ends.
// ---------------------------------------------------------------------------------------

/// Client -> server: the full 1 GiB the issue asks for. Measured for this direction in the
/// debug test profile (our crates at opt-level 0, dependencies at 2) on a shared 2-CPU
/// machine: 9 to 15 s, the test process's own xorshift generation being the largest CPU
/// user; well under the ~40 s budget, so no reduction.
const UP_BYTES: u64 = 1 << 30;
/// Server -> client.
const DOWN_BYTES: u64 = 64 * MIB;

#[test]
fn bulk_1gib_up_and_64mib_down_arrive_intact() {
    let started = Instant::now();
    let env = Env::new("bulk");
    let server_key = env.keygen("server");
    let client_key = env.keygen("client");

    // Connection 0 is the upload sink, connection 1 the download source.
    let (results, received) = mpsc::channel::<(usize, Result<Summary, String>)>();
    let target = Target::start(move |mut conn, index| {
        let result = match index {
            0 => receive_stream(&mut conn),
            1 => send_stream(&mut conn, 0xD0D0, DOWN_BYTES).and_then(|s| {
                conn.shutdown(Shutdown::Write)?;
                Ok(s)
            }),
            _ => return,
        };
        let _ = results.send((index, result.map_err(|e| e.to_string())));
    });
    let (_server, server_port) =
        env.tunnel_server("server", &server_key, target.addr, &[&client_key.public]);
    let (_client, client_port) = env.tunnel_client(
        "client",
        &client_key,
        server_port,
        &["--server-key", &server_key.public],
    );

    // Up: application -> tunnel client -> tunnel server -> sink.
    let t = Instant::now();
    let mut app = connect(client_port);
    let sent = send_stream(&mut app, 0x0B0B, UP_BYTES).expect("send through the tunnel");
    app.shutdown(Shutdown::Write).expect("shutdown");
    let (index, got) = received
        .recv_timeout(EXIT_TIMEOUT)
        .expect("the sink's result");
    assert_eq!(index, 0);
    let got = got.expect("the sink read to a clean end");
    assert_eq!(
        got, sent,
        "what the sink received differs from what was sent"
    );
    // The sink closed its side: the end must reach the application as a clean end.
    expect_clean_eof(&mut app);
    let up = t.elapsed();
    eprintln!(
        "bulk up: {} MiB in {up:.2?} ({:.0} MiB/s), sha256 {}",
        UP_BYTES / MIB,
        mib_per_s(UP_BYTES, up),
        sent.sha256
    );

    // Down: source -> tunnel server -> tunnel client -> application.
    let t = Instant::now();
    let mut app = connect(client_port);
    let got = receive_stream(&mut app).expect("receive through the tunnel");
    let (index, sent) = received
        .recv_timeout(EXIT_TIMEOUT)
        .expect("the source's result");
    assert_eq!(index, 1);
    let sent = sent.expect("the source sent everything");
    assert_eq!(sent.bytes, DOWN_BYTES);
    assert_eq!(
        got, sent,
        "what the application received differs from what was sent"
    );
    let down = t.elapsed();
    eprintln!(
        "bulk down: {} MiB in {down:.2?} ({:.0} MiB/s)",
        DOWN_BYTES / MIB,
        mib_per_s(DOWN_BYTES, down)
    );
    eprintln!("bulk test total {:.2?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------
// 2. Many concurrent connections, one session each.
// ---------------------------------------------------------------------------------------

const CONNECTIONS: usize = 200;
/// Bytes each connection sends and reads back.
const PER_CONNECTION: usize = 32 * 1024;

/// The distinct pattern of connection `i`.
fn pattern(i: usize) -> Vec<u8> {
    let mut p = vec![0u8; PER_CONNECTION];
    XorShift::new(0xC0_0000 + i as u64).fill(&mut p);
    p[..8].copy_from_slice(&(i as u64).to_be_bytes());
    p
}

/// The sessions `status --json` lists for the process `pid`.
fn sessions_by_pid(status: &serde_json::Value, pid: u32) -> Vec<serde_json::Value> {
    status
        .as_array()
        .expect("status is an array of processes")
        .iter()
        .filter(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        .flat_map(|p| p["sessions"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[test]
fn two_hundred_concurrent_connections_each_get_their_own_session() {
    let started = Instant::now();
    let env = Env::new("many");
    let server_key = env.keygen("server");
    let client_key = env.keygen("client");
    let target = echo_target();
    let (server, server_port) = env.tunnel_server(
        "many-server",
        &server_key,
        target.addr,
        &[&client_key.public],
    );
    let (client, client_port) = env.tunnel_client(
        "many-client",
        &client_key,
        server_port,
        &["--server-key", &server_key.public],
    );

    // All connections at once: each sends its pattern and reads the echo, then hands the
    // still open connection back.
    let (done, opened) = mpsc::channel::<(usize, Result<TcpStream, String>)>();
    for i in 0..CONNECTIONS {
        let done = done.clone();
        thread::spawn(move || {
            let run = || -> Result<TcpStream, String> {
                let mut conn = connect(client_port);
                let p = pattern(i);
                conn.write_all(&p).map_err(|e| format!("write: {e}"))?;
                let mut back = vec![0u8; p.len()];
                conn.read_exact(&mut back)
                    .map_err(|e| format!("read the echo: {e}"))?;
                if back != p {
                    return Err("the echo differs from what was sent".into());
                }
                Ok(conn)
            };
            let _ = done.send((i, run()));
        });
    }
    drop(done);
    let mut conns: Vec<Option<TcpStream>> = (0..CONNECTIONS).map(|_| None).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..CONNECTIONS {
        let left = deadline.saturating_duration_since(Instant::now());
        let (i, result) = opened
            .recv_timeout(left)
            .expect("every connection reports in time");
        conns[i] = Some(result.unwrap_or_else(|e| panic!("connection {i}: {e}")));
    }
    let echoed = started.elapsed();

    // All 200 are open now: each side must show 200 sessions with distinct ids, and both
    // sides the same ids (the id comes from the handshake hash, which both derive).
    let status = env.status();
    let mut ids = BTreeSet::new();
    let mut per_side = Vec::new();
    for (p, role) in [(&client, "client"), (&server, "server")] {
        let sessions = sessions_by_pid(&status, p.pid());
        let side: BTreeSet<String> = sessions
            .iter()
            .map(|s| {
                assert_eq!(s["role"], role, "{s}");
                s["session"]
                    .as_str()
                    .unwrap_or_else(|| panic!("an established session has an id: {s}"))
                    .to_string()
            })
            .collect();
        assert_eq!(
            sessions.len(),
            CONNECTIONS,
            "{role} shows {} sessions for {CONNECTIONS} open connections",
            sessions.len()
        );
        assert_eq!(
            side.len(),
            CONNECTIONS,
            "{role}: session ids are not distinct"
        );
        let fingerprints: BTreeSet<&str> = sessions
            .iter()
            .filter_map(|s| s["fingerprint"].as_str())
            .collect();
        assert_eq!(fingerprints.len(), CONNECTIONS, "{role}: fingerprints");
        ids.extend(side.iter().cloned());
        per_side.push(side);
    }
    assert!(ids.len() >= CONNECTIONS, "{} distinct sessions", ids.len());
    assert_eq!(
        per_side[0], per_side[1],
        "client and server see different sessions"
    );

    // Close every connection: each ends cleanly (the echo's end comes back through the
    // tunnel as a clean close).
    let mut conns: Vec<TcpStream> = conns.into_iter().map(Option::unwrap).collect();
    for c in &conns {
        c.shutdown(Shutdown::Write).expect("shutdown");
    }
    for c in &mut conns {
        expect_clean_eof(c);
    }
    drop(conns);

    // And the sessions are gone from status.
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        let status = env.status();
        let left = sessions_by_pid(&status, client.pid()).len()
            + sessions_by_pid(&status, server.pid()).len();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} sessions still listed after every connection closed"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(target.accepted(), CONNECTIONS);
    eprintln!(
        "many: {CONNECTIONS} connections echoed in {echoed:.2?}, test total {:.2?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// 3. A tunnel server killed mid-transfer: the application sees a reset, never an end.
// ---------------------------------------------------------------------------------------

#[test]
fn server_killed_mid_download_resets_the_application() {
    let started = Instant::now();
    let env = Env::new("kill-down");
    let server_key = env.keygen("server");
    let client_key = env.keygen("client");
    // An endless download.
    let target = Target::start(|mut conn, _| {
        let _ = send_stream(&mut conn, 0x5EED, u64::MAX);
    });
    let (mut server, server_port) =
        env.tunnel_server("server", &server_key, target.addr, &[&client_key.public]);
    let (mut client, client_port) = env.tunnel_client(
        "client",
        &client_key,
        server_port,
        &["--server-key", &server_key.public],
    );

    let mut app = connect(client_port);
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    while got < 8 * MIB {
        let n = app.read(&mut buf).expect("the download flows");
        assert!(n > 0, "the download ended early");
        got += n as u64;
    }
    server.kill();
    let drained = expect_reset(&mut app, "download, tunnel server SIGKILLed");
    client.expect_log("resetting the connection");
    eprintln!(
        "kill-down: reset after {} MiB (+{drained} bytes buffered), test total {:.2?}",
        got / MIB,
        started.elapsed()
    );
}

#[test]
fn server_killed_mid_upload_fails_the_application_writes() {
    let started = Instant::now();
    let env = Env::new("kill-up");
    let server_key = env.keygen("server");
    let client_key = env.keygen("client");
    let received = Arc::new(AtomicU64::new(0));
    let target = {
        let received = received.clone();
        Target::start(move |mut conn, _| {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                received.fetch_add(n as u64, Ordering::SeqCst);
            }
        })
    };
    let (mut server, server_port) =
        env.tunnel_server("server", &server_key, target.addr, &[&client_key.public]);
    let (mut client, client_port) = env.tunnel_client(
        "client",
        &client_key,
        server_port,
        &["--server-key", &server_key.public],
    );

    let mut app = connect(client_port);
    let mut rng = XorShift::new(0x0FF);
    let mut buf = vec![0u8; 256 * 1024];
    let mut sent = 0u64;
    let mut killed_at = None;
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let err = loop {
        if killed_at.is_none() && received.load(Ordering::SeqCst) >= 8 * MIB {
            server.kill();
            killed_at = Some(sent);
        }
        assert!(
            Instant::now() < deadline,
            "writes still succeed {:?} after the kill",
            EXIT_TIMEOUT
        );
        rng.fill(&mut buf);
        match app.write_all(&buf) {
            Ok(()) => sent += buf.len() as u64,
            Err(e) => break e,
        }
    };
    assert!(
        killed_at.is_some(),
        "the upload failed before the server was killed: {err}"
    );
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ),
        "expected a reset, got {err} ({:?})",
        err.kind()
    );
    client.expect_log("resetting the connection");
    eprintln!(
        "kill-up: write failed with {:?} after {} MiB, test total {:.2?}",
        err.kind(),
        sent / MIB,
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// 4. An unauthorized client key is refused, and both sides say why.
// ---------------------------------------------------------------------------------------

#[test]
fn unauthorized_client_key_is_refused() {
    let started = Instant::now();
    let env = Env::new("refused");
    let server_key = env.keygen("server");
    let client_key = env.keygen("intruder");
    let allowed_key = env.keygen("allowed");
    let target = echo_target();
    let (mut server, server_port) =
        env.tunnel_server("server", &server_key, target.addr, &[&allowed_key.public]);
    let (mut client, client_port) = env.tunnel_client(
        "client",
        &client_key,
        server_port,
        &["--server-key", &server_key.public],
    );

    let mut app = connect(client_port);
    expect_reset(&mut app, "refused client key");

    let log = server.expect_log(&format!("refused peer key {}", client_key.fingerprint));
    assert!(log.contains("to admit it, add this line"), "{log}");
    assert!(log.contains(client_key.base64()), "{log}");
    assert!(!log.contains(&allowed_key.fingerprint), "{log}");
    client.expect_log("the responder does not admit this initiator's key");
    assert_eq!(target.accepted(), 0, "a refused session reached the target");

    // `pipe connect` with the same key: refused, exit 77.
    let out = env.run(&[
        "pipe",
        "connect",
        &format!("127.0.0.1:{server_port}"),
        "--key",
        client_key.file(),
        "--server-key",
        &server_key.public,
    ]);
    assert_eq!(out.code, Some(77), "{out:?}");
    assert!(out.stderr.contains("does not admit"), "{out:?}");
    eprintln!("refused: test total {:.2?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------
// 5. A changed server key is refused once known.
// ---------------------------------------------------------------------------------------

#[test]
fn changed_server_key_is_refused_once_known() {
    let started = Instant::now();
    let env = Env::new("changed");
    let first_key = env.keygen("server1");
    let second_key = env.keygen("server2");
    let client_key = env.keygen("client");
    let known = env.path("known_peers");
    let known_str = known.to_str().expect("UTF-8 temp path").to_string();
    let target = echo_target();
    let (mut first, port) =
        env.tunnel_server("server1", &first_key, target.addr, &[&client_key.public]);
    let (mut client, client_port) = env.tunnel_client(
        "client",
        &client_key,
        port,
        &["--known-peers", &known_str, "--accept-new"],
    );

    // First use: learned, and the connection works.
    let mut app = connect(client_port);
    app.write_all(b"hello").expect("write");
    let mut back = [0u8; 5];
    app.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"hello");
    app.shutdown(Shutdown::Write).expect("shutdown");
    expect_clean_eof(&mut app);
    client.expect_log("learned a new server key");
    let learned = fs::read_to_string(&known).expect("the known-peers file exists");
    let lines: Vec<&str> = learned.lines().collect();
    assert_eq!(lines.len(), 1, "{learned}");
    assert!(
        lines[0].starts_with(&format!("[127.0.0.1]:{port} sessionkey-x25519 ")),
        "{learned}"
    );
    assert!(lines[0].contains(first_key.base64()), "{learned}");

    // The server comes back on the same port with a new key.
    first.kill();
    let mut second = env
        .start_on(
            "server2",
            &Env::server_args(
                "server2",
                port,
                &second_key,
                target.addr,
                &[&client_key.public],
            ),
            "tunnel server ready",
        )
        .unwrap_or_else(|e| panic!("restart on the same port: {e}"));

    let mut app = connect(client_port);
    expect_reset(&mut app, "changed server key");
    let log = client.expect_log("REMOTE HOST IDENTIFICATION HAS CHANGED");
    assert!(log.contains(&second_key.fingerprint), "{log}");
    assert!(log.contains(&format!("sed -i '1d' {known_str}")), "{log}");
    assert_eq!(
        fs::read_to_string(&known).expect("known peers"),
        learned,
        "the known-peers file changed"
    );
    // `pipe connect` with the same file: refused, even with --accept-new. (The exit code
    // should be 77; it is 70 today: see the separate test
    // `pipe_connect_exits_77_when_the_server_key_is_changed_or_unknown`.)
    let out = env.run(&[
        "pipe",
        "connect",
        &format!("127.0.0.1:{port}"),
        "--key",
        client_key.file(),
        "--known-peers",
        &known_str,
        "--accept-new",
    ]);
    assert!(matches!(out.code, Some(c) if c != 0), "{out:?}");
    assert!(
        out.stderr
            .contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{out:?}"
    );
    assert!(out.stderr.contains(&second_key.fingerprint), "{out:?}");
    assert_eq!(second.try_exit(), None, "the new server is still running");
    eprintln!("changed: test total {:.2?}", started.elapsed());
}

/// `pipe connect` refused by the known-peers check exits 77 ("key refused or changed"), for
/// a changed key and for an unknown one alike (the `TrustError` must stay visible in the
/// error chain through `TunnelError::Trust`).
#[test]
fn pipe_connect_exits_77_when_the_server_key_is_changed_or_unknown() {
    let env = Env::new("exit77");
    let server_key = env.keygen("server");
    let other_key = env.keygen("other");
    let client_key = env.keygen("client");
    let target = echo_target();
    let (_server, port) =
        env.tunnel_server("server", &server_key, target.addr, &[&client_key.public]);
    let changed = env.path("known_changed");
    fs::write(
        &changed,
        format!("[127.0.0.1]:{port} {}\n", other_key.public),
    )
    .expect("known peers");
    let unknown = env.path("known_empty");
    fs::write(&unknown, "").expect("known peers");
    let mut failures = Vec::new();
    for (file, what) in [
        (&changed, "REMOTE HOST IDENTIFICATION HAS CHANGED"),
        (&unknown, "if you trust it, run again with --accept-new"),
    ] {
        let out = env.run(&[
            "pipe",
            "connect",
            &format!("127.0.0.1:{port}"),
            "--key",
            client_key.file(),
            "--known-peers",
            file.to_str().expect("UTF-8 temp path"),
        ]);
        assert!(out.stderr.contains(what), "{out:?}");
        assert!(out.stderr.contains(&server_key.fingerprint), "{out:?}");
        if out.code != Some(77) {
            failures.push(format!("{what:?}: exit {:?}, expected 77", out.code));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("; "));
}

// ---------------------------------------------------------------------------------------
// 6. pipe: a clean run both ways, and a peer killed mid-way.
// ---------------------------------------------------------------------------------------

fn write_random_file(path: &Path, seed: u64, bytes: usize) -> Vec<u8> {
    let mut data = vec![0u8; bytes];
    XorShift::new(seed).fill(&mut data);
    fs::write(path, &data).expect("write the input");
    data
}

#[test]
fn pipe_carries_data_both_ways_and_exits_zero() {
    let started = Instant::now();
    let env = Env::new("pipe");
    let listen_key = env.keygen("listen");
    let connect_key = env.keygen("connect");
    let to_listener = write_random_file(&env.path("up.bin"), 1, 8 * MIB as usize + 123);
    let to_connector = write_random_file(&env.path("down.bin"), 2, MIB as usize + 45);

    let down = env.path("down.bin");
    let (mut listen, port) = pipe_listen(&env, &listen_key, &connect_key, || {
        File::open(&down).expect("input").into()
    });
    let addr = format!("127.0.0.1:{port}");
    let mut connect = env.spawn(
        "pipe-connect",
        &[
            "pipe",
            "connect",
            &addr,
            "--key",
            connect_key.file(),
            "--server-key",
            &listen_key.public,
        ],
        File::open(env.path("up.bin")).expect("input").into(),
    );
    let connect_code = connect.wait(EXIT_TIMEOUT);
    let listen_code = listen.wait(EXIT_TIMEOUT);
    assert_eq!(connect_code, Some(0), "connect:\n{}", connect.stderr());
    assert_eq!(listen_code, Some(0), "listen:\n{}", listen.stderr());
    let at_listener = fs::read(&listen.stdout).expect("listen's output");
    let at_connector = fs::read(&connect.stdout).expect("connect's output");
    assert!(
        at_listener == to_listener,
        "listen received {} bytes, differing from the {} sent",
        at_listener.len(),
        to_listener.len()
    );
    assert!(
        at_connector == to_connector,
        "connect received {} bytes, differing from the {} sent",
        at_connector.len(),
        to_connector.len()
    );
    eprintln!("pipe: test total {:.2?}", started.elapsed());
}

#[test]
fn pipe_connect_fails_when_the_listener_is_killed() {
    let started = Instant::now();
    let env = Env::new("pipe-kill");
    let listen_key = env.keygen("listen");
    let connect_key = env.keygen("connect");
    let (mut listen, port) = pipe_listen(&env, &listen_key, &connect_key, Stdio::piped);
    // Keep the listener's input open (no close from its side).
    let _listen_stdin = listen.child.stdin.take();
    let addr = format!("127.0.0.1:{port}");
    let mut connect = env.spawn(
        "pipe-connect",
        &[
            "pipe",
            "connect",
            &addr,
            "--key",
            connect_key.file(),
            "--server-key",
            &listen_key.public,
        ],
        Stdio::piped(),
    );
    // An endless input, until the connector goes away.
    let mut input = connect.child.stdin.take().expect("stdin");
    let feeder = thread::spawn(move || {
        let mut rng = XorShift::new(3);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            rng.fill(&mut buf);
            if input.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while fs::metadata(&listen.stdout).map_or(0, |m| m.len()) < 4 * MIB {
        assert!(
            Instant::now() < deadline,
            "no data arrived:\n{}\n{}",
            listen.stderr(),
            connect.stderr()
        );
        if let Some(code) = connect.try_exit() {
            panic!("connect exited early ({code:?}):\n{}", connect.stderr());
        }
        thread::sleep(Duration::from_millis(10));
    }
    listen.kill();
    let code = connect.wait(EXIT_TIMEOUT);
    let log = connect.stderr();
    assert!(
        matches!(code, Some(69 | 76)),
        "connect exited with {code:?} after its peer was killed (expected 76 or 69):\n{log}"
    );
    assert!(log.contains("sessionkey: "), "no message:\n{log}");
    feeder.join().expect("feeder");
    eprintln!(
        "pipe-kill: exit {code:?}: {}; test total {:.2?}",
        log.lines().last().unwrap_or(""),
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// 7. Help and usage.
// ---------------------------------------------------------------------------------------

#[test]
fn help_exits_zero_and_unknown_flags_exit_64() {
    let env = Env::new("help");
    for args in [
        &["--help"][..],
        &["tunnel", "--help"],
        &["tunnel", "server", "--help"],
        &["tunnel", "client", "--help"],
        &["pipe", "--help"],
        &["status", "--help"],
    ] {
        let out = env.run(args);
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
        assert!(out.stdout.contains("Usage:"), "{args:?}: {out:?}");
    }
    for args in [
        &["--no-such-flag"][..],
        &["tunnel", "server", "--no-such-flag"],
        &["pipe", "connect", "--no-such-flag"],
        &["status", "--no-such-flag"],
    ] {
        let out = env.run(args);
        assert_eq!(out.code, Some(64), "{args:?}: {out:?}");
        assert!(out.stderr.contains("--no-such-flag"), "{args:?}: {out:?}");
    }
    // With no tunnel running, status lists nothing.
    let status = env.status();
    assert_eq!(status, serde_json::json!([]));
}
