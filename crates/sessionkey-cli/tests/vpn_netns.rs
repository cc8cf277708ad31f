//! `sessionkey vpn` end to end, as root: two network namespaces joined by a veth pair, a
//! VPN process in each, and traffic between their tunnel addresses. The test makes the
//! namespaces itself (unique names) and removes them in a drop guard, even on failure.
//!
//! A's packets to B go through a small UDP relay run by the test inside A's namespace, so
//! the test can capture and replay a data packet and move A's apparent address (roaming).
//!
//! It checks: ping; a 32 MiB TCP transfer with a SHA-256 check while handshakes repeat every
//! 1.5 s; a replayed data packet is dropped; a packet with a spoofed inner source is
//! dropped; an initiation from an unknown key is counted; a change of endpoint keeps the
//! tunnel up; `vpn down` and SIGTERM stop the processes and remove the interfaces.
//!
//! Needs root, /dev/net/tun, `ip` (iproute2) and `ping` (iputils-ping). Without them it
//! fails, saying what is missing: CI runs it as root.

mod bounded;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sessionkey");
/// How long one helper command (`ip`, `ping`, `sessionkey vpn ...`) may run.
const CMD_TIMEOUT: Duration = Duration::from_secs(60);
const VETH_A: &str = "10.231.0.1";
const VETH_B: &str = "10.231.0.2";
const TUN_A: &str = "10.231.1.1";
const TUN_B: &str = "10.231.1.2";
const PORT: u16 = 51820;
/// A network behind A, outside the tunnel's prefix: reachable from B only by the route
/// `routes = "auto"` adds.
const A_LAN: &str = "10.231.9.0/24";
const A_LAN_HOST: &str = "10.231.9.1";

fn preconditions() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "the VPN test needs root (network namespaces, /dev/net/tun); run it as root, e.g. \
         sudo -E cargo test -p sessionkey-cli --test vpn_netns (CI runs as root)"
    );
    assert!(
        Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing: modprobe tun (in a container: --device /dev/net/tun)"
    );
    for (tool, package) in [("ip", "iproute2"), ("ping", "iputils-ping")] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(|mut c| bounded::wait_within(&mut c, CMD_TIMEOUT, "a helper command"))
            .is_ok();
        assert!(found, "`{tool}` is missing: apt-get install {package}");
    }
}

fn run(cmd: &mut Command) -> std::process::Output {
    let what = format!("{cmd:?}");
    let out = bounded::run_within(cmd, CMD_TIMEOUT, &what);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// The namespaces, the VPN processes and the temp dir; all removed when dropped.
struct Lab {
    ns_a: String,
    ns_b: String,
    tun_a: String,
    tun_b: String,
    dir: PathBuf,
    vpns: Vec<Child>,
    /// More namespaces made by the test, removed with the others.
    extra_ns: Vec<String>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        // SIGTERM first, so a VPN removes its interface and control socket itself.
        for child in &mut self.vpns {
            if let Ok(None) = child.try_wait() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for child in &mut self.vpns {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [&self.ns_a, &self.ns_b].into_iter().chain(&self.extra_ns) {
            let _ = bounded::status_within(
                Command::new("ip").args(["netns", "del", ns]),
                CMD_TIMEOUT,
                "ip netns del",
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Lab {
    fn new() -> Self {
        let id = std::process::id() % 100_000;
        let lab = Self {
            ns_a: format!("skv{id}a"),
            ns_b: format!("skv{id}b"),
            tun_a: format!("skv{id}ta"),
            tun_b: format!("skv{id}tb"),
            dir: std::env::temp_dir().join(format!("skv-test-{id}")),
            vpns: Vec::new(),
            extra_ns: Vec::new(),
        };
        let _ = std::fs::remove_dir_all(&lab.dir);
        std::fs::create_dir_all(&lab.dir).unwrap();
        let (va, vb) = (format!("skv{id}va"), format!("skv{id}vb"));
        ip(&["netns", "add", &lab.ns_a]);
        ip(&["netns", "add", &lab.ns_b]);
        ip(&[
            "link", "add", &va, "netns", &lab.ns_a, "type", "veth", "peer", "name", &vb, "netns",
            &lab.ns_b,
        ]);
        ip(&[
            "-n",
            &lab.ns_a,
            "addr",
            "add",
            &format!("{VETH_A}/24"),
            "dev",
            &va,
        ]);
        ip(&[
            "-n",
            &lab.ns_b,
            "addr",
            "add",
            &format!("{VETH_B}/24"),
            "dev",
            &vb,
        ]);
        for (ns, dev) in [(&lab.ns_a, &va), (&lab.ns_b, &vb)] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    fn keygen(&self, name: &str) -> String {
        let key = self.dir.join(name);
        run(Command::new(BIN)
            .args(["keygen", "-C", name, "-o"])
            .arg(&key));
        let line = std::fs::read_to_string(self.dir.join(format!("{name}.pub"))).unwrap();
        line.split_whitespace().nth(1).unwrap().to_string()
    }

    fn start(&mut self, ns: &str, config: &Path, log: &str) {
        self.start_with(ns, config, log, &[]);
    }

    fn start_with(&mut self, ns: &str, config: &Path, log: &str, extra: &[&str]) {
        let log = File::create(self.dir.join(log)).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, BIN, "-v", "vpn", "up"])
            .arg(config)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.vpns.push(child);
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn wait_for_link(&self, ns: &str, dev: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let ok = Command::new("ip")
                .args(["-n", ns, "link", "show", dev])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map(|mut c| bounded::wait_within(&mut c, CMD_TIMEOUT, "a helper command"))
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "interface {dev} did not appear in {ns}; logs:\n{}\n{}",
            self.log("a.log"),
            self.log("b.log")
        );
    }

    fn link_exists(&self, ns: &str, dev: &str) -> bool {
        Command::new("ip")
            .args(["-n", ns, "link", "show", dev])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(|mut c| bounded::wait_within(&mut c, CMD_TIMEOUT, "a helper command"))
            .is_ok_and(|s| s.success())
    }

    fn ping(&self, ns: &str, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-q"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(|mut c| bounded::wait_within(&mut c, CMD_TIMEOUT, "a helper command"))
            .is_ok_and(|s| s.success())
    }

    /// `vpn show NAME --json` of one interface.
    fn show(&self, name: &str) -> Value {
        let out = run(Command::new(BIN).args(["vpn", "show", name, "--json"]));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0].clone()
    }
}

/// Run `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// A UDP relay inside A's namespace: A sends to `front` (127.0.0.1), the relay forwards
/// from its `back` socket to B. It keeps the last data packet from A, can replay it, and
/// can move to a new `back` port (A appears to roam).
struct Relay {
    replay: Arc<AtomicBool>,
    roam: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    back_port: Arc<Mutex<u16>>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Relay {
    fn start(ns: &str) -> (Self, u16) {
        let replay = Arc::new(AtomicBool::new(false));
        let roam = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let back_port = Arc::new(Mutex::new(0));
        let (tx, rx) = mpsc::channel();
        let (rp, rm, st, bp) = (
            replay.clone(),
            roam.clone(),
            stop.clone(),
            back_port.clone(),
        );
        let handle = in_netns(ns, move || {
            let front = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut back = UdpSocket::bind(format!("{VETH_A}:0")).unwrap();
            *bp.lock().unwrap() = back.local_addr().unwrap().port();
            tx.send(front.local_addr().unwrap().port()).unwrap();
            let b: SocketAddr = format!("{VETH_B}:{PORT}").parse().unwrap();
            for s in [&front, &back] {
                s.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
            }
            let mut a: Option<SocketAddr> = None;
            let mut last_data: Option<Vec<u8>> = None;
            let mut buf = vec![0u8; 65_536];
            while !st.load(Ordering::Relaxed) {
                // Drain each side.
                while let Ok((n, from)) = front.recv_from(&mut buf) {
                    a = Some(from);
                    if buf[0] == 4 && n > 32 {
                        last_data = Some(buf[..n].to_vec());
                    }
                    let _ = back.send_to(&buf[..n], b);
                }
                while let Ok((n, _)) = back.recv_from(&mut buf) {
                    if let Some(a) = a {
                        let _ = front.send_to(&buf[..n], a);
                    }
                }
                if rp.swap(false, Ordering::Relaxed) {
                    if let Some(p) = &last_data {
                        let _ = back.send_to(p, b);
                    }
                }
                if rm.swap(false, Ordering::Relaxed) {
                    back = UdpSocket::bind(format!("{VETH_A}:0")).unwrap();
                    back.set_read_timeout(Some(Duration::from_millis(2)))
                        .unwrap();
                    *bp.lock().unwrap() = back.local_addr().unwrap().port();
                }
            }
        });
        let front_port = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        (
            Self {
                replay,
                roam,
                stop,
                back_port,
                handle: Some(handle),
            },
            front_port,
        )
    }

    fn back_port(&self) -> u16 {
        *self.back_port.lock().unwrap()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Port of `vpn up --metrics` inside B's namespace (free: the namespace is the test's).
const METRICS_PORT: u16 = 19100;

/// `GET /metrics` on 127.0.0.1:METRICS_PORT of the current network namespace.
fn scrape_metrics() -> String {
    use std::io::{Read, Write};
    let mut conn = TcpStream::connect(("127.0.0.1", METRICS_PORT)).expect("metrics");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

fn counter(v: &Value, name: &str) -> u64 {
    v["counters"][name].as_u64().unwrap_or(0)
}

fn peer0(v: &Value, name: &str) -> u64 {
    v["peers"][0][name].as_u64().unwrap_or(0)
}

/// Wait until `cond` holds (bounded).
fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting until {what}");
}

fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

#[test]
fn vpn_between_two_namespaces() {
    preconditions();
    let started = Instant::now();
    let mut lab = Lab::new();
    let key_a = lab.keygen("a.key");
    let key_b = lab.keygen("b.key");
    let (relay, front_port) = Relay::start(&lab.ns_a);

    // A pre-shared key for A and B (root-only file): syncconf must carry it intact, or the
    // handshakes after it (every 1.5 s) fail.
    {
        use std::os::unix::fs::PermissionsExt;
        let psk: String = {
            use base64::Engine;
            let bytes: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37) ^ 0x5c).collect();
            base64::engine::general_purpose::STANDARD.encode(bytes)
        };
        let path = lab.dir.join("a-b.psk");
        std::fs::write(&path, format!("{psk}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let config_a = lab.dir.join("a.toml");
    std::fs::write(
        &config_a,
        format!(
            "[interface]\nname = \"{}\"\nprivate_key_file = \"a.key\"\naddress = [\"{TUN_A}/24\"]\n\
             listen_port = {PORT}\nrekey_interval = 1.5\n\n\
             [[peer]]\npublic_key = \"{key_b}\"\nendpoint = \"127.0.0.1:{front_port}\"\n\
             allowed_ips = [\"{TUN_B}/32\"]\npreshared_key_file = \"a-b.psk\"\n",
            lab.tun_a
        ),
    )
    .unwrap();
    let config_b = lab.dir.join("b.toml");
    std::fs::write(
        &config_b,
        format!(
            "[interface]\nname = \"{}\"\nprivate_key_file = \"b.key\"\naddress = [\"{TUN_B}/24\"]\n\
             listen_port = {PORT}\nrekey_interval = 1.5\nroutes = \"auto\"\nuser = \"root\"\n\
             post_up = \"echo up %i >> {hooks}\"\npost_down = [\"echo down %i >> {hooks}\"]\n\n\
             [[peer]]\npublic_key = \"{key_a}\"\nallowed_ips = [\"{TUN_A}/32\", \"{A_LAN}\"]\n\
             preshared_key_file = \"a-b.psk\"\n",
            lab.tun_b,
            hooks = lab.dir.join("hooks.out").display(),
        ),
    )
    .unwrap();
    let (ns_a, ns_b) = (lab.ns_a.clone(), lab.ns_b.clone());
    lab.start(&ns_a, &config_a, "a.log");
    lab.start_with(
        &ns_b,
        &config_b,
        "b.log",
        &["--metrics", &format!("127.0.0.1:{METRICS_PORT}")],
    );
    lab.wait_for_link(&ns_a, &lab.tun_a);
    lab.wait_for_link(&ns_b, &lab.tun_b);

    // 1. Ping through the tunnel (the first packet starts the handshake).
    assert!(
        lab.ping(&ns_a, &["-c", "3", "-i", "0.2", "-W", "3", TUN_B]),
        "no ping through the tunnel; logs:\n{}\n{}",
        lab.log("a.log"),
        lab.log("b.log")
    );
    // 1a. A (default user = "nobody") dropped root once up: no uid 0, no capabilities.
    // (B keeps root: its hooks write to the test's root-owned directory.)
    let status = std::fs::read_to_string(format!("/proc/{}/status", lab.vpns[0].id())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(field("Uid:"), "65534 65534 65534 65534", "{status}");
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
    assert_eq!(field("CapPrm:"), "0000000000000000", "{status}");
    assert!(lab.log("a.log").contains("running as user nobody"));

    // 1b. routes = "auto": B routes A's other network through the tunnel, and the
    // post_up hook ran with the interface name.
    let route = run(Command::new("ip").args(["-n", &ns_b, "route", "show", A_LAN]));
    let route = String::from_utf8_lossy(&route.stdout).to_string();
    assert!(
        route.contains(&lab.tun_b),
        "no route for {A_LAN}: {route:?}"
    );
    ip(&[
        "-n",
        &ns_a,
        "addr",
        "add",
        &format!("{A_LAN_HOST}/32"),
        "dev",
        "lo",
    ]);
    assert!(
        lab.ping(&ns_b, &["-c", "2", "-i", "0.2", "-W", "3", A_LAN_HOST]),
        "{A_LAN} behind A is not reachable from B"
    );
    assert_eq!(
        std::fs::read_to_string(lab.dir.join("hooks.out")).unwrap_or_default(),
        format!("up {}\n", lab.tun_b)
    );
    let b0 = lab.show(&lab.tun_b);
    assert!(peer0(&b0, "rx_packets") >= 3, "{b0:#}");
    assert!(peer0(&b0, "handshakes") >= 1);
    let a0 = lab.show(&lab.tun_a);
    let handshakes_before = peer0(&a0, "handshakes") + peer0(&b0, "handshakes");

    // 2. 32 MiB over TCP, paced over about 4 s so handshakes (every 1.5 s) happen during it.
    const TOTAL: usize = 32 << 20;
    let data: Arc<Vec<u8>> = Arc::new(
        (0..TOTAL)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[1])
            .collect(),
    );
    let (port_tx, port_rx) = mpsc::channel();
    let server = in_netns(&ns_b, move || {
        let listener = TcpListener::bind(format!("{TUN_B}:0")).unwrap();
        port_tx.send(listener.local_addr().unwrap().port()).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut got = Vec::with_capacity(TOTAL);
        conn.read_to_end(&mut got).unwrap();
        got
    });
    let tcp_port = port_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let sent = data.clone();
    let client = in_netns(&ns_a, move || {
        let mut conn = TcpStream::connect_timeout(
            &format!("{TUN_B}:{tcp_port}").parse().unwrap(),
            Duration::from_secs(5),
        )
        .unwrap();
        conn.set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        for chunk in sent.chunks(256 << 10) {
            conn.write_all(chunk).unwrap();
            thread::sleep(Duration::from_millis(30));
        }
    });

    // 2a. While the transfer runs, `vpn set` adds a third peer, C, in a third namespace
    // (joined to B's by its own veth pair); A's session on B goes on untouched.
    let id = std::process::id() % 100_000;
    let (ns_c, tun_c3) = (format!("skv{id}c"), format!("skv{id}t3"));
    lab.extra_ns.push(ns_c.clone());
    ip(&["netns", "add", &ns_c]);
    let (vc, vbc) = (format!("skv{id}vc"), format!("skv{id}vbc"));
    ip(&[
        "link", "add", &vc, "netns", &ns_c, "type", "veth", "peer", "name", &vbc, "netns", &ns_b,
    ]);
    ip(&["-n", &ns_c, "addr", "add", "10.231.4.1/24", "dev", &vc]);
    ip(&["-n", &ns_b, "addr", "add", "10.231.4.2/24", "dev", &vbc]);
    ip(&["-n", &ns_c, "link", "set", &vc, "up"]);
    ip(&["-n", &ns_c, "link", "set", "lo", "up"]);
    ip(&["-n", &ns_b, "link", "set", &vbc, "up"]);
    let key_c = lab.keygen("c3.key");
    let config_c3 = lab.dir.join("c3.toml");
    std::fs::write(
        &config_c3,
        format!(
            "[interface]\nname = \"{tun_c3}\"\nprivate_key_file = \"c3.key\"\n\
             address = [\"10.231.1.3/24\"]\nlisten_port = {PORT}\n\n[[peer]]\n\
             public_key = \"{key_b}\"\nendpoint = \"10.231.4.2:{PORT}\"\n\
             allowed_ips = [\"{TUN_B}/32\"]\n"
        ),
    )
    .unwrap();
    let before_set = lab.show(&lab.tun_b);
    run(Command::new(BIN).args([
        "vpn",
        "set",
        &lab.tun_b,
        "peer",
        &key_c,
        "allowed-ips",
        "10.231.1.3/32",
    ]));
    lab.start(&ns_c, &config_c3, "c3.log");
    lab.wait_for_link(&ns_c, &tun_c3);
    assert!(
        lab.ping(&ns_c, &["-c", "2", "-i", "0.2", "-W", "3", TUN_B]),
        "the peer added by vpn set gets no answer; logs:\n{}\n{}",
        lab.log("b.log"),
        lab.log("c3.log")
    );
    let after_set = lab.show(&lab.tun_b);
    assert_eq!(after_set["peers"].as_array().map(Vec::len), Some(2));
    assert!(
        peer0(&after_set, "handshakes") >= peer0(&before_set, "handshakes"),
        "A's peer state on B was reset by vpn set"
    );
    assert!(
        peer0(&after_set, "rx_bytes") >= peer0(&before_set, "rx_bytes"),
        "A's peer state on B was reset by vpn set"
    );

    bounded::join_within(
        client,
        Duration::from_secs(120),
        "the TCP client through the VPN",
    );
    let received = bounded::join_within(
        server,
        Duration::from_secs(120),
        "the TCP server through the VPN",
    );
    assert_eq!(received.len(), TOTAL, "bytes lost in the tunnel");
    assert_eq!(
        sha256(&received),
        sha256(&data),
        "bytes corrupted in the tunnel"
    );
    let a1 = lab.show(&lab.tun_a);
    let b1 = lab.show(&lab.tun_b);
    let handshakes_after = peer0(&a1, "handshakes") + peer0(&b1, "handshakes");
    assert!(
        handshakes_after >= handshakes_before + 4,
        "handshakes did not repeat during the transfer: {handshakes_before} -> {handshakes_after}"
    );
    assert!(peer0(&b1, "rx_bytes") >= TOTAL as u64);

    // 2a'. B's metrics (inside its namespace): A's bytes and latest handshake, by A's
    // fingerprint prefix, never its key; in the Prometheus text format.
    let body = bounded::join_within(
        in_netns(&lab.ns_b, scrape_metrics),
        CMD_TIMEOUT,
        "scraping B's metrics",
    );
    let a_fingerprint = b1["peers"][0]["fingerprint"].as_str().unwrap().to_string();
    let label = format!(
        "{{interface=\"{}\",peer=\"{}\"}}",
        lab.tun_b,
        &a_fingerprint[..7 + 11]
    );
    let sample = |name: &str| -> f64 {
        let prefix = format!("{name}{label} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in:\n{body}"))
            .parse()
            .unwrap()
    };
    assert!(
        sample("sessionkey_vpn_received_bytes_total") >= TOTAL as f64,
        "{body}"
    );
    assert!(sample("sessionkey_vpn_sent_bytes_total") > 0.0);
    assert!(sample("sessionkey_vpn_handshakes_total") >= 1.0);
    let latest = sample("sessionkey_vpn_latest_handshake_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        latest > now - 300.0 && latest <= now + 1.0,
        "{latest} vs {now}"
    );
    assert!(body.contains("# TYPE sessionkey_vpn_received_bytes_total counter"));
    assert!(
        !body.contains(key_a.as_str()),
        "a public key in the metrics:\n{body}"
    );

    // 2b. SIGHUP to B reads its file again, as `vpn syncconf` would: C (added by `vpn
    // set`, not in the file) is removed; A stays.
    let loaded = lab.show(&lab.tun_b)["config_loaded_unix"].as_u64();
    assert!(
        loaded.is_some(),
        "vpn show tells when the configuration was loaded"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(lab.vpns[1].id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    eventually("B reloads on SIGHUP", CMD_TIMEOUT, || {
        lab.log("b.log").contains("configuration reloaded from")
    });
    assert!(
        lab.log("b.log")
            .contains("0 peer(s) added, 1 removed, 1 kept"),
        "{}",
        lab.log("b.log")
    );
    let synced = lab.show(&lab.tun_b);
    assert!(synced["config_loaded_unix"].as_u64() >= loaded);
    assert_eq!(
        synced["peers"].as_array().map(Vec::len),
        Some(1),
        "{synced:#}"
    );
    assert_eq!(synced["peers"][0]["public_key"], key_a.as_str());
    assert!(
        !lab.ping(&ns_c, &["-c", "1", "-W", "1", TUN_B]),
        "the peer removed by the reload still gets answers"
    );

    // 2c. `vpn show NAME dump` in `wg show dump`'s format, parsed as wg's fields.
    let out = run(Command::new(BIN).args(["vpn", "show", &lab.tun_b, "dump"]));
    let dump = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<Vec<&str>> = dump.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 2, "{dump}");
    let iface = &lines[0];
    assert_eq!(iface.len(), 4, "interface line: {dump}");
    assert_eq!(iface[0], "(hidden)", "no private key is printed");
    assert_eq!(iface[1], key_b);
    assert_eq!(iface[2].parse::<u16>().unwrap(), PORT);
    assert_eq!(iface[3], "off");
    let peer = &lines[1];
    assert_eq!(peer.len(), 8, "peer line: {dump}");
    assert_eq!(peer[0], key_a);
    assert_eq!(
        peer[1], "(hidden)",
        "a pre-shared key is set, never printed"
    );
    assert!(peer[2].starts_with(VETH_A), "endpoint {}", peer[2]);
    assert_eq!(peer[3], format!("{TUN_A}/32,{A_LAN}"));
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let latest: u64 = peer[4].parse().unwrap();
    assert!(
        latest <= unix_now && latest + 120 > unix_now,
        "latest handshake {latest}"
    );
    assert!(
        peer[5].parse::<u64>().unwrap() >= TOTAL as u64,
        "rx {}",
        peer[5]
    );
    assert!(peer[6].parse::<u64>().unwrap() > 0, "tx {}", peer[6]);
    assert_eq!(peer[7], "off");

    // 3. A captured data packet, replayed, is dropped.
    let rejected = peer0(&b1, "rejected");
    let rx_packets = peer0(&b1, "rx_packets");
    relay.replay.store(true, Ordering::Relaxed);
    eventually(
        "the replayed packet is rejected",
        Duration::from_secs(5),
        || peer0(&lab.show(&lab.tun_b), "rejected") > rejected,
    );
    let b2 = lab.show(&lab.tun_b);
    assert_eq!(
        peer0(&b2, "rx_packets"),
        rx_packets,
        "a replayed packet was accepted"
    );

    // 4. A packet from A with an inner source outside A's allowed IPs is dropped by B.
    ip(&[
        "-n",
        &ns_a,
        "addr",
        "add",
        "10.231.1.99/32",
        "dev",
        &lab.tun_a,
    ]);
    assert!(
        !lab.ping(
            &ns_a,
            &[
                "-c",
                "2",
                "-i",
                "0.2",
                "-W",
                "1",
                "-I",
                "10.231.1.99",
                TUN_B
            ]
        ),
        "a spoofed inner source got an answer"
    );
    assert!(counter(&lab.show(&lab.tun_b), "spoofed_source") >= 2);

    // 5. An initiation from a key B does not know is counted, not answered.
    let stranger = lab.keygen("stranger.key");
    let config_c = lab.dir.join("c.toml");
    std::fs::write(
        &config_c,
        format!(
            "[interface]\nname = \"skv{}tc\"\nprivate_key_file = \"stranger.key\"\naddress = [\"10.231.2.1/24\"]\n\
             listen_port = {}\n\n[[peer]]\npublic_key = \"{key_b}\"\nendpoint = \"{VETH_B}:{PORT}\"\n\
             allowed_ips = [\"10.231.2.2/32\"]\n",
            std::process::id() % 100_000,
            PORT + 1
        ),
    )
    .unwrap();
    assert!(!stranger.is_empty());
    lab.start(&ns_a, &config_c, "c.log");
    let tun_c = format!("skv{}tc", std::process::id() % 100_000);
    lab.wait_for_link(&ns_a, &tun_c);
    let _ = lab.ping(&ns_a, &["-c", "1", "-W", "1", "10.231.2.2"]);
    eventually("B counts the unknown peer", Duration::from_secs(5), || {
        counter(&lab.show(&lab.tun_b), "unknown_peer") >= 1
    });
    run(Command::new(BIN).args(["vpn", "down", &tun_c]));

    // 6. A's address changes: B follows it and the tunnel stays up.
    let old_port = relay.back_port();
    relay.roam.store(true, Ordering::Relaxed);
    eventually("the relay moved", Duration::from_secs(5), || {
        relay.back_port() != old_port
    });
    let new_port = relay.back_port();
    assert!(
        lab.ping(&ns_a, &["-c", "3", "-i", "0.2", "-W", "2", TUN_B]),
        "no ping after the endpoint changed"
    );
    let endpoint = lab.show(&lab.tun_b)["peers"][0]["endpoint"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(endpoint, format!("{VETH_A}:{new_port}"));

    // 6a. A dropped root: SIGHUP cannot read its root-only files any more, and says what
    // works instead; its peers are kept.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(lab.vpns[0].id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    eventually("A rejects the reload", CMD_TIMEOUT, || {
        lab.log("a.log")
            .contains("reload rejected, the running peers are kept")
    });
    assert!(
        lab.log("a.log").contains(
            "this VPN dropped root, so apply the file as root with: sessionkey vpn syncconf"
        ),
        "{}",
        lab.log("a.log")
    );
    assert_eq!(
        lab.show(&lab.tun_a)["peers"].as_array().map(Vec::len),
        Some(1)
    );
    // syncconf still works on it (the CLI reads the root-only files
    // and passes the pre-shared key), and the handshakes after it (every 1.5 s while
    // traffic flows) succeed with the key it passed.
    let out = run(Command::new(BIN)
        .args(["vpn", "syncconf", &lab.tun_a])
        .arg(&config_a));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0 peer(s) added, 0 removed, 1 kept"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A wrong key would show as refused responses on one side (the psk is mixed into the
    // response): wait for handshakes on both sides, then check none was refused.
    let (hs_a, hs_b) = (
        peer0(&lab.show(&lab.tun_a), "handshakes"),
        peer0(&lab.show(&lab.tun_b), "handshakes"),
    );
    eventually(
        "handshakes on both sides after syncconf",
        Duration::from_secs(10),
        || {
            let _ = lab.ping(&ns_a, &["-c", "1", "-W", "1", TUN_B]);
            peer0(&lab.show(&lab.tun_a), "handshakes") > hs_a
                && peer0(&lab.show(&lab.tun_b), "handshakes") > hs_b
        },
    );
    assert_eq!(peer0(&lab.show(&lab.tun_a), "responses_refused"), 0);
    assert_eq!(peer0(&lab.show(&lab.tun_b), "responses_refused"), 0);

    // 6b. Exit codes: `vpn down` of an unknown name is 69 (unavailable); so is a UDP port
    // in use, and the message names the port.
    let out = Command::new(BIN)
        .args(["vpn", "down", "skvnosuch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(|c| bounded::output_within(c, CMD_TIMEOUT, "a sessionkey command"))
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config_d = lab.dir.join("d.toml");
    std::fs::write(
        &config_d,
        format!(
            "[interface]\nname = \"skv{}td\"\nprivate_key_file = \"stranger.key\"\n\
             address = [\"10.231.3.1/24\"]\nlisten_port = {PORT}\n",
            std::process::id() % 100_000
        ),
    )
    .unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns_b, BIN, "vpn", "up"])
        .arg(&config_d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(|c| bounded::output_within(c, CMD_TIMEOUT, "a sessionkey command"))
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains(&format!("UDP port {PORT} is in use")),
        "{stderr}"
    );
    assert!(
        stderr.contains("sessionkey (pid"),
        "the holder is named: {stderr}"
    );

    // 7. `vpn down` stops A and removes its interface; SIGTERM does the same for B.
    run(Command::new(BIN).args(["vpn", "down", &lab.tun_a]));
    assert!(!lab.link_exists(&ns_a, &lab.tun_a));
    let b_pid = lab.vpns[1].id();
    // `ip netns exec` runs the VPN in place (exec), so the child is the VPN itself.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(b_pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = bounded::wait_within(&mut lab.vpns[1], CMD_TIMEOUT, "vpn B after SIGTERM");
    assert!(
        status.success(),
        "vpn B exited with {status}: {}",
        lab.log("b.log")
    );
    assert!(!lab.link_exists(&ns_b, &lab.tun_b));
    let status = bounded::wait_within(&mut lab.vpns[0], CMD_TIMEOUT, "vpn A after vpn down");
    assert!(
        status.success(),
        "vpn A exited with {status}: {}",
        lab.log("a.log")
    );
    assert!(lab.log("b.log").contains("interface removed"));
    assert_eq!(
        std::fs::read_to_string(lab.dir.join("hooks.out")).unwrap_or_default(),
        format!("up {0}\ndown {0}\n", lab.tun_b),
        "post_down did not run"
    );
    drop(relay);
    // Every wait above has its own deadline; the total is reported, not asserted (no
    // timed assertions: a loaded machine must not fail the test).
    eprintln!("vpn_between_two_namespaces took {:?}", started.elapsed());
}

#[test]
fn vpn_up_reports_config_mistakes_with_file_line_and_field() {
    let dir = std::env::temp_dir().join(format!("skv-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "[interface]\nprivate_key_file = \"k\"\naddress = [\"10.0.0.1/24\"]\nlisten_prot = 1\n",
            ":4: listen_prot: unknown field",
        ),
        (
            "[interface]\nprivate_key_file = \"missing.key\"\naddress = [\"10.0.0.1/24\"]\n",
            ":2: interface.private_key_file: key file",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = Command::new(BIN)
            .arg("vpn")
            .arg("up")
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map(|c| bounded::output_within(c, CMD_TIMEOUT, "a sessionkey command"))
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{stderr}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in: {stderr}"
        );
        assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
