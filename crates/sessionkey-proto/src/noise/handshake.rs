//! HandshakeState (Noise section 5.3) with the HFS tokens.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::agreement::PrivateKey;
use aws_lc_rs::kem::EncapsulationKey;
use zeroize::Zeroizing;

use super::pattern::{MessagePattern, NoiseParams, Token};
use super::symmetric::{CipherState, SymmetricState};
use super::MAX_MESSAGE_LEN;
use crate::crypto::aead::TAG_LEN;
use crate::crypto::dh::{self, DH_LEN};
use crate::crypto::kem::{self, KemKeyPair};
use crate::crypto::{SecureRandom, SystemRandom};
use crate::error::{ApiMisuse, PeerMisbehaved};
use crate::keys::{Identity, Psk, PublicKey, SecretKey};
use crate::Error;

/// Builds a [`HandshakeState`]: protocol, prologue, keys and randomness.
///
/// ```
/// use std::sync::Arc;
/// use sessionkey_proto::crypto::SystemRandom;
/// use sessionkey_proto::keys::Identity;
/// use sessionkey_proto::noise::HandshakeBuilder;
///
/// let server = Arc::new(Identity::generate(&mut SystemRandom)?);
/// let client = Arc::new(Identity::generate(&mut SystemRandom)?);
/// let params = "Noise_IKhfs_25519+MLKEM768_AESGCM_SHA256".parse()?;
/// let mut initiator = HandshakeBuilder::new(params)
///     .local_static(client)
///     .remote_static(*server.public_key())
///     .build_initiator()?;
/// let mut responder = HandshakeBuilder::new(params).local_static(server).build_responder()?;
///
/// let (mut msg, mut payload) = (vec![0; 4096], vec![0; 4096]);
/// let n = initiator.write_message(b"hello", &mut msg)?;
/// let p = responder.read_message(&msg[..n], &mut payload)?;
/// assert_eq!(&payload[..p], b"hello");
/// let n = responder.write_message(&[], &mut msg)?;
/// initiator.read_message(&msg[..n], &mut payload)?;
/// assert!(initiator.is_finished() && responder.is_finished());
/// assert_eq!(initiator.handshake_hash(), responder.handshake_hash());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct HandshakeBuilder<'a> {
    params: NoiseParams,
    prologue: &'a [u8],
    s: Option<Arc<Identity>>,
    rs: Option<PublicKey>,
    psks: Vec<Psk>,
    defer_psks: bool,
    rng: Option<Box<dyn SecureRandom>>,
}

impl<'a> HandshakeBuilder<'a> {
    /// Start building a handshake for `params`.
    pub fn new(params: NoiseParams) -> Self {
        Self {
            params,
            prologue: &[],
            s: None,
            rs: None,
            psks: Vec::new(),
            defer_psks: false,
            rng: None,
        }
    }

    /// Data both sides must agree on, hashed in first (section 6).
    pub fn prologue(mut self, prologue: &'a [u8]) -> Self {
        self.prologue = prologue;
        self
    }

    /// This side's static key pair.
    pub fn local_static(mut self, identity: Arc<Identity>) -> Self {
        self.s = Some(identity);
        self
    }

    /// The peer's static public key, where the pattern has it as a pre-message.
    pub fn remote_static(mut self, key: PublicKey) -> Self {
        self.rs = Some(key);
        self
    }

    /// A pre-shared key; call once per psk modifier, in the order of the protocol name.
    pub fn psk(mut self, psk: Psk) -> Self {
        self.psks.push(psk);
        self
    }

    /// Build without the pre-shared keys; supply them later with
    /// [`HandshakeState::add_psk`], before the message whose `psk` token uses them. A
    /// responder that learns who the initiator is (and so which key to use) only from the
    /// first message needs this, as the VPN's responder does (`IKpsk2`: the psk is used in
    /// the second message). A missing psk makes that message fail.
    pub fn defer_psks(mut self) -> Self {
        self.defer_psks = true;
        self
    }

    /// The randomness for ephemeral X25519 keys (default: the system generator). ML-KEM keys
    /// always come from aws-lc's own generator.
    pub fn rng(mut self, rng: Box<dyn SecureRandom>) -> Self {
        self.rng = Some(rng);
        self
    }

    /// Build the initiator's state.
    pub fn build_initiator(self) -> Result<HandshakeState, Error> {
        self.build(true)
    }

    /// Build the responder's state.
    pub fn build_responder(self) -> Result<HandshakeState, Error> {
        self.build(false)
    }

    fn build(self, initiator: bool) -> Result<HandshakeState, Error> {
        let p = self.params;
        let pattern = p.pattern;
        let (needs_s, needs_rs) = if initiator {
            (
                pattern.initiator_has_static(),
                pattern.responder_premessage(),
            )
        } else {
            (
                pattern.responder_has_static(),
                pattern.initiator_premessage(),
            )
        };
        match (needs_s, self.s.is_some()) {
            (true, false) => return Err(ApiMisuse::MissingKey("local static key").into()),
            (false, true) => return Err(ApiMisuse::UnexpectedKey("local static key").into()),
            _ => {}
        }
        match (needs_rs, self.rs.is_some()) {
            (true, false) => return Err(ApiMisuse::MissingKey("remote static key").into()),
            (false, true) => return Err(ApiMisuse::UnexpectedKey("remote static key").into()),
            _ => {}
        }
        if self.psks.len() != p.psk_count() && !(self.defer_psks && self.psks.is_empty()) {
            return Err(if self.psks.len() < p.psk_count() {
                ApiMisuse::MissingKey("pre-shared key")
            } else {
                ApiMisuse::UnexpectedKey("pre-shared key")
            }
            .into());
        }

        let mut symmetric = p.with_name(|name| SymmetricState::initialize(name, p.cipher, p.hash));
        symmetric.mix_hash(self.prologue);
        // Pre-messages: the initiator's first, then the responder's (section 7.1).
        let local = self.s.as_ref().map(|s| *s.public_key().as_bytes());
        let remote = self.rs.map(|k| *k.as_bytes());
        let (init_s, resp_s) = if initiator {
            (local, remote)
        } else {
            (remote, local)
        };
        if pattern.initiator_premessage() {
            symmetric.mix_hash(&init_s.unwrap_or_default());
        }
        if pattern.responder_premessage() {
            symmetric.mix_hash(&resp_s.unwrap_or_default());
        }
        let (messages, message_count) = p.messages();
        Ok(HandshakeState {
            params: p,
            initiator,
            symmetric,
            s: self.s,
            e: None,
            rs: self.rs,
            re: None,
            e1: None,
            re1: None,
            psks: self.psks,
            next_psk: 0,
            messages,
            message_count,
            message_index: 0,
            failed: false,
            rng: self.rng.unwrap_or_else(|| Box::new(SystemRandom)),
        })
    }
}

/// A Noise handshake in progress (section 5.3).
///
/// Call [`write_message`](Self::write_message) and [`read_message`](Self::read_message) in
/// the pattern's order until [`is_finished`](Self::is_finished), then [`split`](Self::split)
/// or [`into_transport`](Self::into_transport). Any error is final: the state refuses all
/// further use, since a failed message may have changed the transcript.
pub struct HandshakeState {
    params: NoiseParams,
    initiator: bool,
    symmetric: SymmetricState,
    s: Option<Arc<Identity>>,
    e: Option<PrivateKey>,
    rs: Option<PublicKey>,
    re: Option<[u8; DH_LEN]>,
    e1: Option<KemKeyPair>,
    re1: Option<EncapsulationKey>,
    psks: Vec<Psk>,
    next_psk: usize,
    messages: [MessagePattern; 3],
    message_count: usize,
    message_index: usize,
    failed: bool,
    rng: Box<dyn SecureRandom>,
}

impl HandshakeState {
    /// The protocol being run.
    pub fn params(&self) -> &NoiseParams {
        &self.params
    }

    /// Whether this side is the initiator.
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }

    /// Whether all handshake messages have been processed.
    pub fn is_finished(&self) -> bool {
        self.message_index == self.message_count && !self.failed
    }

    /// Whether it is this side's turn to write.
    pub fn is_my_turn(&self) -> bool {
        !self.failed
            && self.message_index < self.message_count
            && (self.message_index % 2 == 0) == self.initiator
    }

    /// The handshake hash `h` so far; after the last message, the channel-binding value.
    pub fn handshake_hash(&self) -> &[u8; 32] {
        self.symmetric.handshake_hash()
    }

    /// The peer's static key, once known (given in advance or received).
    pub fn remote_static(&self) -> Option<&PublicKey> {
        self.rs.as_ref()
    }

    /// This side's static identity, if the pattern uses one.
    pub(crate) fn local_identity(&self) -> Option<Arc<Identity>> {
        self.s.clone()
    }

    fn check_turn(&self, writing: bool) -> Result<(), Error> {
        if self.failed {
            return Err(ApiMisuse::HandshakeFailed.into());
        }
        if self.message_index >= self.message_count {
            return Err(ApiMisuse::HandshakeFinished.into());
        }
        if self.is_my_turn() != writing {
            return Err(ApiMisuse::OutOfOrder(if writing { "write" } else { "read" }).into());
        }
        Ok(())
    }

    /// Bytes the next message adds to its payload, and whether its payload is encrypted;
    /// simulates the tokens.
    fn next_overhead(&self) -> (usize, bool) {
        let mut has_key = self.symmetric.has_key();
        let mut len = 0;
        let tag = |k: bool| if k { TAG_LEN } else { 0 };
        for t in self.messages[self.message_index].tokens() {
            match t {
                Token::E => {
                    len += DH_LEN;
                    has_key |= self.params.psk_count() > 0;
                }
                Token::S => len += DH_LEN + tag(has_key),
                Token::E1 => len += kem::PUBLIC_LEN + tag(has_key),
                Token::Ekem1 => {
                    len += kem::CIPHERTEXT_LEN + tag(has_key);
                    has_key = true;
                }
                Token::Ee | Token::Es | Token::Se | Token::Ss | Token::Psk => has_key = true,
            }
        }
        (len + tag(has_key), has_key)
    }

    /// The length of the next message this side writes with a payload of `payload_len` bytes.
    pub fn next_message_len(&self, payload_len: usize) -> usize {
        if self.message_index >= self.message_count {
            return 0;
        }
        self.next_overhead().0 + payload_len
    }

    /// Write the next handshake message, carrying `payload`, into `out`; returns its length.
    pub fn write_message(&mut self, payload: &[u8], out: &mut [u8]) -> Result<usize, Error> {
        self.check_turn(true)?;
        let overhead = self.next_overhead().0;
        let len = overhead + payload.len();
        if len > MAX_MESSAGE_LEN {
            return Err(ApiMisuse::PayloadTooLarge {
                len: payload.len(),
                max: MAX_MESSAGE_LEN - overhead,
            }
            .into());
        }
        if out.len() < len {
            return Err(ApiMisuse::BufferTooSmall {
                needed: len,
                have: out.len(),
            }
            .into());
        }
        let result = self.write_tokens(payload, &mut out[..len]);
        self.finish_step(result)
    }

    /// Read the next handshake message and write its payload into `payload_out`; returns the
    /// payload length.
    pub fn read_message(&mut self, message: &[u8], payload_out: &mut [u8]) -> Result<usize, Error> {
        self.check_turn(false)?;
        if message.len() > MAX_MESSAGE_LEN {
            self.failed = true;
            return Err(PeerMisbehaved::Oversized {
                len: message.len(),
                max: MAX_MESSAGE_LEN,
            }
            .into());
        }
        let (overhead, encrypted) = self.next_overhead();
        let Some(payload_len) = message.len().checked_sub(overhead) else {
            self.failed = true;
            return Err(PeerMisbehaved::Truncated {
                needed: overhead,
                got: message.len(),
            }
            .into());
        };
        // Decryption happens in place in `payload_out`, so it must hold the tag too. Checked
        // before any state changes, so the caller may retry with a larger buffer.
        let needed = payload_len + if encrypted { TAG_LEN } else { 0 };
        if payload_out.len() < needed {
            return Err(ApiMisuse::BufferTooSmall {
                needed,
                have: payload_out.len(),
            }
            .into());
        }
        let result = self.read_tokens(message, payload_out);
        self.finish_step(result)
    }

    /// [`read_message`](Self::read_message) for transports where anyone can inject a
    /// message (UDP): a message that fails, or whose payload `check` refuses, leaves this
    /// state exactly as it was, not failed, so a forgery does not end the handshake and
    /// the genuine message can still be read. Costs a copy of the symmetric state (a hash,
    /// a chaining key and a key; a restored copy rebuilds its AEAD key schedule when next
    /// used) per call. Retrying is sound: each attempt
    /// runs the same deterministic steps from the same state on attacker-chosen input, as
    /// WireGuard's response handling does, and ML-KEM decapsulation is safe against
    /// chosen ciphertexts.
    pub fn try_read_message(
        &mut self,
        message: &[u8],
        payload_out: &mut [u8],
        check: impl FnOnce(&[u8]) -> Result<(), Error>,
    ) -> Result<usize, Error> {
        self.check_turn(false)?;
        let symmetric = self.symmetric.clone_for_retry();
        let (re, rs, had_re1, next_psk) = (self.re, self.rs, self.re1.is_some(), self.next_psk);
        let (index, failed) = (self.message_index, self.failed);
        let result = self
            .read_message(message, payload_out)
            .and_then(|n| check(&payload_out[..n]).map(|()| n));
        if result.is_err() {
            self.message_index = index;
            self.symmetric = symmetric;
            self.re = re;
            self.rs = rs;
            if !had_re1 {
                // A message sets the remote KEM key at most once, where it was unset.
                self.re1 = None;
            }
            self.next_psk = next_psk;
            self.failed = failed;
        }
        result
    }

    fn finish_step(&mut self, result: Result<usize, Error>) -> Result<usize, Error> {
        match result {
            Ok(n) => {
                self.message_index += 1;
                Ok(n)
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    /// Supply a pre-shared key to a state built with [`HandshakeBuilder::defer_psks`], in
    /// the order of the protocol name's psk modifiers. Fails if the protocol needs no more.
    pub fn add_psk(&mut self, psk: Psk) -> Result<(), Error> {
        if self.psks.len() >= self.params.psk_count() {
            return Err(ApiMisuse::UnexpectedKey("pre-shared key").into());
        }
        self.psks.push(psk);
        Ok(())
    }

    fn take_psk(&mut self) -> Result<Zeroizing<[u8; 32]>, Error> {
        let psk = self
            .psks
            .get(self.next_psk)
            .ok_or(ApiMisuse::MissingKey("pre-shared key"))?;
        self.next_psk += 1;
        Ok(Zeroizing::new(*psk.expose()))
    }

    /// The DH for token `t`, from this side's point of view.
    fn dh(&self, t: Token) -> Result<Zeroizing<[u8; DH_LEN]>, Error> {
        let missing = |what| Error::from(ApiMisuse::MissingKey(what));
        let e = || self.e.as_ref().ok_or(missing("local ephemeral"));
        let s = || {
            self.s
                .as_ref()
                .map(|s| s.private())
                .ok_or(missing("local static"))
        };
        let re = || {
            self.re
                .as_ref()
                .map(|k| &k[..])
                .ok_or(missing("remote ephemeral"))
        };
        let rs = || {
            self.rs
                .as_ref()
                .map(|k| &k.as_bytes()[..])
                .ok_or(missing("remote static"))
        };
        // es: the initiator's e with the responder's s; se: the initiator's s with the
        // responder's e (section 7.1).
        match (t, self.initiator) {
            (Token::Ee, _) => dh::agree(e()?, re()?),
            (Token::Ss, _) => match &self.s {
                Some(identity) => identity.static_dh(rs()?),
                None => Err(missing("local static")),
            },
            (Token::Es, true) | (Token::Se, false) => dh::agree(e()?, rs()?),
            (Token::Es, false) | (Token::Se, true) => dh::agree(s()?, re()?),
            _ => unreachable!("dh called with a non-DH token"),
        }
    }

    fn write_tokens(&mut self, payload: &[u8], out: &mut [u8]) -> Result<usize, Error> {
        let mut pos = 0;
        let tokens = self.messages[self.message_index];
        for &t in tokens.tokens() {
            match t {
                Token::E => {
                    let mut secret = Zeroizing::new([0u8; DH_LEN]);
                    self.rng.fill(&mut secret[..])?;
                    let private = dh::private_from_bytes(&secret)?;
                    let public = dh::public_of(&private)?;
                    out[pos..pos + DH_LEN].copy_from_slice(&public);
                    pos += DH_LEN;
                    self.symmetric.mix_hash(&public);
                    if self.params.psk_count() > 0 {
                        self.symmetric.mix_key(&public)?;
                    }
                    self.e = Some(private);
                }
                Token::S => {
                    let s = self
                        .s
                        .as_ref()
                        .ok_or(ApiMisuse::MissingKey("local static"))?;
                    let public = *s.public_key().as_bytes();
                    pos += self.symmetric.encrypt_and_hash(&public, &mut out[pos..])?;
                }
                Token::Ee | Token::Es | Token::Se | Token::Ss => {
                    let shared = self.dh(t)?;
                    self.symmetric.mix_key(&shared[..])?;
                }
                Token::Psk => {
                    let psk = self.take_psk()?;
                    self.symmetric.mix_key_and_hash(&psk[..])?;
                }
                Token::E1 => {
                    let pair = KemKeyPair::generate()?;
                    pos += self
                        .symmetric
                        .encrypt_and_hash(pair.public(), &mut out[pos..])?;
                    self.e1 = Some(pair);
                }
                Token::Ekem1 => {
                    let re1 = self
                        .re1
                        .as_ref()
                        .ok_or(ApiMisuse::MissingKey("remote e1"))?;
                    let (ciphertext, secret) = kem::encapsulate(re1)?;
                    pos += self
                        .symmetric
                        .encrypt_and_hash(&ciphertext, &mut out[pos..])?;
                    self.symmetric.mix_key(&secret[..])?;
                }
            }
        }
        pos += self.symmetric.encrypt_and_hash(payload, &mut out[pos..])?;
        Ok(pos)
    }

    fn read_tokens(&mut self, message: &[u8], payload_out: &mut [u8]) -> Result<usize, Error> {
        let mut rest = message;
        let tokens = self.messages[self.message_index];
        for &t in tokens.tokens() {
            match t {
                Token::E => {
                    let re: [u8; DH_LEN] = take(&mut rest, DH_LEN)?
                        .try_into()
                        .unwrap_or_else(|_| unreachable!("take returned DH_LEN bytes"));
                    self.symmetric.mix_hash(&re);
                    if self.params.psk_count() > 0 {
                        self.symmetric.mix_key(&re)?;
                    }
                    self.re = Some(re);
                }
                Token::S => {
                    let len = DH_LEN + self.tag_len();
                    let mut rs = [0u8; DH_LEN + TAG_LEN];
                    let ct = take(&mut rest, len)?;
                    self.symmetric.decrypt_and_hash(ct, &mut rs)?;
                    let mut key = [0; DH_LEN];
                    key.copy_from_slice(&rs[..DH_LEN]);
                    self.rs = Some(PublicKey::from_bytes(key));
                }
                Token::Ee | Token::Es | Token::Se | Token::Ss => {
                    let shared = self.dh(t)?;
                    self.symmetric.mix_key(&shared[..])?;
                }
                Token::Psk => {
                    let psk = self.take_psk()?;
                    self.symmetric.mix_key_and_hash(&psk[..])?;
                }
                Token::E1 => {
                    let len = kem::PUBLIC_LEN + self.tag_len();
                    let mut buf = [0u8; kem::PUBLIC_LEN + TAG_LEN];
                    let ct = take(&mut rest, len)?;
                    self.symmetric.decrypt_and_hash(ct, &mut buf)?;
                    self.re1 = Some(kem::parse_public(&buf[..kem::PUBLIC_LEN])?);
                }
                Token::Ekem1 => {
                    let len = kem::CIPHERTEXT_LEN + self.tag_len();
                    let mut buf = [0u8; kem::CIPHERTEXT_LEN + TAG_LEN];
                    let ct = take(&mut rest, len)?;
                    self.symmetric.decrypt_and_hash(ct, &mut buf)?;
                    let e1 = self.e1.as_ref().ok_or(ApiMisuse::MissingKey("local e1"))?;
                    let secret = e1.decapsulate(&buf[..kem::CIPHERTEXT_LEN])?;
                    self.symmetric.mix_key(&secret[..])?;
                }
            }
        }
        self.symmetric.decrypt_and_hash(rest, payload_out)
    }

    fn tag_len(&self) -> usize {
        if self.symmetric.has_key() {
            TAG_LEN
        } else {
            0
        }
    }

    /// After the last message: the two transport keys (Split, section 5.2), the handshake
    /// hash and the peer's static key. Ephemeral keys are destroyed with the state.
    pub fn split(self) -> Result<Split, Error> {
        if self.failed {
            return Err(ApiMisuse::HandshakeFailed.into());
        }
        if !self.is_finished() {
            return Err(ApiMisuse::HandshakeNotFinished.into());
        }
        let [k1, k2] = self.symmetric.split();
        Ok(Split {
            params: self.params,
            initiator: self.initiator,
            initiator_to_responder: SecretKey::from_bytes(*k1),
            responder_to_initiator: SecretKey::from_bytes(*k2),
            handshake_hash: *self.symmetric.handshake_hash(),
            remote_static: self.rs,
        })
    }

    /// After the last message: Noise transport CipherStates (section 5.2's Split).
    pub fn into_transport(self) -> Result<NoiseTransport, Error> {
        let split = self.split()?;
        let cipher = split.params.cipher;
        let (send, recv) = if split.initiator {
            (&split.initiator_to_responder, &split.responder_to_initiator)
        } else {
            (&split.responder_to_initiator, &split.initiator_to_responder)
        };
        Ok(NoiseTransport {
            send: CipherState::with_key(cipher, send.expose())?,
            recv: CipherState::with_key(cipher, recv.expose())?,
            handshake_hash: split.handshake_hash,
            remote_static: split.remote_static,
        })
    }
}

impl fmt::Debug for HandshakeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeState")
            .field("protocol", &self.params.to_string())
            .field("initiator", &self.initiator)
            .field("message_index", &self.message_index)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

fn take<'m>(rest: &mut &'m [u8], len: usize) -> Result<&'m [u8], Error> {
    if rest.len() < len {
        return Err(PeerMisbehaved::Truncated {
            needed: len,
            got: rest.len(),
        }
        .into());
    }
    let (head, tail) = rest.split_at(len);
    *rest = tail;
    Ok(head)
}

/// What a finished handshake produces: one secret per direction, and what identifies it.
pub struct Split {
    /// The protocol that was run.
    pub params: NoiseParams,
    /// Whether this side was the initiator.
    pub initiator: bool,
    /// The key for messages from initiator to responder.
    pub initiator_to_responder: SecretKey,
    /// The key for messages from responder to initiator.
    pub responder_to_initiator: SecretKey,
    /// The final handshake hash.
    pub handshake_hash: [u8; 32],
    /// The peer's static key, if the pattern has one.
    pub remote_static: Option<PublicKey>,
}

impl fmt::Debug for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Split")
            .field("protocol", &self.params.to_string())
            .field("initiator", &self.initiator)
            .field("remote_static", &self.remote_static)
            .finish_non_exhaustive()
    }
}

/// Noise transport mode: a sending and a receiving CipherState.
#[derive(Debug)]
pub struct NoiseTransport {
    send: CipherState,
    recv: CipherState,
    handshake_hash: [u8; 32],
    remote_static: Option<PublicKey>,
}

impl NoiseTransport {
    /// Encrypt a transport message into `out`; returns its length.
    pub fn write_message(&mut self, payload: &[u8], out: &mut [u8]) -> Result<usize, Error> {
        if payload.len() + TAG_LEN > MAX_MESSAGE_LEN {
            return Err(ApiMisuse::PayloadTooLarge {
                len: payload.len(),
                max: MAX_MESSAGE_LEN - TAG_LEN,
            }
            .into());
        }
        self.send.encrypt_with_ad(&[], payload, out)
    }

    /// Decrypt a transport message into `out`; returns the payload length. A failure changes
    /// no state.
    pub fn read_message(&mut self, message: &[u8], out: &mut [u8]) -> Result<usize, Error> {
        if message.len() > MAX_MESSAGE_LEN {
            return Err(PeerMisbehaved::Oversized {
                len: message.len(),
                max: MAX_MESSAGE_LEN,
            }
            .into());
        }
        self.recv.decrypt_with_ad(&[], message, out)
    }

    /// The handshake hash.
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.handshake_hash
    }

    /// The peer's static key, if the pattern has one.
    pub fn remote_static(&self) -> Option<&PublicKey> {
        self.remote_static.as_ref()
    }

    /// The sending CipherState.
    pub fn sender(&mut self) -> &mut CipherState {
        &mut self.send
    }

    /// The receiving CipherState.
    pub fn receiver(&mut self) -> &mut CipherState {
        &mut self.recv
    }
}
