//! DES and 3DES sessions behind their gate (issue 12, item 7): negotiated only when both
//! sides name them, rotated by the key-update ratchet before the 2^20-block cap.
#![cfg(feature = "legacy-ciphers")]

use std::sync::Arc;
use std::time::Instant;

use sessionkey_proto::crypto::legacy::{InsecureLegacyCipher, LegacySuite};
use sessionkey_proto::crypto::SystemRandom;
use sessionkey_proto::handshake::{Header, Initiator, Policy, Refusal, Responder};
use sessionkey_proto::keys::Identity;
use sessionkey_proto::noise::Pattern;
use sessionkey_proto::record::MAX_FRAME;
use sessionkey_proto::session::{Event, Received, Session, SessionConfig};
use sessionkey_proto::suite::Suite;
use sessionkey_proto::Error;

fn legacy(suite: LegacySuite) -> Suite {
    Suite::insecure_legacy(
        suite,
        InsecureLegacyCipher::i_accept_that_des_and_3des_are_broken(),
    )
}

fn sessions(offer: Suite, server_suites: Vec<Suite>) -> (Session, Session) {
    let now = Instant::now();
    let server_id = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
    let client_id = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
    let header = Header {
        pattern: Pattern::IK,
        suite: offer,
        hybrid: true,
        psk: false,
    };
    let init =
        Initiator::new(header, Some(client_id), Some(*server_id.public_key()), None).unwrap();
    let policy = Policy {
        suites: server_suites,
        ..Policy::default()
    };
    let responder = Arc::new(Responder::new(policy, Some(server_id), None));
    let config = SessionConfig::default();
    (
        Session::client(now, init, config.clone(), Box::new(SystemRandom)),
        Session::server(now, responder, config, Box::new(SystemRandom)),
    )
}

/// Move frames from `from` to `to`; data delivered, and the first error.
fn pump(from: &mut Session, to: &mut Session, data: &[u8]) -> (Vec<u8>, Option<Error>) {
    let now = Instant::now();
    let mut out = vec![0u8; MAX_FRAME];
    let mut wire = Vec::new();
    while let Some(n) = from.poll_transmit(now, &mut out).unwrap() {
        wire.extend_from_slice(&out[..n]);
    }
    let mut rest = data;
    while !rest.is_empty() {
        let (used, n) = from.seal_data(now, rest, &mut out).unwrap();
        wire.extend_from_slice(&out[..n]);
        rest = &rest[used..];
    }
    let mut delivered = Vec::new();
    while !wire.is_empty() {
        match to.read(now, &mut wire) {
            Ok(Received::Data { frame_len, content }) => {
                delivered.extend_from_slice(&wire[content]);
                wire.drain(..frame_len);
            }
            Ok(Received::Control { frame_len }) => {
                wire.drain(..frame_len);
            }
            Ok(Received::Incomplete { .. }) => break,
            Err(e) => return (delivered, Some(e)),
        }
    }
    (delivered, None)
}

#[test]
fn a_3des_session_moves_data_and_rotates_before_the_block_cap() {
    for suite in LegacySuite::ALL {
        let s = legacy(suite);
        let (mut client, mut server) = sessions(s, vec![Suite::Aes256Gcm, s]);
        pump(&mut client, &mut server, &[]);
        pump(&mut server, &mut client, &[]);
        pump(&mut client, &mut server, &[]);
        assert!(client.is_established() && server.is_established());
        assert_eq!(server.info().unwrap().suite, s);
        // 24 MiB: three times the 8 MiB a key may carry (2^20 blocks of 8 bytes), which
        // would fail with a confidentiality-limit error without the rotations.
        let data: Vec<u8> = (0..24 << 20).map(|i: u32| (i % 251) as u8).collect();
        let mut delivered = Vec::new();
        for chunk in data.chunks(1 << 20) {
            let (d, err) = pump(&mut client, &mut server, chunk);
            assert!(err.is_none(), "{suite}: {err:?}");
            delivered.extend_from_slice(&d);
        }
        assert!(delivered == data, "{suite}: data differs");
        let info = client.info().unwrap();
        // A key update at half the cap (4 MiB): at least five for 24 MiB.
        assert!(
            info.send.epoch >= 5,
            "{suite}: only {} key updates",
            info.send.epoch
        );
        assert_eq!(server.info().unwrap().receive.epoch, info.send.epoch);
        let mut updates = 0;
        while let Some(e) = client.poll_event() {
            if matches!(e, Event::KeyUpdated { .. }) {
                updates += 1;
            }
        }
        assert!(updates >= 5);
    }
}

#[test]
fn a_responder_without_the_opt_in_refuses_a_legacy_offer() {
    let (mut client, mut server) = sessions(
        legacy(LegacySuite::TripleDesEdeCbcHmacSha256),
        Suite::ALL.to_vec(),
    );
    pump(&mut client, &mut server, &[]);
    let (_, err) = pump(&mut server, &mut client, &[]);
    let err = err.expect("the legacy offer was accepted");
    assert!(
        matches!(err, Error::Refused(Refusal::SuiteNotAllowed { .. })),
        "{err:?}"
    );
    // The refusal lists the suites the responder allows, never a legacy one.
    assert!(!err.to_string().contains("des"), "{err}");
}

#[test]
fn legacy_suites_are_never_in_the_defaults() {
    assert!(Suite::ALL.iter().all(|s| s.legacy().is_none()));
    assert!(Policy::default()
        .suites
        .iter()
        .all(|s| s.legacy().is_none()));
    assert!(Suite::from_id(129).is_none() && Suite::from_id(130).is_none());
}
