//! Property tests of the stream record layer: any fragmentation decodes to the same data;
//! any flipped bit, dropped, duplicated, reordered or truncated frame is detected, the session
//! closes, and no altered byte is ever delivered.

mod sim;

use proptest::prelude::*;
use sessionkey_proto::noise::Pattern;
use sessionkey_proto::session::{CloseReason, SessionConfig};
use sessionkey_proto::suite::Suite;
use sim::{header, Pair};

/// An established pair and the client's wire bytes for `messages`, a key update after every
/// `update_every` messages, and a close; with the frame boundaries.
fn scripted(
    messages: &[Vec<u8>],
    update_every: usize,
    suite: Suite,
) -> (Pair, Vec<u8>, Vec<usize>, Vec<u8>) {
    let config = SessionConfig {
        key_update_records: 7,
        ..SessionConfig::default()
    };
    let mut p = Pair::established(header(Pattern::IK, suite, false), config);
    let mut wire = Vec::new();
    let mut bounds = Vec::new();
    let mut out = vec![0u8; sessionkey_proto::record::MAX_FRAME];
    let mut push = |wire: &mut Vec<u8>, frame: &[u8]| {
        wire.extend_from_slice(frame);
        bounds.push(wire.len());
    };
    let mut plain = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if update_every > 0 && i % update_every == update_every - 1 {
            p.client.session.update_keys();
        }
        let mut rest = &m[..];
        while !rest.is_empty() {
            let (consumed, n) = p.client.session.seal_data(p.now, rest, &mut out).unwrap();
            push(&mut wire, &out[..n]);
            rest = &rest[consumed..];
        }
        plain.extend_from_slice(m);
    }
    p.client.session.close();
    while let Some(n) = p.client.session.poll_transmit(p.now, &mut out).unwrap() {
        push(&mut wire, &out[..n]);
    }
    (p, wire, bounds, plain)
}

fn messages() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..3000), 1..12)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_fragmentation_decodes_to_the_same_data(
        msgs in messages(),
        update_every in 0usize..4,
        chunks in prop::collection::vec(1usize..400, 1..50),
        suite_index in 0usize..3,
    ) {
        let (mut p, wire, _, plain) = scripted(&msgs, update_every, Suite::ALL[suite_index]);
        let mut pos = 0;
        let mut i = 0;
        while pos < wire.len() {
            let n = chunks[i % chunks.len()].min(wire.len() - pos);
            p.server.inbox.extend_from_slice(&wire[pos..pos + n]);
            p.server.receive(p.now);
            pos += n;
            i += 1;
        }
        prop_assert!(p.server.error.is_none(), "{:?}", p.server.error);
        prop_assert_eq!(&p.server.delivered, &plain);
        prop_assert!(p.server.session.handle_eof(p.now).is_ok());
    }

    #[test]
    fn any_tampering_is_detected_and_nothing_altered_is_delivered(
        msgs in messages(),
        update_every in 0usize..4,
        mutation in 0usize..5,
        a in any::<prop::sample::Index>(),
        b in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let (mut p, wire, bounds, plain) = scripted(&msgs, update_every, Suite::Aes256Gcm);
        let frames: Vec<&[u8]> = bounds
            .iter()
            .scan(0, |start, &end| { let f = &wire[*start..end]; *start = end; Some(f) })
            .collect();
        let fa = a.index(frames.len());
        let mut fb = b.index(frames.len());
        if fb == fa { fb = (fa + 1) % frames.len(); }
        let tampered: Vec<u8> = match mutation {
            0 => { let mut w = wire.clone(); let i = a.index(w.len()); w[i] ^= 1 << bit; w }
            1 => frames.iter().enumerate().filter(|(i, _)| *i != fa).flat_map(|(_, f)| f.iter().copied()).collect(),
            2 => frames.iter().enumerate().flat_map(|(i, f)| {
                    let times = if i == fa { 2 } else { 1 };
                    std::iter::repeat_n(f.iter().copied(), times).flatten()
                }).collect(),
            3 => {
                prop_assume!(frames.len() >= 2);
                let mut order: Vec<usize> = (0..frames.len()).collect();
                order.swap(fa, fb);
                order.iter().flat_map(|&i| frames[i].iter().copied()).collect()
            }
            _ => wire[..a.index(wire.len())].to_vec(),
        };
        p.server.inbox.extend_from_slice(&tampered);
        p.server.receive(p.now);
        let eof = p.server.session.handle_eof(p.now);
        prop_assert!(p.server.error.is_some() || eof.is_err(), "mutation {} undetected", mutation);
        prop_assert!(matches!(p.server.session.close_reason(), Some(CloseReason::Error(_))));
        // Whatever was delivered is an unaltered prefix of what was sent.
        prop_assert!(plain.starts_with(&p.server.delivered));
    }
}

#[test]
fn one_byte_at_a_time() {
    let msgs = vec![vec![7u8; 5000], Vec::new(), (0..=255).collect()];
    let (mut p, wire, _, plain) = scripted(&msgs, 1, Suite::ChaCha20Poly1305);
    for b in wire {
        p.server.inbox.push(b);
        p.server.receive(p.now);
    }
    assert!(p.server.error.is_none());
    assert_eq!(p.server.delivered, plain);
    assert!(matches!(
        p.server.session.close_reason(),
        None | Some(CloseReason::Clean)
    ));
}

#[test]
fn oversized_length_is_refused_from_the_prefix_alone() {
    let config = SessionConfig {
        max_record_len: 1000,
        ..SessionConfig::default()
    };
    let mut p = Pair::established(header(Pattern::IK, Suite::Aes256Gcm, false), config);
    // Two bytes announcing a 60000-byte record: refused before any of it is buffered.
    p.server.inbox.extend_from_slice(&60000u16.to_be_bytes());
    p.server.receive(p.now);
    let err = p.server.error.clone().expect("oversized length accepted");
    assert!(
        err.to_string().contains("exceeds the maximum of 1000"),
        "{err}"
    );
}
