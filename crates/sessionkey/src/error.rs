//! Protocol errors as `io::Error`s, keeping the protocol error inside for callers to inspect.

use std::io;

use sessionkey_proto::{Error, PeerMisbehaved};

/// Wrap a protocol error in an `io::Error` of the closest kind.
pub(crate) fn to_io(e: Error) -> io::Error {
    let kind = match &e {
        Error::PeerMisbehaved(PeerMisbehaved::StreamTruncated) => io::ErrorKind::UnexpectedEof,
        Error::PeerMisbehaved(_) => io::ErrorKind::InvalidData,
        Error::Timeout(_) => io::ErrorKind::TimedOut,
        Error::Refused(_) => io::ErrorKind::PermissionDenied,
        Error::ApiMisuse(_) => io::ErrorKind::InvalidInput,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

/// The protocol error inside an `io::Error`, if there is one.
pub fn protocol_error(e: &io::Error) -> Option<&Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<Error>())
}
