//! Certificates: PEM files the user gives, or a self-signed pair made on first start and
//! kept, and the public-key pins that name them.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;
use crate::trust::PeerKey;

/// A certificate chain and its private key.
#[derive(Debug)]
pub struct CertifiedKey {
    /// End-entity certificate first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The end-entity certificate's private key.
    pub key: PrivateKeyDer<'static>,
}

impl CertifiedKey {
    /// Load a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1). The key
    /// file must not be readable by group or others.
    pub fn load(chain: &Path, key: &Path) -> Result<Self, TlsError> {
        let certs = CertificateDer::pem_file_iter(chain)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError::Pem {
                path: chain.to_path_buf(),
                why: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::Pem {
                path: chain.to_path_buf(),
                why: "no CERTIFICATE block in the file".into(),
            });
        }
        check_private(key)?;
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
            path: key.to_path_buf(),
            why: format!("{e} (expected a PEM private key)"),
        })?;
        Ok(Self {
            chain: certs,
            key: key_der,
        })
    }

    /// The self-signed pair kept in `dir` (`tls-cert.pem`, `tls-key.pem`), made on first use
    /// for the names `localhost`, `127.0.0.1`, `::1` and `extra_names`. Returns whether it was
    /// just made.
    pub fn self_signed(dir: &Path, extra_names: &[String]) -> Result<(Self, bool), TlsError> {
        let (cert_path, key_path) = self_signed_paths(dir);
        if cert_path.exists() && key_path.exists() {
            return Ok((Self::load(&cert_path, &key_path)?, false));
        }
        let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .into_iter()
            .map(String::from)
            .collect();
        names.extend(extra_names.iter().cloned());
        let make = || -> Result<_, rcgen::Error> {
            let mut params = rcgen::CertificateParams::new(names)?;
            params.distinguished_name = rcgen::DistinguishedName::new();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "sessionkey self-signed");
            let key = rcgen::KeyPair::generate()?;
            Ok((params.self_signed(&key)?, key))
        };
        let (cert, signing_key) = make()
            .map_err(|e| TlsError::Config(format!("cannot make a self-signed certificate: {e}")))?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TlsError::Io { path, source }
        };
        create_private_dir(dir).map_err(io(dir))?;
        write_private(&key_path, signing_key.serialize_pem().as_bytes()).map_err(io(&key_path))?;
        std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
        Ok((Self::load(&cert_path, &key_path)?, true))
    }

    /// The pin of the end-entity certificate's public key.
    pub fn pin(&self) -> Result<PeerKey, TlsError> {
        spki_pin(&self.chain[0])
            .ok_or_else(|| TlsError::Config("the certificate cannot be parsed".into()))
    }
}

/// Where [`CertifiedKey::self_signed`] keeps its pair.
pub fn self_signed_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("tls-cert.pem"), dir.join("tls-key.pem"))
}

/// The SHA-256 of a certificate's SubjectPublicKeyInfo, or `None` if it does not parse.
pub fn spki_pin(cert: &CertificateDer<'_>) -> Option<PeerKey> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki.as_ref());
    digest.as_ref().try_into().ok().map(PeerKey::TlsSpki)
}

/// Every certificate of a PEM file, as written.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            why: e.to_string(),
        })
}

/// Load every certificate of a PEM file as trust anchors.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let certs = load_certs(path)?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            why: "no usable CA certificate in the file".into(),
        });
    }
    Ok(roots)
}

/// The operating system's trust anchors (rustls-native-certs: /etc/ssl/certs and friends).
pub fn system_roots() -> Result<rustls::RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(TlsError::Config(
            "no system CA certificates were found (install ca-certificates); or give --ca FILE, \
             or pin the server with --server-key / --known-peers"
                .into(),
        ));
    }
    Ok(roots)
}

fn check_private(path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(TlsError::Config(format!(
            "private key {} is readable by group or others; fix it with: chmod 600 {}",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
