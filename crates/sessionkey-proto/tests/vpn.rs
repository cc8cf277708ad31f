//! The VPN's sans-IO core on a virtual clock: handshakes over "UDP" (byte vectors), key
//! confirmation, replay, roaming, rekeying with a grace period, retransmission backoff,
//! cookies under load, rate limiting, and cryptokey routing.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sessionkey_proto::crypto::{SecureRandom, SystemRandom};
use sessionkey_proto::keys::{Identity, Psk};
use sessionkey_proto::record::datagram::HEADER_LEN;
use sessionkey_proto::suite::Suite;
use sessionkey_proto::vpn::handshake::read_initiation;
use sessionkey_proto::vpn::message::{self, Message, COOKIE_REPLY_LEN, MAX_HANDSHAKE_LEN};
use sessionkey_proto::vpn::{
    packet_destination, packet_source, AllowedIps, Cidr, HandshakeGate, Local, Peer, PeerConfig,
    Screen, SealError, Timing,
};
use sessionkey_proto::{Error, PeerMisbehaved};

/// Deterministic randomness for jitter and cookies (xorshift64; not for keys).
struct TestRng(u64);

impl SecureRandom for TestRng {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        for b in dest {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
        Ok(())
    }
}

const A_ADDR: &str = "192.0.2.1:51820";
const B_ADDR: &str = "192.0.2.2:51820";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// One side of a pair: its identity, its gate, and its view of the other side.
struct Side {
    identity: Arc<Identity>,
    gate: HandshakeGate,
    peer: Peer,
    next_index: u32,
    rng: TestRng,
    /// Handshake messages said to wait behind each one screened (a long queue means load).
    queued: usize,
}

struct Pair {
    a: Side,
    b: Side,
    now: Instant,
    wall: u64,
}

fn local(identity: &Arc<Identity>, hybrid: bool, timing: Timing) -> Local {
    Local {
        identity: identity.clone(),
        suite: Suite::Aes256Gcm,
        hybrid,
        timing,
    }
}

fn pair_with(hybrid: bool, timing: Timing, psk: Option<[u8; 32]>) -> Pair {
    let now = Instant::now();
    let ia = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
    let ib = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
    let side = |me: &Arc<Identity>, other: &Arc<Identity>, endpoint: &str, base: u32| Side {
        gate: HandshakeGate::new(me.public_key(), 128).unwrap(),
        peer: Peer::new(
            local(me, hybrid, timing),
            PeerConfig {
                public_key: *other.public_key(),
                psk: psk.map(Psk::from_bytes),
                endpoint: Some(addr(endpoint)),
                persistent_keepalive: None,
            },
            now,
        )
        .unwrap(),
        identity: me.clone(),
        next_index: base,
        rng: TestRng(u64::from(base) + 1),
        queued: 0,
    };
    Pair {
        a: side(&ia, &ib, B_ADDR, 100),
        b: side(&ib, &ia, A_ADDR, 200),
        now,
        wall: 1_700_000_000_000_000_000,
    }
}

fn pair() -> Pair {
    pair_with(true, Timing::default(), None)
}

impl Side {
    fn index(&mut self) -> u32 {
        self.next_index += 1;
        self.next_index
    }

    fn initiation(&mut self, now: Instant, wall: u64) -> Vec<u8> {
        let mut out = vec![0; MAX_HANDSHAKE_LEN];
        let index = self.index();
        let sent = self
            .peer
            .create_initiation(now, wall, index, &mut self.rng, &mut out)
            .unwrap()
            .expect("endpoint known");
        out.truncate(sent.len);
        out
    }

    /// Screen and answer an initiation; `Ok(Some(reply))` is a response, `Ok(None)` a
    /// message dropped or answered with a cookie (in `cookie`).
    fn respond(
        &mut self,
        now: Instant,
        bytes: &[u8],
        from: SocketAddr,
        cookie: &mut Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, Error> {
        let Ok(Message::Initiation(init)) = message::parse(bytes) else {
            panic!("not an initiation");
        };
        let mut reply = [0u8; COOKIE_REPLY_LEN];
        match self.gate.screen(
            now,
            &mut self.rng,
            bytes,
            from,
            init.sender_index,
            self.queued,
            &mut reply,
        )? {
            Screen::Proceed => {}
            Screen::SendCookie => {
                *cookie = Some(reply.to_vec());
                return Ok(None);
            }
            Screen::BadMac | Screen::RateLimited => return Ok(None),
        }
        let read = read_initiation(&self.identity, &init, true)?;
        let mut out = vec![0; MAX_HANDSHAKE_LEN];
        let index = self.index();
        let n = self
            .peer
            .accept_initiation(now, read, from, index, &mut out)?;
        out.truncate(n);
        Ok(Some(out))
    }

    fn take_response(&mut self, now: Instant, bytes: &[u8], from: SocketAddr) -> Result<(), Error> {
        let Ok(Message::Response(r)) = message::parse(bytes) else {
            panic!("not a response");
        };
        self.peer.handle_response(now, &r, from)
    }

    fn seal(&mut self, now: Instant, payload: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut buf = vec![0; payload.len() + 32];
        buf[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
        let (n, _) = self.peer.seal(now, &mut buf, payload.len())?;
        buf.truncate(n);
        Ok(buf)
    }

    fn open(&mut self, now: Instant, packet: &[u8], from: SocketAddr) -> Result<Vec<u8>, Error> {
        let mut copy = packet.to_vec();
        self.peer.open(now, from, &mut copy).map(|p| p.to_vec())
    }
}

impl Pair {
    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.wall += d.as_nanos() as u64;
        self.a.peer.handle_timeout(self.now);
        self.b.peer.handle_timeout(self.now);
    }

    /// A initiates, B responds, A reads; then A's keepalive confirms B's session.
    fn handshake(&mut self) {
        let init = self.a.initiation(self.now, self.wall);
        let resp = self
            .b
            .respond(self.now, &init, addr(A_ADDR), &mut None)
            .unwrap()
            .expect("a response");
        self.a.take_response(self.now, &resp, addr(B_ADDR)).unwrap();
        assert!(self.a.peer.wants_keepalive());
        let keepalive = self.a.seal(self.now, b"").unwrap();
        assert!(!self.a.peer.wants_keepalive());
        assert_eq!(
            self.b.open(self.now, &keepalive, addr(A_ADDR)).unwrap(),
            b""
        );
    }
}

#[test]
fn handshake_then_data_both_ways_hybrid_and_classic() {
    for hybrid in [true, false] {
        let mut p = pair_with(hybrid, Timing::default(), None);
        let init = p.a.initiation(p.now, p.wall);
        assert_eq!(init.len(), message::initiation_len(hybrid));
        let resp =
            p.b.respond(p.now, &init, addr(A_ADDR), &mut None)
                .unwrap()
                .unwrap();
        assert_eq!(resp.len(), message::response_len(hybrid));
        // The responder has keys but no confirmation: it does not seal yet.
        assert!(matches!(
            p.b.seal(p.now, b"early"),
            Err(SealError::NoSession)
        ));
        p.a.take_response(p.now, &resp, addr(B_ADDR)).unwrap();
        let pkt = p.a.seal(p.now, b"hello b").unwrap();
        assert_eq!(p.b.open(p.now, &pkt, addr(A_ADDR)).unwrap(), b"hello b");
        // Confirmed: B now seals under the same session.
        let pkt = p.b.seal(p.now, b"hello a").unwrap();
        assert_eq!(p.a.open(p.now, &pkt, addr(B_ADDR)).unwrap(), b"hello a");
        assert_eq!(p.a.peer.status(p.now).epoch, p.b.peer.status(p.now).epoch);
        assert_eq!(p.a.peer.stats().handshakes, 1);
        assert_eq!(p.b.peer.stats().handshakes, 1);
    }
}

#[test]
fn replayed_data_packet_is_dropped() {
    let mut p = pair();
    p.handshake();
    let pkt = p.a.seal(p.now, b"once").unwrap();
    assert_eq!(p.b.open(p.now, &pkt, addr(A_ADDR)).unwrap(), b"once");
    let again = p.b.open(p.now, &pkt, addr(A_ADDR));
    assert!(
        matches!(again, Err(Error::PeerMisbehaved(PeerMisbehaved::Replay))),
        "{again:?}"
    );
    // A tampered packet fails and changes nothing: the next genuine one opens.
    let mut bad = p.a.seal(p.now, b"tampered").unwrap();
    let genuine = p.a.seal(p.now, b"next").unwrap();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(p.b.open(p.now, &bad, addr(A_ADDR)).is_err());
    assert_eq!(p.b.open(p.now, &genuine, addr(A_ADDR)).unwrap(), b"next");
    assert_eq!(p.b.peer.stats().rejected, 2);
}

#[test]
fn replayed_initiation_is_refused() {
    let mut p = pair();
    let init = p.a.initiation(p.now, p.wall);
    p.b.respond(p.now, &init, addr(A_ADDR), &mut None)
        .unwrap()
        .unwrap();
    p.advance(Duration::from_secs(1));
    let again = p.b.respond(p.now, &init, addr(A_ADDR), &mut None);
    assert!(
        matches!(again, Err(Error::PeerMisbehaved(PeerMisbehaved::Replay))),
        "{again:?}"
    );
    // A fresh initiation, even with a clock that went backwards, has a newer timestamp.
    let init = p.a.initiation(p.now, p.wall - 5_000_000_000);
    assert!(p
        .b
        .respond(p.now, &init, addr(A_ADDR), &mut None)
        .unwrap()
        .is_some());
}

#[test]
fn initiation_flood_from_one_peer_is_refused() {
    let mut p = pair();
    let first = p.a.initiation(p.now, p.wall);
    p.b.respond(p.now, &first, addr(A_ADDR), &mut None)
        .unwrap()
        .unwrap();
    let second = p.a.initiation(p.now, p.wall + 1);
    let r = p.b.respond(
        p.now + Duration::from_millis(5),
        &second,
        addr(A_ADDR),
        &mut None,
    );
    assert!(
        matches!(
            r,
            Err(Error::PeerMisbehaved(PeerMisbehaved::UnexpectedRecord(_)))
        ),
        "{r:?}"
    );
}

#[test]
fn mismatched_psk_fails_the_handshake() {
    let mut p = pair_with(true, Timing::default(), Some([7; 32]));
    p.handshake();
    let mut q = pair_with(true, Timing::default(), Some([7; 32]));
    // B uses another psk for A.
    q.b.peer = Peer::new(
        local(&q.b.identity, true, Timing::default()),
        PeerConfig {
            public_key: *q.a.identity.public_key(),
            psk: Some(Psk::from_bytes([8; 32])),
            endpoint: None,
            persistent_keepalive: None,
        },
        q.now,
    )
    .unwrap();
    let init = q.a.initiation(q.now, q.wall);
    let resp =
        q.b.respond(q.now, &init, addr(A_ADDR), &mut None)
            .unwrap()
            .unwrap();
    assert!(q.a.take_response(q.now, &resp, addr(B_ADDR)).is_err());
}

#[test]
fn classical_initiation_refused_when_hybrid_required() {
    let mut p = pair_with(false, Timing::default(), None);
    let init = p.a.initiation(p.now, p.wall);
    let Ok(Message::Initiation(m)) = message::parse(&init) else {
        panic!()
    };
    assert!(read_initiation(&p.b.identity, &m, false).is_err());
    assert!(read_initiation(&p.b.identity, &m, true).is_ok());
}

#[test]
fn endpoint_follows_latest_authenticated_packet() {
    let mut p = pair();
    p.handshake();
    let roamed = addr("198.51.100.7:40000");
    let pkt = p.a.seal(p.now, b"from a new address").unwrap();
    p.b.open(p.now, &pkt, roamed).unwrap();
    assert_eq!(p.b.peer.endpoint(), Some(roamed));
    // A forged packet from elsewhere does not move it.
    let mut forged = p.a.seal(p.now, b"x").unwrap();
    forged[20] ^= 0xff;
    assert!(p.b.open(p.now, &forged, addr("203.0.113.9:1")).is_err());
    assert_eq!(p.b.peer.endpoint(), Some(roamed));
    // Replies go to the new address.
    let (_, to) = p.b.peer.seal(p.now, &mut [0u8; 64], 8).unwrap();
    assert_eq!(to, roamed);
}

#[test]
fn retransmission_backs_off_with_jitter_then_gives_up() {
    let mut p = pair();
    let t0 = p.now;
    p.a.initiation(p.now, p.wall);
    let mut sent_at = vec![Duration::ZERO];
    // Never answered: follow the timer.
    while let Some(t) = p.a.peer.poll_timeout() {
        if t.saturating_duration_since(t0) > Duration::from_secs(200) {
            break;
        }
        p.now = t;
        p.a.peer.handle_timeout(p.now);
        if p.a.peer.wants_initiation() {
            p.a.initiation(p.now, p.wall);
            sent_at.push(p.now - t0);
        }
        if p.a.peer.take_gave_up() {
            break;
        }
    }
    let gaps: Vec<Duration> = sent_at.windows(2).map(|w| w[1] - w[0]).collect();
    let bases = [1, 2, 4, 8, 8, 8];
    for (gap, base) in gaps.iter().zip(bases) {
        let base = Duration::from_secs(base);
        assert!(
            *gap >= base && *gap <= base + base / 4,
            "gap {gap:?} for base {base:?}: {gaps:?}"
        );
    }
    // Jitter: not all gaps of the same base are equal.
    assert!(gaps[3] != gaps[4] || gaps[4] != gaps[5], "{gaps:?}");
    // Gave up at 90 s: the last initiation went out before, none after.
    let last = *sent_at.last().unwrap();
    assert!(last < Duration::from_secs(90), "{sent_at:?}");
    assert!(p.now - t0 >= Duration::from_secs(90));
    assert!(!p.a.peer.wants_initiation());
    // New traffic starts a new attempt.
    assert!(matches!(p.a.seal(p.now, b"x"), Err(SealError::NoSession)));
    assert!(p.a.peer.wants_initiation());
}

#[test]
fn rekey_on_interval_keeps_previous_keys_for_the_grace_period() {
    let timing = Timing::with_rekey_interval(Duration::from_secs(2));
    let mut p = pair_with(true, timing, None);
    p.handshake();
    let first_epoch = p.a.peer.status(p.now).epoch;
    p.advance(Duration::from_millis(1500));
    p.a.seal(p.now, b"young").unwrap();
    assert!(!p.a.peer.wants_initiation());
    p.advance(Duration::from_millis(600));
    // Sealed under the old keys, delivered after the switch.
    let late = p.a.seal(p.now, b"late").unwrap();
    // A second old-key packet, still in flight when the grace period ends: never delivered
    // before, so only the dropped keys (not the replay window) can refuse it.
    let late2 = p.a.seal(p.now, b"later").unwrap();
    assert!(
        p.a.peer.wants_initiation(),
        "rekey wanted after the interval"
    );
    p.handshake();
    assert_ne!(p.a.peer.status(p.now).epoch, first_epoch);
    assert!(p.b.peer.status(p.now).previous_kept);
    assert_eq!(p.b.open(p.now, &late, addr(A_ADDR)).unwrap(), b"late");
    p.advance(timing.grace + Duration::from_millis(1));
    assert!(!p.b.peer.status(p.now).previous_kept);
    assert!(p.b.open(p.now, &late2, addr(A_ADDR)).is_err());
    // New keys work.
    let pkt = p.a.seal(p.now, b"new").unwrap();
    assert_eq!(p.b.open(p.now, &pkt, addr(A_ADDR)).unwrap(), b"new");
    assert_eq!(p.a.peer.stats().handshakes, 2);
}

#[test]
fn sessions_past_reject_after_are_not_used() {
    let timing = Timing::with_rekey_interval(Duration::from_secs(2));
    let mut p = pair_with(true, timing, None);
    p.handshake();
    let pkt = p.a.seal(p.now, b"old").unwrap();
    p.advance(timing.reject_after);
    assert!(p.b.open(p.now, &pkt, addr(A_ADDR)).is_err());
    assert!(matches!(p.a.seal(p.now, b"x"), Err(SealError::NoSession)));
}

#[test]
fn keepalive_answers_received_data_after_ten_seconds() {
    let mut p = pair();
    p.handshake();
    let pkt = p.a.seal(p.now, b"data").unwrap();
    p.b.open(p.now, &pkt, addr(A_ADDR)).unwrap();
    p.advance(Duration::from_secs(9));
    assert!(!p.b.peer.wants_keepalive());
    p.advance(Duration::from_secs(1));
    assert!(p.b.peer.wants_keepalive());
    let ka = p.b.seal(p.now, b"").unwrap();
    assert_eq!(p.a.open(p.now, &ka, addr(B_ADDR)).unwrap(), b"");
}

#[test]
fn silence_after_sending_starts_a_new_handshake() {
    let mut p = pair();
    p.handshake();
    p.a.seal(p.now, b"anyone there?").unwrap();
    p.advance(Duration::from_secs(14));
    assert!(!p.a.peer.wants_initiation());
    p.advance(Duration::from_secs(1));
    assert!(p.a.peer.wants_initiation());
}

#[test]
fn bogus_initiation_flood_under_load_gets_cookies_and_no_state() {
    let mut p = pair();
    let mut rng = TestRng(99);
    let b_key = *p.b.identity.public_key();
    // An attacker who knows B's public key can compute mac1 but not the Noise message.
    let mut attacker_jar = sessionkey_proto::vpn::cookie::CookieJar::new(&b_key).unwrap();
    let mut reply = [0u8; COOKIE_REPLY_LEN];
    let mut cookies = 0;
    let mut bad_mac = 0;
    let mut proceeded = 0;
    for i in 0..5000u32 {
        let mut bogus = vec![0u8; message::initiation_len(true)];
        bogus[0] = 1;
        bogus[1] = Suite::Aes256Gcm.id();
        bogus[2] = 1;
        bogus[4..8].copy_from_slice(&i.to_be_bytes());
        rng.fill(&mut bogus[8..40]).unwrap();
        let source = SocketAddr::new(
            IpAddr::from([203, 0, 113, (i % 250) as u8]),
            1000 + i as u16,
        );
        if i % 2 == 0 {
            attacker_jar.stamp(p.now, &mut bogus);
        }
        match p
            .b
            .gate
            .screen(p.now, &mut rng, &bogus, source, i, 0, &mut reply)
            .unwrap()
        {
            Screen::SendCookie => {
                cookies += 1;
                assert_eq!(reply[0], 3);
                assert_eq!(&reply[4..8], &i.to_be_bytes());
            }
            Screen::BadMac => bad_mac += 1,
            Screen::Proceed => {
                // Before the load meter trips: the Noise message then fails.
                proceeded += 1;
                let Ok(Message::Initiation(m)) = message::parse(&bogus) else {
                    panic!()
                };
                assert!(read_initiation(&p.b.identity, &m, true).is_err());
            }
            s => panic!("bogus initiation {i} got {s:?}"),
        }
        p.now += Duration::from_micros(100);
    }
    assert!(p.b.gate.under_load());
    // Until the meter trips (128 a second) the ones with a good mac1 go on (and fail at
    // Noise); after, each gets a cookie reply. The 2500 with a bad mac1 do not count
    // toward the load: only messages from senders who know B's key do.
    assert_eq!(bad_mac, 2500);
    assert_eq!(proceeded, 128);
    assert_eq!(cookies, 2500 - 128);
    // No per-sender state was made for any of them.
    assert_eq!(p.b.gate.tracked_sources(), 0);

    // The genuine peer, under load: a cookie first, then its retransmission passes.
    p.b.queued = 100;
    let init = p.a.initiation(p.now, p.wall);
    let mut cookie = None;
    assert!(p
        .b
        .respond(p.now, &init, addr(A_ADDR), &mut cookie)
        .unwrap()
        .is_none());
    let cookie = cookie.expect("a cookie reply");
    let Ok(Message::CookieReply(c)) = message::parse(&cookie) else {
        panic!()
    };
    p.a.peer.handle_cookie_reply(p.now, &c).unwrap();
    // A cookie reply for another message (another mac1) does not open.
    let mut forged = cookie.clone();
    forged[10] ^= 1;
    let Ok(Message::CookieReply(f)) = message::parse(&forged) else {
        panic!()
    };
    assert!(p.a.peer.handle_cookie_reply(p.now, &f).is_err());
    p.advance(Duration::from_millis(1300));
    assert!(p.a.peer.wants_initiation());
    let init = p.a.initiation(p.now, p.wall);
    // Keep the responder under load.
    let resp = p.b.respond(p.now, &init, addr(A_ADDR), &mut None).unwrap();
    assert!(p.b.gate.under_load());
    let resp = resp.expect("a response once mac2 is valid");
    p.a.take_response(p.now, &resp, addr(B_ADDR)).unwrap();
    assert_eq!(p.b.gate.tracked_sources(), 1);
}

#[test]
fn cookie_is_bound_to_the_source_address() {
    let mut p = pair();
    p.b.queued = 100;
    // Load the responder.
    let mut rng = TestRng(5);
    let mut reply = [0u8; COOKIE_REPLY_LEN];
    for i in 0..200 {
        let _ =
            p.b.gate
                .screen(p.now, &mut rng, &[0u8; 100], addr(A_ADDR), i, 0, &mut reply);
    }
    let init = p.a.initiation(p.now, p.wall);
    let mut cookie = None;
    assert!(p
        .b
        .respond(p.now, &init, addr(A_ADDR), &mut cookie)
        .unwrap()
        .is_none());
    let cookie = cookie.unwrap();
    let Ok(Message::CookieReply(c)) = message::parse(&cookie) else {
        panic!()
    };
    p.a.peer.handle_cookie_reply(p.now, &c).unwrap();
    p.advance(Duration::from_millis(1300));
    let init = p.a.initiation(p.now, p.wall);
    // From another address (a spoofer replaying it), the cookie does not count.
    let mut again = None;
    let r =
        p.b.respond(p.now, &init, addr("203.0.113.50:9"), &mut again)
            .unwrap();
    assert!(r.is_none() && again.is_some());
}

#[test]
fn rate_limit_per_source_under_load() {
    let mut p = pair();
    let mut rng = TestRng(11);
    let mut reply = [0u8; COOKIE_REPLY_LEN];
    // Garbage (no valid mac1) does not put the responder under load...
    for i in 0..200 {
        let s =
            p.b.gate
                .screen(p.now, &mut rng, &[0u8; 100], addr(A_ADDR), i, 0, &mut reply);
        assert_eq!(s.unwrap(), Screen::BadMac);
    }
    assert!(!p.b.gate.under_load());
    // ...a long queue does; then obtain a cookie for A's address.
    p.b.queued = 100;
    let init = p.a.initiation(p.now, p.wall);
    let mut cookie = None;
    p.b.respond(p.now, &init, addr(A_ADDR), &mut cookie)
        .unwrap();
    let Ok(Message::CookieReply(c)) = message::parse(cookie.as_ref().unwrap()) else {
        panic!()
    };
    p.a.peer.handle_cookie_reply(p.now, &c).unwrap();
    p.advance(Duration::from_millis(1300));
    let msg = p.a.initiation(p.now, p.wall);
    let Ok(Message::Initiation(m)) = message::parse(&msg) else {
        panic!()
    };
    // The same valid message (good mac1 and mac2) screened 10 times at one instant, with a
    // long queue keeping the responder under load: the burst of 5 passes, then the limit.
    let outcomes: Vec<Screen> = (0..10)
        .map(|_| {
            p.b.gate
                .screen(
                    p.now,
                    &mut rng,
                    &msg,
                    addr(A_ADDR),
                    m.sender_index,
                    100,
                    &mut reply,
                )
                .unwrap()
        })
        .collect();
    assert_eq!(&outcomes[..5], &[Screen::Proceed; 5]);
    assert_eq!(&outcomes[5..], &[Screen::RateLimited; 5]);
    // From another (unproven) address the same message gets a cookie, not a bucket.
    let other =
        p.b.gate
            .screen(
                p.now,
                &mut rng,
                &msg,
                addr("203.0.113.1:1"),
                m.sender_index,
                100,
                &mut reply,
            )
            .unwrap();
    assert_eq!(other, Screen::SendCookie);
    assert_eq!(p.b.gate.tracked_sources(), 1);
    let mut limiter = sessionkey_proto::vpn::ratelimit::RateLimiter::new();
    let ip: IpAddr = "198.51.100.1".parse().unwrap();
    let t = p.now;
    let burst = (0..10).filter(|_| limiter.allow(t, ip)).count();
    assert_eq!(burst, 5);
    assert!(limiter.allow(t + Duration::from_millis(50), ip));
    assert!(!limiter.allow(t + Duration::from_millis(60), ip));
    // Another address has its own bucket.
    assert!(limiter.allow(t, "198.51.100.2".parse().unwrap()));
    // IPv6 addresses share a bucket per /64.
    let v6a: IpAddr = "2001:db8::1".parse().unwrap();
    let v6b: IpAddr = "2001:db8::2".parse().unwrap();
    assert_eq!((0..5).filter(|_| limiter.allow(t, v6a)).count(), 5);
    assert!(!limiter.allow(t, v6b));
}

#[test]
fn allowed_ips_longest_prefix_both_families() {
    let mut t = AllowedIps::new();
    t.insert("10.0.0.0/8".parse().unwrap(), 'a');
    t.insert("10.1.0.0/16".parse().unwrap(), 'b');
    t.insert("10.1.2.3/32".parse().unwrap(), 'c');
    t.insert("fd00::/64".parse().unwrap(), 'v');
    t.insert("0.0.0.0/0".parse().unwrap(), 'z');
    fn get(t: &AllowedIps<char>, s: &str) -> Option<char> {
        t.get(s.parse().unwrap()).copied()
    }
    assert_eq!(get(&t, "10.9.9.9"), Some('a'));
    assert_eq!(get(&t, "10.1.9.9"), Some('b'));
    assert_eq!(get(&t, "10.1.2.3"), Some('c'));
    assert_eq!(get(&t, "192.0.2.1"), Some('z'));
    assert_eq!(get(&t, "fd00::1234"), Some('v'));
    assert_eq!(get(&t, "fd01::1"), None);
    // Host bits of an allowed network are ignored; a replaced route returns the old value.
    assert_eq!(t.insert("10.1.255.255/16".parse().unwrap(), 'B'), Some('b'));
    assert_eq!(get(&t, "10.1.9.9"), Some('B'));
    assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    assert!("10.0.0.x/8".parse::<Cidr>().is_err());
    assert_eq!("fd00::1".parse::<Cidr>().unwrap().prefix(), 128);
    assert!("10.0.0.0/8"
        .parse::<Cidr>()
        .unwrap()
        .contains("10.2.3.4".parse().unwrap()));
}

#[test]
fn inner_addresses_of_packets() {
    let mut v4 = [0u8; 20];
    v4[0] = 0x45;
    v4[12..16].copy_from_slice(&[10, 0, 0, 1]);
    v4[16..20].copy_from_slice(&[10, 0, 0, 2]);
    assert_eq!(packet_source(&v4), Some("10.0.0.1".parse().unwrap()));
    assert_eq!(packet_destination(&v4), Some("10.0.0.2".parse().unwrap()));
    assert_eq!(packet_source(&v4[..19]), None);
    let mut v6 = [0u8; 40];
    v6[0] = 0x60;
    v6[23] = 1;
    v6[39] = 2;
    assert_eq!(packet_source(&v6), Some("::1".parse().unwrap()));
    assert_eq!(packet_destination(&v6), Some("::2".parse().unwrap()));
    assert_eq!(packet_source(&[]), None);
    assert_eq!(packet_source(&[0x50; 60]), None);
}

fn ipv4_from(src: [u8; 4]) -> Vec<u8> {
    let mut inner = vec![0u8; 20];
    inner[0] = 0x45;
    inner[12..16].copy_from_slice(&src);
    inner[16..20].copy_from_slice(&[10, 0, 0, 9]);
    inner
}

#[test]
fn spoofed_inner_source_is_refused_by_the_core_routing_check() {
    // Peer 1 (A) authenticates, then claims to speak for 10.0.0.2, which belongs to peer 2.
    let mut routes = AllowedIps::new();
    routes.insert("10.0.0.1/32".parse().unwrap(), 1usize);
    routes.insert("10.0.0.2/32".parse().unwrap(), 2usize);
    routes.insert("10.0.0.0/24".parse().unwrap(), 3usize);
    let mut p = pair();
    p.handshake();
    let honest = p.a.seal(p.now, &ipv4_from([10, 0, 0, 1])).unwrap();
    let spoofed = p.a.seal(p.now, &ipv4_from([10, 0, 0, 2])).unwrap();
    let outside = p.a.seal(p.now, &ipv4_from([192, 168, 0, 1])).unwrap();
    let short = p.a.seal(p.now, &[0x45, 0, 0]).unwrap();
    let opened = p.b.open(p.now, &honest, addr(A_ADDR)).unwrap();
    assert!(routes.inbound_allowed(&opened, &1), "own source refused");
    let opened = p.b.open(p.now, &spoofed, addr(A_ADDR)).unwrap();
    assert!(
        !routes.inbound_allowed(&opened, &1),
        "peer 1 spoke for peer 2's address"
    );
    assert!(routes.inbound_allowed(&opened, &2));
    // The longest prefix decides: 10.0.0.2 is peer 2's even though peer 3 has the /24.
    assert!(!routes.inbound_allowed(&opened, &3));
    let opened = p.b.open(p.now, &outside, addr(A_ADDR)).unwrap();
    assert!(
        !routes.inbound_allowed(&opened, &1),
        "unrouted source delivered"
    );
    let opened = p.b.open(p.now, &short, addr(A_ADDR)).unwrap();
    assert!(
        !routes.inbound_allowed(&opened, &1),
        "truncated header delivered"
    );
    // IPv6: source at bytes 8..24.
    let mut v6routes = AllowedIps::new();
    v6routes.insert("fd00::1/128".parse().unwrap(), 1usize);
    let mut pkt = vec![0u8; 40];
    pkt[0] = 0x60;
    pkt[8..24].copy_from_slice(&"fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    assert!(v6routes.inbound_allowed(&pkt, &1));
    pkt[23] = 2;
    assert!(!v6routes.inbound_allowed(&pkt, &1));
}

#[test]
fn debug_output_has_no_secrets() {
    let mut p = pair_with(true, Timing::default(), Some([0xab; 32]));
    p.handshake();
    let text = format!("{:?} {:?}", p.a.peer, p.b.gate);
    assert!(
        !text.contains("171") && !text.to_lowercase().contains("ab, ab"),
        "{text}"
    );
    assert!(text.contains("SHA256:"), "{text}");
}

/// An attacker on the path who saw the initiation (its sender index is in clear) and knows
/// the initiator's public key (so it can compute mac1) races each response with a forgery.
fn forge_response(genuine: &[u8], initiator: &Identity, now: Instant, tweak: usize) -> Vec<u8> {
    let mut forged = genuine.to_vec();
    forged[tweak] ^= 0x55;
    let mut jar = sessionkey_proto::vpn::cookie::CookieJar::new(initiator.public_key()).unwrap();
    jar.stamp(now, &mut forged);
    forged
}

#[test]
fn forged_response_leaves_the_genuine_one_working() {
    for hybrid in [true, false] {
        let mut p = pair_with(hybrid, Timing::default(), None);
        let init = p.a.initiation(p.now, p.wall);
        let resp =
            p.b.respond(p.now, &init, addr(A_ADDR), &mut None)
                .unwrap()
                .unwrap();
        let a_identity = p.a.identity.clone();
        // Forged bodies at several places (ephemeral, KEM ciphertext or payload), and an
        // altered clear sender index: each has a valid mac1 and is refused.
        let tweaks = [12, 40, resp.len() - 40, 4];
        for (n, &tweak) in tweaks.iter().enumerate() {
            let forged = forge_response(&resp, &a_identity, p.now, tweak);
            let Ok(Message::Response(r)) = message::parse(&forged) else {
                panic!("forgery {n} does not parse")
            };
            let err =
                p.a.peer
                    .handle_response(p.now, &r, addr("198.51.100.7:9"))
                    .unwrap_err();
            assert!(matches!(err, Error::PeerMisbehaved(_)), "{err:?}");
            assert!(
                p.a.peer.status(p.now).handshaking,
                "forgery {n} ended the handshake"
            );
            assert_eq!(p.a.peer.stats().responses_refused, n as u64 + 1);
        }
        // The genuine response still completes the handshake, from the genuine address.
        p.a.take_response(p.now, &resp, addr(B_ADDR)).unwrap();
        assert_eq!(p.a.peer.endpoint(), Some(addr(B_ADDR)));
        let pkt = p.a.seal(p.now, b"through").unwrap();
        assert_eq!(p.b.open(p.now, &pkt, addr(A_ADDR)).unwrap(), b"through");
        // A replay of the genuine response afterwards is refused and changes nothing.
        assert!(p.a.take_response(p.now, &resp, addr(B_ADDR)).is_err());
        let pkt = p.a.seal(p.now, b"still").unwrap();
        assert_eq!(p.b.open(p.now, &pkt, addr(A_ADDR)).unwrap(), b"still");
    }
}

#[test]
fn forged_cookie_reply_is_counted_and_changes_nothing() {
    let mut p = pair();
    let init = p.a.initiation(p.now, p.wall);
    let Ok(Message::Initiation(m)) = message::parse(&init) else {
        panic!()
    };
    let mut forged = vec![0u8; COOKIE_REPLY_LEN];
    forged[0] = 3;
    forged[4..8].copy_from_slice(&m.sender_index.to_be_bytes());
    forged[8..].fill(0xa5);
    let Ok(Message::CookieReply(c)) = message::parse(&forged) else {
        panic!()
    };
    assert!(p.a.peer.handle_cookie_reply(p.now, &c).is_err());
    assert_eq!(p.a.peer.stats().cookie_replies_refused, 1);
    assert!(p.a.peer.status(p.now).handshaking);
    let resp =
        p.b.respond(p.now, &init, addr(A_ADDR), &mut None)
            .unwrap()
            .unwrap();
    p.a.take_response(p.now, &resp, addr(B_ADDR)).unwrap();
}

/// 2^20 forged data packets (the old session-wide bound, 32 MiB of UDP) leave the session
/// working: genuine packets still open, both sides still seal, and the receiver asks for a
/// new handshake (its key reached the forgery threshold) instead of refusing anything.
///
/// Every forgery goes through the whole receive path (`Peer::open`: index, epoch, replay
/// window, AEAD), as an attacker's would; each is a 32-byte packet, so the loop stays
/// around a second in a debug build (dependencies are optimised, see Cargo.toml).
#[test]
fn two_to_the_twenty_forged_packets_leave_the_session_working() {
    let mut p = pair();
    p.handshake();
    let genuine = p.a.seal(p.now, b"genuine").unwrap();
    // The attacker copies a header (receiver index, epoch, a counter) from any packet.
    let keepalive = p.a.seal(p.now, b"").unwrap();
    let mut forged = keepalive.clone();
    forged[HEADER_LEN..].fill(0x5a);
    let mut buf = forged.clone();
    for i in 0..1u32 << 20 {
        buf.copy_from_slice(&forged);
        let r = p.b.peer.open(p.now, addr("198.51.100.7:9"), &mut buf);
        assert!(
            matches!(r, Err(Error::PeerMisbehaved(PeerMisbehaved::BadTag))),
            "forgery {i}: {r:?}"
        );
    }
    assert_eq!(p.b.peer.stats().rejected, 1 << 20);
    // The forged source did not become the endpoint; the session still works both ways.
    assert_eq!(p.b.peer.endpoint(), Some(addr(A_ADDR)));
    assert_eq!(p.b.open(p.now, &genuine, addr(A_ADDR)).unwrap(), b"genuine");
    assert_eq!(p.b.open(p.now, &keepalive, addr(A_ADDR)).unwrap(), b"");
    let back = p.b.seal(p.now, b"reply").unwrap();
    assert_eq!(p.a.open(p.now, &back, addr(B_ADDR)).unwrap(), b"reply");
    // The key reached the forgery threshold: B asks for a new handshake.
    assert!(p.b.peer.wants_initiation());
    let init = p.b.initiation(p.now, p.wall);
    let resp =
        p.a.respond(p.now, &init, addr(B_ADDR), &mut None)
            .unwrap()
            .unwrap();
    p.b.take_response(p.now, &resp, addr(A_ADDR)).unwrap();
    let pkt = p.b.seal(p.now, b"fresh keys").unwrap();
    assert_eq!(p.a.open(p.now, &pkt, addr(B_ADDR)).unwrap(), b"fresh keys");
    assert!(!p.b.peer.wants_initiation());
}

/// The receiving thread's check, in place: junk and bad-mac1 messages are never queued,
/// and they do not count toward the load (a flood of them leaves a genuine initiation
/// free of the cookie round trip).
#[test]
fn prescreen_drops_junk_before_any_copy_and_it_does_not_load_the_gate() {
    use sessionkey_proto::vpn::{prescreen, Mac1Verifier, Prescreen};
    let mut p = pair();
    let b_key = *p.b.identity.public_key();
    let verifier = Mac1Verifier::new(&b_key);
    let init = p.a.initiation(p.now, p.wall);
    assert_eq!(prescreen(&verifier, &init), Prescreen::Handshake);
    let mut bad = init.clone();
    bad[100] ^= 1;
    assert_eq!(prescreen(&verifier, &bad), Prescreen::BadMac);
    // For another key: bad mac1.
    let other = Mac1Verifier::new(p.a.identity.public_key());
    assert_eq!(prescreen(&other, &init), Prescreen::BadMac);
    assert_eq!(
        prescreen(&verifier, &init[..init.len() - 1]),
        Prescreen::Malformed
    );
    assert_eq!(prescreen(&verifier, &[]), Prescreen::Malformed);
    assert_eq!(prescreen(&verifier, &[9, 0, 0, 0]), Prescreen::Malformed);
    assert_eq!(prescreen(&verifier, &[4; 40]), Prescreen::Data);
    let mut cookie = vec![0u8; COOKIE_REPLY_LEN];
    cookie[0] = 3;
    cookie[4..8].copy_from_slice(&7u32.to_be_bytes());
    assert_eq!(
        prescreen(&verifier, &cookie),
        Prescreen::CookieReply { receiver_index: 7 }
    );
    // 10 000 bad-mac1 messages at one instant: the gate stays calm.
    let mut rng = TestRng(5);
    let mut reply = [0u8; COOKIE_REPLY_LEN];
    for i in 0..10_000u32 {
        let s =
            p.b.gate
                .screen(
                    p.now,
                    &mut rng,
                    &bad,
                    addr("203.0.113.9:1"),
                    i,
                    0,
                    &mut reply,
                )
                .unwrap();
        assert_eq!(s, Screen::BadMac);
    }
    assert!(!p.b.gate.under_load());
    let resp = p.b.respond(p.now, &init, addr(A_ADDR), &mut None).unwrap();
    assert!(resp.is_some(), "the genuine initiation is answered at once");
}

/// Default timing: the responder's own rekey fires before the session expires (at 1.5 x
/// 120 s it would equal reject-after, 180 s, and never fire). Here the initiator keeps
/// sending under its session but ignores its own rekey wish (a peer that does not rekey);
/// both sides exchange data every 5 s, so no other timer interferes.
#[test]
fn responder_rekeys_before_reject_after_at_default_timing() {
    let timing = Timing::default();
    assert_eq!(timing.responder_rekey_after(), Duration::from_secs(165));
    assert!(timing.responder_rekey_after() < timing.reject_after);
    let mut p = pair();
    p.handshake();
    let start = p.now;
    while p.now - start < Duration::from_secs(160) {
        p.advance(Duration::from_secs(5));
        let to_b = p.a.seal(p.now, b"ping").unwrap();
        p.b.open(p.now, &to_b, addr(A_ADDR)).unwrap();
        let to_a = p.b.seal(p.now, b"pong").unwrap();
        p.a.open(p.now, &to_a, addr(B_ADDR)).unwrap();
        assert!(
            !p.b.peer.wants_initiation(),
            "responder wants a handshake at {:?}",
            p.now - start
        );
    }
    p.advance(Duration::from_secs(5));
    p.b.seal(p.now, b"at 165 s").unwrap();
    assert!(p.b.peer.wants_initiation(), "no responder rekey at 165 s");
    // It completes before the old session expires at 180 s.
    let init = p.b.initiation(p.now, p.wall);
    let resp =
        p.a.respond(p.now, &init, addr(B_ADDR), &mut None)
            .unwrap()
            .unwrap();
    p.b.take_response(p.now, &resp, addr(A_ADDR)).unwrap();
    p.advance(Duration::from_secs(20));
    let pkt = p.b.seal(p.now, b"after 185 s").unwrap();
    assert_eq!(p.a.open(p.now, &pkt, addr(B_ADDR)).unwrap(), b"after 185 s");
}

/// Default timing: the passive keepalive fires 10 s after receiving data with nothing
/// sent, and not when the receiver sent something meanwhile.
#[test]
fn passive_keepalive_only_when_nothing_was_sent() {
    let mut p = pair();
    p.handshake();
    let pkt = p.a.seal(p.now, b"data").unwrap();
    p.b.open(p.now, &pkt, addr(A_ADDR)).unwrap();
    p.advance(Duration::from_secs(4));
    let reply = p.b.seal(p.now, b"reply").unwrap();
    p.a.open(p.now, &reply, addr(B_ADDR)).unwrap();
    p.advance(Duration::from_secs(7));
    assert!(
        !p.b.peer.wants_keepalive(),
        "B sent data: no keepalive needed"
    );
    // A keepalive itself arms no keepalive on the other side.
    let pkt = p.a.seal(p.now, b"").unwrap();
    p.b.open(p.now, &pkt, addr(A_ADDR)).unwrap();
    p.advance(Duration::from_secs(11));
    assert!(!p.b.peer.wants_keepalive());
    assert_eq!(
        p.b.peer.poll_timeout().map(|t| t > p.now),
        Some(true),
        "only future deadlines remain"
    );
}

/// Default timing: the new-handshake rule fires 15 s after the first unanswered send,
/// not 15 s after the last one (later sends do not push it back), and any received packet
/// cancels it.
#[test]
fn new_handshake_counts_from_the_first_unanswered_send() {
    let mut p = pair();
    p.handshake();
    p.a.seal(p.now, b"one").unwrap();
    p.advance(Duration::from_secs(10));
    p.a.seal(p.now, b"two").unwrap();
    p.advance(Duration::from_secs(4));
    assert!(!p.a.peer.wants_initiation());
    p.advance(Duration::from_secs(1));
    assert!(p.a.peer.wants_initiation(), "15 s after the first send");
    // An answer cancels a pending rule.
    let mut q = pair();
    q.handshake();
    q.a.seal(q.now, b"one").unwrap();
    q.advance(Duration::from_secs(14));
    let ka = q.b.seal(q.now, b"").unwrap();
    q.a.open(q.now, &ka, addr(B_ADDR)).unwrap();
    q.advance(Duration::from_secs(5));
    assert!(!q.a.peer.wants_initiation());
}

/// The responder can seal the instant the confirming packet opened: the driver sends the
/// packets it kept right then (no timer involved).
#[test]
fn responder_seals_at_the_instant_of_key_confirmation() {
    let mut p = pair();
    let init = p.a.initiation(p.now, p.wall);
    let resp =
        p.b.respond(p.now, &init, addr(A_ADDR), &mut None)
            .unwrap()
            .unwrap();
    assert!(matches!(
        p.b.seal(p.now, b"kept"),
        Err(SealError::NoSession)
    ));
    p.a.take_response(p.now, &resp, addr(B_ADDR)).unwrap();
    let ka = p.a.seal(p.now, b"").unwrap();
    p.b.open(p.now, &ka, addr(A_ADDR)).unwrap();
    let kept = p.b.seal(p.now, b"kept").unwrap();
    assert_eq!(p.a.open(p.now, &kept, addr(B_ADDR)).unwrap(), b"kept");
}

/// Default timing: the initiator rekeys when it sends at 120 s, not before; a session is
/// refused at 180 s (reject-after) by both sides.
#[test]
fn initiator_rekeys_at_120_s_and_sessions_end_at_180_s_default_timing() {
    let mut p = pair();
    p.handshake();
    let start = p.now;
    let mut last = None;
    while p.now - start < Duration::from_secs(115) {
        p.advance(Duration::from_secs(5));
        let to_b = p.a.seal(p.now, b"ping").unwrap();
        p.b.open(p.now, &to_b, addr(A_ADDR)).unwrap();
        let to_a = p.b.seal(p.now, b"pong").unwrap();
        p.a.open(p.now, &to_a, addr(B_ADDR)).unwrap();
        assert!(!p.a.peer.wants_initiation(), "at {:?}", p.now - start);
        last = Some(to_b);
    }
    p.advance(Duration::from_secs(5));
    p.a.seal(p.now, b"at 120 s").unwrap();
    assert!(p.a.peer.wants_initiation(), "no initiator rekey at 120 s");
    // Nobody acts on it: at 180 s the session is gone on both sides.
    p.advance(Duration::from_secs(59));
    let late = p.a.seal(p.now, b"at 179 s").unwrap();
    p.advance(Duration::from_secs(1));
    assert!(matches!(p.a.seal(p.now, b"x"), Err(SealError::NoSession)));
    assert!(p.b.open(p.now, &late, addr(A_ADDR)).is_err());
    assert!(p.b.open(p.now, &last.unwrap(), addr(A_ADDR)).is_err());
}

/// A pair whose side A has the smaller static key (`a_smaller`) or the larger one: the tie
/// between crossing handshakes goes to the smaller key, so both cases are run.
fn pair_ordered(a_smaller: bool) -> Pair {
    loop {
        let p = pair_with(false, Timing::default(), None);
        let smaller = p.a.identity.public_key().as_bytes() < p.b.identity.public_key().as_bytes();
        if smaller == a_smaller {
            return p;
        }
    }
}

/// Data both ways past the grace period, with no new handshake wanted: both sides seal
/// under a session the other still opens.
fn assert_settled(p: &mut Pair, what: &str) {
    for round in 0..3 {
        // Both send before either receives, as busy peers do.
        let to_b = p.a.seal(p.now, b"to b").unwrap();
        let to_a = p.b.seal(p.now, b"to a").unwrap();
        assert_eq!(
            p.b.open(p.now, &to_b, addr(A_ADDR)).unwrap(),
            b"to b",
            "{what}: round {round}, A to B"
        );
        assert_eq!(
            p.a.open(p.now, &to_a, addr(B_ADDR)).unwrap(),
            b"to a",
            "{what}: round {round}, B to A"
        );
        // Past the grace period (and short of the 15 s new-handshake time).
        p.advance(Duration::from_secs(7));
    }
    assert!(!p.a.peer.wants_initiation(), "{what}: A wants a handshake");
    assert!(!p.b.peer.wants_initiation(), "{what}: B wants a handshake");
    assert_eq!(p.a.peer.stats().rejected, 0, "{what}");
    assert_eq!(p.b.peer.stats().rejected, 0, "{what}");
    assert_eq!(
        p.a.peer.status(p.now).epoch,
        p.b.peer.status(p.now).epoch,
        "{what}: both sides on one session"
    );
}

/// Both sides initiate at once (both had packets to send): each answers the other's
/// initiation and completes its own. Both must settle on the same one of the two sessions
/// (the one the smaller static key initiated); moving each onto the other's would leave
/// both sealing under sessions the other drops after the grace period.
#[test]
fn simultaneous_initiations_settle_on_one_session() {
    for a_smaller in [true, false] {
        for established in [false, true] {
            let mut p = pair_ordered(a_smaller);
            if established {
                p.handshake();
                p.advance(Duration::from_secs(1));
            }
            let ia = p.a.initiation(p.now, p.wall);
            let ib = p.b.initiation(p.now, p.wall);
            let ra =
                p.a.respond(p.now, &ib, addr(B_ADDR), &mut None)
                    .unwrap()
                    .unwrap();
            let rb =
                p.b.respond(p.now, &ia, addr(A_ADDR), &mut None)
                    .unwrap()
                    .unwrap();
            p.a.take_response(p.now, &rb, addr(B_ADDR)).unwrap();
            p.b.take_response(p.now, &ra, addr(A_ADDR)).unwrap();
            let ka = p.a.seal(p.now, b"").unwrap();
            let kb = p.b.seal(p.now, b"").unwrap();
            p.b.open(p.now, &ka, addr(A_ADDR)).unwrap();
            p.a.open(p.now, &kb, addr(B_ADDR)).unwrap();
            assert_settled(
                &mut p,
                &format!("a_smaller {a_smaller}, established {established}"),
            );
        }
    }
}

/// B starts a handshake after answering A's but before A's first packet under it arrived;
/// A's confirming packet and A's answer to B reach B in any order, and B may send under
/// its own new session before the confirmation arrives. B's handshake is the newer one (a
/// higher epoch): both sides settle on it.
#[test]
fn an_initiation_before_key_confirmation_settles_on_one_session() {
    for a_smaller in [true, false] {
        for order in ["confirmation first", "response first", "B sends in between"] {
            let mut p = pair_ordered(a_smaller);
            let ia = p.a.initiation(p.now, p.wall);
            let rb =
                p.b.respond(p.now, &ia, addr(A_ADDR), &mut None)
                    .unwrap()
                    .unwrap();
            p.advance(Duration::from_millis(30));
            let ib = p.b.initiation(p.now, p.wall);
            p.a.take_response(p.now, &rb, addr(B_ADDR)).unwrap();
            let ka = p.a.seal(p.now, b"").unwrap();
            let ra =
                p.a.respond(p.now, &ib, addr(B_ADDR), &mut None)
                    .unwrap()
                    .unwrap();
            match order {
                "confirmation first" => {
                    p.b.open(p.now, &ka, addr(A_ADDR)).unwrap();
                    p.b.take_response(p.now, &ra, addr(A_ADDR)).unwrap();
                }
                "response first" => {
                    p.b.take_response(p.now, &ra, addr(A_ADDR)).unwrap();
                    p.b.open(p.now, &ka, addr(A_ADDR)).unwrap();
                }
                _ => {
                    p.b.take_response(p.now, &ra, addr(A_ADDR)).unwrap();
                    let early = p.b.seal(p.now, b"early").unwrap();
                    assert_eq!(p.a.open(p.now, &early, addr(B_ADDR)).unwrap(), b"early");
                    p.b.open(p.now, &ka, addr(A_ADDR)).unwrap();
                }
            }
            assert_settled(&mut p, &format!("a_smaller {a_smaller}, {order}"));
        }
    }
}

/// A peer that lost its state (a restart) starts over at epoch 1, below the epoch of the
/// session this side still has: its handshake still replaces that session, because that
/// session was confirmed before the new one began.
#[test]
fn a_restarted_peer_with_a_lower_epoch_is_followed() {
    let mut p = pair();
    for _ in 0..5 {
        p.handshake();
        p.advance(Duration::from_secs(1));
    }
    let to_a = p.b.seal(p.now, b"before").unwrap();
    p.a.open(p.now, &to_a, addr(B_ADDR)).unwrap();
    // B restarts with the same key: a new Peer for A, epoch 0 again.
    p.b.peer = Peer::new(
        local(&p.b.identity, true, Timing::default()),
        PeerConfig {
            public_key: *p.a.identity.public_key(),
            psk: None,
            endpoint: Some(addr(A_ADDR)),
            persistent_keepalive: None,
        },
        p.now,
    )
    .unwrap();
    p.advance(Duration::from_secs(1));
    let ib = p.b.initiation(p.now, p.wall);
    let ra =
        p.a.respond(p.now, &ib, addr(B_ADDR), &mut None)
            .unwrap()
            .unwrap();
    p.b.take_response(p.now, &ra, addr(A_ADDR)).unwrap();
    let kb = p.b.seal(p.now, b"").unwrap();
    p.a.open(p.now, &kb, addr(B_ADDR)).unwrap();
    assert_settled(&mut p, "after the restart");
}
