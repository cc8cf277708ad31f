//! A fleet of tunnel gateways on PostgreSQL (`SESSIONKEY_TEST_POSTGRES`; required when
//! `CI` is set): `sessionkey peers add|remove|list`, gateways that take their authorized
//! peers from the database, live revocation.
//!
//! Each test works in a PostgreSQL schema of its own (`?options[search_path]=...`), dropped
//! at the end, so it meets neither the relay's tables nor another test's.

mod support;

use std::time::Duration;

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
        1
    );
    assert_eq!(
        schema.scalar("SELECT MAX(version)::BIGINT FROM sessionkey_fleet_migrations"),
        1
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
