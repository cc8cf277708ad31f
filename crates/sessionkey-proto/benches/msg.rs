//! Messaging in process: session setups per second, and messages per second encrypted and
//! decrypted (docs/MESSAGING.md).
//!
//! ```text
//! cargo bench -p sessionkey-proto --bench msg -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! - `msg/setup`: one whole asynchronous setup, both sides: the initiator checks the bundle's
//!   signatures, does four X25519 agreements and an ML-KEM-768 encapsulation, encrypts the
//!   first message; the responder parses it, does the same agreements and the decapsulation,
//!   and decrypts (one DH ratchet step). With a one-time X25519 prekey, and one-time KEM
//!   prekeys made ahead in batches outside the timing (aws-lc-rs key generation is measured
//!   by `msg/kem_prekey`).
//! - `msg/encrypt/<size>` and `msg/decrypt/<size>`: one message in an established session, in
//!   order (a hash-ratchet step, a key expansion and the AEAD).
//! - `msg/ping_pong/<size>`: a message each way, so each decryption is a DH ratchet step.
//!
//! Criterion reports elements (setups or messages) per second.

use std::cell::RefCell;
use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use sessionkey_proto::crypto::SystemRandom;
use sessionkey_proto::msg::{
    Address, Device, Envelope, PrekeyBundle, Session, SignedPrekey, Timestamp, Trust,
};
use sessionkey_proto::suite::Suite;

const NOW: Timestamp = Timestamp::from_unix_secs(1_750_000_000);
const SIZES: [usize; 2] = [100, 4096];

struct Parties {
    alice: Device,
    bob: RefCell<Device>,
    spk: SignedPrekey,
    a_addr: Address,
    b_addr: Address,
}

fn parties() -> Parties {
    let mut bob = Device::generate(&mut SystemRandom).unwrap();
    let spk = bob.new_signed_prekey(NOW, &mut SystemRandom).unwrap();
    Parties {
        alice: Device::generate(&mut SystemRandom).unwrap(),
        bob: RefCell::new(bob),
        spk,
        a_addr: Address::new("alice/1").unwrap(),
        b_addr: Address::new("bob/1").unwrap(),
    }
}

fn setup(p: &Parties, bundle: &PrekeyBundle) -> Session {
    let mut a = Session::initiate(
        &p.alice,
        &p.a_addr,
        &p.b_addr,
        bundle,
        Trust::OnFirstUse,
        Suite::Aes256Gcm,
        &mut SystemRandom,
    )
    .unwrap();
    let first = a.encrypt(b"hello").unwrap();
    let Ok(Envelope::Initial(initial)) = Envelope::parse(&first) else {
        panic!("not an initial message");
    };
    let (b, text) = Session::respond(
        &mut p.bob.borrow_mut(),
        &p.b_addr,
        &p.a_addr,
        &initial,
        Trust::OnFirstUse,
        NOW,
        &mut SystemRandom,
    )
    .unwrap();
    assert_eq!(text, b"hello");
    b
}

fn established(p: &Parties) -> (Session, Session) {
    let bundle = fresh_bundle(p);
    let mut a = Session::initiate(
        &p.alice,
        &p.a_addr,
        &p.b_addr,
        &bundle,
        Trust::OnFirstUse,
        Suite::Aes256Gcm,
        &mut SystemRandom,
    )
    .unwrap();
    let first = a.encrypt(b"hello").unwrap();
    let Ok(Envelope::Initial(initial)) = Envelope::parse(&first) else {
        panic!("not an initial message");
    };
    let (mut b, _) = Session::respond(
        &mut p.bob.borrow_mut(),
        &p.b_addr,
        &p.a_addr,
        &initial,
        Trust::OnFirstUse,
        NOW,
        &mut SystemRandom,
    )
    .unwrap();
    let reply = b.encrypt(b"hi").unwrap();
    a.decrypt(&Envelope::parse(&reply).unwrap(), NOW, &mut SystemRandom)
        .unwrap();
    (a, b)
}

/// A bundle with a fresh one-time X25519 prekey and a fresh one-time KEM prekey.
fn fresh_bundle(p: &Parties) -> PrekeyBundle {
    let mut bob = p.bob.borrow_mut();
    let opk = bob.new_one_time_prekeys(1, &mut SystemRandom).unwrap()[0];
    let kem = bob.new_kem_prekeys(1, NOW).unwrap().remove(0);
    PrekeyBundle {
        identity: *bob.identity(),
        signed_prekey: p.spk,
        one_time_prekey: Some(opk),
        kem_prekey: kem,
    }
}

fn benches(c: &mut Criterion) {
    let p = parties();
    let mut g = c.benchmark_group("msg");
    g.throughput(Throughput::Elements(1));
    g.bench_function("setup", |bench| {
        bench.iter_batched(
            || fresh_bundle(&p),
            |bundle| black_box(setup(&p, &bundle)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("kem_prekey", |bench| {
        let mut d = Device::generate(&mut SystemRandom).unwrap();
        bench.iter(|| {
            let k = d.new_kem_prekeys(1, NOW).unwrap();
            // A fresh device every 1,000 keys keeps it below its limit of held prekeys.
            if k[0].id.0 % 1000 == 0 {
                d = Device::generate(&mut SystemRandom).unwrap();
            }
            black_box(k)
        })
    });
    for size in SIZES {
        let plaintext = vec![0x5a; size];
        let (mut a, _) = established(&p);
        g.bench_function(BenchmarkId::new("encrypt", size), |bench| {
            bench.iter(|| black_box(a.encrypt(&plaintext).unwrap()))
        });
        // The encryptions above were never delivered: start the decryption from a fresh pair.
        let (mut a, mut b) = established(&p);
        g.bench_function(BenchmarkId::new("decrypt", size), |bench| {
            bench.iter_batched(
                || Envelope::parse(&a.encrypt(&plaintext).unwrap()).unwrap(),
                |env| black_box(b.decrypt(&env, NOW, &mut SystemRandom).unwrap()),
                BatchSize::SmallInput,
            )
        });
        g.bench_function(BenchmarkId::new("ping_pong", size), |bench| {
            bench.iter(|| {
                let x = a.encrypt(&plaintext).unwrap();
                b.decrypt(&Envelope::parse(&x).unwrap(), NOW, &mut SystemRandom)
                    .unwrap();
                let y = b.encrypt(&plaintext).unwrap();
                black_box(
                    a.decrypt(&Envelope::parse(&y).unwrap(), NOW, &mut SystemRandom)
                        .unwrap(),
                )
            })
        });
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
}
