//! Dynamic sources: where per-lease credentials come from.
//!
//! A *source* is configured by a human (`custody source add`) and stored
//! sealed in the vault, so nobody who can write files in `$CUSTODY_HOME` can
//! swap its statements or its mint command. A *dynamic variable* (kind
//! `postgres:NAME` or `command:NAME`) names a source; each lease that uses it
//! gets a fresh credential, revoked when the lease ends.
//!
//! This module holds the definitions and the pure parts (names, statement
//! templates); the broker talks to PostgreSQL and runs commands.

use serde::{Deserialize, Serialize};

use crate::names::{EnvName, NameError, VarName};

/// Prefix of every role custody mints: the reaper drops only these.
pub const ROLE_PREFIX: &str = "custody-";

/// PostgreSQL's identifier limit (NAMEDATALEN − 1).
pub const MAX_ROLE_LEN: usize = 63;

/// Default role creation: `{{name}}`, `{{password}}` (a SCRAM-SHA-256
/// verifier, so the plaintext never reaches the server's logs) and
/// `{{expiration}}` (RFC 3339, the lease's deadline).
pub const DEFAULT_CREATION: &[&str] =
    &[r#"CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'"#];

/// Default revocation: no new logins, end the role's sessions, hand what it
/// created to the admin, drop what is left, drop the role. A statement that
/// finds the role gone counts as done.
pub const DEFAULT_REVOCATION: &[&str] = &[
    r#"ALTER ROLE "{{name}}" NOLOGIN"#,
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}'",
    r#"REASSIGN OWNED BY "{{name}}" TO CURRENT_USER"#,
    r#"DROP OWNED BY "{{name}}""#,
    r#"DROP ROLE IF EXISTS "{{name}}""#,
];

/// A configured source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceDef {
    /// Its name (environment-name rules: lowercase, digits, `.`, `_`, `-`).
    pub name: String,
    /// What it mints.
    #[serde(flatten)]
    pub spec: SourceSpec,
}

/// The kinds of source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceSpec {
    /// A PostgreSQL role per lease.
    Postgres(PostgresSource),
    /// A token per lease from a human-configured command.
    Command(CommandSource),
}

/// A PostgreSQL source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresSource {
    /// `ENV/VAR` of the admin connection URL (itself a vault secret).
    pub admin_from: String,
    /// Statements that create the role (templates; see [`DEFAULT_CREATION`]).
    pub creation: Vec<String>,
    /// Statements that revoke it (see [`DEFAULT_REVOCATION`]).
    pub revocation: Vec<String>,
}

/// A command source: `mint` prints a token on stdout; `revoke` (optional)
/// gets it in `CUSTODY_TOKEN` and on stdin. Both run with `sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandSource {
    /// Prints one token.
    pub mint: String,
    /// Revokes the token it is given.
    #[serde(default)]
    pub revoke: Option<String>,
    /// Longest life of a token; a lease's deadline is capped to it.
    pub ttl_secs: u64,
}

impl SourceSpec {
    /// `postgres` or `command`.
    pub fn type_name(&self) -> &'static str {
        match self {
            SourceSpec::Postgres(_) => "postgres",
            SourceSpec::Command(_) => "command",
        }
    }
}

impl SourceDef {
    /// The reference a dynamic variable stores: `TYPE:NAME`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.spec.type_name(), self.name)
    }
}

/// Why a source definition or reference is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// Not `TYPE:NAME`.
    #[error("'{0}' is not a source reference: write postgres:NAME or command:NAME")]
    BadReference(String),
    /// A bad name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// `admin_from` is not `ENV/VAR`.
    #[error("--admin-from must be ENV/VAR (the variable holding the admin connection URL)")]
    BadAdminFrom,
    /// A statement list is empty or a template is malformed.
    #[error("{0}")]
    BadTemplate(String),
    /// A value to put into a statement is not from its safe alphabet; no
    /// statement was built.
    #[error("refused to build a statement: {0}")]
    UnsafeValue(&'static str),
}

/// Splits `TYPE:NAME` and checks both parts.
pub fn parse_reference(r: &str) -> Result<(&str, EnvName), SourceError> {
    let (t, n) = r
        .split_once(':')
        .filter(|(t, _)| matches!(*t, "postgres" | "command"))
        .ok_or_else(|| SourceError::BadReference(r.chars().take(80).collect()))?;
    Ok((t, EnvName::new(n)?))
}

/// Splits `ENV/VAR`.
pub fn parse_admin_from(s: &str) -> Result<(EnvName, VarName), SourceError> {
    let (e, v) = s.split_once('/').ok_or(SourceError::BadAdminFrom)?;
    Ok((EnvName::new(e)?, VarName::new(v)?))
}

impl SourceDef {
    /// Checks a definition before it is stored.
    pub fn validate(&self) -> Result<(), SourceError> {
        EnvName::new(&self.name)?;
        match &self.spec {
            SourceSpec::Postgres(p) => {
                parse_admin_from(&p.admin_from)?;
                for (what, list) in [("creation", &p.creation), ("revocation", &p.revocation)] {
                    if list.is_empty() || list.iter().any(|s| s.trim().is_empty()) {
                        return Err(SourceError::BadTemplate(format!(
                            "the {what} statements are empty"
                        )));
                    }
                }
                if !p.creation.iter().any(|s| s.contains("{{name}}")) {
                    return Err(SourceError::BadTemplate(
                        "the creation statements never use {{name}}".into(),
                    ));
                }
                if !p.revocation.iter().any(|s| s.contains("{{name}}")) {
                    return Err(SourceError::BadTemplate(
                        "the revocation statements never use {{name}}".into(),
                    ));
                }
            }
            SourceSpec::Command(c) => {
                if c.mint.trim().is_empty() {
                    return Err(SourceError::BadTemplate("the mint command is empty".into()));
                }
                if c.ttl_secs == 0 {
                    return Err(SourceError::BadTemplate("the TTL must be positive".into()));
                }
            }
        }
        Ok(())
    }
}

/// Fills a statement template. Every substituted value must come from a
/// safe alphabet (a role name [`role_name`] makes, a SCRAM verifier, an RFC
/// 3339 time), so no quoting is needed inside the template's own quotes.
/// Anything else is refused before a statement exists: a role name read back
/// from a forged lease record or a hostile database must never reach SQL run
/// as the admin.
pub fn render(
    template: &str,
    name: &str,
    password: &str,
    expiration: &str,
) -> Result<String, SourceError> {
    if !is_minted_role(name) {
        return Err(SourceError::UnsafeValue(
            "the role name is not one custody mints",
        ));
    }
    let verifier = |c: char| c.is_ascii_alphanumeric() || "+/=$:-".contains(c);
    if !password.chars().all(verifier) {
        return Err(SourceError::UnsafeValue(
            "the password verifier has unexpected characters",
        ));
    }
    let time = |c: char| c.is_ascii_digit() || "TZ:.+-".contains(c);
    if !expiration.chars().all(time) {
        return Err(SourceError::UnsafeValue(
            "the expiration is not an RFC 3339 time",
        ));
    }
    Ok(template
        .replace("{{name}}", name)
        .replace("{{password}}", password)
        .replace("{{expiration}}", expiration))
}

/// Whether `name` has the shape [`role_name`] gives: `custody-` ‖ 8 lowercase
/// hex ‖ `-` ‖ 16 lowercase hex.
pub fn is_minted_role(name: &str) -> bool {
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    name.strip_prefix(ROLE_PREFIX)
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(tag, random)| hex(tag, 8) && hex(random, 16))
}

/// A role name for one lease: `custody-` ‖ 8 hex of the vault id (so the
/// reaper of one vault never drops another vault's roles) ‖ `-` ‖ 16 random
/// lowercase hex digits. 33 characters, within PostgreSQL's 63.
pub fn role_name(vault_tag: &str, random: &[u8; 8]) -> String {
    format!("{ROLE_PREFIX}{vault_tag}-{}", hex::encode(random))
}

/// The prefix of every role this vault mints (`custody-` ‖ vault tag ‖ `-`).
pub fn role_prefix(vault_tag: &str) -> String {
    format!("{ROLE_PREFIX}{vault_tag}-")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    /// Attack class 8, "forged lease records": a role name an agent wrote
    /// into a lease record (or a role it created) reaches `render` at the
    /// next unlock. Every hostile shape is refused before a statement exists,
    /// in release builds too (this was a `debug_assert!`).
    #[test]
    fn attack_hostile_role_names_never_become_sql() {
        let good = role_name("0a1b2c3d", &[0xab; 8]);
        assert!(render(DEFAULT_REVOCATION[0], &good, "", "").is_ok());
        for hostile in [
            "custody-0a1b2c3d-abababababababab\"; CREATE ROLE x SUPERUSER; --",
            "custody-0a1b2c3d-ABABABABABABABAB",
            "custody-0a1b2c3d-abab",
            "app_owner",
            "custody-0a1b2c3d-abababababababab'",
            "",
        ] {
            assert!(
                matches!(
                    render(DEFAULT_REVOCATION[0], hostile, "", ""),
                    Err(SourceError::UnsafeValue(_))
                ),
                "{hostile:?}"
            );
        }
        assert!(render(DEFAULT_CREATION[0], &good, "x' SUPERUSER '", "").is_err());
        assert!(render(DEFAULT_CREATION[0], &good, "", "2026'; DROP").is_err());
    }

    #[test]
    fn references_and_names() {
        let (t, n) = parse_reference("postgres:main").unwrap();
        assert_eq!((t, n.as_str()), ("postgres", "main"));
        assert!(parse_reference("mysql:main").is_err());
        assert!(parse_reference("postgres:Main").is_err());
        assert!(parse_reference("main").is_err());
        let r = role_name("0a1b2c3d", &[0xff; 8]);
        assert_eq!(r, "custody-0a1b2c3d-ffffffffffffffff");
        assert!(r.len() <= MAX_ROLE_LEN && r.starts_with(&role_prefix("0a1b2c3d")));
    }

    #[test]
    fn defaults_validate_and_render() {
        let def = SourceDef {
            name: "main".into(),
            spec: SourceSpec::Postgres(PostgresSource {
                admin_from: "infra/PG_ADMIN_URL".into(),
                creation: DEFAULT_CREATION.iter().map(|s| (*s).to_owned()).collect(),
                revocation: DEFAULT_REVOCATION.iter().map(|s| (*s).to_owned()).collect(),
            }),
        };
        def.validate().unwrap();
        assert_eq!(def.reference(), "postgres:main");
        let role = role_name("0a1b2c3d", &[7; 8]);
        let sql = render(
            DEFAULT_CREATION[0],
            &role,
            "SCRAM-SHA-256$4096:a$b:c",
            "2026-01-01T00:00:00Z",
        )
        .unwrap();
        assert_eq!(
            sql,
            format!(
                r#"CREATE ROLE "{role}" LOGIN PASSWORD 'SCRAM-SHA-256$4096:a$b:c' VALID UNTIL '2026-01-01T00:00:00Z'"#
            )
        );
        let mut bad = def.clone();
        if let SourceSpec::Postgres(p) = &mut bad.spec {
            p.revocation = vec!["SELECT 1".into()];
        }
        assert!(bad.validate().is_err(), "revocation must name the role");
        let json = serde_json::to_string(&def).unwrap();
        assert_eq!(serde_json::from_str::<SourceDef>(&json).unwrap(), def);
    }
}
