//! The messaging key schedule, encodings and whole conversations against vectors made by an
//! independent Python implementation (tests/msg_vectors/gen.py, from docs/MESSAGING.md). Every
//! byte must match: keys, identities, signatures, bundles, the associated data and every
//! envelope of each conversation, with the randomness each side draws given by the vectors.
//!
//! The recipient's ML-KEM-768 key comes from a recorded 64-byte seed; aws-lc-rs cannot generate
//! from a seed, so RustCrypto `ml-kem` (dev-dependency) expands it and the result must match the
//! Python public key before it is imported. The initiator's encapsulation is random in both
//! implementations, so its ciphertext and shared secret are vector inputs.

use std::io::Write;

use ml_kem::{EncodedSizeUser, KemCore, MlKem768, B32};
use serde_json::Value;
use sessionkey_proto::crypto::SecureRandom;
use sessionkey_proto::msg::kdf::{
    ad_hash, associated_data, pqxdh_root_key, ChainKey, MessageKey, RootKey,
};
use sessionkey_proto::msg::{
    Address, Device, Envelope, Header, IdentityKey, KeyType, PrekeyBundle, Session, Timestamp,
    Trust,
};
use sessionkey_proto::suite::Suite;
use sessionkey_proto::Error;

/// Hands out exactly the given bytes, then fails.
struct FixedRandom(Vec<u8>);

impl SecureRandom for FixedRandom {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        if self.0.len() < dest.len() {
            return Err(Error::Crypto("fixed randomness exhausted"));
        }
        let rest = self.0.split_off(dest.len());
        dest.copy_from_slice(&self.0);
        self.0 = rest;
        Ok(())
    }
}

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/msg_vectors/vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("read vectors")).expect("json")
}

fn h(v: &Value, key: &str) -> Vec<u8> {
    hex::decode(v[key].as_str().unwrap_or_else(|| panic!("missing {key}"))).unwrap()
}

fn h32(v: &Value, key: &str) -> [u8; 32] {
    h(v, key).try_into().unwrap()
}

#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
}

impl Tally {
    fn check(&mut self, what: &str, ok: bool) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
            let _ = writeln!(std::io::stderr(), "msg-vectors: {what} FAILED");
        }
    }
}

fn suite(id: &Value) -> Suite {
    Suite::from_id(id.as_u64().unwrap() as u8).unwrap()
}

fn pure_functions(v: &Value, t: &mut Tally) {
    for (i, c) in v["kdf_rk"].as_array().unwrap().iter().enumerate() {
        let (rk, ck) = RootKey::from_bytes(h32(c, "rk")).ratchet(&h32(c, "dh_output"));
        t.check(
            &format!("kdf_rk {i}"),
            rk.expose()[..] == h(c, "next_rk")[..] && ck.expose()[..] == h(c, "ck")[..],
        );
    }
    for (i, c) in v["kdf_ck"].as_array().unwrap().iter().enumerate() {
        let mut ck = ChainKey::from_bytes(h32(c, "ck"));
        let mut ok = true;
        for step in c["steps"].as_array().unwrap() {
            let (next, mk) = ck.step();
            ok &=
                mk.expose()[..] == h(step, "mk")[..] && next.expose()[..] == h(step, "next_ck")[..];
            ck = next;
        }
        t.check(&format!("kdf_ck {i}"), ok);
    }
    for (i, c) in v["message_keys"].as_array().unwrap().iter().enumerate() {
        let suite = suite(&c["suite"]);
        let (key, nonce) = MessageKey::from_bytes(h32(c, "mk")).aead_key_and_nonce(suite);
        t.check(
            &format!("message_keys {i} ({suite})"),
            key[..] == h(c, "key")[..] && nonce[..] == h(c, "nonce")[..],
        );
    }
    for (i, c) in v["pqxdh_kdf"].as_array().unwrap().iter().enumerate() {
        let dh4 = c["dh4"].as_str().map(|_| h32(c, "dh4"));
        let sk = pqxdh_root_key(
            &h32(c, "dh1"),
            &h32(c, "dh2"),
            &h32(c, "dh3"),
            dh4.as_ref(),
            &h32(c, "kem_secret"),
        );
        t.check(
            &format!("pqxdh_kdf {i}"),
            sk.expose()[..] == h(c, "root_key")[..],
        );
    }
    for (i, c) in v["header"].as_array().unwrap().iter().enumerate() {
        let header = Header {
            suite: suite(&c["suite"]),
            ratchet_key: h32(c, "ratchet_key"),
            previous_chain_len: c["previous_chain_len"].as_u64().unwrap() as u32,
            n: c["n"].as_u64().unwrap() as u32,
        };
        let bytes = h(c, "bytes");
        t.check(
            &format!("header {i}"),
            header.to_bytes()[..] == bytes[..] && Header::from_bytes(&bytes) == Ok(header),
        );
    }
}

/// Expand the recorded ML-KEM seed with the reference implementation: (dk, ek).
fn kem_from_seed(seed: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let d = B32::try_from(&seed[..32]).unwrap();
    let z = B32::try_from(&seed[32..]).unwrap();
    let (dk, ek) = MlKem768::generate_deterministic(&d, &z);
    (dk.as_bytes().to_vec(), ek.as_bytes().to_vec())
}

fn device(side: &Value) -> Device {
    let rng = [h(side, "ed25519_seed"), h(side, "x25519_identity")].concat();
    Device::generate(&mut FixedRandom(rng)).unwrap()
}

fn conversation(c: &Value, t: &mut Tally) {
    let name = c["name"].as_str().unwrap();
    let now = Timestamp::from_unix_secs(1_750_000_000);
    let suite = suite(&c["suite"]);
    let (a, b) = (&c["alice"], &c["bob"]);
    let addr_a = Address::new(h(a, "address")).unwrap();
    let addr_b = Address::new(h(b, "address")).unwrap();

    // Identities: keys and binding signatures.
    let alice = device(a);
    let mut bob = device(b);
    t.check(
        &format!("{name}: identities"),
        alice.identity().to_bytes()[..] == h(a, "identity")[..]
            && bob.identity().to_bytes()[..] == h(b, "identity")[..],
    );

    // Bob's prekeys: ids, signatures, the KEM key from its seed, the bundle.
    let spk = bob
        .new_signed_prekey(now, &mut FixedRandom(h(b, "signed_prekey")))
        .unwrap();
    let opk_secrets: Vec<u8> = b["one_time_prekeys"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| hex::decode(s.as_str().unwrap()).unwrap())
        .collect();
    let opks = bob
        .new_one_time_prekeys(opk_secrets.len() / 32, &mut FixedRandom(opk_secrets))
        .unwrap();
    let (dk, ek) = kem_from_seed(&h(b, "kem_seed"));
    t.check(
        &format!("{name}: ML-KEM-768 key from seed"),
        ek == h(b, "kem_public"),
    );
    let last_resort = b["kem_last_resort"].as_bool().unwrap();
    let kem = bob.import_kem_prekey(last_resort, &dk, &ek, now).unwrap();
    let opk = c["one_time_prekey_used"]
        .as_u64()
        .map(|i| opks[i as usize - 1]);
    let bundle = PrekeyBundle {
        identity: *bob.identity(),
        signed_prekey: spk,
        one_time_prekey: opk,
        kem_prekey: kem.clone(),
    };
    let bundle_bytes = h(c, "bundle");
    t.check(
        &format!("{name}: bundle"),
        bundle.to_bytes() == bundle_bytes
            && PrekeyBundle::from_bytes(&bundle_bytes).as_ref() == Ok(&bundle),
    );

    // The setup's key schedule from the recorded agreements and KEM secret.
    let dh4 = c["dh4"].as_str().map(|_| h32(c, "dh4"));
    let sk = pqxdh_root_key(
        &h32(c, "dh1"),
        &h32(c, "dh2"),
        &h32(c, "dh3"),
        dh4.as_ref(),
        &h32(c, "kem_secret"),
    );
    t.check(
        &format!("{name}: root key"),
        sk.expose()[..] == h(c, "root_key")[..],
    );
    let ct: [u8; 1088] = h(c, "kem_ciphertext").try_into().unwrap();
    let kem_type = if last_resort {
        KeyType::MlKem768LastResortPrekey
    } else {
        KeyType::MlKem768OneTimePrekey
    };
    let ad = associated_data(
        &IdentityKey::from_bytes(&h(a, "identity")).unwrap(),
        &bundle.identity,
        &addr_a,
        &addr_b,
        &h32(c, "alice_base_key_public"),
        kem_type,
        kem.key(),
        &ct,
    );
    t.check(
        &format!("{name}: associated data"),
        ad == h(c, "associated_data") && ad_hash(&ad)[..] == h(c, "ad_hash")[..],
    );

    // The conversation, envelope by envelope.
    let ss = h32(c, "kem_secret");
    let mut rng = FixedRandom([h(c, "alice_base_key"), h(c, "alice_first_ratchet_key")].concat());
    let mut alice_session = Session::initiate_with_fixed_kem_for_testing_only(
        &alice,
        &addr_a,
        &addr_b,
        &bundle,
        Trust::OnFirstUse,
        suite,
        &ct,
        &ss,
        &mut rng,
    )
    .unwrap();
    t.check(&format!("{name}: initiator randomness"), rng.0.is_empty());
    let mut bob_session: Option<Session> = None;
    let mut sent: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (i, e) in c["events"].as_array().unwrap().iter().enumerate() {
        let what = format!("{name}: event {i}");
        match e["op"].as_str().unwrap() {
            "send" => {
                let plaintext = h(e, "plaintext");
                let session = match e["from"].as_str().unwrap() {
                    "alice" => &mut alice_session,
                    _ => bob_session.as_mut().expect("bob sends after the setup"),
                };
                let envelope = session.encrypt(&plaintext).unwrap();
                t.check(&what, envelope == h(e, "envelope"));
                sent.push((plaintext, h(e, "envelope")));
            }
            _ => {
                let (plaintext, bytes) = &sent[e["message"].as_u64().unwrap() as usize];
                let envelope = Envelope::parse(bytes).unwrap();
                let mut rng = FixedRandom(h(e, "rng"));
                let got = match (e["to"].as_str().unwrap(), &envelope, bob_session.as_mut()) {
                    ("alice", _, _) => alice_session.decrypt(&envelope, now, &mut rng),
                    ("bob", Envelope::Initial(initial), None) => Session::respond(
                        &mut bob,
                        &addr_b,
                        &addr_a,
                        initial,
                        Trust::Pinned(*alice.identity()),
                        now,
                        &mut rng,
                    )
                    .map(|(session, text)| {
                        bob_session = Some(session);
                        text
                    }),
                    (_, _, Some(session)) => session.decrypt(&envelope, now, &mut rng),
                    _ => panic!("bob receives a ratchet message before the setup"),
                };
                t.check(&what, got.as_ref() == Ok(plaintext) && rng.0.is_empty());
            }
        }
    }
}

#[test]
fn msg_vectors() {
    let v = vectors();
    let mut t = Tally::default();
    pure_functions(&v, &mut t);
    for c in v["conversations"].as_array().unwrap() {
        conversation(c, &mut t);
    }
    let _ = writeln!(
        std::io::stderr(),
        "msg-vectors: {} passed, {} failed",
        t.passed,
        t.failed
    );
    assert_eq!(t.failed, 0);
    assert!(t.passed >= 40, "only {} vector checks ran", t.passed);
}
