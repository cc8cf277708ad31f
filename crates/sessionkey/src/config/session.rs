//! Session options shared by every command and table that opens sessions: the suite by
//! name, hybrid or classical, the pre-shared key, the key-update interval.

use std::path::{Path, PathBuf};

use sessionkey_proto::session::SessionConfig;
use sessionkey_proto::suite::Suite;

use super::{invalid, rebase, ConfigError};

/// Session options common to every command that opens sessions (flattened into each
/// command's flags and each `[[tunnel]]` table).
#[derive(Debug, Clone, serde::Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct SessionOpts {
    /// Record cipher suite (default: AES-256-GCM with hardware AES, else ChaCha20-Poly1305).
    #[cfg_attr(feature = "clap", arg(long, value_parser = parse_suite))]
    #[serde(default, deserialize_with = "de_suite")]
    pub suite: Option<Suite>,
    /// Classical X25519 only, no ML-KEM-768 (on a server: also accept classical clients).
    #[cfg_attr(feature = "clap", arg(long))]
    #[serde(default)]
    pub classic: bool,
    /// A pre-shared key file (32 random bytes in base64, mode 0600), mixed into every handshake;
    /// both sides need the same one. Make one with: (umask 077; head -c 32 /dev/urandom | base64 > FILE)
    #[cfg_attr(feature = "clap", arg(long, value_name = "FILE"))]
    #[serde(default)]
    pub psk: Option<PathBuf>,
    /// Update the sending key after this many bytes (default 1 GiB; at least one 16 KiB
    /// record). Native sessions ratchet; TLS sessions send a TLS 1.3 KeyUpdate.
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(16384..))
    )]
    #[serde(default)]
    pub key_update_bytes: Option<u64>,
    /// INSECURE: session records under DES or 3DES (CBC, HMAC-SHA256), for a peer that has
    /// nothing better. Both sides must name it; a server then also accepts it beside the
    /// modern suites. The handshake stays hybrid and AES-256-GCM; keys rotate every 4 MiB
    /// (half the 2^20-block cap). DES falls to exhaustive key search.
    #[cfg(feature = "legacy-ciphers")]
    #[cfg_attr(
        feature = "clap",
        arg(long, value_name = "des|3des", value_parser = parse_legacy)
    )]
    #[serde(skip)]
    pub insecure_legacy_cipher: Option<Suite>,
}

/// A legacy suite by name (`des` or `3des`).
#[cfg(feature = "legacy-ciphers")]
pub fn parse_legacy(s: &str) -> Result<Suite, String> {
    use sessionkey_proto::crypto::legacy::{InsecureLegacyCipher, LegacySuite};
    let suite = match s {
        "des" => LegacySuite::DesCbcHmacSha256,
        "3des" => LegacySuite::TripleDesEdeCbcHmacSha256,
        _ => return Err(format!("unknown legacy cipher {s:?}; choose des or 3des")),
    };
    Ok(Suite::insecure_legacy(
        suite,
        InsecureLegacyCipher::i_accept_that_des_and_3des_are_broken(),
    ))
}

/// A suite by name; an unknown name is an error listing the valid ones.
pub fn parse_suite(s: &str) -> Result<Suite, String> {
    Suite::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = Suite::ALL.iter().map(|s| s.name()).collect();
        format!("unknown suite {s:?}; choose one of: {}", names.join(", "))
    })
}

fn de_suite<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Suite>, D::Error> {
    let s: Option<String> = serde::Deserialize::deserialize(d)?;
    s.map(|s| parse_suite(&s).map_err(serde::de::Error::custom))
        .transpose()
}

impl SessionOpts {
    /// The record suite: the legacy one if chosen, else the named one, else the best for
    /// this CPU.
    pub fn suite(&self) -> Suite {
        if let Some(legacy) = self.legacy() {
            return legacy;
        }
        self.suite.unwrap_or_else(Suite::default_for_this_cpu)
    }

    /// The legacy suite chosen with `--insecure-legacy-cipher`.
    pub fn legacy(&self) -> Option<Suite> {
        #[cfg(feature = "legacy-ciphers")]
        return self.insecure_legacy_cipher;
        #[cfg(not(feature = "legacy-ciphers"))]
        None
    }

    /// The legacy suite for a native session, with the warning it deserves; an error for
    /// TLS, which has no such suite.
    pub fn legacy_for(&self, native: bool) -> Result<Option<Suite>, ConfigError> {
        let Some(suite) = self.legacy() else {
            return Ok(None);
        };
        if !native {
            return Err(invalid(
                "--insecure-legacy-cipher is for the native transport: TLS 1.3 has no DES or 3DES",
            ));
        }
        tracing::warn!(
            suite = %suite,
            "--insecure-legacy-cipher: session records use a broken 64-bit block cipher \
             (Sweet32; DES also falls to key search); only for a peer with nothing better"
        );
        Ok(Some(suite))
    }

    /// The pre-shared key, read from its file.
    pub fn psk(&self) -> Result<Option<[u8; 32]>, ConfigError> {
        self.psk.as_deref().map(crate::psk::read).transpose()
    }

    /// The rotation policy: the defaults, with what the options change.
    pub fn session_config(&self) -> SessionConfig {
        let mut config = SessionConfig::default();
        if let Some(bytes) = self.key_update_bytes {
            config.key_update_bytes = bytes;
        }
        config
    }

    /// Relative paths (the pre-shared key) against `base`, a configuration file's directory.
    pub fn rebase(&mut self, base: &Path) {
        rebase(&mut self.psk, base);
    }
}
