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
    // An unknown shell is a usage error, not a script.
    let run = env.run(&["completions", "tcsh"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
}
