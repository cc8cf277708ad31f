//! A newcomer's first hour, each step as the docs write it, with exit codes checked by
//! number (issue 21): the demo at any size; an unknown suite is a usage error (64) that
//! lists the valid ones; every command's `--help` shows the exit-status table; missing
//! input 66, cannot create 73, bad configuration 78; a refused or changed server key exits
//! 77 on `pipe connect` and on `tunnel client`; the psk recipe makes a file the program
//! accepts; `keygen -o` into a missing directory; tunnel configuration paths relative to
//! the file; `msg send`'s usage line; a failed `msg init` leaves nothing behind.

mod bounded;
mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// The suites as the usage error must list them.
const SUITES: [&str; 3] = ["aes-256-gcm", "chacha20-poly1305", "aes-128-gcm"];

#[test]
fn demo_re_handshakes_at_any_size() {
    let env = Env::new("demo-sizes");
    for mib in ["1", "2", "4"] {
        let out = env.run(&["demo", "--mib", mib]);
        assert_eq!(out.code, Some(0), "demo --mib {mib}: {out:?}");
        assert!(
            out.stdout.contains("re-handshake complete"),
            "demo --mib {mib} shows no re-handshake: {}",
            out.stdout
        );
    }
    let out = env.run(&["demo", "--mib", "0"]);
    assert_eq!(out.code, Some(64), "demo --mib 0: {out:?}");
}

#[test]
fn an_unknown_suite_is_a_usage_error_listing_the_suites_everywhere() {
    let env = Env::new("suite-usage");
    let key = env.keygen("k");
    let pubkey = key.base64().to_string();
    for args in [
        vec!["demo", "--suite", "chacha"],
        vec![
            "tunnel",
            "server",
            "--listen",
            "127.0.0.1:1",
            "--to",
            "127.0.0.1:2",
            "--key",
            key.file(),
            "--suite",
            "chacha",
        ],
        vec![
            "tunnel",
            "client",
            "--listen",
            "127.0.0.1:1",
            "--server",
            "127.0.0.1:2",
            "--key",
            key.file(),
            "--server-key",
            &pubkey,
            "--suite",
            "chacha",
        ],
        vec!["pipe", "connect", "127.0.0.1:1", "--suite", "chacha"],
        vec!["pipe", "listen", "127.0.0.1:1", "--suite", "chacha"],
    ] {
        let out = env.run(&args);
        assert_eq!(out.code, Some(64), "{args:?}: {out:?}");
        for suite in SUITES {
            assert!(
                out.stderr.contains(suite),
                "{args:?} does not list {suite}: {out:?}"
            );
        }
    }
    // The same mistake in a configuration file is a configuration error (78), listing them.
    let config = env.path("suite.toml");
    fs::write(
        &config,
        format!(
            "[[tunnel]]\nrole = \"server\"\nlisten = \"127.0.0.1:1\"\nto = \"127.0.0.1:2\"\n\
             key = \"{}\"\nsuite = \"chacha\"\n",
            key.file()
        ),
    )
    .unwrap();
    let out = env.run(&["tunnel", "--config", config.to_str().unwrap()]);
    assert_eq!(out.code, Some(78), "{out:?}");
    assert!(out.stderr.contains("chacha20-poly1305"), "{out:?}");
}

/// The subcommand names listed under "Commands:" in a help text.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect()
}

#[test]
fn every_help_shows_the_exit_status_table() {
    let env = Env::new("help-table");
    let mut queue = vec![Vec::<String>::new()];
    let mut seen = 0;
    while let Some(path) = queue.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = env.run(&args);
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
        for code in ["64", "66", "69", "70", "73", "76", "77", "78"] {
            assert!(
                out.stdout.lines().any(|l| l.trim_start().starts_with(code)),
                "{args:?} --help has no line for exit status {code}:\n{}",
                out.stdout
            );
        }
        seen += 1;
        for sub in subcommands(&out.stdout) {
            let mut next = path.clone();
            next.push(sub);
            queue.push(next);
        }
    }
    // sessionkey, its 9 commands and their subcommands.
    assert!(seen >= 20, "only {seen} help texts found");
}

#[test]
fn usage_missing_input_cannot_create_and_config_exit_codes() {
    let env = Env::new("exit-codes");
    // 64: an unknown flag, a missing argument.
    for args in [
        &["keygen", "--bogus"][..],
        &["tunnel", "server"],
        &["msg", "send"],
    ] {
        let out = env.run(args);
        assert_eq!(out.code, Some(64), "{args:?}: {out:?}");
    }
    // 66: a key file that does not exist.
    let missing = env.path("nowhere.key");
    let out = env.run(&["pubkey", missing.to_str().unwrap()]);
    assert_eq!(out.code, Some(66), "{out:?}");
    let out = env.run(&[
        "pipe",
        "connect",
        "127.0.0.1:1",
        "--key",
        missing.to_str().unwrap(),
        "--insecure-anonymous",
    ]);
    assert_eq!(out.code, Some(66), "{out:?}");
    // 73: a key that exists already; a directory that cannot be made.
    let key = env.keygen("twice");
    let out = env.run(&["keygen", "-o", key.file()]);
    assert_eq!(out.code, Some(73), "{out:?}");
    let blocker = env.path("a-file");
    fs::write(&blocker, "not a directory").unwrap();
    let under_file = blocker.join("sub/k.key");
    let out = env.run(&["keygen", "-o", under_file.to_str().unwrap()]);
    assert_eq!(out.code, Some(73), "{out:?}");
    assert!(
        out.stderr.contains("cannot create the directory"),
        "{out:?}"
    );
    // 78: a configuration file with a mistake; a key file that is too open.
    let config = env.path("bad.toml");
    fs::write(&config, "[[tunnel]]\nrole = \"server\"\nlisten_typo = 1\n").unwrap();
    let out = env.run(&["tunnel", "--config", config.to_str().unwrap()]);
    assert_eq!(out.code, Some(78), "{out:?}");
    fs::set_permissions(key.file(), fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.run(&["pubkey", key.file()]);
    assert_eq!(out.code, Some(78), "{out:?}");
}

#[test]
fn keygen_makes_a_missing_directory_and_the_hint_is_runnable() {
    let env = Env::new("keygen-dir");
    let key = env.path("keys/deeper/server.key");
    let out = env.run(&["keygen", "-o", key.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    for dir in [env.path("keys"), env.path("keys/deeper")] {
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
    assert!(key.with_extension("key.pub").exists());
    // A server without --key says how to make one; the hint, run as written, works.
    let out = env.run(&[
        "tunnel",
        "server",
        "--listen",
        "127.0.0.1:1",
        "--to",
        "127.0.0.1:2",
    ]);
    assert_eq!(out.code, Some(78), "{out:?}");
    let at = out
        .stderr
        .find("sessionkey keygen")
        .unwrap_or_else(|| panic!("no keygen hint: {out:?}"));
    let hint: Vec<&str> = out.stderr[at..]
        .trim_end_matches(|c: char| c == ')' || c.is_whitespace())
        .split([')', ','])
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .collect();
    assert_eq!(hint, ["keygen", "-o", "FILE"], "{out:?}");
    let file = env.path("from-hint.key");
    let out = env.run(&["keygen", "-o", file.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{out:?}");
}

/// A tunnel server with `server_key`, and a key that is not it.
fn server_and_stranger(env: &Env) -> (Proc, u16, Key, Key) {
    let server_key = env.keygen("server");
    let stranger = env.keygen("stranger");
    let client_key = env.keygen("client");
    let target = echo_target();
    let (server, port) =
        env.tunnel_server("server", &server_key, target.addr, &[&client_key.public]);
    std::mem::forget(target);
    (server, port, stranger, client_key)
}

#[test]
fn a_refused_server_key_exits_77_on_tunnel_client() {
    let env = Env::new("tunnel-77");
    let (_server, port, stranger, client_key) = server_and_stranger(&env);
    // A pin that is not the server's: the first connection fails, the client stops, 77.
    let local = free_port();
    let mut client = env.spawn(
        "client",
        &[
            "tunnel",
            "client",
            "--listen",
            &format!("127.0.0.1:{local}"),
            "--server",
            &format!("127.0.0.1:{port}"),
            "--key",
            client_key.file(),
            "--server-key",
            stranger.base64(),
        ],
        Stdio::null(),
    );
    client.expect_log("tunnel client ready");
    let conn = connect(local);
    let code = client.wait(EXIT_TIMEOUT);
    drop(conn);
    let log = client.stderr();
    assert_eq!(code, Some(77), "{log}");
    assert!(log.contains("sessionkey pubkey"), "{log}");
    // A known-peers file with another key for this server: changed, 77.
    let known = env.path("known");
    fs::write(
        &known,
        format!("[127.0.0.1]:{port} {}\n", stranger.public.trim()),
    )
    .unwrap();
    let local = free_port();
    let mut client = env.spawn(
        "client-known",
        &[
            "tunnel",
            "client",
            "--listen",
            &format!("127.0.0.1:{local}"),
            "--server",
            &format!("127.0.0.1:{port}"),
            "--key",
            client_key.file(),
            "--known-peers",
            known.to_str().unwrap(),
        ],
        Stdio::null(),
    );
    client.expect_log("tunnel client ready");
    let conn = connect(local);
    let code = client.wait(EXIT_TIMEOUT);
    drop(conn);
    let log = client.stderr();
    assert_eq!(code, Some(77), "{log}");
    assert!(log.contains("CHANGED"), "{log}");
}

#[test]
fn the_psk_recipe_makes_a_file_the_program_accepts() {
    let env = Env::new("psk-recipe");
    // The recipe as docs/CONFIG.md writes it (in its table), run by sh in the test dir.
    let config_md =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/CONFIG.md")).unwrap();
    let line = config_md
        .lines()
        .find(|l| l.starts_with("| pre-shared key"))
        .expect("CONFIG.md's pre-shared key row");
    let recipe = line
        .split('`')
        .nth(1)
        .expect("a command in backquotes")
        .replace("\\|", "|");
    let status = bounded::status_within(
        Command::new("sh")
            .arg("-c")
            .arg(&recipe)
            .current_dir(&env.dir.0),
        Duration::from_secs(10),
        "the psk recipe",
    );
    assert!(status.success(), "{recipe}");
    let psk = env.path("psk");
    let mode = fs::metadata(&psk).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o600,
        "the recipe {recipe:?} made a file of mode {mode:o}"
    );
    // Both ends accept it, and a session runs with it.
    let server_key = env.keygen("server");
    let client_key = env.keygen("client");
    let port = free_port();
    let mut listener = env.spawn(
        "listen",
        &[
            "pipe",
            "listen",
            &format!("127.0.0.1:{port}"),
            "--key",
            server_key.file(),
            "--allow",
            client_key.base64(),
            "--psk",
            psk.to_str().unwrap(),
        ],
        Stdio::null(),
    );
    wait_listening(port, &mut listener).unwrap();
    let mut connect = env.spawn(
        "connect",
        &[
            "pipe",
            "connect",
            &format!("127.0.0.1:{port}"),
            "--key",
            client_key.file(),
            "--server-key",
            server_key.base64(),
            "--psk",
            psk.to_str().unwrap(),
        ],
        Stdio::null(),
    );
    assert_eq!(connect.wait(EXIT_TIMEOUT), Some(0), "{}", connect.stderr());
    assert_eq!(
        listener.wait(EXIT_TIMEOUT),
        Some(0),
        "{}",
        listener.stderr()
    );
}

#[test]
fn tunnel_config_paths_are_relative_to_the_file() {
    let env = Env::new("config-relative");
    let conf_dir = env.path("etc");
    fs::create_dir_all(&conf_dir).unwrap();
    let out = env.run(&[
        "keygen",
        "-o",
        conf_dir.join("server.key").to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let client = env.keygen("client");
    fs::write(
        conf_dir.join("authorized_peers"),
        format!("{}\n", client.public.trim()),
    )
    .unwrap();
    let port = free_port();
    let config = conf_dir.join("tunnels.toml");
    fs::write(
        &config,
        format!(
            "[[tunnel]]\nrole = \"server\"\nlisten = \"127.0.0.1:{port}\"\nto = \"127.0.0.1:9\"\n\
             key = \"server.key\"\nauthorized_peers = \"authorized_peers\"\n"
        ),
    )
    .unwrap();
    // Run from another directory: the relative names must still find the files.
    let mut cmd = env.command();
    let elsewhere = env.path("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let stderr = env.path("config-relative.stderr");
    let child = cmd
        .args(["tunnel", "--config", config.to_str().unwrap()])
        .current_dir(&elsewhere)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    loop {
        let log = fs::read_to_string(&stderr).unwrap_or_default();
        if log.contains("tunnel server ready") {
            break;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("the config's relative paths were not found ({status}):\n{log}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ready within {READY_TIMEOUT:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn msg_send_usage_names_the_recipient_first() {
    let env = Env::new("msg-usage");
    let out = env.run(&["msg", "send"]);
    assert_eq!(out.code, Some(64), "{out:?}");
    let usage = out
        .stderr
        .lines()
        .find(|l| l.starts_with("Usage:"))
        .unwrap_or_else(|| panic!("no usage line: {out:?}"));
    let name = usage.find("<NAME>").expect("<NAME> in the usage line");
    let text = usage.find("<TEXT").expect("<TEXT...> in the usage line");
    assert!(
        name < text,
        "the usage line has the arguments in the wrong order: {usage}"
    );
    // And the order it shows is the order that works (parsing only: no state, so 78).
    let out = env.run(&["msg", "send", "bob", "hello"]);
    assert_eq!(out.code, Some(78), "{out:?}");
}

/// A relay on a free port, with its address.
fn relay(env: &Env, name: &str) -> (Proc, String) {
    let port = free_port();
    let state = env.path(name);
    let mut relay = env.spawn(
        name,
        &[
            "--state",
            state.to_str().unwrap(),
            "relay",
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
        Stdio::null(),
    );
    wait_listening(port, &mut relay).unwrap();
    (relay, format!("127.0.0.1:{port}"))
}

#[test]
fn a_failed_msg_init_leaves_nothing_that_blocks_the_retry() {
    let env = Env::new("msg-init");
    let (_relay, addr) = relay(&env, "relay");
    let url = format!("https://{addr}");
    let alice = env.path("alice");
    let out = env.run(&[
        "--state",
        alice.to_str().unwrap(),
        "msg",
        "init",
        "--relay",
        &url,
        "--name",
        "alice",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    // Another device asks for the taken name: refused after its keys were made...
    let other = env.path("other");
    let out = env.run(&[
        "--state",
        other.to_str().unwrap(),
        "msg",
        "init",
        "--relay",
        &url,
        "--name",
        "alice",
    ]);
    assert_eq!(out.code, Some(78), "{out:?}");
    assert!(out.stderr.contains("taken"), "{out:?}");
    assert!(out.stderr.contains("409"), "{out:?}");
    assert!(
        !other.join("msg").exists(),
        "a failed init left {}",
        other.join("msg").display()
    );
    // ...and the retry under another name just works.
    let out = env.run(&[
        "--state",
        other.to_str().unwrap(),
        "msg",
        "init",
        "--relay",
        &url,
        "--name",
        "carol",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(other.join("msg").is_dir());
    let leftovers: Vec<_> = fs::read_dir(&other)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".init-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A relay that is not there: 69, and again nothing left behind.
    let down = env.path("down");
    let out = env.run(&[
        "--state",
        down.to_str().unwrap(),
        "msg",
        "init",
        "--relay",
        &format!("https://127.0.0.1:{}", free_port()),
        "--name",
        "dave",
    ]);
    assert_eq!(out.code, Some(69), "{out:?}");
    assert!(!down.join("msg").exists());
}

#[test]
fn a_changed_relay_certificate_exits_77_with_a_hint_msg_can_follow() {
    let env = Env::new("msg-relay-changed");
    let port = free_port();
    let start = |state: &str| {
        let state = env.path(state);
        let mut relay = env.spawn(
            "relay",
            &[
                "--state",
                state.to_str().unwrap(),
                "relay",
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ],
            Stdio::null(),
        );
        wait_listening(port, &mut relay).unwrap();
        relay
    };
    let mut first = start("relay-1");
    let alice = env.path("alice");
    let url = format!("https://127.0.0.1:{port}");
    let out = env.run(&[
        "--state",
        alice.to_str().unwrap(),
        "msg",
        "init",
        "--relay",
        &url,
        "--name",
        "alice",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    first.kill();
    // Another relay (another certificate) on the same address.
    let _second = start("relay-2");
    let out = env.run(&["--state", alice.to_str().unwrap(), "msg", "recv"]);
    assert_eq!(out.code, Some(77), "{out:?}");
    assert!(
        !out.stderr.contains("--server-key"),
        "msg has no --server-key: {out:?}"
    );
    assert!(out.stderr.contains("--relay-key"), "{out:?}");
    // The flag the hint names exists.
    let help = env.run(&["msg", "init", "--help"]);
    assert!(help.stdout.contains("--relay-key"), "{help:?}");
}
