//! The messaging ratchet driven by arbitrary schedules (issue 17, item 3): sends in both
//! directions, deliveries in any order and after any delay (within the 14-day lifetime of
//! skipped keys), drops, duplicates, and a clock that moves.
//!
//! Properties: a message decrypts at most once, and only to what was sent; a duplicate is
//! refused without changing the recipient's state; every message not dropped decrypts
//! (the schedules stay within the documented bounds: MAX_SKIP, the per-chain and
//! per-session limits, the key lifetime); and the keys left stored for skipped messages
//! never outnumber the messages dropped.

mod msg_support;

use msg_support::*;
use proptest::prelude::*;
use sessionkey_proto::crypto::SystemRandom;
use sessionkey_proto::msg::{Envelope, MsgError, Session, Timestamp};
use sessionkey_proto::suite::Suite;

#[derive(Debug, Clone)]
enum Op {
    /// Alice (true) or Bob writes `n` messages in a row.
    Send(bool, u8),
    /// Deliver the pending message at this index (modulo) to Bob (true) or Alice.
    Deliver(bool, usize),
    /// Lose the pending message at this index.
    Drop(bool, usize),
    /// Deliver an already delivered message again.
    Duplicate(usize),
    /// Hours pass.
    Advance(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), 1u8..6).prop_map(|(a, n)| Op::Send(a, n)),
        5 => (any::<bool>(), any::<usize>()).prop_map(|(b, i)| Op::Deliver(b, i)),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(b, i)| Op::Drop(b, i)),
        1 => any::<usize>().prop_map(Op::Duplicate),
        1 => (0u8..30).prop_map(Op::Advance),
    ]
}

struct Pending {
    envelope: Vec<u8>,
    text: Vec<u8>,
}

struct World {
    alice: Alice,
    bob: Bob,
    a: Session,
    b: Option<Session>,
    /// Waiting at the relay: index 0 towards Alice, 1 towards Bob.
    pending: [Vec<Pending>; 2],
    /// Delivered envelopes, with their recipient (true: Bob).
    delivered: Vec<(bool, Vec<u8>)>,
    /// Plaintexts decrypted by Alice and by Bob.
    received: [Vec<Vec<u8>>; 2],
    sent: usize,
    /// Dropped messages (envelopes lost) towards Alice and Bob.
    dropped: [usize; 2],
    now: Timestamp,
    hours: u64,
}

impl World {
    fn new(suite: Suite) -> Self {
        let bob = Bob::new(1, 1);
        let alice = Alice::new();
        let a = alice.initiate(&bob, &bob.bundle(Some(0), Some(0)), suite);
        Self {
            alice,
            bob,
            a,
            b: None,
            pending: [Vec::new(), Vec::new()],
            delivered: Vec::new(),
            received: [Vec::new(), Vec::new()],
            sent: 0,
            dropped: [0, 0],
            now: NOW,
            hours: 0,
        }
    }

    fn send(&mut self, from_alice: bool) {
        let session = if from_alice {
            &mut self.a
        } else {
            match self.b.as_mut() {
                Some(b) => b,
                None => return, // Bob cannot write before Alice's first message reached him.
            }
        };
        let text = format!("message {} from {}", self.sent, u8::from(from_alice)).into_bytes();
        let envelope = session.encrypt(&text).unwrap();
        self.sent += 1;
        self.pending[usize::from(from_alice)].push(Pending { envelope, text });
    }

    fn state(&self, to_bob: bool) -> Vec<u8> {
        match (to_bob, &self.b) {
            (false, _) => self.a.to_bytes().to_vec(),
            (true, Some(b)) => b.to_bytes().to_vec(),
            (true, None) => self.bob.device.to_bytes().unwrap().to_vec(),
        }
    }

    fn receive(&mut self, to_bob: bool, envelope: &[u8]) -> Result<Vec<u8>, MsgError> {
        let now = self.now;
        if !to_bob {
            return self
                .a
                .decrypt(&Envelope::parse(envelope)?, now, &mut SystemRandom);
        }
        match self.b.as_mut() {
            Some(b) => b.decrypt(&Envelope::parse(envelope)?, now, &mut SystemRandom),
            None => respond(&mut self.bob, &self.alice, envelope).map(|(session, text)| {
                self.b = Some(session);
                text
            }),
        }
    }

    fn deliver(&mut self, to_bob: bool, index: usize) {
        let queue = &mut self.pending[usize::from(to_bob)];
        if queue.is_empty() {
            return;
        }
        let p = queue.remove(index % queue.len());
        let got = self.receive(to_bob, &p.envelope);
        assert_eq!(
            got.as_ref(),
            Ok(&p.text),
            "a message not dropped did not decrypt"
        );
        let received = &mut self.received[usize::from(to_bob)];
        assert!(!received.contains(&p.text), "a message decrypted twice");
        received.push(p.text);
        self.delivered.push((to_bob, p.envelope));
    }

    fn drop_pending(&mut self, to_bob: bool, index: usize) {
        let queue = &mut self.pending[usize::from(to_bob)];
        if !queue.is_empty() {
            queue.remove(index % queue.len());
            self.dropped[usize::from(to_bob)] += 1;
        }
    }

    fn duplicate(&mut self, index: usize) {
        if self.delivered.is_empty() {
            return;
        }
        let (to_bob, envelope) = self.delivered[index % self.delivered.len()].clone();
        let before = self.state(to_bob);
        let got = self.receive(to_bob, &envelope);
        assert!(got.is_err(), "a duplicate decrypted: {got:?}");
        assert!(self.state(to_bob) == before, "a duplicate changed state");
    }

    fn advance(&mut self, hours: u8) {
        // Stay within the lifetime of skipped keys (14 days): a week at most in all.
        let hours = u64::from(hours).min(7 * 24 - self.hours);
        self.hours += hours;
        self.now = self.now.plus_secs(hours * 3600);
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Send(from_alice, n) => {
                for _ in 0..n {
                    self.send(from_alice);
                }
            }
            Op::Deliver(to_bob, i) => self.deliver(to_bob, i),
            Op::Drop(to_bob, i) => self.drop_pending(to_bob, i),
            Op::Duplicate(i) => self.duplicate(i),
            Op::Advance(h) => self.advance(h),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_schedule_decrypts_every_message_not_dropped_exactly_once(
        ops in prop::collection::vec(op(), 1..100),
        suite in prop::sample::select(Suite::ALL.to_vec()),
    ) {
        let mut w = World::new(suite);
        for op in ops {
            w.apply(op);
        }
        // Whatever is still pending arrives, oldest last (the longest delay).
        for to_bob in [true, false] {
            while !w.pending[usize::from(to_bob)].is_empty() {
                let last = w.pending[usize::from(to_bob)].len() - 1;
                w.deliver(to_bob, last);
            }
        }
        let received = w.received[0].len() + w.received[1].len();
        prop_assert_eq!(received + w.dropped[0] + w.dropped[1], w.sent);
        // Keys kept for skipped messages: only for messages that never came.
        prop_assert!(w.a.skipped_keys() <= w.dropped[0],
            "Alice keeps {} skipped keys for {} dropped", w.a.skipped_keys(), w.dropped[0]);
        if let Some(b) = &w.b {
            prop_assert!(b.skipped_keys() <= w.dropped[1],
                "Bob keeps {} skipped keys for {} dropped", b.skipped_keys(), w.dropped[1]);
        }
        for i in 0..w.delivered.len() {
            w.duplicate(i);
        }
    }
}
