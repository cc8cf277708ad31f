//! Hostile input to the handshake: every failure is a typed error, never a panic, and a
//! changed clear header breaks the handshake on the responder (downgrade protection).

use std::sync::Arc;

use sessionkey_proto::crypto::SystemRandom;
use sessionkey_proto::handshake::{Header, Initiator, Policy, Refusal, Responder, HEADER_LEN};
use sessionkey_proto::keys::{Identity, Psk};
use sessionkey_proto::noise::{HandshakeBuilder, NoiseParams, Pattern, MAX_MESSAGE_LEN};
use sessionkey_proto::suite::Suite;
use sessionkey_proto::{ApiMisuse, Error, PeerMisbehaved};

fn identity() -> Arc<Identity> {
    Arc::new(Identity::generate(&mut SystemRandom).unwrap())
}

fn permissive() -> Policy {
    Policy {
        patterns: Pattern::ALL.to_vec(),
        suites: Suite::ALL.to_vec(),
        require_hybrid: false,
        allow_anonymous: true,
        has_psk: false,
    }
}

const HEADERS: [Header; 4] = [
    Header {
        pattern: Pattern::IK,
        suite: Suite::Aes256Gcm,
        hybrid: true,
        psk: false,
    },
    Header {
        pattern: Pattern::XX,
        suite: Suite::ChaCha20Poly1305,
        hybrid: false,
        psk: false,
    },
    Header {
        pattern: Pattern::NK,
        suite: Suite::Aes128Gcm,
        hybrid: true,
        psk: false,
    },
    Header {
        pattern: Pattern::IK,
        suite: Suite::Aes128Gcm,
        hybrid: false,
        psk: false,
    },
];

fn hello(header: Header, server: &Identity) -> (Initiator, Vec<u8>) {
    let client = header.pattern.initiator_has_static().then(identity);
    let remote = header
        .pattern
        .responder_premessage()
        .then(|| *server.public_key());
    let mut init = Initiator::new(header, client, remote, None).unwrap();
    let mut wire = vec![0; 8192];
    let n = init.write_hello(b"hello payload", &mut wire).unwrap();
    wire.truncate(n);
    (init, wire)
}

/// Run the rest of a handshake from an accepted hello; returns the first error.
fn finish(responder: &Responder, mut init: Initiator, hello: &[u8]) -> Result<(), Error> {
    let mut buf = vec![0; 8192];
    let mut payload = vec![0; 8192];
    let (mut acc, _) = responder.read_hello(hello, &mut payload)?;
    while !acc.state.is_finished() || !init.state.is_finished() {
        if acc.state.is_my_turn() {
            let n = acc.state.write_message(b"", &mut buf)?;
            init.read_reply(&buf[..n], &mut payload)?;
        } else {
            let n = init.state.write_message(b"", &mut buf)?;
            acc.state.read_message(&buf[..n], &mut payload)?;
        }
    }
    assert_eq!(init.state.handshake_hash(), acc.state.handshake_hash());
    Ok(())
}

#[test]
fn untouched_hellos_complete() {
    let server = identity();
    let responder = Responder::new(permissive(), Some(server.clone()), None);
    for header in HEADERS {
        let (init, wire) = hello(header, &server);
        finish(&responder, init, &wire).unwrap_or_else(|e| panic!("{header}: {e}"));
    }
}

#[test]
fn any_changed_header_byte_fails_on_the_responder() {
    let server = identity();
    let responder = Responder::new(permissive(), Some(server.clone()), None);
    let mut cases = 0;
    for header in HEADERS {
        for i in 0..HEADER_LEN {
            for flip in [0x01u8, 0x02, 0x04, 0x80, 0xff] {
                let (init, mut wire) = hello(header, &server);
                wire[i] ^= flip;
                // Either the header is refused, unparsable, or (when it still names a valid
                // offer) the changed prologue breaks the first message's authentication.
                let err = finish(&responder, init, &wire).expect_err("tampered header accepted");
                assert!(
                    matches!(
                        err,
                        Error::Refused(_)
                            | Error::PeerMisbehaved(
                                PeerMisbehaved::BadTag
                                    | PeerMisbehaved::InvalidHeader(_)
                                    | PeerMisbehaved::Truncated { .. }
                                    | PeerMisbehaved::InvalidKemPublicKey
                            )
                    ),
                    "{header}, byte {i} ^ {flip:#x}: unexpected {err:?}"
                );
                cases += 1;
            }
        }
    }
    assert_eq!(cases, HEADERS.len() * HEADER_LEN * 5);
}

#[test]
fn downgrade_to_classical_is_caught_even_when_the_policy_allows_it() {
    // The responder allows classical handshakes, so a header stripped of the hybrid flag is
    // not refused by policy; the prologue binding must still catch it.
    let server = identity();
    let responder = Responder::new(permissive(), Some(server.clone()), None);
    let header = HEADERS[0];
    let (init, mut wire) = hello(header, &server);
    wire[7] &= !1;
    let err = finish(&responder, init, &wire).unwrap_err();
    // The changed prologue makes the hello undecryptable, which the responder reports.
    assert!(
        matches!(
            err,
            Error::Refused(Refusal::UndecryptableHello)
                | Error::PeerMisbehaved(PeerMisbehaved::Truncated { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn policy_refusals_explain_themselves() {
    let server = identity();
    let strict = Responder::new(Policy::default(), Some(server.clone()), None);
    let cases = [
        (HEADERS[1], "hybrid"),    // classical XX
        (HEADERS[2], "anonymous"), // NK
        (
            Header {
                psk: true,
                ..HEADERS[0]
            },
            "pre-shared key",
        ),
    ];
    for (header, words) in cases {
        let client = header.pattern.initiator_has_static().then(identity);
        let remote = header
            .pattern
            .responder_premessage()
            .then(|| *server.public_key());
        let psk = header.psk.then(|| Psk::from_bytes([3; 32]));
        let mut init = Initiator::new(header, client, remote, psk).unwrap();
        let mut wire = vec![0; 8192];
        let n = init.write_hello(b"", &mut wire).unwrap();
        let Err(Error::Refused(refusal)) = strict.read_hello(&wire[..n], &mut [0; 8192]) else {
            panic!("{header} not refused");
        };
        // The refusal crosses the wire and the initiator shows the same reason.
        let Err(Error::Refused(shown)) = init.read_reply(&refusal.encode(), &mut [0; 64]) else {
            panic!("refusal not recognised");
        };
        assert_eq!(shown, refusal);
        assert!(shown.to_string().contains(words), "{shown}");
    }
    let mut wire = HEADERS[0].encode().to_vec();
    wire[6] = 0x77; // unknown suite
    let Err(Error::Refused(r)) = strict.read_hello(&wire, &mut [0; 64]) else {
        panic!()
    };
    assert!(matches!(r, Refusal::SuiteNotAllowed { .. }));
    assert!(r.to_string().contains("aes-256-gcm"), "{r}");
}

fn nn_pair(
    params: &str,
) -> (
    sessionkey_proto::noise::HandshakeState,
    sessionkey_proto::noise::HandshakeState,
) {
    let p: NoiseParams = params.parse().unwrap();
    (
        HandshakeBuilder::new(p).build_initiator().unwrap(),
        HandshakeBuilder::new(p).build_responder().unwrap(),
    )
}

#[test]
fn out_of_order_truncated_oversized_and_poisoned() {
    let (mut i, mut r) = nn_pair("Noise_NN_25519_AESGCM_SHA256");
    let mut buf = vec![0; 70_000];
    let mut out = vec![0; 70_000];
    assert!(matches!(
        r.write_message(b"", &mut buf),
        Err(Error::ApiMisuse(ApiMisuse::OutOfOrder(_)))
    ));
    assert!(matches!(
        i.read_message(&[0; 32], &mut out),
        Err(Error::ApiMisuse(ApiMisuse::OutOfOrder(_)))
    ));
    let n = i.write_message(b"x", &mut buf).unwrap();
    assert!(matches!(
        r.read_message(&buf[..n - 2], &mut out),
        Err(Error::PeerMisbehaved(PeerMisbehaved::Truncated { .. }))
    ));
    // A failed read is final.
    assert!(matches!(
        r.read_message(&buf[..n], &mut out),
        Err(Error::ApiMisuse(ApiMisuse::HandshakeFailed))
    ));

    let (_, mut r) = nn_pair("Noise_NN_25519_AESGCM_SHA256");
    assert!(matches!(
        r.read_message(&vec![0; MAX_MESSAGE_LEN + 1], &mut out),
        Err(Error::PeerMisbehaved(PeerMisbehaved::Oversized { .. }))
    ));
    let (mut i, _) = nn_pair("Noise_NN_25519_AESGCM_SHA256");
    assert!(matches!(
        i.write_message(&vec![0; MAX_MESSAGE_LEN], &mut buf),
        Err(Error::ApiMisuse(ApiMisuse::PayloadTooLarge { .. }))
    ));
    assert!(matches!(
        i.write_message(b"", &mut [0; 10]),
        Err(Error::ApiMisuse(ApiMisuse::BufferTooSmall { .. }))
    ));
}

#[test]
fn every_bit_flip_of_every_message_is_rejected() {
    let mut cases = 0;
    for name in [
        "Noise_IKhfs_25519+MLKEM768_AESGCM_SHA256",
        "Noise_XXhfs_25519+MLKEM768_ChaChaPoly_SHA256",
        "Noise_IKpsk2_25519_AESGCM_SHA256",
    ] {
        let p: NoiseParams = name.parse().unwrap();
        let s_init = identity();
        let s_resp = identity();
        for msg_index in 0..p.pattern.message_count() {
            // Flip a spread of bit positions in message `msg_index`.
            for bit in (0..8 * 1300).step_by(97) {
                let mut b_i = HandshakeBuilder::new(p)
                    .local_static(s_init.clone())
                    .psk_if(p);
                if p.pattern.responder_premessage() {
                    b_i = b_i.remote_static(*s_resp.public_key());
                }
                let mut i = b_i.build_initiator().unwrap();
                let mut r = HandshakeBuilder::new(p)
                    .local_static(s_resp.clone())
                    .psk_if(p)
                    .build_responder()
                    .unwrap();
                let (mut buf, mut out) = (vec![0; 8192], vec![0; 8192]);
                let mut result = Ok(0);
                let mut flipped = false;
                // Flip in message `msg_index`, then carry on: a flip in a message that is not
                // authenticated yet (XX's first) must break a later one.
                for k in 0..p.pattern.message_count() {
                    let (w, rd) = if k % 2 == 0 {
                        (&mut i, &mut r)
                    } else {
                        (&mut r, &mut i)
                    };
                    let n = match w.write_message(b"payload", &mut buf) {
                        Ok(n) => n,
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    };
                    if k == msg_index {
                        if bit / 8 >= n {
                            break;
                        }
                        buf[bit / 8] ^= 1 << (bit % 8);
                        flipped = true;
                    }
                    result = rd.read_message(&buf[..n], &mut out);
                    if result.is_err() {
                        break;
                    }
                }
                if !flipped {
                    continue;
                }
                let e = result.expect_err(&format!(
                    "{name} msg {msg_index} bit {bit}: tampered message accepted"
                ));
                assert!(
                    matches!(
                        e,
                        Error::PeerMisbehaved(
                            PeerMisbehaved::BadTag
                                | PeerMisbehaved::InvalidPublicKey
                                | PeerMisbehaved::InvalidKemPublicKey
                        )
                    ),
                    "{name} msg {msg_index} bit {bit}: {e:?}"
                );
                cases += 1;
            }
        }
    }
    assert!(cases > 200, "only {cases} tampered messages tried");
}

trait PskIf {
    fn psk_if(self, p: NoiseParams) -> Self;
}

impl PskIf for HandshakeBuilder<'_> {
    fn psk_if(self, p: NoiseParams) -> Self {
        if p.psk_count() > 0 {
            self.psk(Psk::from_bytes([5; 32]))
        } else {
            self
        }
    }
}

#[test]
fn low_order_ephemeral_is_a_typed_error() {
    // IK: the responder computes es = DH(s, re) while reading the first message.
    let p: NoiseParams = "Noise_IK_25519_AESGCM_SHA256".parse().unwrap();
    let (c, s) = (identity(), identity());
    let mut i = HandshakeBuilder::new(p)
        .local_static(c)
        .remote_static(*s.public_key())
        .build_initiator()
        .unwrap();
    let mut r = HandshakeBuilder::new(p)
        .local_static(s)
        .build_responder()
        .unwrap();
    let (mut buf, mut out) = (vec![0; 4096], vec![0; 4096]);
    let n = i.write_message(b"", &mut buf).unwrap();
    buf[..32].fill(0); // the identity point: X25519 output would be all zero
    assert!(matches!(
        r.read_message(&buf[..n], &mut out),
        Err(Error::PeerMisbehaved(PeerMisbehaved::InvalidPublicKey))
    ));
}

#[test]
fn invalid_kem_public_key_is_a_typed_error() {
    // XXhfs sends e1 in the clear in the first message: [e (32) | e1 (1184) | payload].
    let (mut i, mut r) = {
        let p: NoiseParams = "Noise_XXhfs_25519+MLKEM768_AESGCM_SHA256".parse().unwrap();
        let (a, b) = (identity(), identity());
        (
            HandshakeBuilder::new(p)
                .local_static(a)
                .build_initiator()
                .unwrap(),
            HandshakeBuilder::new(p)
                .local_static(b)
                .build_responder()
                .unwrap(),
        )
    };
    let (mut buf, mut out) = (vec![0; 4096], vec![0; 4096]);
    let n = i.write_message(b"", &mut buf).unwrap();
    // The first 12-bit coefficient becomes 0xfff >= q = 3329: fails the FIPS 203 modulus check.
    buf[32] = 0xff;
    buf[33] |= 0x0f;
    assert!(matches!(
        r.read_message(&buf[..n], &mut out),
        Err(Error::PeerMisbehaved(PeerMisbehaved::InvalidKemPublicKey))
    ));
}
