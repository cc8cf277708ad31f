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

/// sysexits(3) classes for an error chain.
pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    const UNAVAILABLE: u8 = 69;
    const SOFTWARE: u8 = 70;
    const PROTOCOL: u8 = 76;
    const NOPERM: u8 = 77;
    const CONFIG: u8 = 78;
    for cause in e.chain() {
        if cause.downcast_ref::<common::UsageError>().is_some() {
            return USAGE;
        }
        if cause.downcast_ref::<common::CannotCreate>().is_some() {
            return CANTCREAT;
        }
        if let Some(f) = cause.downcast_ref::<FleetError>() {
            return match f {
                FleetError::UnsupportedUrl(_) => USAGE,
                f if f.is_unreachable() => UNAVAILABLE,
                _ => SOFTWARE,
            };
        }
        if let Some(s) = cause.downcast_ref::<StartError>() {
            return match s {
                s if s.is_unavailable() => UNAVAILABLE,
                StartError::Cache(_) => CANTCREAT,
                _ => SOFTWARE,
            };
        }
        if let Some(code) = msg::exit_code(cause) {
            return code;
        }
        if let Some(code) = vpn::exit_code(cause) {
            return code;
        }
        if let Some(VpnError::Tun(t)) = cause.downcast_ref::<VpnError>() {
            return match t {
                TunError::Permission { .. } => NOPERM,
                TunError::NoDevice { .. } => UNAVAILABLE,
                TunError::Busy { .. } => CONFIG,
                _ => SOFTWARE,
            };
        }
        if let Some(t) = cause.downcast_ref::<TrustError>() {
            return match t {
                TrustError::KeyChanged(_)
                | TrustError::UnknownHost { .. }
                | TrustError::PinMismatch { .. } => NOPERM,
                _ => CONFIG,
            };
        }
        match cause.downcast_ref::<TunnelError>() {
            Some(TunnelError::Unreachable { .. }) => return UNAVAILABLE,
            // Transparent: the TrustError inside is not a separate link of the chain.
            Some(TunnelError::Trust(
                TrustError::KeyChanged(_)
                | TrustError::UnknownHost { .. }
                | TrustError::PinMismatch { .. },
            )) => return NOPERM,
            Some(TunnelError::Trust(_)) => return CONFIG,
            Some(TunnelError::PinRejected { .. }) => return NOPERM,
            _ => {}
        }
        let proto = cause.downcast_ref::<Error>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(sessionkey::protocol_error)
        });
        if let Some(p) = proto {
            return match p {
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
            };
        }
        if cause.downcast_ref::<common::ConfigError>().is_some()
            || cause.downcast_ref::<TlsError>().is_some()
        {
            return CONFIG;
        }
        if let Some(tls) = cause
            .downcast_ref::<std::io::Error>()
            .and_then(sessionkey::tls::rustls_error)
        {
            return tls_exit_code(tls);
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if io.kind() == NotFound {
                return NOINPUT;
            }
            if matches!(
                io.kind(),
                ConnectionRefused | ConnectionReset | NotConnected | AddrNotAvailable
            ) {
                return UNAVAILABLE;
            }
        }
    }
    SOFTWARE
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
