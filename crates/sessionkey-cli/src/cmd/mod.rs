//! One subcommand per module, and what they share.

pub(crate) mod check;
pub(crate) mod common;
pub(crate) mod demo;
pub(crate) mod keygen;
pub(crate) mod man;
pub(crate) mod msg;
pub(crate) mod peers;
pub(crate) mod pipe;
pub(crate) mod relay;
pub(crate) mod service;
pub(crate) mod status;
pub(crate) mod tunnel;
pub(crate) mod vpn;

use sessionkey::config::ConfigError;
use sessionkey::fleet::gateway::StartError;
use sessionkey::fleet::FleetError;
use sessionkey::proto::handshake::Refusal;
use sessionkey::proto::{Error, KeyFileProblem};
use sessionkey::tls::{rustls, TlsError};
use sessionkey::trust::TrustError;
use sessionkey::tunnel::TunnelError;
use sessionkey::vpn::{TunError, VpnError};

/// Exit status of a usage error (sysexits(3) EX_USAGE).
pub(crate) const USAGE: u8 = 64;
/// Exit status of a missing input file (EX_NOINPUT).
pub(crate) const NOINPUT: u8 = 66;
/// Exit status of an output that cannot be created (EX_CANTCREAT).
pub(crate) const CANTCREAT: u8 = 73;
/// Exit status of an internal error (EX_SOFTWARE): what no class below fits.
const SOFTWARE: u8 = 70;

/// sysexits(3) classes for an error chain.
pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    e.chain().find_map(classify).unwrap_or(SOFTWARE)
}

/// The exit status one link of an error chain decides, if any.
fn classify(cause: &(dyn std::error::Error + 'static)) -> Option<u8> {
    const UNAVAILABLE: u8 = 69;
    const PROTOCOL: u8 = 76;
    const NOPERM: u8 = 77;
    const CONFIG: u8 = 78;
    if let Some(c) = cause.downcast_ref::<ConfigError>() {
        return match c {
            // Transparent: the error it wraps is not a separate link of the chain.
            _ if c.wrapped().is_some() => c.wrapped().and_then(classify),
            ConfigError::Invalid(_) => Some(CONFIG),
            // The I/O error that follows in the chain decides.
            _ => None,
        };
    }
    if cause.downcast_ref::<common::UsageError>().is_some() {
        return Some(USAGE);
    }
    if cause.downcast_ref::<common::CannotCreate>().is_some() {
        return Some(CANTCREAT);
    }
    if let Some(f) = cause.downcast_ref::<FleetError>() {
        return Some(match f {
            FleetError::UnsupportedUrl(_) => USAGE,
            f if f.is_unreachable() => UNAVAILABLE,
            _ => SOFTWARE,
        });
    }
    if let Some(s) = cause.downcast_ref::<StartError>() {
        return Some(match s {
            s if s.is_unavailable() => UNAVAILABLE,
            StartError::Cache(_) => CANTCREAT,
            StartError::TicketKey(_) => CONFIG,
            _ => SOFTWARE,
        });
    }
    if let Some(code) = msg::exit_code(cause) {
        return Some(code);
    }
    if let Some(code) = vpn::exit_code(cause) {
        return Some(code);
    }
    if let Some(VpnError::Tun(t)) = cause.downcast_ref::<VpnError>() {
        return Some(match t {
            TunError::Permission { .. } => NOPERM,
            TunError::NoDevice { .. } => UNAVAILABLE,
            TunError::Busy { .. } => CONFIG,
            _ => SOFTWARE,
        });
    }
    if let Some(t) = cause.downcast_ref::<TrustError>() {
        return Some(match t {
            TrustError::KeyChanged(_)
            | TrustError::UnknownHost { .. }
            | TrustError::PinMismatch { .. } => NOPERM,
            _ => CONFIG,
        });
    }
    match cause.downcast_ref::<TunnelError>() {
        Some(TunnelError::Unreachable { .. }) => return Some(UNAVAILABLE),
        // Transparent: the TrustError inside is not a separate link of the chain.
        Some(TunnelError::Trust(
            TrustError::KeyChanged(_)
            | TrustError::UnknownHost { .. }
            | TrustError::PinMismatch { .. },
        )) => return Some(NOPERM),
        Some(TunnelError::Trust(_)) => return Some(CONFIG),
        Some(TunnelError::PinRejected { .. }) => return Some(NOPERM),
        _ => {}
    }
    let proto = cause.downcast_ref::<Error>().or_else(|| {
        cause
            .downcast_ref::<std::io::Error>()
            .and_then(sessionkey::protocol_error)
    });
    if let Some(p) = proto {
        return Some(match p {
            Error::KeyFile {
                problem: KeyFileProblem::Io(io),
                ..
            } if io.kind() == std::io::ErrorKind::NotFound => NOINPUT,
            Error::KeyFile {
                problem: KeyFileProblem::Exists,
                ..
            } => CANTCREAT,
            Error::KeyFile { .. } => CONFIG,
            Error::Refused(Refusal::KeyNotAuthorized | Refusal::UndecryptableHello) => NOPERM,
            Error::PeerKeyRejected(_) => NOPERM,
            Error::Refused(_) => CONFIG,
            Error::PeerMisbehaved(_) => PROTOCOL,
            Error::Timeout(_) => UNAVAILABLE,
            _ => SOFTWARE,
        });
    }
    if cause.downcast_ref::<TlsError>().is_some() {
        return Some(CONFIG);
    }
    if let Some(tls) = cause
        .downcast_ref::<std::io::Error>()
        .and_then(sessionkey::tls::rustls_error)
    {
        return Some(tls_exit_code(tls));
    }
    if let Some(io) = cause.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind::*;
        if io.kind() == NotFound {
            return Some(NOINPUT);
        }
        // The peer is gone. A peer that dies mid-transfer resets the connection, and which
        // of our calls sees the reset first (a read: ConnectionReset, a write after it:
        // BrokenPipe) is a race: both mean the same to the user.
        if matches!(
            io.kind(),
            ConnectionRefused
                | ConnectionReset
                | ConnectionAborted
                | BrokenPipe
                | NotConnected
                | AddrNotAvailable
        ) {
            return Some(UNAVAILABLE);
        }
    }
    None
}

/// A TLS failure: refused certificates (either way) are permission errors, the rest
/// protocol errors.
fn tls_exit_code(e: &rustls::Error) -> u8 {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::AlertReceived(
            A::CertificateRequired
            | A::AccessDenied
            | A::BadCertificate
            | A::CertificateUnknown
            | A::UnknownCA,
        ) => 77,
        _ => 76,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gone_mid_transfer_is_unavailable_whichever_call_saw_it() {
        use std::io::ErrorKind::*;
        for kind in [ConnectionReset, BrokenPipe, ConnectionAborted] {
            let e = anyhow::Error::new(std::io::Error::from(kind))
                .context("the session from the peer failed");
            assert_eq!(exit_code(&e), 69, "{kind:?}");
        }
    }
}
