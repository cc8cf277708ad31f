//! The relay's HTTP/JSON API over TLS (docs/MESSAGING.md, "Relay API"): axum routes served by
//! hyper on tokio-rustls connections, signed-request authentication, bundle rate limits,
//! long-poll and WebSocket push, and the expiry task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use sessionkey_proto::msg::api::{
    self, Ack, AuthHeaders, BundleResponse, DeviceStatus, ErrorBody, Inbox, Push, RegisterRequest,
    RetirePrekeys, SendResponse, UploadPrekeys,
};
use sessionkey_proto::msg::{
    IdentityKey, KemPrekey, OneTimePrekey, PrekeyBundle, SignedPrekey, MAX_ENVELOPE_LEN,
    MAX_HELD_ONE_TIME_PREKEYS,
};

use crate::ratelimit::{Rate, RateLimiter};
use crate::storage::{DeviceRecord, Registered, Storage, StorageError, KIND_KEM, KIND_ONE_TIME};

/// How the relay runs: its quotas (docs/MESSAGING.md, "Relay quotas", gives the defaults).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Bundle requests per requester.
    pub bundles_per_requester: Rate,
    /// Bundle requests per (requester, target).
    pub bundles_per_target: Rate,
    /// Bundle requests per target, from all requesters together: many fresh accounts
    /// cannot drain one device's one-time prekeys faster than this.
    pub bundles_per_target_total: Rate,
    /// Registrations of new names per source address.
    pub registrations_per_address: Rate,
    /// Messages sent per sender.
    pub sends_per_sender: Rate,
    /// Messages waiting per recipient; more are refused until it fetches.
    pub max_queue_per_recipient: u64,
    /// One-time prekeys held per device and kind; uploads beyond are refused.
    pub max_prekeys_per_device: u64,
    /// Push connections (WebSocket and waiting long-polls) per account.
    pub max_push_per_account: usize,
    /// Push connections in all.
    pub max_push_total: usize,
    /// How often the expiry task runs.
    pub expiry_interval: Duration,
    /// How often waiting requests and push connections look at the database for messages
    /// queued through another relay process, when nothing tells them (SQLite; PostgreSQL
    /// while its LISTEN connection is down).
    pub poll_interval: Duration,
    /// The same, while PostgreSQL's `LISTEN` connection delivers notifications: a safety net
    /// only.
    pub notified_poll_interval: Duration,
    /// How often the relay logs its counters.
    pub stats_interval: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            bundles_per_requester: Rate {
                burst: 100,
                refill: Duration::from_secs(1),
            },
            bundles_per_target: Rate {
                burst: 10,
                refill: Duration::from_secs(6),
            },
            bundles_per_target_total: Rate {
                burst: 100,
                refill: Duration::from_secs(10),
            },
            registrations_per_address: Rate {
                burst: 20,
                refill: Duration::from_secs(180),
            },
            sends_per_sender: Rate {
                burst: 1000,
                refill: Duration::from_millis(2),
            },
            max_queue_per_recipient: 10_000,
            max_prekeys_per_device: MAX_HELD_ONE_TIME_PREKEYS as u64,
            max_push_per_account: 4,
            max_push_total: 10_000,
            expiry_interval: Duration::from_secs(3600),
            poll_interval: Duration::from_millis(250),
            notified_poll_interval: Duration::from_secs(30),
            stats_interval: Duration::from_secs(60),
        }
    }
}

/// Counters the relay logs (never bodies, keys or names).
#[derive(Debug, Default)]
pub struct Counters {
    /// Devices registered or updated.
    pub registrations: AtomicU64,
    /// One-time prekeys stored.
    pub prekeys_uploaded: AtomicU64,
    /// Bundles handed out.
    pub bundles: AtomicU64,
    /// Messages queued.
    pub messages_queued: AtomicU64,
    /// Messages handed to their recipient (each fetch counts).
    pub messages_fetched: AtomicU64,
    /// Messages acknowledged and deleted.
    pub messages_acked: AtomicU64,
    /// Messages deleted unfetched after the expiry time.
    pub messages_expired: AtomicU64,
    /// Requests refused for authentication.
    pub auth_refused: AtomicU64,
    /// Requests refused by a rate limit or quota.
    pub rate_limited: AtomicU64,
}

struct Relay {
    storage: Storage,
    config: RelayConfig,
    per_requester: RateLimiter,
    per_target: RateLimiter,
    per_target_total: RateLimiter,
    per_address: RateLimiter,
    per_sender: RateLimiter,
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    /// Push connections per account, and their total.
    pushes: Mutex<(HashMap<String, usize>, usize)>,
    /// Whether PostgreSQL notifications arrive (waiters then poll rarely).
    listening: AtomicBool,
    counters: Arc<Counters>,
}

/// One push connection counted against the quotas until dropped.
struct PushSlot<'a> {
    relay: &'a Relay,
    name: String,
}

impl Drop for PushSlot<'_> {
    fn drop(&mut self) {
        let mut p = self.relay.pushes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = p.0.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                p.0.remove(&self.name);
            }
        }
        p.1 = p.1.saturating_sub(1);
    }
}

impl Relay {
    /// Count a push connection (WebSocket or waiting fetch) of `name`, or refuse it.
    fn push_slot(&self, name: &str) -> ApiResult<PushSlot<'_>> {
        let mut p = self.pushes.lock().unwrap_or_else(|e| e.into_inner());
        let mine = p.0.get(name).copied().unwrap_or(0);
        if mine >= self.config.max_push_per_account || p.1 >= self.config.max_push_total {
            self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many push connections for this account (or on this relay); close one and try again",
            ));
        }
        *p.0.entry(name.to_string()).or_insert(0) += 1;
        p.1 += 1;
        Ok(PushSlot {
            relay: self,
            name: name.to_string(),
        })
    }

    fn poll_interval(&self) -> Duration {
        if self.listening.load(Ordering::Relaxed) {
            self.config.notified_poll_interval
        } else {
            self.config.poll_interval
        }
    }

    fn wake_all(&self) {
        let w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for n in w.values() {
            n.notify_waiters();
        }
    }

    fn notify_for(&self, name: &str) -> Arc<Notify> {
        let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        w.entry(name.to_string()).or_default().clone()
    }

    fn wake(&self, name: &str) {
        let w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = w.get(name) {
            n.notify_waiters();
        }
    }

    fn prune_waiters(&self) {
        let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|_, n| Arc::strong_count(n) > 1);
    }
}

fn unix_now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// An error answer: a status and a sentence for people.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self(status, msg.into())
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        tracing::error!(error = %e, "storage failure");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the relay's database failed; try again later",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Check a signed request. `claimed` is the identity a registration presents (used when the
/// name is not registered yet). Returns the caller's name.
async fn authenticate(
    relay: &Relay,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    claimed: Option<&IdentityKey>,
) -> ApiResult<String> {
    let refuse = |msg: &str| {
        relay.counters.auth_refused.fetch_add(1, Ordering::Relaxed);
        ApiError::new(StatusCode::UNAUTHORIZED, msg)
    };
    let auth = AuthHeaders::from_lookup(|h| headers.get(h).and_then(|v| v.to_str().ok()))
        .ok_or_else(|| refuse("missing or malformed authentication headers"))?;
    if !api::valid_name(&auth.name) {
        return Err(refuse("invalid device name"));
    }
    let now = unix_now();
    let time = i64::try_from(auth.time).unwrap_or(i64::MAX);
    if now.abs_diff(time) > api::MAX_CLOCK_SKEW_SECS {
        return Err(refuse(
            "request time is more than 5 minutes from the relay's clock; check this machine's clock",
        ));
    }
    let identity = match relay.storage.device(&auth.name).await? {
        Some(d) => IdentityKey::from_bytes(&d.identity).map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "stored identity unreadable",
            )
        })?,
        None => match claimed {
            Some(id) => *id,
            None => {
                return Err(refuse(
                    "unknown device; register it first (sessionkey msg init)",
                ))
            }
        },
    };
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    if !auth.verify(&identity, method.as_str(), path, body) {
        // A registration signed by its own new identity, for a name another identity
        // holds: the name is taken (409, as documented), not a bad signature.
        if claimed.is_some_and(|c| auth.verify(c, method.as_str(), path, body)) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "the name {:?} is taken by another identity; choose another with --name",
                    auth.name
                ),
            ));
        }
        return Err(refuse("bad request signature"));
    }
    let expires = time.saturating_add(2 * api::MAX_CLOCK_SKEW_SECS as i64);
    if !relay
        .storage
        .use_nonce(&auth.name, &auth.nonce, expires)
        .await?
    {
        return Err(refuse("replayed request (nonce already used)"));
    }
    Ok(auth.name)
}

fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, msg)
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("malformed JSON body: {e}")))
}

async fn register(
    State(relay): State<Arc<Relay>>,
    axum::Extension(peer): axum::Extension<SocketAddr>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<DeviceStatus>> {
    let req: RegisterRequest = parse_json(&body)?;
    let identity = IdentityKey::from_bytes(&req.identity.0)
        .map_err(|e| bad_request(format!("identity: {e}")))?;
    let caller = authenticate(&relay, &method, &uri, &headers, &body, Some(&identity)).await?;
    if caller != name {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a device registers its own name only",
        ));
    }
    let spk = SignedPrekey::from_bytes(&req.signed_prekey.0)
        .map_err(|e| bad_request(format!("signed prekey: {e}")))?;
    spk.verify(&identity)
        .map_err(|e| bad_request(format!("signed prekey: {e}")))?;
    let kem = KemPrekey::from_bytes(&req.last_resort_kem.0)
        .map_err(|e| bad_request(format!("last-resort KEM prekey: {e}")))?;
    if !kem.is_last_resort() {
        return Err(bad_request(
            "last_resort_kem is not a last-resort KEM prekey",
        ));
    }
    kem.verify(&identity)
        .map_err(|e| bad_request(format!("last-resort KEM prekey: {e}")))?;
    if relay.storage.device(&name).await?.is_none()
        && !relay
            .per_address
            .allow(&peer.ip().to_string(), Instant::now())
    {
        relay.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many new registrations from this address; try again in an hour",
        ));
    }
    let record = DeviceRecord {
        identity: req.identity.0,
        signed_prekey: req.signed_prekey.0,
        last_resort_kem: req.last_resort_kem.0,
    };
    match relay.storage.register(&name, &record, unix_now()).await? {
        Registered::NameTaken => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "the name {name:?} is taken by another identity; choose another with --name"
                ),
            ))
        }
        Registered::Created => tracing::info!("device registered"),
        Registered::Updated => tracing::debug!("device keys updated"),
    }
    relay.counters.registrations.fetch_add(1, Ordering::Relaxed);
    Ok(Json(relay.storage.status(&name).await?))
}

async fn upload_prekeys(
    State(relay): State<Arc<Relay>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<DeviceStatus>> {
    let name = authenticate(&relay, &method, &uri, &headers, &body, None).await?;
    let req: UploadPrekeys = parse_json(&body)?;
    if req.one_time.len() + req.kem.len() > api::MAX_PREKEYS_PER_UPLOAD {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {} prekeys per upload", api::MAX_PREKEYS_PER_UPLOAD),
        ));
    }
    let device = relay
        .storage
        .device(&name)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "unknown device"))?;
    let identity = IdentityKey::from_bytes(&device.identity).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "stored identity unreadable",
        )
    })?;
    let mut one_time = Vec::with_capacity(req.one_time.len());
    for k in req.one_time {
        let key = OneTimePrekey::from_bytes(&k.0)
            .map_err(|e| bad_request(format!("one-time prekey: {e}")))?;
        one_time.push((key.id.0, k.0));
    }
    let mut kem = Vec::with_capacity(req.kem.len());
    for k in req.kem {
        let key =
            KemPrekey::from_bytes(&k.0).map_err(|e| bad_request(format!("KEM prekey: {e}")))?;
        if key.is_last_resort() {
            return Err(bad_request(
                "a last-resort KEM prekey is registered, not uploaded",
            ));
        }
        key.verify(&identity)
            .map_err(|e| bad_request(format!("KEM prekey: {e}")))?;
        kem.push((key.id.0, k.0));
    }
    let held = relay.storage.status(&name).await?;
    let max = relay.config.max_prekeys_per_device;
    if held.one_time_prekeys + one_time.len() as u64 > max
        || held.kem_prekeys + kem.len() as u64 > max
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("a device holds at most {max} one-time prekeys of each kind on the relay"),
        ));
    }
    let added = relay
        .storage
        .add_prekeys(&name, KIND_ONE_TIME, &one_time)
        .await?
        + relay.storage.add_prekeys(&name, KIND_KEM, &kem).await?;
    relay
        .counters
        .prekeys_uploaded
        .fetch_add(added, Ordering::Relaxed);
    tracing::debug!(added, "prekeys uploaded");
    let status = relay.storage.status(&name).await?;
    Ok(Json(status))
}

async fn retire_prekeys(
    State(relay): State<Arc<Relay>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<DeviceStatus>> {
    let name = authenticate(&relay, &method, &uri, &headers, &body, None).await?;
    let req: RetirePrekeys = parse_json(&body)?;
    relay
        .storage
        .retire_prekeys(&name, KIND_ONE_TIME, req.one_time_through)
        .await?;
    relay
        .storage
        .retire_prekeys(&name, KIND_KEM, req.kem_through)
        .await?;
    Ok(Json(relay.storage.status(&name).await?))
}

async fn device_status(
    State(relay): State<Arc<Relay>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Json<DeviceStatus>> {
    let name = authenticate(&relay, &method, &uri, &headers, &[], None).await?;
    Ok(Json(relay.storage.status(&name).await?))
}

async fn bundle(
    State(relay): State<Arc<Relay>>,
    Path(target): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<BundleResponse>> {
    let name = authenticate(&relay, &method, &uri, &headers, &body, None).await?;
    let now = Instant::now();
    if !relay.per_requester.allow(&name, now)
        || !relay.per_target.allow(&format!("{name}\0{target}"), now)
        || !relay.per_target_total.allow(&target, now)
    {
        relay.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many bundle requests; wait a minute and try again",
        ));
    }
    let taken = relay.storage.take_bundle(&target).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no device named {target:?} on this relay"),
        )
    })?;
    let unreadable = |what: &str| {
        tracing::error!(what, "stored key unreadable");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "a stored key is unreadable",
        )
    };
    let identity =
        IdentityKey::from_bytes(&taken.device.identity).map_err(|_| unreadable("identity"))?;
    let signed_prekey = SignedPrekey::from_bytes(&taken.device.signed_prekey)
        .map_err(|_| unreadable("signed prekey"))?;
    let one_time_prekey = taken
        .one_time
        .map(|k| OneTimePrekey::from_bytes(&k))
        .transpose()
        .map_err(|_| unreadable("one-time prekey"))?;
    let kem_bytes = taken.kem.unwrap_or(taken.device.last_resort_kem);
    let kem_prekey = KemPrekey::from_bytes(&kem_bytes).map_err(|_| unreadable("KEM prekey"))?;
    let bundle = PrekeyBundle {
        identity,
        signed_prekey,
        one_time_prekey,
        kem_prekey,
    };
    relay.counters.bundles.fetch_add(1, Ordering::Relaxed);
    Ok(Json(BundleResponse {
        bundle: api::B64(bundle.to_bytes()),
    }))
}

async fn send(
    State(relay): State<Arc<Relay>>,
    Path(recipient): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<SendResponse>> {
    let name = authenticate(&relay, &method, &uri, &headers, &body, None).await?;
    if body.is_empty() {
        return Err(bad_request("empty message"));
    }
    if body.len() > MAX_ENVELOPE_LEN {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a message is at most {MAX_ENVELOPE_LEN} bytes"),
        ));
    }
    if !relay.per_sender.allow(&name, Instant::now()) {
        relay.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "sending too fast; wait a moment and try again",
        ));
    }
    if relay.storage.device(&recipient).await?.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no device named {recipient:?} on this relay"),
        ));
    }
    let Some(id) = relay
        .storage
        .enqueue_capped(
            &recipient,
            &name,
            &body,
            unix_now(),
            relay.config.max_queue_per_recipient,
        )
        .await?
    else {
        relay.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{recipient:?}'s queue on the relay is full; try again later"),
        ));
    };
    relay
        .counters
        .messages_queued
        .fetch_add(1, Ordering::Relaxed);
    relay.wake(&recipient);
    Ok(Json(SendResponse { id }))
}

/// `wait=SECS` from a query string (0 when absent or malformed).
fn wait_secs(uri: &Uri) -> u64 {
    uri.query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("wait="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn fetch(
    State(relay): State<Arc<Relay>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Json<Inbox>> {
    let name = authenticate(&relay, &method, &uri, &headers, &[], None).await?;
    let wait = Duration::from_secs(wait_secs(&uri).min(api::MAX_WAIT_SECS));
    let deadline = Instant::now() + wait;
    let _slot = if wait.is_zero() {
        None
    } else {
        Some(relay.push_slot(&name)?)
    };
    let notify = relay.notify_for(&name);
    loop {
        let woken = notify.notified();
        let messages = relay
            .storage
            .fetch(
                &name,
                api::MAX_MESSAGES_PER_FETCH,
                api::MAX_MESSAGES_PER_SENDER_PER_FETCH,
            )
            .await?;
        let now = Instant::now();
        if !messages.is_empty() || now >= deadline {
            relay
                .counters
                .messages_fetched
                .fetch_add(messages.len() as u64, Ordering::Relaxed);
            let status = if messages.is_empty() {
                None
            } else {
                Some(relay.storage.status(&name).await?)
            };
            return Ok(Json(Inbox { messages, status }));
        }
        let nap = relay.poll_interval().min(deadline - now);
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep(nap) => {}
        }
    }
}

async fn ack(
    State(relay): State<Arc<Relay>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Ack>> {
    let name = authenticate(&relay, &method, &uri, &headers, &body, None).await?;
    let req: Ack = parse_json(&body)?;
    if req.ids.len() > api::MAX_MESSAGES_PER_FETCH {
        return Err(bad_request(format!(
            "at most {} ids per acknowledgement",
            api::MAX_MESSAGES_PER_FETCH
        )));
    }
    let deleted = relay.storage.ack(&name, &req.ids).await?;
    relay
        .counters
        .messages_acked
        .fetch_add(deleted, Ordering::Relaxed);
    Ok(Json(req))
}

async fn push(
    State(relay): State<Arc<Relay>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let name = authenticate(&relay, &method, &uri, &headers, &[], None).await?;
    // Counted now (refused with 429 before the upgrade) and held by the connection.
    drop(relay.push_slot(&name)?);
    Ok(ws.on_upgrade(move |socket| async move {
        let Ok(_slot) = relay.push_slot(&name) else {
            return;
        };
        if let Err(e) = push_loop(&relay, &name, socket).await {
            tracing::debug!(error = %e, "push connection ended");
        }
    }))
}

async fn push_loop(relay: &Relay, name: &str, mut socket: WebSocket) -> Result<(), String> {
    let notify = relay.notify_for(name);
    let mut announced = 0;
    loop {
        let woken = notify.notified();
        let newest = relay
            .storage
            .newest(name)
            .await
            .map_err(|e| e.to_string())?;
        if newest > announced {
            let pending = relay
                .storage
                .status(name)
                .await
                .map_err(|e| e.to_string())?
                .queued;
            let frame = serde_json::to_string(&Push { pending }).map_err(|e| e.to_string())?;
            socket
                .send(Message::Text(frame.into()))
                .await
                .map_err(|e| e.to_string())?;
            announced = newest;
        }
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep(relay.poll_interval()) => {}
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Ok(_)) => {}
            },
        }
    }
}

fn router(relay: Arc<Relay>) -> Router {
    Router::new()
        .route("/v1/devices/{name}", put(register))
        .route("/v1/prekeys", post(upload_prekeys))
        .route("/v1/prekeys/retire", post(retire_prekeys))
        .route("/v1/self", get(device_status))
        .route("/v1/bundles/{name}", post(bundle))
        .route("/v1/messages/{name}", post(send))
        .route("/v1/messages", get(fetch))
        .route("/v1/ack", post(ack))
        .route("/v1/ws", get(push))
        // The largest body: 100 KEM prekeys in base64 JSON (about 170 KB).
        .layer(DefaultBodyLimit::max(256 * 1024))
        .with_state(relay)
}

/// A running relay: its address, and the tasks to stop.
#[derive(Debug)]
pub struct RunningRelay {
    /// Where it listens.
    pub local_addr: SocketAddr,
    /// Its counters.
    pub counters: Arc<Counters>,
    accept: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

impl RunningRelay {
    /// Stop accepting and stop the background tasks (open connections end with the runtime).
    pub fn stop(self) {
        self.accept.abort();
        for t in self.background {
            t.abort();
        }
    }

    /// Wait until the accept loop ends (it ends only on a listener failure).
    pub async fn wait(&mut self) {
        let _ = (&mut self.accept).await;
    }
}

/// Serve the relay API on `listener` with TLS `tls`, storing in `storage`.
pub fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    storage: Storage,
    config: RelayConfig,
) -> std::io::Result<RunningRelay> {
    let local_addr = listener.local_addr()?;
    let counters = Arc::new(Counters::default());
    let relay = Arc::new(Relay {
        storage,
        per_requester: RateLimiter::new(config.bundles_per_requester),
        per_target: RateLimiter::new(config.bundles_per_target),
        per_target_total: RateLimiter::new(config.bundles_per_target_total),
        per_address: RateLimiter::new(config.registrations_per_address),
        per_sender: RateLimiter::new(config.sends_per_sender),
        config,
        waiters: Mutex::new(HashMap::new()),
        pushes: Mutex::new((HashMap::new(), 0)),
        listening: AtomicBool::new(false),
        counters: counters.clone(),
    });
    let app = router(relay.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let accept = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let app = app.clone().layer(axum::Extension(peer));
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let service = TowerToHyperService::new(app);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await
                {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
    });
    let expiry = {
        let relay = relay.clone();
        tokio::spawn(async move {
            loop {
                let now = unix_now();
                let cutoff = now - api::MESSAGE_EXPIRY_SECS as i64;
                match relay.storage.expire(cutoff, now).await {
                    Ok((messages, nonces)) => {
                        relay
                            .counters
                            .messages_expired
                            .fetch_add(messages, Ordering::Relaxed);
                        tracing::info!(messages, nonces, "expired old messages and nonces")
                    }
                    Err(e) => tracing::warn!(error = %e, "expiry failed"),
                }
                relay.prune_waiters();
                tokio::time::sleep(relay.config.expiry_interval).await;
            }
        })
    };
    let stats = {
        let relay = relay.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(relay.config.stats_interval).await;
                let c = &relay.counters;
                let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
                tracing::info!(
                    registrations = get(&c.registrations),
                    prekeys_uploaded = get(&c.prekeys_uploaded),
                    bundles = get(&c.bundles),
                    queued = get(&c.messages_queued),
                    fetched = get(&c.messages_fetched),
                    acked = get(&c.messages_acked),
                    auth_refused = get(&c.auth_refused),
                    rate_limited = get(&c.rate_limited),
                    "relay counters"
                );
            }
        })
    };
    let notifications = {
        let relay = relay.clone();
        tokio::spawn(async move { listen_loop(&relay).await })
    };
    Ok(RunningRelay {
        local_addr,
        counters,
        accept,
        background: vec![expiry, stats, notifications],
    })
}

/// On PostgreSQL: wake the waiters of each recipient another relay (or this one) queued a
/// message for, as `NOTIFY` says; waiters then look at the database only every
/// `notified_poll_interval`. While the `LISTEN` connection is down they poll every
/// `poll_interval` and are all woken when it is back (notifications may have been missed).
async fn listen_loop(relay: &Relay) {
    let mut pause = Duration::from_millis(200);
    loop {
        let mut listener = match relay.storage.listen().await {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN failed; polling until it works");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        relay.listening.store(true, Ordering::Relaxed);
        relay.wake_all();
        pause = Duration::from_millis(200);
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => relay.wake(n.payload()),
                Ok(None) => {
                    // Reconnected: anything queued meanwhile was not announced.
                    relay.wake_all();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN connection failed; polling until it is back");
                    break;
                }
            }
        }
        relay.listening.store(false, Ordering::Relaxed);
        relay.wake_all();
    }
}
