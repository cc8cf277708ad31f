//! The key schedules against vectors/own/schedule.json, which vectors/own/gen.py computes
//! from docs/PROTOCOL.md and docs/VPN.md alone (a second implementation, in Python): a
//! wrong label, a swapped argument or a missing term on both ends of this code agrees with
//! itself, but not with the documents. Every derived value of the file is checked:
//! headers and protocol names, the Noise handshakes with the header (or the VPN's
//! prologue), Split(), the handshake hash, the session fingerprint, the traffic secrets and
//! re-handshake salt, record keys, IVs and nonces, the first sealed records, the key-update
//! ratchet and its fingerprints, re-handshakes with their static terms (through the code
//! that runs them), public-key fingerprints, and the VPN's traffic secrets, mac1, cookie
//! reply and mac2.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::crypto::dh;
use crate::crypto::hash::sha256;
use crate::crypto::SecureRandom;
use crate::handshake::Header;
use crate::keys::{Fingerprint, Identity, Psk, PublicKey, SecretKey};
use crate::noise::{HandshakeBuilder, HandshakeState, NoiseParams, Pattern};
use crate::session::{rekey, schedule, Role};
use crate::suite::{record_key_and_iv, record_nonce, SealingKey, Suite};
use crate::test_support::{report, vectors_dir};
use crate::vpn;
use crate::Error;

/// Randomness that hands out fixed bytes: the vectors' ephemeral keys.
struct Fixed(Vec<u8>);

impl SecureRandom for Fixed {
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
    let path = vectors_dir().join("own/schedule.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("read vectors/own")).expect("json")
}

fn hex_of(v: &Value, key: &str) -> Vec<u8> {
    hex::decode(v[key].as_str().unwrap_or_else(|| panic!("{key} missing"))).expect("hex")
}

fn arr32(v: &Value, key: &str) -> [u8; 32] {
    hex_of(v, key).try_into().expect("32 bytes")
}

/// Counts checks; a mismatch names the value and fails at the end with all of them.
#[derive(Default)]
struct Checks {
    passed: usize,
    failed: Vec<String>,
}

impl Checks {
    fn eq(&mut self, what: impl Into<String>, got: &[u8], want: &[u8]) {
        if got == want {
            self.passed += 1;
        } else {
            self.failed.push(format!(
                "{}: got {}, want {}",
                what.into(),
                hex::encode(got),
                hex::encode(want)
            ));
        }
    }

    fn finish(self, name: &str) {
        report(name, self.passed, self.failed.len());
        assert!(
            self.failed.is_empty(),
            "{} of {} values differ from vectors/own:\n{}",
            self.failed.len(),
            self.passed + self.failed.len(),
            self.failed.join("\n")
        );
        assert!(self.passed > 0, "no vectors checked");
    }
}

fn suite(id: u64) -> Suite {
    Suite::from_id(id as u8).expect("suite id")
}

fn pattern(name: &str) -> Pattern {
    Pattern::ALL
        .into_iter()
        .find(|p| p.name() == name)
        .expect("pattern")
}

fn identity(v: &Value, key: &str) -> Arc<Identity> {
    Arc::new(Identity::from_secret_bytes(&arr32(v, key)).expect("identity"))
}

/// Both sides of a handshake with fixed ephemerals; the messages written and the Splits.
#[allow(clippy::too_many_arguments)]
fn run_handshake(
    params: NoiseParams,
    prologue: &[u8],
    v: &Value,
    s_i: Arc<Identity>,
    s_r: Arc<Identity>,
    psk: Option<Psk>,
    payloads: &[Vec<u8>],
) -> (Vec<Vec<u8>>, crate::noise::Split, crate::noise::Split) {
    let prologue: &'static [u8] = Box::leak(prologue.to_vec().into_boxed_slice());
    let build = |initiator: bool, psk: Option<Psk>| -> HandshakeState {
        let (me, e) = if initiator {
            (s_i.clone(), "e_i")
        } else {
            (s_r.clone(), "e_r")
        };
        let mut b = HandshakeBuilder::new(params)
            .prologue(prologue)
            .local_static(me)
            .rng(Box::new(Fixed(hex_of(v, e))));
        if initiator && params.pattern == Pattern::IK {
            b = b.remote_static(*s_r.public_key());
        }
        if let Some(psk) = psk {
            b = b.psk(psk);
        }
        if initiator {
            b.build_initiator().expect("initiator")
        } else {
            b.build_responder().expect("responder")
        }
    };
    let copy = |p: &Option<Psk>| p.as_ref().map(|p| Psk::from_bytes(*p.expose()));
    let mut init = build(true, copy(&psk));
    let mut resp = build(false, psk);
    let mut messages = Vec::new();
    let mut n = 0;
    while !(init.is_finished() && resp.is_finished()) {
        let (w, r) = if n % 2 == 0 {
            (&mut init, &mut resp)
        } else {
            (&mut resp, &mut init)
        };
        let payload = payloads.get(n).cloned().unwrap_or_default();
        let mut buf = vec![0u8; 4096];
        let len = w.write_message(&payload, &mut buf).expect("write");
        buf.truncate(len);
        let mut out = vec![0u8; 4096];
        let got = r.read_message(&buf, &mut out).expect("read");
        assert_eq!(&out[..got], &payload[..]);
        messages.push(buf);
        n += 1;
    }
    (
        messages,
        init.split().expect("split"),
        resp.split().expect("split"),
    )
}

/// A sealed stream record (PROTOCOL.md section 9) under `key` at its next counter.
fn seal_record(key: &mut SealingKey, content: &[u8], record_type: u8) -> Vec<u8> {
    let len = (content.len() + 1 + 16) as u16;
    let aad = len.to_be_bytes();
    let mut body = [content, &[record_type]].concat();
    let tag = key.seal_in_place(&aad, &mut body).expect("seal");
    [&aad[..], &body, &tag].concat()
}

fn check_headers(all: &Value, c: &mut Checks) {
    for v in all["headers"].as_array().unwrap() {
        let h = Header {
            pattern: pattern(v["pattern"].as_str().unwrap()),
            suite: suite(v["suite"].as_u64().unwrap()),
            hybrid: v["hybrid"].as_bool().unwrap(),
            psk: v["psk"].as_bool().unwrap(),
        };
        let what = format!("header {}", v["protocol"]);
        c.eq(format!("{what} bytes"), &h.encode(), &hex_of(v, "header"));
        c.eq(
            format!("{what} protocol name"),
            h.noise_params().to_string().as_bytes(),
            v["protocol"].as_str().unwrap().as_bytes(),
        );
    }
}

fn check_stream_session(v: &Value, c: &mut Checks) {
    let tag = format!(
        "{} suite {} psk {}",
        v["pattern"],
        v["suite"],
        !v["psk"].is_null()
    );
    let header = Header {
        pattern: pattern(v["pattern"].as_str().unwrap()),
        suite: suite(v["suite"].as_u64().unwrap()),
        hybrid: false,
        psk: !v["psk"].is_null(),
    };
    c.eq(
        format!("{tag}: header"),
        &header.encode(),
        &hex_of(v, "header"),
    );
    let psk = (!v["psk"].is_null()).then(|| Psk::from_bytes(arr32(v, "psk")));
    // The handshake as the native Initiator/Responder build it: the header's protocol,
    // the header as the prologue.
    let (messages, split_i, split_r) = run_handshake(
        header.noise_params(),
        &header.encode(),
        v,
        identity(v, "s_i"),
        identity(v, "s_r"),
        psk,
        &[],
    );
    for (n, (got, want)) in messages
        .iter()
        .zip(v["messages"].as_array().unwrap())
        .enumerate()
    {
        c.eq(
            format!("{tag}: message {}", n + 1),
            got,
            &hex::decode(want.as_str().unwrap()).unwrap(),
        );
    }
    for (side, split) in [("initiator", &split_i), ("responder", &split_r)] {
        c.eq(
            format!("{tag}: {side} h"),
            &split.handshake_hash,
            &hex_of(v, "h"),
        );
        c.eq(
            format!("{tag}: {side} k_i2r"),
            split.initiator_to_responder.expose(),
            &hex_of(v, "k_i2r"),
        );
        c.eq(
            format!("{tag}: {side} k_r2i"),
            split.responder_to_initiator.expose(),
            &hex_of(v, "k_r2i"),
        );
    }
    c.eq(
        format!("{tag}: session fingerprint"),
        Fingerprint::of_session(&split_i.handshake_hash).as_bytes(),
        &hex_of(v, "session_fingerprint"),
    );
    let secrets = schedule::initial(
        &split_i.initiator_to_responder,
        &split_i.responder_to_initiator,
        &split_i.handshake_hash,
    );
    c.eq(
        format!("{tag}: traffic_i2r"),
        secrets.initiator_to_responder.expose(),
        &hex_of(v, "traffic_i2r"),
    );
    c.eq(
        format!("{tag}: traffic_r2i"),
        secrets.responder_to_initiator.expose(),
        &hex_of(v, "traffic_r2i"),
    );
    c.eq(
        format!("{tag}: rehandshake_salt"),
        secrets.rehandshake.expose(),
        &hex_of(v, "rehandshake_salt"),
    );
    // Epochs of the i2r direction: the ratchet, record keys, IVs, fingerprints.
    let mut secret = SecretKey::from_bytes(*secrets.initiator_to_responder.expose());
    for (n, e) in v["i2r_epochs"].as_array().unwrap().iter().enumerate() {
        c.eq(
            format!("{tag}: epoch {n} secret"),
            secret.expose(),
            &hex_of(e, "secret"),
        );
        let (key, iv) = record_key_and_iv(header.suite, &secret);
        c.eq(
            format!("{tag}: epoch {n} key"),
            &key[..header.suite.key_len()],
            &hex_of(e, "key"),
        );
        c.eq(format!("{tag}: epoch {n} iv"), &iv[..], &hex_of(e, "iv"));
        c.eq(
            format!("{tag}: epoch {n} fingerprint"),
            Fingerprint::of_secret(secret.expose()).as_bytes(),
            &hex_of(e, "fingerprint"),
        );
        secret = schedule::ratchet(&secret);
    }
    // The first records, sealed by the record layer.
    let mut send_i = SealingKey::new(header.suite, &secrets.initiator_to_responder).unwrap();
    let first = seal_record(&mut send_i, b"", 8);
    if !v["initiator_key_confirmation"].is_null() {
        c.eq(
            format!("{tag}: key confirmation record"),
            &first,
            &hex_of(v, "initiator_key_confirmation"),
        );
    }
    c.eq(
        format!("{tag}: initiator data record 1"),
        &seal_record(&mut send_i, b"hello", 1),
        &hex_of(v, "initiator_data_record_1"),
    );
    let mut send_r = SealingKey::new(header.suite, &secrets.responder_to_initiator).unwrap();
    c.eq(
        format!("{tag}: responder data record 0"),
        &seal_record(&mut send_r, b"world", 1),
        &hex_of(v, "responder_data_record_0"),
    );
    // Re-handshakes, chained from the session's salt.
    let s_i = identity(v, "s_i");
    let s_r = identity(v, "s_r");
    let mut salt = SecretKey::from_bytes(*secrets.rehandshake.expose());
    for (n, r) in v["rehandshakes"].as_array().unwrap().iter().enumerate() {
        let what = format!("{tag}: re-handshake {n}");
        c.eq(format!("{what} salt"), salt.expose(), &hex_of(r, "salt"));
        let next = check_rehandshake(r, &what, &salt, Some(&s_i), Some(&s_r), c);
        salt = next;
    }
}

/// One re-handshake through the code that runs it (classical), or through the schedule
/// with the vector's opaque ML-KEM values (hybrid). Returns the next salt.
fn check_rehandshake(
    r: &Value,
    what: &str,
    salt: &SecretKey,
    s_i: Option<&Arc<Identity>>,
    s_r: Option<&Arc<Identity>>,
    c: &mut Checks,
) -> SecretKey {
    let requester_is_initiator = r["requester_is_initiator"].as_bool().unwrap();
    let (req_role, peer_role) = if requester_is_initiator {
        (Role::Initiator, Role::Responder)
    } else {
        (Role::Responder, Role::Initiator)
    };
    let (req_id, peer_id) = if requester_is_initiator {
        (s_i, s_r)
    } else {
        (s_r, s_i)
    };
    let hybrid = !hex_of(r, "ss").is_empty();
    let want = |c: &mut Checks, label: &str, s: &schedule::Secrets| {
        c.eq(
            format!("{what} traffic_i2r ({label})"),
            s.initiator_to_responder.expose(),
            &hex_of(r, "traffic_i2r"),
        );
        c.eq(
            format!("{what} traffic_r2i ({label})"),
            s.responder_to_initiator.expose(),
            &hex_of(r, "traffic_r2i"),
        );
        c.eq(
            format!("{what} next salt ({label})"),
            s.rehandshake.expose(),
            &hex_of(r, "next_salt"),
        );
    };
    let request = hex_of(r, "request");
    let reply = hex_of(r, "reply");
    if !hybrid {
        // The requester's request, the peer's answer and the requester's completion, as the
        // session runs them, with fixed ephemerals.
        let Ok(rekey::Rekey::Requested {
            e, request: got, ..
        }) = rekey::request(&mut Fixed(hex_of(r, "e_q")), false)
        else {
            panic!("{what}: no request");
        };
        c.eq(format!("{what} request"), &got, &request);
        let peer_statics = rekey::Statics::new(
            peer_role,
            peer_id.map(|i| &**i),
            req_id.map(|i| *i.public_key()),
        );
        let (got_reply, answered) = rekey::answer(
            &mut Fixed(hex_of(r, "e_p")),
            false,
            salt,
            &peer_statics,
            &request,
        )
        .expect("answer");
        c.eq(format!("{what} reply"), &got_reply, &reply);
        want(c, "peer", &answered);
        let req_statics = rekey::Statics::new(
            req_role,
            req_id.map(|i| &**i),
            peer_id.map(|i| *i.public_key()),
        );
        let completed =
            rekey::complete(&e, None, salt, &req_statics, &request, &reply).expect("complete");
        want(c, "requester", &completed);
        return SecretKey::from_bytes(*completed.rehandshake.expose());
    }
    // Hybrid: the ML-KEM values are opaque inputs; the terms as the session computes them.
    let e_q = dh::private_from_bytes(&arr32(r, "e_q")).unwrap();
    let e_p = dh::private_from_bytes(&arr32(r, "e_p")).unwrap();
    let ee = dh::agree(&e_q, &reply[..32]).unwrap();
    c.eq(format!("{what} ee"), &ee[..], &hex_of(r, "ee"));
    let e_q_pub = dh::public_of(&e_q).unwrap();
    let peer_statics = rekey::Statics::new(
        peer_role,
        peer_id.map(|i| &**i),
        req_id.map(|i| *i.public_key()),
    );
    let terms = peer_statics.terms(&e_p, &e_q_pub).unwrap();
    c.eq(
        format!("{what} si"),
        terms[0].as_deref().map_or(&[][..], |t| &t[..]),
        &hex_of(r, "si"),
    );
    c.eq(
        format!("{what} sr"),
        terms[1].as_deref().map_or(&[][..], |t| &t[..]),
        &hex_of(r, "sr"),
    );
    let transcript = sha256(&[&request, &reply]);
    c.eq(
        format!("{what} transcript"),
        &transcript,
        &hex_of(r, "transcript"),
    );
    let ss = arr32(r, "ss");
    let s = schedule::rehandshake(salt, &ee, &terms, Some(&ss), &transcript);
    want(c, "schedule", &s);
    SecretKey::from_bytes(*s.rehandshake.expose())
}

fn check_vpn(v: &Value, c: &mut Checks) {
    let s = suite(v["suite"].as_u64().unwrap());
    let tag = format!("vpn suite {}", v["suite"]);
    let params = vpn::handshake::noise_params(s, false);
    c.eq(
        format!("{tag}: protocol"),
        params.to_string().as_bytes(),
        v["protocol"].as_str().unwrap().as_bytes(),
    );
    let initiation = hex_of(v, "initiation_without_macs");
    let prologue = vpn::handshake::prologue(&initiation);
    c.eq(
        format!("{tag}: prologue"),
        &prologue,
        &hex_of(v, "prologue"),
    );
    let psk = Psk::from_bytes(if v["psk"].is_null() {
        [0; 32]
    } else {
        arr32(v, "psk")
    });
    let payloads: Vec<Vec<u8>> = v["payloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| hex::decode(p.as_str().unwrap()).unwrap())
        .collect();
    let (messages, split, _) = run_handshake(
        params,
        &prologue,
        v,
        identity(v, "s_i"),
        identity(v, "s_r"),
        Some(psk),
        &payloads,
    );
    for (n, want) in v["messages"].as_array().unwrap().iter().enumerate() {
        c.eq(
            format!("{tag}: message {}", n + 1),
            &messages[n],
            &hex::decode(want.as_str().unwrap()).unwrap(),
        );
    }
    c.eq(format!("{tag}: h"), &split.handshake_hash, &hex_of(v, "h"));
    let t = vpn::handshake::traffic_secrets(&split);
    c.eq(
        format!("{tag}: traffic_i2r"),
        t.i2r.expose(),
        &hex_of(v, "traffic_i2r"),
    );
    c.eq(
        format!("{tag}: traffic_r2i"),
        t.r2i.expose(),
        &hex_of(v, "traffic_r2i"),
    );
    // mac1 and, after the cookie reply, mac2, as the initiator's jar writes them.
    let responder = PublicKey::from_bytes(*identity(v, "s_r").public_key().as_bytes());
    let mut jar = vpn::cookie::CookieJar::new(&responder).unwrap();
    let now = Instant::now();
    let mut msg = [&initiation[..], &[0u8; 32]].concat();
    jar.stamp(now, &mut msg);
    let len = msg.len();
    c.eq(
        format!("{tag}: mac1"),
        &msg[len - 32..len - 16],
        &hex_of(v, "mac1"),
    );
    let reply = hex_of(v, "cookie_reply");
    match vpn::message::parse(&reply) {
        Ok(vpn::message::Message::CookieReply(r)) => {
            let opened = jar.handle_reply(now, &r);
            c.eq(
                format!("{tag}: cookie reply opens"),
                &[u8::from(opened.is_ok())],
                &[1],
            );
        }
        _ => c.eq(format!("{tag}: cookie reply parses"), &[0], &[1]),
    }
    jar.stamp(now, &mut msg);
    c.eq(format!("{tag}: mac2"), &msg[len - 16..], &hex_of(v, "mac2"));
    c.eq(
        format!("{tag}: mac1 verifies"),
        &[u8::from(
            vpn::cookie::Mac1Verifier::new(&responder).verify(&msg),
        )],
        &[1],
    );
}

#[test]
fn own_vectors_from_the_documents() {
    let all = vectors();
    let mut c = Checks::default();
    check_headers(&all, &mut c);
    for v in all["stream_sessions"].as_array().unwrap() {
        check_stream_session(v, &mut c);
    }
    let nn = &all["anonymous_rehandshake"];
    let salt = SecretKey::from_bytes(arr32(nn, "salt"));
    check_rehandshake(nn, "NN re-handshake", &salt, None, None, &mut c);
    for v in all["public_key_fingerprints"].as_array().unwrap() {
        c.eq(
            "public key fingerprint",
            Fingerprint::of_public_key(&arr32(v, "public_key")).as_bytes(),
            &hex_of(v, "fingerprint"),
        );
    }
    let n = &all["nonces"];
    let iv: [u8; 12] = hex_of(n, "iv").try_into().unwrap();
    for pair in n["nonces"].as_array().unwrap() {
        let counter = pair[0].as_u64().unwrap();
        c.eq(
            format!("nonce({counter})"),
            &record_nonce(&iv, counter),
            &hex::decode(pair[1].as_str().unwrap()).unwrap(),
        );
    }
    for v in all["vpn"].as_array().unwrap() {
        check_vpn(v, &mut c);
    }
    c.finish("own-vectors");
}
