//! Key material leaves memory when its owner is dropped (DESIGN.md, ARCHITECTURE.md:
//! "zeroized on drop"), checked by a global allocator that copies every heap block freed
//! while a test is watching, so that the test can look for key material in what was freed.
//! A field that is not zeroized (as `KeyState`'s IV once was) stays in the freed block and
//! fails the test.
//!
//! What is checked: record keys (`SealingKey`, `OpeningKey`: the IV, and the traffic secret
//! they came from), `SecretKey`, `Psk`, the messaging ratchet's root, chain and message
//! keys, and whole established stream sessions (after key updates and a re-handshake),
//! whose live traffic secrets are recognised by their key fingerprints (section 10 of
//! docs/PROTOCOL.md) without the test knowing them; and Noise's chaining key, which
//! must leave nothing behind while the key schedule runs. Only heap memory is seen: stack copies
//! made by moves are out of reach of any such test.
//!
//! This file holds the only `unsafe` of the crate's tests: a `GlobalAlloc` cannot be
//! written without it. The protocol core itself stays `#![forbid(unsafe_code)]`.

#![allow(unsafe_code)]

mod sim;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;

use sessionkey_proto::keys::{Psk, SecretKey};
use sessionkey_proto::msg::kdf::{ChainKey, RootKey};
use sessionkey_proto::noise::Pattern;
use sessionkey_proto::session::SessionConfig;
use sessionkey_proto::suite::{OpeningKey, SealingKey, Suite};
use sim::{header, Pair};

/// Room for the freed blocks of one watched drop.
const CAPACITY: usize = 4 << 20;

static CAPTURED: [AtomicU8; CAPACITY] = [const { AtomicU8::new(0) }; CAPACITY];
static CAPTURED_LEN: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's frees are being captured (other tests' threads are not).
    static WATCHING: Cell<bool> = const { Cell::new(false) };
}

struct Capturing;

// SAFETY: every call is forwarded to `System` unchanged; `dealloc` only reads the block it
// is about to free (valid for `layout.size()` bytes) before freeing it, and allocates
// nothing itself.
unsafe impl GlobalAlloc for Capturing {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if WATCHING.try_with(Cell::get).unwrap_or(false) {
            let start = CAPTURED_LEN.fetch_add(layout.size(), Ordering::SeqCst);
            for i in 0..layout.size() {
                if let Some(slot) = CAPTURED.get(start + i) {
                    // SAFETY: `ptr` is valid for `layout.size()` bytes until freed below.
                    slot.store(unsafe { ptr.add(i).read() }, Ordering::Relaxed);
                }
            }
        }
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // The old block's bytes move to the new one: nothing is left behind by Rust (the
        // old block may keep a copy, which `System` does not clear; realloc of key
        // material does not happen in the code under test).
        // SAFETY: forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Capturing = Capturing;

/// One watched drop at a time (the capture buffer is shared).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Drop `value` while capturing what its drop frees; the freed bytes.
fn freed_by<T>(value: T) -> Vec<u8> {
    freed_while(|| drop(value)).1
}

/// Run `f` while capturing what it frees; its result and the freed bytes.
fn freed_while<R>(f: impl FnOnce() -> R) -> (R, Vec<u8>) {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    CAPTURED_LEN.store(0, Ordering::SeqCst);
    WATCHING.with(|w| w.set(true));
    let result = f();
    WATCHING.with(|w| w.set(false));
    let len = CAPTURED_LEN.load(Ordering::SeqCst);
    assert!(
        len <= CAPACITY,
        "{len} bytes freed, more than the {CAPACITY} captured"
    );
    let freed = CAPTURED[..len]
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .collect();
    (result, freed)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// HKDF-Expand-SHA256(secret, label) of `len` bytes, as PROTOCOL.md section 7 derives
/// record keys and IVs (computed here independently of the crate).
fn expand(secret: &[u8; 32], label: &[u8], len: usize) -> Vec<u8> {
    struct Len(usize);
    impl aws_lc_rs::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let prk = aws_lc_rs::hkdf::Prk::new_less_safe(aws_lc_rs::hkdf::HKDF_SHA256, secret);
    let mut out = vec![0u8; len];
    prk.expand(&[label], Len(len))
        .and_then(|okm| okm.fill(&mut out))
        .unwrap();
    out
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    ctx.finish().as_ref().try_into().unwrap()
}

#[test]
fn the_allocator_sees_what_is_not_zeroized() {
    // The test of the test: plain bytes on the heap are seen after their drop.
    let marker = [0x5au8; 48];
    let freed = freed_by(Box::new(marker));
    assert!(
        contains(&freed, &marker),
        "the capture misses plain heap bytes"
    );
}

#[test]
fn record_keys_leave_no_iv_or_secret_behind() {
    for suite in Suite::ALL {
        let secret = [0x3c ^ suite.id(); 32];
        let iv = expand(&secret, b"sessionkey v1 record iv", 12);
        let sealing = Box::new(SealingKey::new(suite, &SecretKey::from_bytes(secret)).unwrap());
        let freed = freed_by(sealing);
        assert!(!freed.is_empty(), "{suite}: nothing was freed");
        assert!(
            !contains(&freed, &iv),
            "{suite}: a dropped SealingKey left its IV"
        );
        assert!(
            !contains(&freed, &secret),
            "{suite}: a dropped SealingKey left its secret"
        );
        let opening = Box::new(OpeningKey::new(suite, &SecretKey::from_bytes(secret)).unwrap());
        let freed = freed_by(opening);
        assert!(
            !contains(&freed, &iv),
            "{suite}: a dropped OpeningKey left its IV"
        );
    }
}

#[test]
fn secret_and_ratchet_keys_leave_nothing_behind() {
    let bytes = [0xa7u8; 32];
    let freed = freed_by(Box::new(SecretKey::from_bytes(bytes)));
    assert!(!contains(&freed, &bytes), "SecretKey");
    let freed = freed_by(Box::new(Psk::from_bytes(bytes)));
    assert!(!contains(&freed, &bytes), "Psk");
    let freed = freed_by(Box::new(RootKey::from_bytes(bytes)));
    assert!(!contains(&freed, &bytes), "RootKey");
    let chain = ChainKey::from_bytes(bytes);
    let (next, message) = chain.step();
    let (next_bytes, message_bytes) = (*next.expose(), *message.expose());
    let freed = freed_by(Box::new((chain, next, message)));
    for (what, b) in [
        ("ChainKey", &bytes),
        ("the next ChainKey", &next_bytes),
        ("MessageKey", &message_bytes),
    ] {
        assert!(!contains(&freed, b), "{what}");
    }
}

/// Whether `freed` holds a 32-byte secret whose key fingerprint is one of `fingerprints`.
fn holds_a_live_secret(freed: &[u8], fingerprints: &[[u8; 32]]) -> bool {
    freed.windows(32).any(|w| {
        let fp = sha256(&[b"sessionkey v1 key fingerprint", w]);
        fingerprints.contains(&fp)
    })
}

#[test]
fn a_dropped_session_leaves_no_traffic_secret_behind() {
    for (pattern, suite) in [
        (Pattern::IK, Suite::Aes256Gcm),
        (Pattern::XX, Suite::ChaCha20Poly1305),
    ] {
        let mut p = Pair::established(header(pattern, suite, true), SessionConfig::default());
        // Some history: a key update each way and a re-handshake.
        p.client.session.update_keys();
        p.server.session.update_keys();
        p.client.session.rehandshake();
        for _ in 0..3 {
            let wire = Pair::send(&mut p.client, p.now, b"ping");
            p.server.inbox.extend_from_slice(&wire);
            let wire = Pair::send(&mut p.server, p.now, b"pong");
            p.client.inbox.extend_from_slice(&wire);
            p.server.receive(p.now);
            p.client.receive(p.now);
            p.pump();
        }
        let info = p.client.session.info().unwrap();
        assert!(info.rehandshakes >= 1 && info.send.epoch >= 2, "{info:?}");
        let live = [
            *info.send.key_fingerprint.as_bytes(),
            *info.receive.key_fingerprint.as_bytes(),
        ];
        // The test of the test: the live secrets are recognisable in the session's memory.
        let client = Box::new(p.client.session);
        let freed = freed_by(client);
        assert!(
            !holds_a_live_secret(&freed, &live),
            "{pattern:?} {suite}: a dropped client Session left a traffic secret in freed memory"
        );
        let server = Box::new(p.server.session);
        let freed = freed_by(server);
        assert!(
            !holds_a_live_secret(&freed, &live),
            "{pattern:?} {suite}: a dropped server Session left a traffic secret in freed memory"
        );
    }
}

#[test]
fn the_noise_key_schedule_leaves_no_chaining_key_behind() {
    use aws_lc_rs::hmac::{sign, Key, HMAC_SHA256};
    use sessionkey_proto::crypto::SystemRandom;
    use sessionkey_proto::keys::Identity;
    use sessionkey_proto::noise::HandshakeBuilder;
    use std::sync::Arc;

    // Split's first output from a candidate chaining key: HMAC(HMAC(ck, ""), 0x01).
    let split_key = |ck: &[u8]| {
        let temp = sign(&Key::new(HMAC_SHA256, ck), &[]);
        sign(&Key::new(HMAC_SHA256, temp.as_ref()), &[1])
    };
    let server = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
    let client = Arc::new(Identity::generate(&mut SystemRandom).unwrap());
    let params = "Noise_IKhfs_25519+MLKEM768_AESGCM_SHA256".parse().unwrap();
    let mut initiator = HandshakeBuilder::new(params)
        .local_static(client)
        .remote_static(*server.public_key())
        .build_initiator()
        .unwrap();
    let mut responder = HandshakeBuilder::new(params)
        .local_static(server)
        .build_responder()
        .unwrap();
    let (mut msg, mut payload) = (vec![0; 4096], vec![0; 4096]);
    let n = initiator.write_message(&[], &mut msg).unwrap();
    responder.read_message(&msg[..n], &mut payload).unwrap();
    let n = responder.write_message(&[], &mut msg).unwrap();
    initiator.read_message(&msg[..n], &mut payload).unwrap();
    // Split's HKDF runs under the final chaining key, from which both transport keys come.
    let (split, freed) = freed_while(|| initiator.split().unwrap());
    let k1 = *split.initiator_to_responder.expose();
    // The chaining key is recognised by the key it gives. This failed while Noise's HKDF
    // used aws-lc-rs's `hkdf::Salt`, which copies its value to the heap and frees it as is.
    assert!(
        !freed.windows(32).any(|w| split_key(w).as_ref() == k1),
        "Split left the chaining key in freed memory"
    );
}

#[test]
fn the_root_ratchet_leaves_no_root_key_behind() {
    // The root key is KDF_RK's HKDF salt: a heap copy of it, freed as is, would be a secret
    // left behind by every ratchet step.
    let bytes = [0x3eu8; 32];
    let root = RootKey::from_bytes(bytes);
    let (_, freed) = freed_while(|| root.ratchet(&[0x11; 32]));
    assert!(!contains(&freed, &bytes), "RootKey::ratchet");
}
