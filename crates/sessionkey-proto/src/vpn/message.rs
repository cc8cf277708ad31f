//! The VPN's UDP messages (docs/PROTOCOL.md section 12): their layouts, lengths and parsing.
//!
//! Every message starts with a type byte. Handshake messages end with two 16-byte MACs
//! (see [`cookie`](super::cookie)); data packets are [datagram records](crate::record::datagram).
//!
//! ```text
//! initiation (1): 1 | suite | flags | 0 | sender index (4) | Noise message 1 | mac1 | mac2
//! response   (2): 2 | 0 0 0 | sender index (4) | receiver index (4) | Noise message 2 | mac1 | mac2
//! cookie     (3): 3 | 0 0 0 | receiver index (4) | nonce (12) | AEAD(cookie) (16 + 16)
//! data       (4): the datagram record header (16) | ciphertext | tag
//! ```
//!
//! Parsing checks types, reserved bytes and exact lengths only; it allocates nothing and
//! never panics, whatever the input.

use crate::suite::Suite;

use super::cookie::{MAC_LEN, NONCE_LEN as COOKIE_NONCE_LEN, SEALED_COOKIE_LEN};

/// Type byte of a handshake initiation.
pub const TYPE_INITIATION: u8 = 1;
/// Type byte of a handshake response.
pub const TYPE_RESPONSE: u8 = 2;
/// Type byte of a cookie reply.
pub const TYPE_COOKIE_REPLY: u8 = 3;
/// Type byte of a data packet (the datagram record's).
pub const TYPE_DATA: u8 = crate::record::datagram::TYPE_DATA;

/// Flag bit of an initiation: the handshake is hybrid (`hfs`, ML-KEM-768).
pub const FLAG_HYBRID: u8 = 0x01;

/// Length of an initiation's clear header (type, suite, flags, reserved, sender index).
pub const INITIATION_HEADER_LEN: usize = 8;
/// Length of a response's clear header (type, reserved, sender and receiver indexes).
pub const RESPONSE_HEADER_LEN: usize = 12;
/// Length of the two MACs that end every handshake message.
pub const MACS_LEN: usize = 2 * MAC_LEN;
/// Length of a cookie reply.
pub const COOKIE_REPLY_LEN: usize = 8 + COOKIE_NONCE_LEN + SEALED_COOKIE_LEN;

/// Length of the initiation's Noise payload: the initiator's timestamp (u64, nanoseconds
/// since the Unix epoch) and the key epoch it proposes (u8).
pub const INITIATION_PAYLOAD_LEN: usize = 9;
/// Length of the response's Noise payload: the responder's sender index and the
/// initiator's index again (u32 each), so the clear indexes are authenticated.
pub const RESPONSE_PAYLOAD_LEN: usize = 8;

/// Noise message 1 of `Noise_IKhfs+psk2_25519+MLKEM768`: `e` (32), `e1` (1184 + 16),
/// `s` (32 + 16), payload (9 + 16).
const NOISE1_HYBRID: usize = 32 + 1184 + 16 + 32 + 16 + INITIATION_PAYLOAD_LEN + 16;
/// Noise message 1 of `Noise_IKpsk2_25519`: `e` (32), `s` (32 + 16), payload (9 + 16).
const NOISE1_CLASSIC: usize = 32 + 32 + 16 + INITIATION_PAYLOAD_LEN + 16;
/// Noise message 2, hybrid: `e` (32), `ekem1` (1088 + 16), payload (8 + 16).
const NOISE2_HYBRID: usize = 32 + 1088 + 16 + RESPONSE_PAYLOAD_LEN + 16;
/// Noise message 2, classical: `e` (32), payload (8 + 16).
const NOISE2_CLASSIC: usize = 32 + RESPONSE_PAYLOAD_LEN + 16;

/// The whole length of an initiation.
pub const fn initiation_len(hybrid: bool) -> usize {
    INITIATION_HEADER_LEN
        + if hybrid {
            NOISE1_HYBRID
        } else {
            NOISE1_CLASSIC
        }
        + MACS_LEN
}

/// The whole length of a response.
pub const fn response_len(hybrid: bool) -> usize {
    RESPONSE_HEADER_LEN
        + if hybrid {
            NOISE2_HYBRID
        } else {
            NOISE2_CLASSIC
        }
        + MACS_LEN
}

/// The largest handshake message (a hybrid initiation, 1345 bytes): it fits a UDP datagram
/// on a path with an MTU of 1400 even over IPv6.
pub const MAX_HANDSHAKE_LEN: usize = initiation_len(true);

/// Why a datagram is not a well-formed message. None of these says anything about keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// An empty datagram or an unknown type byte.
    #[error("unknown message type")]
    UnknownType,
    /// Reserved bytes not zero, or unknown flags.
    #[error("nonzero reserved bytes or unknown flags")]
    Reserved,
    /// The suite byte names no suite.
    #[error("unknown suite")]
    UnknownSuite,
    /// The length does not match the type.
    #[error("wrong length {0} for the message type")]
    Length(usize),
}

/// A parsed initiation, borrowing the datagram.
#[derive(Debug, Clone, Copy)]
pub struct Initiation<'a> {
    /// The record suite the initiator offers.
    pub suite: Suite,
    /// Whether the handshake is hybrid.
    pub hybrid: bool,
    /// The index the initiator chose: packets to it carry it.
    pub sender_index: u32,
    /// The clear header, the Noise prologue's second part.
    pub header: &'a [u8],
    /// Noise message 1.
    pub noise: &'a [u8],
    /// The whole datagram.
    pub bytes: &'a [u8],
}

/// A parsed response, borrowing the datagram.
#[derive(Debug, Clone, Copy)]
pub struct Response<'a> {
    /// The index the responder chose.
    pub sender_index: u32,
    /// The initiator's index, from its initiation.
    pub receiver_index: u32,
    /// Noise message 2.
    pub noise: &'a [u8],
    /// The whole datagram.
    pub bytes: &'a [u8],
}

/// A parsed cookie reply, borrowing the datagram.
#[derive(Debug, Clone, Copy)]
pub struct CookieReply<'a> {
    /// The sender index of the message this answers.
    pub receiver_index: u32,
    /// The AEAD nonce, random.
    pub nonce: &'a [u8; COOKIE_NONCE_LEN],
    /// The sealed cookie and its tag.
    pub sealed: &'a [u8; SEALED_COOKIE_LEN],
}

/// A datagram, classified.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    /// A handshake initiation.
    Initiation(Initiation<'a>),
    /// A handshake response.
    Response(Response<'a>),
    /// A cookie reply.
    CookieReply(CookieReply<'a>),
    /// A data packet (checked later by its session).
    Data,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(x)
}

/// Classify and check a datagram.
pub fn parse(bytes: &[u8]) -> Result<Message<'_>, MessageError> {
    let Some(&kind) = bytes.first() else {
        return Err(MessageError::UnknownType);
    };
    match kind {
        TYPE_INITIATION => {
            if bytes.len() < INITIATION_HEADER_LEN {
                return Err(MessageError::Length(bytes.len()));
            }
            let suite = Suite::from_id(bytes[1]).ok_or(MessageError::UnknownSuite)?;
            if bytes[2] & !FLAG_HYBRID != 0 || bytes[3] != 0 {
                return Err(MessageError::Reserved);
            }
            let hybrid = bytes[2] & FLAG_HYBRID != 0;
            if bytes.len() != initiation_len(hybrid) {
                return Err(MessageError::Length(bytes.len()));
            }
            Ok(Message::Initiation(Initiation {
                suite,
                hybrid,
                sender_index: u32_at(bytes, 4),
                header: &bytes[..INITIATION_HEADER_LEN],
                noise: &bytes[INITIATION_HEADER_LEN..bytes.len() - MACS_LEN],
                bytes,
            }))
        }
        TYPE_RESPONSE => {
            if bytes.len() != response_len(true) && bytes.len() != response_len(false) {
                return Err(MessageError::Length(bytes.len()));
            }
            if bytes[1..4] != [0, 0, 0] {
                return Err(MessageError::Reserved);
            }
            Ok(Message::Response(Response {
                sender_index: u32_at(bytes, 4),
                receiver_index: u32_at(bytes, 8),
                noise: &bytes[RESPONSE_HEADER_LEN..bytes.len() - MACS_LEN],
                bytes,
            }))
        }
        TYPE_COOKIE_REPLY => {
            if bytes.len() != COOKIE_REPLY_LEN {
                return Err(MessageError::Length(bytes.len()));
            }
            if bytes[1..4] != [0, 0, 0] {
                return Err(MessageError::Reserved);
            }
            let (nonce, sealed) = bytes[8..].split_at(COOKIE_NONCE_LEN);
            Ok(Message::CookieReply(CookieReply {
                receiver_index: u32_at(bytes, 4),
                nonce: nonce
                    .try_into()
                    .map_err(|_| MessageError::Length(bytes.len()))?,
                sealed: sealed
                    .try_into()
                    .map_err(|_| MessageError::Length(bytes.len()))?,
            }))
        }
        TYPE_DATA => Ok(Message::Data),
        _ => Err(MessageError::UnknownType),
    }
}

/// Write an initiation's clear header into `out[..8]`.
pub(crate) fn write_initiation_header(out: &mut [u8], suite: Suite, hybrid: bool, sender: u32) {
    out[0] = TYPE_INITIATION;
    out[1] = suite.id();
    out[2] = if hybrid { FLAG_HYBRID } else { 0 };
    out[3] = 0;
    out[4..8].copy_from_slice(&sender.to_be_bytes());
}

/// Write a response's clear header into `out[..12]`.
pub(crate) fn write_response_header(out: &mut [u8], sender: u32, receiver: u32) {
    out[0] = TYPE_RESPONSE;
    out[1..4].fill(0);
    out[4..8].copy_from_slice(&sender.to_be_bytes());
    out[8..12].copy_from_slice(&receiver.to_be_bytes());
}

/// Write a cookie reply's header into `out[..8]`.
pub(crate) fn write_cookie_reply_header(out: &mut [u8], receiver: u32) {
    out[0] = TYPE_COOKIE_REPLY;
    out[1..4].fill(0);
    out[4..8].copy_from_slice(&receiver.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(initiation_len(true), 1345);
        assert_eq!(initiation_len(false), 145);
        assert_eq!(response_len(true), 1204);
        assert_eq!(response_len(false), 100);
        assert_eq!(COOKIE_REPLY_LEN, 52);
    }

    #[test]
    fn garbage_is_refused_without_panic() {
        for len in 0..1400 {
            for first in [0u8, 1, 2, 3, 4, 5, 255] {
                let mut b = vec![0u8; len];
                if let Some(x) = b.first_mut() {
                    *x = first;
                }
                let _ = parse(&b);
            }
        }
        assert_eq!(parse(&[]).unwrap_err(), MessageError::UnknownType);
        assert_eq!(parse(&[9, 0]).unwrap_err(), MessageError::UnknownType);
        let mut init = vec![0u8; initiation_len(true)];
        write_initiation_header(&mut init, Suite::Aes256Gcm, true, 7);
        assert!(
            matches!(parse(&init), Ok(Message::Initiation(i)) if i.sender_index == 7 && i.hybrid)
        );
        init[2] = 0x80;
        assert_eq!(parse(&init).unwrap_err(), MessageError::Reserved);
        init[2] = 0;
        assert_eq!(
            parse(&init).unwrap_err(),
            MessageError::Length(initiation_len(true))
        );
        init[1] = 99;
        assert_eq!(parse(&init).unwrap_err(), MessageError::UnknownSuite);
    }
}
