//! `sessionkey demo`: a real tunnel on loopback, and the whole life of its session keys.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use sessionkey::proto::crypto::SystemRandom;
use sessionkey::proto::handshake::{Policy, Responder};
use sessionkey::proto::keys::Identity;
use sessionkey::proto::session::{Direction, Event, SessionConfig, SessionInfo};
use sessionkey::proto::suite::Suite;
use sessionkey::status::Registry;
use sessionkey::tunnel::{
    self, ClientConfig, ClientTransport, NativeClient, Secure, ServerConfig, ServerTransport,
    ServerTrust,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Arguments of `sessionkey demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Classical X25519 only (no ML-KEM-768).
    #[arg(long)]
    classic: bool,
    /// Record suite (default: the best for this CPU).
    #[arg(long, value_parser = sessionkey::config::parse_suite)]
    suite: Option<Suite>,
    /// MiB to send through the tunnel (echoed back; at least 1). The key update comes at a
    /// third and the re-handshake at two thirds; the data waits for the re-handshake to
    /// finish before the close, whatever the size.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    mib: u64,
    /// INSECURE: records under DES or 3DES, to see their rotations (every 4 MiB).
    #[cfg(feature = "legacy-ciphers")]
    #[arg(long, value_name = "des|3des", value_parser = sessionkey::config::parse_legacy)]
    insecure_legacy_cipher: Option<Suite>,
}

fn key_line(dir: &str, d: &sessionkey::proto::session::DirectionStats) -> String {
    format!(
        "{dir} epoch {:<2} key {}",
        d.epoch,
        d.key_fingerprint.short()
    )
}

fn show(start: Instant, event: &Event) {
    let t = start.elapsed().as_secs_f64() * 1000.0;
    match event {
        Event::Established(i) => {
            println!("{t:8.1} ms  established  session {:016x}", i.id);
            println!(
                "             fingerprint {}  (both sides derive it; compare to be sure)",
                i.fingerprint
            );
            println!(
                "             {} {} {}",
                i.pattern.name(),
                i.suite,
                if i.hybrid {
                    "hybrid X25519 + ML-KEM-768"
                } else {
                    "classical X25519"
                }
            );
            println!("             {}", key_line("send   ", &i.send));
            println!("             {}", key_line("receive", &i.receive));
        }
        Event::KeyUpdated { direction, info } => {
            let (name, d) = match direction {
                Direction::Send => ("send   ", &info.send),
                Direction::Receive => ("receive", &info.receive),
            };
            println!(
                "{t:8.1} ms  key updated  {}  (after {} records, {} bytes in this direction)",
                key_line(name, d),
                d.records,
                d.bytes
            );
        }
        Event::Rehandshaken(i) => println!(
            "{t:8.1} ms  re-handshake complete: fresh ephemeral exchange #{} mixed in",
            i.rehandshakes
        ),
        Event::Closed { reason, info } => {
            println!("{t:8.1} ms  closed       {reason}");
            if let Some(i) = info {
                println!(
                    "             sent {} bytes in {} records, received {} bytes in {} records",
                    i.send.bytes, i.send.records, i.receive.bytes, i.receive.records
                );
            }
        }
        _ => {}
    }
}

pub(crate) async fn run(args: &Args) -> Result<()> {
    let mib = args.mib as usize;
    #[cfg_attr(not(feature = "legacy-ciphers"), allow(unused_mut))]
    let mut suite = args.suite.unwrap_or_else(Suite::default_for_this_cpu);
    #[cfg_attr(not(feature = "legacy-ciphers"), allow(unused_mut))]
    let mut suites = Suite::ALL.to_vec();
    #[cfg(feature = "legacy-ciphers")]
    if let Some(legacy) = args.insecure_legacy_cipher {
        println!(
            "  WARNING: {legacy} is insecure (64-bit blocks: Sweet32; DES: key search). Its keys \
             rotate every 4 MiB, half the 2^20-block cap.\n"
        );
        suite = legacy;
        suites.push(legacy);
    }
    let server_id = Arc::new(Identity::generate(&mut SystemRandom)?);
    let client_id = Arc::new(Identity::generate(&mut SystemRandom)?);
    println!(
        "sessionkey demo: a real tunnel on loopback, one session, its keys from birth to death.\n"
    );
    println!(
        "  server identity {}  (long-lived; pinned by the client)",
        server_id.public_key().fingerprint()
    );
    println!(
        "  client identity {}  (long-lived; authorized by the server)\n",
        client_id.public_key().fingerprint()
    );

    // The service behind the tunnel: echoes what it receives.
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });

    let client_key = *client_id.public_key();
    let policy = Policy {
        require_hybrid: !args.classic,
        suites,
        ..Policy::default()
    };
    let responder = Responder::new(policy, Some(server_id.clone()), None)
        .with_authorizer(Arc::new(move |k| *k == client_key));
    let server_listener = TcpListener::bind("127.0.0.1:0").await?;
    let server_addr = server_listener.local_addr()?;
    let registry = Registry::default();
    tokio::spawn(tunnel::run_server(
        server_listener,
        ServerConfig {
            name: "demo".into(),
            target: echo_addr.to_string(),
            session: SessionConfig::default(),
            transport: ServerTransport::Native(Arc::new(responder)),
            limits: sessionkey::admission::Limits::default(),
            peers: None,
        },
        registry.clone(),
    ));
    println!("  tunnel server {server_addr} -> echo service {echo_addr}\n");

    let client = ClientConfig {
        name: "demo".into(),
        server: server_addr.to_string(),
        session: SessionConfig::default(),
        transport: ClientTransport::Native(NativeClient {
            identity: client_id,
            trust: ServerTrust::Pinned(*server_id.public_key()),
            suite,
            hybrid: !args.classic,
            psk: None,
        }),
    };
    let start = Instant::now();
    let Secure::Native(mut stream) = client.connect().await? else {
        anyhow::bail!("the demo client was configured for the native transport");
    };
    let mut events = stream.events();
    let rotate = stream.rotation_handle();
    let status = stream.status_cell();
    if let Some(info) = stream.info() {
        show(start, &Event::Established(info));
    }
    // Events as they happen, until the stream is gone.
    let printer = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            show(start, &event);
        }
    });

    // Send data, forcing a key update at a third and a re-handshake at two thirds.
    let total = mib << 20;
    let chunk = vec![0x5au8; 1 << 20];
    let (mut r, mut w) = tokio::io::split(stream);
    let transfer = Instant::now();
    let reader = async {
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0usize;
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            ensure!(buf[..n].iter().all(|&b| b == 0x5a), "echoed data differs");
            got += n;
        }
        anyhow::Ok(got)
    };
    let mut server_view = serde_json::Value::Null;
    let writer = async {
        for i in 0..mib {
            if i == mib / 2 {
                server_view = registry.snapshot();
            }
            if i == mib / 3 {
                rotate.update_keys();
            }
            if i == 2 * mib / 3 {
                rotate.rehandshake();
            }
            w.write_all(&chunk).await?;
        }
        // With little data the re-handshake may still be in flight: its answer arrives
        // through the reader, so wait for it (bounded) before closing.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while status.get().is_some_and(|i| i.rehandshakes == 0) {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "the re-handshake did not complete within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        w.shutdown().await?;
        anyhow::Ok(())
    };
    let (got, ()) = tokio::try_join!(reader, writer)?;
    let secs = transfer.elapsed().as_secs_f64();
    ensure!(got == total, "received {got} of {total} bytes");
    let stream = r.unsplit(w);
    let info: Option<SessionInfo> = stream.info();
    drop(stream);
    let _ = tokio::time::timeout(Duration::from_secs(1), printer).await;
    println!(
        "\n  {} MiB each way through the tunnel in {secs:.2} s: {:.2} Gbit/s up and down together",
        mib,
        (2 * total) as f64 * 8.0 / secs / 1e9
    );
    if let Some(server_fp) = server_view["sessions"][0]["fingerprint"].as_str() {
        println!("  the server's view of the same session: fingerprint {server_fp}");
    }
    if let Some(info) = info {
        ensure!(info.rehandshakes >= 1, "no re-handshake happened");
    }
    println!(
        "\nEvery key above was derived in memory, used, rotated and erased; none was shown or \
         stored. Only fingerprints (one-way hashes) are printed."
    );
    Ok(())
}
