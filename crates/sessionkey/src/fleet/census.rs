//! Fleet status: each gateway writes its live sessions to the database with a heartbeat;
//! `sessionkey status --database URL` reads every gateway's rows at once.
//!
//! A row holds what `sessionkey status` shows locally: the session id, the peer key's
//! fingerprint, the transport and suite, the epochs and the bytes, and the gateway's name.
//! Never a key: a session key never leaves its process, and a peer key is only named by
//! its fingerprint. Rows of a gateway whose heartbeat is older than [`STALE_AFTER`] are shown
//! as stale; after [`REMOVE_AFTER`] any other gateway's heartbeat deletes them.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

use super::db::{FleetDb, FleetError};
use crate::status::Registry;

/// How often a gateway writes its sessions.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A gateway silent for this long is shown as stale.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// A gateway silent for this long is deleted, with its sessions.
pub const REMOVE_AFTER: Duration = Duration::from_secs(30);

/// One live session as a gateway reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionRow {
    /// The tunnel's name on its gateway.
    pub tunnel: String,
    /// The session id (as `sessionkey status` shows it).
    pub session: String,
    /// `SHA256:...` of the peer's key, if it proved one.
    pub peer: Option<String>,
    /// `native` or `tls`.
    pub transport: String,
    /// The record suite.
    pub suite: String,
    /// The sending key's epoch.
    pub send_epoch: Option<i64>,
    /// The receiving key's epoch (native transport).
    pub receive_epoch: Option<i64>,
    /// Plaintext bytes sent.
    pub bytes_sent: i64,
    /// Plaintext bytes received.
    pub bytes_received: i64,
    /// How long the session has been up, in seconds.
    pub age_secs: i64,
}

/// One gateway and its sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatewayRow {
    /// `HOST:PID`.
    pub gateway: String,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_secs: i64,
    /// Silent for longer than [`STALE_AFTER`]: its sessions may be gone.
    pub stale: bool,
    /// Its live sessions at the last heartbeat.
    pub sessions: Vec<SessionRow>,
}

/// This process's name in the fleet: `HOST:PID`.
pub fn gateway_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// The server sessions of `tunnel` in `registry`, as rows.
fn rows_of(registry: &Registry, tunnel: &str) -> Vec<SessionRow> {
    let snapshot = registry.snapshot();
    let int = |v: &Value| v.as_i64();
    snapshot["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["tunnel"] == tunnel && s["role"] == "server" && s["session"].is_string())
        .map(|s| SessionRow {
            tunnel: tunnel.to_string(),
            session: s["session"].as_str().unwrap_or_default().to_string(),
            peer: s["peer"].as_str().map(str::to_string),
            transport: s["transport"].as_str().unwrap_or("native").to_string(),
            suite: s["suite"].as_str().unwrap_or_default().to_string(),
            send_epoch: int(&s["send"]["epoch"]),
            receive_epoch: int(&s["receive"]["epoch"]),
            bytes_sent: int(&s["send"]["bytes"]).unwrap_or(0),
            bytes_received: int(&s["receive"]["bytes"]).unwrap_or(0),
            age_secs: int(&s["age_secs"]).unwrap_or(0),
        })
        .collect()
}

impl FleetDb {
    /// Replace what `gateway` reported for `tunnel` with `rows`, stamp its heartbeat, and
    /// delete gateways silent for longer than [`REMOVE_AFTER`].
    pub async fn heartbeat(
        &self,
        gateway: &str,
        tunnel: &str,
        rows: &[SessionRow],
    ) -> Result<(), FleetError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO sessionkey_fleet_gateways (gateway, heartbeat_at) VALUES ($1, now())
             ON CONFLICT (gateway) DO UPDATE SET heartbeat_at = now()",
        )
        .bind(gateway)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM sessionkey_fleet_sessions WHERE gateway = $1 AND tunnel = $2")
            .bind(gateway)
            .bind(tunnel)
            .execute(&mut *tx)
            .await?;
        if !rows.is_empty() {
            let col = |f: fn(&SessionRow) -> Option<String>| -> Vec<Option<String>> {
                rows.iter().map(f).collect()
            };
            let num = |f: fn(&SessionRow) -> Option<i64>| -> Vec<Option<i64>> {
                rows.iter().map(f).collect()
            };
            sqlx::query(
                "INSERT INTO sessionkey_fleet_sessions (gateway, tunnel, session_id, peer,
                    transport, suite, send_epoch, receive_epoch, bytes_sent, bytes_received,
                    started_at)
                 SELECT $1, $2, s, p, t, su, se, re, bs, br, now() - make_interval(secs => a)
                 FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[],
                    $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[])
                    AS u(s, p, t, su, se, re, bs, br, a)
                 ON CONFLICT DO NOTHING",
            )
            .bind(gateway)
            .bind(tunnel)
            .bind(col(|r| Some(r.session.clone())))
            .bind(col(|r| r.peer.clone()))
            .bind(col(|r| Some(r.transport.clone())))
            .bind(col(|r| Some(r.suite.clone())))
            .bind(num(|r| r.send_epoch))
            .bind(num(|r| r.receive_epoch))
            .bind(num(|r| Some(r.bytes_sent)))
            .bind(num(|r| Some(r.bytes_received)))
            .bind(num(|r| Some(r.age_secs)))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "DELETE FROM sessionkey_fleet_gateways
             WHERE heartbeat_at < now() - make_interval(secs => $1)",
        )
        .bind(REMOVE_AFTER.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Remove `gateway`'s rows (it is stopping).
    pub async fn leave(&self, gateway: &str) -> Result<(), FleetError> {
        sqlx::query("DELETE FROM sessionkey_fleet_gateways WHERE gateway = $1")
            .bind(gateway)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Every gateway and its sessions, by name.
    pub async fn census(&self) -> Result<Vec<GatewayRow>, FleetError> {
        let gateways = sqlx::query(
            "SELECT gateway, FLOOR(EXTRACT(EPOCH FROM now() - heartbeat_at))::BIGINT AS age
             FROM sessionkey_fleet_gateways ORDER BY gateway",
        )
        .fetch_all(self.pool())
        .await?;
        let sessions = sqlx::query(
            "SELECT gateway, tunnel, session_id, peer, transport, suite, send_epoch,
                receive_epoch, bytes_sent, bytes_received,
                FLOOR(EXTRACT(EPOCH FROM now() - started_at))::BIGINT AS age
             FROM sessionkey_fleet_sessions ORDER BY gateway, tunnel, started_at",
        )
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(gateways.len());
        for g in &gateways {
            let name: String = g.try_get("gateway")?;
            let age: i64 = g.try_get("age")?;
            let mut rows = Vec::new();
            for s in sessions.iter() {
                if s.try_get::<String, _>("gateway")? != name {
                    continue;
                }
                rows.push(SessionRow {
                    tunnel: s.try_get("tunnel")?,
                    session: s.try_get("session_id")?,
                    peer: s.try_get("peer")?,
                    transport: s.try_get("transport")?,
                    suite: s.try_get("suite")?,
                    send_epoch: s.try_get("send_epoch")?,
                    receive_epoch: s.try_get("receive_epoch")?,
                    bytes_sent: s.try_get("bytes_sent")?,
                    bytes_received: s.try_get("bytes_received")?,
                    age_secs: s.try_get("age")?,
                });
            }
            out.push(GatewayRow {
                stale: age > i64::try_from(STALE_AFTER.as_secs()).unwrap_or(i64::MAX),
                gateway: name,
                heartbeat_age_secs: age,
                sessions: rows,
            });
        }
        Ok(out)
    }
}

/// Write `tunnel`'s live sessions from `registry` every [`HEARTBEAT`] until the task is
/// dropped. Failures are retried at the next beat (the peers' follower logs outages).
pub async fn report(url: String, gateway: String, tunnel: String, registry: Registry) {
    let mut db: Option<FleetDb> = None;
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if db.is_none() {
            db = FleetDb::open(&url, super::gateway::CONNECT_TIMEOUT)
                .await
                .ok();
        }
        let Some(conn) = &db else { continue };
        if let Err(e) = conn
            .heartbeat(&gateway, &tunnel, &rows_of(&registry, &tunnel))
            .await
        {
            tracing::debug!(%tunnel, "fleet status heartbeat failed: {e}");
            if e.is_unreachable() {
                db = None;
            }
        }
    }
}
