//! A sliding replay window for datagram counters.
//!
//! Datagrams carry an explicit 64-bit counter and may arrive late, twice or out of order. The
//! receiver accepts each counter at most once, and only while it is within [`WINDOW`] of the
//! highest counter accepted so far. The bookkeeping is the bitmap of RFC 6479 ("IPsec
//! Anti-Replay Algorithm without Bit Shifting"), as WireGuard's Linux `counter.c`, wireguard-go
//! and boringtun's `session.rs` use it: a ring of 64-bit words indexed by the counter itself,
//! so advancing the window clears the bits it moves over instead of shifting the whole map.
//!
//! Two differences from those implementations:
//!
//! - The window is exactly [`WINDOW`] = 8192 counters wide. WireGuard clears whole words when
//!   the window advances, which leaves a guaranteed width of 8192 - 64 = 8128; here the
//!   counters moved over are cleared bit by bit (a word at a time, with masks), so all 8192
//!   bits of the ring are usable (DESIGN.md, "Defaults": at least 8192 packets).
//! - Checking and recording are separate: [`ReplayWindow::check`] only peeks and is called
//!   before decryption; [`ReplayWindow::commit`] records the counter and is called only after
//!   the packet authenticated. A forged packet with a huge counter therefore cannot move the
//!   window and make genuine packets look too old (STYLE.md convention 8).
//!
//! The window holds no allocation: 1 KiB of bitmap and the highest counter.

use crate::error::PeerMisbehaved;
use crate::Error;

/// How many counters the window spans: a counter is accepted if it is new and greater than
/// `highest - WINDOW`.
pub const WINDOW: u64 = 8192;

const WORD_BITS: u64 = u64::BITS as u64;
const WORDS: usize = (WINDOW / WORD_BITS) as usize;

/// Which datagram counters were already accepted, over a window of the last [`WINDOW`].
///
/// Call [`check`](Self::check) before decrypting a packet and [`commit`](Self::commit) after
/// it authenticated:
///
/// ```
/// use sessionkey_proto::replay::ReplayWindow;
///
/// let mut window = ReplayWindow::new();
/// assert!(window.check(5).is_ok());
/// // ... decrypt and authenticate the packet with counter 5, then:
/// window.commit(5);
/// assert!(window.check(5).is_err()); // a replay
/// assert!(window.check(3).is_ok()); // late, but inside the window
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Bit `c % WINDOW` is set if counter `c` (within the window) was accepted.
    bits: [u64; WORDS],
    /// The highest counter accepted, if any.
    highest: Option<u64>,
}

impl ReplayWindow {
    /// An empty window: every counter is acceptable.
    pub fn new() -> Self {
        Self {
            bits: [0; WORDS],
            highest: None,
        }
    }

    /// Whether a packet with `counter` may be accepted, without recording anything. Fails with
    /// [`PeerMisbehaved::Replay`] if the counter was accepted before or is too old to tell
    /// (at least [`WINDOW`] below the highest counter accepted).
    pub fn check(&self, counter: u64) -> Result<(), Error> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if counter > highest {
            return Ok(());
        }
        if highest - counter >= WINDOW || self.is_set(counter) {
            return Err(PeerMisbehaved::Replay.into());
        }
        Ok(())
    }

    /// Record `counter` as accepted. Call only after [`check`](Self::check) passed and the
    /// packet authenticated. A counter ahead of the window slides the window forward; one too
    /// old to be tracked is ignored.
    pub fn commit(&mut self, counter: u64) {
        match self.highest {
            Some(highest) if counter <= highest => {
                if highest - counter >= WINDOW {
                    return;
                }
            }
            Some(highest) => {
                // Counters highest+1 ..= counter enter the window; their ring positions still
                // hold bits of counters that now fall out of it.
                let jump = counter - highest;
                if jump >= WINDOW {
                    self.bits = [0; WORDS];
                } else {
                    self.clear(highest + 1, jump);
                }
                self.highest = Some(counter);
            }
            None => {
                self.bits = [0; WORDS];
                self.highest = Some(counter);
            }
        }
        let (word, bit) = position(counter);
        self.bits[word] |= 1 << bit;
    }

    /// The highest counter accepted so far.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    fn is_set(&self, counter: u64) -> bool {
        let (word, bit) = position(counter);
        self.bits[word] & (1 << bit) != 0
    }

    /// Clear the ring positions of `count` (at most [`WINDOW`]) counters from `first` on.
    fn clear(&mut self, first: u64, count: u64) {
        debug_assert!(count <= WINDOW);
        let mut counter = first;
        let mut left = count;
        while left > 0 {
            let (word, bit) = position(counter);
            let n = (WORD_BITS - u64::from(bit)).min(left);
            let mask = if n == WORD_BITS {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            self.bits[word] &= !mask;
            counter = counter.wrapping_add(n);
            left -= n;
        }
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("highest", &self.highest)
            .finish_non_exhaustive()
    }
}

/// The word and bit of `counter` in the ring.
fn position(counter: u64) -> (usize, u32) {
    let slot = counter % WINDOW;
    ((slot / WORD_BITS) as usize, (slot % WORD_BITS) as u32)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn accept(w: &mut ReplayWindow, counter: u64) -> bool {
        if w.check(counter).is_ok() {
            w.commit(counter);
            true
        } else {
            false
        }
    }

    #[test]
    fn counter_zero_first_and_again() {
        let mut w = ReplayWindow::new();
        assert!(accept(&mut w, 0));
        assert!(!accept(&mut w, 0));
        assert!(matches!(
            w.check(0),
            Err(Error::PeerMisbehaved(PeerMisbehaved::Replay))
        ));
        assert!(accept(&mut w, 1));
        assert_eq!(w.highest(), Some(1));
    }

    #[test]
    fn check_alone_changes_nothing() {
        let mut w = ReplayWindow::new();
        let before = w.clone();
        w.check(1_000_000).unwrap();
        assert_eq!(w, before);
        w.commit(10);
        let before = w.clone();
        w.check(u64::MAX).unwrap();
        w.check(9).unwrap();
        assert!(w.check(10).is_err());
        assert_eq!(w, before);
    }

    #[test]
    fn duplicates_and_out_of_order_inside_the_window() {
        let mut w = ReplayWindow::new();
        assert!(accept(&mut w, 100));
        assert!(accept(&mut w, 5));
        assert!(accept(&mut w, 99));
        assert!(accept(&mut w, 7));
        assert!(accept(&mut w, 6));
        assert!(!accept(&mut w, 100));
        assert!(!accept(&mut w, 5));
        assert!(accept(&mut w, 101));
        assert!(accept(&mut w, 0));
        assert!(!accept(&mut w, 0));
        assert!(!accept(&mut w, 99));
    }

    #[test]
    fn lower_edge_exactly() {
        let mut w = ReplayWindow::new();
        let top = 3 * WINDOW + 17;
        assert!(accept(&mut w, top));
        // The oldest acceptable counter is top - (WINDOW - 1); one below it is too old.
        assert!(w.check(top - WINDOW).is_err());
        assert!(!accept(&mut w, top - WINDOW));
        assert!(accept(&mut w, top - WINDOW + 1));
        assert!(!accept(&mut w, top - WINDOW + 1));
        // Every counter of the window is usable: all 8192 bits count.
        for c in top - WINDOW + 2..top {
            assert!(accept(&mut w, c), "{c}");
        }
        for c in top - WINDOW + 1..=top {
            assert!(w.check(c).is_err(), "{c}");
        }
        // Advancing by one drops exactly the oldest.
        assert!(accept(&mut w, top + 1));
        assert!(w.check(top - WINDOW + 1).is_err());
        assert!(w.check(top - WINDOW + 2).is_err());
    }

    #[test]
    fn stale_bits_are_cleared_when_sliding() {
        // Counter c and c + WINDOW share a ring position: after sliding, the old bit must not
        // make the new counter look replayed.
        let mut w = ReplayWindow::new();
        for c in 0..64 {
            assert!(accept(&mut w, c));
        }
        assert!(accept(&mut w, WINDOW + 10));
        for c in 11..64 {
            assert!(w.check(c).is_err(), "{c} is seen");
        }
        for c in WINDOW..WINDOW + 10 {
            assert!(accept(&mut w, c), "{c} is new");
        }
        for c in WINDOW + 11..WINDOW + 64 {
            assert!(accept(&mut w, c), "{c} is new");
        }
    }

    #[test]
    fn far_ahead_jump_resets_the_whole_window() {
        let mut w = ReplayWindow::new();
        for c in 0..WINDOW {
            assert!(accept(&mut w, c));
        }
        let far = 10 * WINDOW + 5;
        assert!(accept(&mut w, far));
        // Everything before the new window is too old; everything in it is fresh except far.
        assert!(w.check(far - WINDOW).is_err());
        assert!(w.check(WINDOW - 1).is_err());
        for c in far - WINDOW + 1..far {
            assert!(w.check(c).is_ok(), "{c}");
        }
        assert!(w.check(far).is_err());
        // A jump of exactly WINDOW clears everything too.
        assert!(accept(&mut w, far + WINDOW));
        assert!(w.check(far).is_err());
        assert!(w.check(far + 1).is_ok());
    }

    #[test]
    fn near_u64_max_without_overflow() {
        let mut w = ReplayWindow::new();
        assert!(accept(&mut w, u64::MAX - 1));
        assert!(accept(&mut w, u64::MAX));
        assert!(!accept(&mut w, u64::MAX));
        assert!(!accept(&mut w, u64::MAX - 1));
        assert!(accept(&mut w, u64::MAX - 2));
        assert!(accept(&mut w, u64::MAX - (WINDOW - 1)));
        assert!(!accept(&mut w, u64::MAX - WINDOW));
        assert!(!accept(&mut w, 0));

        // Straight from 0 to the top, and sliding across the ring's wrap near it.
        let mut w = ReplayWindow::new();
        assert!(accept(&mut w, 0));
        assert!(accept(&mut w, u64::MAX - 100));
        assert!(!accept(&mut w, 0));
        for c in u64::MAX - 99..=u64::MAX {
            assert!(accept(&mut w, c));
        }
        assert!(w.check(u64::MAX).is_err());
        assert_eq!(w.highest(), Some(u64::MAX));
    }

    #[test]
    fn commit_of_an_old_counter_is_ignored() {
        let mut w = ReplayWindow::new();
        w.commit(2 * WINDOW);
        let before = w.clone();
        w.commit(WINDOW);
        assert_eq!(w, before);
    }

    /// Against a plain set of accepted counters, over random walks of jumps back and forth.
    #[test]
    fn agrees_with_a_set_model() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for start in [0, 1 << 40, u64::MAX - 3 * WINDOW] {
            let mut w = ReplayWindow::new();
            let mut seen = BTreeSet::new();
            let mut top = start;
            for _ in 0..20_000 {
                let r = next();
                let c = match r % 8 {
                    0 => top.saturating_add(r >> 54),
                    1 => top.saturating_add((r >> 40) % (2 * WINDOW)),
                    2 => top.saturating_sub((r >> 40) % (WINDOW + 64)),
                    3 => top.saturating_sub(WINDOW - 1 + (r >> 62)),
                    _ => top.saturating_sub((r >> 40) % 256),
                };
                let highest = seen.last().copied();
                let expect = match highest {
                    None => true,
                    Some(h) => c > h || (h - c < WINDOW && !seen.contains(&c)),
                };
                assert_eq!(
                    accept(&mut w, c),
                    expect,
                    "counter {c}, highest {highest:?}"
                );
                if expect {
                    seen.insert(c);
                    top = top.max(c);
                }
            }
        }
    }
}
