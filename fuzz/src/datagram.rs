//! `record_datagram`: packets arriving at a [`DatagramSession`].
//!
//! Input: a mode byte, then the mode's own bytes. Bits 1-2 pick the suite, bits 3-4 the
//! grace period, bit 5 a small failure budget.
//!
//! - mode even: the rest is one packet for `open_in_place` (after a fuzzer-chosen number of
//!   genuine packets were accepted, so the replay window is not empty).
//! - mode odd: a script: seal genuine packets, mutate, truncate, duplicate and open them,
//!   rekey both sides, advance the clock, open raw packets.
//!
//! Both peers use fixed secrets (a different pair per key generation), so every input
//! replays exactly. Besides "never panics", every packet `open_in_place` accepts is checked
//! against a model: its epoch must be the current one, or the previous one within the grace
//! period; it must be byte for byte the sealing of its plaintext at its header's counter
//! under that epoch's key (a packet sealed in this execution must also decrypt to what was
//! sealed); and its (key, counter) must not have been accepted before (no replay).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sessionkey_proto::keys::SecretKey;
use sessionkey_proto::record::datagram::{
    peek_receiver_index, DatagramConfig, DatagramSession, HEADER_LEN, OVERHEAD,
};
use sessionkey_proto::suite::Suite;

use crate::{Input, SUITES};

const A_INDEX: u32 = 7;
const B_INDEX: u32 = 9;

/// Script operations (the byte is taken modulo the count).
pub mod op {
    /// A seals a packet: a length byte (>= 0xf0: (b - 0xef) * 256 bytes), then the payload.
    pub const SEAL: u8 = 0;
    /// B opens stored packet (byte index).
    pub const OPEN: u8 = 1;
    /// XOR byte u16 position (mod length) of stored packet (byte index) with a byte.
    pub const FLIP: u8 = 2;
    /// Truncate stored packet (byte index) to u16 (mod length + 1).
    pub const TRUNCATE: u8 = 3;
    /// Rekey both sides to epoch (byte).
    pub const REKEY: u8 = 4;
    /// Advance the clock by u16 milliseconds (times 16 when the high bit is set) and handle
    /// timeouts.
    pub const ADVANCE: u8 = 5;
    /// B opens a raw packet: a length byte, then the bytes.
    pub const RAW: u8 = 6;
    /// A seals packets that are never delivered (moves B's window when a later one
    /// arrives): (byte) of them, or (byte - 0xef) * 1024 if byte >= 0xf0.
    pub const SKIP: u8 = 7;
    /// Store a copy of stored packet (byte index).
    pub const DUP: u8 = 8;
    /// Overwrite header byte (byte % 16) of stored packet (byte index) with a byte.
    pub const SET_HEADER: u8 = 9;
    /// Number of operations.
    pub const COUNT: u8 = 10;
}

/// Secret of key generation `gen` for packets from A to B (`a_to_b`) or back.
fn secret(gen: u32, a_to_b: bool) -> SecretKey {
    let mut bytes = [0u8; 32];
    bytes[..4].copy_from_slice(&gen.to_be_bytes());
    bytes[4] = u8::from(a_to_b);
    bytes[5..].fill(0xa5);
    SecretKey::from_bytes(bytes)
}

/// A genuine packet, as sealed in this execution.
struct Genuine {
    bytes: Vec<u8>,
    payload: Vec<u8>,
    generation: u32,
    counter: u64,
}

/// No execution seals more packets under one key than this (128 operations of at most
/// 16 * 1024 packets each), so no genuine packet has a higher counter.
const MAX_SEALED_COUNTER: u64 = 128 * 16 * 1024 + 128;

/// What B should hold, and what it accepted.
struct Model {
    suite: Suite,
    genuine: Vec<Genuine>,
    accepted: HashSet<(u32, u64)>,
    generation: u32,
    epoch: u8,
    /// The previous generation's epoch and when its receiving key expires, if it is kept.
    previous: Option<(u8, Instant)>,
}

impl Model {
    /// Check a packet that `open_in_place` accepted: `before` its bytes as given, `plaintext`
    /// what came out.
    ///
    /// The keys are fixed, so a packet sealed in another execution (which libFuzzer may
    /// have learnt from the comparisons below) is as genuine as one sealed in this one. So
    /// "genuine" means: the packet is exactly what sealing its plaintext at its header's
    /// counter gives under the key of the generation its epoch names.
    fn accepted(&mut self, now: Instant, before: &[u8], plaintext: &[u8]) {
        assert!(
            before.len() >= OVERHEAD,
            "accepted a {}-byte packet",
            before.len()
        );
        let epoch = before[1];
        let counter = u64::from_be_bytes(before[8..16].try_into().expect("8 bytes"));
        let generation = if epoch == self.epoch {
            self.generation
        } else {
            let Some((previous, expires)) = self.previous else {
                panic!("accepted a packet of epoch {epoch}, neither current nor kept");
            };
            assert_eq!(epoch, previous, "accepted a packet of an unknown epoch");
            assert!(
                now < expires,
                "packet of the previous epoch accepted after its grace period"
            );
            self.generation - 1
        };
        let sealed_here = self.genuine.iter().find(|g| g.bytes == before);
        match sealed_here {
            Some(g) => {
                assert_eq!((g.generation, g.counter), (generation, counter));
                assert_eq!(
                    plaintext,
                    &g.payload[..],
                    "accepted packet decrypted wrongly"
                );
            }
            None => {
                assert!(
                    counter <= MAX_SEALED_COUNTER,
                    "accepted a packet with counter {counter}, which no execution seals"
                );
                let expected = reseal(self.suite, generation, epoch, counter, plaintext);
                assert_eq!(
                    expected, before,
                    "accepted a packet that is not the sealing of its plaintext at its counter"
                );
            }
        }
        assert!(
            self.accepted.insert((generation, counter)),
            "replay accepted: generation {generation} counter {counter}"
        );
    }
}

/// What A seals as packet number `counter` with `payload` under `generation`'s key.
fn reseal(suite: Suite, generation: u32, epoch: u8, counter: u64, payload: &[u8]) -> Vec<u8> {
    let mut a = DatagramSession::new(
        suite,
        A_INDEX,
        B_INDEX,
        epoch,
        secret(generation, true),
        secret(generation, false),
        DatagramConfig::default(),
    )
    .expect("session");
    let mut skip = [0u8; OVERHEAD];
    for _ in 0..counter {
        a.seal_in_place(&mut skip, 0).expect("seal");
    }
    let mut buf = vec![0u8; payload.len() + OVERHEAD];
    buf[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    let n = a.seal_in_place(&mut buf, payload.len()).expect("seal");
    buf.truncate(n);
    buf
}

/// Run one input.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let suite = SUITES[usize::from(mode >> 1 & 3) % SUITES.len()];
    let grace = [
        Duration::from_secs(10),
        Duration::ZERO,
        Duration::from_millis(500),
        Duration::MAX,
    ][usize::from(mode >> 3 & 3)];
    let config = DatagramConfig {
        grace,
        max_failed_decryptions: if mode & 0x20 != 0 { 3 } else { 1 << 20 },
        ..DatagramConfig::default()
    };
    let new = |local, remote, send, recv| {
        DatagramSession::new(suite, local, remote, 0, send, recv, config).expect("session")
    };
    let mut a = new(A_INDEX, B_INDEX, secret(0, true), secret(0, false));
    let mut b = new(B_INDEX, A_INDEX, secret(0, false), secret(0, true));
    let mut now = Instant::now();

    let mut model = Model {
        suite,
        genuine: Vec::new(),
        accepted: HashSet::new(),
        generation: 0,
        epoch: 0,
        previous: None,
    };
    let mut stored: Vec<Vec<u8>> = Vec::new();

    if mode & 1 == 0 {
        // Warm up the window with genuine packets, then the fuzzer's packet.
        for i in 0..inp.u8() % 8 {
            let mut buf = vec![i; 3 + OVERHEAD];
            let n = a.seal_in_place(&mut buf, 3).expect("seal");
            let mut packet = buf[..n].to_vec();
            b.open_in_place(now, &mut packet).expect("genuine packet");
            model.accepted(now, &buf[..n], &[i; 3]);
        }
        let mut packet = inp.rest().to_vec();
        let _ = peek_receiver_index(&packet);
        let before = packet.clone();
        if let Ok(plain) = b.open_in_place(now, &mut packet) {
            let plain = plain.to_vec();
            model.accepted(now, &before, &plain);
        }
        std::hint::black_box(b.failures());
        return;
    }

    let pick = |i: u8, n: usize| (n > 0).then(|| usize::from(i) % n);

    for _ in 0..128 {
        if inp.is_empty() {
            break;
        }
        match inp.u8() % op::COUNT {
            op::SEAL => {
                let l = inp.u8();
                let len = if l >= 0xf0 {
                    usize::from(l - 0xef) * 256
                } else {
                    usize::from(l)
                };
                let payload = inp.bytes_padded(len);
                let mut buf = vec![0u8; HEADER_LEN + len + 16];
                buf[HEADER_LEN..HEADER_LEN + len].copy_from_slice(&payload);
                let counter = a.packets_sent_this_key();
                if let Ok(n) = a.seal_in_place(&mut buf, len) {
                    assert_eq!(n, len + OVERHEAD);
                    buf.truncate(n);
                    model.genuine.push(Genuine {
                        bytes: buf.clone(),
                        payload,
                        generation: model.generation,
                        counter,
                    });
                    stored.push(buf);
                }
            }
            op::OPEN => {
                if let Some(i) = pick(inp.u8(), stored.len()) {
                    let mut packet = stored[i].clone();
                    let before = packet.clone();
                    if let Ok(plain) = b.open_in_place(now, &mut packet) {
                        let plain = plain.to_vec();
                        model.accepted(now, &before, &plain);
                    }
                }
            }
            op::FLIP => {
                let (i, pos, x) = (inp.u8(), usize::from(inp.u16()), inp.u8());
                if let Some(i) = pick(i, stored.len()) {
                    let p = &mut stored[i];
                    if !p.is_empty() {
                        let len = p.len();
                        p[pos % len] ^= x;
                    }
                }
            }
            op::TRUNCATE => {
                let (i, pos) = (inp.u8(), usize::from(inp.u16()));
                if let Some(i) = pick(i, stored.len()) {
                    let p = &mut stored[i];
                    p.truncate(pos % (p.len() + 1));
                }
            }
            op::REKEY => {
                let epoch = inp.u8();
                let gen = model.generation + 1;
                let ra = a.rekey(now, epoch, secret(gen, true), secret(gen, false));
                let rb = b.rekey(now, epoch, secret(gen, false), secret(gen, true));
                assert_eq!(ra.is_ok(), rb.is_ok(), "peers disagree about a rekey");
                if rb.is_ok() {
                    let expires = now.checked_add(grace).filter(|t| *t > now);
                    model.previous = expires.map(|t| (model.epoch, t));
                    model.generation = gen;
                    model.epoch = epoch;
                    assert_eq!(b.poll_timeout(), expires);
                    assert_eq!(b.previous_epoch(), model.previous.map(|p| p.0));
                }
            }
            op::ADVANCE => {
                let ms = inp.u16();
                let ms = if ms & 0x8000 != 0 {
                    u64::from(ms & 0x7fff) * 16
                } else {
                    u64::from(ms)
                };
                now += Duration::from_millis(ms);
                a.handle_timeout(now);
                b.handle_timeout(now);
                if model.previous.is_some_and(|(_, t)| t <= now) {
                    model.previous = None;
                    assert_eq!(b.previous_epoch(), None, "expired key kept");
                }
            }
            op::RAW => {
                let n = usize::from(inp.u8());
                let mut packet = inp.bytes(n).to_vec();
                let before = packet.clone();
                if let Ok(plain) = b.open_in_place(now, &mut packet) {
                    let plain = plain.to_vec();
                    model.accepted(now, &before, &plain);
                }
            }
            op::SKIP => {
                let b = inp.u8();
                let n = if b >= 0xf0 {
                    usize::from(b - 0xef) * 1024
                } else {
                    usize::from(b)
                };
                let mut buf = [0u8; OVERHEAD];
                for _ in 0..n {
                    if a.seal_in_place(&mut buf, 0).is_err() {
                        break;
                    }
                }
            }
            op::DUP => {
                if let Some(i) = pick(inp.u8(), stored.len()) {
                    stored.push(stored[i].clone());
                }
            }
            _ => {
                let (i, at, v) = (inp.u8(), usize::from(inp.u8()) % HEADER_LEN, inp.u8());
                if let Some(i) = pick(i, stored.len()) {
                    if let Some(byte) = stored[i].get_mut(at) {
                        *byte = v;
                    }
                }
            }
        }
    }
    std::hint::black_box((b.failures(), b.is_closed(), format!("{b:?}")));
}

/// Genuine seeds for this target.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    // Mode 0: a packet with a well-formed header for B, after two genuine ones.
    let mut s = vec![0, 2, 4, 0, 0, 0];
    s.extend_from_slice(&B_INDEX.to_be_bytes());
    s.extend_from_slice(&2u64.to_be_bytes());
    s.extend_from_slice(&[0x33; 20]);
    seeds.push(("raw-packet".into(), s));

    let seal = [op::SEAL, 4, b'p', b'i', b'n', b'g'];
    // Seal, open, replay, tamper.
    let mut s = vec![1];
    s.extend_from_slice(&seal);
    s.extend_from_slice(&[op::OPEN, 0, op::OPEN, 0, op::DUP, 0, op::FLIP, 1, 0, 20, 1]);
    s.extend_from_slice(&[op::OPEN, 1, op::TRUNCATE, 0, 0, 30, op::OPEN, 0]);
    seeds.push(("script-replay-tamper".into(), s));
    // Out of order, a window jump, then a late packet.
    let mut s = vec![1 | 2 << 1];
    s.extend_from_slice(&seal);
    s.extend_from_slice(&seal);
    s.extend_from_slice(&[op::SKIP, 0xf8]);
    s.extend_from_slice(&seal);
    s.extend_from_slice(&[op::OPEN, 1, op::OPEN, 2, op::OPEN, 0]);
    seeds.push(("script-window".into(), s));
    // Rekey with grace: old packets during and after it.
    let mut s = vec![1 | 2 << 3];
    s.extend_from_slice(&seal);
    s.extend_from_slice(&[op::REKEY, 1]);
    s.extend_from_slice(&seal);
    s.extend_from_slice(&[
        op::OPEN,
        1,
        op::OPEN,
        0,
        op::ADVANCE,
        0x01,
        0xf4,
        op::OPEN,
        0,
    ]);
    s.extend_from_slice(&[op::REKEY, 0, op::SET_HEADER, 1, 1, 0, op::OPEN, 1]);
    seeds.push(("script-rekey-grace".into(), s));
    // A small failure budget, and a raw packet.
    let mut s = vec![1 | 0x20];
    s.extend_from_slice(&seal);
    s.extend_from_slice(&[op::FLIP, 0, 0, 17, 4, op::OPEN, 0, op::OPEN, 0, op::OPEN, 0]);
    s.extend_from_slice(&[op::OPEN, 0, op::RAW, 32]);
    s.extend_from_slice(&[4, 0, 0, 0]);
    s.extend_from_slice(&B_INDEX.to_be_bytes());
    s.extend_from_slice(&[0; 24]);
    seeds.push(("script-budget-raw".into(), s));
    seeds
}
