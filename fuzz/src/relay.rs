//! `relay_api`: the relay's HTTP API as data (docs/MESSAGING.md, "Relay API";
//! `sessionkey_proto::msg::api`): JSON request and answer bodies, and the four
//! signed-request headers.
//!
//! Input: a mode byte (taken modulo 4), then the mode's own bytes.
//!
//! 0. A selector byte, then a JSON body for that type ([`RegisterRequest`],
//!    [`UploadPrekeys`], [`RetirePrekeys`], [`Ack`], [`Inbox`], [`InboxMessage`],
//!    [`DeviceStatus`], [`BundleResponse`], [`SendResponse`], [`Push`], [`ErrorBody`]): a
//!    body that decodes encodes to JSON that decodes to the same value (encoding is a fixed
//!    point after one round; the input's own spelling may differ by whitespace and escapes).
//! 1. Four u16-prefixed header values (name, time, nonce, signature) read by
//!    [`AuthHeaders::from_lookup`]: headers that parse are written by
//!    [`AuthHeaders::to_pairs`] as values that parse back to the same headers; if they verify
//!    as the fixed device's signature over the request in the rest of the input, the
//!    signature is the one the device makes (no second valid signature).
//! 2. A genuine request signed by the fixed device as `alice` (a u16-prefixed method and
//!    path, an 8-byte time, a 16-byte nonce, a u16-prefixed body), sent as header values,
//!    then one (part, u16 position, non-zero XOR byte) edit to a header value, the method,
//!    the path or the body: the changed request either does not parse or does not verify;
//!    the genuine one verifies.
//! 3. A genuine request as in 2, unchanged: its headers survive the round trip through
//!    their text form and verify.

use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sessionkey_proto::msg::api::{
    Ack, AuthHeaders, BundleResponse, DeviceStatus, ErrorBody, Inbox, InboxMessage, Push,
    RegisterRequest, RetirePrekeys, SendResponse, UploadPrekeys, HEADER_NAME, HEADER_NONCE,
    HEADER_SIGNATURE, HEADER_TIME,
};
use sessionkey_proto::msg::Device;

use crate::{push_prefixed, FixedRng, Input};

/// The fixed signing device (made once: its ML-KEM keys come from aws-lc).
fn device() -> &'static Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE.get_or_init(|| Device::generate(&mut FixedRng::new(0x4e1a7)).expect("a device"))
}

const NAMES: [&str; 4] = [HEADER_NAME, HEADER_TIME, HEADER_NONCE, HEADER_SIGNATURE];

/// Run one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    match input.u8() % 4 {
        0 => body(&mut input),
        1 => headers(&mut input),
        2 => tampered(&mut input),
        _ => genuine(&mut input),
    }
}

fn round_trip<T: Serialize + DeserializeOwned>(json: &[u8]) {
    let Ok(value) = serde_json::from_slice::<T>(json) else {
        return;
    };
    let once = serde_json::to_vec(&value).expect("a decoded body encodes");
    let again: T = serde_json::from_slice(&once)
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", String::from_utf8_lossy(&once)));
    let twice = serde_json::to_vec(&again).expect("a decoded body encodes");
    assert_eq!(
        String::from_utf8_lossy(&once),
        String::from_utf8_lossy(&twice),
        "a body is not its own encoding's decoding"
    );
}

fn body(input: &mut Input<'_>) {
    let selector = input.u8();
    let json = input.rest();
    match selector % 11 {
        0 => round_trip::<RegisterRequest>(json),
        1 => round_trip::<UploadPrekeys>(json),
        2 => round_trip::<RetirePrekeys>(json),
        3 => round_trip::<Ack>(json),
        4 => round_trip::<Inbox>(json),
        5 => round_trip::<InboxMessage>(json),
        6 => round_trip::<DeviceStatus>(json),
        7 => round_trip::<BundleResponse>(json),
        8 => round_trip::<SendResponse>(json),
        9 => round_trip::<Push>(json),
        _ => round_trip::<ErrorBody>(json),
    }
}

/// Headers from four values as an HTTP server hands them over (valid UTF-8 only).
fn parse(values: &[String; 4]) -> Option<AuthHeaders> {
    AuthHeaders::from_lookup(|h| {
        NAMES
            .iter()
            .position(|n| *n == h)
            .map(|i| values[i].as_str())
    })
}

fn values_of(auth: &AuthHeaders) -> [String; 4] {
    let pairs = auth.to_pairs();
    NAMES.map(|n| {
        pairs
            .iter()
            .find(|(p, _)| *p == n)
            .map(|(_, v)| v.clone())
            .expect("every header is written")
    })
}

fn headers(input: &mut Input<'_>) {
    let values = [(); 4].map(|()| String::from_utf8_lossy(input.prefixed()).into_owned());
    let method = String::from_utf8_lossy(input.prefixed()).into_owned();
    let path = String::from_utf8_lossy(input.prefixed()).into_owned();
    let body = input.rest();
    let Some(auth) = parse(&values) else {
        return;
    };
    let written = values_of(&auth);
    assert_eq!(parse(&written).as_ref(), Some(&auth), "headers round trip");
    // A signature that verifies is the device's own for this request (Ed25519 signs
    // deterministically, and a second valid signature would make requests malleable).
    if auth.verify(device().identity(), &method, &path, body) {
        let own = AuthHeaders::sign(
            device(),
            &auth.name,
            &method,
            &path,
            auth.time,
            auth.nonce,
            body,
        )
        .expect("signing a request");
        assert_eq!(own.signature, auth.signature, "a second valid signature");
    }
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
    auth: AuthHeaders,
}

fn sign(input: &mut Input<'_>) -> Request {
    let method = String::from_utf8_lossy(input.prefixed()).into_owned();
    let path = String::from_utf8_lossy(input.prefixed()).into_owned();
    let time = u64::from_be_bytes(input.bytes_padded(8).try_into().expect("8 bytes"));
    let nonce: [u8; 16] = input.bytes_padded(16).try_into().expect("16 bytes");
    let body = input.prefixed().to_vec();
    let name = "alice";
    let auth = AuthHeaders::sign(device(), name, &method, &path, time, nonce, &body)
        .expect("signing a request");
    Request {
        method,
        path,
        body,
        auth,
    }
}

fn tampered(input: &mut Input<'_>) {
    let req = sign(input);
    let field = usize::from(input.u8() % 7);
    let pos = usize::from(input.u16());
    let xor = input.u8();
    assert!(
        req.auth
            .verify(device().identity(), &req.method, &req.path, &req.body),
        "a genuine request does not verify"
    );
    // Header values, the method and the path as bytes, then the body.
    let mut parts: Vec<Vec<u8>> = values_of(&req.auth)
        .into_iter()
        .map(String::into_bytes)
        .collect();
    parts.push(req.method.into_bytes());
    parts.push(req.path.into_bytes());
    parts.push(req.body);
    let target = &mut parts[field];
    if xor == 0 || target.is_empty() {
        return;
    }
    let at = pos % target.len();
    target[at] ^= xor;
    let body = parts.pop().expect("the body");
    // Header values, methods and paths reach the relay as text: bytes that are not UTF-8
    // are refused before the signature is looked at.
    let Ok(text) = parts
        .into_iter()
        .map(String::from_utf8)
        .collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    let values: [String; 4] = text[..4].to_vec().try_into().expect("four values");
    if let Some(auth) = parse(&values) {
        assert!(
            !auth.verify(device().identity(), &text[4], &text[5], &body),
            "a request changed in part {field} at byte {at} (^{xor:#04x}) still verifies"
        );
    }
}

fn genuine(input: &mut Input<'_>) {
    let req = sign(input);
    let back = parse(&values_of(&req.auth)).expect("genuine headers parse");
    assert_eq!(back, req.auth, "headers round trip");
    assert!(
        back.verify(device().identity(), &req.method, &req.path, &req.body),
        "a genuine request does not verify"
    );
}

/// Seeds: every body type as the relay and the client write it, header sets, and signed
/// requests with and without edits.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    use sessionkey_proto::msg::api::B64;
    let d = device();
    let mut seeds = Vec::new();
    let mut json = |name: &str, selector: u8, value: &dyn erased::Json| {
        let mut s = vec![0, selector];
        s.extend_from_slice(&value.json());
        seeds.push((format!("body-{name}"), s));
    };
    let mut fresh = Device::generate(&mut FixedRng::new(5)).expect("a device");
    let now = sessionkey_proto::msg::Timestamp::from_unix_secs(1_750_000_000);
    let signed = fresh
        .new_signed_prekey(now, &mut FixedRng::new(6))
        .expect("a signed prekey");
    let one_time = fresh
        .new_one_time_prekeys(2, &mut FixedRng::new(7))
        .expect("one-time prekeys");
    json(
        "register",
        0,
        &RegisterRequest {
            identity: B64(fresh.identity().to_bytes().to_vec()),
            signed_prekey: B64(signed.to_bytes()),
            last_resort_kem: B64(vec![7; 40]),
        },
    );
    json(
        "upload",
        1,
        &UploadPrekeys {
            one_time: one_time.iter().map(|k| B64(k.to_bytes())).collect(),
            kem: vec![B64(vec![3; 20])],
        },
    );
    json(
        "retire",
        2,
        &RetirePrekeys {
            one_time_through: 17,
            kem_through: 4,
        },
    );
    json("ack", 3, &Ack { ids: vec![1, 2, 9] });
    let message = InboxMessage {
        id: 5,
        sender: "bob".into(),
        sent: 1_750_000_000,
        body: B64(b"envelope".to_vec()),
    };
    let status = DeviceStatus {
        one_time_prekeys: 80,
        kem_prekeys: 10,
        queued: 1,
    };
    json(
        "inbox",
        4,
        &Inbox {
            messages: vec![message.clone()],
            status: Some(status),
        },
    );
    json("inbox-message", 5, &message);
    json("status", 6, &status);
    json(
        "bundle",
        7,
        &BundleResponse {
            bundle: B64(vec![1; 64]),
        },
    );
    json("send", 8, &SendResponse { id: 42 });
    json("push", 9, &Push { pending: 3 });
    json(
        "error",
        10,
        &ErrorBody {
            error: "unknown device \"carol\"; register it first".into(),
        },
    );
    let request = |method: &str, path: &str, body: &[u8]| {
        let mut s = Vec::new();
        push_prefixed(&mut s, method.as_bytes());
        push_prefixed(&mut s, path.as_bytes());
        s.extend_from_slice(&1_750_000_000u64.to_be_bytes());
        s.extend_from_slice(&[9; 16]);
        push_prefixed(&mut s, body);
        s
    };
    let fetch = request("GET", "/v1/messages?wait=30", b"");
    let ack = request("POST", "/v1/messages/ack", br#"{"ids":[1,2]}"#);
    seeds.push(("genuine-fetch".into(), [&[3][..], &fetch].concat()));
    seeds.push(("genuine-ack".into(), [&[3][..], &ack].concat()));
    for (name, edit) in [
        ("nonce", [2u8, 0, 3, 1]),
        ("signature", [3, 0, 10, 0x20]),
        ("body", [6, 0, 2, 1]),
    ] {
        seeds.push((format!("tamper-{name}"), [&[2][..], &ack, &edit].concat()));
    }
    let auth = AuthHeaders::sign(d, "alice", "GET", "/v1/self", 1_750_000_000, [1; 16], b"")
        .expect("signing");
    let mut h = vec![1];
    for v in values_of(&auth) {
        push_prefixed(&mut h, v.as_bytes());
    }
    push_prefixed(&mut h, b"GET");
    push_prefixed(&mut h, b"/v1/self");
    seeds.push(("headers".into(), h));
    seeds
}

/// Encoding seeds of different types through one closure.
mod erased {
    pub trait Json {
        fn json(&self) -> Vec<u8>;
    }

    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("a seed encodes")
        }
    }
}
