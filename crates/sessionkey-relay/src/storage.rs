//! The relay's storage: devices and their public prekeys, per-device message queues, and the
//! nonces of recent signed requests. One code path over SQLite (the embedded default) and
//! PostgreSQL (several relays, one population) through sqlx's `Any` driver, with runtime
//! queries only. The schema is in docs/MESSAGING.md, "Relay storage".
//!
//! Nothing stored here is secret: public keys, opaque envelopes, names and times.

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

use sessionkey_proto::msg::api::{DeviceStatus, InboxMessage, B64};

/// Prekey kind stored for a one-time X25519 prekey (its key type byte).
pub const KIND_ONE_TIME: i64 = 0x04;
/// Prekey kind stored for a one-time ML-KEM prekey (its key type byte).
pub const KIND_KEM: i64 = 0x05;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The database refused or failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The URL names no supported database.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
}

/// Which database is behind the pool (the few statements that differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite: one file, one relay process.
    Sqlite,
    /// PostgreSQL: any number of relay processes.
    Postgres,
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The 130-byte identity.
    pub identity: Vec<u8>,
    /// The current signed prekey.
    pub signed_prekey: Vec<u8>,
    /// The current last-resort KEM prekey.
    pub last_resort_kem: Vec<u8>,
}

/// What a bundle request takes from the store, in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenBundle {
    /// The device.
    pub device: DeviceRecord,
    /// A one-time X25519 prekey, now deleted, if any was left.
    pub one_time: Option<Vec<u8>>,
    /// A one-time KEM prekey, now deleted, if any was left (else use the last-resort one).
    pub kem: Option<Vec<u8>>,
}

/// Lower bounds of the buckets devices are counted in by their one-time prekeys: 0, 1-9,
/// 10-99, 100-999, 1000 and more.
pub const PREKEY_BUCKETS: [u64; 5] = [0, 1, 10, 100, 1000];

/// What a relay holds ([`Storage::holdings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holdings {
    /// Registered devices.
    pub devices: u64,
    /// Messages waiting for their recipient.
    pub messages_waiting: u64,
    /// Devices by one-time prekeys held, per kind (0: X25519, 1: ML-KEM) and bucket of
    /// [`PREKEY_BUCKETS`].
    pub prekey_buckets: [[u64; PREKEY_BUCKETS.len()]; 2],
}

/// What [`Storage::register`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// A new device.
    Created,
    /// The same identity again: its signed and last-resort prekeys were replaced.
    Updated,
    /// The name belongs to another identity; nothing changed.
    NameTaken,
}

const SQLITE_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS devices (
        name TEXT PRIMARY KEY, identity BLOB NOT NULL, signed_prekey BLOB NOT NULL,
        last_resort_kem BLOB NOT NULL, registered BIGINT NOT NULL, updated BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS prekeys (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, kind BIGINT NOT NULL,
        key_id BIGINT NOT NULL, key BLOB NOT NULL, UNIQUE (device, kind, key_id))",
    "CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, recipient TEXT NOT NULL, sender TEXT NOT NULL,
        body BLOB NOT NULL, created BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS messages_by_recipient ON messages (recipient, seq)",
    "CREATE INDEX IF NOT EXISTS messages_by_age ON messages (created)",
    "CREATE TABLE IF NOT EXISTS nonces (
        device TEXT NOT NULL, nonce BLOB NOT NULL, expires BIGINT NOT NULL,
        PRIMARY KEY (device, nonce))",
    "CREATE INDEX IF NOT EXISTS nonces_by_expiry ON nonces (expires)",
];

const POSTGRES_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS devices (
        name TEXT PRIMARY KEY, identity BYTEA NOT NULL, signed_prekey BYTEA NOT NULL,
        last_resort_kem BYTEA NOT NULL, registered BIGINT NOT NULL, updated BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS prekeys (
        seq BIGSERIAL PRIMARY KEY, device TEXT NOT NULL, kind BIGINT NOT NULL,
        key_id BIGINT NOT NULL, key BYTEA NOT NULL, UNIQUE (device, kind, key_id))",
    "CREATE TABLE IF NOT EXISTS messages (
        seq BIGSERIAL PRIMARY KEY, recipient TEXT NOT NULL, sender TEXT NOT NULL,
        body BYTEA NOT NULL, created BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS messages_by_recipient ON messages (recipient, seq)",
    "CREATE INDEX IF NOT EXISTS messages_by_age ON messages (created)",
    "CREATE TABLE IF NOT EXISTS nonces (
        device TEXT NOT NULL, nonce BYTEA NOT NULL, expires BIGINT NOT NULL,
        PRIMARY KEY (device, nonce))",
    "CREATE INDEX IF NOT EXISTS nonces_by_expiry ON nonces (expires)",
];

/// Serialises schema creation among relays starting together on one PostgreSQL.
const POSTGRES_SCHEMA_LOCK: i64 = 0x5e55_1075;

/// The PostgreSQL channel on which a relay announces a queued message (the payload is the
/// recipient's name), so every relay on the database wakes that recipient's waiters.
pub const QUEUED_CHANNEL: &str = "sessionkey_queued";

/// The relay's database.
#[derive(Debug, Clone)]
pub struct Storage {
    pool: AnyPool,
    backend: Backend,
    url: String,
}

impl Storage {
    /// Open (creating if needed) the database at `url`: `sqlite://PATH` (the file is created)
    /// or `postgres://USER@HOST/DB`. Applies the schema.
    pub async fn open(url: &str) -> Result<Self, StorageError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(rest) = url.strip_prefix("sqlite://") {
            let sep = if rest.contains('?') { '&' } else { '?' };
            (Backend::Sqlite, format!("{url}{sep}mode=rwc"))
        } else if url.starts_with("sqlite:") {
            (Backend::Sqlite, url.to_string())
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(StorageError::UnsupportedUrl(url.to_string()));
        };
        let options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        let pool = match backend {
            // One connection: SQLite has one writer anyway, and a single connection never meets
            // a stale read snapshot (SQLITE_BUSY_SNAPSHOT) between a read and its write.
            Backend::Sqlite => {
                options
                    .max_connections(1)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            // Durable across a crash or kill of the relay; only a power loss
                            // may take the last commits (SQLite's advice for WAL).
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?
            }
            Backend::Postgres => options.max_connections(16).connect(&url).await?,
        };
        let storage = Self {
            pool,
            backend,
            url: url.clone(),
        };
        storage.migrate().await?;
        Ok(storage)
    }

    async fn migrate(&self) -> Result<(), StorageError> {
        let mut conn = self.pool.acquire().await?;
        match self.backend {
            Backend::Sqlite => {
                for stmt in SQLITE_SCHEMA {
                    conn.execute(*stmt).await?;
                }
            }
            Backend::Postgres => {
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(POSTGRES_SCHEMA_LOCK)
                    .execute(&mut *conn)
                    .await?;
                let mut result = Ok(());
                for stmt in POSTGRES_SCHEMA {
                    if let Err(e) = conn.execute(*stmt).await {
                        result = Err(e);
                        break;
                    }
                }
                sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(POSTGRES_SCHEMA_LOCK)
                    .execute(&mut *conn)
                    .await?;
                result?;
            }
        }
        Ok(())
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Register `name` with these keys, or (same identity) replace its signed and last-resort
    /// prekeys. Another identity under the name changes nothing.
    pub async fn register(
        &self,
        name: &str,
        device: &DeviceRecord,
        now: i64,
    ) -> Result<Registered, StorageError> {
        let inserted = sqlx::query(
            "INSERT INTO devices (name, identity, signed_prekey, last_resort_kem, registered, updated)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(device.identity.clone())
        .bind(device.signed_prekey.clone())
        .bind(device.last_resort_kem.clone())
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(Registered::Created);
        }
        let updated = sqlx::query(
            "UPDATE devices SET signed_prekey = $1, last_resort_kem = $2, updated = $3
             WHERE name = $4 AND identity = $5",
        )
        .bind(device.signed_prekey.clone())
        .bind(device.last_resort_kem.clone())
        .bind(now)
        .bind(name)
        .bind(device.identity.clone())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(if updated == 1 {
            Registered::Updated
        } else {
            Registered::NameTaken
        })
    }

    /// The device registered under `name`.
    pub async fn device(&self, name: &str) -> Result<Option<DeviceRecord>, StorageError> {
        let row = sqlx::query(
            "SELECT identity, signed_prekey, last_resort_kem FROM devices WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| device_from_row(&r)).transpose()
    }

    /// Add one-time prekeys of `kind` ([`KIND_ONE_TIME`] or [`KIND_KEM`]) as `(id, encoding)`;
    /// an id already stored is ignored. Returns how many were added.
    pub async fn add_prekeys(
        &self,
        name: &str,
        kind: i64,
        keys: &[(u32, Vec<u8>)],
    ) -> Result<u64, StorageError> {
        let mut tx = self.pool.begin().await?;
        let mut added = 0;
        for (id, key) in keys {
            added += sqlx::query(
                "INSERT INTO prekeys (device, kind, key_id, key) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (device, kind, key_id) DO NOTHING",
            )
            .bind(name)
            .bind(kind)
            .bind(i64::from(*id))
            .bind(key.clone())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(added)
    }

    /// Delete `name`'s one-time prekeys of `kind` with ids up to `through`; returns how many.
    pub async fn retire_prekeys(
        &self,
        name: &str,
        kind: i64,
        through: u32,
    ) -> Result<u64, StorageError> {
        Ok(
            sqlx::query("DELETE FROM prekeys WHERE device = $1 AND kind = $2 AND key_id <= $3")
                .bind(name)
                .bind(kind)
                .bind(i64::from(through))
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    /// How many one-time prekeys of `kind` are held for `name`.
    pub async fn prekey_count(&self, name: &str, kind: i64) -> Result<u64, StorageError> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM prekeys WHERE device = $1 AND kind = $2")
            .bind(name)
            .bind(kind)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Take a bundle's worth of keys for `name`: the device, and one one-time prekey of each
    /// kind, each deleted in the same statement that reads it, so that no key is ever handed
    /// out twice, whatever runs concurrently (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite: a
    /// single writer).
    pub async fn take_bundle(&self, name: &str) -> Result<Option<TakenBundle>, StorageError> {
        let Some(device) = self.device(name).await? else {
            return Ok(None);
        };
        let one_time = self.take_prekey(name, KIND_ONE_TIME).await?;
        let kem = self.take_prekey(name, KIND_KEM).await?;
        Ok(Some(TakenBundle {
            device,
            one_time,
            kem,
        }))
    }

    async fn take_prekey(&self, name: &str, kind: i64) -> Result<Option<Vec<u8>>, StorageError> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "DELETE FROM prekeys WHERE seq = (SELECT seq FROM prekeys
                 WHERE device = $1 AND kind = $2 ORDER BY seq LIMIT 1) RETURNING key"
            }
            Backend::Postgres => {
                "DELETE FROM prekeys WHERE seq = (SELECT seq FROM prekeys
                 WHERE device = $1 AND kind = $2 ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING key"
            }
        };
        let row = sqlx::query(sql)
            .bind(name)
            .bind(kind)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get::<Vec<u8>, _>(0)).transpose()?)
    }

    /// Listen for messages queued through any relay on this database (PostgreSQL `LISTEN`):
    /// `None` on SQLite (one relay process: its own wake-ups are all there is).
    pub async fn listen(&self) -> Result<Option<sqlx::postgres::PgListener>, StorageError> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let mut listener = sqlx::postgres::PgListener::connect(&self.url).await?;
        listener.listen(QUEUED_CHANNEL).await?;
        Ok(Some(listener))
    }

    /// How many messages wait for `recipient`.
    pub async fn queued(&self, recipient: &str) -> Result<u64, StorageError> {
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM messages WHERE recipient = $1")
            .bind(recipient)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Queue `body` for `recipient`; returns its id (ids grow along each queue). On
    /// PostgreSQL the same statement notifies [`QUEUED_CHANNEL`].
    pub async fn enqueue(
        &self,
        recipient: &str,
        sender: &str,
        body: &[u8],
        now: i64,
    ) -> Result<i64, StorageError> {
        self.enqueue_capped(recipient, sender, body, now, u64::MAX)
            .await?
            .ok_or(StorageError::Database(sqlx::Error::RowNotFound))
    }

    /// [`Storage::enqueue`] unless `recipient` already has `cap` messages waiting (`None`):
    /// the check, the insert and (PostgreSQL) the `NOTIFY` are one statement, one round trip.
    pub async fn enqueue_capped(
        &self,
        recipient: &str,
        sender: &str,
        body: &[u8],
        now: i64,
        cap: u64,
    ) -> Result<Option<i64>, StorageError> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "INSERT INTO messages (recipient, sender, body, created)
                 SELECT $1, $2, $3, $4
                 WHERE (SELECT COUNT(*) FROM messages WHERE recipient = $1) < $5
                 RETURNING seq"
            }
            Backend::Postgres => {
                "WITH ins AS (
                    INSERT INTO messages (recipient, sender, body, created)
                    SELECT $1, $2, $3, $4
                    WHERE (SELECT COUNT(*) FROM messages WHERE recipient = $1) < $5
                    RETURNING seq)
                 SELECT ins.seq FROM ins CROSS JOIN LATERAL (SELECT pg_notify($6, $1)) AS n"
            }
        };
        let mut q = sqlx::query(sql)
            .bind(recipient)
            .bind(sender)
            .bind(body.to_vec())
            .bind(now)
            .bind(i64::try_from(cap).unwrap_or(i64::MAX));
        if self.backend == Backend::Postgres {
            q = q.bind(QUEUED_CHANNEL);
        }
        let row = q.fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// The oldest `limit` messages queued for `recipient`, in order, taking at most
    /// `per_sender` of each sender: one sender's backlog cannot keep another's messages out
    /// of a batch.
    pub async fn fetch(
        &self,
        recipient: &str,
        limit: usize,
        per_sender: usize,
    ) -> Result<Vec<InboxMessage>, StorageError> {
        let rows = sqlx::query(
            "SELECT seq, sender, created, body FROM (
                SELECT seq, sender, created, body,
                       ROW_NUMBER() OVER (PARTITION BY sender ORDER BY seq) AS nth
                FROM messages WHERE recipient = $1) AS queued
             WHERE nth <= $2 ORDER BY seq LIMIT $3",
        )
        .bind(recipient)
        .bind(i64::try_from(per_sender).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(InboxMessage {
                    id: r.try_get(0)?,
                    sender: r.try_get(1)?,
                    sent: r.try_get(2)?,
                    body: B64(r.try_get(3)?),
                })
            })
            .collect()
    }

    /// The id of the newest message queued for `recipient` (0: none), to tell whether
    /// anything arrived since a push.
    pub async fn newest(&self, recipient: &str) -> Result<i64, StorageError> {
        let row = sqlx::query("SELECT MAX(seq) FROM messages WHERE recipient = $1")
            .bind(recipient)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?.unwrap_or(0))
    }

    /// Delete these messages if they are in `recipient`'s queue (others are ignored);
    /// returns how many were deleted.
    pub async fn ack(&self, recipient: &str, ids: &[i64]) -> Result<u64, StorageError> {
        let mut tx = self.pool.begin().await?;
        let mut deleted = 0;
        for id in ids {
            deleted += sqlx::query("DELETE FROM messages WHERE recipient = $1 AND seq = $2")
                .bind(recipient)
                .bind(*id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(deleted)
    }

    /// The caller's prekey stock and queue length.
    pub async fn status(&self, name: &str) -> Result<DeviceStatus, StorageError> {
        let queued: i64 = sqlx::query("SELECT COUNT(*) FROM messages WHERE recipient = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(DeviceStatus {
            one_time_prekeys: self.prekey_count(name, KIND_ONE_TIME).await?,
            kem_prekeys: self.prekey_count(name, KIND_KEM).await?,
            queued: u64::try_from(queued).unwrap_or(0),
        })
    }

    /// Record a request nonce of `name` until `expires`; `false` if it was already recorded
    /// (a replayed request).
    pub async fn use_nonce(
        &self,
        name: &str,
        nonce: &[u8; 16],
        expires: i64,
    ) -> Result<bool, StorageError> {
        let inserted = sqlx::query(
            "INSERT INTO nonces (device, nonce, expires) VALUES ($1, $2, $3)
             ON CONFLICT (device, nonce) DO NOTHING",
        )
        .bind(name)
        .bind(nonce.to_vec())
        .bind(expires)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// What the relay holds now, for metrics: no name in it. One-time prekeys per device are
    /// counted by [`PREKEY_BUCKETS`]: `buckets[kind][i]` devices hold a count in bucket `i`
    /// (`kind` 0: X25519, 1: ML-KEM).
    pub async fn holdings(&self) -> Result<Holdings, StorageError> {
        let count = |sql: &'static str| async move {
            let n: i64 = sqlx::query(sql).fetch_one(&self.pool).await?.try_get(0)?;
            Ok::<u64, StorageError>(u64::try_from(n).unwrap_or(0))
        };
        let devices = count("SELECT COUNT(*) FROM devices").await?;
        let messages_waiting = count("SELECT COUNT(*) FROM messages").await?;
        let rows = sqlx::query("SELECT kind, COUNT(*) FROM prekeys GROUP BY device, kind")
            .fetch_all(&self.pool)
            .await?;
        let mut buckets = [[0u64; PREKEY_BUCKETS.len()]; 2];
        let mut with_keys = [0u64; 2];
        for row in rows {
            let kind: i64 = row.try_get(0)?;
            let n: i64 = row.try_get(1)?;
            let k = usize::from(kind == KIND_KEM);
            let b = PREKEY_BUCKETS
                .iter()
                .rposition(|&low| u64::try_from(n).unwrap_or(0) >= low)
                .unwrap_or(0);
            buckets[k][b] += 1;
            with_keys[k] += 1;
        }
        for k in 0..2 {
            // Devices with no one-time prekey of this kind have no row.
            buckets[k][0] += devices.saturating_sub(with_keys[k]);
        }
        Ok(Holdings {
            devices,
            messages_waiting,
            prekey_buckets: buckets,
        })
    }

    /// Delete messages accepted before `message_cutoff` and nonces that expired before `now`.
    /// Returns (messages, nonces) deleted.
    pub async fn expire(&self, message_cutoff: i64, now: i64) -> Result<(u64, u64), StorageError> {
        let messages = sqlx::query("DELETE FROM messages WHERE created < $1")
            .bind(message_cutoff)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let nonces = sqlx::query("DELETE FROM nonces WHERE expires < $1")
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok((messages, nonces))
    }

    /// Close the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn device_from_row(r: &AnyRow) -> Result<DeviceRecord, StorageError> {
    Ok(DeviceRecord {
        identity: r.try_get(0)?,
        signed_prekey: r.try_get(1)?,
        last_resort_kem: r.try_get(2)?,
    })
}
