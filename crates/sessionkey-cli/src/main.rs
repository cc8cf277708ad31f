//! `sessionkey`: fresh, short-lived session keys for every connection.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Fresh, short-lived session keys for every connection: authenticated ephemeral key exchange
/// (hybrid X25519 + ML-KEM-768 by default), a fast AEAD, automatic rotation.
///
/// Exit status: 0 on success, 2 for usage errors, 78 for bad configuration or key files,
/// 70 for internal errors.
#[derive(Debug, Parser)]
#[command(name = "sessionkey", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show a session key's life in memory: handshakes for each suite, fingerprints, timings.
    Demo(cmd::demo::Args),
    /// Generate a static identity: a private key file (mode 0600) and PATH.pub.
    Keygen(cmd::keygen::KeygenArgs),
    /// Print the public key line of a private or public key file.
    Pubkey(cmd::keygen::PubkeyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => cmd::demo::run(&args),
        Command::Keygen(args) => cmd::keygen::keygen(&args),
        Command::Pubkey(args) => cmd::keygen::pubkey(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sessionkey: {e:#}");
            ExitCode::from(cmd::exit_code(&e))
        }
    }
}
