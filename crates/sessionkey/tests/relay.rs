//! `SecureStream::relay`, the tunnel's data path: plain TCP on one side, a session on the
//! other; data intact both ways through key updates and re-handshakes, the close carried as
//! a FIN, and tampering or truncation an error.

use std::sync::Arc;
use std::time::Duration;

use sessionkey::proto::crypto::SystemRandom;
use sessionkey::proto::handshake::{Header, Initiator, Policy, Responder};
use sessionkey::proto::keys::Identity;
use sessionkey::proto::noise::Pattern;
use sessionkey::proto::session::SessionConfig;
use sessionkey::proto::suite::Suite;
use sessionkey::proto::{Error, PeerMisbehaved};
use sessionkey::{protocol_error, SecureStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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

async fn pair<T>(a: T, b: T, config: SessionConfig) -> (SecureStream<T>, SecureStream<T>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let server = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
    let client = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
    let header = Header {
        pattern: Pattern::IK,
        suite: Suite::Aes256Gcm,
        hybrid: true,
        psk: false,
    };
    let initiator = Initiator::new(header, Some(client), Some(*server.public_key()), None).unwrap();
    let responder = Arc::new(Responder::new(Policy::default(), Some(server), None));
    let cfg = config.clone();
    let accept = tokio::spawn(async move { SecureStream::accept(b, responder, cfg).await });
    let connect = SecureStream::connect(a, initiator, config).await.unwrap();
    (connect, accept.await.unwrap().unwrap())
}

/// A connected loopback TCP pair (for a relay: its plain side, the application's end).
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = TcpStream::connect(listener.local_addr().unwrap());
    let (app, accepted) = tokio::join!(app, listener.accept());
    (accepted.unwrap().0, app.unwrap())
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("the relay stalled")
}

#[tokio::test]
async fn two_relays_carry_both_ways_through_rotation_and_close_with_a_fin() {
    // Small records per key, so key updates land between the records of one batch.
    let config = SessionConfig {
        key_update_records: 3,
        ..SessionConfig::default()
    };
    let (a, b) = tcp_pair().await;
    let (mut client, mut server) = pair(a, b, config).await;
    client.rehandshake();
    server.rehandshake();
    let (mut plain_c, mut app_c) = tcp_pair().await;
    let (mut plain_s, mut app_s) = tcp_pair().await;
    let relay_c = tokio::spawn(async move {
        client
            .relay(&mut plain_c)
            .await
            .map(|()| client.info().unwrap())
    });
    let relay_s = tokio::spawn(async move {
        server
            .relay(&mut plain_s)
            .await
            .map(|()| server.info().unwrap())
    });

    // Interactive first: a few bytes each way are delivered without waiting for more.
    bounded(async {
        app_c.write_all(b"hello").await.unwrap();
        let mut got = [0; 5];
        app_s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        app_s.write_all(b"world").await.unwrap();
        app_c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"world");
    })
    .await;

    // Idle long enough for both relays to free their buffers; they come back with data.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Then bulk both ways at once; each side's end of input arrives as the other's FIN.
    let up = pattern_data(3 << 20, 1);
    let down = pattern_data(5 << 20, 2);
    let (mut rc, mut wc) = app_c.into_split();
    let (mut rs, mut ws) = app_s.into_split();
    let (got_up, got_down) = bounded(async {
        let send_up = async {
            wc.write_all(&up).await.unwrap();
            wc.shutdown().await.unwrap();
        };
        let send_down = async {
            ws.write_all(&down).await.unwrap();
            ws.shutdown().await.unwrap();
        };
        let recv_up = async {
            let mut got = Vec::new();
            rs.read_to_end(&mut got).await.unwrap();
            got
        };
        let recv_down = async {
            let mut got = Vec::new();
            rc.read_to_end(&mut got).await.unwrap();
            got
        };
        let ((), (), u, d) = tokio::join!(send_up, send_down, recv_up, recv_down);
        (u, d)
    })
    .await;
    assert!(
        got_up == up,
        "upstream data differs: {} of {} bytes, first difference at {:?}",
        got_up.len(),
        up.len(),
        got_up.iter().zip(&up).position(|(a, b)| a != b)
    );
    assert!(
        got_down == down,
        "downstream data differs: {} of {} bytes, first difference at {:?}",
        got_down.len(),
        down.len(),
        got_down.iter().zip(&down).position(|(a, b)| a != b)
    );
    let info_c = bounded(relay_c).await.unwrap().unwrap();
    let info_s = bounded(relay_s).await.unwrap().unwrap();
    assert_eq!(info_c.send.bytes, up.len() as u64 + 5);
    assert_eq!(info_s.receive.bytes, up.len() as u64 + 5);
    assert_eq!(info_s.send.bytes, down.len() as u64 + 5);
    // Re-handshakes and key updates happened while data flowed.
    assert!(info_c.rehandshakes >= 1 && info_s.rehandshakes >= 1);
    assert!(info_c.send.epoch >= 3, "{info_c:?}");
    assert!(info_s.send.epoch >= 3, "{info_s:?}");
}

#[tokio::test]
async fn truncation_ends_the_relay_in_error_after_the_data_before_it() {
    let (a, b) = tcp_pair().await;
    let (mut client, mut server) = pair(a, b, SessionConfig::default()).await;
    let (mut plain, mut app) = tcp_pair().await;
    let relay = tokio::spawn(async move { client.relay(&mut plain).await });
    server.write_all(b"partial").await.unwrap();
    server.flush().await.unwrap();
    drop(server); // no close record
    let err = bounded(relay).await.unwrap().unwrap_err();
    assert!(
        matches!(
            protocol_error(&err),
            Some(Error::PeerMisbehaved(PeerMisbehaved::StreamTruncated))
        ),
        "{err}"
    );
    let mut got = [0; 7];
    app.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"partial");
}

#[tokio::test]
async fn tampering_ends_the_relay_in_error_and_delivers_nothing_altered() {
    // The session's transport is a TCP relay that flips one byte well after the handshake.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let flipper = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (server_addr, flipper_addr) = (
        listener.local_addr().unwrap(),
        flipper.local_addr().unwrap(),
    );
    tokio::spawn(async move {
        let (mut inbound, _) = flipper.accept().await.unwrap();
        let mut outbound = TcpStream::connect(server_addr).await.unwrap();
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
                    if seen == 300_000 {
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
    let server = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
    let header = Header {
        pattern: Pattern::IK,
        suite: Suite::ChaCha20Poly1305,
        hybrid: true,
        psk: false,
    };
    let client = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
    let initiator = Initiator::new(header, Some(client), Some(*server.public_key()), None).unwrap();
    let responder = Arc::new(Responder::new(Policy::default(), Some(server), None));
    let relay_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut s = SecureStream::accept(tcp, responder, SessionConfig::default())
            .await
            .unwrap();
        let (mut plain, mut app) = tcp_pair().await;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let _ = app.read_to_end(&mut got).await;
            got
        });
        let r = s.relay(&mut plain).await;
        drop(plain);
        (r, reader.await.unwrap())
    });
    let tcp = TcpStream::connect(flipper_addr).await.unwrap();
    let mut client = SecureStream::connect(tcp, initiator, SessionConfig::default())
        .await
        .unwrap();
    let data = pattern_data(1 << 20, 3);
    let _ = client.write_all(&data).await;
    let _ = client.shutdown().await;
    let (r, got) = bounded(relay_side).await.unwrap();
    let err = r.unwrap_err();
    assert!(
        matches!(
            protocol_error(&err),
            Some(Error::PeerMisbehaved(PeerMisbehaved::BadTag))
        ),
        "{err}"
    );
    assert!(data.starts_with(&got), "altered bytes were delivered");
    assert!(got.len() < 300_000);
}
