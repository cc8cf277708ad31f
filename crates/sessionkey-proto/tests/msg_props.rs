//! Property tests of the messaging core: any delivery order within the bounds decrypts every
//! message exactly once; duplicates and tampered messages are rejected without changing any
//! state, and the genuine message still decrypts afterwards; beyond the bounds, the specific
//! error.

mod msg_support;

use std::collections::HashMap;

use msg_support::*;
use proptest::prelude::*;
use sessionkey_proto::msg::{
    MsgError, Session, MAX_SKIP, MAX_SKIPPED_PER_CHAIN, MAX_SKIPPED_PER_SESSION,
};
use sessionkey_proto::suite::Suite;

#[derive(Debug, Clone)]
enum Op {
    /// Alice (true) or Bob (false) writes a message.
    Send(bool),
    /// Deliver a pending message (index modulo the queue) to Bob (true) or Alice (false).
    Deliver(bool, usize),
    /// Deliver an already delivered message again.
    Duplicate(usize),
    /// Deliver a copy of a pending message with one bit flipped.
    Tamper(usize, usize, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<bool>().prop_map(Op::Send),
        4 => (any::<bool>(), any::<usize>()).prop_map(|(b, i)| Op::Deliver(b, i)),
        1 => any::<usize>().prop_map(Op::Duplicate),
        1 => (any::<usize>(), any::<usize>(), 0u8..8).prop_map(|(i, p, b)| Op::Tamper(i, p, b)),
    ]
}

/// Envelopes waiting at the relay, with the plaintext each must decrypt to.
type Queue = Vec<(Vec<u8>, Vec<u8>)>;

/// Two devices, their sessions and the relay's queues.
struct World {
    alice: Alice,
    bob: Bob,
    a: Session,
    b: Option<Session>,
    /// Pending envelopes per recipient (true: to Bob) with their plaintexts.
    pending: HashMap<bool, Queue>,
    delivered: Vec<(bool, Vec<u8>)>,
    /// How often each plaintext was decrypted.
    received: HashMap<Vec<u8>, usize>,
    sent: usize,
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
            pending: HashMap::from([(true, Vec::new()), (false, Vec::new())]),
            delivered: Vec::new(),
            received: HashMap::new(),
            sent: 0,
        }
    }

    fn send(&mut self, from_alice: bool) {
        let text = format!(
            "message {} from {}",
            self.sent,
            if from_alice { "A" } else { "B" }
        );
        let session = if from_alice {
            &mut self.a
        } else {
            match self.b.as_mut() {
                Some(b) => b,
                None => return, // Bob cannot write before the setup reached him.
            }
        };
        let envelope = session.encrypt(text.as_bytes()).unwrap();
        self.sent += 1;
        self.pending
            .get_mut(&from_alice)
            .unwrap()
            .push((envelope, text.into_bytes()));
    }

    /// What the recipient's state looks like, to show that a rejected message changed nothing.
    fn state(&self, to_bob: bool) -> Vec<u8> {
        match (to_bob, &self.b) {
            (false, _) => self.a.to_bytes().to_vec(),
            (true, Some(b)) => b.to_bytes().to_vec(),
            (true, None) => self.bob.device.to_bytes().unwrap().to_vec(),
        }
    }

    fn receive(&mut self, to_bob: bool, envelope: &[u8]) -> Result<Vec<u8>, MsgError> {
        if !to_bob {
            return deliver(&mut self.a, envelope);
        }
        match self.b.as_mut() {
            Some(b) => deliver(b, envelope),
            None => respond(&mut self.bob, &self.alice, envelope).map(|(session, text)| {
                self.b = Some(session);
                text
            }),
        }
    }

    /// Deliver pending message `index` (modulo) to its recipient; it must decrypt.
    fn deliver_pending(&mut self, to_bob: bool, index: usize) {
        let queue = self.pending.get_mut(&to_bob).unwrap();
        if queue.is_empty() {
            return;
        }
        let (envelope, text) = queue.remove(index % queue.len());
        let got = self.receive(to_bob, &envelope);
        assert_eq!(got.as_ref(), Ok(&text), "a genuine message did not decrypt");
        *self.received.entry(text).or_default() += 1;
        self.delivered.push((to_bob, envelope));
    }

    /// A rejected delivery must leave the recipient exactly as it was.
    fn assert_rejected(&mut self, to_bob: bool, envelope: &[u8], what: &str) {
        let before = self.state(to_bob);
        let had_session = self.b.is_some();
        let got = self.receive(to_bob, envelope);
        assert!(got.is_err(), "{what} was accepted: {got:?}");
        assert_eq!(self.b.is_some(), had_session, "{what} created a session");
        assert!(self.state(to_bob) == before, "{what} changed state");
    }

    fn duplicate(&mut self, index: usize) {
        if self.delivered.is_empty() {
            return;
        }
        let (to_bob, envelope) = self.delivered[index % self.delivered.len()].clone();
        self.assert_rejected(to_bob, &envelope, "a duplicate");
    }

    fn tamper(&mut self, index: usize, at: usize, bit: u8) {
        let all: Vec<(bool, Vec<u8>)> = [true, false]
            .into_iter()
            .flat_map(|to| self.pending[&to].iter().map(move |(e, _)| (to, e.clone())))
            .collect();
        if all.is_empty() {
            return;
        }
        let (to_bob, mut envelope) = all[index % all.len()].clone();
        let at = at % envelope.len();
        envelope[at] ^= 1 << bit;
        self.assert_rejected(to_bob, &envelope, "a tampered message");
    }

    /// Deliver everything still pending, in an order drawn from `seed`.
    fn drain(&mut self, mut seed: u64) {
        while self.pending.values().any(|q| !q.is_empty()) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let to_bob = (seed & 1 == 1 && !self.pending[&true].is_empty())
                || self.pending[&false].is_empty();
            self.deliver_pending(to_bob, (seed >> 1) as usize);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_delivery_order_decrypts_everything_exactly_once(
        ops in prop::collection::vec(op(), 1..120),
        seed in 1u64..,
        suite in prop::sample::select(Suite::ALL.to_vec()),
    ) {
        let mut w = World::new(suite);
        for op in ops {
            match op {
                Op::Send(from_alice) => w.send(from_alice),
                Op::Deliver(to_bob, i) => w.deliver_pending(to_bob, i),
                Op::Duplicate(i) => w.duplicate(i),
                Op::Tamper(i, at, bit) => w.tamper(i, at, bit),
            }
        }
        w.drain(seed);
        prop_assert_eq!(w.received.len(), w.sent);
        prop_assert!(w.received.values().all(|&n| n == 1));
        // Every stored skipped key was used: nothing is left behind.
        prop_assert_eq!(w.a.skipped_keys(), 0);
        prop_assert_eq!(w.b.as_ref().map_or(0, Session::skipped_keys), 0);
        // And once more, every delivered message is now a duplicate.
        for i in 0..w.delivered.len() {
            w.duplicate(i);
        }
    }
}

/// `n` messages from Alice in one chain of an established session.
fn burst(a: &mut Session, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| a.encrypt(format!("{i}").as_bytes()).unwrap())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    #[test]
    fn beyond_the_skip_bound_is_too_far_ahead(extra in 1u32..40, first in 0usize..5) {
        let (mut a, mut b) = established(Suite::Aes256Gcm);
        let m = burst(&mut a, first + (MAX_SKIP + extra) as usize + 1);
        // Read a few first, so the bound counts from the chain's position, not from 0.
        for env in &m[..first] {
            deliver(&mut b, env).unwrap();
        }
        let before = b.to_bytes();
        prop_assert_eq!(
            deliver(&mut b, m.last().unwrap()),
            Err(MsgError::TooFarAhead { skip: u64::from(MAX_SKIP + extra), max: MAX_SKIP })
        );
        prop_assert!(*b.to_bytes() == *before);
        // Exactly at the bound the jump succeeds; the keys it stored work.
        let within = first + MAX_SKIP as usize;
        prop_assert!(deliver(&mut b, &m[within]).is_ok());
        prop_assert!(deliver(&mut b, &m[within - 1]).is_ok());
        prop_assert!(deliver(&mut b, &m[within + 1]).is_ok());
    }

    #[test]
    fn beyond_the_per_chain_bound_the_oldest_keys_are_gone(skipped in 1001usize..1100) {
        let (mut a, mut b) = established(Suite::ChaCha20Poly1305);
        let m = burst(&mut a, skipped + 1);
        deliver(&mut b, &m[skipped]).unwrap();
        prop_assert_eq!(b.skipped_keys(), MAX_SKIPPED_PER_CHAIN);
        let evicted = skipped - MAX_SKIPPED_PER_CHAIN;
        for env in &m[..evicted] {
            prop_assert_eq!(deliver(&mut b, env), Err(MsgError::Duplicated));
        }
        for (i, env) in m[evicted..skipped].iter().enumerate().rev() {
            let text = format!("{}", evicted + i);
            prop_assert_eq!(deliver(&mut b, env).unwrap(), text.into_bytes());
        }
        prop_assert_eq!(b.skipped_keys(), 0);
    }

    #[test]
    fn beyond_the_per_session_bound_the_oldest_keys_are_gone(third in 1usize..60) {
        let (mut a, mut b) = established(Suite::Aes256Gcm);
        let mut chains = Vec::new();
        for len in [MAX_SKIPPED_PER_CHAIN, MAX_SKIPPED_PER_CHAIN, third] {
            let m = burst(&mut a, len + 1);
            deliver(&mut b, &m[len]).unwrap();
            let reply = b.encrypt(b"turn").unwrap();
            deliver(&mut a, &reply).unwrap();
            chains.push(m);
        }
        prop_assert_eq!(b.skipped_keys(), MAX_SKIPPED_PER_SESSION);
        // The first chain lost its `third` oldest keys; everything else is there.
        for env in &chains[0][..third] {
            prop_assert_eq!(deliver(&mut b, env), Err(MsgError::Duplicated));
        }
        let mut read = 0;
        for (c, m) in chains.iter().enumerate() {
            let from = if c == 0 { third } else { 0 };
            for env in &m[from..m.len() - 1] {
                prop_assert!(deliver(&mut b, env).is_ok());
                read += 1;
            }
        }
        prop_assert_eq!(read, MAX_SKIPPED_PER_SESSION);
        prop_assert_eq!(b.skipped_keys(), 0);
    }
}
