//! Forward secrecy, post-compromise security, replays and prekey reuse, identity and
//! signature checks of the messaging core: each shown with a stolen copy of stored state or a
//! relay that misbehaves.

mod msg_support;

use msg_support::*;
use sessionkey_proto::crypto::SystemRandom;
use sessionkey_proto::msg::{
    Envelope, MsgError, PrekeyBundle, PrekeyKind, Session, Trust, MAX_SKIP,
    SKIPPED_KEY_LIFETIME_SECS,
};
use sessionkey_proto::suite::Suite;

/// An attacker's copy of a client's stored session, taken now.
fn steal(session: &Session) -> Session {
    Session::from_bytes(&session.to_bytes()).unwrap()
}

#[test]
fn forward_secrecy_a_stolen_state_cannot_read_earlier_messages() {
    let (mut a, mut b) = established(Suite::Aes256Gcm);
    // Messages Bob read in order, one read out of order, and earlier chains.
    let mut earlier = Vec::new();
    for round in 0..3 {
        let m: Vec<_> = (0..3)
            .map(|i| a.encrypt(format!("a{round}{i}").as_bytes()).unwrap())
            .collect();
        for i in [2, 0, 1] {
            deliver(&mut b, &m[i]).unwrap();
        }
        earlier.extend(m);
        let r = b.encrypt(b"ack").unwrap();
        deliver(&mut a, &r).unwrap();
    }
    // One message still in flight: its key is legitimately held (a skipped key).
    let late = a.encrypt(b"in flight").unwrap();
    let next = a.encrypt(b"after").unwrap();
    deliver(&mut b, &next).unwrap();
    assert_eq!(b.skipped_keys(), 1);

    let mut stolen = steal(&b);
    for m in &earlier {
        assert_eq!(
            deliver(&mut stolen, m),
            Err(MsgError::Duplicated),
            "a stolen state read a message from before the theft"
        );
    }
    assert_eq!(deliver(&mut stolen, &next), Err(MsgError::Duplicated));
    // The in-flight message is readable from the copy (its key had to be kept), and the real
    // session reads it exactly once.
    assert_eq!(deliver(&mut stolen, &late).unwrap(), b"in flight");
    assert_eq!(deliver(&mut b, &late).unwrap(), b"in flight");
    assert_eq!(deliver(&mut b, &late), Err(MsgError::Duplicated));
    assert_eq!(b.skipped_keys(), 0);
}

/// Post-compromise security: `victim`'s stored state is stolen. The thief keeps reading what
/// `peer` sends only until one round trip of the DH ratchet has passed: the victim receives a
/// new ratchet key from the peer (and so makes a fresh one of its own), answers with it, and the
/// peer reads the answer. Everything the peer sends after that is closed to the thief, whether
/// it kept the snapshot or followed every message since.
fn check_post_compromise(victim: &mut Session, peer: &mut Session) {
    let snapshot = victim.to_bytes();
    let mut follower = Session::from_bytes(&snapshot).unwrap();

    // Until the round trip the compromise is real: the thief reads the peer's messages.
    let p1 = peer.encrypt(b"p1").unwrap();
    assert_eq!(deliver(&mut follower, &p1).unwrap(), b"p1");
    assert_eq!(deliver(victim, &p1).unwrap(), b"p1");

    // The round trip: the victim answers with its fresh ratchet key, the peer reads it.
    let v1 = victim.encrypt(b"v1").unwrap();
    assert_eq!(deliver(peer, &v1).unwrap(), b"v1");
    for i in 0..5 {
        let text = format!("p2.{i}");
        let p2 = peer.encrypt(text.as_bytes()).unwrap();
        let mut fresh_copy = Session::from_bytes(&snapshot).unwrap();
        assert!(
            deliver(&mut follower, &p2).is_err(),
            "a thief following along read a message after the round trip"
        );
        assert!(
            deliver(&mut fresh_copy, &p2).is_err(),
            "the stolen snapshot read a message after the round trip"
        );
        assert_eq!(deliver(victim, &p2).unwrap(), text.as_bytes());
    }
}

#[test]
fn post_compromise_security_of_the_responder() {
    // After `established`, Alice's current ratchet key is new to Bob.
    let (mut a, mut b) = established(Suite::ChaCha20Poly1305);
    check_post_compromise(&mut b, &mut a);
}

#[test]
fn post_compromise_security_of_the_initiator() {
    // After `established`, Bob's current ratchet key is known to Alice: Alice writes first,
    // so that Bob's next message carries a new one.
    let (mut a, mut b) = established(Suite::Aes128Gcm);
    let x = a.encrypt(b"x").unwrap();
    deliver(&mut b, &x).unwrap();
    check_post_compromise(&mut a, &mut b);
}

#[test]
fn a_stolen_state_reads_nothing_after_the_round_trip_even_with_messages_kept_back() {
    // Messages the peer sent before the round trip but delivered after it stay readable to the
    // thief only through keys it had (the forward-secrecy side); new ones never.
    let (mut a, mut b) = established(Suite::Aes256Gcm);
    let snapshot = b.to_bytes();
    let early = a.encrypt(b"early").unwrap();
    let kept_back = a.encrypt(b"kept back").unwrap();
    deliver(&mut b, &early).unwrap();
    let v = b.encrypt(b"v").unwrap();
    deliver(&mut a, &v).unwrap();
    let after = a.encrypt(b"after").unwrap();
    let mut thief = Session::from_bytes(&snapshot).unwrap();
    assert!(deliver(&mut thief, &after).is_err());
    assert_eq!(deliver(&mut b, &kept_back).unwrap(), b"kept back");
    assert_eq!(deliver(&mut b, &after).unwrap(), b"after");
}

#[test]
fn one_time_prekeys_are_used_at_most_once() {
    let mut bob = Bob::new(2, 2);
    let alice = Alice::new();
    let mut s = alice.initiate(&bob, &bob.bundle(Some(1), Some(1)), Suite::Aes256Gcm);
    let first = s.encrypt(b"one").unwrap();
    let (_, text) = respond(&mut bob, &alice, &first).unwrap();
    assert_eq!(text, b"one");
    assert_eq!(bob.device.one_time_prekey_count(), 1);
    assert_eq!(bob.device.kem_prekey_count(), 1);
    // The same setup again (a replay, or a relay handing out the keys twice) is refused.
    assert_eq!(
        respond(&mut bob, &alice, &first).err(),
        Some(MsgError::UnknownPrekey {
            kind: PrekeyKind::Kem,
            id: bob.kem[1].id.0
        })
    );
    // Without a one-time X25519 prekey, the one-time KEM prekey still dies with its use.
    let mut s = alice.initiate(&bob, &bob.bundle(None, Some(0)), Suite::Aes256Gcm);
    let m = s.encrypt(b"two").unwrap();
    respond(&mut bob, &alice, &m).unwrap();
    assert_eq!(
        respond(&mut bob, &alice, &m).err(),
        Some(MsgError::UnknownPrekey {
            kind: PrekeyKind::Kem,
            id: bob.kem[0].id.0
        })
    );
    // A one-time X25519 prekey used up with the last-resort KEM key.
    let mut s = alice.initiate(&bob, &bob.bundle(Some(1), None), Suite::Aes256Gcm);
    let m = s.encrypt(b"three").unwrap();
    assert_eq!(
        respond(&mut bob, &alice, &m).err(),
        Some(MsgError::UnknownPrekey {
            kind: PrekeyKind::OneTime,
            id: bob.one_time[1].id.0
        })
    );
}

#[test]
fn a_replayed_setup_on_the_last_resort_kem_prekey_is_rejected() {
    let mut bob = Bob::new(0, 0);
    let alice = Alice::new();
    let mut s = alice.initiate(&bob, &bob.bundle(None, None), Suite::Aes256Gcm);
    let first = s.encrypt(b"hello").unwrap();
    let second = s.encrypt(b"again").unwrap();
    let (mut session, _) = respond(&mut bob, &alice, &first).unwrap();
    // The client would find the session by base key; a fresh setup from it is a replay,
    // whichever message of the first chain carries it.
    assert_eq!(
        respond(&mut bob, &alice, &first).err(),
        Some(MsgError::PrekeyReplay)
    );
    assert_eq!(
        respond(&mut bob, &alice, &second).err(),
        Some(MsgError::PrekeyReplay)
    );
    // Through the existing session: the repeat is a duplicate, the next message is fine.
    assert_eq!(deliver(&mut session, &first), Err(MsgError::Duplicated));
    assert_eq!(deliver(&mut session, &second).unwrap(), b"again");
    // The record survives storage, and another base key on the same key is accepted.
    let mut restored =
        sessionkey_proto::msg::Device::from_bytes(&bob.device.to_bytes().unwrap()).unwrap();
    let env = initial(&first);
    assert_eq!(
        Session::respond(
            &mut restored,
            &bob.addr,
            &alice.addr,
            &env,
            Trust::OnFirstUse,
            NOW,
            &mut SystemRandom
        )
        .err(),
        Some(MsgError::PrekeyReplay)
    );
    let mut other = alice.initiate(&bob, &bob.bundle(None, None), Suite::Aes256Gcm);
    let m = other.encrypt(b"new base key").unwrap();
    assert_eq!(respond(&mut bob, &alice, &m).unwrap().1, b"new base key");
}

#[test]
fn a_failed_setup_consumes_nothing() {
    let mut bob = Bob::new(1, 1);
    let alice = Alice::new();
    let mut s = alice.initiate(&bob, &bob.bundle(Some(0), Some(0)), Suite::Aes256Gcm);
    let good = s.encrypt(b"hello").unwrap();
    let before = bob.device.to_bytes().unwrap();
    // Body tampered; sender address wrong (bound in the associated data).
    let mut tampered = good.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert!(matches!(
        respond(&mut bob, &alice, &tampered),
        Err(MsgError::InvalidMessage(_))
    ));
    let mallory = Alice {
        device: sessionkey_proto::msg::Device::generate(&mut SystemRandom).unwrap(),
        addr: addr("mallory/1"),
    };
    assert!(matches!(
        respond(&mut bob, &mallory, &good),
        Err(MsgError::InvalidMessage(_))
    ));
    assert_eq!(*bob.device.to_bytes().unwrap(), *before);
    assert_eq!(respond(&mut bob, &alice, &good).unwrap().1, b"hello");
}

#[test]
fn identities_are_checked_against_trust() {
    let mut bob = Bob::new(1, 1);
    let alice = Alice::new();
    let stranger = Alice::new();
    let bundle = bob.bundle(Some(0), Some(0));
    assert_eq!(
        Session::initiate(
            &alice.device,
            &alice.addr,
            &bob.addr,
            &bundle,
            Trust::Pinned(*stranger.device.identity()),
            Suite::Aes256Gcm,
            &mut SystemRandom
        )
        .err(),
        Some(MsgError::UntrustedIdentity)
    );
    let mut s = Session::initiate(
        &alice.device,
        &alice.addr,
        &bob.addr,
        &bundle,
        Trust::Pinned(*bob.device.identity()),
        Suite::Aes256Gcm,
        &mut SystemRandom,
    )
    .unwrap();
    let m = s.encrypt(b"hi").unwrap();
    let env = initial(&m);
    assert_eq!(
        Session::respond(
            &mut bob.device,
            &bob.addr,
            &alice.addr,
            &env,
            Trust::Pinned(*stranger.device.identity()),
            NOW,
            &mut SystemRandom
        )
        .err(),
        Some(MsgError::UntrustedIdentity)
    );
    let (session, _) = Session::respond(
        &mut bob.device,
        &bob.addr,
        &alice.addr,
        &env,
        Trust::Pinned(*alice.device.identity()),
        NOW,
        &mut SystemRandom,
    )
    .unwrap();
    assert_eq!(session.peer_identity(), alice.device.identity());
}

#[test]
fn bundles_with_bad_signatures_or_key_types_are_refused() {
    let bob = Bob::new(1, 1);
    let alice = Alice::new();
    let try_bundle = |bundle: &PrekeyBundle| {
        Session::initiate(
            &alice.device,
            &alice.addr,
            &bob.addr,
            bundle,
            Trust::OnFirstUse,
            Suite::Aes256Gcm,
            &mut SystemRandom,
        )
        .err()
    };
    // Another device's signed prekey, or a KEM prekey of another device.
    let other = Bob::new(1, 1);
    let mut b = bob.bundle(Some(0), Some(0));
    b.signed_prekey = other.signed;
    assert_eq!(
        try_bundle(&b),
        Some(MsgError::BadSignature("signed prekey"))
    );
    let mut b = bob.bundle(Some(0), Some(0));
    b.kem_prekey = other.kem[0].clone();
    assert_eq!(
        try_bundle(&b),
        Some(MsgError::BadSignature("ML-KEM-768 prekey"))
    );
    // Relabelled ids are outside the signature's reach only if ids were unsigned.
    let mut b = bob.bundle(Some(0), Some(0));
    b.signed_prekey.id = sessionkey_proto::msg::PrekeyId(77);
    assert_eq!(
        try_bundle(&b),
        Some(MsgError::BadSignature("signed prekey"))
    );

    let bytes = bob.bundle(Some(0), Some(0)).to_bytes();
    // Byte offsets: version 1, identity 130, signed prekey id 4, then its type byte.
    let spk_type_at = 1 + 130 + 4;
    assert_eq!(bytes[spk_type_at], 0x03);
    for wrong in [0x02, 0x04, 0x07, 0x08, 0x00, 0xff] {
        let mut b = bytes.clone();
        b[spk_type_at] = wrong;
        assert_eq!(
            PrekeyBundle::from_bytes(&b),
            Err(MsgError::BadKeyEncoding("unexpected key type byte"))
        );
    }
    // A one-time KEM prekey relabelled as last-resort (or back) breaks its signature.
    let kem_type_at = bytes.len() - 64 - 1184 - 1;
    assert_eq!(bytes[kem_type_at], 0x05);
    let mut b = bytes.clone();
    b[kem_type_at] = 0x06;
    let parsed = PrekeyBundle::from_bytes(&b).unwrap();
    assert_eq!(
        try_bundle(&parsed),
        Some(MsgError::BadSignature("ML-KEM-768 prekey"))
    );
    // The identity binding: any change to the X25519 identity key.
    let mut b = bytes.clone();
    b[1 + 33 + 1] ^= 0x40;
    assert_eq!(
        PrekeyBundle::from_bytes(&b),
        Err(MsgError::BadSignature("identity binding"))
    );
    for cut in [0, 1, 100, bytes.len() - 1] {
        assert!(PrekeyBundle::from_bytes(&bytes[..cut]).is_err());
    }
}

#[test]
fn preamble_fields_are_bound() {
    let mut bob = Bob::new(1, 1);
    let alice = Alice::new();
    let mut s = alice.initiate(&bob, &bob.bundle(Some(0), Some(0)), Suite::Aes256Gcm);
    let good = s.encrypt(b"hello").unwrap();
    // Envelope: kind 1, version 1, identity 130, then the base key's type byte and key.
    let base_at = 1 + 1 + 130 + 1;
    // X25519 ignores the top bit of a public key: only the associated data catches this.
    let mut top_bit = good.clone();
    top_bit[base_at + 31] ^= 0x80;
    assert!(matches!(
        respond(&mut bob, &alice, &top_bit),
        Err(MsgError::InvalidMessage(_))
    ));
    // A low-order base key.
    let mut zero = good.clone();
    zero[base_at..base_at + 32].fill(0);
    assert!(matches!(
        respond(&mut bob, &alice, &zero),
        Err(MsgError::BadKeyEncoding(_))
    ));
    // A ratchet key where the base key belongs.
    let mut retyped = good.clone();
    retyped[base_at - 1] = 0x08;
    assert_eq!(
        Envelope::parse(&retyped).err(),
        Some(MsgError::BadKeyEncoding("unexpected key type byte"))
    );
    assert_eq!(respond(&mut bob, &alice, &good).unwrap().1, b"hello");
}

#[test]
fn messages_of_another_session_are_rejected() {
    let (mut a1, mut b1) = established(Suite::Aes256Gcm);
    let (mut a2, _b2) = established(Suite::Aes256Gcm);
    let m = a2.encrypt(b"for someone else").unwrap();
    let before = b1.to_bytes();
    assert!(matches!(
        deliver(&mut b1, &m),
        Err(MsgError::InvalidMessage(_))
    ));
    assert_eq!(*b1.to_bytes(), *before);
    let m = a1.encrypt(b"mine").unwrap();
    assert_eq!(deliver(&mut b1, &m).unwrap(), b"mine");
}

#[test]
fn skipped_keys_expire_after_14_days() {
    let (mut a, mut b) = established(Suite::Aes256Gcm);
    let m0 = a.encrypt(b"late").unwrap();
    let m1 = a.encrypt(b"early").unwrap();
    let m2 = a.encrypt(b"later still").unwrap();
    deliver(&mut b, &m2).unwrap();
    let almost = NOW.plus_secs(SKIPPED_KEY_LIFETIME_SECS - 1);
    assert_eq!(deliver_at(&mut b, &m1, almost).unwrap(), b"early");
    let expired = NOW.plus_secs(SKIPPED_KEY_LIFETIME_SECS);
    assert_eq!(deliver_at(&mut b, &m0, expired), Err(MsgError::Duplicated));
    // A successful decryption after expiry also drops the expired key from storage.
    let m3 = a.encrypt(b"new").unwrap();
    assert_eq!(b.skipped_keys(), 1);
    deliver_at(&mut b, &m3, expired).unwrap();
    assert_eq!(b.skipped_keys(), 0);
}

#[test]
fn too_far_ahead_is_refused_and_changes_nothing() {
    let (mut a, mut b) = established(Suite::Aes256Gcm);
    let mut sent = Vec::new();
    for i in 0..=MAX_SKIP + 1 {
        sent.push(a.encrypt(format!("{i}").as_bytes()).unwrap());
    }
    let before = b.to_bytes();
    let last = sent.last().unwrap();
    assert_eq!(
        deliver(&mut b, last),
        Err(MsgError::TooFarAhead {
            skip: u64::from(MAX_SKIP) + 1,
            max: MAX_SKIP
        })
    );
    assert_eq!(*b.to_bytes(), *before);
    // Exactly MAX_SKIP ahead is allowed.
    let at_bound = &sent[MAX_SKIP as usize];
    assert_eq!(
        deliver(&mut b, at_bound).unwrap(),
        format!("{MAX_SKIP}").as_bytes()
    );
}

#[test]
fn debug_output_shows_no_secrets() {
    let (a, _) = established(Suite::Aes256Gcm);
    let stored = a.to_bytes();
    let text = format!("{a:?}");
    // No run of 8 stored bytes (in hex or as a Rust array) shows up in the Debug output.
    for window in stored.windows(8).step_by(8) {
        let hex: String = window.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!text.contains(&hex), "{text}");
        assert!(!text.contains(&format!("{window:?}")[1..20]), "{text}");
    }
    assert!(text.contains("Session"));
}
