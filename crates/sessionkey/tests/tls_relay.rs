//! `TlsStream::relay`, the TLS tunnel's data path: data intact both ways, in bursts and
//! in bulk, across idle pauses long enough for the relay to free its buffers and through
//! key updates; each end carried as close_notify and FIN; a cut without close_notify an
//! error.

use std::io;
use std::time::Duration;

use sessionkey::proto::session::SessionConfig;
use sessionkey::tls::{
    CertSource, TlsClient, TlsClientOptions, TlsServer, TlsServerOptions, TlsStream, TlsTrust,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// A connected loopback TCP pair.
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connect = TcpStream::connect(listener.local_addr().unwrap());
    let (connected, accepted) = tokio::join!(connect, listener.accept());
    (connected.unwrap(), accepted.unwrap().0)
}

/// A TLS session over loopback TCP: (client side, server side).
async fn tls_pair(
    name: &str,
    config: &SessionConfig,
) -> (TlsStream<TcpStream>, TlsStream<TcpStream>) {
    let dir = std::env::temp_dir().join(format!(
        "sessionkey-tls-relay-{name}-{}",
        std::process::id()
    ));
    let server = TlsServer::new(TlsServerOptions::new(CertSource::SelfSigned {
        dir: dir.clone(),
    }))
    .unwrap();
    let (a, b) = tcp_pair().await;
    let client = TlsClient::new(TlsClientOptions::new(
        b.local_addr().unwrap().to_string(),
        TlsTrust::Pinned(server.pin()),
    ))
    .unwrap();
    let (connected, accepted) = tokio::join!(client.connect(a, config), server.accept(b, config));
    let _ = std::fs::remove_dir_all(dir);
    (connected.unwrap(), accepted.unwrap())
}

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("the relay stalled")
}

/// Write `data` on `w` while reading as much on `r`; returns what was read.
async fn through(w: &mut TcpStream, r: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    let mut got = vec![0; data.len()];
    let (written, read) = tokio::join!(w.write_all(data), r.read_exact(&mut got));
    written.unwrap();
    read.unwrap();
    got
}

/// Both ways at once, `len` bytes each.
async fn exchange(app_c: &mut TcpStream, app_s: &mut TcpStream, len: usize, seed: u64) {
    let up = pattern_data(len, seed);
    let down = pattern_data(len, seed + 1);
    let (mut app_c_r, mut app_c_w) = app_c.split();
    let (mut app_s_r, mut app_s_w) = app_s.split();
    let mut got_up = vec![0; len];
    let mut got_down = vec![0; len];
    let (a, b, c, d) = tokio::join!(
        app_c_w.write_all(&up),
        app_s_r.read_exact(&mut got_up),
        app_s_w.write_all(&down),
        app_c_r.read_exact(&mut got_down),
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    d.unwrap();
    assert!(got_up == up, "plain -> TLS -> plain altered {len} bytes");
    assert!(got_down == down, "the other way altered {len} bytes");
}

#[tokio::test]
async fn tls_relays_carry_both_ways_across_idle_pauses_and_close_with_a_fin() {
    // Key updates every 256 KiB: several during each bulk exchange.
    let config = SessionConfig {
        key_update_bytes: 256 * 1024,
        ..SessionConfig::default()
    };
    let (mut client, mut server) = tls_pair("both-ways", &config).await;
    let (mut plain_c, mut app_c) = tcp_pair().await;
    let (mut plain_s, mut app_s) = tcp_pair().await;
    let relay_c = tokio::spawn(async move {
        let r = client.relay(&mut plain_c).await;
        (r, client.info())
    });
    let relay_s = tokio::spawn(async move {
        let r = server.relay(&mut plain_s).await;
        (r, server.info())
    });
    bounded(async {
        for round in 0..2u64 {
            // Small bursts (the relay's small buffers), then bulk (full-size ones).
            exchange(&mut app_c, &mut app_s, 1000, round * 10).await;
            exchange(&mut app_c, &mut app_s, 3 << 20, round * 10 + 2).await;
            exchange(&mut app_c, &mut app_s, 10, round * 10 + 4).await;
            // Long enough for both relays to free their full-size buffers: the next round
            // starts from none.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        // A reader that stalls past the release time: both relays hold bytes they cannot
        // pass on yet, with nothing moving, and must keep them.
        let stalled = pattern_data(32 << 20, 50);
        let mut got = vec![0; stalled.len()];
        let (written, read) = tokio::join!(app_s.write_all(&stalled), async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            app_c.read_exact(&mut got).await
        });
        written.unwrap();
        read.unwrap();
        assert!(
            got == stalled,
            "bytes held over a stalled reader were altered"
        );
        // The client's application ends its input: the server's application sees the end,
        // and can still answer.
        app_c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        app_s.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let answer = pattern_data(100_000, 99);
        assert_eq!(through(&mut app_s, &mut app_c, &answer).await, answer);
        app_s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        app_c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    })
    .await;
    let (result_c, info_c) = bounded(relay_c).await.unwrap();
    let (result_s, info_s) = bounded(relay_s).await.unwrap();
    result_c.unwrap();
    result_s.unwrap();
    assert!(info_c.send_epoch >= 4, "{info_c:?}");
    assert!(info_s.send_epoch >= 4, "{info_s:?}");
}

#[tokio::test]
async fn a_tls_cut_without_close_notify_ends_the_relay_in_error_after_the_data_before_it() {
    let (mut client, server) = tls_pair("cut", &SessionConfig::default()).await;
    let (mut plain, mut app) = tcp_pair().await;
    let relay = tokio::spawn(async move { client.relay(&mut plain).await });
    let mut server = server;
    server.write_all(b"partial").await.unwrap();
    server.flush().await.unwrap();
    // Let the relay pass it on and go idle first.
    let mut got = [0; 7];
    app.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"partial");
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(server.into_inner()); // no close_notify
    let err = bounded(relay).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
}
