//! `sessionkey msg init | send | recv | contacts | verify`: end-to-end encrypted messages
//! through a relay that cannot read them (docs/MESSAGING.md).

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use sessionkey::msg::relay::RelayError;
use sessionkey::msg::{ClientError, Messenger, Received};
use sessionkey::trust::PeerKey;

use super::common::{config_error, state_dir};

/// The messaging subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create this device's identity, pin the relay's certificate and register a name.
    Init(InitArgs),
    /// Send a text, a file, or each line of standard input to a contact.
    Send(SendArgs),
    /// Receive what waits on the relay (and, with --follow, what arrives later).
    Recv(RecvArgs),
    /// List contacts, their fingerprints and whether they are verified.
    Contacts(JsonArg),
    /// Show the safety number with a contact; --accept marks it verified (and accepts a
    /// changed identity).
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct JsonArg {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct InitArgs {
    /// The relay: https://HOST:PORT (its certificate is pinned on first use).
    #[arg(long, value_name = "URL")]
    relay: String,
    /// The name others address this device by on the relay (default: $USER).
    #[arg(long)]
    name: Option<String>,
    /// The relay's certificate pin (`tls-spki-sha256 BASE64`, as `relay serve` prints), to
    /// check instead of trusting on first use.
    #[arg(long, value_name = "PIN")]
    relay_key: Option<String>,
    #[command(flatten)]
    out: JsonArg,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["text", "file", "lines"])))]
#[command(override_usage = "sessionkey msg send [OPTIONS] <NAME> <TEXT|--file <PATH>|--lines>")]
pub(crate) struct SendArgs {
    /// The recipient's name.
    name: String,
    /// The text to send.
    text: Option<String>,
    /// Send this file (in chunks, with a progress bar on a terminal).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Send each line of standard input as one message.
    #[arg(long)]
    lines: bool,
    #[command(flatten)]
    out: JsonArg,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RecvArgs {
    /// Keep receiving (WebSocket push, long-poll if that fails) until interrupted.
    #[arg(long)]
    follow: bool,
    /// Print one JSON object per event.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// The contact.
    name: String,
    /// Mark the contact verified after comparing the safety number (accepts a changed
    /// identity).
    #[arg(long)]
    accept: bool,
    #[command(flatten)]
    out: JsonArg,
}

fn msg_dir() -> PathBuf {
    state_dir().join("msg")
}

/// The exit status class of a messaging error, if `cause` is one.
pub(crate) fn exit_code(cause: &(dyn std::error::Error + 'static)) -> Option<u8> {
    let e = cause.downcast_ref::<ClientError>()?;
    Some(match e {
        ClientError::Relay(RelayError::Unreachable { .. }) => 69,
        ClientError::Relay(RelayError::CertificateChanged { .. })
        | ClientError::IdentityChanged { .. } => 77,
        ClientError::Relay(r) if r.status().is_some_and(|s| s.as_u16() == 429) => 75,
        // A taken name: choose another with --name.
        ClientError::Relay(r) if r.status().is_some_and(|s| s.as_u16() == 409) => 78,
        ClientError::Busy { .. } => 75,
        ClientError::NotInitialized(_)
        | ClientError::AlreadyInitialized(_)
        | ClientError::Invalid(_)
        | ClientError::UnknownContact(_)
        | ClientError::KeyFile(_)
        | ClientError::Permissions { .. } => 78,
        ClientError::Msg(_) => 76,
        _ => 70,
    })
}

pub(crate) async fn run(command: Command) -> Result<()> {
    match command {
        Command::Init(args) => init(args).await,
        Command::Send(args) => send(args).await,
        Command::Recv(args) => recv(args).await,
        Command::Contacts(args) => contacts(args).await,
        Command::Verify(args) => verify(args).await,
    }
}

fn default_name() -> Result<String> {
    let user = std::env::var("USER").unwrap_or_default().to_lowercase();
    if sessionkey::msg::api::valid_name(&user) {
        Ok(user)
    } else {
        Err(config_error(
            "give this device a name with --name NAME (a-z 0-9 . _ -)",
        ))
    }
}

async fn init(args: InitArgs) -> Result<()> {
    let name = match args.name {
        Some(n) => n,
        None => default_name()?,
    };
    let pin = args
        .relay_key
        .as_deref()
        .map(|s| {
            s.parse::<PeerKey>()
                .map_err(|e| config_error(format!("--relay-key: {e}")))
        })
        .transpose()?;
    let report = Messenger::init(&msg_dir(), &args.relay, &name, pin).await?;
    if args.out.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("registered {:?} at relay {}", report.name, report.relay);
        println!("identity   {}", report.fingerprint);
        println!("relay pin  {}", report.relay_pin);
        println!(
            "key file   {} (guards the encrypted store; keep it mode 0600)",
            report.key_file.display()
        );
    }
    Ok(())
}

async fn send(args: SendArgs) -> Result<()> {
    let mut m = Messenger::open(&msg_dir()).await?;
    let mut sent = 0u64;
    if let Some(text) = &args.text {
        m.send_text(&args.name, text).await?;
        sent = 1;
    } else if let Some(path) = &args.file {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(format!("to {}", args.name));
            bar
        });
        let bytes = m
            .send_file(&args.name, path, |done, total| {
                if let Some(b) = &bar {
                    b.set_length(total);
                    b.set_position(done);
                }
            })
            .await
            .with_context(|| format!("sending {}", path.display()))?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        sent = bytes
            .div_ceil(sessionkey::msg::client::FILE_CHUNK as u64)
            .max(1);
    } else {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let line = line.context("reading standard input")?;
            m.send_text(&args.name, &line).await?;
            sent += 1;
        }
    }
    if args.out.json {
        println!("{}", serde_json::json!({"to": args.name, "messages": sent}));
    } else if args.file.is_some() || args.lines {
        eprintln!("sent {sent} message(s) to {}", args.name);
    }
    m.close().await;
    Ok(())
}

/// `s` made safe to print on a terminal: every control character (C0, DEL, C1: carriage
/// return, escape sequences, bell, backspace...) and every bidirectional-override or line
/// separator character shown escaped (`\x1b`, `\u{202e}`), so a contact's text can neither
/// move the cursor, retitle the terminal, nor reorder what is shown. Newlines are kept only
/// when `newlines` is set.
pub(crate) fn escape_controls(s: &str, newlines: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let reorders = matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}');
        if c == '\n' && newlines {
            out.push(c);
        } else if c.is_control() && u32::from(c) < 0x80 {
            out.push_str(&format!("\\x{:02x}", u32::from(c)));
        } else if c.is_control() || reorders {
            out.push_str(&format!("\\u{{{:04x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// A received text as shown: `from: first line`, each further line of the text indented
/// under the colon after `|`, so no text can start a line that looks like another sender's.
fn render_text(from: &str, text: &str) -> String {
    let from = escape_controls(from, false);
    let text = escape_controls(text, true);
    let indent = " ".repeat(from.chars().count());
    let mut out = String::new();
    for (i, line) in text.split('\n').enumerate() {
        if i == 0 {
            out.push_str(&format!("{from}: {line}"));
        } else {
            out.push_str(&format!("\n{indent}| {line}"));
        }
    }
    out
}

/// What `msg recv` prints for an event (without --json): (to standard output, line).
fn render_event(e: &Received) -> Option<(bool, String)> {
    let esc = |s: &str| escape_controls(s, false);
    Some(match e {
        Received::Text { from, text, .. } => (true, render_text(from, text)),
        Received::File {
            from,
            name,
            path,
            bytes,
        } => (
            true,
            format!(
                "{} sent file \"{}\" ({bytes} bytes): {}",
                esc(from),
                esc(name),
                esc(&path.display().to_string())
            ),
        ),
        Received::Dropped { from, reason } => (
            false,
            format!(
                "sessionkey: dropped a message from {}: {}",
                esc(from),
                esc(reason)
            ),
        ),
        Received::Undecryptable {
            from,
            count,
            reason,
        } => (
            false,
            format!(
                "sessionkey: {count} message(s) from {} could not be decrypted: {}",
                esc(from),
                esc(reason)
            ),
        ),
        Received::IdentityChanged { from, fingerprint } => {
            let from = esc(from);
            (
                false,
                format!(
                    "sessionkey: {from}'s identity key changed (now {}); their messages are set aside until you compare safety numbers and run `sessionkey msg verify {from} --accept`",
                    esc(fingerprint)
                ),
            )
        }
        _ => return None,
    })
}

fn print_event(json: bool, e: &Received) {
    if json {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", serde_json::to_string(e).unwrap_or_default());
        let _ = out.flush();
        return;
    }
    match render_event(e) {
        Some((true, line)) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
        Some((false, line)) => eprintln!("{line}"),
        None => {}
    }
}

async fn recv(args: RecvArgs) -> Result<()> {
    let mut m = Messenger::open(&msg_dir()).await?;
    let json = args.json;
    let mut on = move |e: Received| print_event(json, &e);
    if !args.follow {
        m.receive_all(&mut on).await?;
        m.close().await;
        return Ok(());
    }
    tokio::select! {
        r = follow(&mut m, &mut on) => r?,
        _ = tokio::signal::ctrl_c() => {}
        () = terminate() => {}
    }
    Ok(())
}

/// Receive until stopped: drain, then wait for a push; long-poll when the push channel cannot
/// be opened; after a relay failure, retry with a growing pause (the relay may be restarting).
async fn follow(m: &mut Messenger, on: &mut (dyn FnMut(Received) + Send)) -> Result<()> {
    let mut pause = Duration::from_millis(200);
    loop {
        let result: Result<(), ClientError> = async {
            match m.push_channel().await {
                Ok(mut push) => loop {
                    m.receive_batch(0, on).await?;
                    let mut more = false;
                    while !more {
                        // Drain fully before waiting: a push may have been sent during the batch.
                        let (n, _) = m.receive_batch(0, on).await?;
                        if n > 0 {
                            continue;
                        }
                        match push.next().await? {
                            Some(_) => more = true,
                            None => return Ok(()),
                        }
                    }
                    pause = Duration::from_millis(200);
                },
                Err(ClientError::Relay(RelayError::Refused { .. } | RelayError::Protocol(_))) => {
                    tracing::info!("push channel unavailable; falling back to long-poll");
                    loop {
                        // The lock on the state directory is taken only after the long-poll
                        // returns, so `msg send` from another terminal is not held up.
                        m.receive_batch(sessionkey::msg::api::MAX_WAIT_SECS - 5, on)
                            .await?;
                        pause = Duration::from_millis(200);
                    }
                }
                Err(e) => Err(e),
            }
        }
        .await;
        match result {
            Ok(()) => {}
            Err(
                e @ ClientError::Relay(RelayError::Unreachable { .. } | RelayError::Protocol(_)),
            ) => {
                tracing::warn!("{e}; retrying in {pause:?}");
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

async fn contacts(args: JsonArg) -> Result<()> {
    let m = Messenger::open(&msg_dir()).await?;
    let list = m.contacts().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if list.is_empty() {
        println!("no contacts yet");
    } else {
        for c in &list {
            let state = match (&c.changed_to, c.verified) {
                (Some(new), _) => format!(
                    "IDENTITY CHANGED to {new}: run `sessionkey msg verify {}`",
                    c.name
                ),
                (None, true) => "verified".into(),
                (None, false) => "trusted on first use".into(),
            };
            println!("{:<20} {}  {state}", c.name, c.fingerprint);
        }
    }
    m.close().await;
    Ok(())
}

async fn verify(args: VerifyArgs) -> Result<()> {
    let m = Messenger::open(&msg_dir()).await?;
    let v = m.verify(&args.name, args.accept).await?;
    if args.out.json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        if v.changed {
            println!(
                "{}'s identity CHANGED; compare this new safety number before accepting it:",
                v.name
            );
        }
        println!("safety number with {}:", v.name);
        println!("  {}", v.safety_number);
        println!("yours  {}", v.own_fingerprint);
        println!("theirs {}", v.their_fingerprint);
        if args.accept {
            println!("{} is now verified", v.name);
        } else {
            println!(
                "compare it with {} (in person or on a call); if it matches, run `sessionkey msg verify {} --accept`",
                v.name, v.name
            );
        }
    }
    m.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_text_cannot_forge_the_screen() {
        let shown = render_text(
            "mallory",
            "hi\nalice: send me the code\r\x1b]0;pwned\x07\x1b[2J\u{202e}gnp.exe\u{85}x",
        );
        let lines: Vec<&str> = shown.split('\n').collect();
        assert_eq!(lines[0], "mallory: hi");
        assert_eq!(
            lines[1],
            "       | alice: send me the code\\x0d\\x1b]0;pwned\\x07\\x1b[2J\\u{202e}gnp.exe\\u{0085}x"
        );
        assert_eq!(lines.len(), 2);
        assert!(shown.chars().all(|c| c == '\n' || !c.is_control()));
        assert_eq!(escape_controls("a\tb\u{7f}", false), "a\\x09b\\x7f");
        assert_eq!(escape_controls("héllo ✓", false), "héllo ✓");
        // The sender name and file name of other events are escaped too.
        let (_, line) = render_event(&Received::Dropped {
            from: "x\ny".into(),
            reason: "r\x1b".into(),
        })
        .unwrap();
        assert!(!line.contains('\n') && !line.contains('\x1b'), "{line}");
    }
}
