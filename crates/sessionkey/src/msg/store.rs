//! The client's state at rest: one SQLite file, every value encrypted (docs/MESSAGING.md,
//! "Client store").
//!
//! The key is derived from the client's key file (mode 0600) with HKDF; each value is sealed
//! with AES-256-GCM under a fresh random nonce (aws-lc-rs `RandomizedNonceKey`: no caller
//! nonce), its table and row name as associated data, so a value cannot be moved to another
//! row. `secure_delete` makes SQLite overwrite freed pages, and the rollback journal (not
//! WAL) is deleted at each commit, so a replaced ratchet state, and with it every used
//! message key, does not linger in the file.

use std::path::Path;
use std::str::FromStr;

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;
use zeroize::Zeroizing;

use crate::proto::keys::Identity;

/// HKDF info naming the store key.
const STORE_KEY_INFO: &[u8] = b"sessionkey msg client store v1";
const AAD_LABEL: &[u8] = b"sessionkey msg store v1";

/// A store failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed.
    #[error("message store: {0}")]
    Database(#[from] sqlx::Error),
    /// A value did not decrypt: the store belongs to another key file, or was changed.
    #[error("message store: a value does not decrypt with this key file (another key file, or a damaged store)")]
    Undecryptable,
    /// The key could not be derived or a value not sealed.
    #[error("message store: {0}")]
    Crypto(&'static str),
}

/// The encrypted client store.
pub struct Store {
    pool: SqlitePool,
    key: RandomizedNonceKey,
    /// Keys rows of `sessions` by base key without storing the base key itself.
    index_key: aws_lc_rs::hmac::Key,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS contacts (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sessions (
        id INTEGER PRIMARY KEY AUTOINCREMENT, contact TEXT NOT NULL, base_key_tag BLOB NOT NULL UNIQUE,
        updated INTEGER NOT NULL, value BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS sessions_by_contact ON sessions (contact, updated)",
];

/// One stored session row.
#[derive(Debug)]
pub struct SessionRow {
    /// Row id.
    pub id: i64,
    /// The decrypted `Session::to_bytes`.
    pub state: Zeroizing<Vec<u8>>,
}

impl Store {
    /// Open (creating) the store at `path`, encrypted with a key derived from `key_file`.
    pub async fn open(path: &Path, key_file: &Identity) -> Result<Self, StoreError> {
        let secret = key_file
            .derive_key(STORE_KEY_INFO)
            .map_err(|_| StoreError::Crypto("deriving the store key failed"))?;
        let key = RandomizedNonceKey::new(&AES_256_GCM, &secret[..])
            .map_err(|_| StoreError::Crypto("bad store key"))?;
        let index_secret = key_file
            .derive_key(b"sessionkey msg client store index v1")
            .map_err(|_| StoreError::Crypto("deriving the index key failed"))?;
        let index_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &index_secret[..]);
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Delete)
            .pragma("secure_delete", "ON")
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&pool).await?;
        }
        Ok(Self {
            pool,
            key,
            index_key,
        })
    }

    fn aad(table: &str, row: &str) -> Vec<u8> {
        [AAD_LABEL, b"\0", table.as_bytes(), b"\0", row.as_bytes()].concat()
    }

    fn seal(&self, table: &str, row: &str, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut buf = plain.to_vec();
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(Self::aad(table, row)), &mut buf)
            .map_err(|_| StoreError::Crypto("sealing a stored value failed"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&buf);
        // The plaintext copy inside `buf` was overwritten in place by the ciphertext.
        Ok(out)
    }

    fn open_value(
        &self,
        table: &str,
        row: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        if sealed.len() < NONCE_LEN {
            return Err(StoreError::Undecryptable);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| StoreError::Undecryptable)?;
        let mut buf = Zeroizing::new(ct.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(Self::aad(table, row)), &mut buf)
            .map_err(|_| StoreError::Undecryptable)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// A value of the `meta` table.
    pub async fn meta(&self, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = ?1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| self.open_value("meta", key, &r.get::<Vec<u8>, _>(0)))
            .transpose()
    }

    /// Set a value of the `meta` table.
    pub async fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let sealed = self.seal("meta", key, value)?;
        sqlx::query("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(sealed)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A contact's record.
    pub async fn contact(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let row = sqlx::query("SELECT value FROM contacts WHERE name = ?1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| self.open_value("contacts", name, &r.get::<Vec<u8>, _>(0)))
            .transpose()
    }

    /// Set a contact's record.
    pub async fn set_contact(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let sealed = self.seal("contacts", name, value)?;
        sqlx::query("INSERT INTO contacts (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = excluded.value")
            .bind(name)
            .bind(sealed)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every contact, by name.
    pub async fn contacts(&self) -> Result<Vec<(String, Zeroizing<Vec<u8>>)>, StoreError> {
        let rows = sqlx::query("SELECT name, value FROM contacts ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let name: String = r.get(0);
                let value = self.open_value("contacts", &name, &r.get::<Vec<u8>, _>(1))?;
                Ok((name, value))
            })
            .collect()
    }

    fn base_key_tag(&self, base_key: &[u8; 32]) -> Vec<u8> {
        aws_lc_rs::hmac::sign(&self.index_key, base_key)
            .as_ref()
            .to_vec()
    }

    /// A contact's sessions, the most recently used first.
    pub async fn sessions(&self, contact: &str) -> Result<Vec<SessionRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, value FROM sessions WHERE contact = ?1 ORDER BY updated DESC, id DESC",
        )
        .bind(contact)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let id: i64 = r.get(0);
                Ok(SessionRow {
                    id,
                    state: self.open_value("sessions", &id.to_string(), &r.get::<Vec<u8>, _>(1))?,
                })
            })
            .collect()
    }

    /// The session of `contact` set up with this base key.
    pub async fn session_by_base_key(
        &self,
        contact: &str,
        base_key: &[u8; 32],
    ) -> Result<Option<SessionRow>, StoreError> {
        let row =
            sqlx::query("SELECT id, value FROM sessions WHERE contact = ?1 AND base_key_tag = ?2")
                .bind(contact)
                .bind(self.base_key_tag(base_key))
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| {
            let id: i64 = r.get(0);
            Ok(SessionRow {
                id,
                state: self.open_value("sessions", &id.to_string(), &r.get::<Vec<u8>, _>(1))?,
            })
        })
        .transpose()
    }

    /// Replace session `id`'s state (after every successful encrypt or decrypt).
    pub async fn update_session(&self, id: i64, state: &[u8], now: i64) -> Result<(), StoreError> {
        let sealed = self.seal("sessions", &id.to_string(), state)?;
        sqlx::query("UPDATE sessions SET value = ?1, updated = ?2 WHERE id = ?3")
            .bind(sealed)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Store a new session and (when it consumed prekeys) the device, in one transaction, so
    /// that a crash never leaves one without the other. Returns the session's row id.
    pub async fn insert_session(
        &self,
        contact: &str,
        base_key: &[u8; 32],
        state: &[u8],
        device: Option<&[u8]>,
        now: i64,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO sessions (contact, base_key_tag, updated, value) VALUES (?1, ?2, ?3, x'') RETURNING id",
        )
        .bind(contact)
        .bind(self.base_key_tag(base_key))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        let sealed = self.seal("sessions", &id.to_string(), state)?;
        sqlx::query("UPDATE sessions SET value = ?1 WHERE id = ?2")
            .bind(sealed)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if let Some(device) = device {
            let sealed = self.seal("meta", "device", device)?;
            sqlx::query("INSERT INTO meta (key, value) VALUES ('device', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
                .bind(sealed)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// Close the database.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
