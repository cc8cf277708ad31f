//! The client's state at rest: one SQLite file, every value encrypted (docs/MESSAGING.md,
//! "Client store").
//!
//! The key is derived from the client's key file (mode 0600) with HKDF; each value is sealed
//! with AES-256-GCM under a fresh random nonce (aws-lc-rs `RandomizedNonceKey`: no caller
//! nonce), its table and row name as associated data, so a value cannot be moved to another
//! row. `secure_delete` makes SQLite overwrite freed pages, and the rollback journal (not
//! WAL) is deleted at each commit, so a replaced ratchet state, and with it every used
//! message key, does not linger in the file.
//!
//! Every read-modify-write runs in one [`Txn`] (`BEGIN IMMEDIATE`: the write lock is taken
//! at the start, so no other writer can come between the read and the write), and a session
//! row carries a version that each write checks and increments: a write based on a stale
//! read fails with [`StoreError::Conflict`] instead of rolling a ratchet back.

use std::path::Path;
use std::str::FromStr;

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
};
use sqlx::{Row, Transaction};
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
    /// A session changed since it was read (another process wrote it): nothing was written.
    #[error("message store: session {0} changed since it was read (another process on this state directory?); nothing was written, try again")]
    Conflict(i64),
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
        updated INTEGER NOT NULL, value BLOB NOT NULL, version INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS sessions_by_contact ON sessions (contact, updated)",
    // Decrypted messages not yet shown to the user (stored with the ratchet state that
    // decrypted them; deleted once shown).
    "CREATE TABLE IF NOT EXISTS inbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, value BLOB NOT NULL)",
    // Relay message ids already handled (decrypted, set aside or dropped) but perhaps not
    // acknowledged yet: a redelivery is acknowledged without being handled again.
    "CREATE TABLE IF NOT EXISTS received (relay_id INTEGER PRIMARY KEY, created INTEGER NOT NULL)",
    // Messages set aside until a changed identity is accepted.
    "CREATE TABLE IF NOT EXISTS held (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, sender TEXT NOT NULL, value BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS held_by_sender ON held (sender, seq)",
];

/// One stored session row.
#[derive(Debug)]
pub struct SessionRow {
    /// Row id.
    pub id: i64,
    /// The version read; [`Txn::update_session`] writes only over this version.
    pub version: i64,
    /// The decrypted `Session::to_bytes`.
    pub state: Zeroizing<Vec<u8>>,
}

/// A sealed row of a queue-like table (`inbox`, `held`), decrypted.
#[derive(Debug)]
pub struct QueuedRow {
    /// Row id.
    pub seq: i64,
    /// The decrypted value.
    pub value: Zeroizing<Vec<u8>>,
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
        // Stores made before sessions had a version.
        let has_version =
            sqlx::query("SELECT 1 FROM pragma_table_info('sessions') WHERE name = 'version'")
                .fetch_optional(&pool)
                .await?
                .is_some();
        if !has_version {
            sqlx::query("ALTER TABLE sessions ADD COLUMN version INTEGER NOT NULL DEFAULT 0")
                .execute(&pool)
                .await?;
        }
        Ok(Self {
            pool,
            key,
            index_key,
        })
    }

    /// Begin a transaction holding SQLite's write lock from the start (`BEGIN IMMEDIATE`).
    /// Dropped without [`Txn::commit`], it rolls back.
    pub async fn begin(&self) -> Result<Txn<'_>, StoreError> {
        Ok(Txn {
            store: self,
            tx: self.pool.begin_with("BEGIN IMMEDIATE").await?,
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

    fn base_key_tag(&self, base_key: &[u8; 32]) -> Vec<u8> {
        aws_lc_rs::hmac::sign(&self.index_key, base_key)
            .as_ref()
            .to_vec()
    }

    /// A value of the `meta` table (in a transaction of its own).
    pub async fn meta(&self, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let mut tx = self.begin().await?;
        let v = tx.meta(key).await?;
        tx.commit().await?;
        Ok(v)
    }

    /// Set a value of the `meta` table (in a transaction of its own).
    pub async fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        tx.set_meta(key, value).await?;
        tx.commit().await
    }

    /// A contact's record (in a transaction of its own).
    pub async fn contact(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let mut tx = self.begin().await?;
        let v = tx.contact(name).await?;
        tx.commit().await?;
        Ok(v)
    }

    /// Set a contact's record (in a transaction of its own).
    pub async fn set_contact(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        tx.set_contact(name, value).await?;
        tx.commit().await
    }

    /// Close the database.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// One `BEGIN IMMEDIATE` transaction on the store; every read and write of a
/// read-modify-write goes through one.
pub struct Txn<'s> {
    store: &'s Store,
    tx: Transaction<'static, Sqlite>,
}

impl std::fmt::Debug for Txn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn").finish_non_exhaustive()
    }
}

impl Txn<'_> {
    /// Commit.
    pub async fn commit(self) -> Result<(), StoreError> {
        Ok(self.tx.commit().await?)
    }

    /// A value of the `meta` table.
    pub async fn meta(&mut self, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = ?1")
            .bind(key)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.map(|r| self.store.open_value("meta", key, &r.get::<Vec<u8>, _>(0)))
            .transpose()
    }

    /// Set a value of the `meta` table.
    pub async fn set_meta(&mut self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let sealed = self.store.seal("meta", key, value)?;
        sqlx::query("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(sealed)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Delete a value of the `meta` table.
    pub async fn delete_meta(&mut self, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM meta WHERE key = ?1")
            .bind(key)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// A contact's record.
    pub async fn contact(&mut self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let row = sqlx::query("SELECT value FROM contacts WHERE name = ?1")
            .bind(name)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.map(|r| {
            self.store
                .open_value("contacts", name, &r.get::<Vec<u8>, _>(0))
        })
        .transpose()
    }

    /// Set a contact's record.
    pub async fn set_contact(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let sealed = self.store.seal("contacts", name, value)?;
        sqlx::query("INSERT INTO contacts (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = excluded.value")
            .bind(name)
            .bind(sealed)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Every contact, by name.
    pub async fn contacts(&mut self) -> Result<Vec<(String, Zeroizing<Vec<u8>>)>, StoreError> {
        let rows = sqlx::query("SELECT name, value FROM contacts ORDER BY name")
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter()
            .map(|r| {
                let name: String = r.get(0);
                let value = self
                    .store
                    .open_value("contacts", &name, &r.get::<Vec<u8>, _>(1))?;
                Ok((name, value))
            })
            .collect()
    }

    fn session_row(&self, r: &sqlx::sqlite::SqliteRow) -> Result<SessionRow, StoreError> {
        let id: i64 = r.get(0);
        Ok(SessionRow {
            id,
            version: r.get(1),
            state: self
                .store
                .open_value("sessions", &id.to_string(), &r.get::<Vec<u8>, _>(2))?,
        })
    }

    /// A contact's sessions, the most recently used first.
    pub async fn sessions(&mut self, contact: &str) -> Result<Vec<SessionRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, version, value FROM sessions WHERE contact = ?1 ORDER BY updated DESC, id DESC",
        )
        .bind(contact)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(|r| self.session_row(r)).collect()
    }

    /// How many sessions a contact has.
    pub async fn session_count(&mut self, contact: &str) -> Result<usize, StoreError> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM sessions WHERE contact = ?1")
            .bind(contact)
            .fetch_one(&mut *self.tx)
            .await?
            .get(0);
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// The session of `contact` set up with this base key.
    pub async fn session_by_base_key(
        &mut self,
        contact: &str,
        base_key: &[u8; 32],
    ) -> Result<Option<SessionRow>, StoreError> {
        let row = sqlx::query(
            "SELECT id, version, value FROM sessions WHERE contact = ?1 AND base_key_tag = ?2",
        )
        .bind(contact)
        .bind(self.store.base_key_tag(base_key))
        .fetch_optional(&mut *self.tx)
        .await?;
        row.map(|r| self.session_row(&r)).transpose()
    }

    /// Replace the state of the session read as `row`, only if it is still at the version
    /// read (else [`StoreError::Conflict`]); increments the version.
    pub async fn update_session(
        &mut self,
        row: &SessionRow,
        state: &[u8],
        now: i64,
    ) -> Result<(), StoreError> {
        let sealed = self.store.seal("sessions", &row.id.to_string(), state)?;
        let n = sqlx::query(
            "UPDATE sessions SET value = ?1, updated = ?2, version = version + 1
             WHERE id = ?3 AND version = ?4",
        )
        .bind(sealed)
        .bind(now)
        .bind(row.id)
        .bind(row.version)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Err(StoreError::Conflict(row.id));
        }
        Ok(())
    }

    /// Store a new session and (when it consumed prekeys) the device. Returns the new row as
    /// [`Txn::update_session`] expects it.
    pub async fn insert_session(
        &mut self,
        contact: &str,
        base_key: &[u8; 32],
        state: &[u8],
        device: Option<&[u8]>,
        now: i64,
    ) -> Result<SessionRow, StoreError> {
        let id: i64 = sqlx::query(
            "INSERT INTO sessions (contact, base_key_tag, updated, value) VALUES (?1, ?2, ?3, x'') RETURNING id",
        )
        .bind(contact)
        .bind(self.store.base_key_tag(base_key))
        .bind(now)
        .fetch_one(&mut *self.tx)
        .await?
        .get(0);
        let sealed = self.store.seal("sessions", &id.to_string(), state)?;
        sqlx::query("UPDATE sessions SET value = ?1 WHERE id = ?2")
            .bind(sealed)
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        if let Some(device) = device {
            self.set_meta("device", device).await?;
        }
        Ok(SessionRow {
            id,
            version: 0,
            state: Zeroizing::new(state.to_vec()),
        })
    }

    /// Delete a contact's sessions beyond the `keep` most recently used; returns how many.
    pub async fn prune_sessions(&mut self, contact: &str, keep: usize) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM sessions WHERE contact = ?1 AND id NOT IN (
                SELECT id FROM sessions WHERE contact = ?1 ORDER BY updated DESC, id DESC LIMIT ?2)",
        )
        .bind(contact)
        .bind(i64::try_from(keep).unwrap_or(i64::MAX))
        .execute(&mut *self.tx)
        .await?
        .rows_affected())
    }

    async fn push_sealed(
        &mut self,
        table: &'static str,
        sender: Option<&str>,
        value: &[u8],
    ) -> Result<i64, StoreError> {
        let seq: i64 = match sender {
            None => sqlx::query(&format!(
                "INSERT INTO {table} (value) VALUES (x'') RETURNING seq"
            ))
            .fetch_one(&mut *self.tx)
            .await?
            .get(0),
            Some(s) => sqlx::query(&format!(
                "INSERT INTO {table} (sender, value) VALUES (?1, x'') RETURNING seq"
            ))
            .bind(s)
            .fetch_one(&mut *self.tx)
            .await?
            .get(0),
        };
        let sealed = self.store.seal(table, &seq.to_string(), value)?;
        sqlx::query(&format!("UPDATE {table} SET value = ?1 WHERE seq = ?2"))
            .bind(sealed)
            .bind(seq)
            .execute(&mut *self.tx)
            .await?;
        Ok(seq)
    }

    fn queued_rows(
        &self,
        table: &str,
        rows: &[sqlx::sqlite::SqliteRow],
    ) -> Result<Vec<QueuedRow>, StoreError> {
        rows.iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                Ok(QueuedRow {
                    seq,
                    value: self.store.open_value(
                        table,
                        &seq.to_string(),
                        &r.get::<Vec<u8>, _>(1),
                    )?,
                })
            })
            .collect()
    }

    /// Add a decrypted message not yet shown.
    pub async fn push_inbox(&mut self, value: &[u8]) -> Result<i64, StoreError> {
        self.push_sealed("inbox", None, value).await
    }

    /// Decrypted messages not yet shown, oldest first.
    pub async fn inbox(&mut self, limit: usize) -> Result<Vec<QueuedRow>, StoreError> {
        let rows = sqlx::query("SELECT seq, value FROM inbox ORDER BY seq LIMIT ?1")
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *self.tx)
            .await?;
        self.queued_rows("inbox", &rows)
    }

    /// Forget a shown message.
    pub async fn delete_inbox(&mut self, seq: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM inbox WHERE seq = ?1")
            .bind(seq)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Set a message aside until `sender`'s changed identity is accepted.
    pub async fn hold(&mut self, sender: &str, value: &[u8]) -> Result<i64, StoreError> {
        self.push_sealed("held", Some(sender), value).await
    }

    /// How many messages of `sender` are set aside.
    pub async fn held_count(&mut self, sender: &str) -> Result<usize, StoreError> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM held WHERE sender = ?1")
            .bind(sender)
            .fetch_one(&mut *self.tx)
            .await?
            .get(0);
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// The senders with messages set aside.
    pub async fn held_senders(&mut self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT DISTINCT sender FROM held ORDER BY sender")
            .fetch_all(&mut *self.tx)
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// `sender`'s messages set aside, oldest first.
    pub async fn held(&mut self, sender: &str, limit: usize) -> Result<Vec<QueuedRow>, StoreError> {
        let rows =
            sqlx::query("SELECT seq, value FROM held WHERE sender = ?1 ORDER BY seq LIMIT ?2")
                .bind(sender)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&mut *self.tx)
                .await?;
        self.queued_rows("held", &rows)
    }

    /// Forget a message set aside.
    pub async fn delete_held(&mut self, seq: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM held WHERE seq = ?1")
            .bind(seq)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Record that the relay's message `relay_id` was handled; `false` if it already was.
    pub async fn mark_received(&mut self, relay_id: i64, now: i64) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "INSERT INTO received (relay_id, created) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )
        .bind(relay_id)
        .bind(now)
        .execute(&mut *self.tx)
        .await?
        .rows_affected()
            == 1)
    }

    /// Whether the relay's message `relay_id` was handled already.
    pub async fn was_received(&mut self, relay_id: i64) -> Result<bool, StoreError> {
        Ok(sqlx::query("SELECT 1 FROM received WHERE relay_id = ?1")
            .bind(relay_id)
            .fetch_optional(&mut *self.tx)
            .await?
            .is_some())
    }

    /// Forget handled ids once the relay acknowledged them, and any older than `cutoff` (the
    /// relay has deleted those anyway).
    pub async fn forget_received(&mut self, ids: &[i64], cutoff: i64) -> Result<(), StoreError> {
        for id in ids {
            sqlx::query("DELETE FROM received WHERE relay_id = ?1")
                .bind(*id)
                .execute(&mut *self.tx)
                .await?;
        }
        sqlx::query("DELETE FROM received WHERE created < ?1")
            .bind(cutoff)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }
}
