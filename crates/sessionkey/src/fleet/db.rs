//! The fleet's PostgreSQL database: versioned schema migrations, the authorized peers by
//! group, and the notifications that tell every gateway a list changed.
//!
//! PostgreSQL only (not SQLite as the relay also allows): gateways on several machines
//! share the list, and `LISTEN`/`NOTIFY` carries changes to them at once.
//!
//! Nothing stored here is secret: public keys (as trust files hold them), comments, names
//! and times.

use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection, PgPool, Row};

use crate::trust::PeerKey;

/// The group of peers a command or gateway uses when none is named.
pub const DEFAULT_GROUP: &str = "default";

/// The channel every change is announced on. The payload ([`Notice`]) names the schema,
/// so fleets in separate schemas of one database ignore each other.
pub const CHANNEL: &str = "sessionkey_fleet";

/// Serialises migrations among gateways and commands starting together (distinct from
/// the relay's lock).
const MIGRATION_LOCK: i64 = 0x5e55_f1ee;

/// The schema, one step per version; a database records the versions it has applied in
/// `sessionkey_fleet_migrations`, so a newer binary adds only the steps it lacks. Never
/// edit a shipped step: append a new one.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE sessionkey_fleet_peers (
        peer_group TEXT NOT NULL,
        key_line TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        comment TEXT NOT NULL DEFAULT '',
        added_by TEXT NOT NULL,
        added_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (peer_group, key_line));
     CREATE INDEX sessionkey_fleet_peers_by_fingerprint
        ON sessionkey_fleet_peers (peer_group, fingerprint)",
    ),
    (
        2,
        "CREATE TABLE sessionkey_fleet_gateways (
        gateway TEXT PRIMARY KEY,
        heartbeat_at TIMESTAMPTZ NOT NULL);
     CREATE TABLE sessionkey_fleet_sessions (
        gateway TEXT NOT NULL REFERENCES sessionkey_fleet_gateways ON DELETE CASCADE,
        tunnel TEXT NOT NULL,
        session_id TEXT NOT NULL,
        peer TEXT,
        transport TEXT NOT NULL,
        suite TEXT NOT NULL,
        send_epoch BIGINT,
        receive_epoch BIGINT,
        bytes_sent BIGINT NOT NULL,
        bytes_received BIGINT NOT NULL,
        started_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (gateway, tunnel, session_id))",
    ),
    (
        3,
        "CREATE TABLE sessionkey_fleet_ticket_keys (
        key_id BIGINT PRIMARY KEY,
        sealed BYTEA NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    ),
];

/// A fleet database failure, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// No connection could be made (server down, wrong host, port, credentials or name).
    #[error(
        "cannot reach the peers database {url}: {cause}; check that PostgreSQL runs there \
         and accepts connections from this host (pg_hba.conf), and that the URL's user, \
         password and database name are right"
    )]
    Unreachable {
        /// The URL, password removed.
        url: String,
        /// What failed (in the message already, so not a separate link of the chain).
        cause: sqlx::Error,
    },
    /// A statement failed on a connected database.
    #[error("peers database: {0}")]
    Database(#[from] sqlx::Error),
    /// The URL is not a PostgreSQL one.
    #[error("the peers database must be PostgreSQL (postgres://USER:PASSWORD@HOST/DB), not {0:?}")]
    UnsupportedUrl(String),
}

impl FleetError {
    /// Whether the database could not be reached (as opposed to a refused statement).
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Database(e) => is_connection_error(e),
            Self::UnsupportedUrl(_) => false,
        }
    }
}

/// Whether an error means the connection is gone (rather than a statement refused).
pub(crate) fn is_connection_error(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
    ) || e
        .as_database_error()
        .and_then(|d| d.code())
        // Class 08: connection exception; 57P0x: the server is shutting down.
        .is_some_and(|c| c.starts_with("08") || c.starts_with("57P"))
}

/// `url` with its password (in the authority or a `password=` parameter) replaced by
/// `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((auth, host)) => match auth.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => base.to_string(),
            },
            None => base.to_string(),
        },
        None => base.to_string(),
    };
    match query {
        Some(q) => {
            let params: Vec<String> = q
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{base}?{}", params.join("&"))
        }
        None => base,
    }
}

/// One authorized peer as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerRecord {
    /// The group (one per tunnel, or shared).
    pub group: String,
    /// The key.
    #[serde(serialize_with = "key_line")]
    pub key: PeerKey,
    /// `SHA256:...` of the key, as logs show it.
    pub fingerprint: String,
    /// Free text (who or what the key belongs to).
    pub comment: String,
    /// Who added it.
    pub added_by: String,
    /// When, in seconds since 1970 (UTC).
    pub added_at: i64,
}

fn key_line<S: serde::Serializer>(key: &PeerKey, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&key.to_line(""))
}

/// What [`FleetDb::add_peer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// The key is now authorized in the group.
    New,
    /// It already was; nothing changed.
    Already(PeerRecord),
}

/// What a gateway is told through [`CHANNEL`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Notice {
    /// The peers of `group` changed: reload them.
    Peers {
        /// The schema of the fleet's tables.
        schema: String,
        /// The group.
        group: String,
    },
    /// Close live sessions on every gateway (the key stays authorized; its client may
    /// connect again).
    Kick {
        /// The schema of the fleet's tables.
        schema: String,
        /// Which sessions.
        target: KickTarget,
    },
}

/// What `sessionkey peers kick` closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KickTarget {
    /// Every session of the key with this fingerprint (`SHA256:...`).
    Key(String),
    /// The session with this id (as `status` shows it).
    Session(String),
}

impl Notice {
    /// The schema the notice is about.
    pub fn schema(&self) -> &str {
        match self {
            Self::Peers { schema, .. } | Self::Kick { schema, .. } => schema,
        }
    }
}

/// The fleet database.
#[derive(Debug, Clone)]
pub struct FleetDb {
    pool: PgPool,
    url: String,
    schema: String,
}

impl FleetDb {
    /// Connect to `url` (`postgres://USER:PASSWORD@HOST[:PORT]/DB`; a
    /// `?options[search_path]=SCHEMA` keeps a fleet's tables in its own schema) and bring
    /// the schema up to date. Fails within about `timeout` if the database cannot be reached.
    pub async fn open(url: &str, timeout: Duration) -> Result<Self, FleetError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(FleetError::UnsupportedUrl(redact_url(url)));
        }
        let unreachable = |cause| FleetError::Unreachable {
            url: redact_url(url),
            cause,
        };
        let options: PgConnectOptions = url.parse().map_err(unreachable)?;
        let options = options.application_name("sessionkey");
        // One connection first, to report its own failure (refused, bad password, no such
        // database) rather than the pool's "timed out".
        let mut first = tokio::time::timeout(timeout, PgConnection::connect_with(&options))
            .await
            .map_err(|_| unreachable(sqlx::Error::PoolTimedOut))?
            .map_err(unreachable)?;
        let schema: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&mut first)
            .await
            .map_err(unreachable)?;
        let _ = first.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(timeout)
            .connect_lazy_with(options);
        let db = Self {
            pool,
            url: redact_url(url),
            schema,
        };
        db.migrate().await?;
        Ok(db)
    }

    /// The URL, password removed.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema holding the fleet's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The connection pool (for the gateway's own statements).
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn migrate(&self) -> Result<(), FleetError> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await?;
        let result = async {
            let exists: bool =
                sqlx::query_scalar("SELECT to_regclass('sessionkey_fleet_migrations') IS NOT NULL")
                    .fetch_one(&mut *conn)
                    .await?;
            if !exists {
                conn.execute(
                    "CREATE TABLE sessionkey_fleet_migrations (
                        version INTEGER PRIMARY KEY,
                        applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
                )
                .await?;
            }
            let done: Vec<i32> =
                sqlx::query_scalar("SELECT version FROM sessionkey_fleet_migrations")
                    .fetch_all(&mut *conn)
                    .await?;
            for (version, step) in MIGRATIONS {
                if done.contains(version) {
                    continue;
                }
                let mut tx = conn.begin().await?;
                tx.execute(*step).await?;
                sqlx::query("INSERT INTO sessionkey_fleet_migrations (version) VALUES ($1)")
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                tracing::info!(version, schema = %self.schema, "peers database: schema migrated");
            }
            Ok::<_, sqlx::Error>(())
        }
        .await;
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await?;
        Ok(result?)
    }

    /// Authorize `key` in `group`, and tell every gateway of the group.
    pub async fn add_peer(
        &self,
        group: &str,
        key: &PeerKey,
        comment: &str,
        added_by: &str,
    ) -> Result<Added, FleetError> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO sessionkey_fleet_peers (peer_group, key_line, fingerprint, comment, added_by)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(group)
        .bind(key.to_line(""))
        .bind(key.fingerprint().to_string())
        .bind(comment.trim())
        .bind(added_by)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            let existing = self
                .peers(group)
                .await?
                .into_iter()
                .find(|p| p.key == *key)
                .ok_or(FleetError::Database(sqlx::Error::RowNotFound))?;
            return Ok(Added::Already(existing));
        }
        self.notify_peers(&mut tx, group).await?;
        tx.commit().await?;
        Ok(Added::New)
    }

    /// Remove from `group` the peers `selector` names (a key, or a `SHA256:...`
    /// fingerprint), and tell every gateway of the group; returns what was removed.
    pub async fn remove_peer(
        &self,
        group: &str,
        selector: &PeerSelector,
    ) -> Result<Vec<PeerRecord>, FleetError> {
        let mut tx = self.pool.begin().await?;
        let (column, value) = selector.column();
        let rows = sqlx::query(&format!(
            "DELETE FROM sessionkey_fleet_peers WHERE peer_group = $1 AND {column} = $2
             RETURNING {PEER_COLUMNS}"
        ))
        .bind(group)
        .bind(value)
        .fetch_all(&mut *tx)
        .await?;
        let removed: Vec<PeerRecord> = rows.iter().filter_map(peer_from_row).collect();
        if !rows.is_empty() {
            self.notify_peers(&mut tx, group).await?;
        }
        tx.commit().await?;
        Ok(removed)
    }

    /// The peers of `group`, oldest first. A row that does not parse (written by hand) is
    /// left out with a warning naming it.
    pub async fn peers(&self, group: &str) -> Result<Vec<PeerRecord>, FleetError> {
        let rows = sqlx::query(&format!(
            "SELECT {PEER_COLUMNS} FROM sessionkey_fleet_peers WHERE peer_group = $1
             ORDER BY added_at, key_line"
        ))
        .bind(group)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().filter_map(peer_from_row).collect())
    }

    async fn notify_peers(
        &self,
        tx: &mut sqlx::PgTransaction<'_>,
        group: &str,
    ) -> Result<(), FleetError> {
        let notice = Notice::Peers {
            schema: self.schema.clone(),
            group: group.to_string(),
        };
        self.notify(tx, &notice).await
    }

    /// Send `notice` on [`CHANNEL`] when `tx` commits.
    pub(crate) async fn notify(
        &self,
        tx: &mut sqlx::PgTransaction<'_>,
        notice: &Notice,
    ) -> Result<(), FleetError> {
        let payload = serde_json::to_string(notice).unwrap_or_default();
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Ask every gateway to close the sessions `target` names.
    pub async fn kick(&self, target: KickTarget) -> Result<(), FleetError> {
        let mut tx = self.pool.begin().await?;
        let notice = Notice::Kick {
            schema: self.schema.clone(),
            target,
        };
        self.notify(&mut tx, &notice).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A listener on [`CHANNEL`], on a connection of its own.
    pub async fn listen(&self) -> Result<PgListener, FleetError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(listener)
    }
}

/// Seconds since 1970 as `YYYY-MM-DD HH:MM:SS UTC` (before 1970: the epoch).
pub fn utc(secs: i64) -> String {
    crate::tls::utc(u64::try_from(secs).unwrap_or(0))
}

const PEER_COLUMNS: &str = "peer_group, key_line, fingerprint, comment, added_by, \
    FLOOR(EXTRACT(EPOCH FROM added_at))::BIGINT AS added_at";

fn peer_from_row(row: &sqlx::postgres::PgRow) -> Option<PeerRecord> {
    let parsed = (|| {
        let line: String = row.try_get("key_line").map_err(|e| e.to_string())?;
        let key: PeerKey = line.parse().map_err(|e| format!("key {line:?}: {e}"))?;
        Ok::<_, String>(PeerRecord {
            group: row.try_get("peer_group").map_err(|e| e.to_string())?,
            fingerprint: key.fingerprint().to_string(),
            key,
            comment: row.try_get("comment").map_err(|e| e.to_string())?,
            added_by: row.try_get("added_by").map_err(|e| e.to_string())?,
            added_at: row.try_get("added_at").map_err(|e| e.to_string())?,
        })
    })();
    match parsed {
        Ok(p) => Some(p),
        Err(why) => {
            tracing::warn!(
                "peers database: a row of sessionkey_fleet_peers is not a valid peer and is \
                 ignored ({why}); remove it with `sessionkey peers remove`, or fix it in SQL"
            );
            None
        }
    }
}

/// Which peers a removal names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSelector {
    /// One key.
    Key(PeerKey),
    /// Every key with this fingerprint (`SHA256:...`).
    Fingerprint(String),
}

impl PeerSelector {
    fn column(&self) -> (&'static str, String) {
        match self {
            Self::Key(k) => ("key_line", k.to_line("")),
            Self::Fingerprint(f) => ("fingerprint", f.clone()),
        }
    }
}

impl std::str::FromStr for PeerSelector {
    type Err = crate::trust::ParsePeerKeyError;

    /// A fingerprint as logs show it (`SHA256:...`), or a key as trust files hold it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.starts_with("SHA256:") {
            return Ok(Self::Fingerprint(s.to_string()));
        }
        s.parse().map(Self::Key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("postgres://gw:s3cret@db.example:5432/fleet"),
            "postgres://gw:***@db.example:5432/fleet"
        );
        assert_eq!(
            redact_url("postgres://gw@db/fleet"),
            "postgres://gw@db/fleet"
        );
        assert_eq!(redact_url("postgres://db/fleet"), "postgres://db/fleet");
        assert_eq!(
            redact_url("postgres://gw@db/fleet?sslmode=require&password=s3cret"),
            "postgres://gw@db/fleet?sslmode=require&password=***"
        );
        assert_eq!(
            redact_url("postgres://gw:a@b@db/f?options[search_path]=x"),
            "postgres://gw:***@db/f?options[search_path]=x"
        );
    }

    #[test]
    fn notices_round_trip_as_json() {
        let n = Notice::Peers {
            schema: "public".into(),
            group: "web".into(),
        };
        let text = serde_json::to_string(&n).unwrap();
        assert_eq!(text, r#"{"event":"peers","schema":"public","group":"web"}"#);
        assert_eq!(serde_json::from_str::<Notice>(&text).unwrap(), n);
    }
}
