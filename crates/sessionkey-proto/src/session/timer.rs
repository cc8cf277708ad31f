//! The session's deadlines as a table; the next wake-up is their minimum.

use std::time::Instant;

/// A deadline of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    Handshake = 0,
    Rehandshake = 1,
    Lifetime = 2,
    Idle = 3,
    /// A re-handshake was due: it must complete by then.
    RehandshakeDeadline = 4,
}

const COUNT: usize = 5;

#[derive(Debug, Default, Clone)]
pub(crate) struct Timers([Option<Instant>; COUNT]);

impl Timers {
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.0[timer as usize] = Some(at);
    }

    /// Set `timer` unless it is already running (a deadline stays at its first value).
    pub(crate) fn set_if_unset(&mut self, timer: Timer, at: Instant) {
        self.0[timer as usize].get_or_insert(at);
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        self.0[timer as usize] = None;
    }

    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.0[timer as usize]
    }

    pub(crate) fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }

    /// Whether `timer` is set and due at `now`.
    pub(crate) fn expired(&self, timer: Timer, now: Instant) -> bool {
        self.0[timer as usize].is_some_and(|at| at <= now)
    }

    pub(crate) fn clear(&mut self) {
        self.0 = [None; COUNT];
    }
}
