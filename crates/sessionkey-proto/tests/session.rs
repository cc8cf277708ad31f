//! Sessions end to end in memory, on a virtual clock: rotation, limits, close, lifecycle.

mod sim;

use std::collections::HashSet;
use std::time::Duration;

use sessionkey_proto::noise::Pattern;
use sessionkey_proto::session::{CloseReason, Direction, Event, SessionConfig};
use sessionkey_proto::suite::{Suite, UsageLimits};
use sessionkey_proto::{ApiMisuse, Error, Limit, PeerMisbehaved, Timeout};
use sim::{header, Pair};

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn established_events_agree_on_both_sides() {
    for suite in Suite::ALL {
        for pattern in [Pattern::IK, Pattern::XX] {
            let p = Pair::established(header(pattern, suite, true), SessionConfig::default());
            let (c, s) = (
                p.client.session.info().unwrap(),
                p.server.session.info().unwrap(),
            );
            assert_eq!(c.fingerprint, s.fingerprint);
            assert_eq!(c.id, s.id);
            assert_eq!(c.send.key_fingerprint, s.receive.key_fingerprint);
            assert_eq!(c.receive.key_fingerprint, s.send.key_fingerprint);
            assert_ne!(c.send.key_fingerprint, c.receive.key_fingerprint);
            assert!(matches!(p.client.events[..], [Event::Established(_)]));
        }
    }
}

#[test]
fn many_key_updates_and_rehandshakes_both_ways_keep_data_intact() {
    let mut p = Pair::established(
        header(Pattern::IK, Suite::Aes256Gcm, true),
        SessionConfig::default(),
    );
    let mut fingerprints = HashSet::new();
    let (mut sent_c, mut sent_s) = (Vec::new(), Vec::new());
    for round in 0..24u8 {
        // Rotate on one side or the other, by ratchet or by fresh exchange.
        match round % 4 {
            0 => p.client.session.update_keys(),
            1 => p.server.session.update_keys(),
            2 => p.client.session.rehandshake(),
            _ => p.server.session.rehandshake(),
        }
        let chunk_c = data(70_000 + usize::from(round) * 13, round);
        let chunk_s = data(5_000 + usize::from(round), round ^ 0x55);
        let wire_c = Pair::send(&mut p.client, p.now, &chunk_c);
        let wire_s = Pair::send(&mut p.server, p.now, &chunk_s);
        sent_c.extend_from_slice(&chunk_c);
        sent_s.extend_from_slice(&chunk_s);
        p.server.inbox.extend_from_slice(&wire_c);
        p.client.inbox.extend_from_slice(&wire_s);
        p.server.receive(p.now);
        p.client.receive(p.now);
        p.pump();
        for end in [&p.client, &p.server] {
            let info = end.session.info().unwrap();
            fingerprints.insert(info.send.key_fingerprint);
            fingerprints.insert(info.receive.key_fingerprint);
        }
        assert!(p.client.error.is_none() && p.server.error.is_none());
    }
    assert_eq!(p.server.delivered, sent_c);
    assert_eq!(p.client.delivered, sent_s);
    let c = p.client.session.info().unwrap();
    let s = p.server.session.info().unwrap();
    assert_eq!(c.rehandshakes, 12);
    assert_eq!(s.rehandshakes, 12);
    // 6 ratchets and 12 re-handshakes per direction.
    assert_eq!((c.send.epoch, c.receive.epoch), (18, 18));
    assert_eq!(
        (c.send.key_fingerprint, c.receive.key_fingerprint),
        (s.receive.key_fingerprint, s.send.key_fingerprint)
    );
    // Every epoch of every direction had its own key: 2 directions x 19 epochs (the event
    // stream of one side sees every key of both directions).
    for e in &p.client.events {
        match e {
            Event::Established(info) => {
                fingerprints.insert(info.send.key_fingerprint);
                fingerprints.insert(info.receive.key_fingerprint);
            }
            Event::KeyUpdated { info, direction } => {
                fingerprints.insert(match direction {
                    Direction::Send => info.send.key_fingerprint,
                    Direction::Receive => info.receive.key_fingerprint,
                });
            }
            _ => {}
        }
    }
    assert_eq!(
        fingerprints.len(),
        2 * 19,
        "an epoch key repeated or was missed"
    );
    let rehandshaken = p
        .client
        .events
        .iter()
        .filter(|e| matches!(e, Event::Rehandshaken(_)))
        .count();
    assert_eq!(rehandshaken, 12);
}

#[test]
fn simultaneous_rehandshake_requests_resolve() {
    let mut p = Pair::established(
        header(Pattern::XX, Suite::ChaCha20Poly1305, true),
        SessionConfig::default(),
    );
    p.client.session.rehandshake();
    p.server.session.rehandshake();
    p.pump();
    let (c, s) = (
        p.client.session.info().unwrap(),
        p.server.session.info().unwrap(),
    );
    assert_eq!((c.rehandshakes, s.rehandshakes), (1, 1));
    assert_eq!(c.send.key_fingerprint, s.receive.key_fingerprint);
    let wire = Pair::send(&mut p.client, p.now, b"after");
    p.server.inbox.extend_from_slice(&wire);
    p.server.receive(p.now);
    assert_eq!(p.server.delivered, b"after");
}

#[test]
fn automatic_key_update_by_records_and_by_bytes() {
    let config = SessionConfig {
        key_update_records: 10,
        key_update_bytes: 1 << 40,
        ..SessionConfig::default()
    };
    let mut p = Pair::established(header(Pattern::IK, Suite::Aes128Gcm, false), config);
    let msg = data(100, 1);
    for _ in 0..35 {
        let wire = Pair::send(&mut p.client, p.now, &msg);
        p.server.inbox.extend_from_slice(&wire);
    }
    p.server.receive(p.now);
    assert_eq!(p.server.delivered.len(), 3500);
    // 35 data records with updates after every 10 records under one key (the update record
    // itself counts): epochs advance three times.
    assert_eq!(p.client.session.info().unwrap().send.epoch, 3);
    assert_eq!(p.server.session.info().unwrap().receive.epoch, 3);

    let config = SessionConfig {
        key_update_bytes: 10_000,
        ..SessionConfig::default()
    };
    let mut p = Pair::established(header(Pattern::IK, Suite::Aes128Gcm, false), config);
    for _ in 0..5 {
        let wire = Pair::send(&mut p.client, p.now, &data(9_000, 2));
        p.server.inbox.extend_from_slice(&wire);
    }
    p.server.receive(p.now);
    assert_eq!(p.server.delivered.len(), 45_000);
    // 9,000 bytes a record, an update once a key has carried 10,000: after records 2 and 4.
    assert_eq!(p.client.session.info().unwrap().send.epoch, 2);
    assert_eq!(p.server.session.info().unwrap().receive.epoch, 2);
}

#[test]
fn rotation_happens_before_the_confidentiality_limit() {
    // With per-key limits lowered to 64 records, the session rotates at half of it and never
    // reaches the limit, however much it sends.
    let limits = UsageLimits {
        records: 64,
        blocks: 1 << 40,
        failed_decryptions: 1 << 20,
    };
    let config = SessionConfig {
        usage_limits: Some(limits),
        ..SessionConfig::default()
    };
    let mut p = Pair::established(header(Pattern::IK, Suite::Aes256Gcm, true), config);
    for i in 0..300u32 {
        let wire = Pair::send(&mut p.client, p.now, &i.to_be_bytes());
        p.server.inbox.extend_from_slice(&wire);
    }
    p.server.receive(p.now);
    assert_eq!(p.server.delivered.len(), 1200);
    let info = p.client.session.info().unwrap();
    assert!(info.send.records_this_key <= 32, "{info:?}");
    assert!(info.send.epoch >= 9);
}

#[test]
fn a_direction_that_would_pass_a_limit_closes_with_the_limit_named() {
    // One record bigger than the whole block budget of a key: no rotation can help, so
    // sealing refuses, the session closes, and the error names the limit.
    let limits = UsageLimits {
        records: 1 << 20,
        blocks: 1_000,
        failed_decryptions: 1 << 20,
    };
    let config = SessionConfig {
        usage_limits: Some(limits),
        ..SessionConfig::default()
    };
    let mut p = Pair::established(header(Pattern::IK, Suite::Aes256Gcm, false), config);
    let mut out = vec![0; 70_000];
    let err = p
        .client
        .session
        .seal_data(p.now, &data(20_000, 0), &mut out)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::LimitReached(Limit::ConfidentialityBlocks { limit: 1_000, .. })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("confidentiality limit of 1000 blocks"),
        "{err}"
    );
    assert!(matches!(
        p.client.session.close_reason(),
        Some(CloseReason::Error(Error::LimitReached(_)))
    ));
    assert!(p.client.session.seal_data(p.now, b"x", &mut out).is_err());
}

#[test]
fn lifetime_ends_the_session_and_refuses_to_send() {
    let config = SessionConfig {
        max_lifetime: Some(Duration::from_secs(60)),
        ..SessionConfig::default()
    };
    let mut p = Pair::established(header(Pattern::IK, Suite::Aes256Gcm, true), config);
    p.advance(Duration::from_secs(59));
    let wire = Pair::send(&mut p.client, p.now, b"still fine");
    p.server.inbox.extend_from_slice(&wire);
    p.advance(Duration::from_secs(2));
    let mut out = vec![0; 70_000];
    let err = p
        .client
        .session
        .seal_data(p.now, b"too late", &mut out)
        .unwrap_err();
    assert!(
        matches!(err, Error::LimitReached(Limit::Lifetime(_))),
        "{err:?}"
    );
    assert!(err.to_string().contains("lifetime"), "{err}");
    p.pump();
    // The expiring side sends its close; both sides close; the reason names the lifetime.
    let reason = p.client.session.close_reason().cloned();
    assert!(
        matches!(
            reason,
            Some(CloseReason::Error(Error::LimitReached(Limit::Lifetime(_))))
        ),
        "{reason:?}"
    );
    assert_eq!(p.server.delivered, b"still fine");
}

#[test]
fn idle_and_handshake_timeouts() {
    let config = SessionConfig {
        idle_timeout: Some(Duration::from_secs(30)),
        ..SessionConfig::default()
    };
    let mut p = Pair::established(header(Pattern::IK, Suite::Aes256Gcm, true), config);
    assert!(p.client.session.poll_timeout().is_some());
    p.advance(Duration::from_secs(29));
    assert!(p.client.session.is_established());
    p.advance(Duration::from_secs(2));
    assert!(matches!(
        p.client.session.close_reason(),
        Some(CloseReason::Error(Error::Timeout(Timeout::Idle(_))))
    ));

    let mut p = Pair::new(
        header(Pattern::IK, Suite::Aes256Gcm, true),
        SessionConfig::default(),
    );
    p.advance(Duration::from_secs(9));
    assert!(p.server.session.close_reason().is_none());
    p.advance(Duration::from_secs(2));
    assert!(matches!(
        p.server.session.close_reason(),
        Some(CloseReason::Error(Error::Timeout(Timeout::Handshake(_))))
    ));
}

#[test]
fn rehandshake_timer_drives_fresh_exchanges() {
    let mut p = Pair::established(
        header(Pattern::IK, Suite::Aes256Gcm, true),
        SessionConfig::default(),
    );
    for _ in 0..3 {
        p.advance(Duration::from_secs(121));
        p.pump();
    }
    assert_eq!(p.client.session.info().unwrap().rehandshakes, 3);
    assert_eq!(p.server.session.info().unwrap().rehandshakes, 3);
}

#[test]
fn clean_close_and_truncation_are_distinct() {
    let mut p = Pair::established(
        header(Pattern::IK, Suite::Aes256Gcm, true),
        SessionConfig::default(),
    );
    let wire = Pair::send(&mut p.client, p.now, b"payload");
    p.server.inbox.extend_from_slice(&wire);
    p.client.session.close();
    p.server.session.close();
    p.pump();
    assert!(matches!(
        p.client.session.close_reason(),
        Some(CloseReason::Clean)
    ));
    assert!(matches!(
        p.server.session.close_reason(),
        Some(CloseReason::Clean)
    ));
    assert!(p.server.session.handle_eof(p.now).is_ok());
    assert_eq!(p.server.delivered, b"payload");

    // Half close: the client closes its direction; the server can still send.
    let mut p = Pair::established(
        header(Pattern::XX, Suite::Aes256Gcm, true),
        SessionConfig::default(),
    );
    p.client.session.close();
    p.pump();
    let wire = Pair::send(&mut p.server, p.now, b"reply after half close");
    p.client.inbox.extend_from_slice(&wire);
    p.client.receive(p.now);
    assert_eq!(p.client.delivered, b"reply after half close");
    assert!(p.server.session.handle_eof(p.now).is_ok());

    // The stream ends without a close record: truncation, a different error.
    let mut p = Pair::established(
        header(Pattern::IK, Suite::Aes256Gcm, true),
        SessionConfig::default(),
    );
    let wire = Pair::send(&mut p.client, p.now, b"cut short");
    p.server.inbox.extend_from_slice(&wire);
    p.server.receive(p.now);
    let err = p.server.session.handle_eof(p.now).unwrap_err();
    assert!(
        matches!(err, Error::PeerMisbehaved(PeerMisbehaved::StreamTruncated)),
        "{err:?}"
    );
    assert!(err.to_string().contains("truncated"));
    assert!(matches!(
        p.server.session.close_reason(),
        Some(CloseReason::Error(_))
    ));
    let mut out = vec![0; 70_000];
    assert!(p.server.session.seal_data(p.now, b"x", &mut out).is_err());
}

#[test]
fn sending_after_close_or_before_handshake_is_refused() {
    let mut p = Pair::new(
        header(Pattern::IK, Suite::Aes256Gcm, true),
        SessionConfig::default(),
    );
    let mut out = vec![0; 70_000];
    assert!(matches!(
        p.client.session.seal_data(p.now, b"early", &mut out),
        Err(Error::ApiMisuse(ApiMisuse::NotEstablished))
    ));
    p.pump();
    p.client.session.close();
    assert!(matches!(
        p.client.session.seal_data(p.now, b"late", &mut out),
        Err(Error::ApiMisuse(ApiMisuse::SendClosed))
    ));
}

#[test]
fn refusal_reaches_the_client() {
    let mut p = Pair::new(
        header(Pattern::NK, Suite::Aes256Gcm, true),
        SessionConfig::default(),
    );
    p.pump();
    let Some(Error::Refused(r)) = &p.client.error else {
        panic!("{:?}", p.client.error)
    };
    assert!(r.to_string().contains("anonymous"));
    assert!(matches!(
        p.server.session.close_reason(),
        Some(CloseReason::Error(Error::Refused(_)))
    ));
}
