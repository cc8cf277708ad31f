//! `handshake_read`: handshake messages from an untrusted peer.
//!
//! Input: a mode byte (taken modulo 7), then the mode's own bytes.
//!
//! 0. [`Responder::read_hello`] (permissive policy, fixed identity; flag bits: psk
//!    configured, an authorizer, a too-small payload buffer) on a u16-length-prefixed hello;
//!    if accepted, the responder replies and reads the rest as the third message.
//! 1. A responder [`HandshakeState`] for one of [`PARAMS`] reads a u16-length-prefixed first
//!    message (checked against a second state that first gets a too-small payload buffer and
//!    retries: both must agree), replies, and reads the rest as the third message.
//! 2. An initiator for one of [`PARAMS`] writes a genuine first message, reads a
//!    u16-length-prefixed second one, and writes the third if it is its turn.
//! 3. [`Refusal::decode`] on the rest; a decoded refusal must encode and decode to itself.
//! 4. A native [`Initiator`] (header from a byte) writes its hello, then `read_reply` on the rest.
//! 5. [`NoiseParams`] parses the rest as a protocol name; a parsed name must round-trip.
//! 6. A genuine hello (header from a byte) is tampered with (u16 position, XOR byte pairs),
//!    read by the responder, and its reply read by the initiator: a hello changed in flight
//!    must never complete the handshake.

use std::sync::Arc;

use sessionkey_proto::handshake::{Initiator, Refusal, HEADER_LEN};
use sessionkey_proto::keys::{Psk, PublicKey};
use sessionkey_proto::noise::{HandshakeBuilder, HandshakeState, NoiseParams, MAX_MESSAGE_LEN};
use sessionkey_proto::{ApiMisuse, Error};

use crate::{client_identity, header_from_byte, initiator, responder, server_identity};
use crate::{FixedRng, Input, PSK};

/// The Noise protocols modes 1 and 2 run, indexed by a byte.
pub const PARAMS: [&str; 14] = [
    "Noise_XX_25519_AESGCM_SHA256",
    "Noise_IKhfs_25519+MLKEM768_AESGCM_SHA256",
    "Noise_NN_25519_ChaChaPoly_SHA256",
    "Noise_NK_25519_ChaChaPoly_BLAKE2s",
    "Noise_IK_25519_AESGCM_SHA256",
    "Noise_KK_25519_ChaChaPoly_SHA256",
    "Noise_NNhfs_25519+MLKEM768_ChaChaPoly_SHA256",
    "Noise_XXhfs_25519+MLKEM768_AESGCM_BLAKE2s",
    "Noise_NNpsk0_25519_ChaChaPoly_SHA256",
    "Noise_XXpsk3_25519_AESGCM_SHA256",
    "Noise_IKhfs+psk2_25519+MLKEM768_AESGCM_SHA256",
    "Noise_XX1_25519_AESGCM_SHA256",
    "Noise_IK1_25519_ChaChaPoly_SHA256",
    "Noise_KK1hfs_25519+MLKEM768_AESGCM_SHA256",
];

fn params(i: u8) -> NoiseParams {
    PARAMS[usize::from(i) % PARAMS.len()]
        .parse()
        .expect("PARAMS are valid protocol names")
}

/// A Noise state with the fixed keys this side needs for `p`.
fn state(p: NoiseParams, initiator: bool, seed: u64) -> HandshakeState {
    let pattern = p.pattern;
    let (local, remote) = if initiator {
        (client_identity(), server_identity())
    } else {
        (server_identity(), client_identity())
    };
    let (has_s, knows_rs) = if initiator {
        (
            pattern.initiator_has_static(),
            pattern.responder_premessage(),
        )
    } else {
        (
            pattern.responder_has_static(),
            pattern.initiator_premessage(),
        )
    };
    let mut b = HandshakeBuilder::new(p)
        .prologue(b"sessionkey fuzz")
        .rng(Box::new(FixedRng::new(seed)));
    if has_s {
        b = b.local_static(local);
    }
    if knows_rs {
        b = b.remote_static(*remote.public_key());
    }
    for _ in 0..p.psk_count() {
        b = b.psk(Psk::from_bytes(PSK));
    }
    b.build_initiator_or_responder(initiator)
}

trait BuildEither {
    fn build_initiator_or_responder(self, initiator: bool) -> HandshakeState;
}

impl BuildEither for HandshakeBuilder<'_> {
    fn build_initiator_or_responder(self, initiator: bool) -> HandshakeState {
        if initiator {
            self.build_initiator()
        } else {
            self.build_responder()
        }
        .expect("the fixed keys fit every protocol in PARAMS")
    }
}

fn big_buffer() -> Vec<u8> {
    vec![0u8; MAX_MESSAGE_LEN + 16]
}

/// Run one input.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    match inp.u8() % 7 {
        0 => read_hello(&mut inp),
        1 => responder_state(&mut inp),
        2 => initiator_state(&mut inp),
        3 => refusal(inp.rest()),
        4 => read_reply(&mut inp),
        5 => protocol_name(inp.rest()),
        _ => tampered_hello(&mut inp),
    }
}

fn read_hello(inp: &mut Input<'_>) {
    let flags = inp.u8();
    let hello = inp.prefixed();
    let third = inp.rest();
    let mut r = responder(flags & 1 != 0);
    if flags & 2 != 0 {
        r = r.with_authorizer(Arc::new(|k: &PublicKey| k.as_bytes()[0] & 1 == 0));
    }
    let mut payload = if flags & 4 != 0 {
        vec![0u8; 16]
    } else {
        big_buffer()
    };
    match r.read_hello(hello, &mut payload) {
        Ok((mut acc, n)) => {
            assert!(n <= payload.len());
            std::hint::black_box(format!("{} {:?}", acc.header, acc.state));
            let mut out = big_buffer();
            if acc.state.is_my_turn() {
                let _ = acc.state.write_message(b"", &mut out);
            }
            if !acc.state.is_finished() && !acc.state.is_my_turn() {
                let _ = acc.state.read_message(third, &mut big_buffer());
            }
            if acc.state.is_finished() {
                let _ = acc.state.split();
            }
        }
        Err(Error::Refused(refusal)) => check_refusal(refusal),
        Err(e) => {
            std::hint::black_box(e.to_string());
        }
    }
}

fn responder_state(inp: &mut Input<'_>) {
    let p = params(inp.u8());
    let first = inp.prefixed();
    let third = inp.rest();
    let mut direct = state(p, false, 5);
    let mut payload = big_buffer();
    let result = direct.read_message(first, &mut payload);

    // Reading with a buffer too small for the payload changes nothing: a retry with a
    // large enough one must give the same result as reading with it at once.
    let mut retried = state(p, false, 5);
    let mut payload2 = big_buffer();
    let mut second = retried.read_message(first, &mut payload2[..16]);
    if let Err(Error::ApiMisuse(ApiMisuse::BufferTooSmall { needed, .. })) = second {
        assert!(needed > 16, "BufferTooSmall with a large enough buffer");
        second = retried.read_message(first, &mut payload2);
    }
    match (&result, &second) {
        (Ok(n), Ok(m)) => {
            assert_eq!(n, m);
            assert_eq!(payload[..*n], payload2[..*m]);
            assert_eq!(direct.handshake_hash(), retried.handshake_hash());
        }
        (Err(_), Err(_)) => {}
        _ => panic!("a too-small buffer changed the outcome: {result:?} vs {second:?}"),
    }

    if result.is_err() {
        return;
    }
    let mut out = big_buffer();
    if direct.is_my_turn() && direct.write_message(b"", &mut out).is_err() {
        return;
    }
    if !direct.is_finished() && !direct.is_my_turn() {
        let _ = direct.read_message(third, &mut payload);
    }
    if direct.is_finished() {
        let _ = direct.into_transport();
    }
}

fn initiator_state(inp: &mut Input<'_>) {
    let p = params(inp.u8());
    let payload_len = usize::from(inp.u8());
    let first_payload = inp.bytes_padded(payload_len);
    let second = inp.prefixed();
    let mut init = state(p, true, 6);
    let mut out = big_buffer();
    init.write_message(&first_payload, &mut out)
        .expect("writing a first message");
    let mut payload = big_buffer();
    if init.read_message(second, &mut payload).is_err() {
        return;
    }
    if init.is_my_turn() {
        let _ = init.write_message(b"", &mut out);
    }
    if init.is_finished() {
        let _ = init.split();
    }
}

fn check_refusal(r: Refusal) {
    assert_eq!(Refusal::decode(&r.encode()), Some(r), "refusal round trip");
    std::hint::black_box(r.to_string());
}

fn refusal(bytes: &[u8]) {
    if let Some(r) = Refusal::decode(bytes) {
        check_refusal(r);
    }
}

fn read_reply(inp: &mut Input<'_>) {
    let header = header_from_byte(inp.u8());
    let reply = inp.rest();
    let Ok(mut init) = initiator(header, 7) else {
        return;
    };
    let mut out = big_buffer();
    init.write_hello(b"", &mut out).expect("writing a hello");
    match init.read_reply(reply, &mut big_buffer()) {
        Ok(_) => {
            if init.state.is_my_turn() {
                let _ = init.state.write_message(b"", &mut out);
            }
        }
        Err(Error::Refused(r)) => check_refusal(r),
        Err(_) => {}
    }
}

fn protocol_name(bytes: &[u8]) {
    let name = String::from_utf8_lossy(bytes);
    if let Ok(p) = name.parse::<NoiseParams>() {
        let again: NoiseParams = p
            .to_string()
            .parse()
            .unwrap_or_else(|e| panic!("{name:?} parsed, but its name {p} does not: {e}"));
        assert_eq!(p, again, "protocol name round trip of {name:?}");
    }
}

fn tampered_hello(inp: &mut Input<'_>) {
    let header = header_from_byte(inp.u8());
    let Ok(mut init) = initiator(header, 8) else {
        return;
    };
    let mut out = big_buffer();
    let n = init.write_hello(b"", &mut out).expect("writing a hello");
    let genuine = out[..n].to_vec();
    let mut hello = genuine.clone();
    for _ in 0..8 {
        if inp.is_empty() {
            break;
        }
        let pos = usize::from(inp.u16()) % hello.len();
        hello[pos] ^= inp.u8();
    }
    let r = responder(header.psk);
    let mut payload = big_buffer();
    let Ok((mut acc, _)) = r.read_hello(&hello, &mut payload) else {
        return;
    };
    let Ok(m) = acc.state.write_message(b"", &mut out) else {
        return;
    };
    let reply = out[..m].to_vec();
    let completed = init.read_reply(&reply, &mut payload).is_ok();
    if hello != genuine {
        let changed: Vec<usize> = (0..n).filter(|&i| hello[i] != genuine[i]).collect();
        assert!(
            !completed,
            "{header}: the initiator accepted a reply to a hello changed at {changed:?} \
             (header is bytes 0..{HEADER_LEN})"
        );
    }
}

/// Genuine seeds for this target: hellos, first and second messages, refusals, names.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    // Mode 0: real hellos for a few headers.
    for (i, hb) in [0x02u8, 0x43, 0x14, 0x20, 0x61, 0x83]
        .into_iter()
        .enumerate()
    {
        let header = header_from_byte(hb);
        let Ok(mut init) = Initiator::new(
            header,
            header.pattern.initiator_has_static().then(client_identity),
            header
                .pattern
                .responder_premessage()
                .then(|| *server_identity().public_key()),
            header.psk.then(|| Psk::from_bytes(PSK)),
        ) else {
            continue;
        };
        let mut out = big_buffer();
        let n = init.write_hello(b"", &mut out).expect("hello");
        let mut seed = vec![0, u8::from(header.psk)];
        crate::push_prefixed(&mut seed, &out[..n]);
        seeds.push((format!("hello-{i}-{header}"), seed));
    }
    // Modes 1 and 2: genuine first and second messages.
    for i in 0..PARAMS.len() as u8 {
        let p = params(i);
        let mut init = state(p, true, 9);
        let mut resp = state(p, false, 10);
        let (mut m1, mut m2, mut payload) = (big_buffer(), big_buffer(), big_buffer());
        let n1 = init.write_message(b"", &mut m1).expect("first message");
        resp.read_message(&m1[..n1], &mut payload)
            .expect("first message reads");
        let n2 = resp.write_message(b"", &mut m2).expect("second message");
        let mut seed = vec![1, i];
        crate::push_prefixed(&mut seed, &m1[..n1]);
        seeds.push((format!("responder-{}", PARAMS[usize::from(i)]), seed));
        let mut seed = vec![2, i, 0];
        crate::push_prefixed(&mut seed, &m2[..n2]);
        seeds.push((format!("initiator-{}", PARAMS[usize::from(i)]), seed));
    }
    // Mode 3 and 4: refusals.
    for (i, r) in [
        Refusal::HybridRequired,
        Refusal::PatternNotAllowed { allowed: 0b1100 },
        Refusal::Other(200),
    ]
    .into_iter()
    .enumerate()
    {
        let mut seed = vec![3];
        seed.extend_from_slice(&r.encode());
        seeds.push((format!("refusal-{i}"), seed));
        let mut seed = vec![4, 0x43];
        seed.extend_from_slice(&r.encode());
        seeds.push((format!("reply-refusal-{i}"), seed));
    }
    // Mode 5: protocol names.
    for (i, name) in PARAMS.iter().take(4).enumerate() {
        let mut seed = vec![5];
        seed.extend_from_slice(name.as_bytes());
        seeds.push((format!("name-{i}"), seed));
    }
    // Mode 6: one flip in the header, one in the body.
    seeds.push(("tamper-0".into(), vec![6, 0x43, 0, 5, 1]));
    seeds.push(("tamper-1".into(), vec![6, 0x02, 0, 20, 0x80]));
    seeds
}
