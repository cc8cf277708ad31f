//! What an operator installs beside the binary (issue 16): manual pages that `man -l`
//! renders without warnings and completion scripts that their shells parse.

use std::process::Command;

mod support;

use support::*;

/// Is `tool` on PATH? With CI set a missing tool fails the test instead of skipping it.
fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var_os("CI").is_some() && tool != "zsh" && tool != "fish" {
        panic!("{tool} is missing; .ci/run installs it");
    }
    if !found {
        eprintln!("skipped: {tool} is not installed");
    }
    found
}

/// Plain text from man's overstrikes (`X\x08X` bold, `_\x08X` underline).
fn unstrike(s: &str) -> String {
    let mut out: Vec<char> = Vec::with_capacity(s.len());
    for c in s.chars() {
        if c == '\x08' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out.into_iter().collect()
}

#[test]
fn man_writes_a_page_per_command_that_man_renders_cleanly() {
    let env = Env::new("man");
    let out = env.path("man1");
    let run = env.run(&["man", "--out", out.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let mut pages: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    let names: Vec<String> = pages
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "sessionkey.1",
        "sessionkey-tunnel.1",
        "sessionkey-tunnel-server.1",
        "sessionkey-vpn-up.1",
        "sessionkey-relay-serve.1",
        "sessionkey-completions.1",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    // Every path printed is a page written.
    assert_eq!(run.stdout.lines().count(), pages.len(), "{}", run.stdout);
    if !have("man") {
        return;
    }
    for page in &pages {
        let rendered = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(page)
            .env("MANWIDTH", "80")
            .output()
            .expect("run man");
        let text = unstrike(&String::from_utf8_lossy(&rendered.stdout));
        let warnings = String::from_utf8_lossy(&rendered.stderr);
        assert!(rendered.status.success(), "{}: {warnings}", page.display());
        assert!(warnings.trim().is_empty(), "{}: {warnings}", page.display());
        for section in ["NAME", "SYNOPSIS", "EXAMPLES", "EXIT STATUS"] {
            assert!(
                text.lines().any(|l| l == section),
                "{} has no {section} section:\n{text}",
                page.display()
            );
        }
        assert!(text.contains("sessionkey"), "{}", page.display());
    }
}

#[test]
fn completion_scripts_parse_in_their_shells() {
    let env = Env::new("completions");
    for (shell, check) in [
        ("bash", Some(("bash", "-n"))),
        ("zsh", Some(("zsh", "-n"))),
        ("fish", Some(("fish", "--no-execute"))),
        ("elvish", None),
        ("powershell", None),
    ] {
        let run = env.run(&["completions", shell]);
        assert_eq!(run.code, Some(0), "{shell}: {}", run.stderr);
        assert!(
            run.stdout.contains("sessionkey") && run.stdout.contains("tunnel"),
            "{shell}: {}",
            run.stdout
        );
        let Some((program, flag)) = check else {
            continue;
        };
        if !have(program) {
            continue;
        }
        let script = env.path(&format!("sessionkey.{shell}"));
        std::fs::write(&script, &run.stdout).unwrap();
        let parsed = Command::new(program)
            .arg(flag)
            .arg(&script)
            .output()
            .expect("run the shell");
        assert!(
            parsed.status.success(),
            "{program} {flag} rejects the script: {}",
            String::from_utf8_lossy(&parsed.stderr)
        );
    }
    // An unknown shell is a usage error (64, as every usage error), not a script.
    let run = env.run(&["completions", "tcsh"]);
    assert_eq!(run.code, Some(64), "{}", run.stderr);
}

/// A tunnel server started as systemd starts a `Type=notify` unit: `READY=1` arrives on
/// `NOTIFY_SOCKET` only once the listener accepts connections, and a SIGHUP (systemctl
/// reload, a stray `kill -HUP`) no longer kills it.
#[test]
fn tunnel_server_tells_systemd_it_is_ready_and_survives_sighup() {
    use std::os::unix::net::UnixDatagram;
    let env = Env::new("notify");
    let key = env.keygen("server");
    let client = env.keygen("client");
    let target = echo_target();
    let socket_path = env.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket.set_read_timeout(Some(READY_TIMEOUT)).unwrap();
    let port = free_port();
    let args = Env::server_args("web", port, &key, target.addr, &[client.base64()]);
    let stderr = env.path("notify-server.stderr");
    let child = env
        .command()
        .args(&args)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("start sessionkey");
    let mut server = Proc {
        name: "server".into(),
        child,
        stdout: env.path("notify-server.stdout"),
        stderr,
        exited: None,
    };
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no notification within {READY_TIMEOUT:?}: {e}\n{}",
            server.stderr()
        )
    });
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        message.lines().any(|l| l == "READY=1"),
        "not a readiness notification: {message:?}"
    );
    // Ready means listening: the port accepts now, without waiting.
    std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("READY=1 before the listener: {e}\n{}", server.stderr()));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    server.expect_log("configuration reloaded");
    assert_eq!(
        server.try_exit(),
        None,
        "SIGHUP ended the server:\n{}",
        server.stderr()
    );
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("still listening after SIGHUP");
}

/// The units in dist/systemd pass `systemd-analyze verify` (no unknown keys, no bad values),
/// with the test's binary in place of /usr/bin/sessionkey. Skipped where systemd-analyze
/// is missing (CI also verifies the units the .deb installs).
#[test]
fn systemd_units_verify() {
    if !Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let env = Env::new("units");
    let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/systemd");
    let mut units = Vec::new();
    for (file, instance) in [
        (
            "sessionkey-tunnel@.service",
            Some("sessionkey-tunnel@web.service"),
        ),
        (
            "sessionkey-vpn@.service",
            Some("sessionkey-vpn@site-a.service"),
        ),
        ("sessionkey-relay.service", None),
    ] {
        let text = std::fs::read_to_string(dist.join(file)).expect("read the unit");
        assert!(text.contains("Type=notify"), "{file}");
        let dest = env.path(file);
        std::fs::write(&dest, text.replace("/usr/bin/sessionkey", BIN)).unwrap();
        match instance {
            Some(name) => {
                std::os::unix::fs::symlink(&dest, env.path(name)).unwrap();
                units.push(env.path(name));
            }
            None => units.push(dest),
        }
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

/// The example configurations the package installs pass `sessionkey check` once their
/// keys exist (paths moved into the test's directory, the placeholder key replaced).
#[test]
fn the_shipped_examples_pass_check() {
    let env = Env::new("examples");
    let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/examples");
    let dir = env.path("");
    let dir = dir.to_str().unwrap().trim_end_matches('/');

    let web = env.keygen("web");
    std::fs::rename(&web.path, env.path("web.key")).unwrap();
    let client = env.keygen("client");
    std::fs::write(
        env.path("web.authorized"),
        format!("{} alice\n", client.public),
    )
    .unwrap();
    let tunnel = std::fs::read_to_string(dist.join("tunnel.toml"))
        .unwrap()
        .replace("/etc/sessionkey/tunnel", dir)
        .replace("/var/lib/sessionkey/tunnel-web", dir);
    std::fs::write(env.path("web.toml"), tunnel).unwrap();
    let out = env.run(&["check", env.path("web.toml").to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{out:?}");

    let site = env.keygen("site");
    std::fs::rename(&site.path, env.path("site-a.key")).unwrap();
    let vpn = std::fs::read_to_string(dist.join("vpn.toml")).unwrap();
    let placeholder = vpn
        .lines()
        .find_map(|l| l.strip_prefix("public_key = \""))
        .and_then(|l| l.split('"').next())
        .expect("the example names a peer key")
        .to_string();
    std::fs::write(
        env.path("site-a.toml"),
        vpn.replace(&placeholder, &client.public),
    )
    .unwrap();
    let out = env.run(&["check", env.path("site-a.toml").to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{out:?}");
}
