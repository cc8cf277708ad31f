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

/// `to`'s bundle as the relay hands it out (its one-time prekeys now used up).
async fn take_bundle(storage: &Storage, to: &str) -> sessionkey::proto::msg::PrekeyBundle {
    use sessionkey::proto::msg::{
        IdentityKey, KemPrekey, OneTimePrekey, PrekeyBundle, SignedPrekey,
    };
    let taken = storage.take_bundle(to).await.unwrap().unwrap();
    PrekeyBundle {
        identity: IdentityKey::from_bytes(&taken.device.identity).unwrap(),
        signed_prekey: SignedPrekey::from_bytes(&taken.device.signed_prekey).unwrap(),
        one_time_prekey: taken
            .one_time
            .map(|k| OneTimePrekey::from_bytes(&k).unwrap()),
        kem_prekey: KemPrekey::from_bytes(&taken.kem.unwrap_or(taken.device.last_resort_kem))
            .unwrap(),
    }
}

/// Set up a session on `bundle` as a new device named `sender` (any bytes) and queue
/// `payload` (padded, as clients send it) for `to` as the first message.
async fn first_message_on(
    storage: &Storage,
    sender: &str,
    to: &str,
    bundle: &sessionkey::proto::msg::PrekeyBundle,
    payload: &[u8],
) {
    use sessionkey::proto::crypto::SystemRandom;
    use sessionkey::proto::msg::{Address, Device, Session, Trust};
    let rng = &mut SystemRandom;
    let evil = Device::generate(rng).unwrap();
    let mut session = Session::initiate(
        &evil,
        &Address::new(sender.as_bytes()).unwrap(),
        &Address::new(to.as_bytes()).unwrap(),
        bundle,
        Trust::OnFirstUse,
        sessionkey::proto::suite::Suite::default_for_this_cpu(),
        rng,
    )
    .unwrap();
    let envelope = session
        .encrypt(&sessionkey::msg::payload::pad(payload))
        .unwrap();
    storage
        .enqueue(to, sender, &envelope, 1_700_000_000)
        .await
        .unwrap();
}

/// What a hostile relay can do on its own: take `to`'s bundle, set up a session as a sender
/// it names `sender` (any bytes it likes), and queue `payload` as the first message.
async fn forge_first_message(storage: &Storage, sender: &str, to: &str, payload: &[u8]) {
    let bundle = take_bundle(storage, to).await;
    first_message_on(storage, sender, to, &bundle, payload).await;
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

/// Every queued envelope's ratchet header as (ratchet key, n): two equal ones mean one
/// message key encrypted two messages.
async fn queued_headers(url: &str, recipient: &str) -> Vec<([u8; 32], u32)> {
    use sessionkey::proto::msg::Envelope;
    use sqlx::{Connection, Row};
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let rows = sqlx::query("SELECT body FROM messages WHERE recipient = $1 ORDER BY seq")
        .bind(recipient)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let body: Vec<u8> = r.get(0);
            let h = match Envelope::parse(&body).unwrap() {
                Envelope::Initial(i) => i.header().unwrap(),
                Envelope::Ratchet(m) => *m.header(),
                _ => unreachable!(),
            };
            (h.ratchet_key, h.n)
        })
        .collect()
}

/// The key reuse of issue 13: a write based on a stale read of a session. Two readers of one
/// stored session encrypt with the same chain key (equal headers: the same AEAD key and
/// nonce); the version check refuses the second write, and since a sender stores before it
/// sends, the second envelope never leaves.
#[tokio::test]
async fn a_stale_session_write_is_refused() {
    use sessionkey::msg::store::{Store, StoreError};
    use sessionkey::proto::crypto::SystemRandom;
    use sessionkey::proto::keys::Identity;
    use sessionkey::proto::msg::{
        Address, Device, Envelope, PrekeyBundle, Session, Timestamp, Trust,
    };
    let rng = &mut SystemRandom;
    let now = Timestamp::from_unix_secs(1_700_000_000);
    let mut bob = Device::generate(rng).unwrap();
    let signed_prekey = bob.new_signed_prekey(now, rng).unwrap();
    let kem_prekey = bob.new_last_resort_kem_prekey(now).unwrap();
    let alice = Device::generate(rng).unwrap();
    let session = Session::initiate(
        &alice,
        &Address::new("alice").unwrap(),
        &Address::new("bob").unwrap(),
        &PrekeyBundle {
            identity: *bob.identity(),
            signed_prekey,
            one_time_prekey: None,
            kem_prekey,
        },
        Trust::OnFirstUse,
        sessionkey::proto::suite::Suite::default_for_this_cpu(),
        rng,
    )
    .unwrap();
    let dir = temp_dir("stale");
    let store = Store::open(&dir.join("store.db"), &Identity::generate(rng).unwrap())
        .await
        .unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.insert_session("bob", session.base_key(), &session.to_bytes(), None, 1)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // Two readers of version 0 (as two processes without a lock would be).
    let mut tx = store.begin().await.unwrap();
    let first = tx.sessions("bob").await.unwrap().remove(0);
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let second = tx.sessions("bob").await.unwrap().remove(0);
    tx.commit().await.unwrap();
    assert_eq!(first.version, second.version);

    let header = |e: &[u8]| match Envelope::parse(e).unwrap() {
        Envelope::Initial(i) => i.header().unwrap(),
        _ => unreachable!(),
    };
    let mut s1 = Session::from_bytes(&first.state).unwrap();
    let e1 = s1.encrypt(b"one").unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.update_session(&first, &s1.to_bytes(), 2).await.unwrap();
    tx.commit().await.unwrap();

    let mut s2 = Session::from_bytes(&second.state).unwrap();
    let e2 = s2.encrypt(b"two").unwrap();
    assert_eq!(
        header(&e1),
        header(&e2),
        "the stale copy reuses the message key"
    );
    let mut tx = store.begin().await.unwrap();
    match tx.update_session(&second, &s2.to_bytes(), 3).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("a stale write must be refused, got {other:?}"),
    }
    drop(tx);
    // The stored state is the first writer's: the next message moves on.
    let mut tx = store.begin().await.unwrap();
    let row = tx.sessions("bob").await.unwrap().remove(0);
    assert_eq!(row.version, first.version + 1);
    let e3 = Session::from_bytes(&row.state)
        .unwrap()
        .encrypt(b"three")
        .unwrap();
    assert_eq!(header(&e3).n, header(&e1).n + 1);
    drop(tx);
    store.close().await;
}

/// Two clients on one state directory sending at once (as `msg recv --follow` and `msg send`
/// in two terminals): the directory's lock serialises them, no header repeats, every message
/// arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_on_one_state_directory_never_reuse_a_key() {
    let dir = temp_dir("two-writers");
    let (relay, _storage, url_of, _) = start_relay(&dir).await;
    let db = format!("sqlite://{}", dir.join("relay.db").display());
    Messenger::init(&dir.join("alice"), &url_of, "alice", None)
        .await
        .unwrap();
    Messenger::init(&dir.join("bob"), &url_of, "bob", None)
        .await
        .unwrap();
    let mut a1 = Messenger::open(&dir.join("alice")).await.unwrap();
    let mut a2 = Messenger::open(&dir.join("alice")).await.unwrap();
    a1.send_text("bob", "setup").await.unwrap();
    let (r1, r2) = tokio::join!(
        async {
            for i in 0..25 {
                a1.send_text("bob", &format!("one-{i}")).await?;
            }
            Ok::<_, ClientError>(())
        },
        async {
            for i in 0..25 {
                a2.send_text("bob", &format!("two-{i}")).await?;
            }
            Ok::<_, ClientError>(())
        },
    );
    r1.unwrap();
    r2.unwrap();
    let headers = queued_headers(&db, "bob").await;
    assert_eq!(headers.len(), 51);
    let distinct: std::collections::HashSet<_> = headers.iter().collect();
    assert_eq!(
        distinct.len(),
        headers.len(),
        "a message key was used twice"
    );
    let mut bob = Messenger::open(&dir.join("bob")).await.unwrap();
    let events = drain(&mut bob).await;
    let got = texts(&events);
    assert_eq!(got.len(), 51, "{events:?}");
    for who in ["one", "two"] {
        let mine: Vec<String> = got.iter().filter(|t| t.starts_with(who)).cloned().collect();
        let want: Vec<String> = (0..25).map(|i| format!("{who}-{i}")).collect();
        assert_eq!(mine, want);
    }
    relay.stop();
}

/// One sender's backlog (200 messages on a changed identity) does not delay another
/// sender's message; they are set aside, not left to block the queue, and read once the
/// change is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_senders_backlog_does_not_block_another() {
    let dir = temp_dir("backlog");
    let (relay, storage, url_of, _) = start_relay(&dir).await;
    let url = format!("sqlite://{}", dir.join("relay.db").display());
    for name in ["alice", "bob", "carol"] {
        Messenger::init(&dir.join(name), &url_of, name, None)
            .await
            .unwrap();
    }
    let mut alice = Messenger::open(&dir.join("alice")).await.unwrap();
    let mut bob = Messenger::open(&dir.join("bob")).await.unwrap();
    let mut carol = Messenger::open(&dir.join("carol")).await.unwrap();
    bob.send_text("alice", "hi").await.unwrap();
    assert_eq!(texts(&drain(&mut alice).await), ["hi"]);
    bob.close().await;

    // Someone takes the name "bob" (the relay lets it) and floods alice.
    {
        use sqlx::Connection;
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        for sql in [
            "DELETE FROM devices WHERE name = 'bob'",
            "DELETE FROM prekeys WHERE device = 'bob'",
        ] {
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    }
    Messenger::init(&dir.join("mallory"), &url_of, "bob", None)
        .await
        .unwrap();
    let mut mallory = Messenger::open(&dir.join("mallory")).await.unwrap();
    for i in 0..200 {
        mallory
            .send_text("alice", &format!("junk-{i}"))
            .await
            .unwrap();
    }
    carol.send_text("alice", "from carol").await.unwrap();

    // The first batch already carries carol's message.
    let mut first = Vec::new();
    alice
        .receive_batch(0, &mut |e| first.push(e))
        .await
        .unwrap();
    assert_eq!(texts(&first), ["from carol"], "{first:?}");
    assert!(first
        .iter()
        .any(|e| matches!(e, Received::IdentityChanged { from, .. } if from == "bob")));
    // The rest is set aside; the relay's queue empties.
    let rest = drain(&mut alice).await;
    assert!(texts(&rest).is_empty());
    assert_eq!(storage.status("alice").await.unwrap().queued, 0);
    // Accepted: the 200 are read, in order, once.
    alice.verify("bob", true).await.unwrap();
    let got = texts(&drain(&mut alice).await);
    let want: Vec<String> = (0..200).map(|i| format!("junk-{i}")).collect();
    assert_eq!(got, want);
    assert!(drain(&mut alice).await.is_empty());
    relay.stop();
}

/// Messages whose keys the receiver had to drop (too far out of order) are reported, not
/// silently lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_skipped_keys_are_reported() {
    use sessionkey::msg::payload::{encode_text, pad};
    use sessionkey::proto::crypto::SystemRandom;
    use sessionkey::proto::msg::{
        Address, Device, IdentityKey, KemPrekey, OneTimePrekey, PrekeyBundle, Session,
        SignedPrekey, Trust, MAX_SKIPPED_PER_CHAIN,
    };
    let dir = temp_dir("evicted");
    let (relay, storage, url_of, _) = start_relay(&dir).await;
    Messenger::init(&dir.join("bob"), &url_of, "bob", None)
        .await
        .unwrap();
    let mut bob = Messenger::open(&dir.join("bob")).await.unwrap();
    // A sender (set up directly, as the relay test above does) who sends message 0, then
    // message 1,500: 1,499 are skipped, more than one chain keeps.
    let rng = &mut SystemRandom;
    let taken = storage.take_bundle("bob").await.unwrap().unwrap();
    let bundle = PrekeyBundle {
        identity: IdentityKey::from_bytes(&taken.device.identity).unwrap(),
        signed_prekey: SignedPrekey::from_bytes(&taken.device.signed_prekey).unwrap(),
        one_time_prekey: taken
            .one_time
            .map(|k| OneTimePrekey::from_bytes(&k).unwrap()),
        kem_prekey: KemPrekey::from_bytes(&taken.kem.unwrap_or(taken.device.last_resort_kem))
            .unwrap(),
    };
    let dave = Device::generate(rng).unwrap();
    let mut s = Session::initiate(
        &dave,
        &Address::new("dave").unwrap(),
        &Address::new("bob").unwrap(),
        &bundle,
        Trust::OnFirstUse,
        sessionkey::proto::suite::Suite::default_for_this_cpu(),
        rng,
    )
    .unwrap();
    let first = s.encrypt(&pad(&encode_text("first"))).unwrap();
    storage.enqueue("bob", "dave", &first, 1).await.unwrap();
    for _ in 0..1499 {
        s.encrypt(&pad(&encode_text("lost"))).unwrap();
    }
    let last = s.encrypt(&pad(&encode_text("last"))).unwrap();
    storage.enqueue("bob", "dave", &last, 2).await.unwrap();
    let events = drain(&mut bob).await;
    assert_eq!(texts(&events), ["first", "last"]);
    let reported: u32 = events
        .iter()
        .filter_map(|e| match e {
            Received::Undecryptable { from, count, .. } if from == "dave" => Some(*count),
            _ => None,
        })
        .sum();
    assert_eq!(reported as usize, 1499 - MAX_SKIPPED_PER_CHAIN);
    relay.stop();
}

/// The relay sees only the padding bucket of a message's length, not the length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_are_padded_to_buckets() {
    use sqlx::{Connection, Row};
    let dir = temp_dir("padding");
    let (relay, _storage, url_of, _) = start_relay(&dir).await;
    let db = format!("sqlite://{}", dir.join("relay.db").display());
    for name in ["alice", "bob"] {
        Messenger::init(&dir.join(name), &url_of, name, None)
            .await
            .unwrap();
    }
    let mut alice = Messenger::open(&dir.join("alice")).await.unwrap();
    let mut bob = Messenger::open(&dir.join("bob")).await.unwrap();
    let sizes = [0, 1, 17, 100, 254, 255, 510, 511, 1000, 1022];
    for n in sizes {
        alice.send_text("bob", &"x".repeat(n)).await.unwrap();
    }
    let mut conn = sqlx::AnyConnection::connect(&db).await.unwrap();
    let lengths: Vec<usize> =
        sqlx::query("SELECT body FROM messages WHERE recipient = 'bob' ORDER BY seq")
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<Vec<u8>, _>(0).len())
            .collect();
    // A text's payload is 1 + n bytes, padded with at least one byte: n = 0..=254 fill the
    // 256-byte bucket, 255..=510 the 512-byte one, 511..=1022 the 1024-byte one (all these
    // are setup envelopes of one session: equal overhead).
    let base = lengths[0];
    let want: Vec<usize> = [0, 0, 0, 0, 0, 256, 256, 768, 768, 768]
        .iter()
        .map(|d| base + d)
        .collect();
    assert_eq!(lengths, want);
    let got = texts(&drain(&mut bob).await);
    let want: Vec<String> = sizes.iter().map(|&n| "x".repeat(n)).collect();
    assert_eq!(got, want);
    relay.stop();
}

/// The signed prekey and the last-resort ML-KEM prekey rotate every 7 days (a virtual clock
/// here); a replaced one still serves setups in flight for its grace period, then is erased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prekeys_rotate_on_a_virtual_clock() {
    use sessionkey::msg::client::{PREKEY_GRACE_SECS, PREKEY_ROTATION_SECS};
    use sessionkey::msg::payload::encode_text;
    use sessionkey::proto::msg::{KemPrekey, SignedPrekey, Timestamp};
    let dir = temp_dir("rotation");
    let (relay, storage, url_of, _) = start_relay(&dir).await;
    Messenger::init(&dir.join("bob"), &url_of, "bob", None)
        .await
        .unwrap();
    let mut bob = Messenger::open(&dir.join("bob")).await.unwrap();
    let t0 = Timestamp::from_system_time(std::time::SystemTime::now()).unix_secs();
    let day = 24 * 60 * 60;
    let at = |secs: u64| Timestamp::from_unix_secs(t0 + secs);
    let relay_keys = || async {
        let d = storage.device("bob").await.unwrap().unwrap();
        (
            SignedPrekey::from_bytes(&d.signed_prekey).unwrap().id.0,
            KemPrekey::from_bytes(&d.last_resort_kem).unwrap().id.0,
        )
    };
    // Bundles fetched before any rotation, used later.
    let early = take_bundle(&storage, "bob").await;
    let late = take_bundle(&storage, "bob").await;
    let (spk0, lr0) = relay_keys().await;
    assert_eq!(early.signed_prekey.id.0, spk0);

    assert!(!bob
        .maintain_prekeys(at(PREKEY_ROTATION_SECS - day))
        .await
        .unwrap());
    assert_eq!(relay_keys().await, (spk0, lr0));
    assert!(bob
        .maintain_prekeys(at(PREKEY_ROTATION_SECS))
        .await
        .unwrap());
    let (spk1, lr1) = relay_keys().await;
    assert!(spk1 > spk0 && lr1 != lr0, "the relay has the new keys");

    // In the grace period the replaced signed prekey still serves a setup in flight.
    first_message_on(&storage, "dave", "bob", &early, &encode_text("in grace")).await;
    assert_eq!(texts(&drain(&mut bob).await), ["in grace"]);

    // Rotations go on; once past the grace period the first keys are erased, and a setup
    // on them can no longer be read (reported, not silent).
    assert!(bob
        .maintain_prekeys(at(2 * PREKEY_ROTATION_SECS))
        .await
        .unwrap());
    let past = 2 * PREKEY_ROTATION_SECS + PREKEY_GRACE_SECS + day;
    assert!(bob.maintain_prekeys(at(past)).await.unwrap());
    first_message_on(&storage, "erin", "bob", &late, &encode_text("too late")).await;
    let events = drain(&mut bob).await;
    assert!(texts(&events).is_empty(), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Received::Dropped { from, .. } if from == "erin")),
        "{events:?}"
    );
    // Not due again right away.
    assert!(!bob.maintain_prekeys(at(past + day)).await.unwrap());
    relay.stop();
}

/// One-time prekeys unused for the retention window (a virtual clock here) are retired: the
/// relay no longer hands them out, the device erases their secrets, and fresh ones replace
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_one_time_prekeys_are_retired() {
    use sessionkey::msg::client::{ONE_TIME_PREKEY_RETENTION_SECS, PREKEY_BATCH};
    use sessionkey::proto::msg::Timestamp;
    let dir = temp_dir("retire");
    let (relay, storage, url_of, _) = start_relay(&dir).await;
    Messenger::init(&dir.join("bob"), &url_of, "bob", None)
        .await
        .unwrap();
    let mut bob = Messenger::open(&dir.join("bob")).await.unwrap();
    let t0 = Timestamp::from_system_time(std::time::SystemTime::now()).unix_secs();
    let day = 24 * 60 * 60;
    let at = |secs: u64| Timestamp::from_unix_secs(t0 + secs);
    let used = take_bundle(&storage, "bob").await;
    let first_id = used.one_time_prekey.unwrap().id.0;
    let n = PREKEY_BATCH as u64;
    let counts = || async {
        let s = storage.status("bob").await.unwrap();
        (s.one_time_prekeys, s.kem_prekeys)
    };
    assert_eq!(counts().await, (n - 1, n - 1));
    assert_eq!(bob.one_time_prekeys_held(), (PREKEY_BATCH, PREKEY_BATCH));

    bob.maintain_prekeys(at(ONE_TIME_PREKEY_RETENTION_SECS - day))
        .await
        .unwrap();
    assert_eq!(counts().await, (n - 1, n - 1), "not yet");
    bob.maintain_prekeys(at(ONE_TIME_PREKEY_RETENTION_SECS))
        .await
        .unwrap();
    // The old batch is gone from the relay and the device (also the key handed out in a
    // bundle but never used); a fresh batch replaced it.
    assert_eq!(counts().await, (n, n));
    assert_eq!(bob.one_time_prekeys_held(), (PREKEY_BATCH, PREKEY_BATCH));
    let fresh = take_bundle(&storage, "bob").await;
    assert!(fresh.one_time_prekey.unwrap().id.0 > first_id + PREKEY_BATCH as u32 - 1);
    assert!(fresh.kem_prekey.id.0 > used.kem_prekey.id.0 && !fresh.kem_prekey.is_last_resort());
    // Not due again.
    bob.maintain_prekeys(at(ONE_TIME_PREKEY_RETENTION_SECS + day))
        .await
        .unwrap();
    assert_eq!(counts().await, (n - 1, n - 1));
    relay.stop();
}
