//! The VPN's Noise handshake over UDP (docs/PROTOCOL.md section 12.2): `IK` with the `psk2`
//! modifier, hybrid (`hfs`, ML-KEM-768) by default, one round trip.
//!
//! ```text
//! Noise_IKhfs+psk2_25519+MLKEM768_<AESGCM|ChaChaPoly>_SHA256     (classical: Noise_IKpsk2_25519_..)
//! prologue = "sessionkey v1 vpn" || the initiation's 8-byte clear header
//! -> e, es, e1, s, ss       payload: timestamp (u64, ns since the Unix epoch) || epoch (u8)
//! <- e, ee, ekem1, se, psk  payload: responder index (u32) || initiator index (u32)
//! ```
//!
//! The psk is the peer's pre-shared key, or 32 zero bytes without one (as WireGuard does),
//! so every peer runs the same protocol. Both sides then derive the datagram keys:
//!
//! ```text
//! prk         = HKDF-Extract(salt = h, ikm = k_i2r || k_r2i)          (Split() and the hash)
//! traffic_i2r = HKDF-Expand(prk, "sessionkey v1 vpn i2r", 32)
//! traffic_r2i = HKDF-Expand(prk, "sessionkey v1 vpn r2i", 32)
//! ```

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::hkdf::{self, KeyType, Salt, HKDF_SHA256};
use zeroize::Zeroizing;

use crate::crypto::hash::HashChoice;
use crate::error::{ApiMisuse, PeerMisbehaved};
use crate::keys::{Identity, Psk, PublicKey, SecretKey};
use crate::noise::{HandshakeBuilder, HandshakeState, NoiseParams, Pattern, Split};
use crate::suite::Suite;
use crate::Error;

use super::message::{
    Initiation, Response, INITIATION_HEADER_LEN, INITIATION_PAYLOAD_LEN, RESPONSE_PAYLOAD_LEN,
};

const PROLOGUE_LABEL: &[u8] = b"sessionkey v1 vpn";

/// The Noise protocol of a VPN handshake.
pub fn noise_params(suite: Suite, hybrid: bool) -> NoiseParams {
    let params = NoiseParams::new(Pattern::IK, suite.noise_cipher(), HashChoice::Sha256)
        .with_psk(2)
        .unwrap_or_else(|_| unreachable!("psk2 is valid for IK's two messages"));
    if hybrid {
        params.with_hfs()
    } else {
        params
    }
}

pub(crate) fn prologue(header: &[u8]) -> [u8; PROLOGUE_LABEL.len() + INITIATION_HEADER_LEN] {
    let mut p = [0u8; PROLOGUE_LABEL.len() + INITIATION_HEADER_LEN];
    p[..PROLOGUE_LABEL.len()].copy_from_slice(PROLOGUE_LABEL);
    p[PROLOGUE_LABEL.len()..].copy_from_slice(&header[..INITIATION_HEADER_LEN]);
    p
}

/// A copy of a pre-shared key for one handshake, or the all-zero one.
pub(crate) fn psk_for(psk: Option<&Psk>) -> Psk {
    Psk::from_bytes(psk.map_or([0; 32], |p| *p.expose()))
}

/// The two datagram secrets of a finished handshake, for the initiator's and the
/// responder's direction.
pub(crate) struct TrafficSecrets {
    pub(crate) i2r: SecretKey,
    pub(crate) r2i: SecretKey,
}

struct Len32;

impl KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

pub(crate) fn traffic_secrets(split: &Split) -> TrafficSecrets {
    let ikm = Zeroizing::new(
        [
            &split.initiator_to_responder.expose()[..],
            &split.responder_to_initiator.expose()[..],
        ]
        .concat(),
    );
    let prk = Salt::new(HKDF_SHA256, &split.handshake_hash).extract(&ikm);
    let expand = |label: &[u8]| {
        let mut out = Zeroizing::new([0u8; 32]);
        prk.expand(&[label], Len32)
            .and_then(|okm: hkdf::Okm<'_, Len32>| okm.fill(&mut out[..]))
            .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 output length"));
        SecretKey::from_bytes(*out)
    };
    TrafficSecrets {
        i2r: expand(b"sessionkey v1 vpn i2r"),
        r2i: expand(b"sessionkey v1 vpn r2i"),
    }
}

/// Start an initiator's handshake: write the initiation (without its MACs) into
/// `out`, whose length must be [`initiation_len`](super::message::initiation_len).
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_initiation(
    identity: Arc<Identity>,
    peer: PublicKey,
    psk: Option<&Psk>,
    suite: Suite,
    hybrid: bool,
    sender_index: u32,
    timestamp: u64,
    epoch: u8,
    out: &mut [u8],
) -> Result<HandshakeState, Error> {
    let expected = super::message::initiation_len(hybrid);
    if out.len() != expected {
        return Err(ApiMisuse::BufferTooSmall {
            needed: expected,
            have: out.len(),
        }
        .into());
    }
    super::message::write_initiation_header(out, suite, hybrid, sender_index);
    let prologue = prologue(out);
    let mut state = HandshakeBuilder::new(noise_params(suite, hybrid))
        .prologue(&prologue)
        .local_static(identity)
        .remote_static(peer)
        .psk(psk_for(psk))
        .build_initiator()?;
    let mut payload = [0u8; INITIATION_PAYLOAD_LEN];
    payload[..8].copy_from_slice(&timestamp.to_be_bytes());
    payload[8] = epoch;
    let end = out.len() - super::message::MACS_LEN;
    let n = state.write_message(&payload, &mut out[INITIATION_HEADER_LEN..end])?;
    debug_assert_eq!(INITIATION_HEADER_LEN + n, end);
    Ok(state)
}

/// An initiation the responder has read: who sent it and what it proposes. The handshake
/// state inside waits for the peer's pre-shared key and the response.
pub struct ReadInitiation {
    pub(crate) state: HandshakeState,
    /// The initiator's static key (authenticated by the `ss` token).
    pub initiator: PublicKey,
    /// The initiator's timestamp, nanoseconds since the Unix epoch: must grow, so a replayed
    /// initiation is refused.
    pub timestamp: u64,
    /// The key epoch the initiator proposes.
    pub epoch: u8,
    /// The initiator's index.
    pub sender_index: u32,
    /// The record suite.
    pub suite: Suite,
    /// Whether the handshake is hybrid.
    pub hybrid: bool,
}

impl fmt::Debug for ReadInitiation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadInitiation")
            .field("initiator", &self.initiator.fingerprint())
            .field("epoch", &self.epoch)
            .field("sender_index", &self.sender_index)
            .finish_non_exhaustive()
    }
}

/// Read an initiation sent to `identity`. Refuses a classical handshake unless
/// `allow_classic`. Costs two X25519 agreements and, when hybrid, checking an ML-KEM key:
/// call it only after [`HandshakeGate::screen`](super::gate::HandshakeGate::screen) said so.
pub fn read_initiation(
    identity: &Arc<Identity>,
    msg: &Initiation<'_>,
    allow_classic: bool,
) -> Result<ReadInitiation, Error> {
    if !msg.hybrid && !allow_classic {
        return Err(PeerMisbehaved::InvalidHeader(
            "classical handshake refused: this interface requires hybrid (set hybrid = false \
             on both sides to allow it)",
        )
        .into());
    }
    let prologue = prologue(msg.header);
    let mut state = HandshakeBuilder::new(noise_params(msg.suite, msg.hybrid))
        .prologue(&prologue)
        .local_static(identity.clone())
        .defer_psks()
        .build_responder()?;
    let mut payload = [0u8; INITIATION_PAYLOAD_LEN + 16];
    let n = state.read_message(msg.noise, &mut payload)?;
    if n != INITIATION_PAYLOAD_LEN {
        return Err(PeerMisbehaved::UnexpectedRecord("initiation payload of wrong length").into());
    }
    let initiator = *state
        .remote_static()
        .ok_or(ApiMisuse::MissingKey("remote static"))?;
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&payload[..8]);
    Ok(ReadInitiation {
        state,
        initiator,
        timestamp: u64::from_be_bytes(ts),
        epoch: payload[8],
        sender_index: msg.sender_index,
        suite: msg.suite,
        hybrid: msg.hybrid,
    })
}

/// Finish the responder's side: mix in the psk, write the response's Noise message into
/// `noise_out`, and split. Returns the message length and the secrets.
pub(crate) fn write_response(
    read: ReadInitiation,
    psk: Option<&Psk>,
    sender_index: u32,
    noise_out: &mut [u8],
) -> Result<(usize, TrafficSecrets, [u8; 32]), Error> {
    let mut state = read.state;
    state.add_psk(psk_for(psk))?;
    let mut payload = [0u8; RESPONSE_PAYLOAD_LEN];
    payload[..4].copy_from_slice(&sender_index.to_be_bytes());
    payload[4..].copy_from_slice(&read.sender_index.to_be_bytes());
    let n = state.write_message(&payload, noise_out)?;
    let split = state.split()?;
    Ok((n, traffic_secrets(&split), split.handshake_hash))
}

/// Read the response to `state`'s initiation and split. A response that does not
/// authenticate, or whose encrypted indexes differ from its clear ones, is refused and
/// leaves `state` exactly as it was, so the genuine response can still be read: a forged
/// or altered response cannot end the handshake in flight (docs/PROTOCOL.md 12.2).
pub(crate) fn read_response(state: &mut HandshakeState, msg: &Response<'_>) -> Result<(), Error> {
    let mut payload = [0u8; RESPONSE_PAYLOAD_LEN + 16];
    state.try_read_message(msg.noise, &mut payload, |p| {
        if p.len() != RESPONSE_PAYLOAD_LEN
            || p[..4] != msg.sender_index.to_be_bytes()
            || p[4..8] != msg.receiver_index.to_be_bytes()
        {
            return Err(PeerMisbehaved::UnexpectedRecord(
                "response indexes differ from the clear ones",
            )
            .into());
        }
        Ok(())
    })?;
    Ok(())
}

/// The secrets of a handshake whose response [`read_response`] accepted.
pub(crate) fn finish_initiator(state: HandshakeState) -> Result<(TrafficSecrets, [u8; 32]), Error> {
    let split = state.split()?;
    Ok((traffic_secrets(&split), split.handshake_hash))
}
