//! A pair of VPN [`Peer`]s driven by arbitrary event schedules (issue 17, item 2): packets
//! sent both ways, delivered in any order, dropped, duplicated, corrupted; the virtual
//! clock advances (retransmissions, keepalives, rekeys, expiry); either side forces a new
//! handshake. Both sides act on their timers after every event, as the driver does.
//!
//! Always: every payload a side opens is one the other side sealed, opened at most once.
//! For an honest schedule (first in, first out, nothing lost, duplicated or corrupted;
//! the network empties before time passes): every packet sealed is opened, and the two
//! sides' counters agree (packets and bytes, each way). Honest schedules include crossing
//! handshakes (both sides initiate at once, or one initiates while the other's new session
//! awaits confirmation): both sides must settle on one session, or packets are refused
//! once the grace period drops the other (the regression file keeps such a schedule).

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use sessionkey_proto::crypto::{SecureRandom, SystemRandom};
use sessionkey_proto::keys::{Identity, Psk};
use sessionkey_proto::record::datagram::HEADER_LEN;
use sessionkey_proto::suite::Suite;
use sessionkey_proto::vpn::handshake::read_initiation;
use sessionkey_proto::vpn::message::{self, Message, MAX_HANDSHAKE_LEN};
use sessionkey_proto::vpn::{Local, Peer, PeerConfig, Timing};
use sessionkey_proto::Error;

/// Deterministic randomness for jitter (xorshift64; not for keys).
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

/// One event. `a` is true for side A; indexes are taken modulo what exists.
#[derive(Debug, Clone)]
enum Op {
    /// Side `a` seals a packet with a `len`-byte payload (at least its 8-byte tag).
    Send(bool, u16),
    /// Deliver the first packet in flight towards `a`.
    Deliver(bool),
    /// Advance the virtual clock by this many hundred milliseconds.
    Advance(u16),
    /// Side `a` starts a new handshake now.
    Rehandshake(bool),
    // Network faults (not in honest schedules):
    /// Deliver the packet at this index in flight (out of order).
    DeliverAt(bool, usize),
    /// Drop a packet in flight.
    Drop(bool, usize),
    /// Duplicate a packet in flight.
    Duplicate(bool, usize),
    /// XOR one byte of a packet in flight (`x` is never 0).
    Corrupt(bool, usize, usize, u8),
    /// Time passes with packets still in flight.
    Delay(u16),
}

fn honest_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<bool>(), 0u16..1400).prop_map(|(a, n)| Op::Send(a, n)),
        6 => any::<bool>().prop_map(Op::Deliver),
        2 => prop_oneof![0u16..200, 0u16..2500].prop_map(Op::Advance),
        1 => any::<bool>().prop_map(Op::Rehandshake),
    ]
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => honest_op(),
        2 => (any::<bool>(), any::<usize>()).prop_map(|(a, i)| Op::DeliverAt(a, i)),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(a, i)| Op::Drop(a, i)),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(a, i)| Op::Duplicate(a, i)),
        1 => (any::<bool>(), any::<usize>(), any::<usize>(), 1u8..)
            .prop_map(|(a, i, p, x)| Op::Corrupt(a, i, p, x)),
        1 => (0u16..200).prop_map(Op::Delay),
    ]
}

struct Side {
    identity: Arc<Identity>,
    peer: Peer,
    addr: SocketAddr,
    next_index: u32,
    rng: TestRng,
    /// Payloads this side sealed (their first 8 bytes name them).
    sent: HashSet<Vec<u8>>,
    /// Payloads this side opened.
    received: HashSet<Vec<u8>>,
    seq: u32,
    tag: u8,
}

struct World {
    a: Side,
    b: Side,
    now: Instant,
    wall: u64,
    /// Packets in flight towards A and towards B.
    to_a: VecDeque<Vec<u8>>,
    to_b: VecDeque<Vec<u8>>,
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

impl Side {
    /// Act on the timers, then send what they ask for into `out`.
    fn service(&mut self, now: Instant, wall: u64, out: &mut VecDeque<Vec<u8>>) {
        self.peer.handle_timeout(now);
        let _ = self.peer.take_gave_up();
        if self.peer.wants_initiation() {
            self.initiate(now, wall, out);
        }
        if self.peer.wants_keepalive() {
            self.seal(now, &[], out);
        }
    }

    fn initiate(&mut self, now: Instant, wall: u64, out: &mut VecDeque<Vec<u8>>) {
        let mut buf = vec![0; MAX_HANDSHAKE_LEN];
        self.next_index += 1;
        if let Ok(Some(sent)) =
            self.peer
                .create_initiation(now, wall, self.next_index, &mut self.rng, &mut buf)
        {
            buf.truncate(sent.len);
            out.push_back(buf);
        }
    }

    fn seal(&mut self, now: Instant, payload: &[u8], out: &mut VecDeque<Vec<u8>>) -> bool {
        let mut buf = vec![0; HEADER_LEN + payload.len() + 16];
        buf[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
        match self.peer.seal(now, &mut buf, payload.len()) {
            Ok((n, _)) => {
                buf.truncate(n);
                out.push_back(buf);
                true
            }
            Err(_) => false,
        }
    }

    fn send(&mut self, now: Instant, len: usize, out: &mut VecDeque<Vec<u8>>) {
        self.seq += 1;
        let mut payload = vec![self.tag; len.max(8)];
        payload[1..5].copy_from_slice(&self.seq.to_be_bytes());
        if self.seal(now, &payload, out) {
            self.sent.insert(payload);
        }
    }

    /// Take one packet from the other side (`other_sent`: what it sealed), answering
    /// handshake messages into `out`.
    fn receive(
        &mut self,
        now: Instant,
        mut packet: Vec<u8>,
        from: SocketAddr,
        other_sent: &HashSet<Vec<u8>>,
        out: &mut VecDeque<Vec<u8>>,
    ) {
        match message::parse(&packet) {
            Ok(Message::Initiation(init)) => {
                let Ok(read) = read_initiation(&self.identity, &init, true) else {
                    return;
                };
                let mut buf = vec![0; MAX_HANDSHAKE_LEN];
                self.next_index += 1;
                if let Ok(n) =
                    self.peer
                        .accept_initiation(now, read, from, self.next_index, &mut buf)
                {
                    buf.truncate(n);
                    out.push_back(buf);
                }
            }
            Ok(Message::Response(r)) => {
                let _ = self.peer.handle_response(now, &r, from);
            }
            Ok(Message::CookieReply(c)) => {
                let _ = self.peer.handle_cookie_reply(now, &c);
            }
            Ok(Message::Data) => {
                if let Ok(payload) = self.peer.open(now, from, &mut packet) {
                    if !payload.is_empty() {
                        assert!(
                            other_sent.contains(&payload[..]),
                            "opened a payload the other side never sealed"
                        );
                        assert!(
                            self.received.insert(payload.to_vec()),
                            "opened the same packet twice"
                        );
                    }
                }
            }
            Err(_) => {}
        }
    }
}

impl World {
    fn new(suite: Suite, hybrid: bool, psk: bool) -> Self {
        let now = Instant::now();
        let ia = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
        let ib = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
        let side =
            |me: &Arc<Identity>, other: &Arc<Identity>, mine: &str, theirs: &str, tag| Side {
                peer: Peer::new(
                    Local {
                        identity: me.clone(),
                        suite,
                        hybrid,
                        timing: Timing::default(),
                    },
                    PeerConfig {
                        public_key: *other.public_key(),
                        psk: psk.then(|| Psk::from_bytes([7; 32])),
                        endpoint: Some(addr(theirs)),
                        persistent_keepalive: None,
                    },
                    now,
                )
                .unwrap(),
                identity: me.clone(),
                addr: addr(mine),
                next_index: u32::from(tag) << 24,
                rng: TestRng(u64::from(tag) + 1),
                sent: HashSet::new(),
                received: HashSet::new(),
                seq: 0,
                tag,
            };
        Self {
            a: side(&ia, &ib, "192.0.2.1:51820", "192.0.2.2:51820", 1),
            b: side(&ib, &ia, "192.0.2.2:51820", "192.0.2.1:51820", 2),
            now,
            wall: 1_700_000_000_000_000_000,
            to_a: VecDeque::new(),
            to_b: VecDeque::new(),
        }
    }

    /// Both sides act on their timers.
    fn service(&mut self) {
        self.a.service(self.now, self.wall, &mut self.to_b);
        self.b.service(self.now, self.wall, &mut self.to_a);
    }

    /// Deliver the packet at `index` in flight towards A (`to_a`) or B.
    fn deliver(&mut self, to_a: bool, index: usize) {
        let (me, other, inbound, outbound) = if to_a {
            (&mut self.a, &self.b, &mut self.to_a, &mut self.to_b)
        } else {
            (&mut self.b, &self.a, &mut self.to_b, &mut self.to_a)
        };
        if inbound.is_empty() {
            return;
        }
        let Some(packet) = inbound.remove(index % inbound.len()) else {
            return;
        };
        me.receive(self.now, packet, other.addr, &other.sent, outbound);
    }

    /// Deliver everything in flight, first in first out, until both sides are quiet.
    fn pump(&mut self) {
        for _ in 0..1000 {
            self.service();
            if self.to_a.is_empty() && self.to_b.is_empty() {
                return;
            }
            while !self.to_b.is_empty() {
                self.deliver(false, 0);
            }
            while !self.to_a.is_empty() {
                self.deliver(true, 0);
            }
        }
        panic!("the peers never went quiet");
    }

    fn advance(&mut self, tenths: u16) {
        let d = Duration::from_millis(u64::from(tenths) * 100);
        self.now += d;
        self.wall += d.as_nanos() as u64;
    }

    fn pipe(&mut self, to_a: bool) -> &mut VecDeque<Vec<u8>> {
        if to_a {
            &mut self.to_a
        } else {
            &mut self.to_b
        }
    }

    fn apply(&mut self, op: Op) {
        let now = self.now;
        match op {
            Op::Send(true, n) => self.a.send(now, usize::from(n), &mut self.to_b),
            Op::Send(false, n) => self.b.send(now, usize::from(n), &mut self.to_a),
            Op::Deliver(to_a) => self.deliver(to_a, 0),
            Op::DeliverAt(to_a, i) => self.deliver(to_a, i),
            Op::Advance(tenths) => {
                self.pump();
                self.advance(tenths);
            }
            Op::Delay(tenths) => self.advance(tenths),
            Op::Rehandshake(true) => self.a.initiate(now, self.wall, &mut self.to_b),
            Op::Rehandshake(false) => self.b.initiate(now, self.wall, &mut self.to_a),
            Op::Drop(to_a, i) => {
                let pipe = self.pipe(to_a);
                if !pipe.is_empty() {
                    let i = i % pipe.len();
                    pipe.remove(i);
                }
            }
            Op::Duplicate(to_a, i) => {
                let pipe = self.pipe(to_a);
                if !pipe.is_empty() {
                    let p = pipe[i % pipe.len()].clone();
                    pipe.push_back(p);
                }
            }
            Op::Corrupt(to_a, i, at, x) => {
                let pipe = self.pipe(to_a);
                if !pipe.is_empty() {
                    let len = pipe.len();
                    let p = &mut pipe[i % len];
                    if !p.is_empty() {
                        let at = at % p.len();
                        p[at] ^= x;
                    }
                }
            }
        }
        self.service();
    }
}

fn suites() -> impl Strategy<Value = Suite> {
    prop::sample::select(vec![Suite::Aes256Gcm, Suite::ChaCha20Poly1305])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn honest_schedules_open_every_packet_and_agree_on_the_counts(
        ops in prop::collection::vec(honest_op(), 1..80),
        suite in suites(),
        psk in any::<bool>(),
    ) {
        let mut w = World::new(suite, false, psk);
        for op in ops {
            w.apply(op);
        }
        w.pump();
        for (from, to, name) in [(&w.a, &w.b, "A to B"), (&w.b, &w.a, "B to A")] {
            let (tx, rx) = (from.peer.stats(), to.peer.stats());
            prop_assert_eq!(&from.sent, &to.received, "{}: payloads", name);
            prop_assert_eq!(tx.tx_packets, rx.rx_packets, "{}: packets", name);
            prop_assert_eq!(tx.tx_bytes, rx.rx_bytes, "{}: bytes", name);
        }
        prop_assert_eq!(w.a.peer.stats().rejected, 0);
        prop_assert_eq!(w.b.peer.stats().rejected, 0);
    }

    #[test]
    fn faulty_schedules_open_only_what_was_sealed_and_at_most_once(
        ops in prop::collection::vec(any_op(), 1..80),
        suite in suites(),
        psk in any::<bool>(),
    ) {
        let mut w = World::new(suite, false, psk);
        for op in ops {
            w.apply(op);
        }
        w.pump();
        // Delivering again everything that was ever opened would be a replay: the
        // at-most-once assertion in `receive` covers duplicates delivered in the schedule.
        prop_assert!(w.a.received.is_subset(&w.b.sent));
        prop_assert!(w.b.received.is_subset(&w.a.sent));
    }
}

/// Hybrid handshakes are slower: fewer cases, the same properties.
mod hybrid {
    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]

        #[test]
        fn honest_hybrid_schedules_agree(ops in prop::collection::vec(honest_op(), 1..40)) {
            let mut w = World::new(Suite::Aes256Gcm, true, false);
                for op in ops {
                w.apply(op);
            }
            w.pump();
            prop_assert_eq!(&w.a.sent, &w.b.received);
            prop_assert_eq!(&w.b.sent, &w.a.received);
        }

        #[test]
        fn faulty_hybrid_schedules_open_only_what_was_sealed(
            ops in prop::collection::vec(any_op(), 1..40),
        ) {
            let mut w = World::new(Suite::Aes256Gcm, true, false);
            for op in ops {
                w.apply(op);
            }
            w.pump();
        }
    }
}
