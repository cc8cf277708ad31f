//! `sessionkey pipe`: one session between standard input/output and a peer.

use std::path::PathBuf;

use anyhow::{Context, Result};
use sessionkey::admission::Limits;
use sessionkey::tunnel::{ClientConfig, Secure, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use sessionkey::config::{
    ClientSide, ClientTransportOpts, ServerSide, ServerTransportOpts, SessionOpts,
};

use super::common::state_dir;

/// Arguments of `sessionkey pipe`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    side: Side,
}

#[derive(Debug, clap::Subcommand)]
enum Side {
    /// Wait for one peer on ADDR.
    Listen {
        /// Address to listen on.
        addr: String,
        /// This side's private key (native transport).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Keys allowed to connect, one a line.
        #[arg(long, value_name = "FILE")]
        authorized_peers: Option<PathBuf>,
        /// A key allowed to connect (repeatable).
        #[arg(long, value_name = "PUBKEY")]
        allow: Vec<String>,
        /// Admit any peer, with or without a key or certificate. Insecure.
        #[arg(long, visible_alias = "insecure-anonymous")]
        any_client: bool,
        #[command(flatten)]
        opts: SessionOpts,
        #[command(flatten)]
        tls: ServerTransportOpts,
    },
    /// Connect to a listening peer at ADDR.
    Connect {
        /// The peer's address.
        addr: String,
        /// This side's private key (native transport; TLS needs none).
        #[arg(long)]
        key: Option<PathBuf>,
        /// The peer's public key.
        #[arg(long, value_name = "PUBKEY")]
        server_key: Option<String>,
        /// Peer keys by host (ssh known_hosts grammar).
        #[arg(long, value_name = "FILE")]
        known_peers: Option<PathBuf>,
        /// Learn an unknown peer key into --known-peers.
        #[arg(long, requires = "known_peers")]
        accept_new: bool,
        /// Do not check the peer's key. Insecure.
        #[arg(long)]
        insecure_anonymous: bool,
        #[command(flatten)]
        opts: SessionOpts,
        #[command(flatten)]
        tls: ClientTransportOpts,
    },
}

pub(crate) async fn run(args: Args) -> Result<()> {
    let stream = match args.side {
        Side::Listen {
            addr,
            key,
            authorized_peers,
            allow,
            any_client,
            opts,
            tls,
        } => {
            let (transport, peers) = tls.build(ServerSide {
                key: key.as_deref(),
                opts: &opts,
                authorized: authorized_peers.as_deref(),
                allow: &allow,
                insecure_anonymous: any_client,
                state_dir: &state_dir(),
                database: None,
            })?;
            let server = ServerConfig {
                name: "pipe".into(),
                target: String::new(),
                session: opts.session_config(),
                transport,
                limits: Limits::default(),
                peers,
            };
            let listener = TcpListener::bind(&addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let (tcp, from) = listener.accept().await?;
            tracing::info!(peer = %from, "connection");
            server
                .accept(tcp)
                .await
                .with_context(|| format!("handshake with {from} failed"))?
        }
        Side::Connect {
            addr,
            key,
            server_key,
            known_peers,
            accept_new,
            insecure_anonymous,
            opts,
            tls,
        } => {
            let transport = tls.build(ClientSide {
                server: &addr,
                key: key.as_deref(),
                opts: &opts,
                server_key: server_key.as_deref(),
                known_peers: known_peers.as_deref(),
                accept_new,
                insecure_anonymous,
            })?;
            let config = ClientConfig {
                name: "pipe".into(),
                server: addr,
                session: opts.session_config(),
                transport,
            };
            config.connect().await?
        }
    };
    pipe(stream).await
}

/// How long the peer has to acknowledge our close once both directions are done.
const ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// After sending failed, how long the other direction has to say why (a TLS alert).
const REASON_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// stdin -> peer (then the close record), peer -> stdout; success only after the peer's
/// authenticated close and, on the native transport, its acknowledgement that every byte
/// sent arrived (PROTOCOL.md 9.3).
async fn pipe(stream: Secure) -> Result<()> {
    let (mut r, mut w) = tokio::io::split(stream);
    let up = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stdin
                .read(&mut buf)
                .await
                .context("reading standard input")?;
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n])
                .await
                .context("sending to the peer")?;
            w.flush().await?;
        }
        w.shutdown().await.context("closing the session")?;
        anyhow::Ok(())
    };
    let down = async {
        let mut stdout = tokio::io::stdout();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = r
                .read(&mut buf)
                .await
                .context("the session from the peer failed")?;
            if n == 0 {
                break;
            }
            stdout.write_all(&buf[..n]).await?;
        }
        stdout.flush().await?;
        anyhow::Ok(())
    };
    {
        tokio::pin!(up, down);
        tokio::select! {
            sent = &mut up => match sent {
                Ok(()) => down.await?,
                // A server that refuses this client after the handshake (a TLS 1.3 client
                // certificate) says why in an alert, which our next write may beat with a broken
                // pipe: the alert, read on the other direction, is the error worth showing.
                Err(e) => match tokio::time::timeout(REASON_WAIT, &mut down).await {
                    Ok(Err(why)) => return Err(why),
                    _ => return Err(e),
                },
            },
            received = &mut down => {
                received?;
                up.await?;
            }
        }
    }
    let mut stream = r.unsplit(w);
    if let Secure::Native(native) = &mut stream {
        let bytes = tokio::time::timeout(ACK_WAIT, native.acknowledged())
            .await
            .map_err(|_| {
                sessionkey::proto::Error::from(sessionkey::proto::PeerMisbehaved::NotAcknowledged)
            })?
            .context("delivery was not confirmed")?;
        tracing::info!(bytes, "the peer confirmed receiving every byte");
        native.shutdown().await.context("closing the connection")?;
    }
    Ok(())
}
