//! SecureStream over in-memory and TCP transports: data intact through rotation, clean
//! shutdown, and errors (never a clean end of file) for tampering and truncation.

use std::sync::Arc;
use std::time::Duration;

use sessionkey::proto::crypto::SystemRandom;
use sessionkey::proto::handshake::{Header, Initiator, Policy, Responder};
use sessionkey::proto::keys::Identity;
use sessionkey::proto::noise::Pattern;
use sessionkey::proto::session::{Event, SessionConfig};
use sessionkey::proto::suite::Suite;
use sessionkey::proto::{Error, PeerMisbehaved};
use sessionkey::{protocol_error, SecureStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

fn pattern_data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Keys {
    initiator: Initiator,
    responder: Arc<Responder>,
}

fn keys() -> Keys {
    let server = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
    let client = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
    let header = Header {
        pattern: Pattern::IK,
        suite: Suite::Aes256Gcm,
        hybrid: true,
        psk: false,
    };
    Keys {
        initiator: Initiator::new(header, Some(client), Some(*server.public_key()), None).unwrap(),
        responder: Arc::new(Responder::new(Policy::default(), Some(server), None)),
    }
}

async fn pair<T>(a: T, b: T, config: SessionConfig) -> (SecureStream<T>, SecureStream<T>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let k = keys();
    let cfg = config.clone();
    let server = tokio::spawn(async move { SecureStream::accept(b, k.responder, cfg).await });
    let client = SecureStream::connect(a, k.initiator, config).await.unwrap();
    (client, server.await.unwrap().unwrap())
}

#[tokio::test]
async fn data_survives_rotation_both_ways_and_closes_cleanly() {
    let config = SessionConfig {
        key_update_records: 16,
        ..SessionConfig::default()
    };
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (mut client, mut server) = pair(a, b, config).await;
    let mut events = client.events();
    let up = pattern_data(3 << 20, 1);
    let down = pattern_data(1 << 20, 2);
    let (up2, down2) = (up.clone(), down.clone());
    let server_task = tokio::spawn(async move {
        server.rehandshake();
        let (mut r, mut w) = tokio::io::split(server);
        let reader = async {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap(); // clean EOF after the client's close
            assert!(got == up2, "upstream data differs");
        };
        let writer = async {
            w.write_all(&down2).await.unwrap();
            w.shutdown().await.unwrap();
        };
        tokio::join!(reader, writer);
        r.unsplit(w).info().unwrap()
    });
    client.rehandshake();
    let (mut r, mut w) = tokio::io::split(client);
    let reader = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert!(got == down, "downstream data differs");
    };
    let writer = async {
        w.write_all(&up).await.unwrap();
        w.shutdown().await.unwrap();
    };
    tokio::join!(reader, writer);
    let server_info = server_task.await.unwrap();
    assert!(server_info.receive.epoch >= 3, "{server_info:?}");
    let mut updates = 0;
    while let Ok(e) = events.try_recv() {
        if matches!(e, Event::KeyUpdated { .. }) {
            updates += 1;
        }
    }
    assert!(updates >= 3);
}

#[tokio::test]
async fn truncation_is_an_error_not_eof() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (mut client, server) = pair(a, b, SessionConfig::default()).await;
    let mut server = server;
    server.write_all(b"partial").await.unwrap();
    server.flush().await.unwrap();
    drop(server); // no close record
    let mut buf = Vec::new();
    let err = client.read_to_end(&mut buf).await.unwrap_err();
    assert_eq!(buf, b"partial");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(matches!(
        protocol_error(&err),
        Some(Error::PeerMisbehaved(PeerMisbehaved::StreamTruncated))
    ));
}

#[tokio::test]
async fn tampering_in_flight_is_an_error() {
    // A TCP relay between the two ends flips one byte well after the handshake.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (server_addr, relay_addr) = (listener.local_addr().unwrap(), relay.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut inbound, _) = relay.accept().await.unwrap();
        let mut outbound = tokio::net::TcpStream::connect(server_addr).await.unwrap();
        let (mut ri, mut wi) = inbound.split();
        let (mut ro, mut wo) = outbound.split();
        let up = async {
            let mut seen = 0usize;
            let mut buf = vec![0; 4096];
            loop {
                let n = ri.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                for b in &mut buf[..n] {
                    seen += 1;
                    if seen == 100_000 {
                        *b ^= 0x20;
                    }
                }
                if wo.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        };
        let down = tokio::io::copy(&mut ro, &mut wi);
        let _ = tokio::join!(up, down);
    });
    let k = keys();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut s = SecureStream::accept(tcp, k.responder, SessionConfig::default())
            .await
            .unwrap();
        let mut got = Vec::new();
        let r = s.read_to_end(&mut got).await;
        (r, got)
    });
    let tcp = tokio::net::TcpStream::connect(relay_addr).await.unwrap();
    let mut client = SecureStream::connect(tcp, k.initiator, SessionConfig::default())
        .await
        .unwrap();
    let data = pattern_data(400_000, 3);
    let _ = client.write_all(&data).await;
    let _ = client.shutdown().await;
    let (r, got) = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    let err = r.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert!(matches!(
        protocol_error(&err),
        Some(Error::PeerMisbehaved(PeerMisbehaved::BadTag))
    ));
    assert!(data.starts_with(&got), "altered bytes were delivered");
    assert!(got.len() < 100_000);
}

#[tokio::test]
async fn unauthorized_key_is_refused_with_a_reason() {
    let server = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
    let client = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
    let header = Header {
        pattern: Pattern::IK,
        suite: Suite::ChaCha20Poly1305,
        hybrid: true,
        psk: false,
    };
    let initiator = Initiator::new(header, Some(client), Some(*server.public_key()), None).unwrap();
    let responder = Arc::new(
        Responder::new(Policy::default(), Some(server), None).with_authorizer(Arc::new(|_| false)),
    );
    let (a, b) = tokio::io::duplex(64 * 1024);
    let s =
        tokio::spawn(
            async move { SecureStream::accept(b, responder, SessionConfig::default()).await },
        );
    let err = SecureStream::connect(a, initiator, SessionConfig::default())
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    assert!(err.to_string().contains("authorized peers"), "{err}");
    assert!(s.await.unwrap().is_err());
}

#[tokio::test]
async fn shutdown_without_flush_under_backpressure_still_sends_the_close() {
    // A whole record and more sit in the send buffer when shutdown is called: the close
    // record must still follow them, or the peer sees a truncated stream.
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (mut client, mut server) = pair(a, b, SessionConfig::default()).await;
    let data = pattern_data(sessionkey::proto::record::MAX_CONTENT + 1000, 7);
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let r = server.read_to_end(&mut got).await;
        (r.map(|_| got), server)
    });
    client.write_all(&data).await.unwrap();
    client.shutdown().await.unwrap(); // no flush first
    let (got, _server) = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the reader never finished")
        .unwrap();
    assert!(got.expect("the peer saw an error, not a clean end") == data);
}

#[tokio::test]
async fn a_failed_session_reports_its_error_on_every_later_call() {
    let config = SessionConfig {
        idle_timeout: Some(Duration::from_millis(200)),
        ..SessionConfig::default()
    };
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (_client, mut server) = pair(a, b, config).await;
    let mut buf = [0u8; 16];
    let err = tokio::time::timeout(Duration::from_secs(10), server.read(&mut buf))
        .await
        .expect("the idle timeout never fired")
        .unwrap_err();
    assert!(
        matches!(protocol_error(&err), Some(Error::Timeout(_))),
        "{err}"
    );
    for (what, result) in [
        ("write", server.write(b"x").await.map(|_| ())),
        ("flush", server.flush().await),
        ("shutdown", server.shutdown().await),
    ] {
        let e = result.expect_err(what);
        assert!(
            matches!(protocol_error(&e), Some(Error::Timeout(_))),
            "{what}: {e}"
        );
    }
}

#[tokio::test]
async fn delivery_is_confirmed_only_when_the_peer_read_everything() {
    // Over TCP, so a dropped peer really closes the connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    for peer_reads_all in [true, false] {
        let k = keys();
        // Small enough to sit whole in the socket buffers: every byte gets "written".
        let data = pattern_data(60_000, 3);
        let server = async {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut s = SecureStream::accept(tcp, k.responder, SessionConfig::default())
                .await
                .unwrap();
            if peer_reads_all {
                let mut all = Vec::new();
                s.read_to_end(&mut all).await.unwrap();
                s.shutdown().await.unwrap();
                (all.len(), Some(s))
            } else {
                // It has nothing to send and closes its direction at once (as `pipe listen`
                // with an empty standard input), then its application stops after reading a
                // part (stuck or killed; the connection stays up so no reset tells the client).
                s.shutdown().await.unwrap();
                let mut got = vec![0u8; 10_000];
                s.read_exact(&mut got).await.unwrap();
                (got.len(), Some(s))
            }
        };
        let client = async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut client = SecureStream::connect(tcp, k.initiator, SessionConfig::default())
                .await
                .unwrap();
            client.write_all(&data).await.unwrap();
            client.shutdown().await.unwrap();
            let mut rest = Vec::new();
            let read = client.read_to_end(&mut rest).await;
            (client, read)
        };
        let ((got, server), (mut client, read)) =
            tokio::time::timeout(Duration::from_secs(10), async {
                tokio::join!(server, client)
            })
            .await
            .expect("the transfer never ended");
        read.expect("the peer's close arrived: reading ends cleanly");
        let mut server = server.unwrap();
        if peer_reads_all {
            let (acked, server_acked) = tokio::time::timeout(Duration::from_secs(10), async {
                tokio::join!(client.acknowledged(), server.acknowledged())
            })
            .await
            .expect("waiting for the acknowledgements never ended");
            assert_eq!(got, data.len());
            assert_eq!(acked.unwrap(), data.len() as u64);
            assert_eq!(server_acked.unwrap(), 0, "the server sent no data");
        } else {
            assert_eq!(got, 10_000);
            let acked =
                tokio::time::timeout(Duration::from_millis(500), client.acknowledged()).await;
            assert!(
                !matches!(acked, Ok(Ok(_))),
                "delivery confirmed although the peer read only part"
            );
            drop(server); // killed now: the connection ends without the acknowledgement
            let err = tokio::time::timeout(Duration::from_secs(10), client.acknowledged())
                .await
                .expect("the end of the connection was not noticed")
                .unwrap_err();
            assert!(
                matches!(
                    protocol_error(&err),
                    Some(Error::PeerMisbehaved(PeerMisbehaved::NotAcknowledged))
                ) || err.kind() == std::io::ErrorKind::ConnectionReset,
                "{err}"
            );
        }
    }
}
