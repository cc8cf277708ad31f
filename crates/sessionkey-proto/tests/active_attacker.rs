//! A man in the middle who records, replays, injects and withholds (issue 12): what a
//! session must refuse, and the deadlines that end a session he stalls.

mod sim;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sessionkey_proto::crypto::SystemRandom;
use sessionkey_proto::handshake::{Initiator, Policy, Refusal, Responder};
use sessionkey_proto::keys::{Identity, PublicKey};
use sessionkey_proto::noise::Pattern;
use sessionkey_proto::record::MAX_FRAME;
use sessionkey_proto::session::{CloseReason, Event, Received, Session, SessionConfig};
use sessionkey_proto::suite::{Suite, UsageLimits};
use sessionkey_proto::{ApiMisuse, Error, Limit, PeerMisbehaved, Timeout};
use sim::{header, Pair};

fn id() -> Arc<Identity> {
    Arc::new(Identity::generate(&mut SystemRandom).unwrap())
}

/// Every frame `s` wants to send now.
fn transmit(s: &mut Session, now: Instant) -> Vec<u8> {
    let mut out = vec![0u8; MAX_FRAME];
    let mut wire = Vec::new();
    while let Some(n) = s.poll_transmit(now, &mut out).unwrap() {
        wire.extend_from_slice(&out[..n]);
    }
    wire
}

/// Feed `wire` to `s` frame by frame; the first error, if any.
fn feed(s: &mut Session, now: Instant, mut wire: Vec<u8>) -> Result<(), Error> {
    while !wire.is_empty() {
        match s.read(now, &mut wire)? {
            Received::Incomplete { .. } => return Ok(()),
            Received::Data { frame_len, .. } | Received::Control { frame_len } => {
                wire.drain(..frame_len);
            }
        }
    }
    Ok(())
}

fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

#[test]
fn a_replayed_hello_never_establishes_a_responder() {
    for hybrid in [true, false] {
        let now = Instant::now();
        let (server_id, client_id) = (id(), id());
        let hdr = header(Pattern::IK, Suite::Aes256Gcm, hybrid);
        let initiator = Initiator::new(
            hdr,
            Some(client_id.clone()),
            Some(*server_id.public_key()),
            None,
        );
        let policy = Policy {
            require_hybrid: false,
            ..Policy::default()
        };
        let responder = Arc::new(Responder::new(policy, Some(server_id), None));
        let config = SessionConfig::default();
        let mut client = Session::client(
            now,
            initiator.unwrap(),
            config.clone(),
            Box::new(SystemRandom),
        );
        let hello = transmit(&mut client, now);

        // The attacker replays the recorded hello to fresh responders, as often as he likes.
        for _ in 0..5 {
            let mut server = Session::server(
                now,
                responder.clone(),
                config.clone(),
                Box::new(SystemRandom),
            );
            feed(&mut server, now, hello.clone()).unwrap();
            let reply = transmit(&mut server, now);
            assert!(!reply.is_empty(), "the responder answers the hello");
            assert!(!server.is_established());
            assert!(
                server.info().is_none(),
                "no session is attributed to the client's key"
            );
            assert!(
                events(&mut server).is_empty(),
                "no Established event for a replay"
            );
            // He cannot make the confirmation: any record he makes up is refused.
            let mut forged = vec![0, 40];
            forged.extend_from_slice(&[0x5a; 40]);
            let err = feed(&mut server, now, forged).unwrap_err();
            assert!(
                matches!(err, Error::PeerMisbehaved(PeerMisbehaved::BadTag)),
                "{err:?}"
            );
            assert!(!server.is_established());
        }
        // Holding the connection open gets him only the handshake timeout.
        let mut server = Session::server(
            now,
            responder.clone(),
            config.clone(),
            Box::new(SystemRandom),
        );
        feed(&mut server, now, hello.clone()).unwrap();
        let reply = transmit(&mut server, now);
        let later = now + config.handshake_timeout;
        server.handle_timeout(later);
        assert!(matches!(
            server.close_reason(),
            Some(CloseReason::Error(Error::Timeout(Timeout::Handshake(_))))
        ));
        let closed = events(&mut server);
        assert!(
            matches!(closed[..], [Event::Closed { info: None, .. }]),
            "{closed:?}"
        );

        // The genuine client completes and confirms; only then is the responder established.
        let mut server = Session::server(now, responder, config, Box::new(SystemRandom));
        feed(&mut server, now, hello).unwrap();
        let reply2 = transmit(&mut server, now);
        assert_ne!(reply, reply2, "each reply has a fresh ephemeral");
        feed(&mut client, now, reply2).unwrap();
        assert!(client.is_established());
        let confirm = transmit(&mut client, now);
        feed(&mut server, now, confirm).unwrap();
        assert!(server.is_established());
        let info = server.info().unwrap();
        assert_eq!(info.peer, Some(*client_id.public_key()));
        assert!(matches!(events(&mut server)[..], [Event::Established(_)]));
    }
}

#[test]
fn the_confirmation_must_come_first() {
    // An initiator that skips its confirmation and sends data is refused, not believed.
    let mut p = Pair::new(
        header(Pattern::IK, Suite::ChaCha20Poly1305, true),
        SessionConfig::default(),
    );
    let hello = Pair::transmit(&mut p.client, p.now);
    p.server.inbox.extend_from_slice(&hello);
    p.server.receive(p.now);
    let reply = Pair::transmit(&mut p.server, p.now);
    p.client.inbox.extend_from_slice(&reply);
    p.client.receive(p.now);
    let confirm = Pair::transmit(&mut p.client, p.now);
    let data = Pair::send(&mut p.client, p.now, b"data");
    p.server.inbox.extend_from_slice(&data); // the confirmation withheld
    p.server.receive(p.now);
    assert!(!p.server.session.is_established());
    assert!(matches!(
        p.server.error,
        Some(Error::PeerMisbehaved(
            PeerMisbehaved::BadTag | PeerMisbehaved::UnexpectedRecord(_)
        ))
    ));
    assert!(!confirm.is_empty());
}

#[test]
fn xx_initiator_checks_the_server_before_revealing_itself() {
    let now = Instant::now();
    let (server_id, client_id) = (id(), id());
    let hdr = header(Pattern::XX, Suite::Aes256Gcm, true);
    let responder = Arc::new(Responder::new(
        Policy::default(),
        Some(server_id.clone()),
        None,
    ));
    let seen: Arc<Mutex<Option<PublicKey>>> = Arc::default();
    for accept in [false, true] {
        let seen2 = seen.clone();
        let check = Box::new(move |key: &PublicKey| {
            *seen2.lock().unwrap() = Some(*key);
            if accept {
                Ok(())
            } else {
                Err("the server's key changed".into())
            }
        });
        let initiator = Initiator::new(hdr, Some(client_id.clone()), None, None)
            .unwrap()
            .with_responder_check(check);
        let config = SessionConfig::default();
        let mut client = Session::client(now, initiator, config.clone(), Box::new(SystemRandom));
        let mut server = Session::server(now, responder.clone(), config, Box::new(SystemRandom));
        let hello = transmit(&mut client, now);
        feed(&mut server, now, hello).unwrap();
        let reply = transmit(&mut server, now);
        let read = feed(&mut client, now, reply);
        assert_eq!(*seen.lock().unwrap(), Some(*server_id.public_key()));
        let msg3 = transmit(&mut client, now);
        if accept {
            read.unwrap();
            feed(&mut server, now, msg3).unwrap();
            assert!(client.is_established() && server.is_established());
            assert_eq!(server.info().unwrap().peer, Some(*client_id.public_key()));
        } else {
            let err = read.unwrap_err();
            assert!(matches!(err, Error::PeerKeyRejected(_)), "{err:?}");
            assert!(err.to_string().contains("changed"), "{err}");
            assert!(
                msg3.is_empty(),
                "the third message (the client's key) was written"
            );
            assert!(!server.is_established());
        }
    }
}

#[test]
fn a_clear_refusal_is_not_believed_once_the_handshake_is_done() {
    for pattern in [Pattern::IK, Pattern::XX] {
        let mut p = Pair::established(
            header(pattern, Suite::Aes256Gcm, true),
            SessionConfig::default(),
        );
        let mut frame = vec![0, 9];
        frame.extend_from_slice(&Refusal::KeyNotAuthorized.encode());
        p.client.inbox.extend_from_slice(&frame);
        p.client.receive(p.now);
        let err = p
            .client
            .error
            .clone()
            .expect("the injected frame was accepted");
        assert!(
            !matches!(err, Error::Refused(_)),
            "{pattern:?}: an injected refusal was believed: {err}"
        );
    }
}

#[test]
fn an_xx_refusal_arrives_sealed_and_is_believed() {
    let now = Instant::now();
    let (server_id, client_id) = (id(), id());
    let responder = Arc::new(
        Responder::new(Policy::default(), Some(server_id), None)
            .with_authorizer(Arc::new(|_| false)),
    );
    let hdr = header(Pattern::XX, Suite::Aes256Gcm, true);
    let initiator = Initiator::new(hdr, Some(client_id), None, None).unwrap();
    let config = SessionConfig::default();
    let mut client = Session::client(now, initiator, config.clone(), Box::new(SystemRandom));
    let mut server = Session::server(now, responder, config, Box::new(SystemRandom));
    for _ in 0..2 {
        let w = transmit(&mut client, now);
        feed(&mut server, now, w).unwrap();
        let w = transmit(&mut server, now);
        let _ = feed(&mut client, now, w);
    }
    assert!(matches!(
        client.close_reason(),
        Some(CloseReason::Error(Error::Refused(
            Refusal::KeyNotAuthorized
        )))
    ));
    assert!(!server.is_established());
}

#[test]
fn an_undecryptable_hello_gets_its_own_refusal() {
    let now = Instant::now();
    let (server_id, wrong, client_id) = (id(), id(), id());
    let responder = Arc::new(Responder::new(Policy::default(), Some(server_id), None));
    let hdr = header(Pattern::IK, Suite::Aes256Gcm, true);
    // The client pinned a key that is not the server's.
    let initiator = Initiator::new(hdr, Some(client_id), Some(*wrong.public_key()), None).unwrap();
    let config = SessionConfig::default();
    let mut client = Session::client(now, initiator, config.clone(), Box::new(SystemRandom));
    let mut server = Session::server(now, responder, config, Box::new(SystemRandom));
    let hello = transmit(&mut client, now);
    feed(&mut server, now, hello).unwrap();
    let refusal = transmit(&mut server, now);
    let err = feed(&mut client, now, refusal).unwrap_err();
    assert!(
        matches!(err, Error::Refused(Refusal::UndecryptableHello)),
        "{err:?}"
    );
    assert!(err.to_string().contains("pinned"), "{err}");
}

#[test]
fn a_small_buffer_is_the_callers_problem_not_the_sessions_end() {
    let mut p = Pair::established(
        header(Pattern::IK, Suite::Aes256Gcm, true),
        SessionConfig::default(),
    );
    p.client.session.rehandshake();
    let mut small = vec![0u8; 100];
    let err = p
        .client
        .session
        .poll_transmit(p.now, &mut small)
        .unwrap_err();
    assert!(
        matches!(err, Error::ApiMisuse(ApiMisuse::BufferTooSmall { .. })),
        "{err:?}"
    );
    assert!(p.client.session.is_established());
    p.pump();
    let wire = Pair::send(&mut p.client, p.now, b"still fine");
    p.server.inbox.extend_from_slice(&wire);
    p.server.receive(p.now);
    assert_eq!(p.server.delivered, b"still fine");
    assert_eq!(p.client.session.info().unwrap().rehandshakes, 1);
}

#[test]
fn a_rehandshake_that_never_completes_ends_the_session_at_its_deadline() {
    let mut p = Pair::established(
        header(Pattern::IK, Suite::Aes256Gcm, true),
        SessionConfig::default(),
    );
    let config = SessionConfig::default();
    let every = config.rehandshake_interval.unwrap();
    p.advance(every);
    // The client asks; the attacker drops everything from now on.
    let request = Pair::transmit(&mut p.client, p.now);
    assert!(!request.is_empty());
    p.advance(config.rehandshake_deadline - Duration::from_secs(1));
    assert!(
        p.client.session.is_established(),
        "ended before the deadline"
    );
    p.advance(Duration::from_secs(1));
    assert!(matches!(
        p.client.session.close_reason(),
        Some(CloseReason::Error(Error::Timeout(Timeout::Rehandshake(_))))
    ));
}

#[test]
fn the_responder_schedules_rehandshakes_too() {
    let client = SessionConfig {
        rehandshake_interval: None,
        rehandshake_bytes: None,
        ..SessionConfig::default()
    };
    let server = SessionConfig {
        rehandshake_interval: Some(Duration::from_secs(10)),
        ..SessionConfig::default()
    };
    let mut p = Pair::with_configs(header(Pattern::XX, Suite::Aes256Gcm, true), client, server);
    p.pump();
    for round in 1..=3 {
        p.advance(Duration::from_secs(12));
        p.pump();
        assert_eq!(p.client.session.info().unwrap().rehandshakes, round);
        assert_eq!(p.server.session.info().unwrap().rehandshakes, round);
    }
}

#[test]
fn rehandshakes_also_follow_the_bytes_sent() {
    let config = SessionConfig {
        rehandshake_interval: None,
        rehandshake_bytes: Some(100_000),
        ..SessionConfig::default()
    };
    let mut p = Pair::established(header(Pattern::IK, Suite::Aes256Gcm, true), config);
    for _ in 0..5 {
        let wire = Pair::send(&mut p.server, p.now, &[7u8; 60_000]);
        p.client.inbox.extend_from_slice(&wire);
        p.client.receive(p.now);
        p.pump();
    }
    // 300,000 bytes at 100,000 per re-handshake, each started once the mark is passed.
    assert_eq!(p.server.session.info().unwrap().rehandshakes, 2);
    assert_eq!(p.client.delivered.len(), 300_000);
}

#[test]
fn a_half_closed_session_keeps_rotating_the_open_direction() {
    let mut p = Pair::established(
        header(Pattern::IK, Suite::Aes256Gcm, true),
        SessionConfig::default(),
    );
    p.client.session.close();
    p.pump();
    assert!(p.server.session.is_peer_closed());
    let every = SessionConfig::default().rehandshake_interval.unwrap();
    let mut epochs = Vec::new();
    for _ in 0..3 {
        p.advance(every + every / 8);
        p.pump();
        let wire = Pair::send(&mut p.server, p.now, b"more");
        p.client.inbox.extend_from_slice(&wire);
        p.client.receive(p.now);
        epochs.push(p.server.session.info().unwrap().send.epoch);
    }
    assert!(
        p.client.error.is_none() && p.server.error.is_none(),
        "{:?} {:?}",
        p.client.error,
        p.server.error
    );
    assert!(
        epochs.windows(2).all(|w| w[1] > w[0]),
        "no rotation: {epochs:?}"
    );
    assert_eq!(p.client.delivered, b"moremoremore");
}

#[test]
fn every_close_is_acknowledged_whoever_closes_first() {
    for client_first in [true, false] {
        let mut p = Pair::established(
            header(Pattern::IK, Suite::Aes256Gcm, true),
            SessionConfig::default(),
        );
        let c = Pair::send(&mut p.client, p.now, &[1u8; 5000]);
        let s = Pair::send(&mut p.server, p.now, &[2u8; 300]);
        p.server.inbox.extend_from_slice(&c);
        p.client.inbox.extend_from_slice(&s);
        p.server.receive(p.now);
        p.client.receive(p.now);
        let (first, second) = if client_first {
            (&mut p.client, &mut p.server)
        } else {
            (&mut p.server, &mut p.client)
        };
        first.session.close();
        let w = Pair::transmit(first, p.now);
        second.inbox.extend_from_slice(&w);
        second.receive(p.now);
        assert_eq!(
            first.session.acknowledged(),
            None,
            "acknowledged before it was read"
        );
        p.pump();
        let second = if client_first {
            &mut p.server
        } else {
            &mut p.client
        };
        second.session.close();
        p.pump();
        assert_eq!(p.client.session.acknowledged(), Some(5000));
        assert_eq!(p.server.session.acknowledged(), Some(300));
        for end in [&p.client, &p.server] {
            assert!(matches!(
                end.session.close_reason(),
                Some(CloseReason::Clean)
            ));
            assert!(!end.session.awaits_acknowledgement());
        }
    }
}

#[test]
fn a_close_that_is_never_read_is_never_acknowledged() {
    let mut p = Pair::established(
        header(Pattern::IK, Suite::Aes256Gcm, true),
        SessionConfig::default(),
    );
    let wire = Pair::send(&mut p.client, p.now, &[1u8; 1000]);
    p.client.session.close();
    let close = Pair::transmit(&mut p.client, p.now);
    // The peer reads the data but dies before reading the close.
    p.server.inbox.extend_from_slice(&wire);
    p.server.receive(p.now);
    assert_eq!(p.server.delivered.len(), 1000);
    assert!(!close.is_empty());
    assert_eq!(p.client.session.acknowledged(), None);
    assert!(
        p.client.session.handle_eof(p.now).is_err(),
        "the peer's close never came"
    );
}

#[test]
fn receivers_enforce_the_limits_senders_should_keep() {
    // The sender's policy would rotate too late for the receiver's limits.
    let lax = SessionConfig {
        key_update_records: u64::MAX,
        ..SessionConfig::default()
    };
    let strict = SessionConfig {
        usage_limits: Some(UsageLimits {
            records: 20,
            ..Suite::Aes256Gcm.limits()
        }),
        ..SessionConfig::default()
    };
    let mut p = Pair::with_configs(header(Pattern::IK, Suite::Aes256Gcm, true), lax, strict);
    p.pump();
    for i in 0..30u8 {
        let wire = Pair::send(&mut p.client, p.now, &[i]);
        p.server.inbox.extend_from_slice(&wire);
        p.server.receive(p.now);
    }
    assert!(
        matches!(
            p.server.error,
            Some(Error::LimitReached(Limit::ConfidentialityRecords {
                limit: 20,
                ..
            }))
        ),
        "{:?}",
        p.server.error
    );
    assert_eq!(
        p.server.delivered.len(),
        19,
        "the confirmation is the first record"
    );
}

#[test]
fn the_lifetime_closes_and_then_ends_a_peer_that_does_not_answer() {
    let config = SessionConfig {
        max_lifetime: Some(Duration::from_secs(100)),
        ..SessionConfig::default()
    };
    let mut p = Pair::established(header(Pattern::IK, Suite::Aes256Gcm, true), config);
    p.advance(Duration::from_secs(100));
    let close = Pair::transmit(&mut p.client, p.now);
    assert!(!close.is_empty(), "no close at the lifetime");
    assert!(p.client.session.is_send_closed());
    // The peer never sees it.
    p.advance(sessionkey_proto::session::LIFETIME_GRACE);
    assert!(matches!(
        p.client.session.close_reason(),
        Some(CloseReason::Error(Error::Timeout(Timeout::LifetimeClose(
            _
        ))))
    ));
}

#[test]
fn closes_that_cross_are_both_acknowledged() {
    let mut p = Pair::established(
        header(Pattern::XX, Suite::Aes256Gcm, true),
        SessionConfig::default(),
    );
    let c = Pair::send(&mut p.client, p.now, &[1u8; 700]);
    let s = Pair::send(&mut p.server, p.now, &[2u8; 900]);
    p.client.session.close();
    p.server.session.close();
    let c_close = Pair::transmit(&mut p.client, p.now);
    let s_close = Pair::transmit(&mut p.server, p.now);
    p.server.inbox.extend_from_slice(&c);
    p.server.inbox.extend_from_slice(&c_close);
    p.client.inbox.extend_from_slice(&s);
    p.client.inbox.extend_from_slice(&s_close);
    p.server.receive(p.now);
    p.client.receive(p.now);
    // Each owes the other an acknowledgement after its own close; deliver both in one go.
    let c_ack = Pair::transmit(&mut p.client, p.now);
    let s_ack = Pair::transmit(&mut p.server, p.now);
    assert!(!c_ack.is_empty() && !s_ack.is_empty());
    p.server.inbox.extend_from_slice(&c_ack);
    p.client.inbox.extend_from_slice(&s_ack);
    p.server.receive(p.now);
    p.client.receive(p.now);
    assert!(p.client.error.is_none() && p.server.error.is_none());
    assert_eq!(p.client.session.acknowledged(), Some(700));
    assert_eq!(p.server.session.acknowledged(), Some(900));
    // A second acknowledgement would be a replay: the session is over.
    p.server.inbox.extend_from_slice(&c_ack);
    p.server.receive(p.now);
    assert!(p.server.error.is_some());
}
