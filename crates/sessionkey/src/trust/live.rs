//! Revocation while running: the authorized-peer set a server consults at each handshake,
//! swappable without a restart ([`LivePeers`]), and the live sessions by peer key, so that
//! every session of a key that is no longer authorized can be closed at once
//! ([`LiveSessions::revoke`]).
//!
//! A source of authorized peers (a reloaded file, a database) keeps a [`LivePeers`] up to
//! date; what it removes it passes to [`LiveSessions::revoke`]:
//!
//! ```
//! use sessionkey::trust::{LivePeers, LiveSessions, PeerKey};
//! # let (alice, bob): (PeerKey, PeerKey) = (
//! #     "tls-spki-sha256 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".parse().unwrap(),
//! #     "tls-spki-sha256 AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=".parse().unwrap());
//! let peers = LivePeers::from_keys([alice, bob]);
//! let sessions = LiveSessions::default();
//! let session = sessions.register(bob); // after bob's handshake; held by its task
//! for removed in peers.replace([alice]) {
//!     sessions.revoke(&removed); // bob's task sees `session.revoked()` and closes
//! }
//! assert!(session.is_revoked() && !peers.contains(&bob));
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::sync::Notify;

use super::{AuthorizedPeers, PeerKey};

/// The keys a server admits, consulted at every handshake (by the native responder's
/// authorizer and the TLS client-certificate verifier) and replaceable while the server
/// runs. Clones share the set.
///
/// A lookup takes a read lock on a pointer and hashes one key; a replacement builds the new
/// set first and swaps it in, so handshakes never wait for a reload to parse anything.
#[derive(Debug, Clone, Default)]
pub struct LivePeers {
    set: Arc<RwLock<Arc<HashSet<PeerKey>>>>,
}

impl LivePeers {
    /// A set holding `keys`.
    pub fn from_keys(keys: impl IntoIterator<Item = PeerKey>) -> Self {
        Self {
            set: Arc::new(RwLock::new(Arc::new(keys.into_iter().collect()))),
        }
    }

    /// The current set (a snapshot: later changes do not show in it).
    pub fn snapshot(&self) -> Arc<HashSet<PeerKey>> {
        self.set
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether `key` is admitted now.
    pub fn contains(&self, key: &PeerKey) -> bool {
        self.snapshot().contains(key)
    }

    /// Make `keys` the set; returns the keys that were in the old set and are not in the
    /// new one, for the caller to [revoke](LiveSessions::revoke).
    pub fn replace(&self, keys: impl IntoIterator<Item = PeerKey>) -> Vec<PeerKey> {
        let new: Arc<HashSet<PeerKey>> = Arc::new(keys.into_iter().collect());
        let old = std::mem::replace(
            &mut *self.set.write().unwrap_or_else(PoisonError::into_inner),
            new.clone(),
        );
        old.difference(&new).copied().collect()
    }

    /// Admit one more key; false if it was admitted already.
    pub fn insert(&self, key: PeerKey) -> bool {
        let mut slot = self.set.write().unwrap_or_else(PoisonError::into_inner);
        if slot.contains(&key) {
            return false;
        }
        Arc::make_mut(&mut slot).insert(key);
        true
    }

    /// Stop admitting `key`; false if it was not admitted. Its live sessions go on until
    /// the caller [revokes](LiveSessions::revoke) them.
    pub fn remove(&self, key: &PeerKey) -> bool {
        let mut slot = self.set.write().unwrap_or_else(PoisonError::into_inner);
        if !slot.contains(key) {
            return false;
        }
        Arc::make_mut(&mut slot).remove(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    /// Whether no key is admitted.
    pub fn is_empty(&self) -> bool {
        self.snapshot().is_empty()
    }

    /// Number of sessionkey identities.
    pub fn native_keys(&self) -> usize {
        self.snapshot()
            .iter()
            .filter(|k| matches!(k, PeerKey::Native(_)))
            .count()
    }

    /// Number of TLS certificate keys.
    pub fn tls_keys(&self) -> usize {
        self.len() - self.native_keys()
    }
}

impl From<&AuthorizedPeers> for LivePeers {
    fn from(peers: &AuthorizedPeers) -> Self {
        Self::from_keys(peers.keys().copied())
    }
}

/// The close signal of one session.
#[derive(Debug, Default)]
struct Signal {
    revoked: AtomicBool,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Sessions {
    next: u64,
    by_key: HashMap<PeerKey, HashMap<u64, Arc<Signal>>>,
}

/// The live sessions of a server by the peer key they authenticated, so that all sessions
/// of one key can be closed at once. Clones share the registry.
#[derive(Debug, Clone, Default)]
pub struct LiveSessions {
    inner: Arc<Mutex<Sessions>>,
}

impl LiveSessions {
    /// Record a session of `key` until the returned guard is dropped. The session's task
    /// waits on [`LiveSession::revoked`] beside its data and closes the session when it
    /// fires.
    pub fn register(&self, key: PeerKey) -> LiveSession {
        let signal = Arc::new(Signal::default());
        let mut inner = self.lock();
        let id = inner.next;
        inner.next += 1;
        inner
            .by_key
            .entry(key)
            .or_default()
            .insert(id, signal.clone());
        LiveSession {
            sessions: self.clone(),
            key,
            id,
            signal,
        }
    }

    /// Close every live session of `key` (its authorization was withdrawn); returns how
    /// many there were, and logs a line naming the key's fingerprint.
    pub fn revoke(&self, key: &PeerKey) -> usize {
        let signals = self.lock().by_key.remove(key).unwrap_or_default();
        for signal in signals.values() {
            signal.fire();
        }
        let n = signals.len();
        let fingerprint = key.fingerprint();
        if n > 0 {
            tracing::warn!(
                key = %fingerprint,
                sessions = n,
                "key {fingerprint} is no longer authorized: closing its {n} live session(s)"
            );
        } else {
            tracing::info!(key = %fingerprint, "key {fingerprint} is no longer authorized (no live session)");
        }
        n
    }

    /// Close every live session (its server stops); returns how many there were.
    pub fn close_all(&self) -> usize {
        let all = std::mem::take(&mut self.lock().by_key);
        all.values()
            .flat_map(HashMap::values)
            .map(|s| s.fire())
            .count()
    }

    /// Live sessions of `key`.
    pub fn count(&self, key: &PeerKey) -> usize {
        self.lock().by_key.get(key).map_or(0, HashMap::len)
    }

    /// All live sessions.
    pub fn len(&self) -> usize {
        self.lock().by_key.values().map(HashMap::len).sum()
    }

    /// Whether there is no live session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Signal {
    fn fire(&self) {
        self.revoked.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// One registered session; dropping it (when the session ends) removes it.
#[derive(Debug)]
pub struct LiveSession {
    sessions: LiveSessions,
    key: PeerKey,
    id: u64,
    signal: Arc<Signal>,
}

impl LiveSession {
    /// The key the session authenticated.
    pub fn key(&self) -> &PeerKey {
        &self.key
    }

    /// Whether the session was revoked (or its server stopped).
    pub fn is_revoked(&self) -> bool {
        self.signal.revoked.load(Ordering::Acquire)
    }

    /// Resolves once the session is revoked (at once if it already was).
    pub async fn revoked(&self) {
        loop {
            let notified = self.signal.notify.notified();
            tokio::pin!(notified);
            // Registered as a waiter before the flag is read, so no firing is missed.
            notified.as_mut().enable();
            if self.is_revoked() {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        let mut inner = self.sessions.lock();
        if let Some(of_key) = inner.by_key.get_mut(&self.key) {
            of_key.remove(&self.id);
            if of_key.is_empty() {
                inner.by_key.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessionkey_proto::keys::PublicKey;

    fn key(b: u8) -> PeerKey {
        PeerKey::Native(PublicKey::from_bytes([b; 32]))
    }

    #[test]
    fn replace_reports_exactly_the_removed_keys() {
        let peers = LivePeers::from_keys([key(1), key(2), key(3)]);
        let shared = peers.clone();
        let mut removed = peers.replace([key(2), key(4)]);
        removed.sort_by_key(|k| k.fingerprint().to_string());
        let mut want = vec![key(1), key(3)];
        want.sort_by_key(|k| k.fingerprint().to_string());
        assert_eq!(removed, want);
        // A clone (what a running responder holds) sees the new set.
        assert!(shared.contains(&key(4)) && shared.contains(&key(2)));
        assert!(!shared.contains(&key(1)) && !shared.contains(&key(3)));
        assert_eq!(shared.len(), 2);
    }

    #[test]
    fn insert_and_remove_one_key() {
        let peers = LivePeers::default();
        assert!(peers.insert(key(1)));
        assert!(!peers.insert(key(1)));
        let before = peers.snapshot();
        assert!(peers.remove(&key(1)));
        assert!(!peers.remove(&key(1)));
        assert!(!peers.contains(&key(1)));
        // A snapshot taken before is not changed under its holder.
        assert!(before.contains(&key(1)));
    }

    #[test]
    fn counts_by_kind() {
        let tls: PeerKey = "tls-spki-sha256 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
            .parse()
            .unwrap();
        let peers = LivePeers::from_keys([key(1), key(2), tls]);
        assert_eq!((peers.native_keys(), peers.tls_keys()), (2, 1));
    }

    #[tokio::test]
    async fn revoke_closes_every_session_of_the_key_and_no_other() {
        let sessions = LiveSessions::default();
        let a1 = sessions.register(key(1));
        let a2 = sessions.register(key(1));
        let b = sessions.register(key(2));
        let waiting = tokio::spawn({
            let sessions = sessions.clone();
            let a = sessions.register(key(1));
            async move {
                a.revoked().await;
                drop(a);
                sessions.count(&key(1))
            }
        });
        tokio::task::yield_now().await;
        assert_eq!(sessions.revoke(&key(1)), 3);
        assert!(a1.is_revoked() && a2.is_revoked() && !b.is_revoked());
        // The waiting task woke up; a session revoked before its wait returns at once.
        waiting.await.unwrap();
        a1.revoked().await;
        assert_eq!(sessions.count(&key(2)), 1);
        assert_eq!(sessions.revoke(&key(1)), 0);
        // A session that ends removes itself.
        drop(b);
        assert!(sessions.is_empty());
    }

    #[test]
    fn close_all_fires_every_session() {
        let sessions = LiveSessions::default();
        let a = sessions.register(key(1));
        let b = sessions.register(key(2));
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions.close_all(), 2);
        assert!(a.is_revoked() && b.is_revoked());
        assert!(sessions.is_empty());
        // Dropping after removal is harmless.
        drop(a);
        drop(b);
    }
}
