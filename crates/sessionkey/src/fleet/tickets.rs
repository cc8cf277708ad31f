//! TLS session tickets shared by a fleet: every gateway encrypts and decrypts tickets with
//! the same keys, so a client resumed through the balancer is accepted by whichever gateway
//! it reaches.
//!
//! The ticket keys live in the database sealed (AES-256-GCM) under a key-encryption key
//! that each gateway reads from a file of its own (32 random bytes in base64, mode 0600);
//! the database never holds them in clear. A new key is made every [`ROTATE_EVERY`] (by
//! whichever gateway notices first, under a lock); a key is kept for decryption for one
//! ticket lifetime after it stopped encrypting, then deleted from the database and dropped
//! from memory. A ticket is `key id (8) || nonce (12) || AES-256-GCM(plaintext)` with the
//! key id as associated data.

use std::path::Path;
use std::sync::RwLock;
use std::time::Duration;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sqlx::Row;
use zeroize::Zeroizing;

use super::db::{FleetDb, FleetError};

/// How long a ticket key encrypts new tickets.
pub const ROTATE_EVERY: Duration = Duration::from_secs(3600);
/// The lifetime announced in tickets; a key is kept this long after its last ticket.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(2 * 3600);
/// How often a gateway reads the keys again (and rotates when due).
pub const REFRESH: Duration = Duration::from_secs(30);

/// Serialises rotation among gateways.
const ROTATION_LOCK: i64 = 0x5e55_71c7;
const KEY_AAD: &[u8] = b"sessionkey fleet ticket key v1";
const ID_LEN: usize = 8;

/// The key-encryption key that seals ticket keys in the database.
pub struct Kek(LessSafeKey);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(redacted)")
    }
}

impl Kek {
    /// Read a key-encryption key file: 32 random bytes in base64, private to its owner.
    /// Make one with `(umask 077; head -c 32 /dev/urandom | base64 > FILE)` and give every
    /// gateway of the fleet the same file.
    pub fn read(path: &Path) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| format!("ticket key file {shown}: {e}"))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "ticket key file {shown} is readable by group or others; fix it with: chmod 600 {shown}"
            ));
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| format!("ticket key file {shown}: {e}"))?,
        );
        let bytes = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| {
            format!(
                "ticket key file {shown} is not base64; make one with: (umask 077; head -c 32 \
                 /dev/urandom | base64 > FILE)"
            )
        })?);
        Self::from_bytes(&bytes)
            .ok_or_else(|| format!("ticket key file {shown} must hold exactly 32 bytes"))
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 32 {
            return None;
        }
        UnboundKey::new(&AES_256_GCM, bytes)
            .ok()
            .map(|k| Self(LessSafeKey::new(k)))
    }

    fn seal(&self, id: i64, key: &[u8]) -> Option<Vec<u8>> {
        let nonce = random::<NONCE_LEN>()?;
        let mut out = key.to_vec();
        let aad = [KEY_AAD, &id.to_be_bytes()].concat();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                &mut out,
            )
            .ok()?;
        Some([&nonce[..], &out].concat())
    }

    fn open(&self, id: i64, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let (nonce, body) = sealed.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = Zeroizing::new(body.to_vec());
        let aad = [KEY_AAD, &id.to_be_bytes()].concat();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(&aad[..]), &mut buf)
            .ok()?
            .len();
        buf.truncate(plain);
        Some(buf)
    }
}

fn random<const N: usize>() -> Option<[u8; N]> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).ok()?;
    Some(b)
}

struct TicketKey {
    id: i64,
    key: LessSafeKey,
}

/// A `rustls` ticketer whose keys come from the fleet database (see the module docs).
pub struct FleetTicketer {
    /// Newest first.
    keys: RwLock<Vec<TicketKey>>,
}

impl std::fmt::Debug for FleetTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<i64> = self
            .keys
            .read()
            .map(|k| k.iter().map(|k| k.id).collect())
            .unwrap_or_default();
        f.debug_struct("FleetTicketer")
            .field("key_ids", &ids)
            .finish()
    }
}

impl Default for FleetTicketer {
    fn default() -> Self {
        Self {
            keys: RwLock::new(Vec::new()),
        }
    }
}

impl FleetTicketer {
    /// Rotate if due, erase expired keys, and read the current ones (those `kek` cannot
    /// open are left out with an error: every gateway needs the same key file).
    pub async fn refresh(&self, db: &FleetDb, kek: &Kek) -> Result<usize, FleetError> {
        let mut tx = db.pool().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(ROTATION_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM sessionkey_fleet_ticket_keys
             WHERE created_at < now() - make_interval(secs => $1)",
        )
        .bind((ROTATE_EVERY + TICKET_LIFETIME).as_secs_f64())
        .execute(&mut *tx)
        .await?;
        let fresh: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sessionkey_fleet_ticket_keys
             WHERE created_at > now() - make_interval(secs => $1))",
        )
        .bind(ROTATE_EVERY.as_secs_f64())
        .fetch_one(&mut *tx)
        .await?;
        if !fresh {
            let id = i64::from_be_bytes(random::<8>().unwrap_or_default());
            let key = Zeroizing::new(random::<32>().unwrap_or_default());
            if let Some(sealed) = kek.seal(id, &key[..]) {
                sqlx::query(
                    "INSERT INTO sessionkey_fleet_ticket_keys (key_id, sealed) VALUES ($1, $2)",
                )
                .bind(id)
                .bind(sealed)
                .execute(&mut *tx)
                .await?;
                tracing::info!(
                    key_id = format_args!("{id:016x}"),
                    "new TLS ticket key for the fleet"
                );
            }
        }
        let rows = sqlx::query(
            "SELECT key_id, sealed FROM sessionkey_fleet_ticket_keys ORDER BY created_at DESC",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.try_get("key_id")?;
            let sealed: Vec<u8> = row.try_get("sealed")?;
            let opened = kek.open(id, &sealed).and_then(|raw| {
                UnboundKey::new(&AES_256_GCM, &raw)
                    .ok()
                    .map(LessSafeKey::new)
            });
            match opened {
                Some(key) => keys.push(TicketKey { id, key }),
                None => tracing::error!(
                    key_id = format_args!("{id:016x}"),
                    "a TLS ticket key in the database cannot be opened with this gateway's \
                     ticket key file: give every gateway of the fleet the same file"
                ),
            }
        }
        let n = keys.len();
        if let Ok(mut slot) = self.keys.write() {
            *slot = keys;
        }
        Ok(n)
    }
}

impl rustls::server::ProducesTickets for FleetTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(TICKET_LIFETIME.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.read().ok()?;
        let newest = keys.first()?;
        let id = newest.id.to_be_bytes();
        let nonce = random::<NONCE_LEN>()?;
        let mut body = plain.to_vec();
        newest
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&id[..]),
                &mut body,
            )
            .ok()?;
        Some([&id[..], &nonce[..], &body].concat())
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let (id, rest) = ticket.split_at_checked(ID_LEN)?;
        let (nonce, body) = rest.split_at_checked(NONCE_LEN)?;
        let want = i64::from_be_bytes(id.try_into().ok()?);
        let keys = self.keys.read().ok()?;
        let key = keys.iter().find(|k| k.id == want)?;
        let mut buf = body.to_vec();
        let n = key
            .key
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::from(id),
                &mut buf,
            )
            .ok()?
            .len();
        buf.truncate(n);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    fn ticketer(keys: &[(i64, [u8; 32])]) -> FleetTicketer {
        let t = FleetTicketer::default();
        *t.keys.write().unwrap() = keys
            .iter()
            .map(|(id, k)| TicketKey {
                id: *id,
                key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, k).unwrap()),
            })
            .collect();
        t
    }

    #[test]
    fn a_ticket_opens_on_any_holder_of_its_key_and_nowhere_else() {
        let a = ticketer(&[(7, [1; 32])]);
        let ticket = a.encrypt(b"resumption state").unwrap();
        // Another gateway with the same key, after a rotation (newer key first).
        let b = ticketer(&[(8, [2; 32]), (7, [1; 32])]);
        assert_eq!(b.decrypt(&ticket).unwrap(), b"resumption state");
        // Its new tickets use the newest key; the old gateway cannot open them.
        assert!(a.decrypt(&b.encrypt(b"x").unwrap()).is_none());
        // An erased key, a forged byte, garbage: no panic, no plaintext.
        assert!(ticketer(&[(8, [2; 32])]).decrypt(&ticket).is_none());
        let mut forged = ticket.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert!(b.decrypt(&forged).is_none());
        for len in 0..40 {
            assert!(b.decrypt(&vec![0u8; len]).is_none());
        }
        assert!(FleetTicketer::default().encrypt(b"x").is_none());
    }

    #[test]
    fn ticket_keys_are_sealed_under_the_key_encryption_key() {
        let kek = Kek::from_bytes(&[9; 32]).unwrap();
        let sealed = kek.seal(42, &[5; 32]).unwrap();
        assert!(!sealed.windows(32).any(|w| w == [5; 32]), "stored in clear");
        assert_eq!(&kek.open(42, &sealed).unwrap()[..], &[5; 32]);
        // Bound to its id, and to the right key-encryption key.
        assert!(kek.open(43, &sealed).is_none());
        assert!(Kek::from_bytes(&[8; 32])
            .unwrap()
            .open(42, &sealed)
            .is_none());
        assert!(kek.open(42, &sealed[..5]).is_none());
        assert!(Kek::from_bytes(&[1; 31]).is_none());
        assert_eq!(format!("{kek:?}"), "Kek(redacted)");
    }
}
