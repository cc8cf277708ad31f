//! The relay API over real TLS on loopback: signed requests only, no replay, no one else's
//! mailbox or name, size and rate limits, long-poll and WebSocket push.

mod support;

use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use sessionkey::msg::api::{
    self, AuthHeaders, BundleResponse, DeviceStatus, Inbox, RegisterRequest, UploadPrekeys, B64,
};
use sessionkey::msg::relay::{RelayClient, RelayError};
use sessionkey::proto::crypto::SystemRandom;
use sessionkey::proto::msg::{Device, PrekeyBundle, Timestamp};
use sessionkey::tls::{
    CertSource, TlsClient, TlsClientOptions, TlsServer, TlsServerOptions, TlsTrust,
};
use sessionkey::trust::PeerKey;
use sessionkey_relay::{RelayConfig, RunningRelay, Storage};
use support::{sqlite_url, temp_dir};

struct Relay {
    running: RunningRelay,
    pin: PeerKey,
}

async fn start() -> Relay {
    start_with(RelayConfig {
        poll_interval: Duration::from_millis(50),
        ..RelayConfig::default()
    })
    .await
}

async fn start_with(config: RelayConfig) -> Relay {
    let tls = TlsServer::new(TlsServerOptions::new(CertSource::SelfSigned {
        dir: temp_dir("tls"),
    }))
    .unwrap();
    let storage = Storage::open(&sqlite_url()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = sessionkey_relay::serve(listener, tls.rustls_config(), storage, config).unwrap();
    Relay {
        running,
        pin: tls.pin(),
    }
}

impl Relay {
    fn client(&self) -> RelayClient {
        let addr = self.running.local_addr.to_string();
        let tls = TlsClient::new(TlsClientOptions::new(
            addr.clone(),
            TlsTrust::Pinned(self.pin),
        ))
        .unwrap();
        RelayClient::new(addr, tls)
    }
}

struct User {
    name: String,
    device: Device,
    client: RelayClient,
}

impl User {
    async fn register(relay: &Relay, name: &str, prekeys: usize) -> Self {
        let rng = &mut SystemRandom;
        let now = Timestamp::from_unix_secs(1_700_000_000);
        let mut device = Device::generate(rng).unwrap();
        let spk = device.new_signed_prekey(now, rng).unwrap();
        let lr = device.new_last_resort_kem_prekey(now).unwrap();
        let upload = UploadPrekeys {
            one_time: device
                .new_one_time_prekeys(prekeys, rng)
                .unwrap()
                .iter()
                .map(|k| B64(k.to_bytes()))
                .collect(),
            kem: device
                .new_kem_prekeys(prekeys, now)
                .unwrap()
                .iter()
                .map(|k| B64(k.to_bytes()))
                .collect(),
        };
        let user = Self {
            name: name.into(),
            client: relay.client(),
            device,
        };
        let req = RegisterRequest {
            identity: B64(user.device.identity().to_bytes().to_vec()),
            signed_prekey: B64(spk.to_bytes()),
            last_resort_kem: B64(lr.to_bytes()),
        };
        let _: DeviceStatus = user
            .call(
                Method::PUT,
                &format!("/v1/devices/{name}"),
                serde_json::to_vec(&req).unwrap(),
            )
            .await
            .unwrap();
        if prekeys > 0 {
            let status: DeviceStatus = user
                .call(
                    Method::POST,
                    "/v1/prekeys",
                    serde_json::to_vec(&upload).unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(
                (status.one_time_prekeys, status.kem_prekeys),
                (prekeys as u64, prekeys as u64)
            );
        }
        user
    }

    /// Register a new name without prekeys; the relay's refusal as an error.
    async fn try_register(relay: &Relay, name: &str) -> Result<Self, RelayError> {
        let rng = &mut SystemRandom;
        let now = Timestamp::from_unix_secs(1_700_000_000);
        let mut device = Device::generate(rng).unwrap();
        let spk = device.new_signed_prekey(now, rng).unwrap();
        let lr = device.new_last_resort_kem_prekey(now).unwrap();
        let user = Self {
            name: name.into(),
            client: relay.client(),
            device,
        };
        let req = RegisterRequest {
            identity: B64(user.device.identity().to_bytes().to_vec()),
            signed_prekey: B64(spk.to_bytes()),
            last_resort_kem: B64(lr.to_bytes()),
        };
        let _: DeviceStatus = user
            .call(
                Method::PUT,
                &format!("/v1/devices/{name}"),
                serde_json::to_vec(&req).unwrap(),
            )
            .await?;
        Ok(user)
    }

    /// The device, moved out for changes (`Device` is not `Clone`).
    fn device_mut_hack(&self) -> Device {
        Device::from_bytes(&self.device.to_bytes().unwrap()).unwrap()
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, RelayError> {
        self.client
            .request_json(&self.device, &self.name, method, path, body)
            .await
    }

    async fn send(&self, to: &str, body: &[u8]) -> Result<api::SendResponse, RelayError> {
        self.call(Method::POST, &format!("/v1/messages/{to}"), body.to_vec())
            .await
    }
}

fn refused(r: Result<impl std::fmt::Debug, RelayError>, status: StatusCode, words: &str) {
    match r {
        Err(RelayError::Refused { status: s, message }) => {
            assert_eq!(s, status, "{message}");
            assert!(message.contains(words), "{message:?} lacks {words:?}");
        }
        other => panic!("expected HTTP {status}, got {other:?}"),
    }
}

#[tokio::test]
async fn authentication_refusals() {
    let relay = start().await;
    let alice = User::register(&relay, "alice", 0).await;
    let bob = User::register(&relay, "bob", 0).await;
    let id = alice.send("bob", b"for bob only").await.unwrap().id;

    // Mallory signs as alice with her own key: a wrong signature.
    let mallory_device = Device::generate(&mut SystemRandom).unwrap();
    let forged = User {
        name: "alice".into(),
        device: mallory_device,
        client: relay.client(),
    };
    refused(
        forged.send("bob", b"x").await,
        StatusCode::UNAUTHORIZED,
        "bad request signature",
    );
    refused(
        forged
            .call::<Inbox>(Method::GET, "/v1/messages", vec![])
            .await,
        StatusCode::UNAUTHORIZED,
        "bad request signature",
    );

    // A registered mallory cannot read or delete bob's queue, nor take bob's name (409: it
    // is taken) or register under it as herself.
    let mallory = User::register(&relay, "mallory", 0).await;
    let inbox: Inbox = mallory
        .call(Method::GET, "/v1/messages", vec![])
        .await
        .unwrap();
    assert!(inbox.messages.is_empty());
    let _: api::Ack = mallory
        .call(
            Method::POST,
            "/v1/ack",
            serde_json::to_vec(&api::Ack { ids: vec![id] }).unwrap(),
        )
        .await
        .unwrap();
    let req = RegisterRequest {
        identity: B64(mallory.device.identity().to_bytes().to_vec()),
        signed_prekey: B64(mallory.device.signed_prekey().unwrap().to_bytes()),
        last_resort_kem: B64(mallory.device.last_resort_kem_prekey().unwrap().to_bytes()),
    };
    let as_bob = User {
        name: "bob".into(),
        device: mallory.device_mut_hack(),
        client: relay.client(),
    };
    refused(
        as_bob
            .call::<DeviceStatus>(
                Method::PUT,
                "/v1/devices/bob",
                serde_json::to_vec(&req).unwrap(),
            )
            .await,
        // Signed by the identity in the body, for a name another identity holds: 409 as
        // MESSAGING.md says (not a bare 401).
        StatusCode::CONFLICT,
        "is taken by another identity",
    );
    // Without the identity in the body (any other request), still a bad signature.
    refused(
        as_bob
            .call::<DeviceStatus>(Method::GET, "/v1/self", vec![])
            .await,
        StatusCode::UNAUTHORIZED,
        "bad request signature",
    );
    refused(
        mallory
            .call::<DeviceStatus>(
                Method::PUT,
                "/v1/devices/bob",
                serde_json::to_vec(&req).unwrap(),
            )
            .await,
        StatusCode::FORBIDDEN,
        "its own name",
    );
    let inbox: Inbox = bob.call(Method::GET, "/v1/messages", vec![]).await.unwrap();
    assert_eq!(inbox.messages.len(), 1, "bob's message survived mallory");
    assert_eq!(inbox.messages[0].body.0, b"for bob only");
    assert_eq!(inbox.messages[0].sender, "alice");

    // The same signed request twice: the second is a replay.
    let auth = RelayClient::sign(&bob.device, "bob", "GET", "/v1/self", &[]).unwrap();
    bob.client
        .send_signed(&auth, Method::GET, "/v1/self", vec![], true)
        .await
        .unwrap();
    refused(
        bob.client
            .send_signed(&auth, Method::GET, "/v1/self", vec![], true)
            .await,
        StatusCode::UNAUTHORIZED,
        "replayed",
    );
    // A signature for another path or body does not carry over.
    let auth = RelayClient::sign(&bob.device, "bob", "POST", "/v1/messages/alice", b"a").unwrap();
    refused(
        bob.client
            .send_signed(
                &auth,
                Method::POST,
                "/v1/messages/alice",
                b"b".to_vec(),
                false,
            )
            .await,
        StatusCode::UNAUTHORIZED,
        "bad request signature",
    );
    // Stale or missing authentication.
    let old =
        AuthHeaders::sign(&bob.device, "bob", "GET", "/v1/self", 1_000, [3; 16], &[]).unwrap();
    refused(
        bob.client
            .send_signed(&old, Method::GET, "/v1/self", vec![], true)
            .await,
        StatusCode::UNAUTHORIZED,
        "clock",
    );
    let nobody = User {
        name: "nobody".into(),
        device: Device::generate(&mut SystemRandom).unwrap(),
        client: relay.client(),
    };
    refused(
        nobody.send("bob", b"x").await,
        StatusCode::UNAUTHORIZED,
        "unknown device",
    );
    assert!(
        relay
            .running
            .counters
            .auth_refused
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 6
    );
    relay.running.stop();
}

#[tokio::test]
async fn limits_bundles_and_delivery() {
    let relay = start().await;
    let alice = User::register(&relay, "alice", 0).await;
    let bob = User::register(&relay, "bob", 3).await;

    // Each one-time prekey once, then the last-resort KEM key and no one-time X25519 key.
    let mut otk = Vec::new();
    let mut kem = Vec::new();
    for _ in 0..4 {
        let b: BundleResponse = alice
            .call(Method::POST, "/v1/bundles/bob", vec![])
            .await
            .unwrap();
        let b = PrekeyBundle::from_bytes(&b.bundle.0).unwrap();
        b.verify().unwrap();
        assert_eq!(b.identity, *bob.device.identity());
        otk.push(b.one_time_prekey.map(|k| k.id.0));
        kem.push((b.kem_prekey.id.0, b.kem_prekey.is_last_resort()));
    }
    assert_eq!(otk, [Some(1), Some(2), Some(3), None]);
    assert_eq!(kem.iter().filter(|(_, lr)| *lr).count(), 1);
    assert_eq!(
        kem.iter()
            .map(|(id, _)| *id)
            .collect::<std::collections::HashSet<_>>()
            .len(),
        4
    );
    // Rate limit per requester and target: 10 in a burst.
    let mut limited = false;
    for _ in 0..10 {
        match alice
            .call::<BundleResponse>(Method::POST, "/v1/bundles/bob", vec![])
            .await
        {
            Ok(_) => {}
            Err(e) => {
                refused(Err::<(), _>(e), StatusCode::TOO_MANY_REQUESTS, "too many");
                limited = true;
                break;
            }
        }
    }
    assert!(limited, "the 11th bundle request in a burst is refused");
    let _: BundleResponse = bob
        .call(Method::POST, "/v1/bundles/alice", vec![])
        .await
        .unwrap();
    refused(
        alice
            .call::<BundleResponse>(Method::POST, "/v1/bundles/zed", vec![])
            .await,
        StatusCode::NOT_FOUND,
        "no device",
    );

    // Size limit: 96 KiB a message.
    alice.send("bob", &vec![7; 96 * 1024]).await.unwrap();
    refused(
        alice.send("bob", &vec![7; 96 * 1024 + 1]).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "at most",
    );
    let upload = UploadPrekeys {
        one_time: vec![B64(vec![0; 37]); 101],
        kem: vec![],
    };
    refused(
        alice
            .call::<DeviceStatus>(
                Method::POST,
                "/v1/prekeys",
                serde_json::to_vec(&upload).unwrap(),
            )
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "at most 100",
    );
    let inbox: Inbox = bob.call(Method::GET, "/v1/messages", vec![]).await.unwrap();
    let ids: Vec<i64> = inbox.messages.iter().map(|m| m.id).collect();
    let _: api::Ack = bob
        .call(
            Method::POST,
            "/v1/ack",
            serde_json::to_vec(&api::Ack { ids }).unwrap(),
        )
        .await
        .unwrap();

    // Long-poll: a waiting fetch returns as soon as a message arrives.
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        let inbox: Inbox = bob
            .call(Method::GET, "/v1/messages?wait=10", vec![])
            .await
            .unwrap();
        (inbox, t.elapsed(), bob)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.send("bob", b"wake up").await.unwrap();
    let (inbox, waited, bob) = waiter.await.unwrap();
    assert_eq!(inbox.messages.len(), 1);
    assert_eq!(inbox.messages[0].body.0, b"wake up");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let ids = vec![inbox.messages[0].id];
    let _: api::Ack = bob
        .call(
            Method::POST,
            "/v1/ack",
            serde_json::to_vec(&api::Ack { ids }).unwrap(),
        )
        .await
        .unwrap();

    // WebSocket push.
    let mut push = bob.client.push_channel(&bob.device, "bob").await.unwrap();
    alice.send("bob", b"pushed").await.unwrap();
    let p = tokio::time::timeout(Duration::from_secs(5), push.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(p.pending, 1);
    alice.send("bob", b"pushed again").await.unwrap();
    let p = tokio::time::timeout(Duration::from_secs(5), push.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(p.pending, 2);
    // The push channel is authenticated too.
    let stranger = Device::generate(&mut SystemRandom).unwrap();
    match bob.client.push_channel(&stranger, "bob").await {
        Err(RelayError::Refused { status, .. }) => assert_eq!(status, StatusCode::UNAUTHORIZED),
        other => panic!("expected a refusal, got {other:?}"),
    }
    relay.running.stop();
}

#[tokio::test]
async fn a_wrong_certificate_is_refused() {
    let relay = start().await;
    let other = TlsServer::new(TlsServerOptions::new(CertSource::SelfSigned {
        dir: temp_dir("tls2"),
    }))
    .unwrap();
    let addr = relay.running.local_addr.to_string();
    let client = RelayClient::new(
        addr.clone(),
        TlsClient::new(TlsClientOptions::new(addr, TlsTrust::Pinned(other.pin()))).unwrap(),
    );
    match client.connect_tls().await {
        Err(RelayError::CertificateChanged { .. }) => {}
        other => panic!("expected CertificateChanged, got {:?}", other.map(|_| ())),
    }
    relay.running.stop();
}

/// Many fresh accounts draining one device's one-time prekeys hit the quotas: new names per
/// address, and bundles per target from all requesters together.
#[tokio::test]
async fn a_prekey_drain_by_fresh_accounts_hits_the_quotas() {
    let hour = Duration::from_secs(3600);
    let relay = start_with(RelayConfig {
        registrations_per_address: support_rate(6, hour),
        bundles_per_target_total: support_rate(8, hour),
        ..RelayConfig::default()
    })
    .await;
    let victim = User::register(&relay, "victim", 20).await;
    let mut fresh = Vec::new();
    let mut refused_registration = false;
    for i in 0..10 {
        match User::try_register(&relay, &format!("drain{i}")).await {
            Ok(u) => fresh.push(u),
            Err(e) => {
                refused(
                    Err::<(), _>(e),
                    StatusCode::TOO_MANY_REQUESTS,
                    "registrations",
                );
                refused_registration = true;
                break;
            }
        }
    }
    assert!(refused_registration, "new names per address are limited");
    assert_eq!(fresh.len(), 5, "the victim and five more from one address");
    let mut handed_out = 0;
    let mut limited = 0;
    for u in &fresh {
        for _ in 0..3 {
            match u
                .call::<BundleResponse>(Method::POST, "/v1/bundles/victim", vec![])
                .await
            {
                Ok(_) => handed_out += 1,
                Err(e) => {
                    refused(Err::<(), _>(e), StatusCode::TOO_MANY_REQUESTS, "too many");
                    limited += 1;
                }
            }
        }
    }
    assert_eq!(handed_out, 8);
    assert_eq!(limited, 15 - 8);
    let status: DeviceStatus = victim.call(Method::GET, "/v1/self", vec![]).await.unwrap();
    assert_eq!(status.one_time_prekeys, 20 - 8);
    relay.running.stop();
}

/// Per-recipient queue, per-sender rate, prekeys per device, push connections per account.
#[tokio::test]
async fn queue_send_prekey_and_push_quotas() {
    let hour = Duration::from_secs(3600);
    let relay = start_with(RelayConfig {
        max_queue_per_recipient: 5,
        sends_per_sender: support_rate(8, hour),
        max_prekeys_per_device: 60,
        max_push_per_account: 1,
        ..RelayConfig::default()
    })
    .await;
    let alice = User::register(&relay, "alice", 50).await;
    let bob = User::register(&relay, "bob", 0).await;
    for i in 0..5u8 {
        alice.send("bob", &[i]).await.unwrap();
    }
    refused(
        alice.send("bob", b"x").await,
        StatusCode::TOO_MANY_REQUESTS,
        "queue",
    );
    // The queue refusal spent a token too: 6 of 8 used; two more to carol, then the rate.
    let _carol = User::register(&relay, "carol", 0).await;
    alice.send("carol", b"1").await.unwrap();
    alice.send("carol", b"2").await.unwrap();
    refused(
        alice.send("carol", b"3").await,
        StatusCode::TOO_MANY_REQUESTS,
        "too fast",
    );
    // Prekeys per device: 50 held, 50 more would pass 60.
    let rng = &mut SystemRandom;
    let mut device = alice.device_mut_hack();
    let upload = UploadPrekeys {
        one_time: device
            .new_one_time_prekeys(50, rng)
            .unwrap()
            .iter()
            .map(|k| B64(k.to_bytes()))
            .collect(),
        kem: vec![],
    };
    refused(
        alice
            .call::<DeviceStatus>(
                Method::POST,
                "/v1/prekeys",
                serde_json::to_vec(&upload).unwrap(),
            )
            .await,
        StatusCode::CONFLICT,
        "at most 60",
    );
    // One push connection per account here: a second is refused, and freed on close.
    let first = bob.client.push_channel(&bob.device, "bob").await.unwrap();
    let second = bob.client.push_channel(&bob.device, "bob").await;
    match second {
        Err(RelayError::Refused { status, .. }) => {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS)
        }
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match bob.client.push_channel(&bob.device, "bob").await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the slot was not freed: {e}"),
        }
    }
    relay.running.stop();
}

fn support_rate(burst: u32, refill: Duration) -> sessionkey_relay::ratelimit::Rate {
    sessionkey_relay::ratelimit::Rate { burst, refill }
}
