//! Certificate checks beyond the Web PKI: a server pinned by its public key (given, or in
//! a known-peers file), and clients admitted by a CA, by pinned keys, or both.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError};

use super::cert::spki_pin;
use crate::trust::{AuthorizedPeers, KnownPeers, PeerKey, TrustError};

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
    pub(crate) peers: AuthorizedPeers,
    /// Where the pins came from, for the refusal message.
    pub(crate) source: String,
    pub(crate) algorithms: WebPkiSupportedAlgorithms,
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
        let ca_error = match &self.ca {
            Some(ca) => match ca.verify_client_cert(end_entity, intermediates, now) {
                Ok(v) => return Ok(v),
                Err(e) => format!(", and --client-ca refused it ({e})"),
            },
            None => String::new(),
        };
        tracing::warn!(
            "refused client certificate key {}: not in {}{ca_error}; to admit it, add this line:\n  {}",
            presented.fingerprint(),
            self.source,
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
