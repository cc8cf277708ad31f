//! The relay's HTTP/JSON API as data: paths, bodies, limits and request authentication
//! (docs/MESSAGING.md, "Relay API"). Both the relay (`sessionkey-relay`) and the client
//! (`sessionkey::msg`) build on these, so the two cannot drift apart; they live in the core
//! (behind the `relay-api` feature, which adds serde) so that the relay depends on the core
//! only, not on the client library with its TUN, VPN and TLS-client code.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{Device, IdentityKey, MsgError};

/// Header carrying the requesting device's name.
pub const HEADER_NAME: &str = "x-sessionkey-name";
/// Header carrying the request time, Unix seconds.
pub const HEADER_TIME: &str = "x-sessionkey-time";
/// Header carrying the request's 16 random bytes, base64.
pub const HEADER_NONCE: &str = "x-sessionkey-nonce";
/// Header carrying the Ed25519 signature over the canonical request, base64.
pub const HEADER_SIGNATURE: &str = "x-sessionkey-signature";

/// A signed request is accepted this many seconds either side of the relay's clock.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;
/// Prekeys accepted in one upload (Signal's batch limit).
pub const MAX_PREKEYS_PER_UPLOAD: usize = 100;
/// Messages returned by one fetch.
pub const MAX_MESSAGES_PER_FETCH: usize = 100;
/// Messages of one sender returned by one fetch (the rest come in later fetches), so that a
/// sender with a long backlog cannot keep others' messages out of a batch.
pub const MAX_MESSAGES_PER_SENDER_PER_FETCH: usize = 20;
/// The longest long-poll wait, in seconds.
pub const MAX_WAIT_SECS: u64 = 30;
/// Undelivered messages are deleted after this many seconds (30 days).
pub const MESSAGE_EXPIRY_SECS: u64 = 30 * 24 * 60 * 60;
/// Domain label at the start of every canonical request.
pub const CANONICAL_LABEL: &[u8] = b"sessionkey-relay-v1";

/// Whether `name` is a valid device name: 1 to 64 characters of `a-z 0-9 . _ -`, starting
/// with a letter or digit. Names appear in URL paths and headers unescaped.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

/// The bytes a request signature covers:
///
/// ```text
/// "sessionkey-relay-v1" || 0x00 || method || 0x00 || path and query || 0x00 || name || 0x00
///     || time (8, big-endian) || nonce (16) || SHA-256(body) (32)
/// ```
pub fn canonical_request(
    method: &str,
    path_and_query: &str,
    name: &str,
    time: u64,
    nonce: &[u8; 16],
    body: &[u8],
) -> Vec<u8> {
    let body_hash = crate::crypto::hash::sha256(&[body]);
    let mut out = Vec::with_capacity(CANONICAL_LABEL.len() + path_and_query.len() + 96);
    for part in [
        CANONICAL_LABEL,
        method.as_bytes(),
        path_and_query.as_bytes(),
        name.as_bytes(),
    ] {
        out.extend_from_slice(part);
        out.push(0);
    }
    out.extend_from_slice(&time.to_be_bytes());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&body_hash);
    out
}

/// The four authentication headers of one request, as (name, value) pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthHeaders {
    /// The device name.
    pub name: String,
    /// Unix seconds.
    pub time: u64,
    /// 16 random bytes, fresh per request.
    pub nonce: [u8; 16],
    /// Ed25519 signature over [`canonical_request`].
    pub signature: [u8; 64],
}

impl AuthHeaders {
    /// Sign a request as `name` with `device`'s identity key.
    pub fn sign(
        device: &Device,
        name: &str,
        method: &str,
        path_and_query: &str,
        time: u64,
        nonce: [u8; 16],
        body: &[u8],
    ) -> Result<Self, MsgError> {
        let canonical = canonical_request(method, path_and_query, name, time, &nonce, body);
        Ok(Self {
            name: name.to_string(),
            time,
            nonce,
            signature: device.sign_relay_request(&canonical)?,
        })
    }

    /// The header pairs to send.
    pub fn to_pairs(&self) -> [(&'static str, String); 4] {
        [
            (HEADER_NAME, self.name.clone()),
            (HEADER_TIME, self.time.to_string()),
            (HEADER_NONCE, STANDARD.encode(self.nonce)),
            (HEADER_SIGNATURE, STANDARD.encode(self.signature)),
        ]
    }

    /// Read the headers through `get` (header name to value); `None` if one is missing or
    /// malformed.
    pub fn from_lookup<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<Self> {
        let name = get(HEADER_NAME)?.to_string();
        let time = get(HEADER_TIME)?.parse().ok()?;
        let nonce = STANDARD.decode(get(HEADER_NONCE)?).ok()?.try_into().ok()?;
        let signature = STANDARD
            .decode(get(HEADER_SIGNATURE)?)
            .ok()?
            .try_into()
            .ok()?;
        Some(Self {
            name,
            time,
            nonce,
            signature,
        })
    }

    /// Whether the signature is `identity`'s over this request.
    pub fn verify(
        &self,
        identity: &IdentityKey,
        method: &str,
        path_and_query: &str,
        body: &[u8],
    ) -> bool {
        let canonical = canonical_request(
            method,
            path_and_query,
            &self.name,
            self.time,
            &self.nonce,
            body,
        );
        identity.verify_relay_request(&canonical, &self.signature)
    }
}

/// Bytes carried in JSON as standard base64.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct B64(pub Vec<u8>);

impl std::fmt::Debug for B64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "B64({} bytes)", self.0.len())
    }
}

impl Serialize for B64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

/// `PUT /v1/devices/{name}`: register a device, or replace its signed and last-resort
/// prekeys. A name once registered keeps its identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The 130-byte identity.
    pub identity: B64,
    /// The current signed prekey (101 bytes).
    pub signed_prekey: B64,
    /// The current last-resort ML-KEM prekey (1253 bytes).
    pub last_resort_kem: B64,
}

/// `POST /v1/prekeys`: add one-time prekeys (at most [`MAX_PREKEYS_PER_UPLOAD`] in all).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UploadPrekeys {
    /// One-time X25519 prekeys (37 bytes each).
    pub one_time: Vec<B64>,
    /// One-time ML-KEM prekeys (1253 bytes each).
    pub kem: Vec<B64>,
}

/// `POST /v1/prekeys/retire`: delete the caller's one-time prekeys with ids up to these (the
/// device erased their secrets after the retention window).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct RetirePrekeys {
    /// One-time X25519 prekeys with ids up to this one.
    pub one_time_through: u32,
    /// One-time ML-KEM prekeys with ids up to this one.
    pub kem_through: u32,
}

/// How many one-time prekeys of each kind the relay still holds for the caller, and how many
/// messages wait in its queue (`GET /v1/self` and the answer to uploads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// One-time X25519 prekeys left.
    pub one_time_prekeys: u64,
    /// One-time ML-KEM prekeys left.
    pub kem_prekeys: u64,
    /// Messages waiting.
    pub queued: u64,
}

/// `POST /v1/bundles/{name}`: one prekey bundle (its one-time prekeys are now used up).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleResponse {
    /// `PrekeyBundle::to_bytes`.
    pub bundle: B64,
}

/// `POST /v1/messages/{name}` (the body is the envelope itself): the queued message's id.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SendResponse {
    /// The message's id in the recipient's queue.
    pub id: i64,
}

/// One queued message as fetched.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboxMessage {
    /// Its id, to acknowledge.
    pub id: i64,
    /// The authenticated sender's name.
    pub sender: String,
    /// When the relay accepted it, Unix seconds.
    pub sent: i64,
    /// The envelope.
    pub body: B64,
}

/// `GET /v1/messages?wait=SECS`: the oldest queued messages, in order, at most
/// [`MAX_MESSAGES_PER_SENDER_PER_FETCH`] of each sender.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Inbox {
    /// At most [`MAX_MESSAGES_PER_FETCH`].
    pub messages: Vec<InboxMessage>,
    /// With messages: the caller's prekey stock and queue, so that it refills when the
    /// relay runs low (the count, not the kind of the messages, decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeviceStatus>,
}

/// `POST /v1/messages/ack`: delete these messages from the caller's queue.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ack {
    /// Message ids.
    pub ids: Vec<i64>,
}

/// A WebSocket push frame (`GET /v1/ws`): messages are waiting; fetch them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Push {
    /// How many are waiting (at most [`MAX_MESSAGES_PER_FETCH`] counted).
    pub pending: u64,
}

/// Every error answer's body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SystemRandom;

    #[test]
    fn names() {
        for good in ["alice", "bob.2", "a", "x_y-z", "0day"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "Alice", ".x", "-x", "a/b", "a b", &"a".repeat(65), "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn signatures_cover_every_field() {
        let device = Device::generate(&mut SystemRandom).unwrap();
        let id = device.identity();
        let auth =
            AuthHeaders::sign(&device, "alice", "POST", "/v1/x", 100, [7; 16], b"body").unwrap();
        assert!(auth.verify(id, "POST", "/v1/x", b"body"));
        assert!(!auth.verify(id, "GET", "/v1/x", b"body"));
        assert!(!auth.verify(id, "POST", "/v1/y", b"body"));
        assert!(!auth.verify(id, "POST", "/v1/x", b"bodY"));
        let mut other = auth.clone();
        other.time = 101;
        assert!(!other.verify(id, "POST", "/v1/x", b"body"));
        let mut other = auth.clone();
        other.name = "bob".into();
        assert!(!other.verify(id, "POST", "/v1/x", b"body"));
        let pairs = auth.to_pairs();
        let parsed = AuthHeaders::from_lookup(|h| {
            pairs.iter().find(|(n, _)| *n == h).map(|(_, v)| v.as_str())
        })
        .unwrap();
        assert_eq!(parsed, auth);
        let stranger = Device::generate(&mut SystemRandom).unwrap();
        assert!(!auth.verify(stranger.identity(), "POST", "/v1/x", b"body"));
    }
}
