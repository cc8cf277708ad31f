//! ML-KEM-768 (FIPS 203) through aws-lc-rs.
//!
//! aws-lc-rs draws ML-KEM randomness from its own generator; it offers no seeded key
//! generation or encapsulation, so hybrid handshakes cannot be replayed from fixed inputs.

use aws_lc_rs::kem::{Ciphertext, DecapsulationKey, EncapsulationKey, ML_KEM_768};
use zeroize::Zeroizing;

use crate::error::PeerMisbehaved;
use crate::Error;

/// Length of an ML-KEM-768 encapsulation (public) key.
pub(crate) const PUBLIC_LEN: usize = 1184;
/// Length of an ML-KEM-768 ciphertext.
pub(crate) const CIPHERTEXT_LEN: usize = 1088;
/// Length of the ML-KEM shared secret.
pub(crate) const SECRET_LEN: usize = 32;
/// Length of an expanded ML-KEM-768 decapsulation (private) key, FIPS 203 table 3.
pub(crate) const DECAPSULATION_LEN: usize = 2400;

/// An ephemeral ML-KEM-768 key pair. aws-lc frees (and cleanses) the secret key on drop.
pub(crate) struct KemKeyPair {
    secret: DecapsulationKey,
    public: [u8; PUBLIC_LEN],
}

impl KemKeyPair {
    pub(crate) fn generate() -> Result<Self, Error> {
        let secret = DecapsulationKey::generate(&ML_KEM_768)?;
        let bytes = secret.encapsulation_key()?.key_bytes()?;
        let public = bytes
            .as_ref()
            .try_into()
            .map_err(|_| Error::Crypto("ML-KEM-768 public key of wrong length"))?;
        Ok(Self { secret, public })
    }

    pub(crate) fn public(&self) -> &[u8; PUBLIC_LEN] {
        &self.public
    }

    /// Decapsulate. A well-formed but altered ciphertext yields an unrelated secret (implicit
    /// rejection, FIPS 203 6.3), which then fails the next authentication tag.
    pub(crate) fn decapsulate(
        &self,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<[u8; SECRET_LEN]>, Error> {
        decapsulate_with(&self.secret, ciphertext)
    }
}

/// A new ML-KEM-768 decapsulation key and its encapsulation key's bytes.
pub(crate) fn generate_decapsulation_key() -> Result<(DecapsulationKey, [u8; PUBLIC_LEN]), Error> {
    let pair = KemKeyPair::generate()?;
    Ok((pair.secret, pair.public))
}

/// The expanded (2400-byte) form of a decapsulation key, for storing it.
pub(crate) fn decapsulation_key_bytes(
    secret: &DecapsulationKey,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let bytes = secret.key_bytes()?;
    Ok(Zeroizing::new(bytes.as_ref().to_vec()))
}

/// Rebuild a decapsulation key from its expanded form and its encapsulation key. FIPS 203
/// embeds ek in dk (bytes 1152..2336, followed by H(ek)); both are checked, so a stored key
/// that was corrupted or paired with the wrong public key is refused here.
pub(crate) fn decapsulation_key_from_bytes(
    dk: &[u8],
    ek: &[u8; PUBLIC_LEN],
) -> Result<DecapsulationKey, Error> {
    const EK_AT: usize = 1152;
    if dk.len() != DECAPSULATION_LEN
        || dk[EK_AT..EK_AT + PUBLIC_LEN] != ek[..]
        || dk[EK_AT + PUBLIC_LEN..EK_AT + PUBLIC_LEN + 32] != sha3_256(ek)[..]
    {
        return Err(Error::Crypto("ML-KEM-768 decapsulation key inconsistent"));
    }
    DecapsulationKey::new(&ML_KEM_768, dk)
        .map_err(|_| Error::Crypto("ML-KEM-768 decapsulation key rejected"))
}

fn sha3_256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA3_256, data);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

pub(crate) fn decapsulate_with(
    secret: &DecapsulationKey,
    ciphertext: &[u8],
) -> Result<Zeroizing<[u8; SECRET_LEN]>, Error> {
    if ciphertext.len() != CIPHERTEXT_LEN {
        return Err(PeerMisbehaved::InvalidKemCiphertext.into());
    }
    let ss = secret
        .decapsulate(Ciphertext::from(ciphertext))
        .map_err(|_| Error::from(PeerMisbehaved::InvalidKemCiphertext))?;
    let mut out = Zeroizing::new([0; SECRET_LEN]);
    out.copy_from_slice(ss.as_ref());
    Ok(out)
}

/// Check an encapsulation key: its length, and the FIPS 203 section 7.2 modulus check.
///
/// aws-lc applies the modulus check only inside encapsulation; checking here as well makes a
/// bad key fail when it is read, before any work is done for it.
pub(crate) fn parse_public(public: &[u8]) -> Result<EncapsulationKey, Error> {
    if public.len() != PUBLIC_LEN || !coefficients_reduced(&public[..PUBLIC_LEN - 32]) {
        return Err(PeerMisbehaved::InvalidKemPublicKey.into());
    }
    EncapsulationKey::new(&ML_KEM_768, public)
        .map_err(|_| PeerMisbehaved::InvalidKemPublicKey.into())
}

/// The modulus check: ByteDecode_12 of the encoded vector yields only values below q = 3329,
/// i.e. re-encoding would give the same bytes. Each 3 bytes hold two 12-bit coefficients.
fn coefficients_reduced(encoded: &[u8]) -> bool {
    const Q: u16 = 3329;
    encoded.chunks_exact(3).all(|b| {
        let (b0, b1, b2) = (u16::from(b[0]), u16::from(b[1]), u16::from(b[2]));
        let c0 = b0 | (b1 & 0x0f) << 8;
        let c1 = b1 >> 4 | b2 << 4;
        c0 < Q && c1 < Q
    })
}

/// Encapsulate to a checked encapsulation key: returns (ciphertext, shared secret).
pub(crate) fn encapsulate(
    public: &EncapsulationKey,
) -> Result<([u8; CIPHERTEXT_LEN], Zeroizing<[u8; SECRET_LEN]>), Error> {
    let (ct, ss) = public
        .encapsulate()
        .map_err(|_| Error::from(PeerMisbehaved::InvalidKemPublicKey))?;
    let mut ciphertext = [0; CIPHERTEXT_LEN];
    ciphertext.copy_from_slice(ct.as_ref());
    let mut secret = Zeroizing::new([0; SECRET_LEN]);
    secret.copy_from_slice(ss.as_ref());
    Ok((ciphertext, secret))
}
