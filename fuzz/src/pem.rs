//! `tls_pem`: PEM input of the TLS transport (`sessionkey::tls`): certificate chains,
//! private keys and CA files.
//!
//! Input: a mode byte (taken modulo 3), then the mode's own bytes.
//!
//! 0. A u16-prefixed certificate chain, then a private key (mode 0600):
//!    [`CertifiedKey::load`] and [`TlsServer::new`]. A pair that loads is the PEM blocks of
//!    the files (written again as PEM, they load as the same DER); a server that builds
//!    pins the key of the chain's first certificate.
//! 1. A CA file: [`load_certs`] and [`load_roots`]. Certificates read are written again as
//!    PEM and read back the same; roots load only from a file with a certificate.
//! 2. A genuine self-signed pair (`fuzz/fixtures/`, as `--transport tls` makes it) with one (u16
//!    position, non-zero XOR byte) edit in the certificate file or the key file chosen by
//!    a byte: the pair loads as before or is refused; a server never builds with a key
//!    that is not the certificate's (compared as public keys: a key may be spelled
//!    differently).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sessionkey::tls::{
    load_certs, load_roots, spki_pin, CertSource, CertifiedKey, TlsServer, TlsServerOptions,
};
use sessionkey_proto::suite::Suite;

use crate::keyfile::scratch;
use crate::Input;

fn write(name: &str, bytes: &[u8], mode: u32) -> PathBuf {
    let path = scratch().join(name);
    let _ = fs::remove_file(&path);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .and_then(|mut f| f.write_all(bytes))
        .expect("a scratch file");
    path
}

/// `der` as a PEM block with `label`, 64 columns as OpenSSL writes it.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn key_pem(key: &PrivateKeyDer<'_>) -> String {
    let label = match key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    pem(label, key.secret_der())
}

fn chain_pem(chain: &[CertificateDer<'_>]) -> String {
    chain.iter().map(|c| pem("CERTIFICATE", c)).collect()
}

/// Run one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    match input.u8() % 3 {
        0 => {
            let chain = input.prefixed().to_vec();
            pair(&chain, input.rest());
        }
        1 => roots(input.rest()),
        _ => tampered(&mut input),
    }
}

/// Load and serve `chain` and `key`; returns whether a server was built.
fn pair(chain: &[u8], key: &[u8]) -> bool {
    let chain_path = write("chain.pem", chain, 0o644);
    let key_path = write("key.pem", key, 0o600);
    let loaded = CertifiedKey::load(&chain_path, &key_path);
    let server = TlsServer::new(server_options(&chain_path, &key_path));
    let Ok(certified) = loaded else {
        assert!(
            server.is_err(),
            "a server built from a pair that does not load"
        );
        return false;
    };
    assert!(!certified.chain.is_empty(), "a chain without certificates");
    // Written again as PEM, the pair loads as the same DER.
    let chain_again = write(
        "chain-again.pem",
        chain_pem(&certified.chain).as_bytes(),
        0o644,
    );
    let key_again = write("key-again.pem", key_pem(&certified.key).as_bytes(), 0o600);
    let again = CertifiedKey::load(&chain_again, &key_again).expect("a pair written again loads");
    assert_eq!(again.chain, certified.chain);
    assert_eq!(again.key.secret_der(), certified.key.secret_der());
    match server {
        Ok(server) => {
            assert_eq!(
                Some(server.pin()),
                spki_pin(&certified.chain[0]),
                "the server's pin is not its certificate's"
            );
            true
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            false
        }
    }
}

fn server_options(chain: &Path, key: &Path) -> TlsServerOptions {
    let mut opts = TlsServerOptions::new(CertSource::Files {
        chain: chain.to_path_buf(),
        key: key.to_path_buf(),
    });
    // A fixed suite: the default depends on the CPU.
    opts.suite = Suite::Aes256Gcm;
    opts
}

fn roots(bytes: &[u8]) {
    let path = write("ca.pem", bytes, 0o644);
    let certs = load_certs(&path);
    let roots = load_roots(&path);
    match &certs {
        Ok(certs) => {
            let again = write("ca-again.pem", chain_pem(certs).as_bytes(), 0o644);
            assert_eq!(
                load_certs(&again).expect("certificates written again load"),
                *certs
            );
            if certs.is_empty() {
                assert!(roots.is_err(), "roots from a file without certificates");
            }
            // What rustls accepts as anchors came from the file.
            if let Ok(r) = &roots {
                assert!(r.len() <= certs.len());
                assert!(!r.is_empty());
            }
        }
        Err(_) => assert!(roots.is_err(), "roots from a file whose PEM is refused"),
    }
}

/// The genuine pair, PEM: made once by `CertifiedKey::self_signed` (as `--transport tls`
/// makes it) and kept in `fuzz/fixtures/`, so that an edit replays the same way (a pair made
/// per process would put other bytes under the same edit). A throwaway key, for this only.
fn genuine() -> (&'static [u8], &'static [u8]) {
    (
        include_bytes!("../fixtures/self-signed-cert.pem"),
        include_bytes!("../fixtures/self-signed-key.pem"),
    )
}

fn tampered(input: &mut Input<'_>) {
    let (cert, key) = genuine();
    let (mut cert, mut key) = (cert.to_vec(), key.to_vec());
    let in_key = input.u8() & 1 == 1;
    let pos = usize::from(input.u16());
    let xor = input.u8();
    let target = if in_key { &mut key } else { &mut cert };
    if xor != 0 {
        let at = pos % target.len();
        target[at] ^= xor;
    }
    let built = pair(&cert, &key);
    let (genuine_cert, genuine_key) = genuine();
    if built && in_key {
        // The key file changed but a server was built: the key must still be the
        // certificate's. Its encoding may differ (found by this target: the PKCS#8 copy of
        // the public point in X9.62 "hybrid" form, 0x06 or 0x07, instead of uncompressed,
        // 0x04, is the same key), so compare the public keys aws-lc derives.
        assert_eq!(
            public_of(&key),
            public_of(genuine_key),
            "a server was built with a changed private key"
        );
    }
    if built && !in_key {
        let c: Vec<_> = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<_, _>>()
            .expect("it loaded");
        let g: Vec<_> = CertificateDer::pem_slice_iter(genuine_cert)
            .collect::<Result<_, _>>()
            .expect("the genuine certificate");
        // A changed certificate may still build (rustls checks that the key matches the
        // certificate's public key, not the signature of a self-signed certificate), but
        // then its public key is the genuine one.
        if c != g {
            assert_eq!(
                spki_pin(&c[0]),
                spki_pin(&g[0]),
                "a server with another key"
            );
        }
    }
}

/// The SubjectPublicKeyInfo of the PEM private key `pem`, as rustls's aws-lc provider
/// loads it.
fn public_of(pem: &[u8]) -> Option<Vec<u8>> {
    let key = PrivateKeyDer::from_pem_slice(pem).ok()?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).ok()?;
    signing.public_key().map(|spki| spki.as_ref().to_vec())
}

/// Seeds: a self-signed pair as `tunnel --transport tls` makes it, its certificate as a CA
/// file, and edits of the pair.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let (cert, key) = genuine();
    let mut pair = vec![0];
    crate::push_prefixed(&mut pair, cert);
    pair.extend_from_slice(key);
    vec![
        ("pair".into(), pair),
        ("ca".into(), [&[1][..], cert].concat()),
        ("tamper-cert".into(), vec![2, 0, 0, 200, 1]),
        ("tamper-key".into(), vec![2, 1, 0, 100, 1]),
    ]
}
