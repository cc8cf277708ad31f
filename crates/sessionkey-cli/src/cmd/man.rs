//! `sessionkey man --out DIR` and `sessionkey completions SHELL`: manual pages and shell
//! completion scripts generated from the clap definitions, so they never drift from `--help`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

/// Arguments of `sessionkey man`.
#[derive(Debug, clap::Args)]
pub(crate) struct ManArgs {
    /// The directory to write the pages into (created if missing): `sessionkey.1` and one
    /// `sessionkey-SUBCOMMAND.1` page per subcommand. Existing pages are replaced.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Arguments of `sessionkey completions`.
#[derive(Debug, clap::Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to print the completion script for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// The exit statuses every command shares (sysexits(3)); the top-level `--help` says the same.
const EXIT_STATUS: &[(&str, &str)] = &[
    (
        "0",
        "Success (for pipes: only after the peer's authenticated close).",
    ),
    ("2", "Usage: a flag or argument is wrong."),
    ("69", "A peer or device is unavailable."),
    ("70", "An internal error."),
    ("76", "Tampering or truncation was detected."),
    (
        "77",
        "A key or certificate was refused or changed, or no permission (TUN).",
    ),
    (
        "78",
        "Bad configuration or key file (`sessionkey check` reports each problem).",
    ),
];

/// Examples by command path (the names after `sessionkey`, space separated).
fn examples(path: &str) -> &'static [(&'static str, &'static str)] {
    match path {
        "" => &[
            ("Generate a key and print its public line:", "sessionkey keygen -o server.key"),
            (
                "Run every tunnel of a file in the foreground:",
                "sessionkey tunnel --config /etc/sessionkey/tunnel/web.toml",
            ),
            (
                "Check a configuration before a restart:",
                "sessionkey check /etc/sessionkey/vpn/site-a.toml",
            ),
        ],
        "demo" => &[("A 16 MiB transfer on loopback:", "sessionkey demo --mib 16")],
        "keygen" => &[(
            "A key (mode 0600) and its public line in server.key.pub:",
            "sessionkey keygen -o server.key -C web-1",
        )],
        "pubkey" => &[("The public key line of a private key:", "sessionkey pubkey server.key")],
        "tunnel" => &[(
            "Every tunnel of a configuration file:",
            "sessionkey tunnel --config /etc/sessionkey/tunnel/web.toml",
        )],
        "tunnel server" => &[
            (
                "Admit one client key and forward to a local service:",
                "sessionkey tunnel server --listen 0.0.0.0:7000 --to 127.0.0.1:8080 --key server.key --allow \"$(cut -d' ' -f2 alice.key.pub)\"",
            ),
            (
                "One gateway of a fleet, its peers from PostgreSQL (group web):",
                "sessionkey tunnel server --listen 0.0.0.0:7000 --to 127.0.0.1:8080 --key server.key --peers-database postgres://gw@db/fleet --peers-group web",
            ),
        ],
        "tunnel client" => &[(
            "Listen locally, pin the server's key:",
            "sessionkey tunnel client --listen 127.0.0.1:8080 --server host:7000 --key alice.key --server-key \"$(cut -d' ' -f2 server.key.pub)\"",
        )],
        "pipe" | "pipe listen" | "pipe connect" => &[
            (
                "Wait for one peer:",
                "sessionkey pipe listen 0.0.0.0:7001 --key b.key --allow \"$(cut -d' ' -f2 a.key.pub)\" > out",
            ),
            (
                "Send a file to it:",
                "sessionkey pipe connect host:7001 --key a.key --server-key \"$(cut -d' ' -f2 b.key.pub)\" < file",
            ),
        ],
        "status" => &[("The live sessions as JSON:", "sessionkey status --json")],
        "vpn" | "vpn up" => &[(
            "Bring a VPN up in the foreground:",
            "sessionkey vpn up /etc/sessionkey/vpn/site-a.toml",
        )],
        "vpn down" => &[("Stop it:", "sessionkey vpn down site-a")],
        "vpn show" => &[("Peers, handshakes and traffic:", "sessionkey vpn show site-a")],
        "vpn set" => &[(
            "Add a peer to a running VPN:",
            "sessionkey vpn set site-a peer KEY allowed-ips 10.8.0.3/32",
        )],
        "vpn syncconf" => &[(
            "Apply a file's peers to a running VPN:",
            "sessionkey vpn syncconf site-a /etc/sessionkey/vpn/site-a.toml",
        )],
        "msg" | "msg init" => &[(
            "Register this device on a relay:",
            "sessionkey msg init --relay https://relay.example:8443 --name alice",
        )],
        "msg send" => &[("Send a text:", "sessionkey msg send bob \"hello\"")],
        "msg recv" => &[("Receive, then wait for more:", "sessionkey msg recv --follow")],
        "msg contacts" => &[("List contacts:", "sessionkey msg contacts")],
        "msg verify" => &[("Compare the safety number:", "sessionkey msg verify alice")],
        "relay" | "relay serve" => &[(
            "A relay on PostgreSQL:",
            "sessionkey relay serve --listen 0.0.0.0:8443 --database postgres://relay@db/relay",
        )],
        "peers" | "peers add" => &[(
            "Authorize a client on every gateway of group web:",
            "sessionkey peers add alice.pub --group web --database postgres://admin@db/fleet",
        )],
        "peers remove" => &[(
            "Revoke a key everywhere (its live sessions close within a second):",
            "sessionkey peers remove SHA256:3fGh... --group web --database postgres://admin@db/fleet",
        )],
        "peers kick" => &[(
            "Close one session wherever it runs (its id from status --database):",
            "sessionkey peers kick 1bfc33a749cf7b72 --database postgres://admin@db/fleet",
        )],
        "peers list" => &[(
            "The keys of group web, as JSON:",
            "sessionkey peers list --group web --json --database postgres://admin@db/fleet",
        )],
        "check" => &[(
            "Check a tunnel configuration (exit 0 when clean, 78 otherwise):",
            "sessionkey check /etc/sessionkey/tunnel/web.toml",
        )],
        "man" => &[("Write the pages:", "sessionkey man --out /usr/share/man/man1")],
        "completions" => &[(
            "Install the bash completions:",
            "sessionkey completions bash > /usr/share/bash-completion/completions/sessionkey",
        )],
        _ => &[],
    }
}

/// `sessionkey man --out DIR`.
pub(crate) fn man(args: &ManArgs) -> Result<()> {
    let written = write_pages(&args.out)?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

/// Writes one page per (visible) command into `dir`; returns the files written.
fn write_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create {}: check the path and permissions",
            dir.display()
        )
    })?;
    let mut cmd = crate::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    let mut stack = vec![(cmd, Vec::<String>::new())];
    while let Some((cmd, path)) = stack.pop() {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let mut sub_path = path.clone();
            sub_path.push(sub.get_name().to_owned());
            stack.push((sub.clone(), sub_path));
        }
        let page = render_page(cmd, &path.join(" "))?;
        let file = if path.is_empty() {
            "sessionkey.1".to_owned()
        } else {
            format!("sessionkey-{}.1", path.join("-"))
        };
        let out = dir.join(&file);
        fs::write(&out, page)
            .with_context(|| format!("cannot write {}: check the permissions", out.display()))?;
        written.push(out);
    }
    written.sort();
    Ok(written)
}

/// One page: clap_mangen's sections, then EXAMPLES, EXIT STATUS and SEE ALSO.
fn render_page(cmd: clap::Command, path: &str) -> Result<Vec<u8>> {
    let title = if path.is_empty() {
        "sessionkey".to_owned()
    } else {
        format!("sessionkey-{}", path.replace(' ', "-"))
    };
    let man = Man::new(cmd.clone())
        .title(title.to_uppercase())
        .source(concat!("sessionkey ", env!("CARGO_PKG_VERSION")))
        .manual("sessionkey manual");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    let mut roff = Roff::new();
    let examples = examples(path);
    if !examples.is_empty() {
        roff.control("SH", ["EXAMPLES"]);
        for (what, line) in examples {
            roff.control("PP", []).text([roman(*what)]);
            roff.control("IP", []).text([bold(*line)]);
        }
    }
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in EXIT_STATUS {
        roff.control("TP", [])
            .text([bold(*code)])
            .text([roman(*meaning)]);
    }
    roff.control("SH", ["SEE ALSO"]);
    let mut see: Vec<String> = Vec::new();
    if !path.is_empty() {
        see.push("sessionkey(1)".into());
    }
    see.extend(
        cmd.get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| format!("{title}-{}(1)", s.get_name())),
    );
    see.push("the project's docs/OPERATIONS.md, docs/CONFIG.md and docs/VPN.md".into());
    roff.text([roman(see.join(", "))]);
    roff.to_writer(&mut out)?;
    if cmd.get_version().is_some() {
        man.render_version_section(&mut out)?;
    }
    Ok(out)
}

/// `sessionkey completions SHELL`.
pub(crate) fn completions(args: &CompletionsArgs) -> Result<()> {
    let mut cmd = crate::Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut cmd, "sessionkey", &mut out);
    out.flush()
        .context("cannot write the completion script to standard output")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_visible_command_gets_a_page_with_exit_status() {
        let dir = std::env::temp_dir().join(format!("sessionkey-man-{}", std::process::id()));
        let written = write_pages(&dir).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "sessionkey.1",
            "sessionkey-tunnel-server.1",
            "sessionkey-vpn-up.1",
            "sessionkey-relay-serve.1",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        for path in &written {
            let text = fs::read_to_string(path).unwrap();
            assert!(text.contains(".SH \"EXIT STATUS\""), "{}", path.display());
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_visible_command_has_an_example_of_itself() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let line = format!("sessionkey {path}");
            if !examples(path)
                .iter()
                .any(|(_, ex)| ex.starts_with(line.trim_end()))
            {
                missing.push(line);
            }
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                let next = format!("{path} {}", sub.get_name());
                walk(sub, next.trim_start(), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&crate::Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no example for: {missing:?}");
    }
}
