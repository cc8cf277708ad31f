//! Certificate checks beyond the Web PKI: a server pinned by its public key (given, or in
//! a known-peers file), and clients admitted by a CA, by pinned keys, or both.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError};

use super::cert::spki_pin;
use crate::trust::{KnownPeers, LivePeers, PeerKey, TrustError};

/// How a pinning client recognises its server.
#[derive(Debug)]
pub(crate) enum Pin {
    /// Exactly this key.
    Key(PeerKey),
    /// The key on record for the host; an unknown key passes here only when it may be
    /// learned, and is written to the file after the handshake proves it.
    Known {
        file: Arc<KnownPeers>,
        host: String,
        accept_new: bool,
    },
    /// Any key (`--insecure-anonymous`).
    Any,
}

fn other(e: TrustError) -> Error {
    Error::Other(OtherError(Arc::new(e)))
}

fn bad_encoding() -> Error {
    Error::InvalidCertificate(CertificateError::BadEncoding)
}

/// Checks the server's certificate by its public key instead of a CA, then its handshake
/// signature as usual.
#[derive(Debug)]
pub(crate) struct PinnedServer {
    pub(crate) pin: Pin,
    pub(crate) algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let presented = spki_pin(end_entity).ok_or_else(bad_encoding)?;
        match &self.pin {
            Pin::Key(pinned) if *pinned == presented => {}
            Pin::Key(pinned) => {
                return Err(other(TrustError::PinMismatch {
                    pinned: pinned.fingerprint().to_string(),
                    presented: presented.fingerprint().to_string(),
                    line: presented.to_line(""),
                }))
            }
            Pin::Known {
                file,
                host,
                accept_new,
            } => match file.verify_only(host, &presented) {
                Ok(()) => {}
                Err(TrustError::UnknownHost { .. }) if *accept_new => {}
                Err(e) => return Err(other(e)),
            },
            Pin::Any => {}
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // Only TLS 1.3 is configured; a TLS 1.2 signature here would be a rustls bug.
        Err(Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Mutual TLS: a client certificate is required, and admitted if its key is in the
/// authorized-peers file or it chains to the `--client-ca`.
#[derive(Debug)]
pub(crate) struct ClientAuth {
    pub(crate) ca: Option<Arc<dyn ClientCertVerifier>>,
    pub(crate) peers: LivePeers,
    /// Where the pins came from, for the refusal message.
    pub(crate) source: String,
    pub(crate) algorithms: WebPkiSupportedAlgorithms,
    /// Refusals logged in full: a few per interval (a client chooses its certificate).
    pub(crate) log_budget: crate::admission::LogBudget,
}

impl ClientCertVerifier for ClientAuth {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.ca.as_ref().map_or(&[], |ca| ca.root_hint_subjects())
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let presented = spki_pin(end_entity).ok_or_else(bad_encoding)?;
        if self.peers.contains(&presented) {
            return Ok(ClientCertVerified::assertion());
        }
        let mut why = Vec::new();
        if !self.peers.is_empty() {
            why.push(format!("not in {}", self.source));
        }
        if let Some(ca) = &self.ca {
            match ca.verify_client_cert(end_entity, intermediates, now) {
                Ok(v) => return Ok(v),
                Err(e) => why.push(format!("--client-ca refused it: {}", client_cert_words(&e))),
            }
        }
        if !self.log_budget.allow() {
            return Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        tracing::warn!(
            "refused client certificate key {}: {}; to admit it, add this line:\n  {}",
            presented.fingerprint(),
            why.join(", and "),
            presented.to_line("")
        );
        Err(Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Checks the server's certificate against CA certificates (the system's, or a `--ca`
/// file) with webpki, and renders each refusal in words with the fix.
///
/// One addition to webpki, as OpenSSL, Go and stunnel have it: a certificate that is
/// byte for byte one of the trusted certificates (a self-signed certificate used as its own
/// trust anchor, which `openssl req -x509` marks `CA:TRUE`) is accepted as the end entity.
/// webpki has then already checked its dates (it checks them before the CA flag it
/// refuses); the name is not checked, as the certificate itself is what the user trusts,
/// like a pin, and the handshake signature proves the server holds its key.
#[derive(Debug)]
pub(crate) struct CaServer {
    pub(crate) inner: Arc<rustls::client::WebPkiServerVerifier>,
    /// The trusted certificates, as given (empty for the system's).
    pub(crate) anchors: Vec<CertificateDer<'static>>,
    /// Where they came from, for messages: `--ca FILE` or "the system's CA certificates".
    pub(crate) source: String,
}

impl ServerCertVerifier for CaServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(v) => Ok(v),
            Err(Error::InvalidCertificate(CertificateError::Other(o)))
                if self.is_anchor(end_entity) && is_ca_used_as_end_entity(&o) =>
            {
                Ok(ServerCertVerified::assertion())
            }
            Err(Error::InvalidCertificate(e)) => {
                let problem = CertProblem::new(&e, end_entity, server_name, &self.source);
                Err(Error::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(problem)),
                )))
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl CaServer {
    fn is_anchor(&self, cert: &CertificateDer<'_>) -> bool {
        self.anchors.iter().any(|a| a.as_ref() == cert.as_ref())
    }
}

fn is_ca_used_as_end_entity(o: &OtherError) -> bool {
    matches!(
        o.0.downcast_ref::<webpki::Error>(),
        Some(webpki::Error::CaUsedAsEndEntity)
    )
}

/// A server certificate refused, in words, with what to do.
#[derive(Debug, Clone)]
pub struct CertProblem {
    /// What webpki found.
    pub error: CertificateError,
    text: String,
}

impl std::fmt::Display for CertProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for CertProblem {}

impl CertProblem {
    fn new(
        error: &CertificateError,
        cert: &CertificateDer<'_>,
        asked: &ServerName<'_>,
        source: &str,
    ) -> Self {
        let pin = spki_pin(cert)
            .map(|p| p.to_line(""))
            .unwrap_or_else(|| "(the certificate's key could not be read)".into());
        let pin_it = format!(
            "if you trust this server, pin its key with --server-key '{pin}' (or learn it with \
             --known-peers FILE --accept-new)"
        );
        let asked = match asked {
            ServerName::DnsName(d) => d.as_ref().to_string(),
            ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
            _ => "?".into(),
        };
        let text = match error {
            CertificateError::Expired => {
                format!("the server's certificate has expired; renew it, or {pin_it}")
            }
            CertificateError::ExpiredContext { time, not_after } => format!(
                "the server's certificate expired on {} (it is now {}); renew it on the server \
                 (or check this machine's clock)",
                utc(not_after.as_secs()),
                utc(time.as_secs())
            ),
            CertificateError::NotValidYet => {
                format!("the server's certificate is not valid yet; check the clocks, or {pin_it}")
            }
            CertificateError::NotValidYetContext { time, not_before } => format!(
                "the server's certificate is valid only from {} (it is now {}); check this \
                 machine's clock and the server's",
                utc(not_before.as_secs()),
                utc(time.as_secs())
            ),
            CertificateError::NotValidForName => format!(
                "the server's certificate is not valid for the name {asked:?}; give the name it \
                 is for with --sni NAME"
            ),
            CertificateError::NotValidForNameContext { presented, .. } => format!(
                "the server's certificate is for {}, not for {asked:?}, the name asked for; \
                 give one of its names with --sni NAME",
                if presented.is_empty() {
                    "no name (it has no subjectAltName)".to_string()
                } else {
                    presented
                        .iter()
                        .map(|n| plain_name(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "the server's certificate (key {}) is not signed by a CA in {source}; give its \
                 CA with --ca FILE, or {pin_it}",
                spki_pin(cert).map_or_else(|| "?".into(), |p| p.fingerprint().to_string())
            ),
            CertificateError::Other(o) if is_ca_used_as_end_entity(o) => format!(
                "the server's certificate is a CA certificate (basicConstraints CA:TRUE) but not \
                 one of those in {source}; give that very certificate with --ca FILE, or {pin_it}"
            ),
            CertificateError::Revoked => "the server's certificate has been revoked".into(),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "the server's certificate is not for TLS servers (its extended key usage lacks \
                 serverAuth); issue one that is"
                    .into()
            }
            CertificateError::BadEncoding => "the server's certificate could not be parsed".into(),
            other => format!("the server's certificate was refused ({other}); {pin_it}"),
        };
        Self {
            error: error.clone(),
            text,
        }
    }
}

/// Why `--client-ca` refused a client certificate, in words.
fn client_cert_words(e: &Error) -> String {
    match e {
        Error::InvalidCertificate(CertificateError::ExpiredContext { time, not_after }) => format!(
            "it expired on {} (it is now {})",
            utc(not_after.as_secs()),
            utc(time.as_secs())
        ),
        Error::InvalidCertificate(CertificateError::NotValidYetContext { time, not_before }) => {
            format!(
                "it is valid only from {} (it is now {})",
                utc(not_before.as_secs()),
                utc(time.as_secs())
            )
        }
        Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => "it is not signed by a CA in --client-ca".into(),
        Error::InvalidCertificate(CertificateError::Other(o)) if is_ca_used_as_end_entity(o) => {
            "it is a CA certificate (basicConstraints CA:TRUE), not a client certificate".into()
        }
        Error::InvalidCertificate(CertificateError::InvalidPurpose)
        | Error::InvalidCertificate(CertificateError::InvalidPurposeContext { .. }) => {
            "its extended key usage lacks clientAuth".into()
        }
        other => other.to_string(),
    }
}

/// A subject alternative name as webpki shows it (`DnsName("a.example")`,
/// `IpAddress(192.0.2.1)`), as people write it.
fn plain_name(shown: &str) -> String {
    shown
        .strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
        .or_else(|| {
            shown
                .strip_prefix("IpAddress(")
                .and_then(|n| n.strip_suffix(')'))
        })
        .unwrap_or(shown)
        .to_string()
}

/// Seconds since 1970 as `YYYY-MM-DD HH:MM:SS UTC` (the civil-from-days algorithm of
/// Howard Hinnant's date library).
pub(crate) fn utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::{plain_name, utc};

    #[test]
    fn names_as_people_write_them() {
        assert_eq!(plain_name("DnsName(\"localhost\")"), "localhost");
        assert_eq!(plain_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(plain_name("DirectoryName"), "DirectoryName");
    }

    #[test]
    fn dates_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_798_761_599), "2026-12-31 23:59:59 UTC");
    }
}
