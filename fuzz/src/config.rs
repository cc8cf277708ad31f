//! `tunnel_config` and `vpn_config`: the TOML configuration files (docs/CONFIG.md,
//! docs/VPN.md) as `sessionkey check` and start-up read them.
//!
//! The input is the file's text (lossy UTF-8), kept in a scratch directory that also holds
//! a private key (`me.key`, mode 0600), a pre-shared key (`psk`, 0600) and an
//! authorized-peers file (`authorized_peers`), so that relative paths in the text find
//! real files. Texts naming a path with a `/` are not checked against the file system (the
//! checks would open whatever the fuzzer names, `/dev/zero` included); their text-only
//! properties still are.
//!
//! `tunnel_config`: [`sessionkey::check::tunnel_file`]: every problem names a line of the
//! file (1 to the number of newlines + 1) and a field of the table it is in; problems come
//! in line order; the clean tables are tables of the file, at lines of the file, and a
//! table is clean or has problems, not both; checking again gives the same answer.
//!
//! `vpn_config`: [`VpnConfigText::parse`], the text-only step of [`VpnConfig::parse`]: an
//! error names a line of the file and a field; a text that passes has the values its
//! checks promise (an address, MTU and interval in range, peers with distinct keys and
//! allowed IPs); parsing again gives the same; and when its files are in the scratch
//! directory and its endpoints are addresses (no DNS), [`VpnConfigText::resolve`] and
//! [`VpnConfig::parse`] agree: the whole parse fails exactly when the text step or the
//! resolution does, with the same error.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sessionkey::check::tunnel_file;
use sessionkey::trust::PeerKey;
use sessionkey::vpn::{ConfigError, VpnConfig, VpnConfigText};
use sessionkey_proto::keys::{write_keypair, Identity, PublicKey};

use crate::keyfile::scratch;

/// The fixed identity of the VPN's `me.key`.
fn me() -> &'static Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(|| Identity::from_secret_bytes(&[0x44; 32]).expect("fixed key"))
}

/// A peer's public key, as seeds write it.
fn peer_key(b: u8) -> PublicKey {
    *Identity::from_secret_bytes(&[b; 32])
        .expect("fixed key")
        .public_key()
}

/// The directory configuration files are "in", with the files they may name.
fn config_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch().join("config");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("a scratch directory");
        write_keypair(&dir.join("me.key"), me(), "fuzz").expect("writing me.key");
        let mut psk = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join("psk"))
            .expect("writing psk");
        psk.write_all(b"WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlo=\n")
            .expect("writing psk");
        fs::write(
            dir.join("authorized_peers"),
            PeerKey::Native(peer_key(2)).to_line("peer") + "\n",
        )
        .expect("writing authorized_peers");
        dir
    })
}

/// The number of the last line a span can fall on: newlines + 1.
fn last_line(text: &str) -> usize {
    text.bytes().filter(|b| *b == b'\n').count() + 1
}

/// Whether every string in the TOML `text` stays inside the configuration's directory
/// (no `/`); `true` for text that is not TOML (nothing then reads a file).
fn stays_home(text: &str) -> bool {
    fn walk(v: &toml::Value) -> bool {
        match v {
            toml::Value::String(s) => !s.contains('/'),
            toml::Value::Array(a) => a.iter().all(walk),
            toml::Value::Table(t) => t.values().all(walk),
            _ => true,
        }
    }
    match toml::from_str::<toml::Table>(text) {
        Ok(t) => t.values().all(walk),
        Err(_) => true,
    }
}

/// Run one `tunnel_config` input.
pub fn run_tunnel(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if !stays_home(&text) {
        return;
    }
    let path = config_dir().join("tunnel.toml");
    let check = tunnel_file(&path, &text);
    let last = last_line(&text);
    for p in &check.problems {
        assert!(
            (1..=last).contains(&p.line),
            "{p}: line {} of a {last}-line file",
            p.line
        );
        assert_eq!(p.path, path);
        assert!(!p.field.is_empty() && !p.message.is_empty(), "{p:?}");
        if let Some(rest) = p.field.strip_prefix("tunnel[") {
            let index: usize = rest
                .split(']')
                .next()
                .and_then(|i| i.parse().ok())
                .unwrap_or_else(|| panic!("field {:?}", p.field));
            assert!(index < check.tables, "{p}: of {} tables", check.tables);
            assert!(
                !check.clean.iter().any(|t| t.index == index),
                "tunnel[{index}] is clean and has a problem: {p}"
            );
        }
    }
    assert!(
        check.problems.windows(2).all(|w| w[0].line <= w[1].line),
        "problems out of line order: {:?}",
        check.problems.iter().map(|p| p.line).collect::<Vec<_>>()
    );
    assert!(check.clean.len() <= check.tables);
    assert!(
        check.clean.windows(2).all(|w| w[0].index < w[1].index),
        "clean tables out of order"
    );
    for t in &check.clean {
        assert!(t.index < check.tables);
        assert!((1..=last).contains(&t.line), "table at line {}", t.line);
    }
    let again = tunnel_file(&path, &text);
    assert_eq!(again.problems, check.problems, "a second check differs");
    assert_eq!(again.tables, check.tables);
}

/// Run one `vpn_config` input.
pub fn run_vpn(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = config_dir().join("wg-fuzz.toml");
    let last = last_line(&text);
    let parsed = VpnConfigText::parse(&path, &text);
    let again = VpnConfigText::parse(&path, &text);
    match (&parsed, &again) {
        (Err(a), Err(b)) => assert_eq!(shown(a), shown(b), "parsing twice differs"),
        (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
        _ => panic!("parsing twice differs"),
    }
    let text_ok = match parsed {
        Err(e) => {
            assert!((1..=last).contains(&e.line), "{e}: of a {last}-line file");
            assert_eq!(e.path, path);
            assert!(!e.field.is_empty() && !e.message.is_empty(), "{e:?}");
            None
        }
        Ok(c) => {
            assert!(!c.addresses.is_empty(), "no address");
            assert!((576..=9000).contains(&c.mtu), "mtu {}", c.mtu);
            assert!(
                (0.5..=3600.0).contains(&c.rekey_interval.as_secs_f64()),
                "rekey interval {:?}",
                c.rekey_interval
            );
            assert!(
                !c.name.is_empty() && c.name.len() <= 15,
                "name {:?}",
                c.name
            );
            let mut keys: Vec<_> = c.peers.iter().map(|p| p.public_key).collect();
            keys.sort_by_key(|k| k.to_base64());
            keys.dedup();
            assert_eq!(keys.len(), c.peers.len(), "a peer listed twice");
            for p in &c.peers {
                assert!(!p.allowed_ips.is_empty(), "a peer without allowed IPs");
                assert!(p
                    .persistent_keepalive
                    .is_none_or(|k| k.as_secs() >= 1 && k.as_secs() <= 3600));
            }
            Some(c)
        }
    };
    let Some(c) = text_ok else {
        // The whole parse stops at the same mistake, before it reads a file.
        let whole = VpnConfig::parse(&path, &text).expect_err("the text step failed");
        let step = VpnConfigText::parse(&path, &text).expect_err("it failed above");
        assert_eq!(shown(&whole), shown(&step));
        return;
    };
    // A name without `/`, joined to the configuration's directory.
    let local = |p: &Path| p.parent() == Some(config_dir());
    let offline = c.peers.iter().all(|p| {
        p.endpoint
            .as_deref()
            .is_none_or(|e| e.parse::<std::net::SocketAddr>().is_ok())
    });
    if !(local(&c.private_key_file)
        && c.peers
            .iter()
            .all(|p| p.preshared_key_file.as_deref().is_none_or(local))
        && offline)
    {
        return;
    }
    let peers = c.peers.len();
    let resolved = c.resolve();
    let whole = VpnConfig::parse(&path, &text);
    match (&resolved, &whole) {
        (Ok(r), Ok(w)) => {
            assert_eq!(format!("{r:?}"), format!("{w:?}"));
            assert_eq!(r.peers.len(), peers);
            assert!(r
                .peers
                .iter()
                .all(|p| p.public_key != *r.identity.public_key()));
        }
        (Err(a), Err(b)) => {
            assert_eq!(shown(a), shown(b));
            assert!((1..=last).contains(&a.line), "{a}: of a {last}-line file");
        }
        _ => panic!("resolve and parse disagree: {resolved:?} / {whole:?}"),
    }
}

fn shown(e: &ConfigError) -> String {
    e.to_string()
}

/// Tunnel seeds: docs/CONFIG.md's examples, with the scratch directory's files.
pub fn tunnel_seeds() -> Vec<(String, Vec<u8>)> {
    config_dir();
    let key = PeerKey::Native(peer_key(2)).to_line("");
    let server = "[[tunnel]]\nname = \"web\"\nrole = \"server\"\nlisten = \"0.0.0.0:7000\"\n\
                  to = \"127.0.0.1:8080\"\nkey = \"me.key\"\nauthorized_peers = \"authorized_peers\"\n\
                  suite = \"aes-256-gcm\"\npsk = \"psk\"\nmax_handshakes = 64\n";
    let client = format!(
        "[[tunnel]]\nrole = \"client\"\nlisten = \"127.0.0.1:8080\"\nserver = \"host.example:7000\"\n\
         server_key = \"{key}\"\nknown_peers = \"known_peers\"\naccept_new = true\nclassic = false\n"
    );
    let tls = format!(
        "metrics = \"127.0.0.1:9100\"\n\n{server}\n[[tunnel]]\nrole = \"server\"\n\
         listen = \"[::]:7443\"\nto = \"127.0.0.1:8080\"\ntransport = \"tls\"\ncert = \"cert.pem\"\n\
         cert_key = \"key.pem\"\nallow = [\"{key}\"]\nany_client = false\nkey_update_bytes = 1000000\n"
    );
    let mistakes = "colour = 1\n[[tunnel]]\nrole = \"client\"\nlisen = \"x\"\nserver = \"h\"\n\
                    [[tunnel]]\nrole = \"sever\"\n";
    vec![
        ("server".into(), server.as_bytes().to_vec()),
        ("client".into(), client.into_bytes()),
        ("tls-and-metrics".into(), tls.into_bytes()),
        ("mistakes".into(), mistakes.as_bytes().to_vec()),
    ]
}

/// VPN seeds: docs/VPN.md's examples, with the scratch directory's files.
pub fn vpn_seeds() -> Vec<(String, Vec<u8>)> {
    config_dir();
    let peer = peer_key(2).to_line("site-b");
    let other = peer_key(3).to_base64();
    let full = format!(
        "[interface]\nprivate_key_file = \"me.key\"\naddress = [\"10.8.0.1/24\", \"fd08::1/64\"]\n\
         listen_port = 51820\nmtu = 1420\nhybrid = true\nsuite = \"chacha20-poly1305\"\n\
         rekey_interval = 120.0\noffload = false\nname = \"wg0\"\nroutes = \"auto\"\ntable = 1234\n\
         fwmark = 51820\nuser = \"nobody\"\npre_up = \"true\"\npost_down = [\"echo %i\"]\n\n\
         [[peer]]\npublic_key = \"{peer}\"\nendpoint = \"198.51.100.2:51820\"\n\
         allowed_ips = [\"10.8.0.2/32\"]\npreshared_key_file = \"psk\"\npersistent_keepalive = 25\n\n\
         [[peer]]\npublic_key = \"{other}\"\nendpoint = \"[2001:db8::2]:51820\"\n\
         allowed_ips = [\"10.8.0.3/32\", \"fd08::3/128\"]\n"
    );
    let own = format!(
        "[interface]\nprivate_key_file = \"me.key\"\naddress = [\"10.8.0.1/24\"]\n\n[[peer]]\n\
         public_key = \"{}\"\nallowed_ips = [\"10.8.0.2/32\"]\n",
        me().public_key().to_base64()
    );
    let named = format!(
        "[interface]\nprivate_key_file = \"me.key\"\naddress = [\"10.8.0.1/24\"]\n\n[[peer]]\n\
         public_key = \"{peer}\"\nendpoint = \"vpn.example.com\"\nallowed_ips = [\"10.8.0.2/32\"]\n"
    );
    vec![
        ("full".into(), full.into_bytes()),
        ("own-key".into(), own.into_bytes()),
        ("endpoint-without-port".into(), named.into_bytes()),
    ]
}
