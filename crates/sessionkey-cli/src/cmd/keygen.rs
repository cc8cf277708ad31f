//! `sessionkey keygen` and `sessionkey pubkey`.

use std::path::PathBuf;

use anyhow::Result;

use super::common::CannotCreate;
use sessionkey_proto::crypto::SystemRandom;
use sessionkey_proto::keys::{self, Identity};

/// Arguments of `sessionkey keygen`.
#[derive(Debug, clap::Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the private key; the public key goes to PATH.pub. Never overwritten.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "PATH",
        default_value = "sessionkey.key"
    )]
    output: PathBuf,
    /// Comment for the public key line (default: user@host).
    #[arg(short = 'C', long)]
    comment: Option<String>,
}

/// Arguments of `sessionkey pubkey`.
#[derive(Debug, clap::Args)]
pub(crate) struct PubkeyArgs {
    /// A private key file (or a .pub file), or a PEM certificate (prints its
    /// `tls-spki-sha256` pin, for --allow, --authorized-peers and --server-key).
    path: PathBuf,
}

fn default_comment() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host}")
}

/// Create the missing directories above `path` (mode 0700: they will hold a private key).
fn create_parent(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            CannotCreate(format!(
                "cannot create the directory {} for the key {}: {e}; create it, or choose \
                 another -o PATH",
                dir.display(),
                path.display()
            ))
        })?;
    eprintln!("created the directory {} (mode 0700)", dir.display());
    Ok(())
}

pub(crate) fn keygen(args: &KeygenArgs) -> Result<()> {
    let identity = Identity::generate(&mut SystemRandom)?;
    let comment = args.comment.clone().unwrap_or_else(default_comment);
    create_parent(&args.output)?;
    let public_path = keys::write_keypair(&args.output, &identity, &comment).map_err(|e| {
        match &e {
            // Exists keeps its own status (73 too) and message; other write failures
            // (permissions, a full disk) cannot create the key.
            sessionkey_proto::Error::KeyFile {
                problem: sessionkey_proto::KeyFileProblem::Io(_),
                ..
            } => anyhow::Error::new(CannotCreate(format!("{e}"))),
            _ => e.into(),
        }
    })?;
    let public = identity.public_key();
    eprintln!(
        "wrote {} (private, mode 0600) and {}\nfingerprint {}",
        args.output.display(),
        public_path.display(),
        public.fingerprint()
    );
    println!("{}", public.to_line(&comment));
    Ok(())
}

pub(crate) fn pubkey(args: &PubkeyArgs) -> Result<()> {
    if let Some(pin) = certificate_pin(&args.path) {
        println!("{}", pin.to_line(""));
        eprintln!("fingerprint {}", pin.fingerprint());
        return Ok(());
    }
    let public = match keys::read_private_key(&args.path) {
        Ok(identity) => *identity.public_key(),
        // A .pub file is fine too; report the private-key error if both fail.
        Err(private_err) => keys::read_public_key(&args.path).map_err(|_| private_err)?,
    };
    println!("{}", public.to_line(""));
    eprintln!("fingerprint {}", public.fingerprint());
    Ok(())
}

/// The pin of the first certificate of a PEM file, if it is one.
fn certificate_pin(path: &std::path::Path) -> Option<sessionkey::trust::PeerKey> {
    let text = std::fs::read_to_string(path).ok()?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return None;
    }
    let certs = sessionkey::tls::load_certs(path).ok()?;
    sessionkey::tls::spki_pin(certs.first()?)
}
