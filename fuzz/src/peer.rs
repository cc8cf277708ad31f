//! `vpn_peer`: two VPN [`Peer`]s driven by a schedule read from the input (issue 17,
//! item 2; the same world as `crates/sessionkey-proto/tests/schedule_vpn.rs`).
//!
//! Input: a flags byte (bit 0: honest; bit 1: hybrid; bit 2: a pre-shared key; bits 3-4:
//! the suite), then events, each an op byte and its arguments:
//!
//! | op % 9 | event | arguments |
//! | --- | --- | --- |
//! | 0 | A (bit 7 of the op: B) seals a packet | length byte |
//! | 1 | deliver the first packet in flight towards A (bit 7: B) | |
//! | 2 | deliver the packet at an index (out of order) | index byte |
//! | 3 | drop a packet in flight | index byte |
//! | 4 | duplicate a packet in flight | index byte |
//! | 5 | XOR a byte of a packet in flight | index, u16 position, XOR byte |
//! | 6 | time passes with packets in flight | tenths of a second (u16) |
//! | 7 | A (bit 7: B) starts a handshake now | |
//! | 8 | the network empties, then time passes | tenths of a second (u16) |
//!
//! Honest inputs use only 0, 1, 7 and 8; their handshakes may cross (both sides initiate at
//! once), and both sides must still settle on one session.
//!
//! Always: every payload opened is one the other side sealed, opened at most once. Honest:
//! at the end, every sealed packet was opened and the counters agree each way.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sessionkey_proto::keys::{Identity, Psk};
use sessionkey_proto::record::datagram::HEADER_LEN;
use sessionkey_proto::suite::Suite;
use sessionkey_proto::vpn::handshake::read_initiation;
use sessionkey_proto::vpn::message::{self, Message, MAX_HANDSHAKE_LEN};
use sessionkey_proto::vpn::{Local, Peer, PeerConfig, Timing};

use crate::{FixedRng, Input, SUITES};

#[derive(Debug, Clone)]
enum Op {
    Send(bool, u16),
    Deliver(bool),
    Advance(u16),
    Rehandshake(bool),
    DeliverAt(bool, usize),
    Drop(bool, usize),
    Duplicate(bool, usize),
    Corrupt(bool, usize, usize, u8),
    Delay(u16),
}

struct Side {
    identity: Arc<Identity>,
    peer: Peer,
    addr: SocketAddr,
    next_index: u32,
    rng: FixedRng,
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
    s.parse().expect("a peer")
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
        let ia = Arc::new(Identity::from_secret_bytes(&[0x51; 32]).expect("fixed key"));
        let ib = Arc::new(Identity::from_secret_bytes(&[0x62; 32]).expect("fixed key"));
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
                .expect("a peer"),
                identity: me.clone(),
                addr: addr(mine),
                next_index: u32::from(tag) << 24,
                rng: FixedRng::new(u64::from(tag) + 1),
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

/// Run one input.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let flags = inp.u8();
    let honest = flags & 1 != 0;
    let suite = SUITES[usize::from(flags >> 3 & 3) % SUITES.len()];
    let mut w = World::new(suite, flags & 2 != 0, flags & 4 != 0);
    for _ in 0..128 {
        if inp.is_empty() {
            break;
        }
        let b = inp.u8();
        let side = b & 0x80 != 0;
        let op = match b % 9 {
            0 => Op::Send(side, u16::from(inp.u8()) * 6),
            1 => Op::Deliver(side),
            7 => Op::Rehandshake(side),
            8 => Op::Advance(inp.u16() % 3000),
            _ if honest => continue,
            2 => Op::DeliverAt(side, usize::from(inp.u8())),
            3 => Op::Drop(side, usize::from(inp.u8())),
            4 => Op::Duplicate(side, usize::from(inp.u8())),
            5 => Op::Corrupt(
                side,
                usize::from(inp.u8()),
                usize::from(inp.u16()),
                inp.u8(),
            ),
            _ => Op::Delay(inp.u16() % 3000),
        };
        if let Op::Corrupt(_, _, _, 0) = op {
            continue;
        }
        w.apply(op);
    }
    w.pump();
    assert!(w.a.received.is_subset(&w.b.sent));
    assert!(w.b.received.is_subset(&w.a.sent));
    if honest {
        for (from, to, name) in [(&w.a, &w.b, "A to B"), (&w.b, &w.a, "B to A")] {
            let (tx, rx) = (from.peer.stats(), to.peer.stats());
            assert!(
                from.sent == to.received,
                "{name}: a sealed packet was not opened"
            );
            assert_eq!(tx.tx_packets, rx.rx_packets, "{name}: packets");
            assert_eq!(tx.tx_bytes, rx.rx_bytes, "{name}: bytes");
        }
    }
}

/// Seeds: honest and faulty schedules.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "honest-data".into(),
            vec![1, 0, 10, 0x80, 20, 1, 0x81, 0, 30, 8, 0, 100, 0x80, 5],
        ),
        (
            "honest-rekey".into(),
            vec![1, 0, 10, 8, 4, 176, 0, 10, 0x87, 0x80, 3, 8, 0, 50, 0, 1],
        ),
        (
            "honest-hybrid-psk".into(),
            vec![7, 0, 10, 1, 0x80, 10, 0x81, 7, 0x80, 2],
        ),
        (
            "faulty".into(),
            vec![
                0, 0, 10, 2, 0, 0, 5, 0x80, 4, 0, 5, 0, 0, 3, 9, 6, 0, 200, 3, 0,
            ],
        ),
        (
            "concurrent".into(),
            vec![0, 0, 0, 0x80, 0, 1, 8, 0, 100, 0x80, 0, 0, 0],
        ),
    ]
}
