//! One subcommand per module, and what they share.

pub(crate) mod common;
pub(crate) mod demo;
pub(crate) mod keygen;
pub(crate) mod pipe;
pub(crate) mod status;
pub(crate) mod tunnel;

use sessionkey::proto::handshake::Refusal;
use sessionkey::proto::Error;
use sessionkey::trust::TrustError;
use sessionkey::tunnel::TunnelError;

/// sysexits(3) classes for an error chain.
pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    const UNAVAILABLE: u8 = 69;
    const SOFTWARE: u8 = 70;
    const PROTOCOL: u8 = 76;
    const NOPERM: u8 = 77;
    const CONFIG: u8 = 78;
    for cause in e.chain() {
        if let Some(t) = cause.downcast_ref::<TrustError>() {
            return match t {
                TrustError::KeyChanged(_) | TrustError::UnknownHost { .. } => NOPERM,
                _ => CONFIG,
            };
        }
        match cause.downcast_ref::<TunnelError>() {
            Some(TunnelError::Unreachable { .. }) => return UNAVAILABLE,
            // Transparent: the TrustError inside is not a separate link of the chain.
            Some(TunnelError::Trust(
                TrustError::KeyChanged(_) | TrustError::UnknownHost { .. },
            )) => return NOPERM,
            Some(TunnelError::Trust(_)) => return CONFIG,
            _ => {}
        }
        let proto = cause.downcast_ref::<Error>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(sessionkey::protocol_error)
        });
        if let Some(p) = proto {
            return match p {
                Error::KeyFile { .. } => CONFIG,
                Error::Refused(Refusal::KeyNotAuthorized) => NOPERM,
                Error::Refused(_) => CONFIG,
                Error::PeerMisbehaved(_) => PROTOCOL,
                Error::Timeout(_) => UNAVAILABLE,
                _ => SOFTWARE,
            };
        }
        if cause.downcast_ref::<common::ConfigError>().is_some() {
            return CONFIG;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
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
