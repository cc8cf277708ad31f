//! One subcommand per module.

pub(crate) mod demo;
pub(crate) mod keygen;

use sessionkey_proto::Error;

/// sysexits(3) classes: 78 (EX_CONFIG) for key files and configuration, 70 (EX_SOFTWARE) else.
pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<Error>() {
        Some(Error::KeyFile { .. }) => 78,
        _ => 70,
    }
}
