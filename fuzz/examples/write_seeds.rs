//! Write the seed corpus: `cargo run --example write_seeds [TARGET...]` (from fuzz/) puts
//! genuine inputs in `corpus/<target>/seed-<name>` (every target's, or the named ones'), and
//! runs each through its target once.

use std::fs;
use std::path::Path;

use sessionkey_proto_fuzz::{
    config, datagram, handshake, keyfile, msg, peer, pem, relay, stream, trust, vpn,
};

type Run = fn(&[u8]);
type Target = (&'static str, Vec<(String, Vec<u8>)>, Run);

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let targets: Vec<Target> = vec![
        ("record_stream", stream::seeds(), stream::run),
        ("record_datagram", datagram::seeds(), datagram::run),
        ("handshake_read", handshake::seeds(), handshake::run),
        ("vpn_message", vpn::seeds(), vpn::run),
        ("msg_wire", msg::seeds(), msg::run),
        ("key_files", keyfile::seeds(), keyfile::run),
        ("vpn_peer", peer::seeds(), peer::run),
        ("relay_api", relay::seeds(), relay::run),
        ("trust_files", trust::seeds(), trust::run),
        ("tunnel_config", config::tunnel_seeds(), config::run_tunnel),
        ("vpn_config", config::vpn_seeds(), config::run_vpn),
        ("tls_pem", pem::seeds(), pem::run),
    ];
    let only: Vec<String> = std::env::args().skip(1).collect();
    for (target, seeds, run) in targets {
        if !only.is_empty() && !only.iter().any(|t| t == target) {
            continue;
        }
        let dir = root.join(target);
        fs::create_dir_all(&dir).expect("corpus directory");
        for (name, bytes) in &seeds {
            run(bytes);
            let name: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
        }
        println!("{target}: {} seeds in {}", seeds.len(), dir.display());
    }
}
