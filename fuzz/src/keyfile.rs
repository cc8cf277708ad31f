//! `key_files`: key files and key text (docs/CONFIG.md): private key files, `.pub` files
//! and public keys given as text (command lines, authorized and known peers lines).
//!
//! Input: a mode byte (taken modulo 3), then the file's or text's bytes.
//!
//! 0. [`read_private_key`] on a private file (mode 0600) holding the rest: a key read is
//!    written again with [`write_keypair`] and reads back as the same identity.
//! 1. [`read_public_key`] on a file holding the rest: a key read reads back from its
//!    `.pub` line.
//! 2. [`PublicKey::from_str`] on the rest (lossy UTF-8): a key parsed round-trips through
//!    its base64, which is the one the text held (one key, one spelling).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

use sessionkey_proto::keys::PublicKey;
use sessionkey_proto::keys::{read_private_key, read_public_key, write_keypair};

/// A scratch directory of this process (files are rewritten for every input).
pub(crate) fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sessionkey-fuzz-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    })
}

fn write_file(name: &str, bytes: &[u8], mode: u32) -> PathBuf {
    let path = scratch().join(name);
    let _ = fs::remove_file(&path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .expect("a scratch file");
    f.write_all(bytes).expect("writing a scratch file");
    path
}

/// Run one input.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => private(rest),
        1 => public(rest),
        _ => text(rest),
    }
}

fn private(bytes: &[u8]) {
    let path = write_file("key", bytes, 0o600);
    let Ok(identity) = read_private_key(&path) else {
        return;
    };
    let again = scratch().join("key-again");
    let _ = fs::remove_file(&again);
    let _ = fs::remove_file(scratch().join("key-again.pub"));
    let public = write_keypair(&again, &identity, "fuzz").expect("writing a key read");
    let back = read_private_key(&again).expect("a key written reads back");
    assert_eq!(
        back.public_key(),
        identity.public_key(),
        "private key round trip"
    );
    assert_eq!(
        read_public_key(&public).expect("its .pub reads back"),
        *identity.public_key()
    );
}

fn public(bytes: &[u8]) {
    let path = write_file("key.pub", bytes, 0o644);
    let Ok(key) = read_public_key(&path) else {
        return;
    };
    let again = write_file("again.pub", key.to_line("fuzz").as_bytes(), 0o644);
    assert_eq!(
        read_public_key(&again).expect("a .pub line reads back"),
        key
    );
}

fn text(bytes: &[u8]) {
    let s = String::from_utf8_lossy(bytes);
    let Ok(key) = PublicKey::from_str(&s) else {
        return;
    };
    let b64 = key.to_base64();
    assert_eq!(PublicKey::from_str(&b64).expect("base64 of a key"), key);
    assert!(
        s.split_whitespace().any(|w| w == b64),
        "{s:?} parsed as the key {b64}, which it does not spell"
    );
}

/// Seeds: files as `keygen` writes them, and key text.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let id = sessionkey_proto::keys::Identity::from_secret_bytes(&[0x77; 32]).expect("fixed key");
    let dir = scratch().join("seeds");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("a scratch directory");
    let path = dir.join("id");
    let public = write_keypair(&path, &id, "seed@example").expect("writing seeds");
    let private_text = fs::read(&path).expect("reading a seed");
    let public_text = fs::read(public).expect("reading a seed");
    let with = |mode: u8, body: &[u8]| {
        let mut s = vec![mode];
        s.extend_from_slice(body);
        s
    };
    vec![
        ("private".into(), with(0, &private_text)),
        ("public".into(), with(1, &public_text)),
        ("text-line".into(), with(2, &public_text)),
        (
            "text-bare".into(),
            with(2, id.public_key().to_base64().as_bytes()),
        ),
    ]
}
