//! A stream [`Session`] pair driven by arbitrary event schedules (issue 17, item 2): sends in
//! both directions, partial deliveries, drops, duplicates, reorders and corruptions of
//! frames in flight, a virtual clock, key updates, re-handshakes and closes.
//!
//! Always: every byte a side delivers is one the other side sent, in order (what was
//! delivered is a prefix of what was sent), and a failed read closes the session. For an
//! honest schedule (no frame dropped, duplicated, reordered or corrupted): neither side
//! fails, everything sent arrives, and after both close each side's acknowledgement
//! confirms exactly the bytes it sent.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use sessionkey_proto::crypto::SystemRandom;
use sessionkey_proto::handshake::{Header, Initiator, Policy, Responder};
use sessionkey_proto::keys::Identity;
use sessionkey_proto::noise::Pattern;
use sessionkey_proto::record::MAX_FRAME;
use sessionkey_proto::session::{CloseReason, Received, Session, SessionConfig};
use sessionkey_proto::suite::Suite;

/// One event of a schedule. Indexes are taken modulo what exists.
#[derive(Debug, Clone)]
enum Op {
    /// The client (true) or the server sends `len` bytes.
    Send(bool, u16),
    /// Deliver up to `n` bytes of the frames in flight towards the server (true) or client.
    Deliver(bool, u16),
    /// Advance the virtual clock (after the network delivered what was in flight).
    Advance(u8),
    /// Key update by the client (true) or the server.
    KeyUpdate(bool),
    /// Re-handshake requested by the client (true) or the server.
    Rehandshake(bool),
    /// Ping.
    Ping(bool),
    /// Close the sending direction of the client (true) or the server.
    Close(bool),
    // Network faults (not in honest schedules):
    /// Drop the frame at this index in flight.
    Drop(bool, usize),
    /// Duplicate the frame at this index in flight.
    Duplicate(bool, usize),
    /// Swap two frames in flight.
    Reorder(bool, usize, usize),
    /// XOR a byte of a frame in flight (`x` is never 0).
    Corrupt(bool, usize, usize, u8),
}

fn honest_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<bool>(), 0u16..3000).prop_map(|(c, n)| Op::Send(c, n)),
        6 => (any::<bool>(), 1u16..2000).prop_map(|(c, n)| Op::Deliver(c, n)),
        1 => (0u8..200).prop_map(Op::Advance),
        1 => any::<bool>().prop_map(Op::KeyUpdate),
        1 => any::<bool>().prop_map(Op::Rehandshake),
        1 => any::<bool>().prop_map(Op::Ping),
        1 => any::<bool>().prop_map(Op::Close),
    ]
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => honest_op(),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(c, i)| Op::Drop(c, i)),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(c, i)| Op::Duplicate(c, i)),
        1 => (any::<bool>(), any::<usize>(), any::<usize>())
            .prop_map(|(c, i, j)| Op::Reorder(c, i, j)),
        1 => (any::<bool>(), any::<usize>(), any::<usize>(), 1u8..)
            .prop_map(|(c, i, p, x)| Op::Corrupt(c, i, p, x)),
    ]
}

/// One end: its session, what it sent, what it received but did not process, what it
/// delivered.
struct End {
    session: Session,
    sent: Vec<u8>,
    inbox: Vec<u8>,
    delivered: Vec<u8>,
    failed: bool,
}

impl End {
    fn new(session: Session) -> Self {
        Self {
            session,
            sent: Vec::new(),
            inbox: Vec::new(),
            delivered: Vec::new(),
            failed: false,
        }
    }

    /// Every frame this side wants to send, appended to `pipe`.
    fn transmit(&mut self, now: Instant, pipe: &mut VecDeque<Vec<u8>>) {
        let mut out = vec![0u8; MAX_FRAME];
        for _ in 0..1000 {
            match self.session.poll_transmit(now, &mut out) {
                Ok(Some(n)) => pipe.push_back(out[..n].to_vec()),
                Ok(None) | Err(_) => break,
            }
        }
        while self.session.poll_event().is_some() {}
    }

    /// Seal `len` bytes of a pattern that numbers them, into `pipe`.
    fn send(&mut self, now: Instant, len: usize, pipe: &mut VecDeque<Vec<u8>>) {
        let data: Vec<u8> = (self.sent.len()..self.sent.len() + len)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut out = vec![0u8; MAX_FRAME];
        let mut rest = &data[..];
        while !rest.is_empty() {
            let Ok((consumed, n)) = self.session.seal_data(now, rest, &mut out) else {
                break;
            };
            pipe.push_back(out[..n].to_vec());
            self.sent.extend_from_slice(&rest[..consumed]);
            rest = &rest[consumed..];
        }
        while self.session.poll_event().is_some() {}
    }

    /// Process every whole frame in the inbox, checking `read`'s promises.
    fn receive(&mut self, now: Instant) {
        while !self.failed {
            match self.session.read(now, &mut self.inbox) {
                Ok(Received::Incomplete { needed }) => {
                    assert!(needed > self.inbox.len(), "Incomplete with a whole frame");
                    break;
                }
                Ok(Received::Data { frame_len, content }) => {
                    assert!(content.end <= frame_len && frame_len <= self.inbox.len());
                    self.delivered.extend_from_slice(&self.inbox[content]);
                    self.inbox.drain(..frame_len);
                }
                Ok(Received::Control { frame_len }) => {
                    assert!(frame_len > 0 && frame_len <= self.inbox.len());
                    self.inbox.drain(..frame_len);
                }
                Err(_) => {
                    assert!(
                        self.session.close_reason().is_some(),
                        "a failed read left the session open"
                    );
                    self.failed = true;
                }
            }
        }
        while self.session.poll_event().is_some() {}
    }
}

struct World {
    now: Instant,
    client: End,
    server: End,
    /// Frames in flight towards the server and towards the client.
    to_server: VecDeque<Vec<u8>>,
    to_client: VecDeque<Vec<u8>>,
}

impl World {
    fn new(pattern: Pattern, suite: Suite, key_update_records: u64) -> Self {
        let now = Instant::now();
        let server_id = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
        let client_id = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
        let header = Header {
            pattern,
            suite,
            hybrid: false,
            psk: false,
        };
        let remote = pattern
            .responder_premessage()
            .then(|| *server_id.public_key());
        let local = pattern.initiator_has_static().then_some(client_id);
        let initiator = Initiator::new(header, local, remote, None).unwrap();
        let policy = Policy {
            patterns: Pattern::ALL.to_vec(),
            require_hybrid: false,
            allow_anonymous: true,
            ..Policy::default()
        };
        let responder = Arc::new(Responder::new(policy, Some(server_id), None));
        let config = SessionConfig {
            key_update_records,
            ..SessionConfig::default()
        };
        let client = Session::client(now, initiator, config.clone(), Box::new(SystemRandom));
        let server = Session::server(now, responder, config, Box::new(SystemRandom));
        Self {
            now,
            client: End::new(client),
            server: End::new(server),
            to_server: VecDeque::new(),
            to_client: VecDeque::new(),
        }
    }

    fn transmit_all(&mut self) {
        self.client.transmit(self.now, &mut self.to_server);
        self.server.transmit(self.now, &mut self.to_client);
    }

    /// Move up to `n` bytes of frames in flight into the receiver's inbox (the last frame
    /// possibly in part), let it read them, and let both sides answer.
    fn deliver(&mut self, to_server: bool, mut n: usize) {
        let (pipe, end) = if to_server {
            (&mut self.to_server, &mut self.server)
        } else {
            (&mut self.to_client, &mut self.client)
        };
        while n > 0 {
            let Some(front) = pipe.front_mut() else { break };
            let take = n.min(front.len());
            end.inbox.extend_from_slice(&front[..take]);
            front.drain(..take);
            if front.is_empty() {
                pipe.pop_front();
            }
            n -= take;
        }
        end.receive(self.now);
        self.transmit_all();
        self.check();
    }

    /// Deliver everything in flight, both ways, until both sides are quiet.
    fn pump(&mut self) {
        for _ in 0..64 {
            self.transmit_all();
            if self.to_server.is_empty() && self.to_client.is_empty() {
                return;
            }
            self.deliver(true, usize::MAX);
            self.deliver(false, usize::MAX);
        }
        panic!("the sessions never went quiet");
    }

    fn end(&mut self, client: bool) -> &mut End {
        if client {
            &mut self.client
        } else {
            &mut self.server
        }
    }

    fn pipe(&mut self, to_server: bool) -> &mut VecDeque<Vec<u8>> {
        if to_server {
            &mut self.to_server
        } else {
            &mut self.to_client
        }
    }

    /// The properties that hold under any schedule.
    fn check(&self) {
        for (from, to, name) in [
            (&self.client, &self.server, "server"),
            (&self.server, &self.client, "client"),
        ] {
            assert!(
                from.sent.starts_with(&to.delivered),
                "the {name} delivered {} bytes that are not a prefix of the {} sent",
                to.delivered.len(),
                from.sent.len()
            );
        }
    }

    fn apply(&mut self, op: Op) {
        let now = self.now;
        match op {
            Op::Send(client, len) => {
                let (end, pipe) = if client {
                    (&mut self.client, &mut self.to_server)
                } else {
                    (&mut self.server, &mut self.to_client)
                };
                end.send(now, usize::from(len), pipe);
            }
            Op::Deliver(to_server, n) => self.deliver(to_server, usize::from(n)),
            Op::Advance(secs) => {
                // The network delivers within a round trip; time passes between bursts.
                self.pump();
                self.now += Duration::from_secs(u64::from(secs));
                self.client.session.handle_timeout(self.now);
                self.server.session.handle_timeout(self.now);
                self.transmit_all();
            }
            Op::KeyUpdate(client) => self.end(client).session.update_keys(),
            Op::Rehandshake(client) => self.end(client).session.rehandshake(),
            Op::Ping(client) => self.end(client).session.ping(),
            Op::Close(client) => {
                // An application closes only an established session (closing earlier
                // abandons it, by design).
                let end = self.end(client);
                if end.session.is_established() {
                    end.session.close();
                }
            }
            Op::Drop(to_server, i) => {
                let pipe = self.pipe(to_server);
                if !pipe.is_empty() {
                    let i = i % pipe.len();
                    pipe.remove(i);
                }
            }
            Op::Duplicate(to_server, i) => {
                let pipe = self.pipe(to_server);
                if !pipe.is_empty() {
                    let frame = pipe[i % pipe.len()].clone();
                    pipe.push_back(frame);
                }
            }
            Op::Reorder(to_server, i, j) => {
                let pipe = self.pipe(to_server);
                if !pipe.is_empty() {
                    let len = pipe.len();
                    pipe.swap(i % len, j % len);
                }
            }
            Op::Corrupt(to_server, i, at, x) => {
                let pipe = self.pipe(to_server);
                if !pipe.is_empty() {
                    let len = pipe.len();
                    let frame = &mut pipe[i % len];
                    if !frame.is_empty() {
                        let at = at % frame.len();
                        frame[at] ^= x;
                    }
                }
            }
        }
        self.transmit_all();
        self.check();
    }
}

fn patterns() -> impl Strategy<Value = Pattern> {
    prop::sample::select(vec![Pattern::NN, Pattern::XX, Pattern::IK, Pattern::NK])
}

fn suites() -> impl Strategy<Value = Suite> {
    prop::sample::select(vec![
        Suite::Aes128Gcm,
        Suite::Aes256Gcm,
        Suite::ChaCha20Poly1305,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Honest network: in order, nothing lost; the clock, key updates, re-handshakes and
    /// closes come at any time.
    #[test]
    fn honest_schedules_deliver_everything_and_agree_on_the_counts(
        ops in prop::collection::vec(honest_op(), 1..60),
        pattern in patterns(),
        suite in suites(),
        key_update_records in prop::sample::select(vec![2u64, 5, 1 << 20]),
    ) {
        let mut w = World::new(pattern, suite, key_update_records);
        w.transmit_all();
        for op in ops {
            w.apply(op);
        }
        w.pump();
        for end in [&w.client, &w.server] {
            let s = &end.session;
            prop_assert!(
                s.is_established() || matches!(s.close_reason(), Some(CloseReason::Clean)),
                "{:?}: {:?}", s, s.close_reason()
            );
        }
        prop_assert!(!w.client.failed && !w.server.failed);
        prop_assert_eq!(&w.server.delivered, &w.client.sent);
        prop_assert_eq!(&w.client.delivered, &w.server.sent);
        // Both close; each side's acknowledgement confirms exactly what it sent.
        w.client.session.close();
        w.server.session.close();
        w.pump();
        prop_assert!(w.client.session.close_reason().is_some_and(|r| matches!(r, CloseReason::Clean)),
            "{:?}", w.client.session.close_reason());
        prop_assert!(w.server.session.close_reason().is_some_and(|r| matches!(r, CloseReason::Clean)),
            "{:?}", w.server.session.close_reason());
        prop_assert_eq!(w.client.session.acknowledged(), Some(w.client.sent.len() as u64));
        prop_assert_eq!(w.server.session.acknowledged(), Some(w.server.sent.len() as u64));
        prop_assert!(w.client.session.handle_eof(w.now).is_ok());
        prop_assert!(w.server.session.handle_eof(w.now).is_ok());
    }

    /// Any network: frames dropped, duplicated, reordered, corrupted. Nothing is delivered
    /// that was not sent, nor out of order; a clean end of stream only after the peer's close.
    #[test]
    fn faulty_schedules_never_deliver_what_was_not_sent(
        ops in prop::collection::vec(any_op(), 1..60),
        pattern in patterns(),
        suite in suites(),
        key_update_records in prop::sample::select(vec![2u64, 1 << 20]),
    ) {
        let mut w = World::new(pattern, suite, key_update_records);
        w.transmit_all();
        for op in ops {
            w.apply(op);
        }
        w.pump();
        w.check();
        for end in [&mut w.client, &mut w.server] {
            if end.session.handle_eof(w.now).is_ok() {
                prop_assert!(end.session.is_peer_closed() || end.session.close_reason().is_some_and(|r| matches!(r, CloseReason::Clean)),
                    "end of stream accepted as clean without the peer's close");
            }
        }
    }
}

/// Regression (found by the honest schedule): both sides close at once, and the client
/// reads the server's close and, right behind it, the server's acknowledgement of the
/// client's close in one batch, before it sent its own acknowledgement. That used to fail
/// with "record after the peer's close"; both sides must end clean, each acknowledged.
#[test]
fn simultaneous_close_with_the_acknowledgement_in_the_same_read_is_clean() {
    let mut w = World::new(Pattern::NN, Suite::Aes256Gcm, 1 << 20);
    w.pump();
    w.apply(Op::Send(true, 10));
    w.apply(Op::Send(false, 20));
    w.client.session.close();
    w.server.session.close();
    w.transmit_all();
    // The server reads the client's data and close and answers (its acknowledgement
    // follows its own close); only then does the client read anything.
    w.deliver(true, usize::MAX);
    assert!(
        w.to_client.len() >= 3,
        "data, close and acknowledgement in flight"
    );
    w.deliver(false, usize::MAX);
    w.pump();
    for end in [&w.client, &w.server] {
        assert!(
            matches!(end.session.close_reason(), Some(CloseReason::Clean)),
            "{:?}",
            end.session.close_reason()
        );
    }
    assert_eq!(w.client.session.acknowledged(), Some(10));
    assert_eq!(w.server.session.acknowledged(), Some(20));
    assert_eq!(w.server.delivered.len(), 10);
    assert_eq!(w.client.delivered.len(), 20);
}
