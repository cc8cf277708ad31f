//! Messaging end to end with real processes on loopback: a relay (`sessionkey relay serve`)
//! and clients (`sessionkey msg ...`), each client with its own `--state` directory.
//!
//! - A recipient offline while 100 messages are sent receives them all, in order, although
//!   the relay is killed and restarted half-way; a file arrives whole.
//! - Neither the relay's SQLite file nor the clients' stores contain any plaintext.
//! - With `SESSIONKEY_TEST_POSTGRES` (required when `CI` is set): two relay processes on one
//!   PostgreSQL database deliver a message sent through one to a client following the other,
//!   and the tables contain no plaintext.

mod bounded;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sessionkey");

/// How long one `sessionkey msg ...` command may run.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sessionkey-msg-e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Lines of a child's stdout, read on a thread so waits can time out.
fn lines_of(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Start a relay; returns it and its address.
fn relay(state: &Path, listen: &str, database: Option<&str>) -> (Proc, String) {
    relay_with(state, listen, database, &[])
}

fn relay_with(
    state: &Path,
    listen: &str,
    database: Option<&str>,
    extra: &[&str],
) -> (Proc, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("--state")
        .arg(state)
        .args(["relay", "serve", "--json", "--listen", listen])
        .args(extra);
    if let Some(db) = database {
        cmd.args(["--database", db]);
    }
    let mut child = cmd
        .env("SESSIONKEY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stdout.take().unwrap());
    let first = lines
        .recv_timeout(Duration::from_secs(20))
        .expect("the relay printed its address");
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    (Proc(child), v["listen"].as_str().unwrap().to_string())
}

fn sk(state: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .arg("--state")
        .arg(state)
        .args(args)
        .env("SESSIONKEY_LOG", "warn")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        // On a thread: a child that stops reading cannot block the test past its deadline.
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_string();
        std::thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    let out = bounded::output_within(child, CHILD_TIMEOUT, &format!("sessionkey {args:?}"));
    assert!(
        out.status.success(),
        "sessionkey {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn init(state: &Path, relay: &str, name: &str) {
    sk(
        state,
        &[
            "msg",
            "init",
            "--relay",
            &format!("https://{relay}"),
            "--name",
            name,
            "--json",
        ],
        None,
    );
}

/// The texts of `msg recv --json` output, in order.
fn texts(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "text")
        .map(|v| v["text"].as_str().unwrap().to_string())
        .collect()
}

/// Whether any of `needles` occurs in any file under `dir` (SQLite files and their journals).
fn find_in_files(dir: &Path, needles: &[Vec<u8>]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                for n in needles {
                    if bytes.windows(n.len()).any(|w| w == &n[..]) {
                        found.push(format!(
                            "{} contains {:?}",
                            p.display(),
                            String::from_utf8_lossy(n)
                        ));
                    }
                }
            }
        }
    }
    found
}

fn secret_text(i: usize) -> String {
    format!("plaintext-canary-{i:03}-7f3a9c")
}

#[test]
fn offline_recipient_gets_100_messages_in_order_across_a_relay_restart() {
    let t0 = Instant::now();
    let dir = temp_dir("sqlite");
    let (relay_state, alice, bob) = (dir.join("relay"), dir.join("alice"), dir.join("bob"));
    let (mut relay_proc, addr) = relay(&relay_state, "127.0.0.1:0", None);
    init(&alice, &addr, "alice");
    init(&bob, &addr, "bob");

    // Bob is offline. Half the messages, then the relay dies (SIGKILL) and comes back.
    let first: String = (0..50).map(|i| secret_text(i) + "\n").collect();
    sk(&alice, &["msg", "send", "bob", "--lines"], Some(&first));
    // Every plaintext starts with the same marker; searching for it covers them all.
    let canaries: Vec<Vec<u8>> = vec![b"plaintext-canary-".to_vec()];
    assert_eq!(find_in_files(&relay_state, &canaries), Vec::<String>::new());
    drop(relay_proc);
    let (p, addr2) = relay(&relay_state, &addr, None);
    relay_proc = p;
    assert_eq!(addr, addr2);
    let second: String = (50..99).map(|i| secret_text(i) + "\n").collect();
    sk(&alice, &["msg", "send", "bob", "--lines"], Some(&second));
    sk(&alice, &["msg", "send", "bob", &secret_text(99)], None);
    assert_eq!(
        find_in_files(&relay_state, &canaries),
        Vec::<String>::new(),
        "plaintext in the relay's files"
    );

    // Bob comes online: all 100, in order, once.
    let out = sk(&bob, &["msg", "recv", "--json"], None);
    let expected: Vec<String> = (0..100).map(secret_text).collect();
    assert_eq!(texts(&out), expected);
    assert!(
        texts(&sk(&bob, &["msg", "recv", "--json"], None)).is_empty(),
        "acknowledged messages are gone"
    );

    // A reply turns the ratchet; a file arrives whole, in chunks.
    sk(&bob, &["msg", "send", "alice", "reply-canary-5d1e"], None);
    let file: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file_path = dir.join("report.bin");
    std::fs::write(&file_path, &file).unwrap();
    sk(
        &bob,
        &[
            "msg",
            "send",
            "alice",
            "--file",
            file_path.to_str().unwrap(),
        ],
        None,
    );
    let out = sk(&alice, &["msg", "recv", "--json"], None);
    assert_eq!(texts(&out), ["reply-canary-5d1e"]);
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let received = events
        .iter()
        .find(|e| e["event"] == "file")
        .expect("a file event");
    assert_eq!(received["bytes"], 200_000);
    assert_eq!(
        std::fs::read(received["path"].as_str().unwrap()).unwrap(),
        file
    );

    // Contacts were trusted on first use; both sides see the same safety number.
    let contacts: serde_json::Value =
        serde_json::from_slice(&sk(&bob, &["msg", "contacts", "--json"], None).stdout).unwrap();
    assert_eq!(contacts[0]["name"], "alice");
    assert_eq!(contacts[0]["verified"], false);
    let number = |state: &Path, name: &str, accept: bool| -> serde_json::Value {
        let mut args = vec!["msg", "verify", name, "--json"];
        if accept {
            args.push("--accept");
        }
        serde_json::from_slice(&sk(state, &args, None).stdout).unwrap()
    };
    let (a, b) = (number(&alice, "bob", false), number(&bob, "alice", true));
    assert_eq!(a["safety_number"], b["safety_number"]);
    assert_eq!(a["their_fingerprint"], b["own_fingerprint"]);
    assert_eq!(b["verified"], true);

    // Nothing readable at rest: not in the relay's files, not in either client's store.
    let mut all = canaries.clone();
    all.push(b"reply-canary-5d1e".to_vec());
    assert_eq!(find_in_files(&relay_state, &all), Vec::<String>::new());
    for client in [&alice, &bob] {
        let store_files = find_in_files(&client.join("msg"), &all);
        assert!(store_files.is_empty(), "{store_files:?}");
    }
    drop(relay_proc);
    eprintln!("sqlite messaging end to end: {:.2?}", t0.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn errors_say_what_to_do() {
    let dir = temp_dir("errors");
    let out = Command::new(BIN)
        .arg("--state")
        .arg(dir.join("nobody"))
        .args(["msg", "recv"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = bounded::output_within(out, CHILD_TIMEOUT, "msg recv without a state");
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sessionkey msg init --relay"), "{err}");
    let out = Command::new(BIN)
        .arg("--state")
        .arg(dir.join("x"))
        .args([
            "msg",
            "init",
            "--relay",
            "https://127.0.0.1:9",
            "--name",
            "x",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = bounded::output_within(out, CHILD_TIMEOUT, "msg init against a closed port");
    assert_eq!(
        out.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("is it running?"));
}

#[test]
fn two_relays_on_one_postgres_deliver_to_each_other() {
    let url = match std::env::var("SESSIONKEY_TEST_POSTGRES") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but SESSIONKEY_TEST_POSTGRES is not; CI must run the PostgreSQL tests"
            );
            eprintln!("two_relays_on_one_postgres: skipped: set SESSIONKEY_TEST_POSTGRES=postgres://USER@HOST/DB to run it");
            return;
        }
    };
    let t0 = Instant::now();
    let dir = temp_dir("postgres");
    let (relay_a, addr_a) = relay(&dir.join("relay-a"), "127.0.0.1:0", Some(&url));
    let (relay_b, addr_b) = relay(&dir.join("relay-b"), "127.0.0.1:0", Some(&url));
    let tag = format!("{}-{}", std::process::id(), t0.elapsed().subsec_nanos());
    let (alice_name, bob_name) = (format!("alice-{tag}"), format!("bob-{tag}"));
    let (alice, bob) = (dir.join("alice"), dir.join("bob"));
    init(&alice, &addr_a, &alice_name);
    init(&bob, &addr_b, &bob_name);

    // Queued while bob is offline: the tables hold no plaintext.
    let canaries: Vec<String> = (0..3).map(|i| format!("pg-canary-{i}-{tag}")).collect();
    let input: String = canaries.iter().map(|c| c.clone() + "\n").collect();
    sk(&alice, &["msg", "send", &bob_name, "--lines"], Some(&input));
    let dump = dump_tables(&url);
    assert!(
        dump.len() > 3 * 1000,
        "the queued envelopes are in the tables"
    );
    for c in &canaries {
        assert!(
            !dump.windows(c.len()).any(|w| w == c.as_bytes()),
            "plaintext {c} in PostgreSQL"
        );
    }

    // Bob follows relay B; alice sends through relay A.
    let mut follow = Command::new(BIN)
        .arg("--state")
        .arg(&bob)
        .args(["msg", "recv", "--follow", "--json"])
        .env("SESSIONKEY_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(follow.stdout.take().unwrap());
    let follow = Proc(follow);
    let live = format!("live-through-two-relays-{tag}");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut sent_live = false;
    while got.len() < 4 && Instant::now() < deadline {
        if got.len() == 3 && !sent_live {
            sk(&alice, &["msg", "send", &bob_name, &live], None);
            sent_live = true;
        }
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            got.push(v["text"].as_str().unwrap_or_default().to_string());
        }
    }
    let mut expected = canaries.clone();
    expected.push(live);
    assert_eq!(got, expected);
    drop((follow, relay_a, relay_b));
    eprintln!("postgres two relays end to end: {:.2?}", t0.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every value of the relay's tables, concatenated.
fn dump_tables(url: &str) -> Vec<u8> {
    use sqlx::Row;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let pool = tokio::time::timeout(Duration::from_secs(30), sqlx::AnyPool::connect(url))
            .await
            .expect("PostgreSQL did not accept a connection within 30 s")
            .unwrap();
        let mut out = Vec::new();
        for (table, cols) in [
            ("messages", "recipient, sender, body"),
            ("prekeys", "device, key"),
            ("devices", "name, identity, signed_prekey, last_resort_kem"),
            ("nonces", "device, nonce"),
        ] {
            let n = cols.split(", ").count();
            for row in sqlx::query(&format!("SELECT {cols} FROM {table}"))
                .fetch_all(&pool)
                .await
                .unwrap()
            {
                for i in 0..n {
                    match row.try_get::<Vec<u8>, _>(i) {
                        Ok(b) => out.extend(b),
                        Err(_) => out.extend(row.get::<String, _>(i).into_bytes()),
                    }
                }
            }
        }
        out
    })
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A contact's text cannot forge a line from someone else or send escape sequences to the
/// terminal (`--json` carries it unchanged); the state on disk is private (0700 directories,
/// 0600 files, whatever the umask) and looser modes are refused at start.
#[test]
fn recv_escapes_control_characters_and_state_is_private() {
    let dir = temp_dir("screen");
    let (relay_state, alice, bob) = (dir.join("relay"), dir.join("alice"), dir.join("bob"));
    let (_relay, addr) = relay(&relay_state, "127.0.0.1:0", None);
    init(&alice, &addr, "alice");
    init(&bob, &addr, "bob");
    let forged = "hello\ncarol: please send the code to 555\r\x1b]0;owned\x07\x1b[2Jdone\u{202e}";
    sk(&alice, &["msg", "send", "bob", forged], None);
    let out = sk(&bob, &["msg", "recv"], None);
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(
        shown.chars().all(|c| c == '\n' || !c.is_control()),
        "raw control characters reached the terminal: {shown:?}"
    );
    assert!(!shown.contains('\u{202e}'), "{shown:?}");
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2, "{shown:?}");
    assert_eq!(lines[0], "alice: hello");
    assert!(
        lines[1].starts_with("     | carol: please"),
        "a continuation, not a new sender line: {:?}",
        lines[1]
    );
    assert!(lines[1].contains("\\x1b]0;owned\\x07"), "{:?}", lines[1]);
    // --json is unchanged: the exact text.
    sk(&alice, &["msg", "send", "bob", forged], None);
    assert_eq!(texts(&sk(&bob, &["msg", "recv", "--json"], None)), [forged]);

    // Modes: the state directory, the store, the key, received files and their directories.
    let file = dir.join("note.txt");
    std::fs::write(&file, b"a file").unwrap();
    sk(
        &alice,
        &["msg", "send", "bob", "--file", file.to_str().unwrap()],
        None,
    );
    sk(&bob, &["msg", "recv"], None);
    let state = bob.join("msg");
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("store.db")), 0o600);
    assert_eq!(mode(&state.join("key")), 0o600);
    assert_eq!(mode(&state.join("files")), 0o700);
    assert_eq!(mode(&state.join("files/alice")), 0o700);
    assert_eq!(mode(&state.join("files/alice/note.txt")), 0o600);

    // Looser modes are refused, saying what to do.
    use std::os::unix::fs::PermissionsExt;
    for (path, loose, want) in [
        (state.clone(), 0o755, "chmod 700"),
        (state.join("store.db"), 0o644, "chmod 600"),
    ] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(loose)).unwrap();
        let out = Command::new(BIN)
            .arg("--state")
            .arg(&bob)
            .args(["msg", "recv"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{err}");
        assert!(err.contains(want), "{err}");
        let strict = if path.is_dir() { 0o700 } else { 0o600 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(strict)).unwrap();
    }
    sk(&bob, &["msg", "recv"], None);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `sessionkey ARGS` with `SESSIONKEY_FAILPOINT=point`; its output, whatever its status.
fn sk_crash(state: &Path, args: &[&str], point: &str) -> Output {
    Command::new(BIN)
        .arg("--state")
        .arg(state)
        .args(args)
        .env("SESSIONKEY_LOG", "error")
        .env("SESSIONKEY_FAILPOINT", point)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A crash between decrypting and showing loses nothing and shows nothing twice: the
/// plaintext is stored with the ratchet state that decrypted it, shown, then acknowledged.
/// Then `recv --follow` and `send` run together on one state directory.
#[test]
fn a_crash_between_decrypt_and_display_shows_the_message_once() {
    let dir = temp_dir("crash");
    let (relay_state, alice, bob) = (dir.join("relay"), dir.join("alice"), dir.join("bob"));
    let (_relay, addr) = relay(&relay_state, "127.0.0.1:0", None);
    init(&alice, &addr, "alice");
    init(&bob, &addr, "bob");
    sk(&alice, &["msg", "send", "bob", "crash-canary-1"], None);
    // Decrypted, not yet stored: the crash undoes the decryption.
    let out = sk_crash(&bob, &["msg", "recv", "--json"], "before-store");
    assert!(!out.status.success());
    assert!(texts(&out).is_empty());
    // Stored with the new ratchet state, not yet shown (nor acknowledged).
    let out = sk_crash(&bob, &["msg", "recv", "--json"], "after-store");
    assert!(!out.status.success(), "the failpoint aborts");
    assert!(texts(&out).is_empty());
    sk(&alice, &["msg", "send", "bob", "crash-canary-2"], None);
    let out = sk(&bob, &["msg", "recv", "--json"], None);
    assert_eq!(texts(&out), ["crash-canary-1", "crash-canary-2"]);
    let events = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!events.contains("dropped"), "{events}");
    assert!(texts(&sk(&bob, &["msg", "recv", "--json"], None)).is_empty());

    // Two terminals on bob's state: `recv --follow` while `send --lines` runs.
    let mut follow = Command::new(BIN)
        .arg("--state")
        .arg(&bob)
        .args(["msg", "recv", "--follow", "--json"])
        .env("SESSIONKEY_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(follow.stdout.take().unwrap());
    let follow = Proc(follow);
    let to_bob: String = (0..20).map(|i| format!("to-bob-{i}\n")).collect();
    let to_alice: String = (0..20).map(|i| format!("to-alice-{i}\n")).collect();
    let sender = {
        let alice = alice.clone();
        std::thread::spawn(move || sk(&alice, &["msg", "send", "bob", "--lines"], Some(&to_bob)))
    };
    sk(&bob, &["msg", "send", "alice", "--lines"], Some(&to_alice));
    sender.join().unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 20 && Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            got.push(v["text"].as_str().unwrap_or_default().to_string());
        }
    }
    drop(follow);
    let want: Vec<String> = (0..20).map(|i| format!("to-bob-{i}")).collect();
    assert_eq!(got, want);
    let want: Vec<String> = (0..20).map(|i| format!("to-alice-{i}")).collect();
    assert_eq!(texts(&sk(&alice, &["msg", "recv", "--json"], None)), want);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn relay_quotas_are_set_on_the_command_line() {
    let dir = temp_dir("quota");
    let (_relay, addr) = relay_with(
        &dir.join("relay"),
        "127.0.0.1:0",
        None,
        &["--max-queue-per-recipient", "2"],
    );
    let (alice, bob) = (dir.join("alice"), dir.join("bob"));
    init(&alice, &addr, "alice");
    init(&bob, &addr, "bob");
    sk(&alice, &["msg", "send", "bob", "one"], None);
    sk(&alice, &["msg", "send", "bob", "two"], None);
    // Bob is offline: the third message finds his queue full.
    let child = Command::new(BIN)
        .arg("--state")
        .arg(&alice)
        .args(["msg", "send", "bob", "three"])
        .env("SESSIONKEY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = bounded::output_within(child, CHILD_TIMEOUT, "the third send");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a third message was queued: {stderr}"
    );
    assert!(stderr.contains("queue on the relay is full"), "{stderr}");
}

/// `GET /metrics` on `port`: the samples, `name{labels}` -> value (every sample line is
/// checked to be `name{labels} number`).
fn relay_metrics(port: u16) -> std::collections::BTreeMap<String, f64> {
    use std::io::Read;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics");
    conn.set_read_timeout(Some(CHILD_TIMEOUT)).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    for secretish in ["alice", "bob", "127.0.0.1"] {
        assert!(
            !body.contains(secretish),
            "{secretish} in the metrics:\n{body}"
        );
    }
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{l:?}"));
            (series.to_string(), value)
        })
        .collect()
}

#[test]
fn relay_metrics_count_messages_and_prekeys_by_bucket_without_names() {
    let dir = temp_dir("relay-metrics");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_relay, addr) = relay_with(
        &dir.join("relay"),
        "127.0.0.1:0",
        None,
        &["--metrics", &format!("127.0.0.1:{port}")],
    );
    let (alice, bob) = (dir.join("alice"), dir.join("bob"));
    init(&alice, &addr, "alice");
    init(&bob, &addr, "bob");
    let m = relay_metrics(port);
    assert_eq!(m["sessionkey_relay_devices"], 2.0, "{m:#?}");
    assert_eq!(m["sessionkey_relay_messages_waiting"], 0.0);
    for kind in ["x25519", "mlkem"] {
        let devices: f64 = m
            .iter()
            .filter(|(k, _)| {
                k.starts_with("sessionkey_relay_prekeys_available_devices{")
                    && k.contains(&format!("kind=\"{kind}\""))
            })
            .map(|(_, v)| v)
            .sum();
        assert_eq!(devices, 2.0, "every device is in one {kind} bucket: {m:#?}");
        let empty = format!(
            "sessionkey_relay_prekeys_available_devices{{kind=\"{kind}\",available=\"0\"}}"
        );
        assert_eq!(m[&empty], 0.0, "both uploaded prekeys at init: {m:#?}");
    }

    sk(&alice, &["msg", "send", "bob", "one"], None);
    sk(&alice, &["msg", "send", "bob", "two"], None);
    let m = relay_metrics(port);
    assert_eq!(m["sessionkey_relay_messages_queued_total"], 2.0, "{m:#?}");
    assert_eq!(m["sessionkey_relay_messages_waiting"], 2.0);
    assert_eq!(m["sessionkey_relay_messages_delivered_total"], 0.0);
    assert!(m["sessionkey_relay_bundles_total"] >= 1.0);

    assert_eq!(
        texts(&sk(&bob, &["msg", "recv", "--json"], None)),
        ["one", "two"]
    );
    let m = relay_metrics(port);
    assert_eq!(
        m["sessionkey_relay_messages_delivered_total"], 2.0,
        "{m:#?}"
    );
    assert_eq!(m["sessionkey_relay_messages_waiting"], 0.0);
    assert_eq!(m["sessionkey_relay_messages_expired_total"], 0.0);
}
