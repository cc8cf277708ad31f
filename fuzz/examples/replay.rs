//! Run inputs through a target's code without libFuzzer, on any toolchain:
//! `cargo run --example replay -- <target> <file or directory>...`. Panics as the target would;
//! prints the total time and the slowest inputs.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sessionkey_proto_fuzz::{
    config, datagram, handshake, keyfile, msg, peer, pem, relay, stream, trust, vpn,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().expect("usage: replay <target> <paths>...");
    let run: fn(&[u8]) = match target.as_str() {
        "record_stream" => stream::run,
        "record_datagram" => datagram::run,
        "handshake_read" => handshake::run,
        "vpn_message" => vpn::run,
        "msg_wire" => msg::run,
        "key_files" => keyfile::run,
        "vpn_peer" => peer::run,
        "relay_api" => relay::run,
        "trust_files" => trust::run,
        "tunnel_config" => config::run_tunnel,
        "vpn_config" => config::run_vpn,
        "tls_pem" => pem::run,
        other => panic!("unknown target {other}"),
    };
    let mut files = Vec::new();
    for arg in args {
        let path = PathBuf::from(arg);
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = fs::read_dir(&path)
                .expect("read directory")
                .map(|e| e.expect("directory entry").path())
                .collect();
            entries.sort();
            files.extend(entries);
        } else {
            files.push(path);
        }
    }
    let mut times = Vec::new();
    for file in &files {
        let data = fs::read(file).expect("read input");
        let start = Instant::now();
        run(&data);
        times.push((start.elapsed(), file));
    }
    let total: Duration = times.iter().map(|(t, _)| *t).sum();
    println!(
        "{target}: {} inputs ran without a panic in {total:?}",
        files.len()
    );
    times.sort();
    for (t, file) in times.iter().rev().take(3) {
        println!("  slowest: {t:?} {}", file.display());
    }
}
