//! The PostgreSQL source: one role per lease, created and dropped through
//! the admin connection (a vault secret).
//!
//! The role's password reaches the server only as a SCRAM-SHA-256 verifier,
//! so the plaintext is never in its logs; `VALID UNTIL` ends the role at the
//! lease's deadline even if custody dies. Revocation treats "role does not
//! exist" as done, so it can be retried blindly.

use std::time::Duration;

use custody_core::sources::{PostgresSource, render};
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};
use zeroize::Zeroizing;

/// Longest wait for the admin connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a PostgreSQL operation failed: an error class and the server's
/// SQLSTATE or the connection problem, never a statement or a password.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PgFailure(pub String);

fn describe(e: &tokio_postgres::Error) -> PgFailure {
    match e.as_db_error() {
        Some(db) => PgFailure(format!(
            "the database refused a statement (SQLSTATE {}: {})",
            db.code().code(),
            db.message()
        )),
        None if e.is_closed() => PgFailure("the database connection closed".into()),
        None => PgFailure(format!("cannot reach the database ({})", class_of(e))),
    }
}

/// The kind of a client-side error, without its text (which can quote the
/// connection string).
fn class_of(e: &tokio_postgres::Error) -> &'static str {
    let s = e.to_string();
    if s.contains("timed out") || s.contains("timeout") {
        "connection timed out"
    } else if s.contains("refused") || s.contains("No such file") {
        "connection refused"
    } else if s.contains("password") || s.contains("authentication") {
        "authentication failed"
    } else {
        "connection error"
    }
}

/// Parses the admin URL (the vault secret). The error never quotes it.
pub fn admin_config(url: &[u8]) -> Result<Config, PgFailure> {
    let text = std::str::from_utf8(url)
        .map_err(|_| PgFailure("the admin connection URL is not UTF-8".into()))?;
    let mut cfg: Config = text.parse().map_err(|_| {
        PgFailure("the admin connection URL does not parse (expected postgresql://…)".into())
    })?;
    cfg.connect_timeout(CONNECT_TIMEOUT);
    if cfg.get_application_name().is_none() {
        cfg.application_name("custody");
    }
    Ok(cfg)
}

async fn connect(cfg: &Config) -> Result<Client, PgFailure> {
    let (client, conn) = cfg.connect(NoTls).await.map_err(|e| describe(&e))?;
    // The connection task ends when the client is dropped.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Creates `role` with `password` valid until `expiration` (RFC 3339).
pub async fn create(
    cfg: &Config,
    source: &PostgresSource,
    role: &str,
    password: &[u8],
    expiration: &str,
) -> Result<(), PgFailure> {
    let client = connect(cfg).await?;
    let verifier = Zeroizing::new(postgres_protocol::password::scram_sha_256(password));
    for t in &source.creation {
        let sql = Zeroizing::new(
            render(t, role, &verifier, expiration).map_err(|e| PgFailure(e.to_string()))?,
        );
        client.batch_execute(&sql).await.map_err(|e| describe(&e))?;
    }
    Ok(())
}

/// Revokes `role`: runs the revocation statements; a role already gone
/// (SQLSTATE 42704) counts as revoked.
pub async fn revoke(cfg: &Config, source: &PostgresSource, role: &str) -> Result<(), PgFailure> {
    let client = connect(cfg).await?;
    for t in &source.revocation {
        let sql = render(t, role, "", "").map_err(|e| PgFailure(e.to_string()))?;
        match client.batch_execute(&sql).await {
            Ok(()) => {}
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => return Ok(()),
            Err(e) => return Err(describe(&e)),
        }
    }
    Ok(())
}

/// Roles whose name starts with `prefix` (this vault's minted roles).
pub async fn roles_with_prefix(cfg: &Config, prefix: &str) -> Result<Vec<String>, PgFailure> {
    let client = connect(cfg).await?;
    let rows = client
        .query(
            "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1) ORDER BY rolname",
            &[&prefix],
        )
        .await
        .map_err(|e| describe(&e))?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}

/// The connection URL a lease gets: the admin URL's host, port and
/// database, with the minted role and password.
pub fn lease_url(cfg: &Config, role: &str, password: &[u8]) -> Zeroizing<Vec<u8>> {
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let db = pct(cfg.get_dbname().unwrap_or("postgres"));
    let mut url = Zeroizing::new(Vec::with_capacity(128));
    url.extend_from_slice(b"postgresql://");
    url.extend_from_slice(role.as_bytes());
    url.push(b':');
    url.extend_from_slice(password);
    match cfg.get_hosts().first() {
        Some(Host::Unix(dir)) => {
            let dir = pct(&dir.to_string_lossy());
            url.extend_from_slice(format!("@/{db}?host={dir}&port={port}").as_bytes());
        }
        Some(Host::Tcp(h)) if h.contains(':') => {
            url.extend_from_slice(format!("@[{h}]:{port}/{db}").as_bytes());
        }
        Some(Host::Tcp(h)) => url.extend_from_slice(format!("@{h}:{port}/{db}").as_bytes()),
        None => url.extend_from_slice(format!("@localhost:{port}/{db}").as_bytes()),
    }
    url
}

/// Everything but RFC 3986's unreserved characters.
const NOT_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes `s` for a URL's path or query.
fn pct(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, NOT_UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    #[test]
    fn lease_urls_keep_host_port_and_database() {
        let url = |admin: &str| {
            let cfg = admin_config(admin.as_bytes()).unwrap();
            String::from_utf8(lease_url(&cfg, "custody-ab-01", b"pw").to_vec()).unwrap()
        };
        assert_eq!(
            url("postgresql://admin:secret@127.0.0.1:5544/app"),
            "postgresql://custody-ab-01:pw@127.0.0.1:5544/app"
        );
        assert_eq!(
            url("host=/tmp/pg port=6000 user=postgres dbname='my db'"),
            "postgresql://custody-ab-01:pw@/my%20db?host=%2Ftmp%2Fpg&port=6000"
        );
        assert!(admin_config(b"\xff").is_err());
        let e = admin_config(b"postgresql://u:hunter2@[bad").unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
    }
}
