//! The relay's storage layer against SQLite, and PostgreSQL when `SESSIONKEY_TEST_POSTGRES`
//! names one: one-time prekeys are handed out once under concurrency, queues keep order and
//! belong to their device, nonces are single-use, old messages expire.

mod support;

use std::collections::HashSet;

use proptest::prelude::*;
use sessionkey_relay::storage::{DeviceRecord, Registered, KIND_KEM, KIND_ONE_TIME};
use sessionkey_relay::Storage;
use support::{postgres_url, sqlite_url, unique};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

fn record(tag: u8) -> DeviceRecord {
    DeviceRecord {
        identity: vec![tag; 130],
        signed_prekey: vec![tag; 101],
        last_resort_kem: vec![tag; 1253],
    }
}

/// Register a device holding `n` one-time prekeys of each kind (key bytes carry their id).
async fn device_with_prekeys(s: &Storage, name: &str, n: u32) {
    assert_eq!(
        s.register(name, &record(1), 0).await.unwrap(),
        Registered::Created
    );
    let keys = |kind: u8| -> Vec<(u32, Vec<u8>)> {
        (1..=n)
            .map(|id| (id, [&[kind][..], &id.to_be_bytes()[..]].concat()))
            .collect()
    };
    assert_eq!(
        s.add_prekeys(name, KIND_ONE_TIME, &keys(4)).await.unwrap(),
        u64::from(n)
    );
    assert_eq!(
        s.add_prekeys(name, KIND_KEM, &keys(5)).await.unwrap(),
        u64::from(n)
    );
}

/// `fetchers` concurrent bundle requests spread over `stores` (each its own pool, as separate
/// relay processes are): every one-time key goes to at most one of them.
async fn concurrent_fetches(stores: &[Storage], keys: u32, fetchers: usize) {
    let name = unique("target");
    device_with_prekeys(&stores[0], &name, keys).await;
    let mut tasks = Vec::new();
    for i in 0..fetchers {
        let s = stores[i % stores.len()].clone();
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            s.take_bundle(&name).await.unwrap().unwrap()
        }));
    }
    let (mut one_time, mut kem) = (Vec::new(), Vec::new());
    for t in tasks {
        let b = t.await.unwrap();
        one_time.extend(b.one_time);
        kem.extend(b.kem);
    }
    let expected = fetchers.min(keys as usize);
    for (what, got) in [("one-time", &one_time), ("KEM", &kem)] {
        let distinct: HashSet<_> = got.iter().collect();
        assert_eq!(
            distinct.len(),
            got.len(),
            "a {what} prekey was handed out twice"
        );
        assert_eq!(got.len(), expected, "{what} prekeys handed out");
    }
    let left = u64::from(keys) - expected as u64;
    assert_eq!(
        stores[0].prekey_count(&name, KIND_ONE_TIME).await.unwrap(),
        left
    );
    assert_eq!(stores[0].prekey_count(&name, KIND_KEM).await.unwrap(), left);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn sqlite_concurrent_bundle_fetches_never_hand_out_a_key_twice(keys in 0u32..30, fetchers in 1usize..40) {
        let rt = runtime();
        rt.block_on(async {
            let s = Storage::open(&sqlite_url()).await.unwrap();
            concurrent_fetches(&[s], keys, fetchers).await;
        });
    }
}

#[test]
fn postgres_concurrent_bundle_fetches_never_hand_out_a_key_twice() {
    let Some(url) = postgres_url("postgres_concurrent_bundle_fetches") else {
        return;
    };
    let rt = runtime();
    let stores = rt.block_on(async {
        vec![
            Storage::open(&url).await.unwrap(),
            Storage::open(&url).await.unwrap(),
        ]
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 12,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&(0u32..30, 1usize..48), |(keys, fetchers)| {
            rt.block_on(concurrent_fetches(&stores, keys, fetchers));
            Ok(())
        })
        .unwrap();
}

async fn queue_semantics(s: &Storage) {
    let (alice, bob) = (unique("alice"), unique("bob"));
    s.register(&bob, &record(2), 0).await.unwrap();
    let ids = [
        s.enqueue(&bob, &alice, b"one", 10).await.unwrap(),
        s.enqueue(&bob, &alice, b"two", 11).await.unwrap(),
        s.enqueue(&bob, &alice, b"three", 12).await.unwrap(),
    ];
    let got = s.fetch(&bob, 2, 100).await.unwrap();
    assert_eq!(
        got.iter().map(|m| m.body.0.as_slice()).collect::<Vec<_>>(),
        [&b"one"[..], b"two"]
    );
    assert_eq!(got[0].sender, alice);
    assert_eq!(s.newest(&bob).await.unwrap(), ids[2]);
    assert!(s.fetch(&alice, 10, 100).await.unwrap().is_empty());
    // Someone else's acknowledgement deletes nothing.
    assert_eq!(s.ack(&alice, &ids).await.unwrap(), 0);
    assert_eq!(s.ack(&bob, &ids[..2]).await.unwrap(), 2);
    let got = s.fetch(&bob, 10, 100).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body.0, b"three");
    assert_eq!(s.status(&bob).await.unwrap().queued, 1);
    // At most `per_sender` of each sender in a fetch: one sender's backlog does not keep
    // another's message out of the batch.
    let carol = unique("carol");
    for i in 0..5 {
        s.enqueue(&bob, &alice, format!("a{i}").as_bytes(), 20)
            .await
            .unwrap();
    }
    s.enqueue(&bob, &carol, b"c0", 21).await.unwrap();
    let got = s.fetch(&bob, 10, 2).await.unwrap();
    assert_eq!(
        got.iter().map(|m| m.body.0.as_slice()).collect::<Vec<_>>(),
        [&b"three"[..], b"a0", b"c0"]
    );
}

async fn registration_and_nonces(s: &Storage) {
    let name = unique("carol");
    assert_eq!(
        s.register(&name, &record(3), 0).await.unwrap(),
        Registered::Created
    );
    let mut updated = record(3);
    updated.signed_prekey = vec![9; 101];
    assert_eq!(
        s.register(&name, &updated, 1).await.unwrap(),
        Registered::Updated
    );
    assert_eq!(
        s.device(&name).await.unwrap().unwrap().signed_prekey,
        vec![9; 101]
    );
    // Another identity cannot take the name or replace its keys.
    assert_eq!(
        s.register(&name, &record(4), 2).await.unwrap(),
        Registered::NameTaken
    );
    assert_eq!(
        s.device(&name).await.unwrap().unwrap().identity,
        vec![3; 130]
    );
    assert!(s.use_nonce(&name, &[1; 16], 100).await.unwrap());
    assert!(
        !s.use_nonce(&name, &[1; 16], 100).await.unwrap(),
        "a nonce is single-use"
    );
    assert!(
        s.use_nonce(&unique("dave"), &[1; 16], 100).await.unwrap(),
        "per device"
    );
    // A device with no one-time prekeys left still gets bundles (the last-resort KEM key).
    let b = s.take_bundle(&name).await.unwrap().unwrap();
    assert_eq!((b.one_time, b.kem), (None, None));
    assert!(s.take_bundle(&unique("nobody")).await.unwrap().is_none());
}

async fn expiry(s: &Storage) {
    let bob = unique("bob");
    let now = 100 * 86_400;
    let cutoff = now - 30 * 86_400;
    s.enqueue(&bob, "x", b"old", cutoff - 1).await.unwrap();
    s.enqueue(&bob, "x", b"new", cutoff + 1).await.unwrap();
    s.use_nonce(&bob, &[2; 16], now - 1).await.unwrap();
    let (messages, nonces) = s.expire(cutoff, now).await.unwrap();
    assert!(messages >= 1 && nonces >= 1);
    let left = s.fetch(&bob, 10, 100).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].body.0, b"new");
    assert!(
        s.use_nonce(&bob, &[2; 16], now + 10).await.unwrap(),
        "expired nonce forgotten"
    );
}

#[test]
fn sqlite_queues_registration_nonces_expiry() {
    runtime().block_on(async {
        let s = Storage::open(&sqlite_url()).await.unwrap();
        queue_semantics(&s).await;
        registration_and_nonces(&s).await;
        expiry(&s).await;
    });
}

#[test]
fn postgres_queues_registration_nonces_expiry() {
    let Some(url) = postgres_url("postgres_queues_registration_nonces_expiry") else {
        return;
    };
    runtime().block_on(async {
        let s = Storage::open(&url).await.unwrap();
        queue_semantics(&s).await;
        registration_and_nonces(&s).await;
        expiry(&s).await;
    });
}

#[test]
fn unsupported_urls_are_refused() {
    runtime().block_on(async {
        let e = Storage::open("mysql://x").await.unwrap_err();
        assert!(
            e.to_string().contains("sqlite://PATH or postgres://"),
            "{e}"
        );
    });
}

/// Relays opening one fresh PostgreSQL schema at once all start (16 at once, 5 rounds):
/// the schema is created under an advisory lock, so none meets another's half-made tables
/// (`relation ... already exists`, a duplicate key in `pg_type`).
#[test]
fn postgres_relays_starting_at_once_all_apply_the_schema() {
    let Some(url) = postgres_url("postgres_relays_starting_at_once") else {
        return;
    };
    let rt = runtime();
    for round in 0..5 {
        let schema = format!("sk_race_{}", unique("s").replace(['-', '.'], "_"));
        rt.block_on(relays_start_at_once(&url, &schema, round));
    }
}

async fn relays_start_at_once(url: &str, schema: &str, round: usize) {
    use std::time::Duration;
    sqlx::any::install_default_drivers();
    let admin = tokio::time::timeout(Duration::from_secs(30), sqlx::AnyPool::connect(url))
        .await
        .expect("PostgreSQL did not answer within 30 s")
        .unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    // Every relay's connections use the fresh schema.
    let sep = if url.contains('?') { '&' } else { '?' };
    let scoped = format!("{url}{sep}options=-c%20search_path%3D{schema}");
    let opens: Vec<_> = (0..16)
        .map(|_| {
            let scoped = scoped.clone();
            tokio::spawn(async move { Storage::open(&scoped).await })
        })
        .collect();
    let mut failures = Vec::new();
    for open in opens {
        let opened = tokio::time::timeout(Duration::from_secs(60), open)
            .await
            .expect("a relay did not open its storage within 60 s")
            .unwrap();
        if let Err(e) = opened {
            failures.push(e.to_string());
        }
    }
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = $1",
    )
    .bind(schema)
    .fetch_one(&admin)
    .await
    .unwrap();
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
    assert!(
        failures.is_empty(),
        "round {round}: relays failed to start: {failures:?}"
    );
    assert_eq!(tables, 4, "the schema's tables were made in {schema}");
}

/// The relay depends on the core, not on the client library (which brings TUN, VPN and TLS
/// client code): the client is a dev-dependency only, to test against.
#[test]
fn the_relay_depends_on_the_core_only() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap();
    let names: Vec<&str> = deps
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split(['.', ' ', '=']).next())
        .filter(|n| !n.is_empty())
        .collect();
    assert!(names.contains(&"sessionkey-proto"), "{names:?}");
    assert!(!names.contains(&"sessionkey"), "{names:?}");
}

/// On PostgreSQL a queued message is announced with NOTIFY to every relay's LISTEN
/// connection (so waiting relays need not poll); SQLite has no listener.
#[tokio::test]
async fn postgres_notifies_queued_messages() {
    assert!(Storage::open(&sqlite_url())
        .await
        .unwrap()
        .listen()
        .await
        .unwrap()
        .is_none());
    let Some(url) = postgres_url("postgres_notifies_queued_messages") else {
        return;
    };
    let a = Storage::open(&url).await.unwrap();
    let b = Storage::open(&url).await.unwrap();
    let mut listener = b.listen().await.unwrap().expect("PostgreSQL listens");
    let bob = unique("bob");
    a.register(&bob, &record(9), 0).await.unwrap();
    a.enqueue(&bob, "alice", b"x", 1).await.unwrap();
    let note = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let n = listener.recv().await.unwrap();
            if n.payload() == bob {
                return n;
            }
        }
    })
    .await
    .expect("the NOTIFY arrived");
    assert_eq!(note.channel(), sessionkey_relay::storage::QUEUED_CHANNEL);
}
