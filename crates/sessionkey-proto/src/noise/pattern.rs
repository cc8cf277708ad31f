//! Handshake patterns as data, their modifiers, and protocol names (Noise sections 7-9, 8.1
//! of the name grammar; HFS extension section 5).

use std::fmt;
use std::str::FromStr;

use crate::crypto::hash::HashChoice;
use crate::error::ApiMisuse;

/// A base handshake pattern (Noise section 7.4-7.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Pattern {
    /// No static keys: anonymous both ways. `-> e` / `<- e, ee`.
    NN,
    /// Responder's static key known in advance; initiator anonymous.
    NK,
    /// Static keys exchanged (encrypted) during the handshake.
    XX,
    /// Responder's static key known; initiator's sent in the first message. One round trip.
    IK,
    /// Both static keys known in advance.
    KK,
    /// NK with the responder's authentication deferred to the second message (section 7.6).
    NK1,
    /// XX with both authentications deferred by one message (section 7.6).
    XX1,
    /// KK with deferred authentication (section 7.6).
    KK1,
    /// IK with deferred authentication (section 7.6).
    IK1,
}

/// A token of a message pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token {
    E,
    S,
    Ee,
    Es,
    Se,
    Ss,
    Psk,
    /// HFS: the sender's ephemeral KEM public key.
    E1,
    /// HFS: a KEM ciphertext to the peer's `e1`, whose shared secret is mixed into the key.
    Ekem1,
}

impl Token {
    fn is_dh(self) -> bool {
        matches!(self, Self::Ee | Self::Es | Self::Se | Self::Ss)
    }
}

const MAX_TOKENS: usize = 10;

/// The tokens of one handshake message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessagePattern {
    tokens: [Token; MAX_TOKENS],
    len: usize,
}

impl MessagePattern {
    fn new(tokens: &[Token]) -> Self {
        let mut m = Self {
            tokens: [Token::E; MAX_TOKENS],
            len: tokens.len(),
        };
        m.tokens[..tokens.len()].copy_from_slice(tokens);
        m
    }

    pub(crate) fn tokens(&self) -> &[Token] {
        &self.tokens[..self.len]
    }

    fn insert(&mut self, at: usize, token: Token) {
        self.tokens.copy_within(at..self.len, at + 1);
        self.tokens[at] = token;
        self.len += 1;
    }
}

impl Pattern {
    /// Every supported pattern.
    pub const ALL: [Self; 9] = [
        Self::NN,
        Self::NK,
        Self::XX,
        Self::IK,
        Self::KK,
        Self::NK1,
        Self::XX1,
        Self::KK1,
        Self::IK1,
    ];

    /// The pattern's name, e.g. `IK`.
    pub fn name(self) -> &'static str {
        match self {
            Self::NN => "NN",
            Self::NK => "NK",
            Self::XX => "XX",
            Self::IK => "IK",
            Self::KK => "KK",
            Self::NK1 => "NK1",
            Self::XX1 => "XX1",
            Self::KK1 => "KK1",
            Self::IK1 => "IK1",
        }
    }

    /// Whether the initiator's static key is a pre-message (known to the responder).
    pub fn initiator_premessage(self) -> bool {
        matches!(self, Self::KK | Self::KK1)
    }

    /// Whether the responder's static key is a pre-message (known to the initiator).
    pub fn responder_premessage(self) -> bool {
        matches!(
            self,
            Self::NK | Self::IK | Self::KK | Self::NK1 | Self::IK1 | Self::KK1
        )
    }

    /// Whether the initiator has a static key at all.
    pub fn initiator_has_static(self) -> bool {
        matches!(
            self,
            Self::XX | Self::IK | Self::KK | Self::XX1 | Self::IK1 | Self::KK1
        )
    }

    /// Whether the responder has a static key at all.
    pub fn responder_has_static(self) -> bool {
        !matches!(self, Self::NN)
    }

    fn base_messages(self) -> &'static [&'static [Token]] {
        use Token::*;
        match self {
            Self::NN => &[&[E], &[E, Ee]],
            Self::NK => &[&[E, Es], &[E, Ee]],
            Self::XX => &[&[E], &[E, Ee, S, Es], &[S, Se]],
            Self::IK => &[&[E, Es, S, Ss], &[E, Ee, Se]],
            Self::KK => &[&[E, Es, Ss], &[E, Ee, Se]],
            Self::NK1 => &[&[E], &[E, Ee, Es]],
            Self::XX1 => &[&[E], &[E, Ee, S], &[Es, S, Se]],
            Self::KK1 => &[&[E], &[E, Ee, Se, Es]],
            Self::IK1 => &[&[E, S], &[E, Ee, Se, Es]],
        }
    }

    /// Number of handshake messages.
    pub fn message_count(self) -> usize {
        self.base_messages().len()
    }
}

impl FromStr for Pattern {
    type Err = ApiMisuse;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| ApiMisuse::UnsupportedProtocol(s.to_string()))
    }
}

/// A Noise cipher function (section 12.3-12.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CipherChoice {
    /// AES-256-GCM; nonce: 32 zero bits then the counter big-endian.
    AesGcm,
    /// ChaCha20-Poly1305; nonce: 32 zero bits then the counter little-endian.
    ChaChaPoly,
}

impl CipherChoice {
    /// The name used in protocol names.
    pub fn noise_name(self) -> &'static str {
        match self {
            Self::AesGcm => "AESGCM",
            Self::ChaChaPoly => "ChaChaPoly",
        }
    }
}

/// A complete Noise protocol: pattern, modifiers, DH, cipher and hash.
///
/// ```
/// use sessionkey_proto::noise::NoiseParams;
/// let p: NoiseParams = "Noise_IKhfs+psk2_25519+MLKEM768_AESGCM_SHA256".parse().unwrap();
/// assert!(p.hfs);
/// assert_eq!(p.to_string(), "Noise_IKhfs+psk2_25519+MLKEM768_AESGCM_SHA256");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NoiseParams {
    /// The base pattern.
    pub pattern: Pattern,
    /// Bit N set: the `pskN` modifier.
    pub psk_positions: u8,
    /// The HFS modifier: hybrid forward secrecy with ML-KEM-768.
    pub hfs: bool,
    /// The cipher.
    pub cipher: CipherChoice,
    /// The hash.
    pub hash: HashChoice,
}

impl NoiseParams {
    /// A protocol with no modifiers.
    pub fn new(pattern: Pattern, cipher: CipherChoice, hash: HashChoice) -> Self {
        Self {
            pattern,
            psk_positions: 0,
            hfs: false,
            cipher,
            hash,
        }
    }

    /// Add the `pskN` modifier. Fails where the specification does not allow it (N greater
    /// than the number of messages).
    pub fn with_psk(mut self, position: u8) -> Result<Self, ApiMisuse> {
        if usize::from(position) > self.pattern.message_count() {
            return Err(ApiMisuse::UnsupportedProtocol(format!(
                "psk{position} with {} ({} messages)",
                self.pattern.name(),
                self.pattern.message_count()
            )));
        }
        self.psk_positions |= 1 << position;
        Ok(self)
    }

    /// Add the `hfs` modifier (ML-KEM-768).
    pub fn with_hfs(mut self) -> Self {
        self.hfs = true;
        self
    }

    /// Number of pre-shared keys the protocol needs.
    pub fn psk_count(&self) -> usize {
        self.psk_positions.count_ones() as usize
    }

    /// The message patterns with all modifiers applied.
    pub(crate) fn messages(&self) -> ([MessagePattern; 3], usize) {
        let base = self.pattern.base_messages();
        let mut msgs = [MessagePattern::new(&[]); 3];
        for (m, tokens) in msgs.iter_mut().zip(base) {
            *m = MessagePattern::new(tokens);
        }
        // psk0 goes at the start of the first message, pskN at the end of message N
        // (section 9.2).
        for pos in 0..=base.len() {
            if self.psk_positions & (1 << pos) != 0 {
                if pos == 0 {
                    msgs[0].insert(0, Token::Psk);
                } else {
                    let m = &mut msgs[pos - 1];
                    m.insert(m.len, Token::Psk);
                }
            }
        }
        if self.hfs {
            // HFS section 5: "e1" directly after the first "e", unless the same message has a
            // DH operation, then directly after that DH; "ekem1" directly after the first "ee".
            if let Some(m) = msgs[..base.len()]
                .iter_mut()
                .find(|m| m.tokens().contains(&Token::E))
            {
                let at = match m.tokens().iter().position(|t| t.is_dh()) {
                    Some(dh) => dh + 1,
                    None => m
                        .tokens()
                        .iter()
                        .position(|t| *t == Token::E)
                        .map_or(0, |e| e + 1),
                };
                m.insert(at, Token::E1);
            }
            if let Some(m) = msgs[..base.len()]
                .iter_mut()
                .find(|m| m.tokens().contains(&Token::Ee))
            {
                let at = m
                    .tokens()
                    .iter()
                    .position(|t| *t == Token::Ee)
                    .map_or(0, |e| e + 1);
                m.insert(at, Token::Ekem1);
            }
        }
        (msgs, base.len())
    }
}

impl NoiseParams {
    /// Run `f` on the protocol name, formatted on the stack: every handshake hashes it, and
    /// a `String` would be an allocation per handshake.
    pub(crate) fn with_name<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        /// Longer than any name: "Noise_", a pattern, "hfs", eight "+pskN", the rest.
        const MAX: usize = 128;
        struct Buf([u8; MAX], usize);
        impl fmt::Write for Buf {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                let end = self.1 + s.len();
                self.0
                    .get_mut(self.1..end)
                    .ok_or(fmt::Error)?
                    .copy_from_slice(s.as_bytes());
                self.1 = end;
                Ok(())
            }
        }
        let mut buf = Buf([0; MAX], 0);
        match fmt::write(&mut buf, format_args!("{self}")) {
            // Only whole `&str`s were copied in, so the bytes are UTF-8.
            Ok(()) => f(std::str::from_utf8(&buf.0[..buf.1]).unwrap_or_else(|_| unreachable!())),
            Err(_) => f(&self.to_string()),
        }
    }
}

impl fmt::Display for NoiseParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Noise_{}", self.pattern.name())?;
        let mut first = true;
        let mut modifier = |f: &mut fmt::Formatter<'_>, m: &dyn fmt::Display| {
            let sep = if first { "" } else { "+" };
            first = false;
            write!(f, "{sep}{m}")
        };
        if self.hfs {
            modifier(f, &"hfs")?;
        }
        for pos in 0..8 {
            if self.psk_positions & (1 << pos) != 0 {
                modifier(f, &format_args!("psk{pos}"))?;
            }
        }
        let dh = if self.hfs { "25519+MLKEM768" } else { "25519" };
        write!(
            f,
            "_{dh}_{}_{}",
            self.cipher.noise_name(),
            self.hash.noise_name()
        )
    }
}

impl FromStr for NoiseParams {
    type Err = ApiMisuse;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let bad = || ApiMisuse::UnsupportedProtocol(name.to_string());
        let mut parts = name.split('_');
        let (Some("Noise"), Some(handshake), Some(dh), Some(cipher), Some(hash), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        let split = handshake
            .find(|c: char| c.is_ascii_lowercase())
            .unwrap_or(handshake.len());
        let pattern: Pattern = handshake[..split].parse().map_err(|_| bad())?;
        let cipher = match cipher {
            "AESGCM" => CipherChoice::AesGcm,
            "ChaChaPoly" => CipherChoice::ChaChaPoly,
            _ => return Err(bad()),
        };
        let hash = match hash {
            "SHA256" => HashChoice::Sha256,
            "BLAKE2s" => HashChoice::Blake2s,
            _ => return Err(bad()),
        };
        let mut params = Self::new(pattern, cipher, hash);
        let mut last_psk = None;
        if split < handshake.len() {
            for modifier in handshake[split..].split('+') {
                if modifier == "hfs" && !params.hfs {
                    params.hfs = true;
                } else if let Some(pos) = modifier.strip_prefix("psk") {
                    let pos: u8 = pos.parse().map_err(|_| bad())?;
                    // PSKs are supplied in name order; require ascending positions so that
                    // this order is also the order the tokens consume them in.
                    if last_psk.is_some_and(|last| pos <= last) {
                        return Err(bad());
                    }
                    last_psk = Some(pos);
                    params = params.with_psk(pos).map_err(|_| bad())?;
                } else {
                    return Err(bad());
                }
            }
        }
        let expected_dh = if params.hfs {
            "25519+MLKEM768"
        } else {
            "25519"
        };
        if dh != expected_dh {
            return Err(bad());
        }
        Ok(params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(p: &str) -> Vec<String> {
        let params: NoiseParams = p.parse().unwrap();
        let (msgs, n) = params.messages();
        msgs[..n]
            .iter()
            .map(|m| format!("{:?}", m.tokens()))
            .collect()
    }

    #[test]
    fn hfs_token_placement_matches_the_extension() {
        // HFS specification section 5 and its examples.
        assert_eq!(
            render("Noise_XXhfs_25519+MLKEM768_AESGCM_SHA256"),
            ["[E, E1]", "[E, Ee, Ekem1, S, Es]", "[S, Se]"]
        );
        assert_eq!(
            render("Noise_IKhfs_25519+MLKEM768_AESGCM_SHA256"),
            ["[E, Es, E1, S, Ss]", "[E, Ee, Ekem1, Se]"]
        );
        assert_eq!(
            render("Noise_NNhfs_25519+MLKEM768_AESGCM_SHA256"),
            ["[E, E1]", "[E, Ee, Ekem1]"]
        );
        assert_eq!(
            render("Noise_KKhfs+psk2_25519+MLKEM768_AESGCM_SHA256"),
            ["[E, Es, E1, Ss]", "[E, Ee, Ekem1, Se, Psk]"]
        );
    }

    #[test]
    fn psk_placement_and_names() {
        assert_eq!(
            render("Noise_XXpsk0+psk3_25519_AESGCM_SHA256"),
            ["[Psk, E]", "[E, Ee, S, Es]", "[S, Se, Psk]"]
        );
        for bad in [
            "Noise_NNpsk3_25519_AESGCM_SHA256",
            "Noise_XXpsk3+psk0_25519_AESGCM_SHA256",
            "Noise_XXhfs_25519_AESGCM_SHA256",
            "Noise_XX_448_AESGCM_SHA256",
            "Noise_XX_25519_AESGCM_SHA512",
            "Noise_XXfallback_25519_AESGCM_SHA256",
            "Noise_IK_25519_AESGCM_SHA256_extra",
        ] {
            assert!(bad.parse::<NoiseParams>().is_err(), "{bad}");
        }
        for good in [
            "Noise_XXpsk0+psk1+psk2+psk3_25519_ChaChaPoly_BLAKE2s",
            "Noise_IKhfs+psk2_25519+MLKEM768_AESGCM_SHA256",
            "Noise_NN_25519_AESGCM_SHA256",
        ] {
            assert_eq!(good.parse::<NoiseParams>().unwrap().to_string(), good);
            good.parse::<NoiseParams>()
                .unwrap()
                .with_name(|name| assert_eq!(name, good));
        }
    }
}
