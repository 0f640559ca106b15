//! Dynamic credential drivers: mint one credential at a source, revoke it,
//! find a vault's leftovers. Drivers know sources, never the broker: what
//! to record, audit and retry is the broker's (`broker/credentials.rs`).
//!
//! The life of a credential:
//! 1. **Planned** before anything is created: its public id (a role name)
//!    goes into the broker's state and the lease record on disk, so neither
//!    the orphan reaper nor a crash can lose track of it.
//! 2. **Minted** at the source; the secret goes into the lease's injected
//!    values and masking patterns only.
//! 3. **Revoked** when the lease ends (exit, deadline, `revoke`, `lock`),
//!    retried with backoff. A credential that cannot be revoked is shown as
//!    *irrevocable*, with the reason, in `custody leases` and `status` until
//!    a retry succeeds; its own expiry (`VALID UNTIL`, the command's TTL)
//!    bounds it meanwhile.
//! 4. **Reaped** at unlock: records a crashed broker left are revoked, and
//!    roles of this vault (`custody-<vault tag>-…`) that no lease owns are
//!    dropped. Roles without that prefix are never touched.

pub mod command;
pub mod postgres;

use std::time::{Duration, SystemTime};

use custody_core::crypto::{self, Key};
use custody_core::secret::{Token, Value};
use custody_core::sources::{self as defs, PostgresSource, SourceDef, SourceSpec};
use custody_core::vault::{Vault, VaultError};
use serde::{Deserialize, Serialize};

/// How long a role outlives its lease's deadline at most (`VALID UNTIL`),
/// for the kill grace and clock skew.
const VALID_UNTIL_SLACK: Duration = Duration::from_secs(60);

/// Why a source could not be used. Names and reasons only, never values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// A reference or definition that is not well-formed.
    #[error("{0}")]
    Malformed(String),
    /// A variable names a source that is not configured.
    #[error("no source '{name}': add it with `custody source add {kind} {name}`")]
    NoSuchSource {
        /// The source's type.
        kind: String,
        /// Its name.
        name: String,
    },
    /// A variable names a source of another type.
    #[error("source '{name}' is a {is} source, not {wanted}")]
    WrongType {
        /// The source's name.
        name: String,
        /// Its type.
        is: String,
        /// The type the reference names.
        wanted: String,
    },
    /// A source removed or changed since its variable was declared.
    #[error(
        "source {0} is not configured (any more): ask the user to add it or to re-declare the variable"
    )]
    NotConfigured(String),
    /// Reading the vault failed (the admin URL, the source).
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The source itself failed (its command, its server).
    #[error("dynamic source {reference} failed: {reason}; nothing was run")]
    Failed {
        /// `TYPE:NAME`.
        reference: String,
        /// What went wrong (masked).
        reason: String,
    },
    /// A revocation could not start or did not go through.
    #[error("{0}")]
    Revocation(String),
    /// No randomness, or sealing failed.
    #[error("{0}")]
    Internal(&'static str),
}

impl SourceError {
    fn failed(reference: &str, reason: impl std::fmt::Display) -> SourceError {
        SourceError::Failed {
            reference: reference.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// A credential's public facts, persisted in its lease record. Never the
/// secret, except a command token sealed with the vault's lease-token key.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Minted {
    /// The source's name.
    pub source: String,
    /// The source reference, `TYPE:NAME`.
    pub reference: String,
    /// The public id: the role name, or `tok-…` for a command token.
    pub credential: String,
    /// When it ends at the source by itself, RFC 3339.
    pub expires: String,
    /// A command token, sealed (hex), so a revocation after a crash can
    /// still hand it to the revoke command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_token: Option<String>,
}

/// Shows the public id; the sealed token only as present or not.
impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("reference", &self.reference)
            .field("credential", &self.credential)
            .field("expires", &self.expires)
            .field(
                "sealed_token",
                &self.sealed_token.as_ref().map(|_| "[sealed]"),
            )
            .finish()
    }
}

/// A variable that names a source, ready to mint (read under the lock).
pub(crate) struct Prepared {
    pub var: String,
    def: SourceDef,
    /// The admin URL, for a PostgreSQL source.
    admin: Option<Value>,
    pub credential: String,
}

impl Prepared {
    /// `TYPE:NAME`.
    pub fn reference(&self) -> String {
        self.def.reference()
    }

    /// When the credential ends at the source by itself, for a lease ending
    /// at `deadline`.
    pub fn expiry(&self, deadline: SystemTime) -> SystemTime {
        match self.def.spec {
            SourceSpec::Postgres(_) => deadline + VALID_UNTIL_SLACK,
            SourceSpec::Command(_) => deadline,
        }
    }
}

/// One minted credential's secrets.
pub(crate) struct Credential {
    /// Injected as the variable's value.
    pub value: Token,
    /// Masked too, never injected alone (a role's password inside its URL).
    pub also_mask: Option<Token>,
    /// The value is a token only the source can end: the broker keeps it
    /// sealed for the revocation.
    pub keep_sealed: bool,
}

/// A mint that failed, and what it printed anyway: a token may exist even
/// though its command failed afterwards (it must be revoked).
pub(crate) struct MintError {
    pub error: SourceError,
    pub printed: Option<Token>,
}

impl From<SourceError> for MintError {
    fn from(error: SourceError) -> Self {
        MintError {
            error,
            printed: None,
        }
    }
}

/// Checks a `TYPE:NAME` reference against the configured sources; returns
/// it normalized.
pub fn check_reference(vault: &Vault, reference: Option<&str>) -> Result<String, SourceError> {
    let r = reference.ok_or_else(|| {
        SourceError::Malformed(
            "a dynamic variable needs its source: postgres:NAME or command:NAME".into(),
        )
    })?;
    let (kind, name) =
        defs::parse_reference(r).map_err(|e| SourceError::Malformed(e.to_string()))?;
    match vault.source(&name)? {
        Some(d) if d.spec.type_name() == kind => Ok(d.reference()),
        Some(d) => Err(SourceError::WrongType {
            name: d.name.clone(),
            is: d.spec.type_name().to_owned(),
            wanted: kind.to_string(),
        }),
        None => Err(SourceError::NoSuchSource {
            kind: kind.to_string(),
            name: name.as_str().to_owned(),
        }),
    }
}

/// Checks a definition before it is stored: well-formed, and for
/// PostgreSQL an admin URL that exists and parses now, not at the first
/// lease.
pub fn check_definition(vault: &Vault, def: &SourceDef) -> Result<(), SourceError> {
    def.validate()
        .map_err(|e| SourceError::Malformed(e.to_string()))?;
    if let SourceSpec::Postgres(p) = &def.spec {
        let admin = admin_secret(vault, &p.admin_from)?;
        postgres::admin_config(admin.expose())
            .map_err(|e| SourceError::Malformed(e.to_string()))?;
    }
    Ok(())
}

fn admin_secret(vault: &Vault, admin_from: &str) -> Result<Value, SourceError> {
    let (e, v) =
        defs::parse_admin_from(admin_from).map_err(|x| SourceError::Malformed(x.to_string()))?;
    let (_, value) = vault.reveal(&e, &v)?;
    Ok(value)
}

fn load(vault: &Vault, reference: &str) -> Result<SourceDef, SourceError> {
    let (kind, name) =
        defs::parse_reference(reference).map_err(|e| SourceError::Malformed(e.to_string()))?;
    match vault.source(&name)? {
        Some(d) if d.spec.type_name() == kind => Ok(d),
        _ => Err(SourceError::NotConfigured(reference.to_owned())),
    }
}

/// Reads what minting needs for each `(variable, reference)` and names the
/// credentials. Runs under the state lock (the vault is there).
pub(crate) fn prepare(
    vault: &Vault,
    wanted: &[(String, String)],
) -> Result<Vec<Prepared>, SourceError> {
    let tag = vault.tag();
    let mut out = Vec::new();
    for (var, reference) in wanted {
        let def = load(vault, reference)?;
        let random: [u8; 8] = crypto::random_array()
            .map_err(|_| SourceError::Internal("no randomness for a credential id"))?;
        let (admin, credential) = match &def.spec {
            SourceSpec::Postgres(p) => (
                Some(admin_secret(vault, &p.admin_from)?),
                defs::role_name(&tag, &random),
            ),
            SourceSpec::Command(_) => (None, format!("tok-{}", hex::encode(random))),
        };
        out.push(Prepared {
            var: var.clone(),
            def,
            admin,
            credential,
        });
    }
    Ok(out)
}

/// The longest a lease may run with these sources (a command source's TTL).
pub(crate) fn cap_ttl(prepared: &[Prepared], ttl: Duration) -> Duration {
    prepared.iter().fold(ttl, |t, p| match &p.def.spec {
        SourceSpec::Command(c) => t.min(Duration::from_secs(c.ttl_secs)),
        SourceSpec::Postgres(_) => t,
    })
}

/// The planned credentials, for the state and the lease record (before any
/// is created).
pub(crate) fn planned(prepared: &[Prepared], deadline: SystemTime) -> Vec<Minted> {
    prepared
        .iter()
        .map(|p| Minted {
            source: p.def.name.clone(),
            reference: p.def.reference(),
            credential: p.credential.clone(),
            expires: custody_core::audit::format_rfc3339(p.expiry(deadline)),
            sealed_token: None,
        })
        .collect()
}

/// Mints one prepared credential for `lease_id`, ending by itself at
/// `expires` (RFC 3339) or after `ttl`. `mask` names the values a failed
/// command's stderr must not show.
pub(crate) async fn mint(
    p: &Prepared,
    lease_id: &str,
    ttl: Duration,
    expires: &str,
    mask: &[(&str, &[u8])],
) -> Result<Credential, MintError> {
    let reference = p.def.reference();
    match &p.def.spec {
        SourceSpec::Postgres(pg) => {
            let admin = p.admin.as_ref().map_or(&[][..], |a| a.expose());
            let cfg =
                postgres::admin_config(admin).map_err(|e| SourceError::failed(&reference, e))?;
            let password =
                custody_core::generate::random_value(32, custody_core::generate::Alphabet::Alnum)
                    .map_err(|e| SourceError::failed(&reference, e))?;
            postgres::create(&cfg, pg, &p.credential, &password, expires)
                .await
                .map_err(|e| SourceError::failed(&reference, e))?;
            Ok(Credential {
                value: Token::new(postgres::lease_url(&cfg, &p.credential, &password)),
                also_mask: Some(Token::new(password)),
                keep_sealed: false,
            })
        }
        SourceSpec::Command(c) => {
            let ttl_secs = ttl.as_secs().max(1);
            match command::mint(c, lease_id, ttl_secs, expires, mask).await {
                Ok(token) => Ok(Credential {
                    value: token,
                    also_mask: None,
                    keep_sealed: true,
                }),
                Err(command::MintFailure { failure, printed }) => Err(MintError {
                    error: SourceError::failed(&reference, failure),
                    printed,
                }),
            }
        }
    }
}

fn token_aad(lease_id: &str, credential: &str) -> Vec<u8> {
    format!("custody/v1/lease-token\0{lease_id}\0{credential}").into_bytes()
}

/// Seals a command token for the lease record (hex), bound to the lease
/// and the credential id.
pub(crate) fn seal_token(
    key: &Key,
    lease_id: &str,
    credential: &str,
    token: &[u8],
) -> Result<String, SourceError> {
    crypto::seal(key, &token_aad(lease_id, credential), token)
        .map(hex::encode)
        .map_err(|_| SourceError::Internal("cannot seal the token"))
}

fn open_token(key: &Key, lease_id: &str, m: &Minted) -> Result<Token, SourceError> {
    let sealed = m.sealed_token.as_deref().ok_or(SourceError::Revocation(
        "the token was never recorded (the broker stopped while minting)".into(),
    ))?;
    let bytes = hex::decode(sealed)
        .map_err(|_| SourceError::Revocation("the recorded token is damaged".into()))?;
    crypto::open(key, &token_aad(lease_id, &m.credential), &bytes)
        .map(Token::new)
        .map_err(|_| SourceError::Revocation("the recorded token does not authenticate".into()))
}

/// What revoking a credential of one source needs, read from the vault each
/// time (under the lock), so a retry sees the current configuration.
pub(crate) struct Revocation {
    def: SourceDef,
    admin: Option<Value>,
    token_key: Key,
}

impl Revocation {
    /// Reads the source `reference` (and its admin URL).
    pub fn read(vault: &Vault, reference: &str, token_key: Key) -> Result<Self, SourceError> {
        let def = load(vault, reference)?;
        let admin = match &def.spec {
            SourceSpec::Postgres(p) => Some(admin_secret(vault, &p.admin_from)?),
            SourceSpec::Command(_) => None,
        };
        Ok(Revocation {
            def,
            admin,
            token_key,
        })
    }

    /// Revokes one credential of `lease_id`.
    pub async fn revoke(&self, lease_id: &str, m: &Minted) -> Result<(), SourceError> {
        match &self.def.spec {
            SourceSpec::Postgres(pg) => {
                let admin = self.admin.as_ref().map_or(&[][..], |a| a.expose());
                let cfg = postgres::admin_config(admin)
                    .map_err(|e| SourceError::Revocation(e.to_string()))?;
                postgres::revoke(&cfg, pg, &m.credential)
                    .await
                    .map_err(|e| SourceError::Revocation(e.to_string()))
            }
            SourceSpec::Command(c) => {
                let token = open_token(&self.token_key, lease_id, m)?;
                command::revoke(c, token.expose())
                    .await
                    .map_err(|e| SourceError::Revocation(e.to_string()))
            }
        }
    }
}

/// A PostgreSQL source whose roles of this vault can be listed and dropped.
pub(crate) struct Reapable {
    /// `TYPE:NAME`, for the audit record.
    pub reference: String,
    source: PostgresSource,
    admin: Value,
    prefix: String,
}

/// Every PostgreSQL source of the vault whose admin URL reads.
pub(crate) fn reapable(vault: &Vault) -> Vec<Reapable> {
    let prefix = defs::role_prefix(&vault.tag());
    let mut out = Vec::new();
    for def in vault.sources().unwrap_or_default() {
        if let SourceSpec::Postgres(p) = &def.spec
            && let Ok(admin) = admin_secret(vault, &p.admin_from)
        {
            out.push(Reapable {
                reference: def.reference(),
                source: p.clone(),
                admin,
                prefix: prefix.clone(),
            });
        }
    }
    out
}

impl Reapable {
    /// Drops this vault's roles at the source that `owned` does not claim;
    /// returns the ones dropped. A source that cannot be reached is skipped.
    pub async fn reap(&self, owned: impl Fn(&str) -> bool) -> Vec<String> {
        let Ok(cfg) = postgres::admin_config(self.admin.expose()) else {
            return Vec::new();
        };
        let Ok(roles) = postgres::roles_with_prefix(&cfg, &self.prefix).await else {
            return Vec::new();
        };
        let mut dropped = Vec::new();
        for role in roles {
            if !owned(&role) && postgres::revoke(&cfg, &self.source, &role).await.is_ok() {
                dropped.push(role);
            }
        }
        dropped
    }
}
