//! A fleet of tunnel gateways on PostgreSQL (`SESSIONKEY_TEST_POSTGRES`; required when
//! `CI` is set): `sessionkey peers add|remove|list`, gateways that take their authorized
//! peers from the database, live revocation.
//!
//! Each test works in a PostgreSQL schema of its own (`?options[search_path]=...`), dropped
//! at the end, so it meets neither the relay's tables nor another test's.

mod support;

use std::time::{Duration, Instant};

use support::{Env, Output};

/// A schema of its own on the test database; dropped when the test ends.
struct Schema {
    admin: String,
    name: String,
    /// The database URL with this schema first on the search path.
    url: String,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

impl Schema {
    /// `None` (with a note) when no test database is configured outside CI.
    fn new(tag: &str) -> Option<Self> {
        let admin = match std::env::var("SESSIONKEY_TEST_POSTGRES") {
            Ok(u) if !u.is_empty() => u,
            _ => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI is set but SESSIONKEY_TEST_POSTGRES is not; CI must run the PostgreSQL tests"
                );
                eprintln!("{tag}: skipped: set SESSIONKEY_TEST_POSTGRES=postgres://USER@HOST/DB to run it");
                return None;
            }
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("skfleet_{tag}_{}_{nanos}", std::process::id());
        runtime().block_on(async {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
                .await
                .expect("connect to SESSIONKEY_TEST_POSTGRES");
            sqlx::Executor::execute(&mut conn, format!("CREATE SCHEMA {name}").as_str())
                .await
                .expect("create the test schema");
        });
        let sep = if admin.contains('?') { '&' } else { '?' };
        let url = format!("{admin}{sep}options[search_path]={name}");
        Some(Self { admin, name, url })
    }

    /// Run one statement in this schema.
    fn execute(&self, sql: &str) {
        runtime().block_on(async {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&self.url)
                .await
                .expect("connect");
            sqlx::Executor::execute(&mut conn, sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        });
    }

    /// One value from this schema.
    fn scalar(&self, sql: &str) -> i64 {
        runtime().block_on(async {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&self.url)
                .await
                .expect("connect");
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        })
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        runtime().block_on(async move {
            if let Ok(mut conn) = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await {
                let _ = sqlx::Executor::execute(
                    &mut conn,
                    format!("DROP SCHEMA {name} CASCADE").as_str(),
                )
                .await;
            }
        });
    }
}

fn peers(env: &Env, schema: &Schema, args: &[&str]) -> Output {
    let mut all = vec!["peers"];
    all.extend_from_slice(&args[..1]);
    all.extend_from_slice(&["--database", &schema.url]);
    all.extend_from_slice(&args[1..]);
    env.run(&all)
}

fn list_json(env: &Env, schema: &Schema, group: &str) -> Vec<serde_json::Value> {
    let out = peers(env, schema, &["list", "--group", group, "--json"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("list --json: {e}: {out:?}"))
}

#[test]
fn peers_add_list_remove_in_groups() {
    let Some(schema) = Schema::new("admin") else {
        return;
    };
    let env = Env::new("fleet-admin");
    let alice = env.keygen("alice");
    let bob = env.keygen("bob");
    let alice_pub = format!("{}.pub", alice.file());

    // A .pub file (its comment is kept) and a key line with --comment and --by.
    let out = peers(&env, &schema, &["add", &alice_pub]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains(&alice.fingerprint), "{out:?}");
    let out = peers(
        &env,
        &schema,
        &[
            "add",
            &bob.public,
            "--group",
            "web",
            "--comment",
            "bob's phone",
            "--by",
            "ops",
        ],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    // Adding again changes nothing and says who added it.
    let out = peers(&env, &schema, &["add", &bob.public, "--group", "web"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("already in group web (added by ops"),
        "{out:?}"
    );

    let default = list_json(&env, &schema, "default");
    assert_eq!(default.len(), 1, "{default:?}");
    assert_eq!(default[0]["key"], alice.public.as_str());
    assert_eq!(default[0]["fingerprint"], alice.fingerprint.as_str());
    assert_eq!(default[0]["comment"], "alice");
    assert_eq!(default[0]["group"], "default");
    let age = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - default[0]["added_at"].as_i64().expect("added_at");
    assert!((0..600).contains(&age), "added {age}s ago: {default:?}");
    let web = list_json(&env, &schema, "web");
    assert_eq!(web.len(), 1, "{web:?}");
    assert_eq!(web[0]["key"], bob.public.as_str());
    assert_eq!(web[0]["comment"], "bob's phone");
    assert_eq!(web[0]["added_by"], "ops");

    // The table shows the fingerprint, who and the comment.
    let out = peers(&env, &schema, &["list", "--group", "web"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains(&bob.fingerprint)
            && out.stdout.contains("ops")
            && out.stdout.contains("bob's phone"),
        "{out:?}"
    );

    // Removal by fingerprint, in its group only.
    let out = peers(&env, &schema, &["remove", &bob.fingerprint]);
    assert_eq!(out.code, Some(64), "bob is not in group default: {out:?}");
    assert!(
        out.stderr.contains("no such key in group default"),
        "{out:?}"
    );
    let out = peers(
        &env,
        &schema,
        &["remove", &bob.fingerprint, "--group", "web"],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(list_json(&env, &schema, "web").is_empty());
    assert_eq!(list_json(&env, &schema, "default").len(), 1);
    // And by key line.
    let out = peers(&env, &schema, &["remove", &alice.public]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(list_json(&env, &schema, "default").is_empty());

    // Bad input: a usage error naming what is wrong.
    let out = peers(&env, &schema, &["add", "sessionkey-x25519 not-base64"]);
    assert_eq!(out.code, Some(64), "{out:?}");
    let out = peers(&env, &schema, &["add", &alice.public, "--group", "../etc"]);
    assert_eq!(out.code, Some(64), "{out:?}");
    assert!(out.stderr.contains("letters, digits"), "{out:?}");
}

#[test]
fn a_hand_written_bad_row_is_skipped_with_a_warning() {
    let Some(schema) = Schema::new("badrow") else {
        return;
    };
    let env = Env::new("fleet-badrow");
    let alice = env.keygen("alice");
    let out = peers(&env, &schema, &["add", &alice.public]);
    assert_eq!(out.code, Some(0), "{out:?}");
    schema.execute(
        "INSERT INTO sessionkey_fleet_peers (peer_group, key_line, fingerprint, added_by)
         VALUES ('default', 'sessionkey-x25519 garbage', 'x', 'psql')",
    );
    let out = peers(&env, &schema, &["list", "--json"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(list.len(), 1, "the bad row is left out: {list:?}");
    assert!(
        out.stderr.contains("is not a valid peer and is ignored"),
        "{out:?}"
    );
}

#[test]
fn migrations_apply_once_and_record_their_version() {
    let Some(schema) = Schema::new("migrate") else {
        return;
    };
    let env = Env::new("fleet-migrate");
    // Several commands at once: the advisory lock makes one of them migrate.
    let procs: Vec<_> = (0..3)
        .map(|i| {
            env.spawn(
                &format!("list{i}"),
                &["peers", "list", "--database", &schema.url],
                std::process::Stdio::null(),
            )
        })
        .collect();
    for mut p in procs {
        assert_eq!(p.wait(Duration::from_secs(30)), Some(0), "{}", p.stderr());
    }
    assert_eq!(
        schema.scalar("SELECT COUNT(*) FROM sessionkey_fleet_migrations"),
        3
    );
    assert_eq!(
        schema.scalar("SELECT MAX(version)::BIGINT FROM sessionkey_fleet_migrations"),
        3
    );
}

#[test]
fn an_unreachable_database_is_unavailable_and_says_what_to_check() {
    let env = Env::new("fleet-unreachable");
    let port = support::free_port();
    let url = format!("postgres://gw:hunter2@127.0.0.1:{port}/fleet");
    let out = env.run(&["peers", "list", "--database", &url]);
    assert_eq!(out.code, Some(69), "{out:?}");
    assert!(out.stderr.contains("check that PostgreSQL runs"), "{out:?}");
    assert!(
        !out.stderr.contains("hunter2"),
        "the password is not shown: {out:?}"
    );
    let out = env.run(&["peers", "list", "--database", "sqlite://peers.db"]);
    assert_eq!(out.code, Some(64), "{out:?}");
    assert!(out.stderr.contains("must be PostgreSQL"), "{out:?}");
}

// ---------------------------------------------------------------------------------------
// Gateways, the balancer, clients.
// ---------------------------------------------------------------------------------------

/// Gateways `gw1`, `gw2` and `gw3` on the fleet database, as [`gateway`] starts them.
fn three_gateways(
    env: &Env,
    key: &support::Key,
    target: std::net::SocketAddr,
    url: &str,
) -> Vec<(support::Proc, u16)> {
    (1..=3)
        .map(|i| gateway(env, &format!("gw{i}"), key, target, url, &[]))
        .collect()
}

/// Start a gateway (`tunnel server --peers-database`) with its own state directory.
fn gateway(
    env: &Env,
    name: &str,
    key: &support::Key,
    target: std::net::SocketAddr,
    url: &str,
    extra: &[&str],
) -> (support::Proc, u16) {
    let state = env.path(&format!("state-{name}"));
    env.start_listening(
        name,
        |port| {
            let mut args = Env::server_args(name, port, key, target, &[]);
            args.extend(
                [
                    "--state",
                    state.to_str().expect("UTF-8 temp path"),
                    "--peers-database",
                    url,
                ]
                .map(String::from),
            );
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        },
        "tunnel server ready",
    )
}

/// One round trip through a tunnel client's local port: true if the echo came back,
/// false if the connection was refused, reset or ended.
fn echo_once(port: u16) -> bool {
    use std::io::{Read, Write};
    // A refusal may reset the connection before connect() has even returned.
    let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    if conn.write_all(b"ping").is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

/// Established sessions of `fingerprint` in a gateway's log.
fn sessions_of(p: &support::Proc, fingerprint: &str) -> usize {
    p.stderr()
        .lines()
        .filter(|l| l.contains("session established") && l.contains(fingerprint))
        .count()
}

/// HAProxy in TCP mode on a loopback port, round robin over `backends`; killed on drop.
struct Haproxy {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Haproxy {
    /// `None` (with a note) when HAProxy is not installed outside CI.
    fn start(env: &Env, backends: &[u16]) -> Option<Self> {
        let bin = [
            "/usr/sbin/haproxy",
            "/usr/bin/haproxy",
            "/usr/local/sbin/haproxy",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
        let Some(bin) = bin else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but haproxy is not installed; .ci/run installs it"
            );
            eprintln!("skipped: install haproxy (apt-get install haproxy) to run the fleet test");
            return None;
        };
        let port = support::free_port();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!(
                    "    server gw{} 127.0.0.1:{p} check inter 500 fall 1 rise 1\n",
                    i + 1
                )
            })
            .collect();
        let config = format!(
            "global\n    maxconn 512\n\
             defaults\n    mode tcp\n    retries 3\n    option redispatch\n    timeout connect 5s\n    timeout client 120s\n    timeout server 120s\n\
             frontend fleet\n    bind 127.0.0.1:{port}\n    default_backend gateways\n\
             backend gateways\n    balance roundrobin\n{servers}"
        );
        let cfg = env.path("haproxy.cfg");
        std::fs::write(&cfg, config).unwrap();
        let log = env.path("haproxy.log");
        let child = std::process::Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(env.path("haproxy.err")).unwrap())
            .spawn()
            .expect("start haproxy");
        let mut h = Self { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = h.child.try_wait() {
                panic!(
                    "haproxy exited ({status}): {}",
                    std::fs::read_to_string(env.path("haproxy.err")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "haproxy does not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = &h.log;
        h.port = port;
        Some(h)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn three_gateways_behind_haproxy_admit_and_revoke_together() {
    let Some(schema) = Schema::new("haproxy") else {
        return;
    };
    let env = Env::new("fleet-haproxy");
    let target = support::echo_target();
    let server_key = env.keygen("gateway");
    let alice = env.keygen("alice");
    let bob = env.keygen("bob");
    assert_eq!(peers(&env, &schema, &["add", &alice.public]).code, Some(0));

    let mut gateways: Vec<(support::Proc, u16)> =
        three_gateways(&env, &server_key, target.addr, &schema.url);
    let ports: Vec<u16> = gateways.iter().map(|(_, p)| *p).collect();
    let Some(balancer) = Haproxy::start(&env, &ports) else {
        return;
    };
    let pin = ["--server-key", server_key.public.as_str()];
    let (_alice_client, alice_port) = env.tunnel_client("alice", &alice, balancer.port, &pin);
    let (_bob_client, bob_port) = env.tunnel_client("bob", &bob, balancer.port, &pin);

    // Bob is not on the list: refused by whichever gateway the balancer picks.
    for _ in 0..3 {
        assert!(!echo_once(bob_port), "bob got in before he was added");
    }
    // Added: every gateway admits him (three connections in a row, one per gateway).
    assert_eq!(peers(&env, &schema, &["add", &bob.public]).code, Some(0));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !echo_once(bob_port) {
        assert!(
            Instant::now() < deadline,
            "bob is not admitted after peers add"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let before: Vec<usize> = gateways
        .iter()
        .map(|(p, _)| sessions_of(p, &bob.fingerprint))
        .collect();
    for _ in 0..3 {
        assert!(echo_once(bob_port), "a gateway refused bob after peers add");
    }
    // The last lines may still be on their way to the log files.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let served: Vec<usize> = gateways
            .iter()
            .zip(&before)
            .map(|((p, _), b)| sessions_of(p, &bob.fingerprint) - b)
            .collect();
        if served.iter().all(|n| *n >= 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "each gateway should have served bob once: {served:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Kicks: one session by its id, then every session of a key; the key stays authorized.
    let mut alice_conn = held_session(alice_port);
    let id = poll_census(&env, &schema, "alice's session in the fleet status", |c| {
        sessions_in(c)
            .into_iter()
            .find(|(_, s)| s["peer"] == alice.fingerprint.as_str())
            .map(|(_, s)| s["session"].as_str().unwrap().to_string())
    });
    let out = peers(&env, &schema, &["kick", &id]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_closed(&mut alice_conn, "alice's kicked session");
    let mut alice_conn = held_session(alice_port);
    let out = peers(&env, &schema, &["kick", &alice.fingerprint]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_closed(&mut alice_conn, "alice's sessions after her key was kicked");
    assert!(echo_once(alice_port), "a kicked key may connect again");
    let out = peers(&env, &schema, &["kick", "0123456789abcdef"]);
    assert_eq!(out.code, Some(64), "no such session: {out:?}");

    // Live sessions of bob on all three gateways, and one of alice.
    let before: Vec<usize> = gateways
        .iter()
        .map(|(p, _)| sessions_of(p, &bob.fingerprint))
        .collect();
    let mut held = Vec::new();
    for _ in 0..3 {
        use std::io::{Read, Write};
        let mut conn = support::connect(bob_port);
        conn.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).expect("bob's session echoes");
        held.push(conn);
    }
    let mut alice_conn = held_session(alice_port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateways
        .iter()
        .zip(&before)
        .any(|((p, _), b)| sessions_of(p, &bob.fingerprint) == *b)
    {
        assert!(
            Instant::now() < deadline,
            "bob's three sessions are not on three gateways"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The fleet status lists bob's sessions on all three gateways (by their pids).
    let pids: Vec<String> = gateways
        .iter()
        .map(|(p, _)| format!(":{}", p.pid()))
        .collect();
    poll_census(&env, &schema, "bob's sessions on all three gateways", |c| {
        let holders: Vec<String> = sessions_in(c)
            .into_iter()
            .filter(|(_, s)| s["peer"] == bob.fingerprint.as_str())
            .map(|(g, _)| g)
            .collect();
        pids.iter()
            .all(|pid| holders.iter().any(|g| g.ends_with(pid.as_str())))
            .then_some(())
    });
    let table = env.run(&["status", "--database", &schema.url]);
    assert_eq!(table.code, Some(0), "{table:?}");
    assert!(
        table.stdout.contains(&bob.fingerprint[..16]) && table.stdout.contains("live"),
        "{table:?}"
    );

    // Removed: every gateway closes bob's session; measured from the end of `peers remove`
    // (its transaction has committed, so the notice is out).
    let watchers: Vec<_> = held
        .into_iter()
        .map(|mut conn| {
            std::thread::spawn(move || {
                use std::io::Read;
                conn.set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                let mut buf = [0u8; 64];
                let ended = loop {
                    match conn.read(&mut buf) {
                        Ok(0) => break Ok(()),
                        Ok(_) => continue,
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut =>
                        {
                            break Err(e)
                        }
                        Err(_) => break Ok(()),
                    }
                };
                (Instant::now(), ended)
            })
        })
        .collect();
    let started = Instant::now();
    let out = peers(&env, &schema, &["remove", &bob.fingerprint]);
    let committed = Instant::now();
    assert_eq!(out.code, Some(0), "{out:?}");
    let mut latencies = Vec::new();
    for w in watchers {
        let (at, ended) = w.join().unwrap();
        ended.expect("bob's session was not closed");
        latencies.push(at.saturating_duration_since(committed));
    }
    let worst = latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "revocation: bob's sessions on three gateways closed {:?} after `peers remove` \
         committed ({:?} after it started)",
        latencies,
        committed.duration_since(started)
    );
    assert!(
        worst <= Duration::from_secs(1),
        "bob's sessions must close within one second of the removal: {latencies:?}"
    );
    for (p, _) in &mut gateways {
        p.expect_log(&format!(
            "peer key {} removed from the peers database",
            bob.fingerprint
        ));
    }

    // Refused from then on, on every gateway; alice's session carries on.
    for _ in 0..3 {
        assert!(!echo_once(bob_port), "bob got in after peers remove");
    }
    for (p, _) in &mut gateways {
        p.expect_log(&format!("refused peer key {}", bob.fingerprint));
    }
    {
        use std::io::{Read, Write};
        alice_conn.write_all(b"pong").unwrap();
        let mut buf = [0u8; 4];
        alice_conn
            .read_exact(&mut buf)
            .expect("alice's session goes on");
        assert_eq!(&buf, b"pong");
    }

    // A gateway killed with -9: new sessions go to the others through the balancer; its
    // rows in the fleet status go stale, then disappear.
    let (mut killed, _) = gateways.remove(0);
    let pid = format!(":{}", killed.pid());
    killed.kill();
    for i in 0..6 {
        assert!(
            echo_once(alice_port),
            "connection {i} after the kill did not fail over"
        );
    }
    let is_listed = |c: &serde_json::Value, stale: bool| {
        c.as_array().into_iter().flatten().any(|g| {
            g["gateway"]
                .as_str()
                .is_some_and(|n| n.ends_with(pid.as_str()))
                && (!stale || g["stale"] == true)
        })
    };
    poll_census(&env, &schema, "the killed gateway marked stale", |c| {
        is_listed(c, true).then_some(())
    });
    let table = env.run(&["status", "--database", &schema.url]);
    assert!(table.stdout.contains("stale"), "{table:?}");
    poll_census(&env, &schema, "the killed gateway removed", |c| {
        (!is_listed(c, false)).then_some(())
    });
}

/// A session through a tunnel client's port, established (one echo), held open.
fn held_session(port: u16) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut conn = support::connect(port);
    conn.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).expect("the session echoes");
    conn
}

/// The next read of a held session must end it (reset or end of stream), not time out.
fn assert_closed(conn: &mut std::net::TcpStream, what: &str) {
    use std::io::Read;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    match conn.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("{what}: not closed: {other:?}"),
    }
}

/// `status --database --json`, polled until `found` returns something (bounded).
fn poll_census<T>(
    env: &Env,
    schema: &Schema,
    what: &str,
    found: impl Fn(&serde_json::Value) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = env.run(&["status", "--database", &schema.url, "--json"]);
        assert_eq!(out.code, Some(0), "{out:?}");
        let census: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        if let Some(v) = found(&census) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not seen in {census}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// (gateway, session) pairs of a fleet status.
fn sessions_in(census: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    census
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| {
            let name = g["gateway"].as_str().unwrap_or_default().to_string();
            g["sessions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |s| (name.clone(), s))
        })
        .collect()
}

#[test]
fn a_gateway_starts_from_its_cache_only_and_fails_closed_when_told() {
    use std::os::unix::fs::PermissionsExt;
    let Some(schema) = Schema::new("cache") else {
        return;
    };
    let env = Env::new("fleet-cache");
    let target = support::echo_target();
    let server_key = env.keygen("gateway");
    let alice = env.keygen("alice");
    let bob = env.keygen("bob");
    assert_eq!(peers(&env, &schema, &["add", &alice.public]).code, Some(0));
    let pin = ["--server-key", server_key.public.as_str()];

    // With the database: the list is cached, owner-only.
    let (mut gw, _) = gateway(&env, "gw", &server_key, target.addr, &schema.url, &[]);
    let cache = env.path("state-gw/fleet-peers-default.cache");
    let text = std::fs::read_to_string(&cache).expect("the gateway caches the list");
    assert!(text.contains(&alice.public), "{text}");
    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o600
    );
    gw.kill();

    // Without it: the cached list admits alice, not bob.
    let away = format!("postgres://gw:pw@127.0.0.1:{}/fleet", support::free_port());
    let (mut gw, port) = gateway(&env, "gw", &server_key, target.addr, &away, &[]);
    gw.expect_log("starting with the cached list of 1");
    let (_alice_client, alice_port) = env.tunnel_client("alice", &alice, port, &pin);
    let (_bob_client, bob_port) = env.tunnel_client("bob", &bob, port, &pin);
    assert!(echo_once(alice_port), "the cached list admits alice");
    assert!(!echo_once(bob_port), "bob is not on the cached list");
    gw.kill();

    // fail_closed: it starts (the cache is there) but admits no one while the database is away.
    let (mut gw, port) = gateway(
        &env,
        "gw",
        &server_key,
        target.addr,
        &away,
        &["--fail-closed"],
    );
    gw.expect_log("no new session is admitted until the database is back");
    let (_alice_client, alice_port) = env.tunnel_client("alice2", &alice, port, &pin);
    assert!(
        !echo_once(alice_port),
        "fail_closed admitted alice without the database"
    );
    gw.kill();

    // A cache others may write is not trusted; no cache at all: no start.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o644)).unwrap();
    let state = env.path("state-gw");
    let port = support::free_port();
    let mut args = Env::server_args("gw", port, &server_key, target.addr, &[]);
    args.extend(
        [
            "--state",
            state.to_str().unwrap(),
            "--peers-database",
            &away,
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = env.run(&args);
    assert_eq!(out.code, Some(69), "{out:?}");
    assert!(out.stderr.contains("chmod 600"), "{out:?}");
    std::fs::remove_file(&cache).unwrap();
    let out = env.run(&args);
    assert_eq!(out.code, Some(69), "{out:?}");
    assert!(
        out.stderr.contains("cannot reach the peers database")
            && out.stderr.contains("no usable cached list"),
        "{out:?}"
    );
    assert!(
        !out.stderr.contains(":pw@"),
        "the password is not shown: {out:?}"
    );
}

/// A TCP relay to PostgreSQL that the test can cut and restore: the database "goes away"
/// for the gateways behind it without stopping the shared server.
struct Cuttable {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Cuttable {
    fn start(upstream: String) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::<std::net::TcpStream>::new()));
        let (c, k) = (cut.clone(), conns.clone());
        std::thread::spawn(move || {
            for down in listener.incoming() {
                let Ok(down) = down else { continue };
                if c.load(Ordering::SeqCst) {
                    drop(down);
                    continue;
                }
                let Ok(up) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                let mut held = k.lock().unwrap();
                held.push(down.try_clone().unwrap());
                held.push(up.try_clone().unwrap());
                for (mut from, mut to) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self { port, cut, conns }
    }

    /// Drop every connection and refuse new ones.
    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Cuttable {
    fn drop(&mut self) {
        self.cut();
    }
}

/// `url` with its host and port replaced by 127.0.0.1:`port`.
fn via(url: &str, port: u16) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (auth, rest) = rest.rsplit_once('@').map_or(("", rest), |(a, r)| (a, r));
    let at = rest.find(['/', '?']).unwrap_or(rest.len());
    let upstream = rest[..at].to_string();
    let upstream = if upstream.contains(':') {
        upstream
    } else {
        format!("{upstream}:5432")
    };
    let auth = if auth.is_empty() {
        String::new()
    } else {
        format!("{auth}@")
    };
    (
        format!("{scheme}://{auth}127.0.0.1:{port}{}", &rest[at..]),
        upstream,
    )
}

#[test]
fn through_a_database_outage_sessions_go_on_and_a_removal_applies_on_reconnect() {
    let Some(schema) = Schema::new("outage") else {
        return;
    };
    let env = Env::new("fleet-outage");
    let target = support::echo_target();
    let server_key = env.keygen("gateway");
    let alice = env.keygen("alice");
    let bob = env.keygen("bob");
    for k in [&alice, &bob] {
        assert_eq!(peers(&env, &schema, &["add", &k.public]).code, Some(0));
    }
    let (_, upstream) = via(&schema.url, 1);
    let relay = Cuttable::start(upstream);
    let (url, _) = via(&schema.url, relay.port);
    let pin = ["--server-key", server_key.public.as_str()];
    let metrics_port = support::free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let (mut open, open_port) = gateway(
        &env,
        "static",
        &server_key,
        target.addr,
        &url,
        &["--metrics", &metrics],
    );
    let (mut closed, closed_port) = gateway(
        &env,
        "closed",
        &server_key,
        target.addr,
        &url,
        &["--fail-closed"],
    );
    let (_a1, alice_open) = env.tunnel_client("alice-open", &alice, open_port, &pin);
    let (_a2, alice_closed) = env.tunnel_client("alice-closed", &alice, closed_port, &pin);
    let (_b, bob_open) = env.tunnel_client("bob-open", &bob, open_port, &pin);

    // Live sessions of alice on both gateways and of bob on the fail-static one.
    let live = |port: u16| {
        use std::io::{Read, Write};
        let mut c = support::connect(port);
        c.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).expect("echo");
        c
    };
    let mut alice_open_conn = live(alice_open);
    let mut alice_closed_conn = live(alice_closed);
    let mut bob_conn = live(bob_open);

    assert_eq!(database_up(&env), vec![true, true]);
    assert!(
        scrape(metrics_port).contains("sessionkey_peers_database_up{tunnel=\"static\"} 1"),
        "{}",
        scrape(metrics_port)
    );
    relay.cut();
    let cut_at = Instant::now();
    open.expect_log("lost the peers database");
    closed.expect_log("lost the peers database");
    eprintln!("outage noticed after {:?}", cut_at.elapsed());
    // The outage shows in status and the metrics.
    assert_eq!(database_up(&env), vec![false, false]);
    let text = scrape(metrics_port);
    assert!(
        text.contains("sessionkey_peers_database_up{tunnel=\"static\"} 0")
            && text.contains("sessionkey_peers_list_age_seconds{tunnel=\"static\"}"),
        "{text}"
    );

    // Sessions go on; the fail-static gateway admits new sessions from its last list, the
    // fail-closed one refuses them.
    for c in [&mut alice_open_conn, &mut alice_closed_conn, &mut bob_conn] {
        use std::io::{Read, Write};
        c.write_all(b"more").unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf)
            .expect("a live session goes on through the outage");
    }
    assert!(
        echo_once(alice_open),
        "fail-static: the last list still admits alice"
    );
    assert!(
        !echo_once(alice_closed),
        "fail_closed admitted a new session without the database"
    );

    // Bob is removed while the gateways cannot hear it.
    let out = peers(&env, &schema, &["remove", &bob.fingerprint]);
    assert_eq!(out.code, Some(0), "{out:?}");
    std::thread::sleep(Duration::from_millis(300));
    {
        use std::io::{Read, Write};
        bob_conn.write_all(b"stil").unwrap();
        let mut buf = [0u8; 4];
        bob_conn
            .read_exact(&mut buf)
            .expect("unheard: bob's session goes on during the outage");
    }

    // Back: each gateway reads the whole list again before anything else, so bob's session
    // is closed, and the fail-closed gateway admits alice again.
    relay.restore();
    let restored = Instant::now();
    open.expect_log("peers database reachable again");
    let reconnected = Instant::now();
    {
        use std::io::Read;
        bob_conn
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 16];
        match bob_conn.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("bob's session carried {n} bytes after the reconnect"),
        }
    }
    let closed_after = reconnected.elapsed();
    eprintln!(
        "database back: reconnect seen after {:?}, bob's session closed {closed_after:?} later",
        reconnected.duration_since(restored)
    );
    assert!(
        closed_after <= Duration::from_secs(1),
        "the removal must apply within a second of the reconnect: {closed_after:?}"
    );
    open.expect_log(&format!(
        "peer key {} removed from the peers database",
        bob.fingerprint
    ));
    closed.expect_log("peers database reachable again");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !echo_once(alice_closed) {
        assert!(
            Instant::now() < deadline,
            "the fail-closed gateway does not admit alice again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !echo_once(bob_open),
        "bob got in after his removal was read"
    );
    assert_eq!(database_up(&env), vec![true, true]);
}

/// Whether each gateway of `env` (by tunnel name) reaches its database, from `status --json`.
fn database_up(env: &Env) -> Vec<bool> {
    let status = env.status();
    let mut up: Vec<(String, bool)> = status
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["peers_databases"].as_array().cloned().unwrap_or_default())
        .map(|f| {
            (
                f["tunnel"].as_str().unwrap_or_default().to_string(),
                f["database_up"].as_bool().expect("database_up"),
            )
        })
        .collect();
    up.sort();
    up.into_iter().map(|(_, u)| u).collect()
}

/// GET /metrics.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut c = support::connect(port);
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    out
}

/// The measurements, printed for the closing note: revocation latency over 100
/// removals through three gateways behind HAProxy (each must stay within one second), and
/// connections per second through the fleet beside one gateway reached directly.
#[test]
fn measure_revocation_latency_and_connection_rate() {
    let Some(schema) = Schema::new("measure") else {
        return;
    };
    let env = Env::new("fleet-measure");
    let target = support::echo_target();
    let server_key = env.keygen("gateway");
    let bob = env.keygen("bob");
    let gateways: Vec<(support::Proc, u16)> =
        three_gateways(&env, &server_key, target.addr, &schema.url);
    let ports: Vec<u16> = gateways.iter().map(|(_, p)| *p).collect();
    let Some(balancer) = Haproxy::start(&env, &ports) else {
        return;
    };
    let pin = ["--server-key", server_key.public.as_str()];
    let (_fleet_client, fleet_port) = env.tunnel_client("bob", &bob, balancer.port, &pin);
    let (_one_client, one_port) = env.tunnel_client("bob-one", &bob, ports[0], &pin);

    // 100 removals: add, open a session, remove, time until the session is closed.
    let (mut latencies, mut from_start) = (Vec::with_capacity(100), Vec::with_capacity(100));
    for round in 0..100 {
        assert_eq!(peers(&env, &schema, &["add", &bob.public]).code, Some(0));
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut conn = loop {
            if let Some(c) = try_held_session(fleet_port) {
                break c;
            }
            assert!(Instant::now() < deadline, "round {round}: bob not admitted");
            std::thread::sleep(Duration::from_millis(20));
        };
        let waiter = std::thread::spawn(move || {
            assert_closed(&mut conn, "bob's session after peers remove");
            Instant::now()
        });
        let started = Instant::now();
        let out = peers(&env, &schema, &["remove", &bob.fingerprint]);
        let committed = Instant::now();
        assert_eq!(out.code, Some(0), "{out:?}");
        let closed = waiter.join().expect("closed");
        // Zero when the session closed before the command had exited.
        latencies.push(closed.saturating_duration_since(committed));
        from_start.push(closed.saturating_duration_since(started));
    }
    latencies.sort();
    from_start.sort();
    let (median, max) = (latencies[50], latencies[99]);
    eprintln!(
        "revocation latency over 100 removals, to the client's session closed: from `peers \
         remove` exiting (committed): median {median:?}, max {max:?}; from its start \
         (process start and database connection included): median {:?}, max {:?}",
        from_start[50], from_start[99]
    );
    assert!(max <= Duration::from_secs(1), "{latencies:?}");

    // Connections per second: 4 threads x 50 sequential connections, one echo each.
    assert_eq!(peers(&env, &schema, &["add", &bob.public]).code, Some(0));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(echo_once(fleet_port) && echo_once(one_port)) {
        assert!(Instant::now() < deadline, "bob not admitted again");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rate = |port: u16| {
        let t0 = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(move || (0..50).filter(|_| echo_once(port)).count()))
            .collect();
        let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(ok, 200, "connections that failed");
        200.0 / t0.elapsed().as_secs_f64()
    };
    let one = rate(one_port);
    let fleet = rate(fleet_port);
    eprintln!(
        "connections per second (debug build, 4 x 50, handshake + one echo each): one gateway \
         {one:.0}/s, three gateways behind HAProxy {fleet:.0}/s"
    );
}

/// [`held_session`], or `None` if the session was refused.
fn try_held_session(port: u16) -> Option<std::net::TcpStream> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    conn.write_all(b"ping").ok()?;
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).ok()?;
    Some(conn)
}

/// A TLS gateway takes its client-certificate keys (`tls-spki-sha256` lines) from the
/// database too: admitted once added, its session closed when removed.
#[test]
fn a_tls_gateway_admits_and_revokes_certificate_keys_from_the_database() {
    let Some(schema) = Schema::new("tls") else {
        return;
    };
    let env = Env::new("fleet-tls");
    let target = support::echo_target();
    // A self-signed client certificate: its key's pin is what the database lists.
    let (crt, key, pin) = self_signed(&env, "client");
    let p = |p: &std::path::Path| p.to_str().unwrap().to_string();

    let state = env.path("state-tls");
    let to = target.addr.to_string();
    let (mut server, port) = env.start_listening(
        "tls-gw",
        |port| {
            [
                "--state",
                &p(&state),
                "tunnel",
                "server",
                "--transport",
                "tls",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--to",
                &to,
                "--peers-database",
                &schema.url,
            ]
            .map(String::from)
            .to_vec()
        },
        "tunnel server ready",
    );
    let log = server.expect_log("tunnel server ready");
    let at = log
        .find("tls-spki-sha256 ")
        .expect("the server prints its pin");
    let server_pin: String = log[at..]
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end_matches('\'')
        .to_string();
    let (_client, client_port) = env.start_listening(
        "tls-client",
        |lport| {
            [
                "tunnel",
                "client",
                "--transport",
                "tls",
                "--listen",
                &format!("127.0.0.1:{lport}"),
                "--server",
                &format!("127.0.0.1:{port}"),
                "--server-key",
                &server_pin,
                "--cert",
                &p(&crt),
                "--cert-key",
                &p(&key),
            ]
            .map(String::from)
            .to_vec()
        },
        "tunnel client ready",
    );

    assert!(
        !echo_once(client_port),
        "a certificate key not in the database got in"
    );
    assert_eq!(peers(&env, &schema, &["add", &pin]).code, Some(0));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut conn = loop {
        if let Some(c) = try_held_session(client_port) {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "the added certificate key is not admitted"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = peers(&env, &schema, &["remove", &pin]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_closed(&mut conn, "the TLS session of a removed certificate key");
    assert!(
        !echo_once(client_port),
        "a removed certificate key got in again"
    );
}

/// SIGHUP on a gateway keeps its database follower: live sessions carry on through the
/// reload, and a removal afterwards still closes them.
#[test]
fn a_reload_keeps_the_gateway_on_its_database() {
    let Some(schema) = Schema::new("reload") else {
        return;
    };
    let env = Env::new("fleet-reload");
    let target = support::echo_target();
    let server_key = env.keygen("gateway");
    let alice = env.keygen("alice");
    assert_eq!(peers(&env, &schema, &["add", &alice.public]).code, Some(0));
    let (mut gw, port) = gateway(&env, "gw", &server_key, target.addr, &schema.url, &[]);
    let pin = ["--server-key", server_key.public.as_str()];
    let (_client, alice_port) = env.tunnel_client("alice", &alice, port, &pin);
    let mut conn = held_session(alice_port);

    let hup = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    gw.expect_log("configuration reloaded");
    {
        use std::io::{Read, Write};
        conn.write_all(b"more").unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf)
            .expect("the session carries on through the reload");
    }
    assert!(
        echo_once(alice_port),
        "alice is still admitted after the reload"
    );
    let out = peers(&env, &schema, &["remove", &alice.fingerprint]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_closed(
        &mut conn,
        "alice's session after her removal, after a reload",
    );
    assert!(!echo_once(alice_port), "alice got in after her removal");
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
    out.stdout
}

/// A self-signed P-256 certificate for localhost and 127.0.0.1 in `env`: (certificate,
/// key mode 0600, `tls-spki-sha256 BASE64` pin of its key).
fn self_signed(env: &Env, name: &str) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let (crt, key, public) = (
        env.path(&format!("{name}.crt")),
        env.path(&format!("{name}.key")),
        env.path(&format!("{name}.pub.pem")),
    );
    let p = |p: &std::path::Path| p.to_str().unwrap().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name}"),
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout",
        &p(&key),
        "-out",
        &p(&crt),
    ]);
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let pem = openssl(&["x509", "-in", &p(&crt), "-pubkey", "-noout"]);
    std::fs::write(&public, pem).unwrap();
    let spki = openssl(&["pkey", "-pubin", "-in", &p(&public), "-outform", "der"]);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki);
    use base64::Engine;
    let pin = format!(
        "tls-spki-sha256 {}",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    );
    (crt, key, pin)
}

/// Gateways' log lines of TLS sessions of `peer` (its fingerprint), resumed or not.
fn tls_sessions(p: &support::Proc, resumed: bool) -> usize {
    let want = format!("resumed={resumed}");
    p.stderr()
        .lines()
        .filter(|l| l.contains("TLS session established") && l.contains(&want))
        .count()
}

/// Three TLS gateways behind HAProxy share their session-ticket keys through the database
/// (sealed under the key in a 0600 file): a client's second connection, sent by the
/// balancer to another gateway than its first, resumes there.
#[test]
fn a_tls_client_resumes_on_another_gateway_of_the_fleet() {
    let Some(schema) = Schema::new("tickets") else {
        return;
    };
    let env = Env::new("fleet-tickets");
    let target = support::echo_target();
    let p = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (server_crt, server_key, server_pin) = self_signed(&env, "gateway");
    let (client_crt, client_key, client_pin) = self_signed(&env, "client");
    assert_eq!(peers(&env, &schema, &["add", &client_pin]).code, Some(0));
    let kek = env.path("ticket.kek");
    {
        use base64::Engine;
        use std::os::unix::fs::OpenOptionsExt;
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&kek)
            .unwrap();
        std::io::Write::write_all(
            &mut f,
            base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .as_bytes(),
        )
        .unwrap();
    }
    let to = target.addr.to_string();
    let mut gateways: Vec<(support::Proc, u16)> = (1..=3)
        .map(|i| {
            let state = env.path(&format!("state-gw{i}"));
            env.start_listening(
                &format!("gw{i}"),
                |port| {
                    [
                        "--state",
                        &p(&state),
                        "tunnel",
                        "server",
                        "--name",
                        &format!("gw{i}"),
                        "--transport",
                        "tls",
                        "--listen",
                        &format!("127.0.0.1:{port}"),
                        "--to",
                        &to,
                        "--cert",
                        &p(&server_crt),
                        "--cert-key",
                        &p(&server_key),
                        "--peers-database",
                        &schema.url,
                        "--ticket-key-file",
                        &p(&kek),
                    ]
                    .map(String::from)
                    .to_vec()
                },
                "tunnel server ready",
            )
        })
        .collect();
    let ports: Vec<u16> = gateways.iter().map(|(_, p)| *p).collect();
    let Some(balancer) = Haproxy::start(&env, &ports) else {
        return;
    };
    let (_client, client_port) = env.start_listening(
        "tls-client",
        |lport| {
            [
                "tunnel",
                "client",
                "--transport",
                "tls",
                "--listen",
                &format!("127.0.0.1:{lport}"),
                "--server",
                &format!("127.0.0.1:{}", balancer.port),
                "--server-key",
                &server_pin,
                "--cert",
                &p(&client_crt),
                "--cert-key",
                &p(&client_key),
            ]
            .map(String::from)
            .to_vec()
        },
        "tunnel client ready",
    );

    // The first connection: a full handshake on one gateway, which sends tickets.
    assert!(echo_once(client_port), "the first TLS session failed");
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some(i) = gateways
            .iter()
            .position(|(g, _)| tls_sessions(g, false) == 1)
        {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "no gateway logged the first session"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // The next ones go round the other gateways: each resumes there.
    for _ in 0..2 {
        assert!(echo_once(client_port), "a later TLS session failed");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resumed: Vec<usize> = gateways
            .iter()
            .map(|(g, _)| tls_sessions(g, true))
            .collect();
        let others = (0..3).filter(|i| *i != first).all(|i| resumed[i] >= 1);
        if others {
            eprintln!(
                "first session on gw{}; resumed sessions by gateway: {resumed:?}",
                first + 1
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other gateways did not resume the client's sessions: {resumed:?} (first on gw{})",
            first + 1
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The database holds the ticket key only sealed: 12-byte nonce, 32-byte key, 16-byte tag.
    assert_eq!(
        schema
            .scalar("SELECT COUNT(*) FROM sessionkey_fleet_ticket_keys WHERE length(sealed) = 60"),
        schema.scalar("SELECT COUNT(*) FROM sessionkey_fleet_ticket_keys"),
    );
    assert_eq!(
        schema.scalar("SELECT COUNT(*) FROM sessionkey_fleet_ticket_keys"),
        1
    );
    // A removed key cannot come back on a ticket, on any gateway.
    assert_eq!(peers(&env, &schema, &["remove", &client_pin]).code, Some(0));
    for (g, _) in &mut gateways {
        g.expect_log("removed from the peers database");
    }
    for _ in 0..3 {
        assert!(!echo_once(client_port), "a removed key resumed on a ticket");
    }
}

/// A PostgreSQL server of the test's own (initdb as the `postgres` user, on a free loopback
/// port), which the test can stop and start again; stopped and removed on drop.
struct PrivatePostgres {
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
    port: u16,
}

impl PrivatePostgres {
    /// `None` (with a note) without PostgreSQL's server binaries or root outside CI.
    fn start(env: &Env) -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.flatten().map(|e| e.path().join("bin")).max())
            .filter(|b| b.join("initdb").exists());
        let root = nix::unistd::geteuid().is_root();
        let (Some(bin), true) = (bin, root) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the PostgreSQL stop test (as root, with postgresql installed)"
            );
            eprintln!("skipped: needs root and PostgreSQL's server binaries");
            return None;
        };
        let dir = env.path("pg");
        std::fs::create_dir_all(&dir).unwrap();
        let pg = Self {
            bin,
            dir,
            port: support::free_port(),
        };
        pg.as_postgres(&["chown", "-R", "postgres", &pg.dir_str()], false);
        pg.as_postgres(
            &[
                &pg.tool("initdb"),
                "-D",
                &pg.dir_str(),
                "-A",
                "trust",
                "-U",
                "sessionkey",
            ],
            true,
        );
        pg.up();
        Some(pg)
    }

    fn tool(&self, name: &str) -> String {
        self.bin.join(name).to_str().unwrap().to_string()
    }

    fn dir_str(&self) -> String {
        self.dir.to_str().unwrap().to_string()
    }

    /// Run `args` (as `postgres` when `su` is set), bounded, and insist on success.
    fn as_postgres(&self, args: &[&str], su: bool) {
        let mut cmd = if su {
            let mut c = std::process::Command::new("su");
            c.args(["postgres", "-s", "/bin/sh", "-c", &args.join(" ")]);
            c
        } else {
            let mut c = std::process::Command::new(args[0]);
            c.args(&args[1..]);
            c
        };
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run a PostgreSQL tool");
        assert!(out.status.success(), "{args:?}: {out:?}");
    }

    fn up(&self) {
        let opts = format!("'-p {} -k {} -h 127.0.0.1'", self.port, self.dir_str());
        self.as_postgres(
            &[
                &self.tool("pg_ctl"),
                "-D",
                &self.dir_str(),
                "-o",
                &opts,
                "-l",
                &format!("{}/log", self.dir_str()),
                "-w",
                "-t",
                "60",
                "start",
            ],
            true,
        );
    }

    fn down(&self) {
        self.as_postgres(
            &[
                &self.tool("pg_ctl"),
                "-D",
                &self.dir_str(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
            true,
        );
    }

    fn url(&self) -> String {
        format!("postgres://sessionkey@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("su")
            .args([
                "postgres",
                "-s",
                "/bin/sh",
                "-c",
                &format!(
                    "{} -D {} -m immediate -w stop",
                    self.tool("pg_ctl"),
                    self.dir_str()
                ),
            ])
            .output();
    }
}

/// PostgreSQL itself stopped while a gateway runs: sessions go on, status shows the
/// outage, and a removal made once it is back applies within a second of the gateway's
/// reconnect.
#[test]
fn postgresql_stopped_and_started_again_under_a_running_gateway() {
    let env = Env::new("fleet-pgstop");
    let Some(pg) = PrivatePostgres::start(&env) else {
        return;
    };
    let url = pg.url();
    let target = support::echo_target();
    let server_key = env.keygen("gateway");
    let alice = env.keygen("alice");
    let bob = env.keygen("bob");
    for k in [&alice, &bob] {
        let out = env.run(&["peers", "add", &k.public, "--database", &url]);
        assert_eq!(out.code, Some(0), "{out:?}");
    }
    let (mut gw, port) = gateway(&env, "gw", &server_key, target.addr, &url, &[]);
    let pin = ["--server-key", server_key.public.as_str()];
    let (_a, alice_port) = env.tunnel_client("alice", &alice, port, &pin);
    let (_b, bob_port) = env.tunnel_client("bob", &bob, port, &pin);
    let mut alice_conn = held_session(alice_port);
    let mut bob_conn = held_session(bob_port);

    pg.down();
    gw.expect_log("lost the peers database");
    assert_eq!(database_up(&env), vec![false]);
    {
        use std::io::{Read, Write};
        alice_conn.write_all(b"more").unwrap();
        let mut buf = [0u8; 4];
        alice_conn
            .read_exact(&mut buf)
            .expect("a session goes on while PostgreSQL is down");
    }
    assert!(
        echo_once(alice_port),
        "fail-static: alice is still admitted"
    );

    pg.up();
    let out = env.run(&["peers", "remove", &bob.fingerprint, "--database", &url]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let removed = Instant::now();
    gw.expect_log("peers database reachable again");
    let reconnected = Instant::now();
    assert_closed(&mut bob_conn, "bob's session after his removal");
    let closed = Instant::now();
    // From the later of the removal and the reconnect (whichever came last, the other one
    // had to happen first for the removal to be seen).
    let after = closed.saturating_duration_since(removed.max(reconnected));
    eprintln!(
        "PostgreSQL back: gateway reconnect seen {:?} after the removal, bob's session closed \
         {after:?} after the later of the two",
        reconnected.saturating_duration_since(removed)
    );
    assert!(after <= Duration::from_secs(1), "{after:?}");
    assert_eq!(database_up(&env), vec![true]);
    assert!(!echo_once(bob_port), "bob got in after his removal");
    {
        use std::io::{Read, Write};
        alice_conn.write_all(b"last").unwrap();
        let mut buf = [0u8; 4];
        alice_conn
            .read_exact(&mut buf)
            .expect("alice's session survived it all");
    }
}
