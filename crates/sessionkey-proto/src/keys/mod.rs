//! Static identities, secret types, fingerprints and key files.

mod file;
mod fingerprint;
mod identity;
mod secret;

pub use file::{read_private_key, read_public_key, write_keypair};
pub use fingerprint::Fingerprint;
pub use identity::{Identity, PublicKey, PUBLIC_KEY_TYPE};
pub use secret::{Psk, SecretKey};
