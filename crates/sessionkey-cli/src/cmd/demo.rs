//! `sessionkey demo`: complete in-memory handshakes, one per suite, and what they produce.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Result};
use sessionkey_proto::crypto::SystemRandom;
use sessionkey_proto::handshake::{Header, Initiator, Policy, Responder};
use sessionkey_proto::keys::Identity;
use sessionkey_proto::noise::{Pattern, Split};
use sessionkey_proto::session_fingerprint;
use sessionkey_proto::suite::{OpeningKey, SealingKey, Suite};

/// Arguments of `sessionkey demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Use classical X25519 only (no ML-KEM-768).
    #[arg(long)]
    classic: bool,
}

struct Outcome {
    client: Split,
    server: Split,
    micros: u128,
    wire_bytes: usize,
}

/// One complete handshake over in-memory buffers: hello, reply, (final message for XX).
fn handshake(header: Header, client: &Arc<Identity>, server: &Arc<Identity>) -> Result<Outcome> {
    let start = Instant::now();
    let remote = header
        .pattern
        .responder_premessage()
        .then(|| *server.public_key());
    let mut initiator = Initiator::new(header, Some(client.clone()), remote, None)?;
    let policy = Policy {
        require_hybrid: header.hybrid,
        ..Policy::default()
    };
    let responder = Responder::new(policy, Some(server.clone()), None);
    let (mut wire, mut payload) = (vec![0; 8192], vec![0; 8192]);
    let mut wire_bytes = initiator.write_hello(&[], &mut wire)?;
    let (mut accepted, _) = responder.read_hello(&wire[..wire_bytes], &mut payload)?;
    let n = accepted.state.write_message(&[], &mut wire)?;
    wire_bytes += n;
    initiator.read_reply(&wire[..n], &mut payload)?;
    if !initiator.state.is_finished() {
        let n = initiator.state.write_message(&[], &mut wire)?;
        wire_bytes += n;
        accepted.state.read_message(&wire[..n], &mut payload)?;
    }
    let client = initiator.state.split()?;
    let server = accepted.state.split()?;
    Ok(Outcome {
        client,
        server,
        micros: start.elapsed().as_micros(),
        wire_bytes,
    })
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let client = Arc::new(Identity::generate(&mut SystemRandom)?);
    let server = Arc::new(Identity::generate(&mut SystemRandom)?);
    println!("sessionkey demo: every session gets its own fresh keys from an ephemeral exchange.");
    println!("  client identity {}", client.public_key().fingerprint());
    println!("  server identity {}", server.public_key().fingerprint());
    println!("  (identities are long-lived; the session keys below exist only in memory)\n");
    println!(
        "{:<18} {:<4} {:<47} {:<26} {:>8} {:>7}",
        "suite", "pat", "noise protocol", "session fingerprint", "time", "bytes"
    );
    for suite in Suite::ALL {
        for pattern in [Pattern::IK, Pattern::XX] {
            let header = Header {
                pattern,
                suite,
                hybrid: !args.classic,
                psk: false,
            };
            let out = handshake(header, &client, &server)?;
            ensure!(
                out.client.handshake_hash == out.server.handshake_hash,
                "handshake hashes differ"
            );
            let fingerprint = session_fingerprint(&out.client.handshake_hash);
            check_records(suite, &out)?;
            println!(
                "{:<18} {:<4} {:<47} {:<26} {:>5.2} ms {:>7}",
                suite.name(),
                pattern.name(),
                header.noise_params().to_string(),
                fingerprint.short(),
                out.micros as f64 / 1000.0,
                out.wire_bytes
            );
        }
    }
    println!(
        "\nEach row is a separate session: a new ephemeral X25519{} exchange, so a new \
         fingerprint.\nBoth sides derived the same fingerprint; the keys themselves are never \
         shown and are zeroized when dropped.",
        if args.classic { "" } else { " + ML-KEM-768" }
    );
    Ok(())
}

/// Seal a record on the client with its sending key and open it on the server.
fn check_records(suite: Suite, out: &Outcome) -> Result<()> {
    let mut seal = SealingKey::new(suite, &out.client.initiator_to_responder)?;
    let mut open = OpeningKey::new(suite, &out.server.initiator_to_responder)?;
    let mut record = b"hello through a fresh session key".to_vec();
    let tag = seal.seal_in_place(&[], &mut record)?;
    record.extend_from_slice(&tag);
    let plain = open.open_in_place(&[], &mut record)?;
    ensure!(
        plain == b"hello through a fresh session key",
        "record did not round-trip"
    );
    Ok(())
}
