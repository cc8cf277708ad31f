//! Fuzz harnesses for sessionkey-proto, shared by the cargo-fuzz targets in `fuzz_targets/`
//! and by the stable-toolchain examples (`write_seeds`, `replay`).
//!
//! Every harness drives the crate through its public API only, with fixed static keys and,
//! where the API takes one, a fixed random generator ([`FixedRng`]), so that an input replays
//! the same way. Two sources of randomness cannot be fixed through the public API: the
//! responder side of [`Session::server`] / [`Responder::read_hello`] builds its handshake with
//! the system generator, and ML-KEM keys always come from aws-lc. The harnesses therefore
//! never depend on key values: genuine records are sealed inside the harness, from
//! instructions in the input, not stored in it.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use sessionkey_proto::crypto::SecureRandom;
use sessionkey_proto::handshake::{Header, Initiator, Policy, Responder};
use sessionkey_proto::keys::{Identity, Psk};
use sessionkey_proto::noise::{HandshakeBuilder, Pattern};
use sessionkey_proto::record::MAX_FRAME;
use sessionkey_proto::session::{Received, Session};
use sessionkey_proto::suite::Suite;
use sessionkey_proto::Error;

pub mod config;
pub mod datagram;
pub mod handshake;
pub mod keyfile;
pub mod msg;
pub mod peer;
pub mod pem;
pub mod relay;
pub mod stream;
pub mod trust;
pub mod vpn;

/// A deterministic stand-in for a secure generator (splitmix64). For fuzzing only.
#[derive(Debug, Clone)]
pub struct FixedRng(u64);

impl FixedRng {
    /// A generator whose output is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
}

impl SecureRandom for FixedRng {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        for chunk in dest.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
        Ok(())
    }
}

/// Reads fuzzer bytes as instructions; past the end every read yields zeros.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Wrap the fuzzer's input.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether everything was consumed.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte, or 0.
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// The next two bytes, big-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    /// Up to `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    /// `n` bytes, padded with zeros at the end of the input.
    pub fn bytes_padded(&mut self, n: usize) -> Vec<u8> {
        let mut v = self.bytes(n).to_vec();
        v.resize(n, 0);
        v
    }

    /// A slice prefixed by its big-endian u16 length.
    pub fn prefixed(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.bytes(n)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Write `bytes` prefixed by their u16 length (the inverse of [`Input::prefixed`]).
pub fn push_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = u16::try_from(bytes.len()).expect("segment longer than 65535 bytes");
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The suites, indexed by fuzzer bytes.
pub const SUITES: [Suite; 3] = [Suite::Aes128Gcm, Suite::Aes256Gcm, Suite::ChaCha20Poly1305];

/// The pre-shared key every harness uses.
pub const PSK: [u8; 32] = [0x5a; 32];

/// The fixed responder identity.
pub fn server_identity() -> Arc<Identity> {
    static ID: OnceLock<Arc<Identity>> = OnceLock::new();
    ID.get_or_init(|| Arc::new(Identity::from_secret_bytes(&[0x11; 32]).expect("fixed key")))
        .clone()
}

/// The fixed initiator identity.
pub fn client_identity() -> Arc<Identity> {
    static ID: OnceLock<Arc<Identity>> = OnceLock::new();
    ID.get_or_init(|| Arc::new(Identity::from_secret_bytes(&[0x22; 32]).expect("fixed key")))
        .clone()
}

/// A responder policy that accepts every offer it can serve: every pattern and suite,
/// classical and anonymous initiators.
pub fn permissive_policy() -> Policy {
    Policy {
        patterns: Pattern::ALL.to_vec(),
        suites: Suite::ALL.to_vec(),
        require_hybrid: false,
        allow_anonymous: true,
        has_psk: false,
    }
}

/// A header from one fuzzer byte: pattern (low nibble), suite, hybrid and psk bits.
pub fn header_from_byte(b: u8) -> Header {
    Header {
        pattern: Pattern::ALL[usize::from(b & 0x0f) % Pattern::ALL.len()],
        suite: SUITES[usize::from(b >> 4 & 3) % SUITES.len()],
        hybrid: b & 0x40 != 0,
        psk: b & 0x80 != 0,
    }
}

/// The native initiator for `header`, as [`Initiator::new`] builds it, but with the fixed
/// identities and a fixed generator for its ephemeral X25519 keys.
pub fn initiator(header: Header, seed: u64) -> Result<Initiator, Error> {
    let prologue = header.encode();
    let mut b = HandshakeBuilder::new(header.noise_params())
        .prologue(&prologue)
        .rng(Box::new(FixedRng::new(seed)));
    if header.pattern.initiator_has_static() {
        b = b.local_static(client_identity());
    }
    if header.pattern.responder_premessage() {
        b = b.remote_static(*server_identity().public_key());
    }
    if header.psk {
        b = b.psk(Psk::from_bytes(PSK));
    }
    // The constructor's own state, replaced by one with the fixed generator.
    let mut init = Initiator::new(
        header,
        header.pattern.initiator_has_static().then(client_identity),
        header
            .pattern
            .responder_premessage()
            .then(|| *server_identity().public_key()),
        header.psk.then(|| Psk::from_bytes(PSK)),
    )?;
    init.state = b.build_initiator()?;
    Ok(init)
}

/// The responder matching [`initiator`]: the fixed identity, the permissive policy, and the
/// psk if `psk`.
pub fn responder(psk: bool) -> Responder {
    Responder::new(
        permissive_policy(),
        Some(server_identity()),
        psk.then(|| Psk::from_bytes(PSK)),
    )
}

/// Process every whole frame at the start of `inbox`, as the tests' simulator does, checking
/// the API's promises about what [`Session::read`] returns. Returns `false` once the session
/// failed.
pub fn receive(
    session: &mut Session,
    now: Instant,
    inbox: &mut Vec<u8>,
    delivered: &mut Vec<u8>,
) -> bool {
    loop {
        match session.read(now, inbox) {
            Ok(Received::Incomplete { needed }) => {
                assert!(
                    needed > inbox.len(),
                    "read reported Incomplete {{ needed: {needed} }} with {} bytes buffered",
                    inbox.len()
                );
                break;
            }
            Ok(Received::Data { frame_len, content }) => {
                assert!(
                    frame_len > 0 && frame_len <= inbox.len(),
                    "Data frame_len {frame_len} with {} bytes buffered",
                    inbox.len()
                );
                assert!(
                    content.start <= content.end && content.end <= frame_len,
                    "Data content {content:?} outside frame of {frame_len}"
                );
                delivered.extend_from_slice(&inbox[content]);
                inbox.drain(..frame_len);
            }
            Ok(Received::Control { frame_len }) => {
                assert!(
                    frame_len > 0 && frame_len <= inbox.len(),
                    "Control frame_len {frame_len} with {} bytes buffered",
                    inbox.len()
                );
                inbox.drain(..frame_len);
            }
            Err(_) => {
                assert!(
                    session.close_reason().is_some(),
                    "read failed but the session is not closed"
                );
                drain_events(session);
                return false;
            }
        }
    }
    drain_events(session);
    true
}

/// Drop every pending event (formatting each, so `Debug`/`Display` code runs too).
pub fn drain_events(session: &mut Session) {
    let mut n = 0;
    while let Some(e) = session.poll_event() {
        std::hint::black_box(format!("{e:?}"));
        n += 1;
        assert!(n < 10_000, "poll_event never returns None");
    }
}

/// Every frame `session` wants to send, each appended to `wire` with its range in `frames`.
pub fn transmit(
    session: &mut Session,
    now: Instant,
    wire: &mut Vec<u8>,
    frames: &mut Vec<std::ops::Range<usize>>,
) {
    thread_local! {
        // One frame buffer for all calls: a fresh 64 KiB buffer per call dominated the run
        // time under AddressSanitizer.
        static OUT: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; MAX_FRAME]);
    }
    OUT.with_borrow_mut(|out| transmit_with(session, now, wire, frames, out));
}

fn transmit_with(
    session: &mut Session,
    now: Instant,
    wire: &mut Vec<u8>,
    frames: &mut Vec<std::ops::Range<usize>>,
    out: &mut [u8],
) {
    for _ in 0..256 {
        match session.poll_transmit(now, out) {
            Ok(Some(n)) => {
                assert!(n <= out.len(), "poll_transmit wrote {n} bytes");
                frames.push(wire.len()..wire.len() + n);
                wire.extend_from_slice(&out[..n]);
            }
            Ok(None) | Err(_) => {
                drain_events(session);
                return;
            }
        }
    }
    panic!("poll_transmit never returns None");
}
