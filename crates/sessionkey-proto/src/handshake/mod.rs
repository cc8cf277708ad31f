//! The native handshake: a clear [`Header`] bound into the Noise prologue, the responder's
//! [`Policy`] check, and a [`Refusal`] when the policy says no (docs/PROTOCOL.md).
//!
//! ```
//! use std::sync::Arc;
//! use sessionkey_proto::crypto::SystemRandom;
//! use sessionkey_proto::handshake::{Header, Initiator, Policy, Responder};
//! use sessionkey_proto::keys::Identity;
//! use sessionkey_proto::noise::Pattern;
//! use sessionkey_proto::suite::Suite;
//!
//! let server = Arc::new(Identity::generate(&mut SystemRandom)?);
//! let client = Arc::new(Identity::generate(&mut SystemRandom)?);
//! let header = Header { pattern: Pattern::IK, suite: Suite::Aes256Gcm, hybrid: true, psk: false };
//!
//! let mut initiator = Initiator::new(header, Some(client), Some(*server.public_key()), None)?;
//! let responder = Responder::new(Policy::default(), Some(server), None);
//! let (mut wire, mut payload) = (vec![0; 4096], vec![0; 4096]);
//!
//! let n = initiator.write_hello(b"", &mut wire)?;
//! let (mut accepted, _) = responder.read_hello(&wire[..n], &mut payload)?;
//! let n = accepted.state.write_message(b"", &mut wire)?;
//! initiator.read_reply(&wire[..n], &mut payload)?;
//! let (client_split, server_split) = (initiator.state.split()?, accepted.state.split()?);
//! assert_eq!(client_split.handshake_hash, server_split.handshake_hash);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod header;
mod policy;

use std::sync::Arc;

pub use header::{Header, HEADER_LEN, MAGIC, VERSION};
pub use policy::{Policy, Refusal, REFUSAL_LEN};

use crate::error::ApiMisuse;
use crate::keys::{Identity, Psk, PublicKey};
use crate::noise::{HandshakeBuilder, HandshakeState};
use crate::Error;

fn build(
    header: &Header,
    initiator: bool,
    local: Option<Arc<Identity>>,
    remote: Option<PublicKey>,
    psk: Option<Psk>,
) -> Result<HandshakeState, Error> {
    let prologue = header.encode();
    let mut b = HandshakeBuilder::new(header.noise_params()).prologue(&prologue);
    if let Some(s) = local {
        b = b.local_static(s);
    }
    if let Some(rs) = remote {
        b = b.remote_static(rs);
    }
    if let Some(psk) = psk {
        b = b.psk(psk);
    }
    if initiator {
        b.build_initiator()
    } else {
        b.build_responder()
    }
}

/// Judges the responder's static key once the handshake has proved it, before the initiator
/// writes anything more: return an error to stop (for example a changed known-peers entry).
pub type ResponderCheck =
    Box<dyn FnMut(&PublicKey) -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send>;

/// The initiator's side of the native handshake.
pub struct Initiator {
    /// What was offered.
    pub header: Header,
    /// The Noise handshake; after [`read_reply`](Self::read_reply), continue with it directly.
    pub state: HandshakeState,
    check: Option<ResponderCheck>,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("header", &self.header)
            .field("state", &self.state)
            .field("check", &self.check.is_some())
            .finish()
    }
}

impl Initiator {
    /// Prepare an offer. `local` is this side's identity (none for NN and NK), `remote` the
    /// responder's known key (NK, IK, KK), `psk` the pre-shared key when `header.psk` is set.
    pub fn new(
        header: Header,
        local: Option<Arc<Identity>>,
        remote: Option<PublicKey>,
        psk: Option<Psk>,
    ) -> Result<Self, Error> {
        Ok(Self {
            header,
            state: build(&header, true, local, remote, psk)?,
            check: None,
        })
    }

    /// Check the responder's key with `check` as soon as a handshake message has proved it
    /// (XX: after the second message), before this side writes its next message. A refusal
    /// ends the handshake with [`Error::PeerKeyRejected`] and nothing more is sent, so a
    /// responder that fails the check never learns this side's static key.
    pub fn with_responder_check(mut self, check: ResponderCheck) -> Self {
        self.check = Some(check);
        self
    }

    /// Run the responder check once, if the responder's key is known by now.
    pub(crate) fn check_responder(&mut self) -> Result<(), Error> {
        let Some(key) = self.state.remote_static().copied() else {
            return Ok(());
        };
        match self.check.take() {
            Some(mut check) => check(&key).map_err(|e| Error::PeerKeyRejected(e.into())),
            None => Ok(()),
        }
    }

    /// Write the hello: the header, then the first Noise message carrying `payload`.
    pub fn write_hello(&mut self, payload: &[u8], out: &mut [u8]) -> Result<usize, Error> {
        let needed = HEADER_LEN + self.state.next_message_len(payload.len());
        if out.len() < needed {
            return Err(ApiMisuse::BufferTooSmall {
                needed,
                have: out.len(),
            }
            .into());
        }
        out[..HEADER_LEN].copy_from_slice(&self.header.encode());
        let n = self.state.write_message(payload, &mut out[HEADER_LEN..])?;
        Ok(HEADER_LEN + n)
    }

    /// Read the responder's first reply: a refusal becomes [`Error::Refused`], anything else
    /// is the next Noise message. Returns the payload length.
    pub fn read_reply(&mut self, reply: &[u8], payload_out: &mut [u8]) -> Result<usize, Error> {
        if let Some(refusal) = Refusal::decode(reply) {
            return Err(refusal.into());
        }
        self.state.read_message(reply, payload_out)
    }
}

/// Decides whether an initiator's static key may connect.
pub type Authorizer = Arc<dyn Fn(&PublicKey) -> bool + Send + Sync>;

/// The responder's side: its policy and keys, shared by every handshake it accepts.
pub struct Responder {
    policy: Policy,
    identity: Option<Arc<Identity>>,
    psk: Option<Psk>,
    authorizer: Option<Authorizer>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("policy", &self.policy)
            .field("identity", &self.identity)
            .field("authorizer", &self.authorizer.is_some())
            .finish_non_exhaustive()
    }
}

/// A hello the responder accepted.
#[derive(Debug)]
pub struct Accepted {
    /// The accepted offer.
    pub header: Header,
    /// The handshake, with the first message read; write the reply next.
    pub state: HandshakeState,
}

impl Responder {
    /// A responder with `policy`, its identity (required unless only NN is allowed), and a
    /// pre-shared key if it has one.
    ///
    /// Patterns this responder cannot serve are dropped from the policy, so offers of them are
    /// refused with the list of what it can do: patterns that need the initiator's key in
    /// advance (KK, KK1; the native protocol has no key lookup for them yet), and patterns
    /// with a responder key when it has none.
    pub fn new(mut policy: Policy, identity: Option<Arc<Identity>>, psk: Option<Psk>) -> Self {
        policy.has_psk = psk.is_some();
        policy.patterns.retain(|p| {
            !p.initiator_premessage() && (identity.is_some() || !p.responder_has_static())
        });
        Self {
            policy,
            identity,
            psk,
            authorizer: None,
        }
    }

    /// Admit only initiators whose static key `authorize` accepts. Where the first message
    /// reveals the key (IK), a refused key gets [`Refusal::KeyNotAuthorized`] before any reply;
    /// otherwise (XX) the caller checks [`HandshakeState::remote_static`] when it completes.
    pub fn with_authorizer(mut self, authorize: Authorizer) -> Self {
        self.authorizer = Some(authorize);
        self
    }

    /// Whether `key` may connect (always true without an authorizer).
    pub fn authorizes(&self, key: &PublicKey) -> bool {
        self.authorizer.as_ref().is_none_or(|a| a(key))
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Read an initiator's hello. A policy refusal is returned as [`Error::Refused`]: send
    /// [`Refusal::encode`] back so the initiator can show why. Returns the accepted handshake
    /// and the first payload's length in `payload_out`.
    pub fn read_hello(
        &self,
        hello: &[u8],
        payload_out: &mut [u8],
    ) -> Result<(Accepted, usize), Error> {
        let raw = Header::decode_raw(hello)?;
        let header = self.policy.check(&raw)?;
        let local = if header.pattern.responder_has_static() {
            Some(
                self.identity
                    .clone()
                    .ok_or(ApiMisuse::MissingKey("responder identity"))?,
            )
        } else {
            None
        };
        let psk = (self.psk.as_ref())
            .filter(|_| header.psk)
            .map(|p| Psk::from_bytes(*p.expose()));
        let mut state = build(&header, false, local, None, psk)?;
        // A hello that does not decrypt was sealed to another key: say so (PROTOCOL.md 4),
        // which tells an observer nothing the closed connection does not.
        let n = state
            .read_message(&hello[HEADER_LEN..], payload_out)
            .map_err(|e| match e {
                Error::PeerMisbehaved(crate::PeerMisbehaved::BadTag) => {
                    Refusal::UndecryptableHello.into()
                }
                e => e,
            })?;
        if let Some(key) = state.remote_static() {
            if !self.authorizes(key) {
                return Err(Refusal::KeyNotAuthorized.into());
            }
        }
        Ok((Accepted { header, state }, n))
    }
}
