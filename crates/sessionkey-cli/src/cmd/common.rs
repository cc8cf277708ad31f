//! What the commands share: error classes for exit codes, and the state directory.
//! Configuration parsing and building live in the library (`sessionkey::config`).

use std::path::PathBuf;

use sessionkey::config::ConfigError;

/// A configuration mistake (exit 78): what is wrong and how to fix it.
pub(crate) fn config_error(msg: impl Into<String>) -> anyhow::Error {
    ConfigError::Invalid(msg.into()).into()
}

/// A usage mistake on the command line (exit 64): what is wrong and what is valid.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

/// An output file or directory that cannot be created (exit 73).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct CannotCreate(pub(crate) String);

static STATE_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Record the global `--state DIR` (called once, before any command runs).
pub(crate) fn set_state_dir(dir: Option<PathBuf>) {
    let dir = dir.unwrap_or_else(|| {
        let data = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("/var/lib"));
        data.join("sessionkey")
    });
    let _ = STATE_DIR.set(dir);
}

/// The state directory: `--state DIR`, `$SESSIONKEY_STATE`, or the user's data directory.
pub(crate) fn state_dir() -> PathBuf {
    STATE_DIR.get().cloned().unwrap_or_else(|| {
        set_state_dir(None);
        STATE_DIR.get().cloned().unwrap_or_default()
    })
}
