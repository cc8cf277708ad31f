//! Prometheus metrics of tunnel sessions at `/metrics` (`--metrics ADDR`).
//!
//! Every value is read at scrape time from the counters sessions keep for `sessionkey
//! status` anyway ([`Registry::series`]), so the data path pays nothing for metrics. Labels
//! are the tunnel's name, the role and the transport: never a key, a fingerprint or an
//! address.

use std::fmt::Write as _;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use tokio::net::TcpListener;

use crate::status::{Counts, Registry};

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug)]
struct Sessions(Registry);

type Labels = [(&'static str, String); 3];

impl Collector for Sessions {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let series = self.0.series();
        let labels = |s: &crate::status::Series| -> Labels {
            [
                ("tunnel", s.key.0.clone()),
                ("role", s.key.1.to_string()),
                ("transport", s.key.2.clone()),
            ]
        };
        {
            let gauge = ConstGauge::new(0i64);
            let mut family = encoder.encode_descriptor(
                "sessionkey_sessions",
                "Established sessions now.",
                None,
                gauge.metric_type(),
            )?;
            for s in &series {
                let l = labels(s);
                ConstGauge::new(i64::try_from(s.live).unwrap_or(i64::MAX))
                    .encode(family.encode_family(&l)?)?;
            }
        }
        type Level = fn(&crate::status::Series) -> f64;
        let levels: [(&str, &str, Level); 2] = [
            (
                "sessionkey_key_epoch_age_seconds",
                "Age of the oldest sending key among live sessions.",
                |s| s.oldest_key_secs,
            ),
            (
                "sessionkey_aead_limit_used_ratio",
                "Largest share of its AEAD usage limit a live sending key has used (keys are \
                 replaced at 0.5; native transport).",
                |s| s.aead_limit_used,
            ),
        ];
        for (name, help, get) in levels {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstGauge::new(0.0f64).metric_type(),
            )?;
            for s in &series {
                let l = labels(s);
                ConstGauge::new(get(s)).encode(family.encode_family(&l)?)?;
            }
        }
        type Get = fn(&Counts) -> u64;
        let counters: [(&str, &str, Get); 5] = [
            (
                "sessionkey_sessions_established",
                "Sessions established since start (successful handshakes).",
                |c| c.established,
            ),
            (
                "sessionkey_rehandshakes",
                "Re-handshakes of established sessions (native transport).",
                |c| c.rehandshakes,
            ),
            (
                "sessionkey_sessions_ended",
                "Sessions ended since start.",
                |c| c.sessions,
            ),
            (
                "sessionkey_forced_key_updates",
                "Sending-key updates forced by the AEAD usage limit (half of it) before the \
                 configured interval.",
                |c| c.forced_key_updates,
            ),
            (
                "sessionkey_decryption_failures",
                "Records that failed to decrypt (native transport; a TLS session ends at its \
                 first).",
                |c| c.failed_decryptions,
            ),
        ];
        for (name, help, get) in counters {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for s in &series {
                let l = labels(s);
                ConstCounter::new(get(&s.totals)).encode(family.encode_family(&l)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "sessionkey_handshakes",
                "Server handshakes by result (ok, failed, refused) and reason.",
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for ((tunnel, result, reason), n) in self.0.handshakes() {
                let l = [
                    ("tunnel", tunnel),
                    ("result", result.to_string()),
                    ("reason", reason.to_string()),
                ];
                ConstCounter::new(n).encode(family.encode_family(&l)?)?;
            }
        }
        {
            let fleets = self.0.fleets();
            let now = std::time::SystemTime::now();
            type Get = fn(&crate::fleet::gateway::FleetPeers, std::time::SystemTime) -> i64;
            let gauges: [(&str, &str, Get); 2] = [
                (
                    "sessionkey_peers_database_up",
                    "Whether the fleet database the tunnel takes its peers from is reachable (1) or not (0).",
                    |f, _| i64::from(f.is_up()),
                ),
                (
                    "sessionkey_peers_list_age_seconds",
                    "Age of the authorized-peers list in use (read from the fleet database, or its cache).",
                    |f, now| i64::try_from(f.age(now).as_secs()).unwrap_or(i64::MAX),
                ),
            ];
            for (name, help, get) in gauges {
                if fleets.is_empty() {
                    break;
                }
                let mut family = encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    ConstGauge::new(0i64).metric_type(),
                )?;
                for f in &fleets {
                    let l = [("tunnel", f.tunnel().to_string())];
                    ConstGauge::new(get(f, now)).encode(family.encode_family(&l)?)?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "sessionkey_accept_errors",
                "Failed accepts on a tunnel's listener (out of descriptors, aborted \
                 connections); retried after a pause.",
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for (tunnel, n) in self.0.accept_errors() {
                ConstCounter::new(n).encode(family.encode_family(&[("tunnel", tunnel)])?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "sessionkey_handshake_duration",
                "Server handshakes from the accepted connection to the session (or failure).",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for ((tunnel, result), histogram) in self.0.handshake_durations() {
                let l = [("tunnel", tunnel), ("result", result.to_string())];
                histogram.encode(family.encode_family(&l)?)?;
            }
        }
        type Pair = fn(&Counts) -> (u64, u64);
        let by_direction: [(&str, &str, Pair); 3] = [
            (
                "sessionkey_transferred_bytes",
                "Plaintext bytes carried by sessions, by direction.",
                |c| (c.bytes_sent, c.bytes_received),
            ),
            (
                "sessionkey_records",
                "Encrypted records, by direction.",
                |c| (c.records_sent, c.records_received),
            ),
            (
                "sessionkey_key_updates",
                "Key updates (not re-handshakes), by direction (receive: native transport).",
                |c| (c.key_updates_sent, c.key_updates_received),
            ),
        ];
        for (name, help, get) in by_direction {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for s in &series {
                let (sent, received) = get(&s.totals);
                for (direction, value) in [("send", sent), ("receive", received)] {
                    let [a, b, c] = labels(s);
                    let l = [a, b, c, ("direction", direction.to_string())];
                    ConstCounter::new(value).encode(family.encode_family(&l)?)?;
                }
            }
        }
        Ok(())
    }
}

/// A VPN's metrics, from its `vpn show` snapshot (read at scrape time: the packet threads
/// keep these counters anyway). Per peer they carry the names of the WireGuard exporters
/// (`wireguard_latest_handshake_seconds`, `wireguard_sent_bytes_total`,
/// `wireguard_received_bytes_total`) under `sessionkey_vpn_`, labelled by the interface and
/// the peer's fingerprint prefix (`SHA256:` and 11 characters), never its key.
#[derive(Debug)]
struct Vpn(serde_json::Value);

impl Collector for Vpn {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let v = &self.0;
        let interface = v["interface"].as_str().unwrap_or_default().to_string();
        let peers: Vec<&serde_json::Value> = v["peers"].as_array().into_iter().flatten().collect();
        let n = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
        {
            let mut family = encoder.encode_descriptor(
                "sessionkey_vpn_peers",
                "Peers of the interface.",
                None,
                ConstGauge::new(0i64).metric_type(),
            )?;
            ConstGauge::new(i64::try_from(peers.len()).unwrap_or(i64::MAX))
                .encode(family.encode_family(&[("interface", interface.clone())])?)?;
        }
        let peer_labels = |p: &serde_json::Value| {
            let fingerprint = p["fingerprint"].as_str().unwrap_or_default();
            [
                ("interface", interface.clone()),
                ("peer", fingerprint.chars().take(7 + 11).collect::<String>()),
            ]
        };
        {
            let mut family = encoder.encode_descriptor(
                "sessionkey_vpn_latest_handshake_seconds",
                "When the latest handshake with the peer completed, in seconds since the Unix \
                 epoch; 0 for never (wireguard_latest_handshake_seconds).",
                None,
                ConstGauge::new(0i64).metric_type(),
            )?;
            for p in &peers {
                let at = i64::try_from(n(&p["latest_handshake_unix"])).unwrap_or(i64::MAX);
                ConstGauge::new(at).encode(family.encode_family(&peer_labels(p))?)?;
            }
        }
        type Field = (&'static str, &'static str, &'static str);
        let counters: [Field; 4] = [
            (
                "sessionkey_vpn_sent_bytes",
                "Bytes sent to the peer (wireguard_sent_bytes_total).",
                "tx_bytes",
            ),
            (
                "sessionkey_vpn_received_bytes",
                "Bytes received from the peer (wireguard_received_bytes_total).",
                "rx_bytes",
            ),
            (
                "sessionkey_vpn_handshakes",
                "Completed handshakes with the peer.",
                "handshakes",
            ),
            (
                "sessionkey_vpn_rejected_packets",
                "Data packets from the peer that failed to open (replay, forgery, expired key).",
                "rejected",
            ),
        ];
        for (name, help, field) in counters {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for p in &peers {
                ConstCounter::new(n(&p[field])).encode(family.encode_family(&peer_labels(p))?)?;
            }
        }
        Ok(())
    }
}

/// A VPN's metrics in the Prometheus text format, from its `vpn show` snapshot.
pub(crate) fn render_vpn(snapshot: serde_json::Value) -> String {
    encode(Box::new(Vpn(snapshot)))
}

/// What a relay's metrics show: its counters since start and what it holds now. Nothing in
/// it names a user or an address.
#[derive(Debug, Clone, Default)]
pub struct RelayMetrics {
    /// Devices registered or updated since start.
    pub registrations: u64,
    /// One-time prekeys stored since start.
    pub prekeys_uploaded: u64,
    /// Bundles handed out since start.
    pub bundles: u64,
    /// Messages accepted into a queue since start.
    pub messages_queued: u64,
    /// Messages handed to their recipient since start (each fetch counts).
    pub messages_fetched: u64,
    /// Messages delivered: acknowledged by the recipient and deleted, since start.
    pub messages_delivered: u64,
    /// Messages deleted unfetched at the expiry time, since start.
    pub messages_expired: u64,
    /// Requests refused for authentication since start.
    pub auth_refused: u64,
    /// Requests refused by a rate limit or quota since start.
    pub rate_limited: u64,
    /// Registered devices now (`None`: the database did not answer).
    pub devices: Option<u64>,
    /// Messages waiting for their recipient now (`None`: the database did not answer).
    pub messages_waiting: Option<u64>,
    /// Devices by one-time prekeys available: (kind, bucket such as `10-99`, devices).
    pub prekeys: Vec<(&'static str, String, u64)>,
}

impl Collector for RelayMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let none: [(&str, &str); 0] = [];
        let counters = [
            (
                "sessionkey_relay_registrations",
                "Devices registered or updated.",
                self.registrations,
            ),
            (
                "sessionkey_relay_prekeys_uploaded",
                "One-time prekeys stored.",
                self.prekeys_uploaded,
            ),
            (
                "sessionkey_relay_bundles",
                "Prekey bundles handed out.",
                self.bundles,
            ),
            (
                "sessionkey_relay_messages_queued",
                "Messages accepted into a queue.",
                self.messages_queued,
            ),
            (
                "sessionkey_relay_messages_fetched",
                "Messages handed to their recipient (each fetch counts).",
                self.messages_fetched,
            ),
            (
                "sessionkey_relay_messages_delivered",
                "Messages acknowledged by their recipient and deleted.",
                self.messages_delivered,
            ),
            (
                "sessionkey_relay_messages_expired",
                "Messages deleted unfetched at the expiry time.",
                self.messages_expired,
            ),
            (
                "sessionkey_relay_auth_refused",
                "Requests refused for authentication.",
                self.auth_refused,
            ),
            (
                "sessionkey_relay_rate_limited",
                "Requests refused by a rate limit or quota.",
                self.rate_limited,
            ),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            ConstCounter::new(value).encode(family.encode_family(&none)?)?;
        }
        let gauges = [
            (
                "sessionkey_relay_devices",
                "Registered devices.",
                self.devices,
            ),
            (
                "sessionkey_relay_messages_waiting",
                "Messages waiting for their recipient.",
                self.messages_waiting,
            ),
        ];
        for (name, help, value) in gauges {
            let Some(value) = value else { continue };
            let mut family =
                encoder.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
            ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
                .encode(family.encode_family(&none)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "sessionkey_relay_prekeys_available_devices",
            "Devices by the one-time prekeys they have left, by kind (x25519, mlkem) and \
             bucket (0, 1-9, 10-99, 100-999, 1000+); never by device.",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for (kind, bucket, devices) in &self.prekeys {
            let l = [("kind", kind.to_string()), ("available", bucket.clone())];
            ConstGauge::new(i64::try_from(*devices).unwrap_or(i64::MAX))
                .encode(family.encode_family(&l)?)?;
        }
        Ok(())
    }
}

/// A relay's metrics in the Prometheus text format.
pub fn render_relay(metrics: RelayMetrics) -> String {
    encode(Box::new(metrics))
}

/// A failed server handshake as a fixed word for the `reason` label.
pub(crate) fn failure_reason(e: &std::io::Error) -> &'static str {
    use sessionkey_proto::handshake::Refusal;
    use sessionkey_proto::Error;
    if let Some(p) = crate::protocol_error(e) {
        return match p {
            Error::Refused(Refusal::KeyNotAuthorized) => "key_not_authorized",
            Error::Refused(Refusal::UndecryptableHello) => "undecryptable_hello",
            Error::Refused(_) => "policy",
            Error::PeerMisbehaved(_) => "peer_misbehaved",
            Error::Timeout(_) => "timeout",
            _ => "protocol",
        };
    }
    if crate::tls::rustls_error(e).is_some() {
        return "tls";
    }
    match e.kind() {
        std::io::ErrorKind::TimedOut => "timeout",
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted => "connection_closed",
        _ => "other",
    }
}

/// The metrics of `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    encode(Box::new(Sessions(registry.clone())))
}

fn encode(collector: Box<dyn Collector>) -> String {
    let mut r = prometheus_client::registry::Registry::default();
    r.register_collector(collector);
    let mut out = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut out, &r).is_err() {
        out.clear();
        let _ = writeln!(out, "# metrics could not be encoded");
    }
    out
}

/// Serves `GET /metrics` on `listener` until the task is dropped; other paths get 404.
pub async fn serve(listener: TcpListener, registry: Registry) {
    serve_with(listener, move || std::future::ready(render(&registry))).await
}

/// Serves `GET /metrics` on `listener`, the body made by `render` at each scrape.
pub async fn serve_with<F, Fut>(listener: TcpListener, render: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = String> + Send + 'static,
{
    let render = std::sync::Arc::new(render);
    loop {
        let (stream, _): (_, SocketAddr) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!("metrics: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let render = render.clone();
                async move {
                    let wanted = req.method() == Method::GET && req.uri().path() == "/metrics";
                    let body = if wanted { Some(render().await) } else { None };
                    Ok::<_, std::convert::Infallible>(respond(body))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(io, service);
            if let Err(e) = conn.await {
                tracing::debug!("metrics: connection ended: {e}");
            }
        });
    }
}

/// The metrics for `GET /metrics`, else 404.
fn respond(metrics: Option<String>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if let Some(metrics) = metrics {
        (StatusCode::OK, CONTENT_TYPE, metrics)
    } else {
        (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are at GET /metrics\n".to_string(),
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}
