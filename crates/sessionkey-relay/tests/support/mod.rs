//! What the relay tests share: databases to run against.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh directory under the system's temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sessionkey-relay-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A fresh SQLite database URL.
pub fn sqlite_url() -> String {
    format!("sqlite://{}", temp_dir("db").join("relay.db").display())
}

/// The PostgreSQL URL of `SESSIONKEY_TEST_POSTGRES`. Without it: `None` and a clear "skipped"
/// line, except under CI (`CI` set), where a missing database is a failure, not a skip.
pub fn postgres_url(test: &str) -> Option<String> {
    match std::env::var("SESSIONKEY_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: CI is set but SESSIONKEY_TEST_POSTGRES is not; CI must run the PostgreSQL tests"
            );
            eprintln!("{test}: PostgreSQL part skipped: set SESSIONKEY_TEST_POSTGRES=postgres://USER@HOST/DB to run it");
            None
        }
    }
}

/// A name no other test run uses (tests share one PostgreSQL database).
pub fn unique(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{name}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
