//! README's fenced examples, run as written on one machine (issue 21): each command of the
//! "Using it" and "Messaging" blocks goes through `sh -c` with `sessionkey` on PATH, in a
//! temporary directory that is also HOME.
//!
//! What is changed, and only this: `host` and `0.0.0.0` become 127.0.0.1, and
//! `relay.example` too; each port the README names becomes a free port (the same one
//! everywhere it appears), so that a test run never meets another program. Commands that
//! keep running (`tunnel server|client`, `relay serve`, `recv --follow`) run in the
//! background; every other command must exit 0. Skipped, with the reason: the "Two
//! commands" block (it is what CI runs), the TLS block (tls.rs's
//! `readme_tls_example_works_as_written` runs it with the server's real pin in place of
//! `...`), and the `--database postgres://` line (it needs a PostgreSQL server; msg_e2e.rs
//! runs two relays on one).

mod bounded;
mod support;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

/// The fenced blocks of `text` that follow the heading `heading`, up to the next heading.
fn blocks_under(text: &str, heading: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_section = false;
    let mut block: Option<String> = None;
    for line in text.lines() {
        if let Some(b) = block.as_mut() {
            if line.starts_with("```") {
                out.push(block.take().unwrap_or_default());
            } else {
                b.push_str(line);
                b.push('\n');
            }
            continue;
        }
        if line.starts_with("## ") {
            in_section = line.trim_start_matches("## ").trim() == heading;
        } else if in_section && line.starts_with("```") {
            block = Some(String::new());
        }
    }
    out
}

/// The commands of a block: continuation lines joined, blank and comment lines dropped.
fn commands(block: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
        } else {
            current.push_str(line);
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

/// A world for the README: a directory that is HOME and the working directory, with
/// `sessionkey` on PATH, and the README's ports mapped to free ones.
struct World {
    env: Env,
    home: PathBuf,
    ports: HashMap<u16, u16>,
    background: Vec<(String, Child, PathBuf)>,
}

impl World {
    fn new(tag: &str, ports: &[u16]) -> Self {
        let env = Env::new(tag);
        let home = env.path("home");
        fs::create_dir_all(&home).unwrap();
        let ports = ports.iter().map(|&p| (p, free_port())).collect();
        Self {
            env,
            home,
            ports,
            background: Vec::new(),
        }
    }

    fn port(&self, readme_port: u16) -> u16 {
        self.ports[&readme_port]
    }

    /// The command with this machine's addresses and ports.
    fn localize(&self, command: &str) -> String {
        let mut c = command
            .replace("0.0.0.0:", "127.0.0.1:")
            .replace("host:", "127.0.0.1:")
            .replace("relay.example:", "127.0.0.1:");
        for (from, to) in &self.ports {
            c = c.replace(&format!(":{from}"), &format!(":{to}"));
        }
        c
    }

    fn sh(&self, command: &str) -> Command {
        let bin_dir = Path::new(BIN).parent().unwrap();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(command)
            .current_dir(&self.home)
            .env("PATH", path)
            .env("HOME", &self.home)
            .env("XDG_DATA_HOME", self.home.join(".local/share"))
            .env("XDG_RUNTIME_DIR", &self.env.run_dir)
            .env("NO_COLOR", "1")
            .env_remove("SESSIONKEY_STATE")
            .env_remove("SESSIONKEY_LOG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// Run a command to completion; it must exit 0. Returns its standard output.
    fn run(&self, readme: &str) -> String {
        let command = self.localize(readme);
        let out = bounded::run_within(
            &mut self.sh(&command),
            Duration::from_secs(60),
            &format!("README: {readme}"),
        );
        assert!(
            out.status.success(),
            "README command failed ({}): {readme}\nran: {command}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Start a command that keeps running, its output in a file; `exec` so that killing it
    /// kills the program.
    fn start(&mut self, readme: &str) -> PathBuf {
        let command = self.localize(readme);
        let n = self.background.len();
        let out = self.env.path(&format!("bg{n}.out"));
        let child = self
            .sh(&format!("exec {command}"))
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(out.with_extension("err")).unwrap())
            .spawn()
            .unwrap();
        self.background
            .push((readme.to_string(), child, out.clone()));
        out
    }

    /// Wait until something listens on `port`, or fail with the background logs.
    fn wait_listening(&mut self, port: u16) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let needle = format!(":{port:04X}");
        loop {
            let table = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
            if table.lines().skip(1).any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1].ends_with(&needle) && f[3] == "0A"
            }) {
                return;
            }
            for (what, child, out) in &mut self.background {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "README command exited ({status}): {what}\n{}",
                        fs::read_to_string(out.with_extension("err")).unwrap_or_default()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "nothing listens on {port} after {READY_TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.background {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn readme() -> String {
    fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap()
}

#[test]
fn readme_using_it_runs_as_written_on_one_machine() {
    let text = readme();
    let blocks = blocks_under(&text, "Using it");
    let native = blocks
        .iter()
        .find(|b| b.contains("sessionkey tunnel server --listen"))
        .expect("README's native tunnel example");
    let mut w = World::new("readme-native", &[7000, 8080, 9000]);
    // The service the example forwards to: 127.0.0.1:8080 (mapped).
    let service = std::net::TcpListener::bind(("127.0.0.1", w.port(8080))).unwrap();
    thread::spawn(move || {
        for conn in service.incoming().flatten() {
            thread::spawn(move || echo(conn, 0));
        }
    });
    let mut ran = 0;
    for command in commands(native) {
        if command.contains("tunnel server") {
            w.start(&command);
            w.wait_listening(w.port(7000));
        } else if command.contains("tunnel client") {
            w.start(&command);
            w.wait_listening(w.port(9000));
            // Through the client, the tunnel and the server to the service, and back.
            let mut conn = connect(w.port(9000));
            conn.write_all(b"through the README's tunnel").unwrap();
            conn.shutdown(std::net::Shutdown::Write).unwrap();
            let mut back = Vec::new();
            conn.read_to_end(&mut back).unwrap();
            assert_eq!(back, b"through the README's tunnel");
        } else {
            w.run(&command);
        }
        ran += 1;
    }
    assert!(ran >= 5, "only {ran} commands in README's example");
}

#[test]
fn readme_messaging_runs_as_written_on_one_machine() {
    let text = readme();
    let blocks = blocks_under(&text, "Messaging");
    let block = blocks
        .iter()
        .find(|b| b.contains("relay serve"))
        .expect("README's messaging example");
    let mut w = World::new("readme-msg", &[8443]);
    let mut follow = None;
    let mut ran = 0;
    for command in commands(block) {
        if command.contains("postgres://") {
            continue; // needs a PostgreSQL server: see the module documentation
        }
        if command.contains("relay serve") {
            w.start(&command);
            w.wait_listening(w.port(8443));
        } else if command.contains("--follow") {
            follow = Some(w.start(&command));
            // What was sent before arrives at once.
            let out = follow.clone().unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !fs::read_to_string(&out)
                .unwrap_or_default()
                .contains("hello")
            {
                assert!(
                    Instant::now() < deadline,
                    "msg recv --follow did not show \"hello\" within 30 s: {}\n{}",
                    fs::read_to_string(&out).unwrap_or_default(),
                    fs::read_to_string(out.with_extension("err")).unwrap_or_default()
                );
                thread::sleep(Duration::from_millis(50));
            }
        } else {
            w.run(&command);
        }
        ran += 1;
    }
    assert!(follow.is_some(), "no msg recv --follow in README's example");
    assert!(ran >= 6, "only {ran} commands in README's example");
}
