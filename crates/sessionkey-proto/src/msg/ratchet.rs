//! The Double Ratchet (Signal's specification, revision 3): an X25519 DH ratchet per round
//! trip, an HKDF root chain, HMAC-SHA256 message chains, single-use message keys under the
//! core's AEAD suites, the header authenticated as associated data, and bounded skipped keys
//! (docs/MESSAGING.md, "Double Ratchet").
//!
//! Decryption works on a copy: it computes every new value (chain keys, skipped keys, root
//! key) into locals, authenticates the message, and only then commits them. A failed, forged
//! or duplicated message leaves the state exactly as it was (the flaw of RUSTSEC-2024-0011 in
//! another protocol library was advancing state before authentication).

use std::collections::VecDeque;

use super::kdf::{ChainKey, MessageKey, RootKey};
use super::keys::{decode_key32, encode_key, DhKeyPair, KeyType};
use super::wire::Reader;
use super::{
    MsgError, Timestamp, MAX_SKIP, MAX_SKIPPED_PER_CHAIN, MAX_SKIPPED_PER_SESSION,
    SKIPPED_KEY_LIFETIME_SECS,
};
use crate::crypto::SecureRandom;
use crate::suite::Suite;

/// Version of the message header. Bits 0-6 are the version; bit 7 is reserved for
/// encrypted headers (the Double Ratchet's section 4) and must be clear.
pub const HEADER_VERSION: u8 = 0x01;
/// The reserved "header encrypted" bit of the version byte.
pub const HEADER_ENCRYPTED_FLAG: u8 = 0x80;
/// Length of an encoded [`Header`].
pub const HEADER_LEN: usize = 1 + 1 + 33 + 4 + 4;

/// Earlier remote ratchet keys remembered, so that a late message of an old chain whose key
/// is gone is reported as [`MsgError::Duplicated`] instead of being mistaken for a new step.
const PREVIOUS_REMOTE_KEYS: usize = 8;

/// The clear header of a ratchet message, authenticated (not encrypted) with the body.
///
/// Encoding, 43 bytes: `version (0x01) || suite id || 0x08 || ratchet key (32) ||
/// previous chain length (u32 BE) || message number (u32 BE)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The AEAD suite of the session.
    pub suite: Suite,
    /// The sender's current ratchet public key.
    pub ratchet_key: [u8; 32],
    /// Number of messages in the sender's previous sending chain (PN).
    pub previous_chain_len: u32,
    /// This message's number in its sending chain (N).
    pub n: u32,
}

impl Header {
    /// The 43-byte encoding.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut v = Vec::with_capacity(HEADER_LEN);
        v.push(HEADER_VERSION);
        v.push(self.suite.id());
        encode_key(KeyType::X25519Ratchet, &self.ratchet_key, &mut v);
        v.extend_from_slice(&self.previous_chain_len.to_be_bytes());
        v.extend_from_slice(&self.n.to_be_bytes());
        let mut out = [0; HEADER_LEN];
        out.copy_from_slice(&v);
        out
    }

    /// Parse exactly [`HEADER_LEN`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MsgError> {
        let mut r = Reader::new(bytes, MsgError::InvalidMessage("header truncated"));
        let version = r.u8()?;
        if version != HEADER_VERSION {
            return Err(MsgError::UnsupportedVersion(version));
        }
        let suite = Suite::from_id(r.u8()?).ok_or(MsgError::InvalidMessage("unknown suite"))?;
        let ratchet_key = decode_key32(&mut r, KeyType::X25519Ratchet)?;
        let previous_chain_len = r.u32()?;
        let n = r.u32()?;
        r.finish()
            .map_err(|_| MsgError::InvalidMessage("header too long"))?;
        Ok(Self {
            suite,
            ratchet_key,
            previous_chain_len,
            n,
        })
    }
}

/// A stored message key of a skipped message.
struct SkippedKey {
    ratchet_key: [u8; 32],
    n: u32,
    key: MessageKey,
    stored: Timestamp,
}

impl SkippedKey {
    fn expired(&self, now: Timestamp) -> bool {
        now.unix_secs().saturating_sub(self.stored.unix_secs()) >= SKIPPED_KEY_LIFETIME_SECS
    }
}

/// Skipped message keys, oldest first, within [`MAX_SKIPPED_PER_CHAIN`] and
/// [`MAX_SKIPPED_PER_SESSION`]; the oldest go first when a bound is reached.
#[derive(Default)]
struct SkippedKeys {
    keys: VecDeque<SkippedKey>,
    /// Keys dropped by a bound since the state was loaded (not stored).
    evicted: u32,
    /// Keys dropped by age since the state was loaded (not stored).
    expired: u32,
}

impl SkippedKeys {
    fn find(&self, ratchet_key: &[u8; 32], n: u32, now: Timestamp) -> Option<usize> {
        self.keys
            .iter()
            .position(|k| k.n == n && k.ratchet_key == *ratchet_key && !k.expired(now))
    }

    /// Store the keys of one chain, in ascending order, evicting the oldest beyond bounds.
    fn insert_chain(
        &mut self,
        ratchet_key: [u8; 32],
        mut keys: Vec<(u32, MessageKey)>,
        now: Timestamp,
    ) {
        if keys.len() > MAX_SKIPPED_PER_CHAIN {
            let over = keys.len() - MAX_SKIPPED_PER_CHAIN;
            keys.drain(..over);
            self.evicted = self.evicted.saturating_add(over as u32);
        }
        let held = self
            .keys
            .iter()
            .filter(|k| k.ratchet_key == ratchet_key)
            .count();
        let mut evict = (held + keys.len()).saturating_sub(MAX_SKIPPED_PER_CHAIN);
        if evict > 0 {
            self.evicted = self.evicted.saturating_add(evict as u32);
            self.keys.retain(|k| {
                if evict > 0 && k.ratchet_key == ratchet_key {
                    evict -= 1;
                    false
                } else {
                    true
                }
            });
        }
        for (n, key) in keys {
            if self.keys.len() >= MAX_SKIPPED_PER_SESSION && self.keys.pop_front().is_some() {
                self.evicted = self.evicted.saturating_add(1);
            }
            self.keys.push_back(SkippedKey {
                ratchet_key,
                n,
                key,
                stored: now,
            });
        }
    }

    fn prune(&mut self, now: Timestamp) {
        let before = self.keys.len();
        self.keys.retain(|k| !k.expired(now));
        self.expired = self
            .expired
            .saturating_add((before - self.keys.len()) as u32);
    }
}

/// Step `chain` (at message number `from`) to message `to`: the chain key after `to`, the
/// keys of the skipped messages `from..to`, and the key of message `to`.
#[allow(clippy::type_complexity)]
fn advance(
    chain: &ChainKey,
    from: u32,
    to: u32,
) -> Result<(ChainKey, Vec<(u32, MessageKey)>, MessageKey), MsgError> {
    let (ck, skipped) = skip(chain, from, to)?;
    let (next, mk) = ck.step();
    Ok((next, skipped, mk))
}

/// Step `chain` (at message number `from`) up to `to`, keeping the keys of `from..to`.
fn skip(
    chain: &ChainKey,
    from: u32,
    to: u32,
) -> Result<(ChainKey, Vec<(u32, MessageKey)>), MsgError> {
    let gap = u64::from(to).saturating_sub(u64::from(from));
    if gap > u64::from(MAX_SKIP) {
        return Err(MsgError::TooFarAhead {
            skip: gap,
            max: MAX_SKIP,
        });
    }
    let mut ck = chain.duplicate();
    let mut keys = Vec::with_capacity(gap as usize);
    for n in from..to {
        let (next, mk) = ck.step();
        keys.push((n, mk));
        ck = next;
    }
    Ok((ck, keys))
}

/// The Double Ratchet state of one session (section 3.2's variables).
pub(crate) struct Ratchet {
    suite: Suite,
    ad_hash: [u8; 32],
    /// DHs: our current ratchet key pair.
    dhs: DhKeyPair,
    /// DHr: the peer's current ratchet key.
    dhr: Option<[u8; 32]>,
    rk: RootKey,
    cks: Option<ChainKey>,
    ckr: Option<ChainKey>,
    ns: u32,
    nr: u32,
    pn: u32,
    previous_remote: VecDeque<[u8; 32]>,
    skipped: SkippedKeys,
}

impl Ratchet {
    /// RatchetInitAlice (section 3.3): a fresh ratchet key against the responder's signed
    /// prekey gives the first sending chain.
    pub(crate) fn init_initiator(
        suite: Suite,
        ad_hash: [u8; 32],
        sk: RootKey,
        their_signed_prekey: &[u8; 32],
        rng: &mut dyn SecureRandom,
    ) -> Result<Self, MsgError> {
        let dhs = DhKeyPair::generate(rng)?;
        let (rk, cks) = sk.ratchet(&*dhs.agree(their_signed_prekey)?);
        Ok(Self {
            suite,
            ad_hash,
            dhs,
            dhr: Some(*their_signed_prekey),
            rk,
            cks: Some(cks),
            ckr: None,
            ns: 0,
            nr: 0,
            pn: 0,
            previous_remote: VecDeque::new(),
            skipped: SkippedKeys::default(),
        })
    }

    /// RatchetInitBob (section 3.3): the signed prekey is the first ratchet key pair.
    pub(crate) fn init_responder(
        suite: Suite,
        ad_hash: [u8; 32],
        sk: RootKey,
        signed_prekey: DhKeyPair,
    ) -> Self {
        Self {
            suite,
            ad_hash,
            dhs: signed_prekey,
            dhr: None,
            rk: sk,
            cks: None,
            ckr: None,
            ns: 0,
            nr: 0,
            pn: 0,
            previous_remote: VecDeque::new(),
            skipped: SkippedKeys::default(),
        }
    }

    pub(crate) fn suite(&self) -> Suite {
        self.suite
    }

    /// Number of skipped message keys held.
    pub(crate) fn skipped_len(&self) -> usize {
        self.skipped.keys.len()
    }

    /// Skipped keys dropped since this state was made or loaded: (evicted by a bound,
    /// expired).
    pub(crate) fn dropped_skipped(&self) -> (u32, u32) {
        (self.skipped.evicted, self.skipped.expired)
    }

    fn aad(&self, header: &[u8]) -> Vec<u8> {
        [&self.ad_hash[..], header].concat()
    }

    /// RatchetEncrypt (section 3.4): append `header || ciphertext || tag` to `out`.
    pub(crate) fn encrypt(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), MsgError> {
        let cks = self
            .cks
            .as_ref()
            .ok_or(MsgError::CorruptState("no sending chain"))?;
        if self.ns == u32::MAX {
            return Err(MsgError::ChainExhausted);
        }
        let (next, mk) = cks.step();
        let header = Header {
            suite: self.suite,
            ratchet_key: *self.dhs.public(),
            previous_chain_len: self.pn,
            n: self.ns,
        }
        .to_bytes();
        let aad = self.aad(&header);
        let start = out.len();
        out.extend_from_slice(&header);
        if let Err(e) = mk.seal(self.suite, &aad, plaintext, out) {
            out.truncate(start);
            return Err(e);
        }
        self.cks = Some(next);
        self.ns += 1;
        Ok(())
    }

    /// RatchetDecrypt (section 3.5) on a copy: `message` is `header || ciphertext || tag`.
    /// State changes only when the message authenticates.
    pub(crate) fn decrypt(
        &mut self,
        message: &[u8],
        now: Timestamp,
        rng: &mut dyn SecureRandom,
    ) -> Result<Vec<u8>, MsgError> {
        if message.len() < HEADER_LEN {
            return Err(MsgError::InvalidMessage("shorter than a header"));
        }
        let (header_bytes, body) = message.split_at(HEADER_LEN);
        let header = Header::from_bytes(header_bytes)?;
        if header.suite != self.suite {
            return Err(MsgError::InvalidMessage("suite differs from the session's"));
        }
        let aad = self.aad(header_bytes);

        // A skipped message: its stored key, used once.
        if let Some(i) = self.skipped.find(&header.ratchet_key, header.n, now) {
            let plaintext = self.skipped.keys[i].key.open(self.suite, &aad, body)?;
            self.skipped.keys.remove(i);
            self.skipped.prune(now);
            return Ok(plaintext);
        }

        // The current receiving chain.
        if self.dhr == Some(header.ratchet_key) {
            let ckr = self
                .ckr
                .as_ref()
                .ok_or(MsgError::InvalidMessage("no receiving chain for this key"))?;
            if header.n < self.nr {
                return Err(MsgError::Duplicated);
            }
            let (ckr, skipped, mk) = advance(ckr, self.nr, header.n)?;
            let plaintext = mk.open(self.suite, &aad, body)?;
            self.skipped.insert_chain(header.ratchet_key, skipped, now);
            self.skipped.prune(now);
            self.ckr = Some(ckr);
            self.nr = header.n + 1;
            return Ok(plaintext);
        }
        if self.previous_remote.contains(&header.ratchet_key) {
            return Err(MsgError::Duplicated);
        }

        // A new ratchet key: a DH ratchet step (section 3.5's DHRatchet), computed aside.
        let old_chain = match (&self.ckr, self.dhr) {
            (Some(ckr), Some(dhr)) => {
                let (_, keys) = skip(ckr, self.nr, header.previous_chain_len.max(self.nr))?;
                Some((dhr, keys))
            }
            _ => None,
        };
        let (rk, ckr) = self.rk.ratchet(&*self.dhs.agree(&header.ratchet_key)?);
        let (ckr, skipped, mk) = advance(&ckr, 0, header.n)?;
        let plaintext = mk.open(self.suite, &aad, body)?;

        // Authenticated: the new sending chain, then commit everything.
        let dhs = DhKeyPair::generate(rng)?;
        let (rk, cks) = rk.ratchet(&*dhs.agree(&header.ratchet_key)?);
        if let Some((dhr, keys)) = old_chain {
            self.skipped.insert_chain(dhr, keys, now);
            if self.previous_remote.len() == PREVIOUS_REMOTE_KEYS {
                self.previous_remote.pop_front();
            }
            self.previous_remote.push_back(dhr);
        }
        self.skipped.insert_chain(header.ratchet_key, skipped, now);
        self.skipped.prune(now);
        self.pn = self.ns;
        self.ns = 0;
        self.nr = header.n + 1;
        self.dhr = Some(header.ratchet_key);
        self.dhs = dhs;
        self.rk = rk;
        self.ckr = Some(ckr);
        self.cks = Some(cks);
        Ok(plaintext)
    }

    /// An upper bound of the length [`Ratchet::write`] appends.
    pub(crate) fn stored_len_bound(&self) -> usize {
        1 + 32
            + 33
            + 34
            + 32
            + 2 * 33
            + 3 * 4
            + 1
            + PREVIOUS_REMOTE_KEYS * 32
            + 2
            + self.skipped.keys.len() * (32 + 4 + 32 + 8)
    }

    /// Append the stored form (docs/MESSAGING.md, "Stored session").
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        fn chain(out: &mut Vec<u8>, ck: Option<&ChainKey>) {
            match ck {
                Some(ck) => {
                    out.push(1);
                    out.extend_from_slice(ck.expose());
                }
                None => out.push(0),
            }
        }
        out.push(self.suite.id());
        out.extend_from_slice(&self.ad_hash);
        self.dhs.write_secret(KeyType::X25519Ratchet, out);
        match &self.dhr {
            Some(k) => {
                out.push(1);
                encode_key(KeyType::X25519Ratchet, k, out);
            }
            None => out.push(0),
        }
        out.extend_from_slice(self.rk.expose());
        chain(out, self.cks.as_ref());
        chain(out, self.ckr.as_ref());
        for n in [self.ns, self.nr, self.pn] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        // Bounded by PREVIOUS_REMOTE_KEYS.
        out.push(self.previous_remote.len() as u8);
        for k in &self.previous_remote {
            out.extend_from_slice(k);
        }
        // Bounded by MAX_SKIPPED_PER_SESSION, below 2^16.
        out.extend_from_slice(&(self.skipped.keys.len() as u16).to_be_bytes());
        for k in &self.skipped.keys {
            out.extend_from_slice(&k.ratchet_key);
            out.extend_from_slice(&k.n.to_be_bytes());
            out.extend_from_slice(k.key.expose());
            out.extend_from_slice(&k.stored.unix_secs().to_be_bytes());
        }
    }

    /// Read the stored form back; anything inconsistent is [`MsgError::CorruptState`].
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, MsgError> {
        fn chain(r: &mut Reader<'_>) -> Result<Option<ChainKey>, MsgError> {
            Ok(if r.flag()? {
                Some(ChainKey::from_bytes(*r.secret::<32>()?))
            } else {
                None
            })
        }
        let suite = Suite::from_id(r.u8()?).ok_or(MsgError::CorruptState("unknown suite"))?;
        let ad_hash = r.array()?;
        let dhs = DhKeyPair::read_secret(r, KeyType::X25519Ratchet)?;
        let dhr = if r.flag()? {
            Some(
                decode_key32(r, KeyType::X25519Ratchet)
                    .map_err(|_| MsgError::CorruptState("remote ratchet key"))?,
            )
        } else {
            None
        };
        let rk = RootKey::from_bytes(*r.secret::<32>()?);
        let cks = chain(r)?;
        let ckr = chain(r)?;
        let (ns, nr, pn) = (r.u32()?, r.u32()?, r.u32()?);
        let count = usize::from(r.u8()?);
        if count > PREVIOUS_REMOTE_KEYS {
            return Err(MsgError::CorruptState("too many previous ratchet keys"));
        }
        let mut previous_remote = VecDeque::with_capacity(count);
        for _ in 0..count {
            previous_remote.push_back(r.array()?);
        }
        let count = usize::from(r.u16()?);
        if count > MAX_SKIPPED_PER_SESSION {
            return Err(MsgError::CorruptState("too many skipped keys"));
        }
        let mut skipped = SkippedKeys::default();
        for _ in 0..count {
            skipped.keys.push_back(SkippedKey {
                ratchet_key: r.array()?,
                n: r.u32()?,
                key: MessageKey::from_bytes(*r.secret::<32>()?),
                stored: Timestamp::from_unix_secs(r.u64()?),
            });
        }
        Ok(Self {
            suite,
            ad_hash,
            dhs,
            dhr,
            rk,
            cks,
            ckr,
            ns,
            nr,
            pn,
            previous_remote,
            skipped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SystemRandom;

    fn pair() -> (Ratchet, Ratchet) {
        let spk = DhKeyPair::generate(&mut SystemRandom).unwrap();
        let spk_pub = *spk.public();
        let a = Ratchet::init_initiator(
            Suite::ChaCha20Poly1305,
            [5; 32],
            RootKey::from_bytes([1; 32]),
            &spk_pub,
            &mut SystemRandom,
        )
        .unwrap();
        let b = Ratchet::init_responder(
            Suite::ChaCha20Poly1305,
            [5; 32],
            RootKey::from_bytes([1; 32]),
            spk,
        );
        (a, b)
    }

    fn seal(r: &mut Ratchet, text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        r.encrypt(text, &mut out).unwrap();
        out
    }

    #[test]
    fn header_round_trip_and_reserved_bit() {
        let h = Header {
            suite: Suite::Aes256Gcm,
            ratchet_key: [7; 32],
            previous_chain_len: 3,
            n: 9,
        };
        let bytes = h.to_bytes();
        assert_eq!(Header::from_bytes(&bytes).unwrap(), h);
        let mut flagged = bytes;
        flagged[0] |= HEADER_ENCRYPTED_FLAG;
        assert_eq!(
            Header::from_bytes(&flagged),
            Err(MsgError::UnsupportedVersion(0x81))
        );
        assert!(Header::from_bytes(&bytes[..42]).is_err());
    }

    #[test]
    fn skipped_keys_respect_both_bounds() {
        let now = Timestamp::from_unix_secs(1000);
        let mut s = SkippedKeys::default();
        let keys = |range: std::ops::Range<u32>| {
            range
                .map(|n| (n, MessageKey::from_bytes([n as u8; 32])))
                .collect::<Vec<_>>()
        };
        s.insert_chain([1; 32], keys(0..1500), now);
        assert_eq!(s.keys.len(), MAX_SKIPPED_PER_CHAIN);
        assert_eq!(
            s.keys.front().unwrap().n,
            500,
            "the oldest of the chain went first"
        );
        assert_eq!(s.evicted, 500, "dropped keys are counted");
        s.insert_chain([2; 32], keys(0..700), now);
        s.insert_chain([3; 32], keys(0..700), now);
        assert_eq!(s.keys.len(), MAX_SKIPPED_PER_SESSION);
        assert_eq!(s.keys.front().unwrap().ratchet_key, [1; 32]);
        assert_eq!(s.keys.front().unwrap().n, 900);
        s.insert_chain([3; 32], keys(700..1000), now);
        let of3 = s.keys.iter().filter(|k| k.ratchet_key == [3; 32]).count();
        assert_eq!(of3, 1000);
        let later = Timestamp::from_unix_secs(1000 + SKIPPED_KEY_LIFETIME_SECS);
        assert!(s.find(&[3; 32], 999, now).is_some());
        assert!(
            s.find(&[3; 32], 999, later).is_none(),
            "expired keys are not used"
        );
        assert_eq!(s.evicted as usize + s.keys.len(), 1500 + 700 + 700 + 300);
        let held = s.keys.len();
        s.prune(later);
        assert!(s.keys.is_empty());
        assert_eq!(s.expired as usize, held);
    }

    #[test]
    fn round_trips_and_stored_form() {
        let (mut a, mut b) = pair();
        let now = Timestamp::from_unix_secs(0);
        let m0 = seal(&mut a, b"zero");
        let m1 = seal(&mut a, b"one");
        assert_eq!(b.decrypt(&m1, now, &mut SystemRandom).unwrap(), b"one");
        assert_eq!(b.skipped_len(), 1);
        let mut stored = Vec::new();
        b.write(&mut stored);
        let mut r = Reader::new(&stored, MsgError::CorruptState("truncated"));
        let mut b = Ratchet::read(&mut r).unwrap();
        assert!(r.is_empty());
        assert_eq!(b.decrypt(&m0, now, &mut SystemRandom).unwrap(), b"zero");
        assert_eq!(
            b.decrypt(&m0, now, &mut SystemRandom),
            Err(MsgError::Duplicated)
        );
        let r0 = seal(&mut b, b"reply");
        assert_eq!(a.decrypt(&r0, now, &mut SystemRandom).unwrap(), b"reply");
        for cut in 0..stored.len() {
            let mut r = Reader::new(&stored[..cut], MsgError::CorruptState("truncated"));
            assert!(Ratchet::read(&mut r).is_err());
        }
    }
}
