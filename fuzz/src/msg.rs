//! `msg_wire`: the messaging wire and storage formats (docs/MESSAGING.md): prekey bundles
//! and their parts, identity keys, ratchet headers, envelopes (initial messages with their
//! preamble, ratchet messages), and the client store's records (devices, sessions).
//!
//! Input: a mode byte (taken modulo 6), then the mode's own bytes.
//!
//! 0. [`PrekeyBundle::from_bytes`] on the rest: a parsed bundle encodes to the same bytes,
//!    and its signatures are checked.
//! 1. A selector byte, then [`IdentityKey`], [`SignedPrekey`], [`OneTimePrekey`],
//!    [`KemPrekey`] or ratchet [`Header`] from the rest: parse then encode gives the same
//!    bytes.
//! 2. [`Envelope::parse`] on the rest, then the envelope goes to Bob's (or Alice's)
//!    established session restored from its stored form: a decryption that fails leaves
//!    the stored form byte for byte as it was.
//! 3. A genuine envelope (selected by a byte: Alice's setup messages, her ratchet messages,
//!    Bob's replies) changed by up to 8 (u16 position, XOR byte) edits, delivered to its
//!    recipient: a changed envelope is refused and changes nothing, and the genuine one
//!    then decrypts to its plaintext.
//! 4. [`Device::from_bytes`] on the rest: a parsed device stores, and reads back to the
//!    same stored form (the first store may reorder prekeys and drop repeated ids).
//! 5. [`Session::from_bytes`] on the rest: a parsed session stores as the same bytes.
//!
//! The sessions are made once per process (ML-KEM keys come from aws-lc, which cannot be
//! fixed), so the genuine envelopes are built in the harness, never stored in the input.

use std::sync::OnceLock;

use sessionkey_proto::msg::{
    Address, Device, Envelope, Header, IdentityKey, KemPrekey, OneTimePrekey, PrekeyBundle,
    Session, SignedPrekey, Timestamp, Trust,
};
use sessionkey_proto::suite::Suite;

use crate::{FixedRng, Input};

const NOW: Timestamp = Timestamp::from_unix_secs(1_750_000_000);

/// Established sessions in their stored form, and genuine envelopes with their recipient.
struct Fixture {
    alice: Vec<u8>,
    bob: Vec<u8>,
    bob_device: Vec<u8>,
    bundle: Vec<u8>,
    /// (to Bob, envelope, plaintext), each decryptable by the stored recipient.
    envelopes: Vec<(bool, Vec<u8>, Vec<u8>)>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = FixedRng::new(0x6d73);
        let mut bob_device = Device::generate(&mut rng).expect("a device");
        let alice_device = Device::generate(&mut rng).expect("a device");
        let signed = bob_device
            .new_signed_prekey(NOW, &mut rng)
            .expect("a signed prekey");
        let one_time = bob_device
            .new_one_time_prekeys(1, &mut rng)
            .expect("a one-time prekey");
        let kem = bob_device.new_kem_prekeys(1, NOW).expect("a KEM prekey");
        let bundle = PrekeyBundle {
            identity: *bob_device.identity(),
            signed_prekey: signed,
            one_time_prekey: Some(one_time[0]),
            kem_prekey: kem[0].clone(),
        };
        let (a_addr, b_addr) = (
            Address::new("alice/1").expect("address"),
            Address::new("bob/1").expect("address"),
        );
        let mut a = Session::initiate(
            &alice_device,
            &a_addr,
            &b_addr,
            &bundle,
            Trust::OnFirstUse,
            Suite::Aes256Gcm,
            &mut rng,
        )
        .expect("initiate");
        // Two setup messages; Bob answers the first.
        let first = a.encrypt(b"setup one").expect("encrypt");
        let second = a.encrypt(b"setup two").expect("encrypt");
        let Ok(Envelope::Initial(initial)) = Envelope::parse(&first) else {
            panic!("a setup message");
        };
        let (mut b, text) = Session::respond(
            &mut bob_device,
            &b_addr,
            &a_addr,
            &initial,
            Trust::OnFirstUse,
            NOW,
            &mut rng,
        )
        .expect("respond");
        assert_eq!(text, b"setup one");
        let bob_stored = b.to_bytes().to_vec();
        // Bob's replies, then Alice's ratchet messages: Alice reads the first reply only
        // after her stored copy is taken, so both replies stay new to her.
        let reply1 = b.encrypt(b"reply one").expect("encrypt");
        let reply2 = b.encrypt(b"reply two").expect("encrypt");
        let alice_stored = a.to_bytes().to_vec();
        let mut a2 = Session::from_bytes(&alice_stored).expect("restore");
        a2.decrypt(&Envelope::parse(&reply1).expect("parse"), NOW, &mut rng)
            .expect("reply one");
        // Alice's ratchet messages go to Bob's stored copy, which has not read them: they
        // are in a new chain, so Bob needs no reply of his for them.
        let m1 = a2.encrypt(b"ratchet one").expect("encrypt");
        let m2 = a2.encrypt(b"ratchet two").expect("encrypt");
        Fixture {
            alice: alice_stored,
            bob: bob_stored,
            bob_device: bob_device.to_bytes().expect("store").to_vec(),
            bundle: bundle.to_bytes(),
            envelopes: vec![
                (true, second, b"setup two".to_vec()),
                (false, reply1, b"reply one".to_vec()),
                (false, reply2, b"reply two".to_vec()),
                (true, m1, b"ratchet one".to_vec()),
                (true, m2, b"ratchet two".to_vec()),
            ],
        }
    })
}

/// Run one input.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    match inp.u8() % 6 {
        0 => bundle(inp.rest()),
        1 => {
            let which = inp.u8();
            parts(which, inp.rest());
        }
        2 => {
            let to_bob = inp.u8() & 1 != 0;
            raw_envelope(to_bob, inp.rest());
        }
        3 => tampered_envelope(&mut inp),
        4 => device(inp.rest()),
        _ => session(inp.rest()),
    }
}

fn bundle(bytes: &[u8]) {
    if let Ok(b) = PrekeyBundle::from_bytes(bytes) {
        assert_eq!(b.to_bytes(), bytes, "a prekey bundle does not round-trip");
        let _ = b.verify();
    }
}

fn parts(which: u8, bytes: &[u8]) {
    match which % 5 {
        0 => {
            if let Ok(k) = IdentityKey::from_bytes(bytes) {
                assert_eq!(&k.to_bytes()[..], bytes, "identity key round trip");
            }
        }
        1 => {
            if let Ok(k) = SignedPrekey::from_bytes(bytes) {
                assert_eq!(k.to_bytes(), bytes, "signed prekey round trip");
            }
        }
        2 => {
            if let Ok(k) = OneTimePrekey::from_bytes(bytes) {
                assert_eq!(k.to_bytes(), bytes, "one-time prekey round trip");
            }
        }
        3 => {
            if let Ok(k) = KemPrekey::from_bytes(bytes) {
                assert_eq!(k.to_bytes(), bytes, "KEM prekey round trip");
            }
        }
        _ => {
            if let Ok(h) = Header::from_bytes(bytes) {
                assert_eq!(&h.to_bytes()[..], bytes, "ratchet header round trip");
            }
        }
    }
}

fn restore(to_bob: bool) -> (Session, Vec<u8>) {
    let f = fixture();
    let stored = if to_bob { &f.bob } else { &f.alice };
    (
        Session::from_bytes(stored).expect("the fixture restores"),
        stored.clone(),
    )
}

fn raw_envelope(to_bob: bool, bytes: &[u8]) {
    let Ok(env) = Envelope::parse(bytes) else {
        return;
    };
    std::hint::black_box(format!("{env:?}"));
    let (mut s, before) = restore(to_bob);
    if s.decrypt(&env, NOW, &mut FixedRng::new(2)).is_err() {
        assert!(
            *s.to_bytes() == *before,
            "a failed decryption changed the session"
        );
    }
}

fn tampered_envelope(inp: &mut Input<'_>) {
    let f = fixture();
    let (to_bob, genuine, text) = &f.envelopes[usize::from(inp.u8()) % f.envelopes.len()];
    let mut env = genuine.clone();
    for _ in 0..8 {
        if inp.is_empty() {
            break;
        }
        let pos = usize::from(inp.u16()) % env.len();
        env[pos] ^= inp.u8();
    }
    let (mut s, before) = restore(*to_bob);
    let mut rng = FixedRng::new(3);
    if env != *genuine {
        if let Ok(parsed) = Envelope::parse(&env) {
            let got = s.decrypt(&parsed, NOW, &mut rng);
            assert!(
                got.is_err(),
                "an envelope changed in flight decrypted: {got:?}"
            );
            assert!(
                *s.to_bytes() == *before,
                "a refused envelope changed the session"
            );
        }
    }
    let parsed = Envelope::parse(genuine).expect("a genuine envelope parses");
    let got = s.decrypt(&parsed, NOW, &mut rng);
    assert_eq!(
        got.as_ref(),
        Ok(text),
        "the genuine envelope after a changed one"
    );
}

fn device(bytes: &[u8]) {
    // Not byte for byte: `from_bytes` takes the prekeys in any order (and a repeated id,
    // the last one wins), `to_bytes` writes them by id. Once stored again, the form is
    // fixed.
    if let Ok(d) = Device::from_bytes(bytes) {
        let stored = d.to_bytes().expect("a parsed device stores");
        let again = Device::from_bytes(&stored).expect("a stored device reads back");
        let twice = again.to_bytes().expect("a parsed device stores");
        assert_eq!(
            &twice[..],
            &stored[..],
            "a stored device does not round-trip"
        );
        assert_eq!(again.identity(), d.identity());
    }
}

fn session(bytes: &[u8]) {
    if let Ok(s) = Session::from_bytes(bytes) {
        assert_eq!(
            &s.to_bytes()[..],
            bytes,
            "a stored session does not round-trip"
        );
    }
}

/// Genuine seeds: a bundle and its parts, a stored device and sessions, envelopes.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let f = fixture();
    let mut seeds = Vec::new();
    let with = |mode: &[u8], body: &[u8]| {
        let mut s = mode.to_vec();
        s.extend_from_slice(body);
        s
    };
    seeds.push(("bundle".into(), with(&[0], &f.bundle)));
    let b = PrekeyBundle::from_bytes(&f.bundle).expect("the fixture's bundle parses");
    seeds.push(("identity".into(), with(&[1, 0], &b.identity.to_bytes())));
    seeds.push((
        "signed-prekey".into(),
        with(&[1, 1], &b.signed_prekey.to_bytes()),
    ));
    if let Some(k) = b.one_time_prekey {
        seeds.push(("one-time-prekey".into(), with(&[1, 2], &k.to_bytes())));
    }
    seeds.push(("kem-prekey".into(), with(&[1, 3], &b.kem_prekey.to_bytes())));
    for (i, (to_bob, env, _)) in f.envelopes.iter().enumerate() {
        seeds.push((format!("envelope-{i}"), with(&[2, u8::from(*to_bob)], env)));
        if let Ok(Envelope::Ratchet(m)) = Envelope::parse(env) {
            seeds.push((format!("header-{i}"), with(&[1, 4], &m.header().to_bytes())));
        }
        seeds.push((format!("tamper-{i}"), vec![3, i as u8, 0, 60, 1]));
    }
    seeds.push(("device".into(), with(&[4], &f.bob_device)));
    seeds.push(("session-bob".into(), with(&[5], &f.bob)));
    seeds.push(("session-alice".into(), with(&[5], &f.alice)));
    seeds
}
