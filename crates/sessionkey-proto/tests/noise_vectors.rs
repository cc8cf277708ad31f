//! Every published Noise vector (cacophony, snow, noise-c) whose pattern, DH, cipher and hash
//! this engine supports must reproduce byte for byte: each message, and the handshake hash.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use sessionkey_proto::crypto::SecureRandom;
use sessionkey_proto::keys::{Identity, Psk, PublicKey};
use sessionkey_proto::noise::{HandshakeBuilder, NoiseParams};
use sessionkey_proto::Error;

/// Hands out exactly the vector's ephemeral key.
struct FixedRandom(Vec<u8>);

impl SecureRandom for FixedRandom {
    fn fill(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        if self.0.len() < dest.len() {
            return Err(Error::Crypto("fixed randomness exhausted"));
        }
        let rest = self.0.split_off(dest.len());
        dest.copy_from_slice(&self.0);
        self.0 = rest;
        Ok(())
    }
}

fn bytes(v: &Value, key: &str) -> Option<Vec<u8>> {
    v.get(key)
        .and_then(Value::as_str)
        .map(|s| hex::decode(s).unwrap())
}

fn psks(v: &Value, side: &str) -> Vec<Psk> {
    let many = v
        .get(format!("{side}_psks"))
        .and_then(Value::as_array)
        .cloned();
    let one = v.get(format!("{side}_psk")).cloned().map(|p| vec![p]);
    many.or(one)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            Psk::from_bytes(
                hex::decode(p.as_str().unwrap())
                    .unwrap()
                    .try_into()
                    .unwrap(),
            )
        })
        .collect()
}

fn build(v: &Value, params: NoiseParams, side: &str) -> sessionkey_proto::noise::HandshakeState {
    let initiator = side == "init";
    let mut b = HandshakeBuilder::new(params);
    let prologue = bytes(v, &format!("{side}_prologue")).unwrap_or_default();
    let prologue: &'static [u8] = Box::leak(prologue.into_boxed_slice());
    b = b.prologue(prologue);
    if let Some(s) = bytes(v, &format!("{side}_static")) {
        b = b.local_static(Arc::new(
            Identity::from_secret_bytes(&s.try_into().unwrap()).unwrap(),
        ));
    }
    let premessage = if initiator {
        params.pattern.responder_premessage()
    } else {
        params.pattern.initiator_premessage()
    };
    if premessage {
        let rs = bytes(v, &format!("{side}_remote_static")).unwrap();
        b = b.remote_static(PublicKey::from_bytes(rs.try_into().unwrap()));
    }
    for psk in psks(v, side) {
        b = b.psk(psk);
    }
    let e = bytes(v, &format!("{side}_ephemeral")).unwrap_or_default();
    b = b.rng(Box::new(FixedRandom(e)));
    if initiator {
        b.build_initiator().unwrap()
    } else {
        b.build_responder().unwrap()
    }
}

/// Runs one vector; Err describes the first mismatch.
fn run(v: &Value, params: NoiseParams) -> Result<(), String> {
    let mut init = build(v, params, "init");
    let mut resp = build(v, params, "resp");
    let messages = v["messages"].as_array().unwrap();
    let mut buf = vec![0u8; 70000];
    let mut out = vec![0u8; 70000];
    let mut i = 0;
    // Handshake phase: alternate writers.
    while !init.is_finished() {
        let m = &messages[i];
        let payload = bytes(m, "payload").unwrap();
        let expected = bytes(m, "ciphertext").unwrap();
        let (w, r) = if i % 2 == 0 {
            (&mut init, &mut resp)
        } else {
            (&mut resp, &mut init)
        };
        let n = w
            .write_message(&payload, &mut buf)
            .map_err(|e| format!("msg {i}: {e}"))?;
        if buf[..n] != expected[..] {
            return Err(format!("message {i} differs"));
        }
        let p = r
            .read_message(&expected, &mut out)
            .map_err(|e| format!("read {i}: {e}"))?;
        if out[..p] != payload[..] {
            return Err(format!("payload {i} differs"));
        }
        i += 1;
    }
    if !resp.is_finished() {
        return Err("responder not finished".into());
    }
    if let Some(h) = bytes(v, "handshake_hash") {
        if init.handshake_hash()[..] != h[..] || resp.handshake_hash()[..] != h[..] {
            return Err("handshake hash differs".into());
        }
    }
    let mut init = init.into_transport().map_err(|e| e.to_string())?;
    let mut resp = resp.into_transport().map_err(|e| e.to_string())?;
    // Transport phase: keep alternating (all supported patterns are interactive).
    for (j, m) in messages.iter().enumerate().skip(i) {
        let payload = bytes(m, "payload").unwrap();
        let expected = bytes(m, "ciphertext").unwrap();
        let (w, r) = if j % 2 == 0 {
            (&mut init, &mut resp)
        } else {
            (&mut resp, &mut init)
        };
        let n = w
            .write_message(&payload, &mut buf)
            .map_err(|e| e.to_string())?;
        if buf[..n] != expected[..] {
            return Err(format!("transport message {j} differs"));
        }
        let p = r
            .read_message(&expected, &mut out)
            .map_err(|e| e.to_string())?;
        if out[..p] != payload[..] {
            return Err(format!("transport payload {j} differs"));
        }
    }
    Ok(())
}

#[test]
fn noise_vectors() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../vectors/noise");
    let mut total = (0, 0);
    let mut per_file = Vec::new();
    for file in ["cacophony.txt", "snow.txt", "noise-c-basic.txt"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let json: Value = serde_json::from_str(&text).unwrap();
        let (mut passed, mut failed) = (0, 0);
        for v in json["vectors"].as_array().unwrap() {
            let name = v
                .get("protocol_name")
                .or_else(|| v.get("name"))
                .and_then(Value::as_str)
                .unwrap();
            // Unsupported DH, cipher, hash or pattern, and the obsolete NoisePSK_ scheme.
            let Ok(params) = name.parse::<NoiseParams>() else {
                continue;
            };
            match run(v, params) {
                Ok(()) => passed += 1,
                Err(why) => {
                    failed += 1;
                    eprintln!("{file}: {name}: {why}");
                }
            }
        }
        per_file.push(format!("{file} {passed}"));
        total = (total.0 + passed, total.1 + failed);
    }
    let _ = writeln!(
        std::io::stderr().lock(),
        "noise-vectors: {} passed, {} failed ({})",
        total.0,
        total.1,
        per_file.join(", ")
    );
    assert_eq!(total.1, 0, "some Noise vectors failed");
    // cacophony 72, snow 64, noise-c 20: NN NK XX IK KK, the deferred NK1 XX1 KK1 IK1, and
    // every psk combination of those in the files, over 25519 x {AESGCM, ChaChaPoly} x
    // {SHA256, BLAKE2s}.
    assert_eq!(
        per_file,
        ["cacophony.txt 72", "snow.txt 64", "noise-c-basic.txt 20"]
    );
}
