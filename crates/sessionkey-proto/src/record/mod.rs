//! Record framing on byte streams (docs/PROTOCOL.md sections 2 and 9).
//!
//! Every frame is `length (u16) || body`. During the handshake a body is a handshake message;
//! afterwards it is an AEAD-sealed record whose plaintext is `content || type`. Frames are
//! found in the caller's buffer, so the core holds no receive buffer of its own: a frame's
//! length is checked as soon as its two length bytes are there, before anything else of it
//! needs to be buffered.

use crate::crypto::aead::TAG_LEN;
use crate::error::PeerMisbehaved;
use crate::Error;

pub mod datagram;

/// Length of the frame length prefix.
pub const LEN_PREFIX: usize = 2;
/// The largest frame body.
pub const MAX_BODY: usize = u16::MAX as usize;
/// The largest frame, prefix included: the buffer size that always fits one frame.
pub const MAX_FRAME: usize = LEN_PREFIX + MAX_BODY;
/// The smallest sealed record body: the type byte and the tag.
pub const MIN_RECORD_BODY: usize = 1 + TAG_LEN;
/// The most content one record carries.
pub const MAX_CONTENT: usize = MAX_BODY - MIN_RECORD_BODY;

/// The inner type of a sealed record, its last plaintext byte (PROTOCOL.md section 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordType {
    /// Application data.
    Data = 1,
    /// The sender's next records use the next key of its one-way ratchet.
    KeyUpdate = 2,
    /// A fresh ephemeral exchange begins: the requester's ephemeral public keys.
    RehandshakeRequest = 3,
    /// The answer to a request: the responder's ephemeral public key and KEM ciphertext. The
    /// sender's next records use the new keys.
    RehandshakeReply = 4,
    /// The requester's next records use the new keys.
    RehandshakeFinish = 5,
    /// The sender will send nothing more; carries its totals.
    Close = 6,
    /// Keeps an idle session alive; no content.
    Ping = 7,
    /// The initiator's first record when the responder wrote the last handshake message: it
    /// proves the initiator holds the session keys, so a replayed hello opens nothing.
    Confirm = 8,
    /// The responder refuses the initiator's key, under the session keys (PROTOCOL.md 4).
    Refusal = 9,
    /// After reading the peer's close: the peer's totals as received, so the peer knows
    /// every byte arrived. May follow this side's own close.
    Ack = 10,
}

impl RecordType {
    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Data,
            2 => Self::KeyUpdate,
            3 => Self::RehandshakeRequest,
            4 => Self::RehandshakeReply,
            5 => Self::RehandshakeFinish,
            6 => Self::Close,
            7 => Self::Ping,
            8 => Self::Confirm,
            9 => Self::Refusal,
            10 => Self::Ack,
            _ => return None,
        })
    }
}

/// What the start of a buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame {
    /// Not a whole frame yet: this many bytes in total are needed.
    Incomplete(usize),
    /// A whole frame whose body is this long.
    Complete(usize),
}

/// Find the first frame in `buf`. Fails as soon as the length prefix is known to be out of
/// `min..=max`.
#[inline]
pub(crate) fn frame(buf: &[u8], min: usize, max: usize) -> Result<Frame, Error> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(Frame::Incomplete(LEN_PREFIX));
    };
    let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
    if len > max {
        return Err(PeerMisbehaved::Oversized { len, max }.into());
    }
    if len < min {
        return Err(PeerMisbehaved::Truncated {
            needed: min,
            got: len,
        }
        .into());
    }
    if buf.len() < LEN_PREFIX + len {
        return Ok(Frame::Incomplete(LEN_PREFIX + len));
    }
    Ok(Frame::Complete(len))
}

/// Write a frame length prefix.
#[inline]
pub(crate) fn write_prefix(out: &mut [u8], body_len: usize) {
    debug_assert!(body_len <= MAX_BODY);
    out[..LEN_PREFIX].copy_from_slice(&(body_len as u16).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(frame(&[], 0, 100).unwrap(), Frame::Incomplete(2));
        assert_eq!(frame(&[0], 0, 100).unwrap(), Frame::Incomplete(2));
        assert_eq!(frame(&[0, 3, 1], 0, 100).unwrap(), Frame::Incomplete(5));
        assert_eq!(
            frame(&[0, 3, 1, 2, 3, 9], 0, 100).unwrap(),
            Frame::Complete(3)
        );
        // Refused from the prefix alone, before any body byte is buffered.
        assert!(matches!(
            frame(&[0, 101], 0, 100),
            Err(Error::PeerMisbehaved(PeerMisbehaved::Oversized {
                len: 101,
                max: 100
            }))
        ));
        assert!(frame(&[0, 16], MIN_RECORD_BODY, MAX_BODY).is_err());
    }
}
