//! Record seal plus open, per suite and size, beside the raw aws-lc-rs AEAD in the same run,
//! and the memory of one established session (DESIGN.md, "Performance targets").
//!
//! For each suite of [`Suite::ALL`] and each record size (16384 and 1420 bytes of content):
//!
//! - sessionkey: an established [`Session`] pair (IK, classical, key updates off by policy;
//!   rotation at half the suite's limit still applies). One iteration is what a caller does:
//!   the client drains [`Session::poll_transmit`], seals the content already in place with
//!   [`Session::seal_in_place`], and the server [`Session::read`]s the frame, decrypting in
//!   place. One buffer serves both, so no copy is measured that the raw path does not do.
//! - sessionkey-datagram (1420 bytes only, the VPN's packet size): the VPN's data path, a
//!   [`DatagramSession`] pair; one iteration seals a packet (16-byte header as associated
//!   data, counter nonce) and the peer opens it (header checks, replay window), in place.
//! - aws-lc-rs: one `LessSafeKey`, `seal_in_place_separate_tag` with a counter nonce, the tag
//!   placed after the ciphertext, then `open_in_place` of the same buffer. The 2-byte AAD
//!   mirrors the record layer's authenticated length prefix.
//! - with `--features legacy-ciphers`, also the DES and 3DES suites, each beside a
//!   sessionkey AES-256-GCM session: the cost of the legacy opt-in (key updates every
//!   4 MiB included, as the 2^20-block cap requires).
//!
//! Criterion reports bytes/s of content (one seal and one open per iteration). After the
//! criterion groups, `main` runs a short interleaved timing loop of each sessionkey/raw pair
//! and prints the same-run ratio, then measures the memory of established sessions:
//!
//! ```text
//! cargo bench -p sessionkey-proto --bench record -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! `RATIO_SECS` (default 0.02) sets the time per contender per round of the timing loop and
//! `RATIO_ROUNDS` (default 40) the number of rounds; a ratio is the median of the ratios
//! measured inside each round. `NO_RATIOS=1` skips the loop, `NO_MEMORY=1` the memory part.
//!
//! Memory is counted twice. The Rust heap, exactly, by a counting global allocator: the bytes
//! still allocated after establishing sessions and keeping only the server side, per session,
//! including the `Session` value itself. aws-lc allocates its AEAD contexts with C `malloc`,
//! which that allocator never sees, so the total (Rust and C) comes from the growth of the
//! process's resident anonymous memory (`/proc/self/smaps_rollup`) over 2000 sessions.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use criterion::{BenchmarkId, Criterion, Throughput};
use sessionkey_proto::crypto::SystemRandom;
use sessionkey_proto::handshake::{Header, Initiator, Policy, Responder};
use sessionkey_proto::keys::Identity;
use sessionkey_proto::keys::SecretKey;
use sessionkey_proto::noise::Pattern;
use sessionkey_proto::record::datagram::{self, DatagramConfig, DatagramSession};
use sessionkey_proto::record::{LEN_PREFIX, MAX_FRAME, MIN_RECORD_BODY};
use sessionkey_proto::session::{Received, Session, SessionConfig};
use sessionkey_proto::suite::Suite;

// ---------------------------------------------------------------------------------------------
// A global allocator that counts the Rust heap.

/// Bytes currently allocated through the Rust global allocator.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Allocations made so far (reallocations count as one).
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

struct Counting;

// SAFETY: every method delegates to `System` with the caller's arguments unchanged, so
// `System`'s guarantees hold; the only addition is bookkeeping on two atomics, which neither
// allocates nor touches the memory.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
            ALLOCS.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
            ALLOCS.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` and `layout` come from this allocator, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` and `layout` come from `System`; the caller upholds the rest.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Relaxed);
            LIVE.fetch_sub(layout.size(), Relaxed);
            ALLOCS.fetch_add(1, Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

// ---------------------------------------------------------------------------------------------
// Contenders

/// Record content sizes: a full TLS-sized record and a typical tunnel packet.
const SIZES: [usize; 2] = [16384, 1420];

/// One seal and one open of a record of the contender's size.
type Run = Box<dyn FnMut()>;

struct Contender {
    suite: Suite,
    size: usize,
    /// `sessionkey` (stream records through a `Session`) or `sessionkey-datagram` (the
    /// VPN's packets through a `DatagramSession`).
    name: &'static str,
    sessionkey: Run,
    /// What it is compared with: raw aws-lc-rs for the AEAD suites; a sessionkey AES-256-GCM
    /// session for the legacy ones (their cost beside the default).
    raw: Run,
    baseline: &'static str,
}

fn config() -> SessionConfig {
    SessionConfig {
        key_update_records: u64::MAX,
        key_update_bytes: u64::MAX,
        rehandshake_interval: None,
        ..SessionConfig::default()
    }
}

/// A client and a server session, established in memory.
fn established(
    header: Header,
    client_id: Arc<Identity>,
    responder: Arc<Responder>,
    server_key: sessionkey_proto::keys::PublicKey,
    config: SessionConfig,
    wire: &mut [u8],
) -> (Session, Session) {
    let now = Instant::now();
    let initiator =
        Initiator::new(header, Some(client_id), Some(server_key), None).expect("initiator");
    let mut client = Session::client(now, initiator, config.clone(), Box::new(SystemRandom));
    let mut server = Session::server(now, responder, config, Box::new(SystemRandom));
    for _ in 0..8 {
        let c = pump(&mut client, &mut server, wire, now);
        let s = pump(&mut server, &mut client, wire, now);
        if c + s == 0 {
            break;
        }
    }
    assert!(client.is_established() && server.is_established());
    while client.poll_event().is_some() {}
    while server.poll_event().is_some() {}
    (client, server)
}

/// Move every frame `from` has to send into `to`; returns how many.
fn pump(from: &mut Session, to: &mut Session, wire: &mut [u8], now: Instant) -> usize {
    let mut frames = 0;
    while let Some(n) = from.poll_transmit(now, wire).expect("poll_transmit") {
        to.read(now, &mut wire[..n]).expect("read");
        frames += 1;
    }
    frames
}

fn header(suite: Suite) -> Header {
    Header {
        pattern: Pattern::IK,
        suite,
        hybrid: false,
        psk: false,
    }
}

fn sessionkey(suite: Suite, size: usize) -> Run {
    let server_id = Arc::new(Identity::generate(&mut SystemRandom).expect("server identity"));
    let client_id = Arc::new(Identity::generate(&mut SystemRandom).expect("client identity"));
    let server_key = *server_id.public_key();
    let mut policy = Policy {
        require_hybrid: false,
        ..Policy::default()
    };
    if !policy.suites.contains(&suite) {
        policy.suites.push(suite); // a legacy suite, chosen with its opt-in
    }
    let responder = Arc::new(Responder::new(policy, Some(server_id), None));
    let mut wire = vec![0u8; MAX_FRAME];
    let (mut client, mut server) = established(
        header(suite),
        client_id,
        responder,
        server_key,
        config(),
        &mut wire,
    );
    drop(wire);

    // Room for the content, the type byte and the tag; also for any control frame that
    // poll_transmit might write (a key update once the suite's limit is half used).
    // (Legacy records add up to 41 bytes: type, padding and a 32-byte tag.)
    let mut buf = vec![0u8; (LEN_PREFIX + size + MIN_RECORD_BODY + 32).max(1280)];
    for (i, b) in buf[LEN_PREFIX..LEN_PREFIX + size].iter_mut().enumerate() {
        *b = i as u8;
    }
    let mut checked = false;
    // The caller's clock reading, made once per event-loop turn, is not the record layer's.
    let now = Instant::now();
    Box::new(move || {
        // Control records first, as a caller must; normally there are none.
        while let Some(n) = client.poll_transmit(now, &mut buf).expect("poll_transmit") {
            let got = server.read(now, &mut buf[..n]).expect("read control");
            assert!(matches!(got, Received::Control { .. }));
        }
        // The content is in place: the previous iteration decrypted it where it was.
        let n = client.seal_in_place(now, &mut buf, size).expect("seal");
        let got = server.read(now, &mut buf[..n]).expect("open");
        let Received::Data { frame_len, content } = got else {
            panic!("not a data record: {got:?}")
        };
        if !checked {
            checked = true;
            assert_eq!(
                (frame_len, content.clone()),
                (n, LEN_PREFIX..LEN_PREFIX + size)
            );
            assert!(buf[content.clone()]
                .iter()
                .enumerate()
                .all(|(i, &b)| b == i as u8));
        }
        black_box((&buf[content], frame_len));
    })
}

/// The VPN's data path: a packet sealed by one `DatagramSession` and opened by its peer,
/// replay window included, the payload in place as the VPN keeps it.
fn datagram(suite: Suite, size: usize) -> Run {
    let secret = |b| SecretKey::from_bytes([b; 32]);
    let config = DatagramConfig::default();
    let mut a = DatagramSession::new(suite, 1, 2, 1, secret(1), secret(2), config).expect("a");
    let mut b = DatagramSession::new(suite, 2, 1, 1, secret(2), secret(1), config).expect("b");
    let mut buf = vec![0u8; size + datagram::OVERHEAD];
    for (i, x) in buf[datagram::HEADER_LEN..][..size].iter_mut().enumerate() {
        *x = i as u8;
    }
    let mut checked = false;
    let now = Instant::now();
    Box::new(move || {
        let n = a.seal_in_place(&mut buf, size).expect("seal");
        let payload = b.open_in_place(now, &mut buf[..n]).expect("open");
        if !checked {
            checked = true;
            assert!(payload.iter().enumerate().all(|(i, &x)| x == i as u8));
        }
        black_box(payload);
    })
}

fn raw(suite: Suite, size: usize) -> Run {
    let alg = match suite {
        Suite::Aes128Gcm => &aead::AES_128_GCM,
        Suite::Aes256Gcm => &aead::AES_256_GCM,
        Suite::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        _ => unreachable!("suite {suite} has no aws-lc-rs AEAD here"),
    };
    let key_bytes = [0x42u8; 32];
    let key = LessSafeKey::new(UnboundKey::new(alg, &key_bytes[..alg.key_len()]).expect("key"));
    let tag_len = alg.tag_len();
    let mut buf = vec![0u8; size + tag_len];
    for (i, b) in buf[..size].iter_mut().enumerate() {
        *b = i as u8;
    }
    let aad = (size as u16).to_be_bytes();
    let mut counter = 0u64;
    let mut checked = false;
    let nonce = |counter: u64| {
        let mut n = [0u8; aead::NONCE_LEN];
        n[4..].copy_from_slice(&counter.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    };
    Box::new(move || {
        let (plain, tag_room) = buf.split_at_mut(size);
        let tag = key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(aad), plain)
            .expect("seal");
        tag_room.copy_from_slice(tag.as_ref());
        let opened = key
            .open_in_place(nonce(counter), Aad::from(aad), &mut buf)
            .expect("open");
        counter += 1;
        if !checked {
            checked = true;
            assert_eq!(opened.len(), size);
            assert!(opened.iter().enumerate().all(|(i, &b)| b == i as u8));
        }
        black_box(opened);
    })
}

fn contenders() -> Vec<Contender> {
    let mut v = Vec::new();
    for size in SIZES {
        for suite in Suite::ALL {
            v.push(Contender {
                suite,
                size,
                name: "sessionkey",
                sessionkey: sessionkey(suite, size),
                raw: raw(suite, size),
                baseline: "aws-lc-rs",
            });
            if size < 16384 {
                v.push(Contender {
                    suite,
                    size,
                    name: "sessionkey-datagram",
                    sessionkey: datagram(suite, size),
                    raw: raw(suite, size),
                    baseline: "aws-lc-rs",
                });
            }
        }
        #[cfg(feature = "legacy-ciphers")]
        for legacy in sessionkey_proto::crypto::legacy::LegacySuite::ALL {
            let suite = Suite::insecure_legacy(
                legacy,
                sessionkey_proto::crypto::legacy::InsecureLegacyCipher::i_accept_that_des_and_3des_are_broken(),
            );
            v.push(Contender {
                suite,
                size,
                name: "sessionkey",
                sessionkey: sessionkey(suite, size),
                raw: sessionkey(Suite::Aes256Gcm, size),
                baseline: "sessionkey-aes-256-gcm",
            });
        }
    }
    v
}

fn criterion_benches(c: &mut Criterion, contenders: &mut [Contender]) {
    for size in SIZES {
        let mut group = c.benchmark_group(format!("record-{size}B"));
        group.throughput(Throughput::Bytes(size as u64));
        for contender in contenders.iter_mut().filter(|c| c.size == size) {
            let name = contender.suite.name();
            let run = &mut contender.sessionkey;
            group.bench_function(BenchmarkId::new(contender.name, name), |b| {
                b.iter(&mut *run)
            });
            if contender.name == "sessionkey-datagram" {
                continue; // its baseline is the stream contender's, measured already
            }
            let run = &mut contender.raw;
            group.bench_function(BenchmarkId::new(contender.baseline, name), |b| {
                b.iter(&mut *run)
            });
        }
        group.finish();
    }
}

// ---------------------------------------------------------------------------------------------
// Same-run ratios

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Content bytes per second of `run` over about `secs`.
fn rate(run: &mut Run, size: usize, secs: Duration) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..32 {
            run();
        }
        n += 32;
        let elapsed = start.elapsed();
        if elapsed >= secs {
            return (n * size as u64) as f64 / elapsed.as_secs_f64();
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ratios(contenders: &mut [Contender]) {
    let secs = Duration::from_secs_f64(env_or("RATIO_SECS", 0.02));
    let rounds: usize = env_or("RATIO_ROUNDS", 40).max(1);
    println!(
        "\nSame-run timing loop: {rounds} interleaved rounds x {:.3} s per contender \
         (ratio = median of per-round ratios; targets >= 0.95 at 16384 B, and at 1420 B \
         for the VPN's datagrams):",
        secs.as_secs_f64()
    );
    for c in contenders.iter_mut() {
        let size = c.size;
        rate(&mut c.sessionkey, size, Duration::from_millis(50)); // warm up
        rate(&mut c.raw, size, Duration::from_millis(50));
        // The record path must not allocate.
        let before = ALLOCS.load(Relaxed);
        for _ in 0..64 {
            (c.sessionkey)();
        }
        let allocs = ALLOCS.load(Relaxed) - before;
        let (mut sk, mut raw) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Alternate which goes first, so drift and neighbours hit both alike.
            if round % 2 == 0 {
                sk.push(rate(&mut c.sessionkey, size, secs));
                raw.push(rate(&mut c.raw, size, secs));
            } else {
                raw.push(rate(&mut c.raw, size, secs));
                sk.push(rate(&mut c.sessionkey, size, secs));
            }
        }
        let ratio = median(sk.iter().zip(&raw).map(|(a, b)| a / b).collect());
        let alloc_note = if allocs == 0 {
            String::new()
        } else {
            format!("  ({allocs} allocations in 64 iterations!)")
        };
        println!(
            "record {} {}: {} {:.3} GB/s, {} {:.3} GB/s, ratio {:.3}{alloc_note}",
            c.suite,
            size,
            c.name,
            median(sk) / 1e9,
            c.baseline,
            median(raw) / 1e9,
            ratio
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Memory

/// A field of `/proc/self/smaps_rollup`, in bytes (None where there is no such file).
fn smaps(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Establish `n` sessions, keep only the server sides, and print what each costs. In quick
/// mode, only check that the measurement runs.
fn memory(n: usize, checkpoint: usize, print: bool) {
    let suite = Suite::Aes256Gcm;
    let header = Header {
        hybrid: true,
        ..header(suite)
    };
    let server_id = Arc::new(Identity::generate(&mut SystemRandom).expect("server identity"));
    let client_id = Arc::new(Identity::generate(&mut SystemRandom).expect("client identity"));
    let server_key = *server_id.public_key();
    let responder = Arc::new(Responder::new(Policy::default(), Some(server_id), None));
    let mut wire = vec![0u8; MAX_FRAME];
    let mut make = || {
        let (client, server) = established(
            header,
            client_id.clone(),
            responder.clone(),
            server_key,
            SessionConfig::default(),
            &mut wire,
        );
        drop(client);
        server
    };
    // Warm up lazily initialised state and the allocator's free lists.
    drop((0..64).map(|_| make()).collect::<Vec<_>>());

    let heap0 = LIVE.load(Relaxed);
    let allocs0 = ALLOCS.load(Relaxed);
    let (rss0, anon0) = (smaps("Rss:"), smaps("Anonymous:"));
    // The Vec's buffer counts: it holds each `Session` value, as a caller's table would.
    let mut kept = Vec::with_capacity(n);
    let mut heap_at_checkpoint = 0;
    for i in 0..n {
        kept.push(make());
        if i + 1 == checkpoint {
            // Leave out the part of the Vec's buffer that no session fills yet.
            let unused = (kept.capacity() - kept.len()) * size_of::<Session>();
            heap_at_checkpoint = LIVE.load(Relaxed) - heap0 - unused;
        }
    }
    let heap = LIVE.load(Relaxed) - heap0;
    let allocs = ALLOCS.load(Relaxed) - allocs0;
    let (rss1, anon1) = (smaps("Rss:"), smaps("Anonymous:"));
    assert!(kept.iter().all(Session::is_established));
    assert!(heap >= n * size_of::<Session>());
    if !print {
        return;
    }
    let per = |bytes: u64| bytes as f64 / n as f64;
    let rust = per(heap as u64);
    println!(
        "\nMemory of an idle established session (server side, IK hybrid, {suite}, \
         default config; Session value {} bytes + what it owns):",
        size_of::<Session>()
    );
    println!(
        "  Rust heap: {:.0} bytes per session after {checkpoint}, {rust:.0} after {n} \
         ({:.0} allocations per session made while establishing, most freed)",
        heap_at_checkpoint as f64 / checkpoint as f64,
        per(allocs as u64)
    );
    match (rss0, rss1, anon0, anon1) {
        (Some(r0), Some(r1), Some(a0), Some(a1)) => {
            let (rss, anon) = (per(r1.saturating_sub(r0)), per(a1.saturating_sub(a0)));
            println!(
                "  process growth: Rss {rss:.0}, Anonymous {anon:.0} bytes per session \
                 (C side, aws-lc, about {:.0})",
                anon - rust
            );
            println!(
                "session memory: rust-heap {rust:.0} bytes, total ~{anon:.0} bytes per \
                 established session ({n} sessions); target <= 16384"
            );
        }
        _ => println!(
            "session memory: rust-heap {rust:.0} bytes, total unknown (no \
             /proc/self/smaps_rollup) per established session ({n} sessions)"
        ),
    }
    drop(kept);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // As criterion does: without `--bench` (e.g. `cargo test --benches`) this is a test run.
    let quick = !args.iter().any(|a| a == "--bench")
        || args
            .iter()
            .any(|a| a == "--test" || a == "--list" || a.starts_with("--profile-time"));
    // Memory first, while the allocator holds nothing left over from the benchmarks.
    if std::env::var_os("NO_MEMORY").is_none() && !args.iter().any(|a| a == "--list") {
        if quick {
            memory(4, 2, false);
        } else {
            memory(2000, 1000, true);
        }
    }
    let mut contenders = contenders();
    let mut criterion = Criterion::default().configure_from_args();
    criterion_benches(&mut criterion, &mut contenders);
    criterion.final_summary();
    if !quick && std::env::var_os("NO_RATIOS").is_none() {
        ratios(&mut contenders);
    }
}
