//! Complete handshakes per second, both sides in one thread, beside two peers in the same run
//! (DESIGN.md, "Performance targets"):
//!
//! - sessionkey IK and XX, classical (`Noise_IK_25519_AESGCM_SHA256`) and hybrid
//!   (`Noise_IKhfs_25519+MLKEM768_AESGCM_SHA256`), through the native `Initiator`/`Responder`;
//! - snow `Noise_IK_25519_ChaChaPoly_BLAKE2s` with its default resolver;
//! - a rustls TLS 1.3 full handshake in memory (aws-lc-rs, X25519MLKEM768 only, and X25519
//!   only for reference), ECDSA P-256 self-signed server certificate, no resumption.
//!
//! Every iteration builds both sides, runs all messages and derives the transport keys; long
//! lived things (static identities, key pairs, TLS configurations, certificates) are made once.
//! Criterion reports elements/s, i.e. handshakes/s. After the criterion groups, `main` runs a
//! short interleaved timing loop of every contender and prints the target ratios, so they come
//! from the same process and machine state:
//!
//! ```text
//! cargo bench -p sessionkey-proto --bench handshake -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! `RATIO_SECS` (default 0.05) sets the time per contender per round of that loop, and
//! `RATIO_ROUNDS` (default 40) the number of rounds; a ratio is the median of the ratios
//! measured inside each round. `NO_RATIOS=1` skips the loop.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use rustls::crypto::{aws_lc_rs as tls_provider, SupportedKxGroup};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig};
use sessionkey_proto::crypto::SystemRandom;
use sessionkey_proto::handshake::{Header, Initiator, Policy, Responder};
use sessionkey_proto::keys::Identity;
use sessionkey_proto::noise::Pattern;
use sessionkey_proto::suite::Suite;

/// Large enough for any message here (an IK hybrid hello is about 1.3 KB).
const BUF_LEN: usize = 4096;

/// One complete handshake per call, both sides, with everything it needs prepared.
type Run = Box<dyn FnMut()>;

struct Contender {
    /// Criterion function name, inside the group.
    group: &'static str,
    name: &'static str,
    run: Run,
}

// ---------------------------------------------------------------------------------------------
// sessionkey

fn sessionkey(pattern: Pattern, hybrid: bool) -> Run {
    let server = Arc::new(Identity::generate(&mut SystemRandom).expect("server identity"));
    let client = Arc::new(Identity::generate(&mut SystemRandom).expect("client identity"));
    let header = Header {
        pattern,
        suite: Suite::Aes256Gcm,
        hybrid,
        psk: false,
    };
    let policy = Policy {
        require_hybrid: false,
        ..Policy::default()
    };
    let server_key = *server.public_key();
    let remote = matches!(pattern, Pattern::IK).then_some(server_key);
    let (mut wire, mut payload) = (vec![0u8; BUF_LEN], vec![0u8; BUF_LEN]);
    let expected = header.noise_params().to_string();

    // Like rustls's ServerConfig, the Responder (policy, identity) serves every handshake;
    // the per-connection state is what `read_hello` builds.
    let responder = Responder::new(policy, Some(server), None);

    let mut once = true;
    Box::new(move || {
        let mut initiator =
            Initiator::new(header, Some(client.clone()), remote, None).expect("initiator");
        let n = initiator.write_hello(&[], &mut wire).expect("hello");
        let (mut accepted, _) = responder
            .read_hello(&wire[..n], &mut payload)
            .expect("read hello");
        let n = accepted.state.write_message(&[], &mut wire).expect("reply");
        initiator
            .read_reply(&wire[..n], &mut payload)
            .expect("read reply");
        if pattern.message_count() == 3 {
            let n = initiator
                .state
                .write_message(&[], &mut wire)
                .expect("msg 3");
            accepted
                .state
                .read_message(&wire[..n], &mut payload)
                .expect("read msg 3");
        }
        if once {
            once = false;
            assert_eq!(initiator.state.params().to_string(), expected);
            assert!(initiator.state.is_finished() && accepted.state.is_finished());
        }
        let client_keys = initiator.state.split().expect("split initiator");
        let server_keys = accepted.state.split().expect("split responder");
        debug_assert_eq!(client_keys.handshake_hash, server_keys.handshake_hash);
        black_box((client_keys, server_keys));
    })
}

// ---------------------------------------------------------------------------------------------
// snow

const SNOW_IK: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";

fn snow_ik() -> Run {
    let params: snow::params::NoiseParams = SNOW_IK.parse().expect("snow params");
    let builder = snow::Builder::new(params.clone());
    let client = builder.generate_keypair().expect("snow keypair");
    let server = builder.generate_keypair().expect("snow keypair");
    let (mut wire, mut payload) = (vec![0u8; BUF_LEN], vec![0u8; BUF_LEN]);

    Box::new(move || {
        let mut initiator = snow::Builder::new(params.clone())
            .local_private_key(&client.private)
            .and_then(|b| b.remote_public_key(&server.public))
            .and_then(snow::Builder::build_initiator)
            .expect("snow initiator");
        let mut responder = snow::Builder::new(params.clone())
            .local_private_key(&server.private)
            .and_then(snow::Builder::build_responder)
            .expect("snow responder");
        let n = initiator.write_message(&[], &mut wire).expect("snow msg 1");
        responder
            .read_message(&wire[..n], &mut payload)
            .expect("snow read 1");
        let n = responder.write_message(&[], &mut wire).expect("snow msg 2");
        initiator
            .read_message(&wire[..n], &mut payload)
            .expect("snow read 2");
        let i = initiator.into_transport_mode().expect("snow transport");
        let r = responder.into_transport_mode().expect("snow transport");
        black_box((i, r));
    })
}

// ---------------------------------------------------------------------------------------------
// rustls

struct Tls {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    name: ServerName<'static>,
}

fn tls_configs(group: &'static dyn SupportedKxGroup) -> Tls {
    let mut provider = tls_provider::default_provider();
    provider.kx_groups = vec![group];
    let provider = Arc::new(provider);

    let signing_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("cert params")
        .self_signed(&signing_key)
        .expect("self-signed cert");
    let cert_der: CertificateDer<'static> = cert.der().clone();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));

    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("server versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key_der)
        .expect("server cert");
    server.send_tls13_tickets = 0;
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});

    let mut roots = RootCertStore::empty();
    roots.add(cert_der).expect("root");
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("client versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.resumption = rustls::client::Resumption::disabled();

    Tls {
        client: Arc::new(client),
        server: Arc::new(server),
        name: ServerName::try_from("localhost").expect("server name"),
    }
}

/// Move everything `from` has to send into `to`, and let `to` process it.
fn transfer(from: &mut Connection, to: &mut Connection, buf: &mut Vec<u8>) {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).expect("write_tls");
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).expect("read_tls");
        to.process_new_packets().expect("TLS handshake");
    }
}

fn rustls_full(group: &'static dyn SupportedKxGroup) -> Run {
    let tls = tls_configs(group);
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut once = true;

    Box::new(move || {
        let mut client = Connection::from(
            ClientConnection::new(tls.client.clone(), tls.name.clone()).expect("client conn"),
        );
        let mut server = Connection::from(
            rustls::ServerConnection::new(tls.server.clone()).expect("server conn"),
        );
        let mut flights = 0;
        while client.is_handshaking() || server.is_handshaking() {
            transfer(&mut client, &mut server, &mut buf);
            transfer(&mut server, &mut client, &mut buf);
            flights += 1;
            assert!(flights < 10, "TLS handshake does not finish");
        }
        if once {
            once = false;
            for conn in [&client, &server] {
                assert_eq!(
                    conn.protocol_version(),
                    Some(rustls::ProtocolVersion::TLSv1_3)
                );
                let kx = conn.negotiated_key_exchange_group().expect("kx group");
                assert_eq!(kx.name(), group.name());
                assert_eq!(
                    conn.handshake_kind(),
                    Some(rustls::HandshakeKind::Full),
                    "not a full handshake"
                );
            }
        }
        black_box((client, server));
    })
}

// ---------------------------------------------------------------------------------------------
// Crypto floors: only the public-key operations of one handshake, both sides, straight through
// aws-lc-rs; for hybrid IK also one with the symmetric work its protocol specifies (HKDF,
// SHA-256, AES-GCM), the fastest it could be with these primitives. Used in the timing loop
// to show how close each handshake gets to its floor.

mod floor {
    use std::hint::black_box;

    use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
    use aws_lc_rs::kem::{DecapsulationKey, EncapsulationKey, ML_KEM_768};
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair};

    use super::Run;

    fn keygen() -> (PrivateKey, Vec<u8>) {
        let private = PrivateKey::generate(&X25519).expect("x25519 keygen");
        let public = private.compute_public_key().expect("x25519 public");
        (private, public.as_ref().to_vec())
    }

    fn agree(private: &PrivateKey, public: &[u8]) {
        agreement::agree(
            private,
            UnparsedPublicKey::new(&X25519, public),
            (),
            |shared| {
                black_box(shared);
                Ok(())
            },
        )
        .expect("x25519 agree");
    }

    /// ML-KEM-768: keygen, the peer parses the key and encapsulates, decapsulation.
    fn kem() {
        let dk = DecapsulationKey::generate(&ML_KEM_768).expect("kem keygen");
        let ek_bytes = dk
            .encapsulation_key()
            .and_then(|k| k.key_bytes())
            .expect("ek");
        let ek = EncapsulationKey::new(&ML_KEM_768, ek_bytes.as_ref()).expect("ek parse");
        let (ct, ss) = ek.encapsulate().expect("encaps");
        black_box((ss, dk.decapsulate(ct).expect("decaps")));
    }

    /// Noise IK (and IKhfs): two ephemeral keygens and eight agreements (es, ss, ee, se on
    /// each side), plus the ML-KEM-768 trio when hybrid. With `ss_cached`, six: the static
    /// identities keep `ss` per peer, so the handshakes measured here, always between the same
    /// two identities, compute it only once.
    pub(super) fn noise_ik(hybrid: bool, ss_cached: bool) -> Run {
        let (si, si_pub) = keygen();
        let (sr, sr_pub) = keygen();
        Box::new(move || {
            let (ei, ei_pub) = keygen();
            agree(&ei, &sr_pub); // es
            agree(&sr, &ei_pub); // es, responder
            if !ss_cached {
                agree(&si, &sr_pub); // ss
                agree(&sr, &si_pub); // ss, responder
            }
            let (er, er_pub) = keygen();
            agree(&er, &ei_pub); // ee
            agree(&er, &si_pub); // se
            agree(&ei, &er_pub); // ee, initiator
            agree(&si, &er_pub); // se, initiator
            if hybrid {
                kem();
            }
        })
    }

    /// The symmetric work Noise_IKhfs_25519+MLKEM768_AESGCM_SHA256 specifies, both sides: per
    /// side the protocol-name hash, nine MixHash (prologue, pre-message, e, e1, s, payload
    /// tag, e, ekem1, payload tag), six HKDF (es, ss, ee, ekem1, se, Split), four AES-256-GCM
    /// keys (es, ss, ee, se; the one after ekem1 is replaced before any use) and five AEAD
    /// operations (1184, 32, 0, 1088 and 0 bytes), each sealed by one side, opened by the
    /// other.
    fn ik_hybrid_symmetric() {
        use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
        use aws_lc_rs::digest::{digest, SHA256};
        use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};

        fn mix_hash(h: &mut [u8; 32], data: &[u8]) {
            let mut buf = [0u8; 32 + 1200];
            buf[..32].copy_from_slice(h);
            buf[32..32 + data.len()].copy_from_slice(data);
            h.copy_from_slice(digest(&SHA256, &buf[..32 + data.len()]).as_ref());
        }
        /// Noise's HKDF with two outputs: RFC 5869, 64 bytes.
        fn hkdf(ck: &mut [u8; 32], ikm: &[u8]) -> [u8; 32] {
            struct Len64;
            impl aws_lc_rs::hkdf::KeyType for Len64 {
                fn len(&self) -> usize {
                    64
                }
            }
            let mut okm = [0u8; 64];
            Salt::new(HKDF_SHA256, ck)
                .extract(ikm)
                .expand(&[], Len64)
                .and_then(|k| k.fill(&mut okm))
                .expect("hkdf");
            ck.copy_from_slice(&okm[..32]);
            okm[32..].try_into().expect("32 bytes")
        }
        let key = |k: &[u8; 32]| LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).expect("key"));
        let nonce = |n: u8| Nonce::assume_unique_for_key([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n]);
        let mut wire = [0u8; 1184 + 16];
        let mut hs = [[0u8; 32]; 2];
        let mut cks = [[0u8; 32]; 2];
        for (h, ck) in hs.iter_mut().zip(&mut cks) {
            h.copy_from_slice(
                digest(&SHA256, b"Noise_IKhfs_25519+MLKEM768_AESGCM_SHA256").as_ref(),
            );
            *ck = *h;
            for len in [8, 32, 32] {
                mix_hash(h, &wire[..len]); // prologue, pre-message, e
            }
        }
        // Per HKDF, in order: the lengths sealed under its key (none: key never built).
        let schedule: [&[usize]; 5] = [&[1184, 32], &[0], &[1088], &[], &[0]];
        for (i, lens) in schedule.into_iter().enumerate() {
            let [k0, k1] = [0, 1].map(|side| hkdf(&mut cks[side], &[7u8; 32]));
            if i == 2 {
                for h in &mut hs {
                    mix_hash(h, &wire[..32]); // message 2's e, before ee
                }
            }
            if lens.is_empty() {
                continue;
            }
            let (seal, open) = (key(&k0), key(&k1));
            for (n, &len) in lens.iter().enumerate() {
                let ad = hs[0];
                let tag = seal
                    .seal_in_place_separate_tag(nonce(n as u8), Aad::from(ad), &mut wire[..len])
                    .expect("seal");
                wire[len..len + 16].copy_from_slice(tag.as_ref());
                open.open_in_place(nonce(n as u8), Aad::from(ad), &mut wire[..len + 16])
                    .expect("open");
                for h in &mut hs {
                    mix_hash(h, &wire[..len + 16]);
                }
            }
        }
        for ck in &mut cks {
            black_box(hkdf(ck, &[])); // Split
        }
        black_box(hs);
    }

    /// The hybrid IK floor with `ss` cached, plus the symmetric work the protocol specifies:
    /// what is left with everything but the primitives removed.
    pub(super) fn noise_ik_hybrid_full() -> Run {
        let mut pk = noise_ik(true, true);
        Box::new(move || {
            pk();
            ik_hybrid_symmetric();
        })
    }

    /// TLS 1.3 full handshake with X25519MLKEM768 and an ECDSA P-256 certificate: two X25519
    /// keygens and two agreements, the ML-KEM-768 trio, one signature (CertificateVerify) and
    /// two verifications: CertificateVerify, and the certificate's own signature, which the
    /// client's webpki checks against the trust anchor (here the same self-signed
    /// certificate).
    pub(super) fn tls_hybrid() -> Run {
        let rng = SystemRandom::new();
        let key =
            EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING).expect("ecdsa key");
        let public = key.public_key().as_ref().to_vec();
        let message = [0x20u8; 130]; // TLS 1.3 CertificateVerify content, about this long
        Box::new(move || {
            let (c, c_pub) = keygen();
            let (s, s_pub) = keygen();
            agree(&s, &c_pub);
            agree(&c, &s_pub);
            kem();
            let sig = key.sign(&rng, &message).expect("sign");
            for _ in 0..2 {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &public)
                    .verify(&message, sig.as_ref())
                    .expect("verify");
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------

const SK_IK_CLASSICAL: &str = "IK classical (Noise_IK_25519_AESGCM_SHA256)";
const SK_IK_HYBRID: &str = "IK hybrid (Noise_IKhfs_25519+MLKEM768_AESGCM_SHA256)";
const SNOW: &str = "IK (Noise_IK_25519_ChaChaPoly_BLAKE2s)";
const TLS_HYBRID: &str = "TLS1.3 full X25519MLKEM768";
const FLOOR_IK: &str = "IK classical, ss cached: 2 X25519 keygen + 6 agree";
const FLOOR_IK_HYBRID: &str = "IK hybrid: the same + ML-KEM keygen, encaps, decaps";
const FLOOR_IK_HYBRID_SS: &str = "IK hybrid, ss cached: 2 keygen + 6 agree + ML-KEM";
const FLOOR_IK_HYBRID_FULL: &str = "IK hybrid, ss cached, + its HKDF, SHA-256, AES-GCM";
const FLOOR_TLS: &str = "TLS hybrid: 2 keygen + 2 agree + ML-KEM + ECDSA sign, 2 verify";

fn contenders() -> Vec<Contender> {
    vec![
        Contender {
            group: "sessionkey",
            name: SK_IK_CLASSICAL,
            run: sessionkey(Pattern::IK, false),
        },
        Contender {
            group: "sessionkey",
            name: SK_IK_HYBRID,
            run: sessionkey(Pattern::IK, true),
        },
        Contender {
            group: "sessionkey",
            name: "XX classical (Noise_XX_25519_AESGCM_SHA256)",
            run: sessionkey(Pattern::XX, false),
        },
        Contender {
            group: "sessionkey",
            name: "XX hybrid (Noise_XXhfs_25519+MLKEM768_AESGCM_SHA256)",
            run: sessionkey(Pattern::XX, true),
        },
        Contender {
            group: "snow",
            name: SNOW,
            run: snow_ik(),
        },
        Contender {
            group: "rustls",
            name: TLS_HYBRID,
            run: rustls_full(tls_provider::kx_group::X25519MLKEM768),
        },
        Contender {
            group: "rustls",
            name: "TLS1.3 full X25519",
            run: rustls_full(tls_provider::kx_group::X25519),
        },
    ]
}

fn criterion_benches(c: &mut Criterion, contenders: &mut [Contender]) {
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    for contender in contenders.iter_mut() {
        let run = &mut contender.run;
        group.bench_function(BenchmarkId::new(contender.group, contender.name), |b| {
            b.iter(&mut *run)
        });
    }
    group.finish();
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Handshakes per second of `run` over about `secs`.
fn rate(run: &mut Run, secs: Duration) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..16 {
            run();
        }
        n += 16;
        let elapsed = start.elapsed();
        if elapsed >= secs {
            return n as f64 / elapsed.as_secs_f64();
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ratios(contenders: &mut [Contender]) {
    let secs = Duration::from_secs_f64(env_or("RATIO_SECS", 0.05));
    let rounds: usize = env_or("RATIO_ROUNDS", 40).max(1);
    let index = |name: &str| {
        contenders
            .iter()
            .position(|c| c.name == name)
            .expect("contender")
    };
    // (label, numerator, denominator, target); no target for the informative floor ratios.
    let pairs = [
        (
            "hybrid-IK / rustls-hybrid",
            SK_IK_HYBRID,
            TLS_HYBRID,
            Some(1.5), // issue 15
        ),
        ("classical-IK / snow-IK", SK_IK_CLASSICAL, SNOW, Some(2.0)),
        (
            "floor hybrid-IK / floor TLS-hybrid",
            FLOOR_IK_HYBRID,
            FLOOR_TLS,
            None,
        ),
        (
            "floor hybrid-IK (ss cached) / floor TLS-hybrid",
            FLOOR_IK_HYBRID_SS,
            FLOOR_TLS,
            None,
        ),
        // The best hybrid-IK / rustls-hybrid ratio possible: all but the primitives removed.
        (
            "floor hybrid-IK (ss cached) / rustls-hybrid",
            FLOOR_IK_HYBRID_SS,
            TLS_HYBRID,
            None,
        ),
        (
            "floor hybrid-IK (ss cached, + symmetric) / rustls-hybrid",
            FLOOR_IK_HYBRID_FULL,
            TLS_HYBRID,
            None,
        ),
        (
            "hybrid-IK / its floor",
            SK_IK_HYBRID,
            FLOOR_IK_HYBRID_SS,
            None,
        ),
        (
            "hybrid-IK / its floor (+ symmetric)",
            SK_IK_HYBRID,
            FLOOR_IK_HYBRID_FULL,
            None,
        ),
        ("classical-IK / its floor", SK_IK_CLASSICAL, FLOOR_IK, None),
        ("rustls-hybrid / its floor", TLS_HYBRID, FLOOR_TLS, None),
    ]
    .map(|(label, a, b, target)| (label, index(a), index(b), target));

    for c in contenders.iter_mut() {
        rate(&mut c.run, Duration::from_millis(100)); // warm up
    }
    // Many short rounds interleave the contenders, in alternating order, so that the load of
    // a shared machine hits them alike; each ratio is taken inside a round, then the median.
    let mut rates = vec![Vec::with_capacity(rounds); contenders.len()];
    for round in 0..rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..contenders.len()).collect()
        } else {
            (0..contenders.len()).rev().collect()
        };
        for i in order {
            let r = rate(&mut contenders[i].run, secs);
            rates[i].push(r);
        }
    }

    println!(
        "\nSame-run timing loop: {rounds} interleaved rounds x {:.2} s per contender \
         (median / best round):",
        secs.as_secs_f64()
    );
    for (c, r) in contenders.iter().zip(&rates) {
        let (med, best) = (median(r.clone()), r.iter().copied().fold(0.0, f64::max));
        println!(
            "  {:<11} {:<60} {:>6.0} / {:>6.0} handshakes/s  ({:>6.1} us median)",
            c.group,
            c.name,
            med,
            best,
            1e6 / med
        );
    }
    for (label, a, b, target) in pairs {
        let paired = median((0..rounds).map(|k| rates[a][k] / rates[b][k]).collect());
        let best = |i: usize| rates[i].iter().copied().fold(0.0, f64::max);
        let target = target.map_or(String::new(), |t| format!("target >= {t}; "));
        println!(
            "ratio {label}: {paired:.2} ({target}median of per-round ratios; \
             best-round ratio {:.2})",
            best(a) / best(b)
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // As criterion does: without `--bench` (e.g. `cargo test --benches`) this is a test run.
    let quick = !args.iter().any(|a| a == "--bench")
        || args
            .iter()
            .any(|a| a == "--test" || a == "--list" || a.starts_with("--profile-time"));
    let mut contenders = contenders();
    let mut criterion = Criterion::default().configure_from_args();
    criterion_benches(&mut criterion, &mut contenders);
    criterion.final_summary();
    if !quick && std::env::var_os("NO_RATIOS").is_none() {
        // Crypto floors join the timing loop only; criterion does not measure them.
        contenders.extend([
            Contender {
                group: "floor",
                name: FLOOR_IK,
                run: floor::noise_ik(false, true),
            },
            Contender {
                group: "floor",
                name: FLOOR_IK_HYBRID,
                run: floor::noise_ik(true, false),
            },
            Contender {
                group: "floor",
                name: FLOOR_IK_HYBRID_SS,
                run: floor::noise_ik(true, true),
            },
            Contender {
                group: "floor",
                name: FLOOR_IK_HYBRID_FULL,
                run: floor::noise_ik_hybrid_full(),
            },
            Contender {
                group: "floor",
                name: FLOOR_TLS,
                run: floor::tls_hybrid(),
            },
        ]);
        ratios(&mut contenders);
    }
}
