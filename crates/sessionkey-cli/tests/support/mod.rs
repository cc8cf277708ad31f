//! Helpers shared by the CLI's end-to-end tests: the real `sessionkey` binary in child
//! processes, bounded waits, temporary directories, plain TCP services and data streams.
//!
//! Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest::{Context, SHA256};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_sessionkey");

/// Bound on any single socket read or write.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a process becoming ready (listening).
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on a process exiting, or a log line appearing.
pub(crate) const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------
// Data: a streaming xorshift generator and SHA-256.
// ---------------------------------------------------------------------------------------

/// xorshift64: fast, deterministic, never materialises the whole stream.
pub(crate) struct XorShift(pub(crate) u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so that neighbouring seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    /// The next `buf.len()` bytes of the stream (lengths that are not a multiple of 8 drop
    /// the rest of the last word). Written for speed at opt-level 0 (whole words, one copy
    /// each): about 3 s per GiB in the debug test profile.
    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
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
pub(crate) struct Summary {
    pub(crate) bytes: u64,
    pub(crate) sha256: String,
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Send `total` bytes of the xorshift stream `seed`; hash what was sent.
pub(crate) fn send_stream(conn: &mut TcpStream, seed: u64, total: u64) -> io::Result<Summary> {
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
pub(crate) fn receive_stream(conn: &mut TcpStream) -> io::Result<Summary> {
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
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
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
pub(crate) struct Output {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// A key pair made by `sessionkey keygen`, described by `sessionkey pubkey`.
#[derive(Debug, Clone)]
pub(crate) struct Key {
    pub(crate) path: PathBuf,
    /// `sessionkey-x25519 BASE64`, as `sessionkey pubkey` prints it.
    pub(crate) public: String,
    /// `SHA256:...`, as `sessionkey pubkey` prints it.
    pub(crate) fingerprint: String,
}

impl Key {
    /// The private key file, as an argument.
    pub(crate) fn file(&self) -> &str {
        self.path.to_str().expect("UTF-8 temp path")
    }

    /// The base64 of the key, without the type.
    pub(crate) fn base64(&self) -> &str {
        self.public.split_whitespace().nth(1).expect("key base64")
    }
}

/// One test's world: a temp dir holding keys, logs and the private runtime directory.
pub(crate) struct Env {
    pub(crate) dir: TempDir,
    pub(crate) run_dir: PathBuf,
    /// Environment variables every child gets (never set in this process, whose tests run
    /// in parallel).
    pub(crate) child_env: Vec<(String, PathBuf)>,
}

impl Env {
    pub(crate) fn new(tag: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new(tag);
        let run_dir = dir.0.join("run");
        fs::create_dir_all(&run_dir).expect("create the runtime dir");
        fs::set_permissions(&run_dir, fs::Permissions::from_mode(0o700)).expect("chmod");
        Self {
            dir,
            run_dir,
            child_env: Vec::new(),
        }
    }

    /// Every child of this environment gets `name=value`.
    #[allow(dead_code)]
    pub(crate) fn with_child_env(mut self, name: &str, value: PathBuf) -> Self {
        self.child_env.push((name.to_string(), value));
        self
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    pub(crate) fn command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env("XDG_RUNTIME_DIR", &self.run_dir)
            .env("NO_COLOR", "1")
            .env_remove("SESSIONKEY_LOG")
            .env_remove("RUST_LOG")
            .envs(self.child_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Start `sessionkey ARGS`, standard output and error to files named after `name`.
    pub(crate) fn spawn(&self, name: &str, args: &[&str], stdin: Stdio) -> Proc {
        self.spawn_limited(name, args, stdin, None)
    }

    /// [`Env::spawn`], with the open-files limit (soft and hard) set to `nofile` first.
    pub(crate) fn spawn_limited(
        &self,
        name: &str,
        args: &[&str],
        stdin: Stdio,
        nofile: Option<u32>,
    ) -> Proc {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let stdout = self.path(&format!("{name}.{n}.stdout"));
        let stderr = self.path(&format!("{name}.{n}.stderr"));
        let mut command = self.command();
        if let Some(nofile) = nofile {
            let program = command.get_program().to_owned();
            command = Command::new("sh");
            command
                .env("XDG_RUNTIME_DIR", &self.run_dir)
                .env("NO_COLOR", "1")
                .env_remove("SESSIONKEY_LOG")
                .env_remove("RUST_LOG")
                .envs(self.child_env.iter().map(|(k, v)| (k, v)))
                .arg("-c")
                .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
                .arg(program);
        }
        let child = command
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
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        let mut p = self.spawn("run", args, Stdio::null());
        let code = p.wait(EXIT_TIMEOUT);
        Output {
            code,
            stdout: fs::read_to_string(&p.stdout).unwrap_or_default(),
            stderr: p.stderr(),
        }
    }

    pub(crate) fn keygen(&self, name: &str) -> Key {
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
    pub(crate) fn start_on(
        &self,
        name: &str,
        args: &[String],
        ready: &str,
    ) -> Result<Proc, String> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut p = self.spawn(name, &args, Stdio::null());
        p.wait_log(ready, READY_TIMEOUT).map(|_| p)
    }

    /// Start a listening process on a free port (another one if that port was taken in the
    /// meantime); `args` gets the port.
    pub(crate) fn start_listening(
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

    pub(crate) fn server_args(
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

    pub(crate) fn tunnel_server(
        &self,
        name: &str,
        key: &Key,
        to: SocketAddr,
        allow: &[&str],
    ) -> (Proc, u16) {
        self.start_listening(
            name,
            |port| Self::server_args(name, port, key, to, allow),
            "tunnel server ready",
        )
    }

    /// A tunnel client to `127.0.0.1:server_port`; `trust` is `--server-key K` or
    /// `--known-peers FILE [--accept-new]`.
    pub(crate) fn tunnel_client(
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
    pub(crate) fn status(&self) -> serde_json::Value {
        let out = self.run(&["status", "--json"]);
        assert_eq!(out.code, Some(0), "status: {out:?}");
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status JSON: {e}: {out:?}"))
    }
}

/// A child process, SIGKILLed and reaped when dropped.
pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) child: Child,
    pub(crate) stdout: PathBuf,
    pub(crate) stderr: PathBuf,
    pub(crate) exited: Option<Option<i32>>,
}

impl Proc {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Standard error so far, without terminal colour codes.
    pub(crate) fn stderr(&self) -> String {
        strip_ansi(&fs::read_to_string(&self.stderr).unwrap_or_default())
    }

    pub(crate) fn try_exit(&mut self) -> Option<Option<i32>> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status.code());
            }
        }
        self.exited
    }

    /// Wait until `needle` is in the log; an error (with the log) if the process exits or
    /// the time runs out first.
    pub(crate) fn wait_log(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
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

    pub(crate) fn expect_log(&mut self, needle: &str) -> String {
        self.wait_log(needle, EXIT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The exit code (None: killed by a signal); kills it and fails if it takes too long.
    pub(crate) fn wait(&mut self, timeout: Duration) -> Option<i32> {
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
    pub(crate) fn kill(&mut self) {
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

pub(crate) fn strip_ansi(s: &str) -> String {
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
pub(crate) fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Wait until something listens on 127.0.0.1:`port` (Linux: /proc/net/tcp), without
/// connecting to it (a connection would use up a one-shot listener such as `pipe listen`).
pub(crate) fn wait_listening(port: u16, p: &mut Proc) -> Result<(), String> {
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

/// A plain TCP connection to 127.0.0.1:`port`, with bounded reads and writes.
pub(crate) fn connect(port: u16) -> TcpStream {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s
}

/// The next read must be a clean end of stream (the session was closed properly).
pub(crate) fn expect_clean_eof(conn: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    match conn.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{n} unexpected bytes instead of the end of stream"),
        Err(e) => panic!("expected a clean end of stream, got {e} ({:?})", e.kind()),
    }
}

/// Reads after the session failed: what is still buffered may arrive, then the reset must
/// come; a clean end of stream would hide the failure from the application.
pub(crate) fn expect_reset(conn: &mut TcpStream, what: &str) -> u64 {
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

pub(crate) type Handler = dyn Fn(TcpStream, usize) + Send + Sync;

/// A TCP server on 127.0.0.1:0 running `handler(connection, index)` on a thread per
/// connection; stops accepting when dropped.
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) accepted: Arc<AtomicUsize>,
    pub(crate) thread: Option<thread::JoinHandle<()>>,
}

impl Target {
    pub(crate) fn start(handler: impl Fn(TcpStream, usize) + Send + Sync + 'static) -> Self {
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

    pub(crate) fn accepted(&self) -> usize {
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
pub(crate) fn echo(mut conn: TcpStream, _: usize) {
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

pub(crate) fn echo_target() -> Target {
    Target::start(echo)
}

pub(crate) fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}
