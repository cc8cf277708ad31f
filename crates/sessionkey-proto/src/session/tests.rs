//! Attacks that need a session's insides: a thief holding one side's traffic secrets, and
//! counters pushed to their ends.

use std::sync::Arc;
use std::time::Instant;

use super::*;
use crate::crypto::SystemRandom;
use crate::handshake::Policy;
use crate::record::MAX_FRAME;

fn pair(now: Instant) -> (Session, Session) {
    let server_id = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
    let client_id = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
    let header = Header {
        pattern: Pattern::IK,
        suite: Suite::Aes256Gcm,
        hybrid: true,
        psk: false,
    };
    let init = Initiator::new(header, Some(client_id), Some(*server_id.public_key()), None);
    let responder = Arc::new(Responder::new(Policy::default(), Some(server_id), None));
    let config = SessionConfig::default();
    let mut client = Session::client(now, init.unwrap(), config.clone(), Box::new(SystemRandom));
    let mut server = Session::server(now, responder, config, Box::new(SystemRandom));
    for _ in 0..3 {
        pump(&mut client, &mut server, now).unwrap();
        pump(&mut server, &mut client, now).unwrap();
    }
    assert!(client.is_established() && server.is_established());
    (client, server)
}

/// Move every frame `from` wants to send into `to`; returns the data delivered.
fn pump(from: &mut Session, to: &mut Session, now: Instant) -> Result<Vec<u8>, Error> {
    let mut out = vec![0; MAX_FRAME];
    let mut delivered = Vec::new();
    while let Some(n) = from.poll_transmit(now, &mut out)? {
        let mut frame = out[..n].to_vec();
        if let Received::Data { content, .. } = to.read(now, &mut frame)? {
            delivered.extend_from_slice(&frame[content]);
        }
    }
    Ok(delivered)
}

fn established(s: &mut Session) -> &mut Established {
    match &mut s.state {
        State::Established(est) => est,
        _ => panic!("not established"),
    }
}

/// The thief takes over `victim`'s place on the path with everything a memory disclosure
/// of its session gives (traffic secrets, counters, re-handshake salt), but not its static
/// key: it has its own instead.
fn thief_of(victim: &mut Session, now: Instant) -> Session {
    let State::Established(mut stolen) =
        std::mem::replace(&mut victim.state, State::Closed(CloseReason::Clean))
    else {
        panic!("not established")
    };
    stolen.local = Some(Arc::new(Identity::generate(&mut SystemRandom).unwrap()));
    let mut thief = Session::new(
        now,
        victim.role,
        Handshaking::Refusing {
            refusal: Refusal::Other(0),
            sealed: None,
        },
        SessionConfig::default(),
        Box::new(SystemRandom),
    );
    thief.state = State::Established(stolen);
    thief
}

#[test]
fn stolen_traffic_secrets_cannot_complete_a_rehandshake_as_the_initiator() {
    let now = Instant::now();
    let (mut client, mut server) = pair(now);
    // The thief sits on the path in the client's place, with everything but its static key.
    let mut thief = thief_of(&mut client, now);
    // Before the re-handshake it can talk as the client: the keys are the same.
    let mut out = vec![0; MAX_FRAME];
    let (_, n) = thief.seal_data(now, b"as the client", &mut out).unwrap();
    let mut frame = out[..n].to_vec();
    assert!(matches!(
        server.read(now, &mut frame),
        Ok(Received::Data { .. })
    ));
    // It runs a re-handshake with the server.
    thief.rehandshake();
    pump(&mut thief, &mut server, now).unwrap(); // request
    pump(&mut server, &mut thief, now).unwrap(); // reply
    pump(&mut thief, &mut server, now).unwrap(); // finish
                                                 // Its new keys are not the server's: the server's static term needs the client's key.
    let (_, n) = thief.seal_data(now, b"still me", &mut out).unwrap();
    let mut frame = out[..n].to_vec();
    assert!(
        matches!(
            server.read(now, &mut frame),
            Err(Error::PeerMisbehaved(PeerMisbehaved::BadTag))
        ),
        "the server accepted a record under keys the thief computed"
    );
}

#[test]
fn stolen_traffic_secrets_cannot_answer_a_rehandshake_as_the_responder() {
    let now = Instant::now();
    let (mut client, mut server) = pair(now);
    let mut thief = thief_of(&mut server, now);
    client.rehandshake();
    pump(&mut client, &mut thief, now).unwrap(); // request, to the thief
    pump(&mut thief, &mut client, now).unwrap(); // the thief's reply, under stolen keys
    pump(&mut client, &mut thief, now).unwrap(); // finish
    let mut out = vec![0; MAX_FRAME];
    let (_, n) = client.seal_data(now, b"secret", &mut out).unwrap();
    let mut frame = out[..n].to_vec();
    assert!(
        thief.read(now, &mut frame).is_err(),
        "the thief read the client's records after the re-handshake"
    );
}

#[test]
fn honest_rehandshake_mixes_both_static_keys() {
    let now = Instant::now();
    let (mut client, mut server) = pair(now);
    client.rehandshake();
    for _ in 0..3 {
        pump(&mut client, &mut server, now).unwrap();
        pump(&mut server, &mut client, now).unwrap();
    }
    let (c, s) = (client.info().unwrap(), server.info().unwrap());
    assert_eq!((c.rehandshakes, s.rehandshakes), (1, 1));
    assert_eq!(c.send.key_fingerprint, s.receive.key_fingerprint);
    let mut out = vec![0; MAX_FRAME];
    let (_, n) = client.seal_data(now, b"after", &mut out).unwrap();
    let mut frame = out[..n].to_vec();
    let Received::Data { content, .. } = server.read(now, &mut frame).unwrap() else {
        panic!("no data");
    };
    assert_eq!(&frame[content], b"after");
}

#[test]
fn epoch_overflow_closes_the_session_instead_of_wrapping() {
    let now = Instant::now();
    let (mut client, mut server) = pair(now);
    established(&mut server).recv.epoch = u32::MAX;
    client.update_keys();
    let err = pump(&mut client, &mut server, now).unwrap_err();
    assert!(
        matches!(err, Error::LimitReached(Limit::EpochExhausted)),
        "{err:?}"
    );
    assert!(matches!(
        server.close_reason(),
        Some(CloseReason::Error(Error::LimitReached(
            Limit::EpochExhausted
        )))
    ));
    // The same on the sending side.
    let (mut client, _server) = pair(now);
    established(&mut client).send.epoch = u32::MAX;
    client.update_keys();
    let mut out = vec![0; MAX_FRAME];
    assert!(matches!(
        client.poll_transmit(now, &mut out),
        Err(Error::LimitReached(Limit::EpochExhausted))
    ));
    assert!(client.close_reason().is_some());
}
