//! Interoperability with an independent Noise implementation, the `snow` crate (0.10).
//!
//! Every supported classical protocol (patterns, deferred patterns, psk modifiers, both
//! ciphers, both hashes) runs against snow in both role orders: the handshake must complete
//! with equal handshake hashes and correctly learned static keys, and transport messages must
//! decrypt both ways. A mismatched prologue or psk must fail on the reading side with an error.
//!
//! Hybrid (`hfs`) interop: snow 0.10 only parses the KEM name `Kyber1024`, but its
//! `NoiseParams::name` (the string hashed into `h`) is a public field and its resolver may
//! return any `Kem`. The snow side therefore parses `..._25519+Kyber1024_...`, is handed
//! ML-KEM-768 (aws-lc-rs) for that choice, and hashes our exact name
//! `..._25519+MLKEM768_...`. This independently checks the placement and processing of the
//! `e1` and `ekem1` tokens.

use std::io::Write;
use std::sync::Arc;

use aws_lc_rs::kem::{Ciphertext, DecapsulationKey, EncapsulationKey, ML_KEM_768};
use sessionkey_proto::crypto::{SecureRandom, SystemRandom};
use sessionkey_proto::keys::{Identity, Psk, PublicKey};
use sessionkey_proto::noise::{HandshakeBuilder, HandshakeState, NoiseParams, NoiseTransport};
use sessionkey_proto::{ApiMisuse, Error, PeerMisbehaved};
use snow::params::{CipherChoice, DHChoice, HashChoice, KemChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Kem, Random};

const SUITES: [&str; 4] = [
    "AESGCM_SHA256",
    "AESGCM_BLAKE2s",
    "ChaChaPoly_SHA256",
    "ChaChaPoly_BLAKE2s",
];

const CLASSICAL: [&str; 27] = [
    "NN",
    "NK",
    "XX",
    "IK",
    "KK",
    "NK1",
    "XX1",
    "KK1",
    "IK1",
    "NNpsk0",
    "NNpsk2",
    "NNpsk0+psk2",
    "NKpsk0",
    "NKpsk2",
    "XXpsk0",
    "XXpsk3",
    "XXpsk0+psk3",
    "XXpsk0+psk1+psk2+psk3",
    "IKpsk1",
    "IKpsk2",
    "KKpsk0",
    "KKpsk2",
    "KKpsk0+psk2",
    "NK1psk2",
    "XX1psk3",
    "KK1psk0",
    "IK1psk2",
];

const HYBRID: [&str; 13] = [
    "NNhfs",
    "NKhfs",
    "XXhfs",
    "IKhfs",
    "KKhfs",
    "NK1hfs",
    "XX1hfs",
    "KK1hfs",
    "IK1hfs",
    "NNhfs+psk0",
    "XXhfs+psk3",
    "IKhfs+psk2",
    "KKhfs+psk0+psk2",
];

const BIG: usize = 65535 - 16;

fn random_bytes(len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    SystemRandom.fill(&mut v).unwrap();
    v
}

fn random32() -> [u8; 32] {
    random_bytes(32).try_into().unwrap()
}

fn name(handshake: &str, suite: &str) -> String {
    let dh = if handshake.contains("hfs") {
        "25519+MLKEM768"
    } else {
        "25519"
    };
    format!("Noise_{handshake}_{dh}_{suite}")
}

// ---------------------------------------------------------------------------------------------
// snow's side of ML-KEM-768.

/// ML-KEM-768 from aws-lc-rs, in snow's `Kem` shape.
#[derive(Default)]
struct MlKem768 {
    secret: Option<DecapsulationKey>,
    public: Vec<u8>,
}

impl Kem for MlKem768 {
    fn name(&self) -> &'static str {
        "MLKEM768"
    }

    fn pub_len(&self) -> usize {
        1184
    }

    fn ciphertext_len(&self) -> usize {
        1088
    }

    fn shared_secret_len(&self) -> usize {
        32
    }

    fn generate(&mut self, _rng: &mut dyn Random) {
        // aws-lc-rs draws ML-KEM randomness from its own generator; the trait has no error path.
        let secret = DecapsulationKey::generate(&ML_KEM_768).expect("ML-KEM-768 key generation");
        let public = secret
            .encapsulation_key()
            .and_then(|k| k.key_bytes())
            .expect("ML-KEM-768 encapsulation key");
        self.public = public.as_ref().to_vec();
        self.secret = Some(secret);
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn encapsulate(
        &self,
        pubkey: &[u8],
        shared_secret_out: &mut [u8],
        ciphertext_out: &mut [u8],
    ) -> Result<(usize, usize), snow::Error> {
        let key = EncapsulationKey::new(&ML_KEM_768, pubkey).map_err(|_| snow::Error::Kem)?;
        let (ct, ss) = key.encapsulate().map_err(|_| snow::Error::Kem)?;
        let (ct, ss) = (ct.as_ref(), ss.as_ref());
        if ct.len() != ciphertext_out.len() || ss.len() != shared_secret_out.len() {
            return Err(snow::Error::Kem);
        }
        ciphertext_out.copy_from_slice(ct);
        shared_secret_out.copy_from_slice(ss);
        Ok((ss.len(), ct.len()))
    }

    fn decapsulate(
        &self,
        ciphertext: &[u8],
        shared_secret_out: &mut [u8],
    ) -> Result<usize, snow::Error> {
        let secret = self.secret.as_ref().ok_or(snow::Error::Kem)?;
        let ss = secret
            .decapsulate(Ciphertext::from(ciphertext))
            .map_err(|_| snow::Error::Kem)?;
        let ss = ss.as_ref();
        if ss.len() != shared_secret_out.len() {
            return Err(snow::Error::Kem);
        }
        shared_secret_out.copy_from_slice(ss);
        Ok(ss.len())
    }
}

/// snow's default primitives, plus ML-KEM-768 for the only KEM choice snow can parse.
struct MlKemResolver;

impl CryptoResolver for MlKemResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        DefaultResolver.resolve_rng()
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }

    fn resolve_kem(&self, choice: &KemChoice) -> Option<Box<dyn Kem>> {
        match choice {
            KemChoice::Kyber1024 => Some(Box::<MlKem768>::default()),
        }
    }
}

/// snow's parameters for `name`. For hybrid names snow parses `Kyber1024` in place of
/// `MLKEM768` (the resolver maps it to ML-KEM-768); `keep_our_name` then restores the exact
/// protocol name that is hashed into `h`.
fn snow_params(name: &str, keep_our_name: bool) -> Result<snow::params::NoiseParams, String> {
    if name.contains("+MLKEM768_") {
        let mut p: snow::params::NoiseParams = name
            .replace("+MLKEM768_", "+Kyber1024_")
            .parse()
            .map_err(|e| format!("snow cannot parse {name}: {e}"))?;
        if keep_our_name {
            p.name = name.to_string();
        }
        Ok(p)
    } else {
        name.parse()
            .map_err(|e| format!("snow cannot parse {name}: {e}"))
    }
}

// ---------------------------------------------------------------------------------------------
// One party's configuration, and both implementations behind one interface.

#[derive(Clone)]
struct Party {
    prologue: Vec<u8>,
    /// The local static secret.
    secret: Option<[u8; 32]>,
    /// The peer's static public key, where the pattern has it as a pre-message.
    remote: Option<[u8; 32]>,
    /// (position, key), in protocol-name order.
    psks: Vec<(u8, [u8; 32])>,
}

struct Setup {
    params: NoiseParams,
    init: Party,
    resp: Party,
    init_public: Option<[u8; 32]>,
    resp_public: Option<[u8; 32]>,
}

fn setup(name: &str) -> Setup {
    let params: NoiseParams = name.parse().unwrap_or_else(|e| panic!("{name}: {e}"));
    let pattern = params.pattern;
    // Static keys from our Identity; snow gets the same secret bytes.
    let key = |present: bool| {
        present.then(|| {
            let secret = random32();
            let public = *Identity::from_secret_bytes(&secret)
                .unwrap()
                .public_key()
                .as_bytes();
            (secret, public)
        })
    };
    let init_key = key(pattern.initiator_has_static());
    let resp_key = key(pattern.responder_has_static());
    let psks: Vec<(u8, [u8; 32])> = (0..8u8)
        .filter(|p| params.psk_positions & (1 << p) != 0)
        .map(|p| (p, random32()))
        .collect();
    let prologue = random_bytes(17);
    Setup {
        params,
        init: Party {
            prologue: prologue.clone(),
            secret: init_key.map(|k| k.0),
            remote: resp_key
                .filter(|_| pattern.responder_premessage())
                .map(|k| k.1),
            psks: psks.clone(),
        },
        resp: Party {
            prologue,
            secret: resp_key.map(|k| k.0),
            remote: init_key
                .filter(|_| pattern.initiator_premessage())
                .map(|k| k.1),
            psks,
        },
        init_public: init_key.map(|k| k.1),
        resp_public: resp_key.map(|k| k.1),
    }
}

/// A failed read, from either implementation.
#[derive(Debug)]
enum Failure {
    Ours(Error),
    Snow(snow::Error),
}

impl Failure {
    /// An authentication failure, as opposed to a malformed message or misuse.
    fn is_decryption_failure(&self) -> bool {
        matches!(
            self,
            Self::Ours(Error::PeerMisbehaved(PeerMisbehaved::BadTag))
                | Self::Snow(snow::Error::Decrypt)
        )
    }
}

enum Hs {
    Ours(Box<HandshakeState>),
    Snow(Box<snow::HandshakeState>),
}

impl Hs {
    fn ours(params: NoiseParams, party: &Party, initiator: bool) -> Result<Self, String> {
        let mut b = HandshakeBuilder::new(params).prologue(&party.prologue);
        if let Some(s) = party.secret {
            let id = Identity::from_secret_bytes(&s).map_err(|e| e.to_string())?;
            b = b.local_static(Arc::new(id));
        }
        if let Some(r) = party.remote {
            b = b.remote_static(PublicKey::from_bytes(r));
        }
        for (_, psk) in &party.psks {
            b = b.psk(Psk::from_bytes(*psk));
        }
        let hs = if initiator {
            b.build_initiator()
        } else {
            b.build_responder()
        };
        hs.map(|h| Self::Ours(Box::new(h)))
            .map_err(|e| format!("our builder: {e}"))
    }

    fn snow(
        params: snow::params::NoiseParams,
        party: &Party,
        initiator: bool,
    ) -> Result<Self, String> {
        let err = |e: snow::Error| format!("snow builder: {e}");
        let mut b = if params.handshake.is_hfs() {
            snow::Builder::with_resolver(params, Box::new(MlKemResolver))
        } else {
            snow::Builder::new(params)
        };
        b = b.prologue(&party.prologue).map_err(err)?;
        if let Some(s) = &party.secret {
            b = b.local_private_key(s).map_err(err)?;
        }
        if let Some(r) = &party.remote {
            b = b.remote_public_key(r).map_err(err)?;
        }
        for (pos, psk) in &party.psks {
            b = b.psk(*pos, psk).map_err(err)?;
        }
        let hs = if initiator {
            b.build_initiator()
        } else {
            b.build_responder()
        };
        hs.map(|h| Self::Snow(Box::new(h))).map_err(err)
    }

    fn label(&self) -> &'static str {
        match self {
            Self::Ours(_) => "sessionkey",
            Self::Snow(_) => "snow",
        }
    }

    fn write(&mut self, payload: &[u8], out: &mut [u8]) -> Result<usize, String> {
        match self {
            Self::Ours(h) => h.write_message(payload, out).map_err(|e| e.to_string()),
            Self::Snow(h) => h.write_message(payload, out).map_err(|e| e.to_string()),
        }
    }

    fn read(&mut self, message: &[u8], out: &mut [u8]) -> Result<usize, Failure> {
        match self {
            Self::Ours(h) => h.read_message(message, out).map_err(Failure::Ours),
            Self::Snow(h) => h.read_message(message, out).map_err(Failure::Snow),
        }
    }

    fn is_finished(&self) -> bool {
        match self {
            Self::Ours(h) => h.is_finished(),
            Self::Snow(h) => h.is_handshake_finished(),
        }
    }

    fn handshake_hash(&self) -> Vec<u8> {
        match self {
            Self::Ours(h) => h.handshake_hash().to_vec(),
            Self::Snow(h) => h.get_handshake_hash().to_vec(),
        }
    }

    fn remote_static(&self) -> Option<Vec<u8>> {
        match self {
            Self::Ours(h) => h.remote_static().map(|k| k.as_bytes().to_vec()),
            Self::Snow(h) => h.get_remote_static().map(<[u8]>::to_vec),
        }
    }

    fn into_transport(self) -> Result<Tr, String> {
        match self {
            Self::Ours(h) => h.into_transport().map(Tr::Ours).map_err(|e| e.to_string()),
            Self::Snow(h) => h
                .into_transport_mode()
                .map(|t| Tr::Snow(Box::new(t)))
                .map_err(|e| e.to_string()),
        }
    }
}

enum Tr {
    Ours(NoiseTransport),
    Snow(Box<snow::TransportState>),
}

impl Tr {
    fn write(&mut self, payload: &[u8], out: &mut [u8]) -> Result<usize, String> {
        match self {
            Self::Ours(t) => t.write_message(payload, out).map_err(|e| e.to_string()),
            Self::Snow(t) => t.write_message(payload, out).map_err(|e| e.to_string()),
        }
    }

    fn read(&mut self, message: &[u8], out: &mut [u8]) -> Result<usize, String> {
        match self {
            Self::Ours(t) => t.read_message(message, out).map_err(|e| e.to_string()),
            Self::Snow(t) => t.read_message(message, out).map_err(|e| e.to_string()),
        }
    }

    fn remote_static(&self) -> Option<Vec<u8>> {
        match self {
            Self::Ours(t) => t.remote_static().map(|k| k.as_bytes().to_vec()),
            Self::Snow(t) => t.get_remote_static().map(<[u8]>::to_vec),
        }
    }
}

/// Which implementation plays the initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// sessionkey initiates, snow responds.
    OursFirst,
    /// snow initiates, sessionkey responds.
    SnowFirst,
}

const ORDERS: [Order; 2] = [Order::OursFirst, Order::SnowFirst];

/// Build both sides; the snow side gets `snow_init` or `snow_resp` as its configuration.
fn build_pair(
    name: &str,
    s: &Setup,
    order: Order,
    snow_init: &Party,
    snow_resp: &Party,
    keep_our_name: bool,
) -> Result<(Hs, Hs), String> {
    let sp = snow_params(name, keep_our_name)?;
    Ok(match order {
        Order::OursFirst => (
            Hs::ours(s.params, &s.init, true)?,
            Hs::snow(sp, snow_resp, false)?,
        ),
        Order::SnowFirst => (
            Hs::snow(sp, snow_init, true)?,
            Hs::ours(s.params, &s.resp, false)?,
        ),
    })
}

fn expect_key(what: &str, got: Option<Vec<u8>>, want: Option<[u8; 32]>) -> Result<(), String> {
    if got.as_deref() != want.as_ref().map(|k| &k[..]) {
        return Err(format!(
            "{what}: remote static {got:02x?}, expected {want:02x?}"
        ));
    }
    Ok(())
}

/// One full handshake and transport exchange; Err describes the first problem.
fn run(name: &str, order: Order) -> Result<(), String> {
    let s = setup(name);
    let (mut init, mut resp) = build_pair(name, &s, order, &s.init, &s.resp, true)?;
    let count = s.params.pattern.message_count();
    let mut buf = vec![0u8; 65535];
    let mut out = vec![0u8; 65535];
    for i in 0..count {
        if init.is_finished() || resp.is_finished() {
            return Err(format!("finished early, before message {i}"));
        }
        let (w, r) = if i % 2 == 0 {
            (&mut init, &mut resp)
        } else {
            (&mut resp, &mut init)
        };
        // Non-empty payloads; one larger than a typical packet.
        let payload = random_bytes(if i == 1 { 1500 } else { 1 + i * 13 });
        let n = w
            .write(&payload, &mut buf)
            .map_err(|e| format!("{} writing message {i}: {e}", w.label()))?;
        let p = r
            .read(&buf[..n], &mut out)
            .map_err(|e| format!("{} reading message {i}: {e:?}", r.label()))?;
        if out[..p] != payload[..] {
            return Err(format!("message {i}: payload differs"));
        }
    }
    if !init.is_finished() || !resp.is_finished() {
        return Err("handshake not finished after the last message".into());
    }
    let (hi, hr) = (init.handshake_hash(), resp.handshake_hash());
    if hi != hr || hi.len() != 32 {
        return Err(format!("handshake hashes differ: {hi:02x?} vs {hr:02x?}"));
    }
    expect_key("initiator", init.remote_static(), s.resp_public)?;
    expect_key("responder", resp.remote_static(), s.init_public)?;

    let mut init = init.into_transport()?;
    let mut resp = resp.into_transport()?;
    expect_key("initiator transport", init.remote_static(), s.resp_public)?;
    expect_key("responder transport", resp.remote_static(), s.init_public)?;
    // Alternating, including empty and maximum payloads, then bursts one way each.
    let mut schedule: Vec<(bool, usize)> = [0, 1, 16, BIG, 1000, 0, 65]
        .iter()
        .flat_map(|&len| [(true, len), (false, len)])
        .collect();
    schedule.extend([(true, 7), (true, 0), (true, 2000), (false, 3), (false, 300)]);
    for (j, (from_init, len)) in schedule.into_iter().enumerate() {
        let (w, r) = if from_init {
            (&mut init, &mut resp)
        } else {
            (&mut resp, &mut init)
        };
        let payload = random_bytes(len);
        let n = w
            .write(&payload, &mut buf)
            .map_err(|e| format!("transport {j} ({len} bytes) write: {e}"))?;
        if n != len + 16 {
            return Err(format!("transport {j}: {n} bytes for a {len}-byte payload"));
        }
        let p = r
            .read(&buf[..n], &mut out)
            .map_err(|e| format!("transport {j} ({len} bytes) read: {e}"))?;
        if out[..p] != payload[..] {
            return Err(format!("transport {j}: payload differs"));
        }
    }
    Ok(())
}

/// Run every protocol of `handshakes` x `SUITES` in both role orders; returns (passed, failed).
fn run_all(handshakes: &[&str]) -> (usize, usize) {
    let (mut passed, mut failed) = (0, 0);
    for hs in handshakes {
        for suite in SUITES {
            let name = name(hs, suite);
            for order in ORDERS {
                match run(&name, order) {
                    Ok(()) => passed += 1,
                    Err(why) => {
                        failed += 1;
                        let _ = writeln!(std::io::stderr().lock(), "{name} {order:?}: {why}");
                    }
                }
            }
        }
    }
    (passed, failed)
}

#[test]
fn snow_interop() {
    let (passed, failed) = run_all(&CLASSICAL);
    let _ = writeln!(
        std::io::stderr().lock(),
        "snow-interop: {passed} passed, {failed} failed"
    );
    assert_eq!(failed, 0, "interop with snow failed");
    // 27 handshakes x 4 cipher/hash suites x 2 role orders.
    assert_eq!(passed, 216);
}

#[test]
fn snow_interop_hybrid() {
    let (passed, failed) = run_all(&HYBRID);
    let _ = writeln!(
        std::io::stderr().lock(),
        "snow-interop-hfs: {passed} passed, {failed} failed"
    );
    assert_eq!(failed, 0, "hybrid interop with snow failed");
    // 13 hfs handshakes x 4 cipher/hash suites x 2 role orders.
    assert_eq!(passed, 104);
}

// ---------------------------------------------------------------------------------------------
// Negative interop.

enum Mismatch {
    Prologue,
    /// The psk at this position differs.
    Psk(u8),
    /// snow hashes its own protocol name (`Kyber1024`) instead of ours.
    ProtocolName,
}

/// Run a handshake in which the snow side's configuration differs; the first message whose
/// authentication covers the difference must fail on its reader with a decryption error, and
/// nothing before it may fail. Returns the index of the failing message.
fn run_mismatch(name: &str, mismatch: &Mismatch, order: Order) -> Result<usize, String> {
    let s = setup(name);
    let (mut snow_init, mut snow_resp) = (s.init.clone(), s.resp.clone());
    for party in [&mut snow_init, &mut snow_resp] {
        match mismatch {
            Mismatch::Prologue => party.prologue = b"a different prologue".to_vec(),
            Mismatch::Psk(pos) => {
                let slot = party
                    .psks
                    .iter_mut()
                    .find(|(p, _)| p == pos)
                    .ok_or("no such psk")?;
                slot.1 = random32();
            }
            Mismatch::ProtocolName => {}
        }
    }
    let keep_our_name = !matches!(mismatch, Mismatch::ProtocolName);
    let (mut init, mut resp) = build_pair(name, &s, order, &snow_init, &snow_resp, keep_our_name)?;
    let mut buf = vec![0u8; 65535];
    let mut out = vec![0u8; 65535];
    for i in 0..s.params.pattern.message_count() {
        let (w, r) = if i % 2 == 0 {
            (&mut init, &mut resp)
        } else {
            (&mut resp, &mut init)
        };
        let n = w
            .write(b"payload", &mut buf)
            .map_err(|e| format!("{} writing message {i} failed: {e}", w.label()))?;
        match r.read(&buf[..n], &mut out) {
            Ok(_) => {}
            Err(e) if e.is_decryption_failure() => {
                // Our engine refuses any further use of a failed handshake.
                if let Hs::Ours(h) = r {
                    match h.read_message(&buf[..n], &mut out) {
                        Err(Error::ApiMisuse(ApiMisuse::HandshakeFailed)) => {}
                        other => return Err(format!("after failure, a retry gave {other:?}")),
                    }
                }
                return Ok(i);
            }
            Err(e) => return Err(format!("message {i}: unexpected error {e:?}")),
        }
    }
    Err("the handshake completed despite the mismatch".into())
}

#[test]
fn snow_interop_mismatch_fails_with_an_error() {
    // (handshake, mismatch, index of the first message that must fail to authenticate)
    let cases: &[(&str, Mismatch, usize)] = &[
        // NN, XX, NK1, XX1, KK1, IK1: the first message carries no key, so the second fails;
        // with a psk modifier, `e` already mixes a key into the first.
        ("NN", Mismatch::Prologue, 1),
        ("XX", Mismatch::Prologue, 1),
        ("NK1", Mismatch::Prologue, 1),
        ("XX1", Mismatch::Prologue, 1),
        ("KK1", Mismatch::Prologue, 1),
        ("IK1", Mismatch::Prologue, 1),
        ("NK", Mismatch::Prologue, 0),
        ("IK", Mismatch::Prologue, 0),
        ("KK", Mismatch::Prologue, 0),
        ("XXpsk3", Mismatch::Prologue, 0),
        ("NNpsk0", Mismatch::Psk(0), 0),
        ("NNpsk2", Mismatch::Psk(2), 1),
        ("IKpsk1", Mismatch::Psk(1), 0),
        ("IKpsk2", Mismatch::Psk(2), 1),
        ("XXpsk3", Mismatch::Psk(3), 2),
        ("XXpsk0+psk3", Mismatch::Psk(0), 0),
        ("XXpsk0+psk3", Mismatch::Psk(3), 2),
        ("KKpsk0+psk2", Mismatch::Psk(0), 0),
        ("KKpsk0+psk2", Mismatch::Psk(2), 1),
        ("XX1psk3", Mismatch::Psk(3), 2),
        // Hybrid: the prologue, a psk, and the protocol name are all bound.
        ("XXhfs", Mismatch::Prologue, 1),
        ("IKhfs", Mismatch::Prologue, 0),
        ("NNhfs", Mismatch::Prologue, 1),
        ("IKhfs+psk2", Mismatch::Psk(2), 1),
        ("XXhfs", Mismatch::ProtocolName, 1),
        ("IKhfs", Mismatch::ProtocolName, 0),
    ];
    let mut failures = Vec::new();
    let mut checked = 0;
    for (hs, mismatch, expected) in cases {
        for suite in ["AESGCM_SHA256", "ChaChaPoly_BLAKE2s"] {
            let name = name(hs, suite);
            for order in ORDERS {
                checked += 1;
                match run_mismatch(&name, mismatch, order) {
                    Ok(i) if i == *expected => {}
                    Ok(i) => failures.push(format!(
                        "{name} {order:?}: message {i} failed, expected message {expected}"
                    )),
                    Err(why) => failures.push(format!("{name} {order:?}: {why}")),
                }
            }
        }
    }
    let _ = writeln!(
        std::io::stderr().lock(),
        "snow-interop-negative: {} passed, {} failed",
        checked - failures.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(checked, cases.len() * 4);
}
