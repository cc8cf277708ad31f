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
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest::{Context, SHA256};

const BIN: &str = env!("CARGO_BIN_EXE_sessionkey");

/// Bound on any single socket read or write.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a process becoming ready (listening).
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on a process exiting, or a log line appearing.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------
// Data: a streaming xorshift generator and SHA-256.
// ---------------------------------------------------------------------------------------

/// xorshift64: fast, deterministic, never materialises the whole stream.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so that neighbouring seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    /// The next `buf.len()` bytes of the stream (lengths that are not a multiple of 8 drop
    /// the rest of the last word). Written for speed at opt-level 0 (whole words, one copy
    /// each): about 3 s per GiB in the debug test profile.
    fn fill(&mut self, buf: &mut [u8]) {
        let mut s = self.0;
        let mut i = 0;
        let len = buf.len();
        while i + 8 <= len {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            buf[i..i + 8].copy_from_slice(&s.to_le_bytes());
            i += 8;
        }
        if i < len {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            buf[i..].copy_from_slice(&s.to_le_bytes()[..len - i]);
        }
        self.0 = s;
    }
}

/// A byte count and the SHA-256 of those bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    bytes: u64,
    sha256: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Send `total` bytes of the xorshift stream `seed`; hash what was sent.
fn send_stream(conn: &mut TcpStream, seed: u64, total: u64) -> io::Result<Summary> {
    let mut rng = XorShift::new(seed);
    let mut hash = Context::new(&SHA256);
    let mut buf = vec![0u8; MIB as usize];
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        conn.write_all(&buf[..n])?;
        sent += n as u64;
    }
    Ok(Summary {
        bytes: sent,
        sha256: hex(hash.finish().as_ref()),
    })
}

/// Read to a clean end of stream; hash what was received.
fn receive_stream(conn: &mut TcpStream) -> io::Result<Summary> {
    let mut hash = Context::new(&SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(Summary {
        bytes,
        sha256: hex(hash.finish().as_ref()),
    })
}

// ---------------------------------------------------------------------------------------
// Temporary directories, child processes.
// ---------------------------------------------------------------------------------------

/// A uniquely named directory under the system temp dir; removed when the test passes,
/// kept (and named) when it fails.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "sessionkey-e2e-{tag}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).expect("create the temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("kept {} for inspection", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// What a finished command left.
#[derive(Debug)]
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// A key pair made by `sessionkey keygen`, described by `sessionkey pubkey`.
#[derive(Debug, Clone)]
struct Key {
    path: PathBuf,
    /// `sessionkey-x25519 BASE64`, as `sessionkey pubkey` prints it.
    public: String,
    /// `SHA256:...`, as `sessionkey pubkey` prints it.
    fingerprint: String,
}

impl Key {
    /// The private key file, as an argument.
    fn file(&self) -> &str {
        self.path.to_str().expect("UTF-8 temp path")
    }

    /// The base64 of the key, without the type.
    fn base64(&self) -> &str {
        self.public.split_whitespace().nth(1).expect("key base64")
    }
}

/// One test's world: a temp dir holding keys, logs and the private runtime directory.
struct Env {
    dir: TempDir,
    run_dir: PathBuf,
}

impl Env {
    fn new(tag: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new(tag);
        let run_dir = dir.0.join("run");
        fs::create_dir_all(&run_dir).expect("create the runtime dir");
        fs::set_permissions(&run_dir, fs::Permissions::from_mode(0o700)).expect("chmod");
        Self { dir, run_dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env("XDG_RUNTIME_DIR", &self.run_dir)
            .env("NO_COLOR", "1")
            .env_remove("SESSIONKEY_LOG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// Start `sessionkey ARGS`, standard output and error to files named after `name`.
    fn spawn(&self, name: &str, args: &[&str], stdin: Stdio) -> Proc {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let stdout = self.path(&format!("{name}.{n}.stdout"));
        let stderr = self.path(&format!("{name}.{n}.stderr"));
        let child = self
            .command()
            .args(args)
            .stdin(stdin)
            .stdout(File::create(&stdout).expect("stdout file"))
            .stderr(File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start sessionkey");
        Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
            exited: None,
        }
    }

    /// Run `sessionkey ARGS` to completion (bounded).
    fn run(&self, args: &[&str]) -> Output {
        let mut p = self.spawn("run", args, Stdio::null());
        let code = p.wait(EXIT_TIMEOUT);
        Output {
            code,
            stdout: fs::read_to_string(&p.stdout).unwrap_or_default(),
            stderr: p.stderr(),
        }
    }

    fn keygen(&self, name: &str) -> Key {
        let path = self.path(&format!("{name}.key"));
        let p = path.to_str().expect("UTF-8 temp path");
        let out = self.run(&["keygen", "-o", p, "-C", name]);
        assert_eq!(out.code, Some(0), "keygen: {out:?}");
        let out = self.run(&["pubkey", p]);
        assert_eq!(out.code, Some(0), "pubkey: {out:?}");
        let public = out.stdout.trim().to_string();
        assert!(public.starts_with("sessionkey-x25519 "), "{out:?}");
        let fingerprint = out
            .stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix("fingerprint "))
            .expect("pubkey prints the fingerprint")
            .trim()
            .to_string();
        assert!(fingerprint.starts_with("SHA256:"), "{out:?}");
        Key {
            path,
            public,
            fingerprint,
        }
    }

    /// Start a listening process (its address is in `args`); ready when `ready` appears in
    /// its log.
    fn start_on(&self, name: &str, args: &[String], ready: &str) -> Result<Proc, String> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut p = self.spawn(name, &args, Stdio::null());
        p.wait_log(ready, READY_TIMEOUT).map(|_| p)
    }

    /// Start a listening process on a free port (another one if that port was taken in the
    /// meantime); `args` gets the port.
    fn start_listening(
        &self,
        name: &str,
        args: impl Fn(u16) -> Vec<String>,
        ready: &str,
    ) -> (Proc, u16) {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            match self.start_on(name, &args(port), ready) {
                Ok(p) => return (p, port),
                Err(e) if e.contains("cannot listen") => last = e,
                Err(e) => panic!("{name} did not start: {e}"),
            }
        }
        panic!("{name} found no free port: {last}");
    }

    fn server_args(
        name: &str,
        port: u16,
        key: &Key,
        to: SocketAddr,
        allow: &[&str],
    ) -> Vec<String> {
        let mut args: Vec<String> = [
            "tunnel",
            "server",
            "--name",
            name,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--to",
            &to.to_string(),
            "--key",
            key.file(),
        ]
        .map(String::from)
        .to_vec();
        for a in allow {
            args.extend(["--allow".to_string(), a.to_string()]);
        }
        args
    }

    fn tunnel_server(&self, name: &str, key: &Key, to: SocketAddr, allow: &[&str]) -> (Proc, u16) {
        self.start_listening(
            name,
            |port| Self::server_args(name, port, key, to, allow),
            "tunnel server ready",
        )
    }

    /// A tunnel client to `127.0.0.1:server_port`; `trust` is `--server-key K` or
    /// `--known-peers FILE [--accept-new]`.
    fn tunnel_client(
        &self,
        name: &str,
        key: &Key,
        server_port: u16,
        trust: &[&str],
    ) -> (Proc, u16) {
        self.start_listening(
            name,
            |port| {
                let mut args: Vec<String> = [
                    "tunnel",
                    "client",
                    "--name",
                    name,
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--server",
                    &format!("127.0.0.1:{server_port}"),
                    "--key",
                    key.file(),
                ]
                .map(String::from)
                .to_vec();
                args.extend(trust.iter().map(|s| s.to_string()));
                args
            },
            "tunnel client ready",
        )
    }

    /// `sessionkey status --json`, parsed.
    fn status(&self) -> serde_json::Value {
        let out = self.run(&["status", "--json"]);
        assert_eq!(out.code, Some(0), "status: {out:?}");
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status JSON: {e}: {out:?}"))
    }
}

/// A child process, SIGKILLed and reaped when dropped.
struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    exited: Option<Option<i32>>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Standard error so far, without terminal colour codes.
    fn stderr(&self) -> String {
        strip_ansi(&fs::read_to_string(&self.stderr).unwrap_or_default())
    }

    fn try_exit(&mut self) -> Option<Option<i32>> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status.code());
            }
        }
        self.exited
    }

    /// Wait until `needle` is in the log; an error (with the log) if the process exits or
    /// the time runs out first.
    fn wait_log(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.stderr();
            if log.contains(needle) {
                return Ok(log);
            }
            if let Some(code) = self.try_exit() {
                // It may have written the line just before exiting.
                let log = self.stderr();
                if log.contains(needle) {
                    return Ok(log);
                }
                return Err(format!(
                    "{} exited ({code:?}) without logging {needle:?}:\n{log}",
                    self.name
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not log {needle:?} within {timeout:?}:\n{log}",
                    self.name
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn expect_log(&mut self, needle: &str) -> String {
        self.wait_log(needle, EXIT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The exit code (None: killed by a signal); kills it and fails if it takes too long.
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.try_exit() {
                return code;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "{} did not exit within {timeout:?}:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, and reap.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.exited.is_none() {
            self.exited = Some(None);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            let log = self.stderr();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- {} (pid {}) stderr, last lines:\n{}",
                self.name,
                self.child.id(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A port nobody listens on right now (the CLI cannot listen on port 0 and report it).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Wait until something listens on 127.0.0.1:`port` (Linux: /proc/net/tcp), without
/// connecting to it (a connection would use up a one-shot listener such as `pipe listen`).
fn wait_listening(port: u16, p: &mut Proc) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let needle = format!(":{port:04X}");
    loop {
        let Ok(table) = fs::read_to_string("/proc/net/tcp") else {
            // Not Linux: give it a moment.
            thread::sleep(Duration::from_millis(500));
            return Ok(());
        };
        let listening = table.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&needle) && f[3] == "0A"
        });
        if listening {
            return Ok(());
        }
        if let Some(code) = p.try_exit() {
            return Err(format!("{} exited ({code:?}):\n{}", p.name, p.stderr()));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} does not listen on {port}:\n{}",
                p.name,
                p.stderr()
            ));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

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

/// A plain TCP connection to 127.0.0.1:`port`, with bounded reads and writes.
fn connect(port: u16) -> TcpStream {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s
}

/// The next read must be a clean end of stream (the session was closed properly).
fn expect_clean_eof(conn: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    match conn.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{n} unexpected bytes instead of the end of stream"),
        Err(e) => panic!("expected a clean end of stream, got {e} ({:?})", e.kind()),
    }
}

/// Reads after the session failed: what is still buffered may arrive, then the reset must
/// come; a clean end of stream would hide the failure from the application.
fn expect_reset(conn: &mut TcpStream, what: &str) -> u64 {
    let mut buf = vec![0u8; 256 * 1024];
    let mut drained = 0u64;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => panic!(
                "{what}: the application saw a clean end of stream (after {drained} more bytes); \
                 it must see a reset"
            ),
            Ok(n) => drained += n as u64,
            Err(e) => {
                assert_eq!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset,
                    "{what}: expected a connection reset, got {e}"
                );
                return drained;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The plain TCP services behind the tunnel (played by this test).
// ---------------------------------------------------------------------------------------

type Handler = dyn Fn(TcpStream, usize) + Send + Sync;

/// A TCP server on 127.0.0.1:0 running `handler(connection, index)` on a thread per
/// connection; stops accepting when dropped.
struct Target {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Target {
    fn start(handler: impl Fn(TcpStream, usize) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the target");
        let addr = listener.local_addr().expect("target addr");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let thread = {
            let stop = stop.clone();
            let accepted = accepted.clone();
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
                    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
                    let index = accepted.fetch_add(1, Ordering::SeqCst);
                    let handler = handler.clone();
                    thread::spawn(move || handler(conn, index));
                }
            })
        };
        Self {
            addr,
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Echo until the end of stream, then end ours.
fn echo(mut conn: TcpStream, _: usize) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}

fn echo_target() -> Target {
    Target::start(echo)
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
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

/// KNOWN BUG (this test fails today): `pipe connect` refused by the known-peers check exits
/// 70 ("internal error") instead of 77 ("key refused or changed"), for a changed key and for
/// an unknown one alike. `cmd::exit_code` (crates/sessionkey-cli/src/cmd/mod.rs) looks for a
/// `TrustError` in the error chain, but `ClientConfig::connect` returns it wrapped in
/// `TunnelError::Trust`, which is `#[error(transparent)]`: its `source()` forwards to the
/// `TrustError`'s own source (none), so the `TrustError` never appears in `chain()`.
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
fn help_exits_zero_and_unknown_flags_exit_two() {
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
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert!(out.stderr.contains("--no-such-flag"), "{args:?}: {out:?}");
    }
    // With no tunnel running, status lists nothing.
    let status = env.status();
    assert_eq!(status, serde_json::json!([]));
}
