//! The fleet's TLS ticket keys against PostgreSQL (`SESSIONKEY_TEST_POSTGRES`; required
//! when `CI` is set), in a schema of the test's own: shared by gateways with the same
//! key-encryption key, useless to one with another, rotated on schedule, erased one ticket
//! lifetime after their last use.

use std::time::Duration;

use rustls::server::ProducesTickets;
use sessionkey::fleet::tickets::{FleetTicketer, Kek, ROTATE_EVERY, TICKET_LIFETIME};
use sessionkey::fleet::FleetDb;
use sqlx::{Connection, Executor};

fn admin_url() -> Option<String> {
    match std::env::var("SESSIONKEY_TEST_POSTGRES") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but SESSIONKEY_TEST_POSTGRES is not; CI must run the PostgreSQL tests"
            );
            eprintln!("skipped: set SESSIONKEY_TEST_POSTGRES=postgres://USER@HOST/DB to run it");
            None
        }
    }
}

fn kek(dir: &std::path::Path, name: &str, byte: u8) -> Kek {
    use base64::Engine;
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(
        &path,
        base64::engine::general_purpose::STANDARD.encode([byte; 32]),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let open = Kek::read(&path).unwrap_err();
    assert!(open.contains("chmod 600"), "{open}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    Kek::read(&path).unwrap()
}

/// Drops the test's schema when the test ends, passed or failed.
struct DropSchema {
    admin: String,
    schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let (admin, schema) = (self.admin.clone(), self.schema.clone());
        // A runtime of its own on another thread: this one may be inside the test's.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                conn.execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
                    .await
                    .ok()
            });
            Ok::<_, std::io::Error>(())
        })
        .join();
    }
}

fn id_of(ticket: &[u8]) -> [u8; 8] {
    ticket[..8].try_into().unwrap()
}

#[tokio::test]
async fn ticket_keys_are_shared_sealed_rotated_and_erased() {
    let Some(admin) = admin_url() else {
        return;
    };
    let schema = format!("skfleet_tickets_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    conn.execute(
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}").as_str(),
    )
    .await
    .unwrap();
    let _cleanup = DropSchema {
        admin: admin.clone(),
        schema: schema.clone(),
    };
    let sep = if admin.contains('?') { '&' } else { '?' };
    let url = format!("{admin}{sep}options[search_path]={schema}");
    let dir = std::env::temp_dir().join(format!("sessionkey-tickets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (kek_a, kek_b, other) = (kek(&dir, "a", 7), kek(&dir, "b", 7), kek(&dir, "c", 9));
    let db = FleetDb::open(&url, Duration::from_secs(10)).await.unwrap();

    // Two gateways with the same key file share the key; one with another file cannot open it.
    let (a, b, c) = (
        FleetTicketer::default(),
        FleetTicketer::default(),
        FleetTicketer::default(),
    );
    assert_eq!(a.refresh(&db, &kek_a).await.unwrap(), 1);
    assert_eq!(b.refresh(&db, &kek_b).await.unwrap(), 1);
    assert_eq!(c.refresh(&db, &other).await.unwrap(), 0);
    let old_ticket = a.encrypt(b"state").unwrap();
    assert_eq!(b.decrypt(&old_ticket).unwrap(), b"state");
    assert!(c.decrypt(&old_ticket).is_none());
    assert!(c.encrypt(b"state").is_none(), "no key, no ticket");
    let mut q = sqlx::PgConnection::connect(&url).await.unwrap();
    let sealed: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT sealed FROM sessionkey_fleet_ticket_keys")
            .fetch_all(&mut q)
            .await
            .unwrap();
    assert_eq!(sealed.len(), 1);
    assert_eq!(sealed[0].len(), 12 + 32 + 16, "nonce, sealed key, tag");

    // Older than the rotation period: the next refresh makes a new key, and keeps the old
    // one for the tickets it made.
    let age = |secs: f64| {
        format!("UPDATE sessionkey_fleet_ticket_keys SET created_at = now() - make_interval(secs => {secs})")
    };
    q.execute(age(ROTATE_EVERY.as_secs_f64() + 60.0).as_str())
        .await
        .unwrap();
    assert_eq!(b.refresh(&db, &kek_b).await.unwrap(), 2);
    assert_eq!(
        a.refresh(&db, &kek_a).await.unwrap(),
        2,
        "one rotation, not two"
    );
    let new_ticket = a.encrypt(b"state").unwrap();
    assert_ne!(
        id_of(&new_ticket),
        id_of(&old_ticket),
        "new tickets use the new key"
    );
    assert_eq!(b.decrypt(&old_ticket).unwrap(), b"state");
    assert_eq!(b.decrypt(&new_ticket).unwrap(), b"state");

    // One ticket lifetime after it stopped encrypting, the old key is erased everywhere.
    q.execute(
        format!(
            "UPDATE sessionkey_fleet_ticket_keys SET created_at = now() - make_interval(secs => {})
             WHERE key_id = {}",
            (ROTATE_EVERY + TICKET_LIFETIME).as_secs_f64() + 60.0,
            i64::from_be_bytes(id_of(&old_ticket))
        )
        .as_str(),
    )
    .await
    .unwrap();
    assert_eq!(a.refresh(&db, &kek_a).await.unwrap(), 1);
    assert!(
        a.decrypt(&old_ticket).is_none(),
        "an erased key still opens tickets"
    );
    assert_eq!(a.decrypt(&new_ticket).unwrap(), b"state");
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sessionkey_fleet_ticket_keys")
        .fetch_one(&mut q)
        .await
        .unwrap();
    assert_eq!(left, 1);

    let _ = std::fs::remove_dir_all(&dir);
}
