//! `vpn_message`: the VPN's UDP messages (docs/PROTOCOL.md section 12): initiations,
//! responses, cookie replies and data packets, raw and as genuine messages changed in
//! flight.
//!
//! Input: a mode byte (its low 7 bits modulo 5; bit 7 makes the handshakes hybrid), then the mode's
//! own bytes.
//!
//! 0. Raw bytes through what a receiving VPN runs on a datagram: [`prescreen`],
//!    [`message::parse`], the [`HandshakeGate`] (under load, so cookies are sent), then
//!    [`read_initiation`] and [`Peer::accept_initiation`], [`Peer::handle_response`],
//!    [`Peer::handle_cookie_reply`] or [`Peer::open`] of an established peer. A parsed
//!    message has exactly its type's length.
//! 1. A genuine initiation from A to B, changed by up to 8 (u16 position, XOR byte) edits:
//!    if a byte outside `mac2` changed, the mac1 check or the handshake refuses it; if
//!    none did, B accepts it.
//! 2. A genuine response from B, changed the same way: if a byte outside `mac2` changed,
//!    A refuses it, its handshake stays in flight, and the genuine response then completes
//!    it (a refused response changes nothing).
//! 3. A genuine cookie reply from B (under load), changed the same way: a reply changed
//!    anywhere but its receiver index (which only routes it) is refused and counted; the
//!    genuine one is then accepted.
//! 4. An established pair: A seals packets (lengths from the input), and a script delivers
//!    them to B in any order, duplicated or changed (op byte, index, position, XOR): B opens
//!    only payloads A sealed, each at most once; a changed packet is refused, and the
//!    genuine one still opens afterwards if it had not been opened.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use sessionkey_proto::keys::Identity;
use sessionkey_proto::record::datagram::HEADER_LEN;
use sessionkey_proto::suite::Suite;
use sessionkey_proto::vpn::handshake::read_initiation;
use sessionkey_proto::vpn::message::{self, Message, COOKIE_REPLY_LEN, MAX_HANDSHAKE_LEN};
use sessionkey_proto::vpn::{
    prescreen, HandshakeGate, Local, Mac1Verifier, Peer, PeerConfig, Screen, Timing,
};

use crate::{FixedRng, Input};

const MAC_LEN: usize = 16;
const A_ADDR: &str = "192.0.2.1:51820";
const B_ADDR: &str = "192.0.2.2:51820";
const WALL: u64 = 1_700_000_000_000_000_000;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("fixed address")
}

fn identity(byte: u8) -> Arc<Identity> {
    Arc::new(Identity::from_secret_bytes(&[byte; 32]).expect("fixed key"))
}

fn identities() -> &'static (Arc<Identity>, Arc<Identity>) {
    static IDS: OnceLock<(Arc<Identity>, Arc<Identity>)> = OnceLock::new();
    IDS.get_or_init(|| (identity(0x31), identity(0x42)))
}

/// A's (`a`) or B's peer object for the other side.
fn peer(a: bool, hybrid: bool, now: Instant) -> Peer {
    let (ia, ib) = identities();
    let (me, other, endpoint) = if a {
        (ia, ib, B_ADDR)
    } else {
        (ib, ia, A_ADDR)
    };
    Peer::new(
        Local {
            identity: me.clone(),
            suite: Suite::ChaCha20Poly1305,
            hybrid,
            timing: Timing::default(),
        },
        PeerConfig {
            public_key: *other.public_key(),
            psk: None,
            endpoint: Some(addr(endpoint)),
            persistent_keepalive: None,
        },
        now,
    )
    .expect("a peer")
}

/// The edits of modes 1-3: up to 8 (u16 position, XOR byte) pairs. Returns whether a
/// byte for which `protected` holds changed.
fn tamper(inp: &mut Input<'_>, bytes: &mut [u8], protected: impl Fn(usize) -> bool) -> bool {
    let original = bytes.to_vec();
    for _ in 0..8 {
        if inp.is_empty() {
            break;
        }
        let pos = usize::from(inp.u16()) % bytes.len();
        bytes[pos] ^= inp.u8();
    }
    (0..bytes.len()).any(|i| protected(i) && bytes[i] != original[i])
}

/// The world of one input: A, B, B's gate, and the clock.
struct Pair {
    now: Instant,
    a: Peer,
    b: Peer,
    gate: HandshakeGate,
    rng: FixedRng,
}

impl Pair {
    fn new(hybrid: bool) -> Self {
        let now = Instant::now();
        Self {
            now,
            a: peer(true, hybrid, now),
            b: peer(false, hybrid, now),
            gate: HandshakeGate::new(identities().1.public_key(), 16).expect("a gate"),
            rng: FixedRng::new(1),
        }
    }

    fn initiation(&mut self) -> Vec<u8> {
        let mut out = vec![0u8; MAX_HANDSHAKE_LEN];
        let sent = self
            .a
            .create_initiation(self.now, WALL, 7, &mut self.rng, &mut out)
            .expect("an initiation")
            .expect("the endpoint is known");
        out.truncate(sent.len);
        out
    }

    /// B's whole receive path for a handshake message; returns a response if it wrote one.
    fn b_receive_initiation(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        let Ok(Message::Initiation(init)) = message::parse(bytes) else {
            return None;
        };
        if !Mac1Verifier::new(identities().1.public_key()).verify(bytes) {
            return None;
        }
        let read = read_initiation(&identities().1, &init, true).ok()?;
        let mut out = vec![0u8; MAX_HANDSHAKE_LEN];
        let n = self
            .b
            .accept_initiation(self.now, read, addr(A_ADDR), 9, &mut out)
            .ok()?;
        out.truncate(n);
        Some(out)
    }

    /// A's receive path for a response; whether it completed the handshake.
    fn a_receive_response(&mut self, bytes: &[u8]) -> bool {
        let Ok(Message::Response(r)) = message::parse(bytes) else {
            return false;
        };
        if !Mac1Verifier::new(identities().0.public_key()).verify(bytes) {
            return false;
        }
        self.a.handle_response(self.now, &r, addr(B_ADDR)).is_ok()
    }

    /// Handshake, then A's confirming keepalive opens at B.
    fn establish(&mut self) {
        let init = self.initiation();
        let resp = self.b_receive_initiation(&init).expect("a response");
        assert!(self.a_receive_response(&resp), "the genuine response");
        let mut buf = vec![0u8; HEADER_LEN + 16];
        let (n, _) = self.a.seal(self.now, &mut buf, 0).expect("a keepalive");
        self.b
            .open(self.now, addr(A_ADDR), &mut buf[..n])
            .expect("the keepalive opens");
    }
}

/// Run one input.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let hybrid = mode & 0x80 != 0;
    match (mode & 0x7f) % 5 {
        0 => raw(&mut inp, hybrid),
        1 => tampered_initiation(&mut inp, hybrid),
        2 => tampered_response(&mut inp, hybrid),
        3 => tampered_cookie_reply(&mut inp, hybrid),
        _ => data_script(&mut inp),
    }
}

fn raw(inp: &mut Input<'_>, hybrid: bool) {
    let mut pair = Pair::new(hybrid);
    let flags = inp.u8();
    if flags & 1 != 0 {
        pair.establish();
    }
    let bytes = inp.rest();
    let mac1 = Mac1Verifier::new(identities().1.public_key());
    std::hint::black_box(prescreen(&mac1, bytes));
    let now = pair.now;
    match message::parse(bytes) {
        Ok(Message::Initiation(init)) => {
            assert_eq!(bytes.len(), message::initiation_len(init.hybrid));
            let mut reply = [0u8; COOKIE_REPLY_LEN];
            let queued = usize::from(flags >> 1);
            let _ = pair.gate.screen(
                now,
                &mut pair.rng,
                bytes,
                addr(A_ADDR),
                init.sender_index,
                queued,
                &mut reply,
            );
            if let Some(resp) = pair.b_receive_initiation(bytes) {
                std::hint::black_box(resp);
            }
        }
        Ok(Message::Response(r)) => {
            assert!(
                bytes.len() == message::response_len(false)
                    || bytes.len() == message::response_len(true),
                "a response of {} bytes parsed",
                bytes.len()
            );
            let _ = pair.a.handle_response(now, &r, addr(B_ADDR));
        }
        Ok(Message::CookieReply(c)) => {
            assert_eq!(bytes.len(), COOKIE_REPLY_LEN);
            let _ = pair.a.handle_cookie_reply(now, &c);
        }
        Ok(Message::Data) => {
            let mut copy = bytes.to_vec();
            if let Ok(p) = pair.b.open(now, addr(A_ADDR), &mut copy) {
                // B's only genuine packet was A's keepalive, opened already.
                panic!("B opened {} bytes nobody sealed", p.len());
            }
        }
        Err(e) => {
            std::hint::black_box(e.to_string());
        }
    }
}

fn tampered_initiation(inp: &mut Input<'_>, hybrid: bool) {
    let mut pair = Pair::new(hybrid);
    let mut init = pair.initiation();
    let len = init.len();
    let changed = tamper(inp, &mut init, |i| i < len - MAC_LEN);
    let accepted = pair.b_receive_initiation(&init).is_some();
    if changed {
        assert!(!accepted, "B accepted an initiation changed in flight");
    } else {
        assert!(
            accepted,
            "B refused a genuine initiation (only mac2 changed)"
        );
    }
}

fn tampered_response(inp: &mut Input<'_>, hybrid: bool) {
    let mut pair = Pair::new(hybrid);
    let init = pair.initiation();
    let genuine = pair.b_receive_initiation(&init).expect("a response");
    let mut resp = genuine.clone();
    let end = genuine.len() - MAC_LEN;
    let changed = tamper(inp, &mut resp, |i| i < end);
    let before = pair.a.stats();
    let completed = pair.a_receive_response(&resp);
    if !changed {
        assert!(
            completed,
            "A refused a genuine response (only mac2 changed)"
        );
        return;
    }
    assert!(!completed, "A accepted a response changed in flight");
    let status = pair.a.status(pair.now);
    assert!(status.handshaking, "a refused response ended the handshake");
    assert_eq!(status.epoch, None, "a refused response installed keys");
    assert_eq!(status.stats.handshakes, before.handshakes);
    assert!(
        pair.a_receive_response(&genuine),
        "the genuine response failed after a changed one was refused"
    );
}

fn tampered_cookie_reply(inp: &mut Input<'_>, hybrid: bool) {
    let mut pair = Pair::new(hybrid);
    let init = pair.initiation();
    let Ok(Message::Initiation(parsed)) = message::parse(&init) else {
        panic!("a genuine initiation does not parse");
    };
    let mut reply = [0u8; COOKIE_REPLY_LEN];
    let screen = pair
        .gate
        .screen(
            pair.now,
            &mut pair.rng,
            &init,
            addr(A_ADDR),
            parsed.sender_index,
            1 << 20,
            &mut reply,
        )
        .expect("screening");
    assert!(
        matches!(screen, Screen::SendCookie),
        "{screen:?} under load"
    );
    let genuine = reply;
    let mut changed_reply = reply;
    // Bytes 4..8 are the receiver index: the driver finds the handshake by it, and the
    // reply's encryption does not cover it (as WireGuard's).
    let changed = tamper(inp, &mut changed_reply, |i| !(4..8).contains(&i));
    let accept = |pair: &mut Pair, bytes: &[u8]| match message::parse(bytes) {
        Ok(Message::CookieReply(c)) => pair.a.handle_cookie_reply(pair.now, &c).is_ok(),
        _ => false,
    };
    if changed {
        let before = pair.a.stats().cookie_replies_refused;
        assert!(
            !accept(&mut pair, &changed_reply),
            "A accepted a cookie reply changed in flight"
        );
        if matches!(message::parse(&changed_reply), Ok(Message::CookieReply(_))) {
            assert_eq!(pair.a.stats().cookie_replies_refused, before + 1);
        }
    }
    assert!(
        accept(&mut pair, &genuine),
        "the genuine cookie reply was refused"
    );
}

fn data_script(inp: &mut Input<'_>) {
    let mut pair = Pair::new(false);
    pair.establish();
    let count = usize::from(inp.u8() % 16) + 1;
    let mut packets = Vec::new();
    let mut payloads = Vec::new();
    for i in 0..count {
        let len = usize::from(inp.u8());
        let mut payload = inp.bytes_padded(len);
        payload.insert(0, i as u8); // distinct payloads
        let mut buf = vec![0u8; HEADER_LEN + payload.len() + 16];
        buf[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(&payload);
        let (n, _) = pair
            .a
            .seal(pair.now, &mut buf, payload.len())
            .expect("sealing");
        buf.truncate(n);
        packets.push(buf);
        payloads.push(payload);
    }
    let mut opened = vec![false; count];
    for _ in 0..64 {
        if inp.is_empty() {
            break;
        }
        let op = inp.u8();
        let i = usize::from(inp.u8()) % count;
        let mut packet = packets[i].clone();
        let mut changed = false;
        if op & 1 != 0 {
            let pos = usize::from(inp.u16()) % packet.len();
            let x = inp.u8();
            packet[pos] ^= x;
            changed = x != 0;
        }
        if op & 2 != 0 {
            packet.truncate(usize::from(inp.u8()) % (packet.len() + 1));
            changed |= packet.len() < packets[i].len();
        }
        match pair.b.open(pair.now, addr(A_ADDR), &mut packet) {
            Ok(p) => {
                assert!(!changed, "B opened a packet changed in flight");
                assert_eq!(p, &payloads[i][..], "B opened another payload");
                assert!(!opened[i], "B opened packet {i} twice");
                opened[i] = true;
            }
            Err(_) => {
                if !changed {
                    assert!(opened[i], "B refused genuine packet {i}, never opened");
                }
            }
        }
    }
}

/// Genuine seeds: a few raw messages, and scripts for every mode.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for hybrid in [false, true] {
        let h = if hybrid { 0x80 } else { 0 };
        let mut pair = Pair::new(hybrid);
        let init = pair.initiation();
        let resp = pair.b_receive_initiation(&init).expect("a response");
        let mut s = vec![h, 0];
        s.extend_from_slice(&init);
        seeds.push((format!("raw-initiation-{hybrid}"), s));
        let mut s = vec![h, 1];
        s.extend_from_slice(&resp);
        seeds.push((format!("raw-response-{hybrid}"), s));
        seeds.push((format!("initiation-{hybrid}"), vec![h | 1, 0, 40, 1]));
        seeds.push((
            format!("initiation-mac2-{hybrid}"),
            vec![h | 1, 0xff, 0xff, 1],
        ));
        seeds.push((format!("response-{hybrid}"), vec![h | 2, 0, 20, 4]));
        seeds.push((format!("cookie-{hybrid}"), vec![h | 3, 0, 30, 2]));
    }
    let mut pair = Pair::new(false);
    pair.establish();
    let mut buf = vec![0u8; HEADER_LEN + 20 + 16];
    let (n, _) = pair.a.seal(pair.now, &mut buf, 20).expect("sealing");
    let mut s = vec![0, 1];
    s.extend_from_slice(&buf[..n]);
    seeds.push(("raw-data".into(), s));
    seeds.push((
        "data-script".into(),
        vec![
            4, 3, 10, 0, 20, 1, 0, 0, 0, 1, 0, 1, 0, 5, 1, 2, 1, 0, 10, 0, 2,
        ],
    ));
    seeds
}
