//! The messaging client against a real relay on loopback: trust on first use, and a changed
//! identity (here: a relay that lets a new key take a name) refused until `verify` accepts it;
//! a hostile relay that plays senders with names that are paths.

mod support;

use std::time::Duration;

use sessionkey::msg::{ClientError, Messenger, Received};
use sessionkey::tls::{CertSource, TlsServer, TlsServerOptions};
use sessionkey_relay::{RelayConfig, Storage};
use support::temp_dir;

/// A relay on loopback over SQLite in `dir`: the running relay, its storage, its URL, its pin.
async fn start_relay(
    dir: &std::path::Path,
) -> (
    sessionkey_relay::RunningRelay,
    Storage,
    String,
    sessionkey::trust::PeerKey,
) {
    let url = format!("sqlite://{}", dir.join("relay.db").display());
    let tls = TlsServer::new(TlsServerOptions::new(CertSource::SelfSigned {
        dir: dir.join("tls"),
    }))
    .unwrap();
    let storage = Storage::open(&url).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = sessionkey_relay::serve(
        listener,
        tls.rustls_config(),
        storage.clone(),
        RelayConfig {
            poll_interval: Duration::from_millis(50),
            ..RelayConfig::default()
        },
    )
    .unwrap();
    let url_of = format!("https://{}", relay.local_addr);
    (relay, storage, url_of, tls.pin())
}

/// What a hostile relay can do on its own: take `to`'s bundle, set up a session as a sender
/// it names `sender` (any bytes it likes), and queue `payload` as the first message.
async fn forge_first_message(storage: &Storage, sender: &str, to: &str, payload: &[u8]) {
    use sessionkey::proto::crypto::SystemRandom;
    use sessionkey::proto::msg::{
        Address, Device, IdentityKey, KemPrekey, OneTimePrekey, PrekeyBundle, Session,
        SignedPrekey, Trust,
    };
    let rng = &mut SystemRandom;
    let taken = storage.take_bundle(to).await.unwrap().unwrap();
    let bundle = PrekeyBundle {
        identity: IdentityKey::from_bytes(&taken.device.identity).unwrap(),
        signed_prekey: SignedPrekey::from_bytes(&taken.device.signed_prekey).unwrap(),
        one_time_prekey: taken
            .one_time
            .map(|k| OneTimePrekey::from_bytes(&k).unwrap()),
        kem_prekey: KemPrekey::from_bytes(&taken.kem.unwrap_or(taken.device.last_resort_kem))
            .unwrap(),
    };
    let evil = Device::generate(rng).unwrap();
    let mut session = Session::initiate(
        &evil,
        &Address::new(sender.as_bytes()).unwrap(),
        &Address::new(to.as_bytes()).unwrap(),
        &bundle,
        Trust::OnFirstUse,
        sessionkey::proto::suite::Suite::default_for_this_cpu(),
        rng,
    )
    .unwrap();
    let envelope = session.encrypt(payload).unwrap();
    storage
        .enqueue(to, sender, &envelope, 1_700_000_000)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_relay_cannot_choose_where_files_go() {
    use sessionkey::msg::client::INVALID_SENDER;
    use sessionkey::msg::payload::{encode_chunk, FileChunk};
    let dir = temp_dir("hostile-paths");
    let (relay, storage, url_of, _) = start_relay(&dir).await;
    let bob_dir = dir.join("bob");
    Messenger::init(&bob_dir, &url_of, "bob", None)
        .await
        .unwrap();
    Messenger::init(&dir.join("alice"), &url_of, "alice", None)
        .await
        .unwrap();
    let mut bob = Messenger::open(&bob_dir).await.unwrap();
    let mut alice = Messenger::open(&dir.join("alice")).await.unwrap();

    // Senders named as paths: absolute (Path::join would discard the base), `..` walking up
    // out of the state directory, and `..` itself.
    let outside = dir.join("outside").join("autostart");
    let hostile = [
        outside.to_str().unwrap().to_string(),
        "../../escaped".to_string(),
        "..".to_string(),
        "a/../../../escaped2".to_string(),
    ];
    let chunk = encode_chunk(&FileChunk {
        transfer: [7; 16],
        index: 0,
        count: 1,
        size: 5,
        name: "run.desktop",
        data: b"pwned",
    });
    for sender in &hostile {
        forge_first_message(&storage, sender, "bob", &chunk).await;
    }
    // And a valid sender name with a file name that is a path: it lands in files/NAME/.
    let sneaky = encode_chunk(&FileChunk {
        transfer: [8; 16],
        index: 0,
        count: 1,
        size: 5,
        name: "../../../.bashrc",
        data: b"hello",
    });
    forge_first_message(&storage, "carol", "bob", &sneaky).await;
    alice.send_text("bob", "still delivered").await.unwrap();

    let events = drain(&mut bob).await;
    let dropped = events
        .iter()
        .filter(|e| matches!(e, Received::Dropped { from, .. } if from == INVALID_SENDER))
        .count();
    assert_eq!(dropped, hostile.len(), "{events:?}");
    assert_eq!(texts(&events), ["still delivered"]);
    let file = events
        .iter()
        .find_map(|e| match e {
            Received::File { path, .. } => Some(path.clone()),
            _ => None,
        })
        .expect("carol's file arrived");
    assert_eq!(file, bob_dir.join("files").join("carol").join("bashrc"));
    assert!(
        !dir.join("outside").exists(),
        "a directory outside was made"
    );
    assert!(!dir.join("escaped").exists() && !dir.join("escaped2").exists());
    assert!(!bob_dir.join("escaped").exists());
    // Only carol's directory under files/, and no contact was recorded for the others.
    let entries: Vec<_> = std::fs::read_dir(bob_dir.join("files"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["carol"]);
    let contacts: Vec<String> = bob
        .contacts()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(contacts, ["alice", "carol"]);
    // Nothing waits: the hostile entries were acknowledged, not left to block the queue.
    assert!(drain(&mut bob).await.is_empty());
    relay.stop();
}

async fn drain(m: &mut Messenger) -> Vec<Received> {
    let mut got = Vec::new();
    m.receive_all(&mut |e| got.push(e)).await.unwrap();
    got
}

fn texts(events: &[Received]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Received::Text { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_identity_is_refused_until_verified() {
    let dir = temp_dir("client");
    let db = dir.join("relay.db");
    let url = format!("sqlite://{}", db.display());
    let tls = TlsServer::new(TlsServerOptions::new(CertSource::SelfSigned {
        dir: dir.join("tls"),
    }))
    .unwrap();
    let storage = Storage::open(&url).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = sessionkey_relay::serve(
        listener,
        tls.rustls_config(),
        storage.clone(),
        RelayConfig {
            poll_interval: Duration::from_millis(50),
            ..RelayConfig::default()
        },
    )
    .unwrap();
    let url_of = format!("https://{}", relay.local_addr);

    Messenger::init(&dir.join("alice"), &url_of, "alice", None)
        .await
        .unwrap();
    Messenger::init(&dir.join("bob"), &url_of, "bob", Some(tls.pin()))
        .await
        .unwrap();
    let mut alice = Messenger::open(&dir.join("alice")).await.unwrap();
    let mut bob = Messenger::open(&dir.join("bob")).await.unwrap();
    alice.send_text("bob", "hi bob").await.unwrap();
    assert_eq!(texts(&drain(&mut bob).await), ["hi bob"]);
    bob.send_text("alice", "hi alice").await.unwrap();
    assert_eq!(texts(&drain(&mut alice).await), ["hi alice"]);
    let contacts = alice.contacts().await.unwrap();
    assert_eq!(
        (contacts[0].name.as_str(), contacts[0].verified),
        ("bob", false)
    );
    let first_fp = contacts[0].fingerprint.clone();

    // A relay that lets someone else take the name "bob" (this one binds names, so the test
    // plays the dishonest relay by editing its database).
    {
        use sqlx::Connection;
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        sqlx::query("DELETE FROM devices WHERE name = 'bob'")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("DELETE FROM prekeys WHERE device = 'bob'")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    Messenger::init(&dir.join("mallory"), &url_of, "bob", None)
        .await
        .unwrap();
    let mut mallory = Messenger::open(&dir.join("mallory")).await.unwrap();
    mallory.send_text("alice", "it is me, bob").await.unwrap();

    // Alice refuses: the message waits on the relay, and she cannot send to "bob".
    let events = drain(&mut alice).await;
    assert!(texts(&events).is_empty(), "{events:?}");
    assert!(
        matches!(events[..], [Received::IdentityChanged { .. }]),
        "{events:?}"
    );
    match alice.send_text("bob", "are you bob?").await {
        Err(ClientError::IdentityChanged { name, .. }) => assert_eq!(name, "bob"),
        other => panic!("expected IdentityChanged, got {other:?}"),
    }
    let contacts = alice.contacts().await.unwrap();
    assert_eq!(
        contacts[0].fingerprint, first_fp,
        "the recorded identity is unchanged"
    );
    assert_eq!(
        contacts[0].changed_to.as_deref(),
        Some(mallory.identity().fingerprint().to_string().as_str())
    );

    // After comparing the safety number and accepting, the waiting message is read.
    let v = alice.verify("bob", false).await.unwrap();
    assert!(v.changed);
    assert_eq!(
        v.their_fingerprint,
        mallory.identity().fingerprint().to_string()
    );
    let v = alice.verify("bob", true).await.unwrap();
    assert!(v.verified && !v.changed);
    assert_eq!(texts(&drain(&mut alice).await), ["it is me, bob"]);
    alice.send_text("bob", "welcome").await.unwrap();
    assert_eq!(texts(&drain(&mut mallory).await), ["welcome"]);
    relay.stop();
}

#[tokio::test]
async fn the_store_refuses_another_key_file() {
    use sessionkey::msg::store::{Store, StoreError};
    use sessionkey::proto::crypto::SystemRandom;
    use sessionkey::proto::keys::Identity;
    let dir = temp_dir("store");
    let path = dir.join("store.db");
    let key = Identity::generate(&mut SystemRandom).unwrap();
    let store = Store::open(&path, &key).await.unwrap();
    store.set_meta("device", b"device secrets").await.unwrap();
    store.set_contact("carol", b"carol's record").await.unwrap();
    assert_eq!(
        &store.meta("device").await.unwrap().unwrap()[..],
        b"device secrets"
    );
    store.close().await;
    let raw = std::fs::read(&path).unwrap();
    assert!(!raw.windows(14).any(|w| w == b"device secrets"));
    let other = Store::open(&path, &Identity::generate(&mut SystemRandom).unwrap())
        .await
        .unwrap();
    assert!(matches!(
        other.meta("device").await,
        Err(StoreError::Undecryptable)
    ));
    other.close().await;
    // A value moved to another row does not open there.
    {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO meta (key, value) SELECT 'config', value FROM meta WHERE key = 'device'",
        )
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let store = Store::open(&path, &key).await.unwrap();
    assert!(matches!(
        store.meta("config").await,
        Err(StoreError::Undecryptable)
    ));
    assert!(store.meta("device").await.is_ok());
}
