//! Datagram records through the public API: round trips, replay and reordering, key epochs
//! on a virtual clock, hostile packets (a proptest), and the session's integrity limit.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use sessionkey_proto::keys::SecretKey;
use sessionkey_proto::record::datagram::{DatagramConfig, DatagramSession, HEADER_LEN, OVERHEAD};
use sessionkey_proto::replay::WINDOW;
use sessionkey_proto::suite::{Suite, UsageLimits};
use sessionkey_proto::{Error, Limit, PeerMisbehaved};

const A_INDEX: u32 = 0x0102_0304;
const B_INDEX: u32 = 0xa0b0_c0d0;

fn secret(seed: u8) -> SecretKey {
    SecretKey::from_bytes([seed; 32])
}

/// Two ends of one session: `a` sends to `b` under the keys of `seed`.
fn pair(suite: Suite, config: DatagramConfig, seed: u8) -> (DatagramSession, DatagramSession) {
    let a = DatagramSession::new(
        suite,
        A_INDEX,
        B_INDEX,
        0,
        secret(seed),
        secret(seed + 1),
        config,
    )
    .unwrap();
    let b = DatagramSession::new(
        suite,
        B_INDEX,
        A_INDEX,
        0,
        secret(seed + 1),
        secret(seed),
        config,
    )
    .unwrap();
    (a, b)
}

fn rekey_both(a: &mut DatagramSession, b: &mut DatagramSession, now: Instant, epoch: u8, seed: u8) {
    a.rekey(now, epoch, secret(seed), secret(seed + 1)).unwrap();
    b.rekey(now, epoch, secret(seed + 1), secret(seed)).unwrap();
}

fn payload(n: u64) -> Vec<u8> {
    let len = (n % 97) as usize;
    (0..len)
        .map(|i| (n as u8).wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

fn seal(s: &mut DatagramSession, data: &[u8]) -> Vec<u8> {
    let mut buf = vec![0; data.len() + OVERHEAD];
    buf[HEADER_LEN..HEADER_LEN + data.len()].copy_from_slice(data);
    let n = s.seal_in_place(&mut buf, data.len()).unwrap();
    buf.truncate(n);
    buf
}

fn open(s: &mut DatagramSession, now: Instant, packet: &[u8]) -> Result<Vec<u8>, Error> {
    let mut copy = packet.to_vec();
    s.open_in_place(now, &mut copy).map(|p| p.to_vec())
}

fn is_replay(r: &Result<Vec<u8>, Error>) -> bool {
    matches!(r, Err(Error::PeerMisbehaved(PeerMisbehaved::Replay)))
}

/// A small deterministic generator for shuffles (xorshift64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

#[test]
fn round_trip_every_suite() {
    let now = Instant::now();
    for suite in Suite::ALL {
        let (mut a, mut b) = pair(suite, DatagramConfig::default(), 1);
        assert_eq!(a.send_fingerprint(), b.recv_fingerprint());
        assert_eq!(a.recv_fingerprint(), b.send_fingerprint());
        assert_ne!(a.send_fingerprint(), a.recv_fingerprint());
        let mut total = 0;
        for n in 0..50u64 {
            let data = payload(n);
            let p = seal(&mut a, &data);
            assert_eq!(p.len(), data.len() + OVERHEAD);
            if !data.is_empty() {
                assert_ne!(
                    &p[HEADER_LEN..HEADER_LEN + data.len()],
                    &data[..],
                    "{suite}"
                );
            }
            assert_eq!(open(&mut b, now, &p).unwrap(), data, "{suite}");
            total += data.len() as u64;
            // And back.
            let p = seal(&mut b, &data);
            assert_eq!(open(&mut a, now, &p).unwrap(), data, "{suite}");
        }
        assert_eq!((a.packets_sent(), a.bytes_sent()), (50, total));
        assert_eq!((b.packets_received(), b.bytes_received()), (50, total));
        assert_eq!((a.failures(), b.failures()), (0, 0));
        // A packet for a's index does not open at b, and vice versa.
        let p = seal(&mut a, b"to b");
        assert!(matches!(
            open(&mut a, now, &p),
            Err(Error::PeerMisbehaved(PeerMisbehaved::UnexpectedRecord(_)))
        ));
        assert_eq!(open(&mut b, now, &p).unwrap(), b"to b");
    }
}

#[test]
fn replays_are_rejected_and_change_nothing() {
    let now = Instant::now();
    let (mut a, mut b) = pair(Suite::Aes256Gcm, DatagramConfig::default(), 3);
    let p0 = seal(&mut a, b"zero");
    let p1 = seal(&mut a, b"one");
    assert_eq!(open(&mut b, now, &p0).unwrap(), b"zero");
    for _ in 0..3 {
        assert!(is_replay(&open(&mut b, now, &p0)));
    }
    assert_eq!(open(&mut b, now, &p1).unwrap(), b"one");
    assert!(is_replay(&open(&mut b, now, &p1)));
    assert!(is_replay(&open(&mut b, now, &p0)));
    assert_eq!((b.packets_received(), b.failures()), (2, 0));
}

#[test]
fn reordering_inside_the_window_is_accepted_exactly_once() {
    let now = Instant::now();
    let (mut a, mut b) = pair(Suite::ChaCha20Poly1305, DatagramConfig::default(), 5);
    let packets: Vec<Vec<u8>> = (0..10_000u64).map(|n| seal(&mut a, &payload(n))).collect();
    let mut order: Vec<usize> = (0..packets.len()).collect();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for chunk in order.chunks_mut(1000) {
        rng.shuffle(chunk);
    }
    for &i in &order {
        assert_eq!(
            open(&mut b, now, &packets[i]).unwrap(),
            payload(i as u64),
            "packet {i}"
        );
    }
    assert_eq!(b.packets_received(), 10_000);
    // Every one again, in another order: all rejected as replays (or too old).
    rng.shuffle(&mut order);
    for &i in &order {
        assert!(is_replay(&open(&mut b, now, &packets[i])), "packet {i}");
    }
    assert_eq!((b.packets_received(), b.failures()), (10_000, 0));
}

#[test]
fn a_packet_older_than_the_window_is_rejected() {
    let now = Instant::now();
    let (mut a, mut b) = pair(Suite::Aes128Gcm, DatagramConfig::default(), 7);
    let packets: Vec<Vec<u8>> = (0..=WINDOW + 1)
        .map(|n| seal(&mut a, &payload(n)))
        .collect();
    let top = WINDOW as usize;
    assert_eq!(open(&mut b, now, &packets[top]).unwrap(), payload(WINDOW));
    // Counter 0 is WINDOW behind: too old. Counter 1 is the window's lower edge.
    assert!(is_replay(&open(&mut b, now, &packets[0])));
    assert_eq!(open(&mut b, now, &packets[1]).unwrap(), payload(1));
    assert_eq!(
        open(&mut b, now, &packets[top + 1]).unwrap(),
        payload(WINDOW + 1)
    );
    // Now counter 1 has fallen out too, and 2 is the edge.
    assert!(is_replay(&open(&mut b, now, &packets[1])));
    assert_eq!(open(&mut b, now, &packets[2]).unwrap(), payload(2));
    assert_eq!(b.failures(), 0);
}

#[test]
fn old_epoch_accepted_during_its_grace_period_only() {
    let t0 = Instant::now();
    let config = DatagramConfig::default();
    let grace = config.grace;
    assert_eq!(grace, Duration::from_secs(10));
    let (mut a, mut b) = pair(Suite::Aes256Gcm, config, 11);
    let old: Vec<Vec<u8>> = (0..4u64).map(|n| seal(&mut a, &payload(n))).collect();
    let old_fp = b.recv_fingerprint();
    assert_eq!(b.poll_timeout(), None);

    rekey_both(&mut a, &mut b, t0, 1, 21);
    assert_eq!((b.epoch(), b.previous_epoch()), (1, Some(0)));
    assert_ne!(b.recv_fingerprint(), old_fp);
    assert_eq!(a.packets_sent_this_key(), 0);
    assert_eq!(b.poll_timeout(), Some(t0 + grace));

    // New epoch packets open; the new epoch has its own window, so counter 0 is fresh again.
    let new0 = seal(&mut a, b"new");
    assert_eq!(new0[1], 1);
    assert_eq!(&new0[8..16], &0u64.to_be_bytes());
    assert_eq!(open(&mut b, t0, &new0).unwrap(), b"new");

    // Old epoch packets, late, during the grace period.
    assert_eq!(
        open(&mut b, t0 + Duration::from_secs(1), &old[0]).unwrap(),
        payload(0)
    );
    assert!(is_replay(&open(
        &mut b,
        t0 + Duration::from_secs(1),
        &old[0]
    )));
    b.handle_timeout(t0 + grace - Duration::from_millis(1)); // early: nothing happens
    assert_eq!(b.previous_epoch(), Some(0));
    let last_moment = t0 + grace - Duration::from_nanos(1);
    assert_eq!(open(&mut b, last_moment, &old[1]).unwrap(), payload(1));

    // After it: rejected even before handle_timeout runs, and the rejection changes nothing.
    let late = open(&mut b, t0 + grace, &old[2]);
    assert!(
        matches!(
            late,
            Err(Error::PeerMisbehaved(PeerMisbehaved::UnexpectedRecord(_)))
        ),
        "{late:?}"
    );
    assert_eq!(b.previous_epoch(), Some(0));
    assert_eq!(b.failures(), 0);
    b.handle_timeout(t0 + grace);
    assert_eq!((b.previous_epoch(), b.poll_timeout()), (None, None));
    assert!(open(&mut b, t0 + grace, &old[3]).is_err());
    assert_eq!(b.packets_received(), 3);
}

#[test]
fn a_second_rekey_destroys_the_epoch_before_the_previous() {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(Suite::ChaCha20Poly1305, DatagramConfig::default(), 31);
    let e0 = seal(&mut a, b"epoch 0");
    rekey_both(&mut a, &mut b, t0, 1, 41);
    let e1 = seal(&mut a, b"epoch 1");
    rekey_both(&mut a, &mut b, t0 + Duration::from_secs(2), 2, 51);
    let e2 = seal(&mut a, b"epoch 2");
    let now = t0 + Duration::from_secs(3);
    assert_eq!((b.epoch(), b.previous_epoch()), (2, Some(1)));
    assert_eq!(b.poll_timeout(), Some(t0 + Duration::from_secs(12)));
    assert!(matches!(
        open(&mut b, now, &e0),
        Err(Error::PeerMisbehaved(PeerMisbehaved::UnexpectedRecord(_)))
    ));
    assert_eq!(open(&mut b, now, &e1).unwrap(), b"epoch 1");
    assert_eq!(open(&mut b, now, &e2).unwrap(), b"epoch 2");

    // The epoch byte wraps: 255 -> 0 is a valid rekey.
    let (mut a, mut b) = pair(Suite::ChaCha20Poly1305, DatagramConfig::default(), 61);
    rekey_both(&mut a, &mut b, t0, 255, 71);
    rekey_both(&mut a, &mut b, t0, 0, 81);
    let p = seal(&mut a, b"wrapped");
    assert_eq!(p[1], 0);
    assert_eq!(open(&mut b, t0, &p).unwrap(), b"wrapped");
}

#[test]
fn needs_rekey_at_half_the_limit_and_refuses_past_it() {
    let limits = UsageLimits {
        records: 4,
        blocks: 1 << 30,
        failed_decryptions: 1 << 20,
    };
    let config = DatagramConfig {
        usage_limits: Some(limits),
        ..DatagramConfig::default()
    };
    let now = Instant::now();
    let (mut a, mut b) = pair(Suite::Aes256Gcm, config, 91);
    assert!(!a.needs_rekey());
    seal(&mut a, b"1");
    assert!(!a.needs_rekey());
    seal(&mut a, b"2");
    assert!(a.needs_rekey());
    seal(&mut a, b"3");
    seal(&mut a, b"4");
    let mut buf = [0; 64];
    let err = a.seal_in_place(&mut buf, 1).unwrap_err();
    assert!(
        matches!(
            err,
            Error::LimitReached(Limit::ConfidentialityRecords { limit: 4, .. })
        ),
        "{err:?}"
    );
    assert_eq!(a.packets_sent(), 4);
    // After a rekey the new key starts afresh.
    rekey_both(&mut a, &mut b, now, 1, 101);
    assert!(!a.needs_rekey());
    let p = seal(&mut a, b"5");
    assert_eq!(open(&mut b, now, &p).unwrap(), b"5");
}

#[test]
fn integrity_limit_closes_the_session() {
    let now = Instant::now();
    let config = DatagramConfig {
        max_failed_decryptions: 5,
        ..DatagramConfig::default()
    };
    let (mut a, mut b) = pair(Suite::ChaCha20Poly1305, config, 111);
    let genuine = seal(&mut a, b"genuine");
    for i in 0..5 {
        let mut forged = genuine.clone();
        forged[HEADER_LEN + i] ^= 0x40;
        assert!(matches!(
            open(&mut b, now, &forged),
            Err(Error::PeerMisbehaved(PeerMisbehaved::BadTag))
        ));
    }
    assert_eq!(b.failures(), 5);
    assert!(b.is_closed());
    let err = open(&mut b, now, &genuine).unwrap_err();
    assert!(
        matches!(
            err,
            Error::LimitReached(Limit::SessionIntegrity { limit: 5 })
        ),
        "{err:?}"
    );
    let mut buf = [0; 64];
    assert!(matches!(
        b.seal_in_place(&mut buf, 1),
        Err(Error::LimitReached(Limit::SessionIntegrity { limit: 5 }))
    ));
    assert_eq!(b.packets_received(), 0);
}

/// The default bounds no session below the suite's per-key integrity limit (a lower
/// session-wide bound is an off switch for anyone who can copy a header); the per-key
/// threshold asks for a rekey and refuses nothing.
#[test]
fn forgery_threshold_asks_for_a_rekey_and_refuses_nothing() {
    assert_eq!(DatagramConfig::default().max_failed_decryptions, u64::MAX);
    assert_eq!(
        DatagramConfig::default().rekey_after_failed_decryptions,
        1 << 20
    );
    let now = Instant::now();
    let config = DatagramConfig {
        rekey_after_failed_decryptions: 3,
        ..DatagramConfig::default()
    };
    let (mut a, mut b) = pair(Suite::ChaCha20Poly1305, config, 141);
    let genuine = seal(&mut a, b"genuine");
    let mut forged = genuine.clone();
    forged[HEADER_LEN] ^= 1;
    for _ in 0..10 {
        assert!(matches!(
            open(&mut b, now, &forged),
            Err(Error::PeerMisbehaved(PeerMisbehaved::BadTag))
        ));
    }
    assert_eq!((b.failures(), b.failures_this_key()), (10, 10));
    assert!(b.needs_rekey() && !b.is_closed());
    assert_eq!(open(&mut b, now, &genuine).unwrap(), b"genuine");
    let back = seal(&mut b, b"back");
    assert_eq!(open(&mut a, now, &back).unwrap(), b"back");
    // New keys start with no failures.
    rekey_both(&mut a, &mut b, now, 1, 151);
    assert_eq!(b.failures_this_key(), 0);
    assert!(!b.needs_rekey());
}

#[test]
fn failures_count_across_epochs() {
    let t0 = Instant::now();
    let config = DatagramConfig {
        max_failed_decryptions: 3,
        ..DatagramConfig::default()
    };
    let (mut a, mut b) = pair(Suite::Aes128Gcm, config, 121);
    let mut forged = seal(&mut a, b"old");
    forged[HEADER_LEN] ^= 1;
    assert!(open(&mut b, t0, &forged).is_err());
    rekey_both(&mut a, &mut b, t0, 1, 131);
    assert!(open(&mut b, t0, &forged).is_err()); // previous epoch, still counted
    let mut forged = seal(&mut a, b"new");
    forged[HEADER_LEN] ^= 1;
    assert!(open(&mut b, t0, &forged).is_err());
    assert_eq!(b.failures(), 3);
    let p = seal(&mut a, b"fine");
    assert!(matches!(
        open(&mut b, t0, &p),
        Err(Error::LimitReached(Limit::SessionIntegrity { limit: 3 }))
    ));
}

/// What an attacker on the path does between genuine deliveries.
#[derive(Debug, Clone)]
enum Op {
    /// Deliver genuine packet `i` (a replay if it was delivered before).
    Deliver(prop::sample::Index),
    /// Random bytes.
    Garbage(Vec<u8>),
    /// A well-formed header for the right receiver with any epoch and counter, random body.
    Forged {
        epoch: u8,
        counter: u64,
        body: Vec<u8>,
    },
    /// Genuine packet `i` with one bit flipped anywhere.
    BitFlip(prop::sample::Index, prop::sample::Index, u8),
    /// Genuine packet `i` cut short.
    Truncate(prop::sample::Index, prop::sample::Index),
    /// Genuine packet `i` addressed to another receiver index.
    WrongReceiver(prop::sample::Index, u32),
    /// Genuine packet `i` relabelled with another epoch.
    WrongEpoch(prop::sample::Index, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<prop::sample::Index>().prop_map(Op::Deliver),
        1 => prop::collection::vec(any::<u8>(), 0..80).prop_map(Op::Garbage),
        2 => (
            prop_oneof![Just(0u8), Just(1u8), any::<u8>()],
            prop_oneof![0..64u64, any::<u64>()],
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(epoch, counter, body)| Op::Forged { epoch, counter, body }),
        3 => (any::<prop::sample::Index>(), any::<prop::sample::Index>(), 0..8u8)
            .prop_map(|(i, pos, bit)| Op::BitFlip(i, pos, bit)),
        1 => (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(i, len)| Op::Truncate(i, len)),
        1 => (any::<prop::sample::Index>(), any::<u32>()).prop_map(|(i, r)| Op::WrongReceiver(i, r)),
        1 => (any::<prop::sample::Index>(), prop_oneof![Just(0u8), Just(1u8), any::<u8>()])
            .prop_map(|(i, e)| Op::WrongEpoch(i, e)),
    ]
}

/// The receiver as a model: accepted counters per epoch, and which packets reach decryption.
#[derive(Default)]
struct Model {
    accepted: HashMap<u8, BTreeSet<u64>>,
}

impl Model {
    /// Whether `packet` passes every check before decryption at the receiver.
    fn reaches_decryption(&self, packet: &[u8]) -> bool {
        if packet.len() < OVERHEAD || packet[0] != 4 || packet[2..4] != [0, 0] {
            return false;
        }
        if packet[4..8] != B_INDEX.to_be_bytes() || packet[1] > 1 {
            return false;
        }
        let counter = u64::from_be_bytes(packet[8..16].try_into().unwrap());
        let seen = self.accepted.get(&packet[1]);
        match seen.and_then(|s| s.last()) {
            None => true,
            Some(&top) => {
                counter > top || (top - counter < WINDOW && !seen.unwrap().contains(&counter))
            }
        }
    }
}

/// A genuine packet: its epoch, counter, payload, and the packet's bytes.
type Genuine = (u8, u64, Vec<u8>, Vec<u8>);

/// The receiver, a time within the grace period, and genuine packets, half under epoch 0
/// (the previous one at the receiver) and half under epoch 1.
fn genuine_packets() -> (DatagramSession, Instant, Vec<Genuine>) {
    let t0 = Instant::now();
    let (mut a, mut b) = pair(Suite::ChaCha20Poly1305, DatagramConfig::default(), 141);
    let mut packets = Vec::new();
    for n in 0..24u64 {
        let data = payload(n * 5);
        packets.push((0, n, data.clone(), seal(&mut a, &data)));
    }
    rekey_both(&mut a, &mut b, t0, 1, 151);
    for n in 0..24u64 {
        let data = payload(n * 7 + 1);
        packets.push((1, n, data.clone(), seal(&mut a, &data)));
    }
    (b, t0 + Duration::from_secs(1), packets)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn hostile_packets_never_disturb_genuine_ones(ops in prop::collection::vec(op(), 0..160)) {
        let (mut b, now, packets) = genuine_packets();
        let mut model = Model::default();
        let mut delivered = vec![false; packets.len()];
        let mut expected_failures = 0;

        for op in ops {
            let genuine_index = match &op {
                Op::Deliver(i) => Some(i.index(packets.len())),
                _ => None,
            };
            let packet = match op {
                Op::Deliver(i) => packets[i.index(packets.len())].3.clone(),
                Op::Garbage(bytes) => bytes,
                Op::Forged { epoch, counter, body } => {
                    let mut p = vec![4, epoch, 0, 0];
                    p.extend_from_slice(&B_INDEX.to_be_bytes());
                    p.extend_from_slice(&counter.to_be_bytes());
                    p.extend_from_slice(&body);
                    p
                }
                Op::BitFlip(i, pos, bit) => {
                    let mut p = packets[i.index(packets.len())].3.clone();
                    let pos = pos.index(p.len());
                    p[pos] ^= 1 << bit;
                    p
                }
                Op::Truncate(i, len) => {
                    let p = &packets[i.index(packets.len())].3;
                    p[..len.index(p.len())].to_vec()
                }
                Op::WrongReceiver(i, r) => {
                    let mut p = packets[i.index(packets.len())].3.clone();
                    let r = if r == B_INDEX { r ^ 1 } else { r };
                    p[4..8].copy_from_slice(&r.to_be_bytes());
                    p
                }
                Op::WrongEpoch(i, e) => {
                    let mut p = packets[i.index(packets.len())].3.clone();
                    p[1] = if e == p[1] { e ^ 1 } else { e };
                    p
                }
            };
            let decrypts = model.reaches_decryption(&packet);
            let result = open(&mut b, now, &packet);
            match genuine_index {
                Some(i) if !delivered[i] => {
                    // Genuine and new: accepted, intact.
                    let (epoch, counter, data, _) = &packets[i];
                    prop_assert_eq!(result.as_ref().ok(), Some(data), "genuine packet {} refused", i);
                    delivered[i] = true;
                    model.accepted.entry(*epoch).or_default().insert(*counter);
                }
                Some(_) => prop_assert!(is_replay(&result), "replay not rejected: {:?}", result),
                None => {
                    prop_assert!(result.is_err(), "altered packet accepted");
                    let bad_tag = matches!(result, Err(Error::PeerMisbehaved(PeerMisbehaved::BadTag)));
                    prop_assert_eq!(bad_tag, decrypts, "{:?}", result);
                    if decrypts {
                        expected_failures += 1;
                    }
                }
            }
            prop_assert_eq!(b.failures(), expected_failures);
        }

        // Everything not yet delivered still opens, exactly once.
        for (i, (_, _, data, packet)) in packets.iter().enumerate() {
            let result = open(&mut b, now, packet);
            if delivered[i] {
                prop_assert!(is_replay(&result));
            } else {
                prop_assert_eq!(result.as_ref().ok(), Some(data), "genuine packet {} refused at the end", i);
            }
        }
        prop_assert_eq!(b.packets_received(), packets.len() as u64);
        prop_assert_eq!(b.failures(), expected_failures);
    }
}
