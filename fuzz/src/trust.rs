//! `trust_files`: authorized-peers and known-peers files (`sessionkey::trust`, the grammars
//! of ssh's `authorized_keys` and `known_hosts`) and pre-shared key files
//! (`sessionkey::psk`).
//!
//! Input: a mode byte (taken modulo 4), then the mode's own bytes.
//!
//! 0. [`AuthorizedPeers::parse`] on the rest (lossy UTF-8): a file that parses has one key
//!    per content line, each line spelling `TYPE BASE64 [comment]` word for word, and writes
//!    back (`TYPE BASE64 comment` lines) as a file that parses
//!    to the same keys and comments; a file that does not parses up to the line its error
//!    names, which is a content line of the file and fails on its own.
//! 1. A host selector byte, a key-type byte, then the known-peers text:
//!    [`KnownPeers::lookup_in`] for that host: a key found is on the line returned, whose
//!    host list names the host and whose next words are `TYPE BASE64` of that key (or one
//!    word spelling it: a bare sessionkey key, `SHA256:` and a TLS pin), of the type asked
//!    for; an error names a line of the
//!    file that fails on its own.
//! 2. As 1, through the file: [`KnownPeers::verify`] with `accept_new` learns a host with
//!    no key of that type by appending one line (what was there stays byte for byte), after
//!    which the key is known and another key of its type is refused as changed.
//! 3. [`psk::decode`] on the rest: a key decoded is the only spelling of its bytes (the
//!    text, trimmed, is their standard base64); an error says which of "not base64" or
//!    "wrong length" it is, truly.

use std::fs;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sessionkey::psk::{self, PskTextError};
use sessionkey::trust::{AuthorizedPeers, HostKey, KnownPeers, PeerKey, TrustError};
use sessionkey_proto::keys::PublicKey;

use crate::keyfile::scratch;
use crate::Input;

/// Hosts asked about, as `--server` addresses are written: IPv4, names, IPv6, no port.
const HOSTS: [&str; 4] = [
    "203.0.113.5:7000",
    "vpn.example.com:7000",
    "[2001:db8::1]:7443",
    "localhost",
];

/// Run one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    match input.u8() % 4 {
        0 => authorized(input.rest()),
        1 => known(&mut input, false),
        2 => known(&mut input, true),
        _ => psk_text(input.rest()),
    }
}

/// The number of the last line `line_of` can name: newlines + 1.
fn last_line(text: &str) -> usize {
    text.bytes().filter(|b| *b == b'\n').count() + 1
}

/// Lines as the trust parsers number them (`str::lines`), with content.
fn content_lines(text: &str) -> Vec<(usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

fn authorized(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let path = scratch().join("authorized_peers");
    match AuthorizedPeers::parse(&path, &text) {
        Ok(peers) => {
            let lines = content_lines(&text);
            assert_eq!(peers.len(), lines.len(), "one key per content line");
            // Each line spells `TYPE BASE64 [comment]`, in that grammar's words.
            for ((n, line), (key, comment)) in lines.iter().zip(peers.iter()) {
                let words: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(
                    words[..2].join(" "),
                    key.to_line(""),
                    "line {n} ({line:?}) was read as another key's line"
                );
                assert_eq!(words[2..].join(" "), comment, "line {n}'s comment");
            }
            let written: String = peers.iter().map(|(k, c)| k.to_line(c) + "\n").collect();
            let again = AuthorizedPeers::parse(&path, &written)
                .unwrap_or_else(|e| panic!("{written:?} as written back does not parse: {e}"));
            let first: Vec<_> = peers.iter().collect();
            let second: Vec<_> = again.iter().collect();
            assert_eq!(first, second, "written back as {written:?}");
            for (key, _) in peers.iter() {
                assert!(peers.contains(key));
            }
        }
        Err(TrustError::Syntax { line, why, .. }) => {
            assert!(!why.is_empty());
            let the_line = located(&text, line);
            // Everything before the line parses; the line alone does not.
            let before: String = text
                .lines()
                .take(line - 1)
                .map(|l| format!("{l}\n"))
                .collect();
            if let Err(e) = AuthorizedPeers::parse(&path, &before) {
                panic!("the error is at line {line}, but an earlier line fails: {e}");
            }
            assert!(
                AuthorizedPeers::parse(&path, the_line).is_err(),
                "line {line} ({the_line:?}) was named but parses on its own"
            );
        }
        Err(e) => panic!("parsing text gave {e:?}"),
    }
}

/// The content line `line` of `text`, checking that the number is in range.
fn located(text: &str, line: usize) -> &str {
    assert!(
        line >= 1 && line <= last_line(text),
        "line {line} of a {}-line file",
        last_line(text)
    );
    let the_line = text.lines().nth(line - 1).unwrap_or_default();
    assert!(
        content_lines(the_line).len() == 1,
        "line {line} ({the_line:?}) was named but has no content"
    );
    the_line
}

/// A key of the type chosen by `b`: a sessionkey identity or a TLS pin.
fn kind(b: u8) -> PeerKey {
    if b & 1 == 0 {
        PeerKey::Native(PublicKey::from_bytes([b | 0x40; 32]))
    } else {
        PeerKey::TlsSpki([b; 32])
    }
}

fn known(input: &mut Input<'_>, through_file: bool) {
    let host = HOSTS[usize::from(input.u8()) % HOSTS.len()];
    let key = kind(input.u8());
    let text = String::from_utf8_lossy(input.rest()).into_owned();
    let path = scratch().join("known_peers");
    let peers = KnownPeers::new(&path);
    let found = peers.lookup_in(&text, host, &key);
    match &found {
        Ok(Some((k, line))) => {
            let the_line = located(&text, *line);
            let (hosts, rest) = the_line
                .trim()
                .split_once(char::is_whitespace)
                .expect("a line with a key has hosts and a key");
            let pattern = sessionkey::trust::host_pattern(host);
            assert!(
                hosts.split(',').any(|h| h == host || h == pattern),
                "line {line} ({the_line:?}) does not list {host}"
            );
            assert_eq!(
                rest.trim().parse::<PeerKey>().ok().as_ref(),
                Some(k),
                "line {line}"
            );
            // `TYPE BASE64`, or one word that spells the key on its own (PeerKey's other
            // documented forms: a bare sessionkey key, a TLS pin as logs show it).
            let words: Vec<&str> = rest.split_whitespace().take(2).collect();
            let one_word = words[0].parse::<PeerKey>().ok().as_ref() == Some(k);
            assert!(
                one_word || words.join(" ") == k.to_line(""),
                "line {line} ({the_line:?}) was read as another key's line"
            );
            assert_eq!(
                std::mem::discriminant(k),
                std::mem::discriminant(&key),
                "a key of another type"
            );
        }
        Ok(None) => {}
        Err(TrustError::Syntax { line, .. }) => {
            let the_line = located(&text, *line);
            assert!(
                peers.lookup_in(the_line, host, &key).is_err(),
                "line {line} ({the_line:?}) was named but reads on its own"
            );
        }
        Err(e) => panic!("looking up in text gave {e:?}"),
    }
    if !through_file {
        return;
    }
    let _ = fs::remove_file(&path);
    fs::write(&path, &text).expect("writing a scratch file");
    let learned = peers.verify(host, &key, true);
    let after = fs::read_to_string(&path).expect("reading a scratch file");
    match (&found, &learned) {
        (Ok(None), Ok(HostKey::Learned)) => {
            assert!(after.starts_with(&text), "learning changed the file");
            let added = &after[text.len()..];
            assert_eq!(
                added.trim_start_matches('\n').lines().count(),
                1,
                "learning added {added:?}"
            );
            assert!(matches!(peers.verify_only(host, &key), Ok(())));
            let other = match key {
                PeerKey::Native(_) => PeerKey::Native(PublicKey::from_bytes([0x99; 32])),
                PeerKey::TlsSpki(_) => PeerKey::TlsSpki([0x98; 32]),
            };
            assert!(
                matches!(
                    peers.verify(host, &other, true),
                    Err(TrustError::KeyChanged(_))
                ),
                "a second key for {host} after learning one"
            );
        }
        (Ok(Some((k, _))), Ok(HostKey::Known)) => assert_eq!(*k, key),
        (Ok(Some(_)), Err(TrustError::KeyChanged(_))) | (Err(_), Err(_)) => {
            assert_eq!(after, text, "a refusal changed the file");
        }
        (found, learned) => panic!("lookup gave {found:?} but verify {learned:?}"),
    }
}

fn psk_text(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let decoded = STANDARD.decode(text.trim());
    match psk::decode(&text) {
        Ok(key) => assert_eq!(
            STANDARD.encode(*key),
            text.trim(),
            "a key with two spellings"
        ),
        Err(PskTextError::NotBase64) => assert!(decoded.is_err()),
        Err(PskTextError::Length(n)) => {
            assert_eq!(decoded.map(|b| b.len()).ok(), Some(n));
            assert_ne!(n, 32);
        }
    }
}

/// Seeds: files as `keygen`, `--accept-new` and docs/CONFIG.md write them, and psk files as
/// `head -c 32 /dev/urandom | base64` does.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let native = PeerKey::Native(PublicKey::from_bytes([0x31; 32]));
    let tls = PeerKey::TlsSpki([0x32; 32]);
    let authorized = format!(
        "# team\n\n{}\n  {} bob's client certificate\n{}\n",
        native.to_line("alice@laptop"),
        tls.to_line("bob"),
        PeerKey::Native(PublicKey::from_bytes([0x33; 32])).to_line("")
    );
    let known_text = format!(
        "[203.0.113.5]:7000,vpn.example.com:7000 {}\n[203.0.113.5]:7000 {}\n# old\n[2001:db8::1]:7443 {}\n",
        native.to_line("added 2026-11-26"),
        tls.to_line(""),
        native.to_line("")
    );
    let with = |head: &[u8], body: &str| [head, body.as_bytes()].concat();
    vec![
        ("authorized".into(), with(&[0], &authorized)),
        (
            "authorized-options".into(),
            with(&[0], "no-agent-forwarding sessionkey-x25519 AAAA\n"),
        ),
        ("known-hit".into(), with(&[1, 0, 0], &known_text)),
        ("known-tls".into(), with(&[1, 0, 1], &known_text)),
        ("known-miss".into(), with(&[1, 3, 0], &known_text)),
        ("known-learn".into(), with(&[2, 3, 0], &known_text)),
        ("known-changed".into(), with(&[2, 2, 2], &known_text)),
        (
            "psk".into(),
            with(&[3], &format!("{}\n", STANDARD.encode([0x5a; 32]))),
        ),
    ]
}
