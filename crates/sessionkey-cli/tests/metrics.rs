//! `tunnel --metrics ADDR` (issue 16, item 3, tunnels only): Prometheus text at /metrics,
//! scraped over HTTP during a transfer, shows the session and its counters moving, keeps
//! totals after the session ends, and carries no key or address in any label.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;

mod support;

use support::*;

/// `GET /metrics` over plain HTTP/1.1: (status line, body).
fn scrape(port: u16, path: &str) -> (String, String) {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("read the response");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// Parses the Prometheus text format strictly enough to catch a malformed exposition:
/// every family has HELP and TYPE before its samples, names and label sets are well
/// formed, values are numbers. Returns `name{labels}` -> value.
fn parse(body: &str) -> BTreeMap<String, f64> {
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in body.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (kind, name) = (words.next().unwrap(), words.next().unwrap_or(""));
            assert!(name_ok(name), "bad name in {line:?}");
            match kind {
                "HELP" => {}
                "TYPE" => {
                    let t = words.next().unwrap_or("");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "bad type in {line:?}"
                    );
                    typed.insert(name.to_string(), t.to_string());
                }
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "bad sample name in {line:?}");
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            typed.contains_key(name) || typed.contains_key(family),
            "sample before its TYPE: {line:?}"
        );
        if name != family && typed.get(family).map(String::as_str) == Some("histogram") {
            assert!(
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|x| name.ends_with(x)),
                "not a histogram sample: {line:?}"
            );
        }
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels
                    .strip_prefix('{')
                    .and_then(|l| l.strip_suffix('}'))
                    .unwrap_or_else(|| panic!("labels in {line:?}"));
                for pair in inner.split(',') {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line:?}"));
                    assert!(name_ok(k), "label name in {line:?}");
                    assert!(
                        v.starts_with('"') && v.ends_with('"'),
                        "label value in {line:?}"
                    );
                }
            }
        }
        samples.insert(series.to_string(), value);
    }
    samples
}

fn value(samples: &BTreeMap<String, f64>, name: &str, direction: Option<&str>) -> f64 {
    let mut want = format!("{name}{{tunnel=\"web\",role=\"server\",transport=\"native\"");
    if let Some(d) = direction {
        want.push_str(&format!(",direction=\"{d}\""));
    }
    want.push('}');
    *samples
        .get(&want)
        .unwrap_or_else(|| panic!("no {want} in {samples:#?}"))
}

#[test]
fn metrics_move_during_a_transfer_and_name_no_key_or_address() {
    let env = Env::new("metrics");
    let server_key = env.keygen("server");
    let client_key = env.keygen("client");
    let target = echo_target();
    let metrics_port = free_port();
    let (mut server, server_port) = env.start_listening(
        "server",
        |port| {
            let mut args = Env::server_args(
                "web",
                port,
                &server_key,
                target.addr,
                &[client_key.base64()],
            );
            // Key updates every 16 KiB, so the transfer below makes some.
            args.extend([
                "--metrics".into(),
                format!("127.0.0.1:{metrics_port}"),
                "--key-update-bytes".into(),
                "16384".into(),
            ]);
            args
        },
        "metrics at http://",
    );
    let (_client, client_port) = env.tunnel_client(
        "client",
        &client_key,
        server_port,
        &[
            "--server-key",
            server_key.base64(),
            "--key-update-bytes",
            "16384",
        ],
    );

    let (status, body) = scrape(metrics_port, "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    let before = parse(&body);
    assert!(
        before.is_empty() || !body.contains("sessionkey_sessions{"),
        "{body}"
    );

    // A transfer in steps: each scrape in between sees more bytes.
    let mut conn = connect(client_port);
    conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let chunk = vec![0x5au8; 256 * 1024];
    let mut echoed = vec![0u8; chunk.len()];
    let mut last = 0.0;
    let mut last_updates = 0.0;
    for step in 0..3 {
        conn.write_all(&chunk).unwrap();
        conn.read_exact(&mut echoed).unwrap();
        let samples = parse(&scrape(metrics_port, "/metrics").1);
        assert_eq!(
            value(&samples, "sessionkey_sessions", None),
            1.0,
            "step {step}"
        );
        let sent = value(&samples, "sessionkey_transferred_bytes_total", Some("send"));
        let received = value(
            &samples,
            "sessionkey_transferred_bytes_total",
            Some("receive"),
        );
        assert!(
            received >= ((step + 1) * chunk.len()) as f64,
            "step {step}: {received}"
        );
        assert!(
            sent > last,
            "step {step}: the send counter did not move ({sent} after {last})"
        );
        last = sent;
        assert!(value(&samples, "sessionkey_records_total", Some("receive")) > 0.0);
        assert_eq!(
            value(&samples, "sessionkey_sessions_established_total", None),
            1.0
        );
        // Key updates (every 16 KiB) move with the transfer, in both directions.
        let updates = value(&samples, "sessionkey_key_updates_total", Some("send"));
        assert!(
            updates > last_updates,
            "step {step}: key updates did not move ({updates} after {last_updates})"
        );
        last_updates = updates;
        assert!(value(&samples, "sessionkey_key_updates_total", Some("receive")) > 0.0);
        // The current keys are young and far from their AEAD limit; nothing was forced
        // and nothing failed to decrypt.
        let age = value(&samples, "sessionkey_key_epoch_age_seconds", None);
        assert!((0.0..60.0).contains(&age), "step {step}: key age {age}");
        let used = value(&samples, "sessionkey_aead_limit_used_ratio", None);
        assert!((0.0..0.5).contains(&used), "step {step}: {used}");
        assert_eq!(
            value(&samples, "sessionkey_forced_key_updates_total", None),
            0.0
        );
        assert_eq!(
            value(&samples, "sessionkey_decryption_failures_total", None),
            0.0
        );
        // One handshake, timed.
        let timed = "sessionkey_handshake_duration_seconds_count{tunnel=\"web\",result=\"ok\"}";
        assert_eq!(samples.get(timed), Some(&1.0), "{samples:#?}");
        let within = "sessionkey_handshake_duration_seconds_bucket{tunnel=\"web\",result=\"ok\",le=\"+Inf\"}";
        assert_eq!(samples.get(within), Some(&1.0));
    }
    drop(conn);
    // Once the session has ended its bytes stay counted (counters never go down).
    let deadline = std::time::Instant::now() + EXIT_TIMEOUT;
    let body = loop {
        let body = scrape(metrics_port, "/metrics").1;
        let samples = parse(&body);
        if value(&samples, "sessionkey_sessions", None) == 0.0 {
            assert!(value(&samples, "sessionkey_transferred_bytes_total", Some("send")) >= last);
            assert_eq!(
                value(&samples, "sessionkey_sessions_ended_total", None),
                1.0
            );
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the session never ended:\n{body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // No key, fingerprint or address in the exposition.
    for secretish in [
        client_key.base64(),
        server_key.base64(),
        client_key.fingerprint.as_str(),
        "127.0.0.1",
    ] {
        assert!(!body.contains(secretish), "{secretish} in:\n{body}");
    }
    assert!(
        body.contains("# TYPE sessionkey_accept_errors_total counter"),
        "{body}"
    );
    let (status, _) = scrape(metrics_port, "/");
    assert!(status.contains(" 404 "), "{status}");

    // Handshakes by result and reason: the one above, then a key the server does not admit.
    let handshakes = |samples: &BTreeMap<String, f64>, result: &str, reason: &str| {
        let k = format!(
            "sessionkey_handshakes_total{{tunnel=\"web\",result=\"{result}\",reason=\"{reason}\"}}"
        );
        samples.get(&k).copied().unwrap_or(0.0)
    };
    assert_eq!(handshakes(&parse(&body), "ok", "none"), 1.0, "{body}");
    let stranger = env.keygen("stranger");
    let (_stranger, stranger_port) = env.tunnel_client(
        "stranger",
        &stranger,
        server_port,
        &["--server-key", server_key.base64()],
    );
    let mut conn = connect(stranger_port);
    conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = conn.write_all(b"hello");
    let _ = conn.read(&mut [0u8; 16]);
    let deadline = std::time::Instant::now() + EXIT_TIMEOUT;
    loop {
        let body = scrape(metrics_port, "/metrics").1;
        let samples = parse(&body);
        if handshakes(&samples, "failed", "key_not_authorized") == 1.0 {
            assert_eq!(handshakes(&samples, "ok", "none"), 1.0, "{body}");
            assert!(!body.contains(stranger.base64()), "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refused handshake counted:\n{body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(server.try_exit(), None, "{}", server.stderr());
}

#[test]
fn a_tunnel_file_can_name_the_metrics_address() {
    let env = Env::new("metrics-config");
    let server_key = env.keygen("server");
    let client_key = env.keygen("client");
    let target = echo_target();
    let (_server, _) = env.start_listening(
        "server",
        |port| {
            let metrics_port = free_port();
            let file = env.path(&format!("tunnels-{port}.toml"));
            std::fs::write(
                &file,
                format!(
                    "metrics = \"127.0.0.1:{metrics_port}\"\n\n[[tunnel]]\nrole = \"server\"\n\
                     name = \"web\"\nlisten = \"127.0.0.1:{port}\"\nto = \"{}\"\nkey = \"{}\"\n\
                     allow = [\"{}\"]\n",
                    target.addr,
                    server_key.file(),
                    client_key.base64()
                ),
            )
            .unwrap();
            vec![
                "tunnel".into(),
                "--config".into(),
                file.to_str().unwrap().into(),
            ]
        },
        "metrics at http://",
    );
    let log = _server.stderr();
    let addr = log
        .split("metrics at http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("the metrics address in the log");
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let (status, body) = scrape(port, "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    parse(&body);
    assert!(body.contains("# TYPE sessionkey_sessions gauge"), "{body}");
}
