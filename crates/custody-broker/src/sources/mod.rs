//! Dynamic credentials: minted for one lease, revoked when it ends.
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

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use custody_core::audit::AuditEvent;
use custody_core::crypto::{self, Key, Subkey};
use custody_core::names::EnvName;
use custody_core::sources::{self as defs, SourceDef, SourceSpec};
use custody_core::vault::Vault;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::broker::{Broker, vault_error};
use crate::protocol::WireError;
use crate::reaper;

/// How long a role outlives its lease's deadline at most (`VALID UNTIL`),
/// for the kill grace and clock skew.
const VALID_UNTIL_SLACK: Duration = Duration::from_secs(60);
/// Revocation attempts at lease end before the credential is reported
/// irrevocable (the retries go on in the background).
const FIRST_ATTEMPTS: u32 = 3;

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

/// The broker's view of one lease's credentials.
#[derive(Debug, Clone)]
pub(crate) struct DynamicEntry {
    /// Still to revoke.
    pub minted: Vec<Minted>,
    /// The lease record on disk (re-persisted as credentials go).
    pub record: reaper::LeaseRecord,
    /// The lease has ended and revocation is under way.
    pub ending: bool,
    /// Set once the first attempts failed.
    pub irrevocable: Option<Irrevocable>,
}

/// Why a credential is not revoked yet.
#[derive(Debug, Clone)]
pub(crate) struct Irrevocable {
    pub reason: String,
    pub since: SystemTime,
    pub attempts: u32,
}

/// A variable that names a source, ready to mint (read under the lock).
pub(crate) struct Prepared {
    var: String,
    def: SourceDef,
    /// The admin URL, for a PostgreSQL source.
    admin: Option<Zeroizing<Vec<u8>>>,
    credential: String,
}

/// What a lease gets from its sources.
pub(crate) struct Fresh {
    /// Injected as `(variable, value)`.
    pub values: Vec<(String, Zeroizing<Vec<u8>>)>,
    /// Masked too, never injected alone (a role's password inside its URL).
    pub also_mask: Vec<(String, Zeroizing<Vec<u8>>)>,
}

fn source_error(reference: &str, e: impl std::fmt::Display) -> WireError {
    WireError::new(
        "source_failed",
        format!("dynamic source {reference} failed: {e}; nothing was run"),
    )
}

/// Checks a `TYPE:NAME` reference against the configured sources.
pub fn check_reference(broker: &Arc<Broker>, reference: Option<&str>) -> Result<String, WireError> {
    let r = reference.ok_or_else(|| {
        WireError::new(
            "bad_request",
            "a dynamic variable needs its source: postgres:NAME or command:NAME",
        )
    })?;
    let (kind, name) =
        defs::parse_reference(r).map_err(|e| WireError::new("bad_request", e.to_string()))?;
    let def = broker.with_vault(|v| v.source(&name))?;
    match def {
        Some(d) if d.spec.type_name() == kind => Ok(d.reference()),
        Some(d) => Err(WireError::new(
            "bad_request",
            format!(
                "source '{}' is a {} source, not {kind}",
                d.name,
                d.spec.type_name()
            ),
        )),
        None => Err(WireError::new(
            "not_found",
            format!(
                "no source '{}': add it with `custody source add {kind} {}`",
                name.as_str(),
                name.as_str()
            ),
        )),
    }
}

fn admin_secret(vault: &Vault, admin_from: &str) -> Result<Zeroizing<Vec<u8>>, WireError> {
    let (e, v) = defs::parse_admin_from(admin_from)
        .map_err(|x| WireError::new("bad_request", x.to_string()))?;
    let (_, value) = vault.reveal(&e, &v).map_err(vault_error)?;
    Ok(Zeroizing::new(value.expose_secret().to_vec()))
}

fn load(vault: &Vault, reference: &str) -> Result<SourceDef, WireError> {
    let (kind, name) = defs::parse_reference(reference)
        .map_err(|e| WireError::new("bad_request", e.to_string()))?;
    match vault.source(&name).map_err(vault_error)? {
        Some(d) if d.spec.type_name() == kind => Ok(d),
        _ => Err(WireError::new(
            "not_found",
            format!(
                "source {reference} is not configured (any more): ask the user to add it or to re-declare the variable"
            ),
        )),
    }
}

/// Reads what minting needs for each `(variable, reference)` and names the
/// credentials. Runs under the state lock (the vault is there).
pub(crate) fn prepare(
    vault: &Vault,
    wanted: &[(String, String)],
) -> Result<Vec<Prepared>, WireError> {
    let tag = vault.tag();
    let mut out = Vec::new();
    for (var, reference) in wanted {
        let def = load(vault, reference)?;
        let random: [u8; 8] = crypto::random_array()
            .map_err(|_| WireError::new("internal", "no randomness for a credential id"))?;
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
            expires: custody_core::audit::format_rfc3339(expiry(p, deadline)),
            sealed_token: None,
        })
        .collect()
}

fn expiry(p: &Prepared, deadline: SystemTime) -> SystemTime {
    match p.def.spec {
        SourceSpec::Postgres(_) => deadline + VALID_UNTIL_SLACK,
        SourceSpec::Command(_) => deadline,
    }
}

/// Mints every prepared credential for `lease_id`. On failure the ones
/// already minted are revoked by the caller through [`settle`]; a command
/// that printed nothing minted nothing and leaves nothing to revoke. `mask`
/// names the values a failed command's stderr must not show.
pub(crate) async fn mint_all(
    broker: &Arc<Broker>,
    lease_id: &str,
    prepared: Vec<Prepared>,
    deadline: SystemTime,
    ttl: Duration,
    mask: &[(&str, &[u8])],
) -> Result<Fresh, WireError> {
    let mut fresh = Fresh {
        values: Vec::new(),
        also_mask: Vec::new(),
    };
    for p in prepared {
        let reference = p.def.reference();
        let expires = custody_core::audit::format_rfc3339(expiry(&p, deadline));
        match &p.def.spec {
            SourceSpec::Postgres(pg) => {
                let admin = p.admin.as_ref().map_or(&[][..], |a| a.as_slice());
                let cfg = postgres::admin_config(admin).map_err(|e| source_error(&reference, e))?;
                let password = custody_core::generate::random_value(
                    32,
                    custody_core::generate::Alphabet::Alnum,
                )
                .map_err(|e| source_error(&reference, e))?;
                postgres::create(&cfg, pg, &p.credential, &password, &expires)
                    .await
                    .map_err(|e| source_error(&reference, e))?;
                fresh.values.push((
                    p.var.clone(),
                    postgres::lease_url(&cfg, &p.credential, &password),
                ));
                fresh.also_mask.push((p.var.clone(), password));
            }
            SourceSpec::Command(c) => {
                let ttl_secs = ttl.as_secs().max(1);
                let token = match command::mint(c, lease_id, ttl_secs, &expires, mask).await {
                    Ok(t) => t,
                    Err(command::MintFailure { failure, printed }) => {
                        match printed {
                            // It printed something: a token may exist; keep
                            // it sealed so the revocation can end it.
                            Some(t) => {
                                if let Ok(Ok(sealed)) = broker.with_vault(|v| {
                                    Ok(seal_token(
                                        &v.subkey(Subkey::LeaseToken),
                                        lease_id,
                                        &p.credential,
                                        &t,
                                    ))
                                }) {
                                    broker.credential_sealed(lease_id, &p.credential, sealed);
                                }
                            }
                            // Nothing printed, nothing minted: nothing to revoke.
                            None => broker.credential_never_minted(lease_id, &p.credential),
                        }
                        return Err(source_error(&reference, failure));
                    }
                };
                let sealed = broker.with_vault(|v| {
                    Ok(seal_token(
                        &v.subkey(Subkey::LeaseToken),
                        lease_id,
                        &p.credential,
                        &token,
                    ))
                })??;
                broker.credential_sealed(lease_id, &p.credential, sealed);
                fresh.values.push((p.var.clone(), token));
            }
        }
        broker.credential_minted(lease_id, &reference, &p.credential, &expires);
    }
    Ok(fresh)
}

fn token_aad(lease_id: &str, credential: &str) -> Vec<u8> {
    format!("custody/v1/lease-token\0{lease_id}\0{credential}").into_bytes()
}

fn seal_token(
    key: &Key,
    lease_id: &str,
    credential: &str,
    token: &[u8],
) -> Result<String, WireError> {
    crypto::seal(key, &token_aad(lease_id, credential), token)
        .map(hex::encode)
        .map_err(|_| WireError::new("internal", "cannot seal the token"))
}

fn open_token(key: &Key, lease_id: &str, m: &Minted) -> Result<Zeroizing<Vec<u8>>, String> {
    let sealed = m
        .sealed_token
        .as_deref()
        .ok_or("the token was never recorded (the broker stopped while minting)")?;
    let bytes = hex::decode(sealed).map_err(|_| "the recorded token is damaged".to_owned())?;
    crypto::open(key, &token_aad(lease_id, &m.credential), &bytes)
        .map_err(|_| "the recorded token does not authenticate".to_owned())
}

/// Revokes one credential. Reads the source (and its admin URL) from the
/// vault each time, so a retry sees the current configuration.
async fn revoke_one(broker: &Arc<Broker>, lease_id: &str, m: &Minted) -> Result<(), String> {
    let (def, admin, token_key) = {
        let st = broker.state();
        let vault = st
            .vault
            .as_ref()
            .ok_or("the vault is locked (revocation resumes at unlock)")?;
        let def = load(vault, &m.reference).map_err(|e| e.message)?;
        let admin = match &def.spec {
            SourceSpec::Postgres(p) => {
                Some(admin_secret(vault, &p.admin_from).map_err(|e| e.message)?)
            }
            SourceSpec::Command(_) => None,
        };
        (def, admin, vault.subkey(Subkey::LeaseToken))
    };
    match &def.spec {
        SourceSpec::Postgres(pg) => {
            let cfg = postgres::admin_config(admin.as_ref().map_or(&[][..], |a| a.as_slice()))
                .map_err(|e| e.to_string())?;
            postgres::revoke(&cfg, pg, &m.credential)
                .await
                .map_err(|e| e.to_string())
        }
        SourceSpec::Command(c) => {
            let token = open_token(&token_key, lease_id, m)?;
            command::revoke(c, &token).await.map_err(|e| e.to_string())
        }
    }
}

/// Revokes what is left of `lease_id`'s credentials once. Returns the
/// failure of the first one that did not go.
async fn revoke_lease(broker: &Arc<Broker>, lease_id: &str, attempts: u32) -> Result<(), String> {
    let todo = broker.credentials_of(lease_id);
    for m in todo {
        revoke_one(broker, lease_id, &m).await?;
        broker.credential_revoked(lease_id, &m, attempts);
    }
    Ok(())
}

/// Ends `lease_id`'s credentials: a few quick attempts, then (if they all
/// failed) the lease is marked irrevocable and retried in the background
/// with exponential backoff. Returns what to tell the requester.
pub(crate) async fn settle(broker: &Arc<Broker>, lease_id: &str) -> Vec<Value> {
    let before = broker.credentials_of(lease_id);
    if before.is_empty() && !broker.has_dynamic(lease_id) {
        return Vec::new();
    }
    broker.dynamic_ending(lease_id);
    let mut delay = Duration::from_millis(100);
    let mut last = String::new();
    for attempt in 1..=FIRST_ATTEMPTS {
        match revoke_lease(broker, lease_id, attempt).await {
            Ok(()) => {
                broker.dynamic_done(lease_id);
                return before
                    .iter()
                    .map(|m| json!({"source": m.reference, "credential": m.credential, "state": "revoked"}))
                    .collect();
            }
            Err(e) => last = e,
        }
        if attempt < FIRST_ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay *= 3;
        }
    }
    broker.credential_irrevocable(lease_id, &last, FIRST_ATTEMPTS);
    tokio::spawn(retry(Arc::clone(broker), lease_id.to_owned()));
    broker
        .credentials_of(lease_id)
        .iter()
        .map(|m| {
            json!({"source": m.reference, "credential": m.credential,
                        "state": "irrevocable", "reason": last})
        })
        .collect()
}

/// Background retries with exponential backoff (capped by the broker's
/// `revoke_retry_max`) until the credentials are revoked or the vault is
/// locked (then the lease record waits for the next unlock).
async fn retry(broker: Arc<Broker>, lease_id: String) {
    let mut delay = Duration::from_secs(1);
    let mut attempts = FIRST_ATTEMPTS;
    loop {
        tokio::time::sleep(delay).await;
        if broker.state().vault.is_none() || !broker.has_dynamic(&lease_id) {
            return;
        }
        attempts += 1;
        match revoke_lease(&broker, &lease_id, attempts).await {
            Ok(()) => {
                broker.dynamic_done(&lease_id);
                return;
            }
            Err(e) => broker.credential_irrevocable(&lease_id, &e, attempts),
        }
        delay = (delay * 2).min(broker.cfg.revoke_retry_max);
    }
}

/// At unlock: ends what a previous broker left and revokes the credentials
/// of its leases (from their sealed records in the vault), then drops this
/// vault's roles that no lease owns, at every PostgreSQL source. Audited.
pub(crate) async fn recover(broker: Arc<Broker>) {
    for rec in broker.recover_records() {
        if broker.adopt(rec.clone()) {
            let b = Arc::clone(&broker);
            tokio::spawn(async move {
                settle(&b, &rec.id).await;
            });
        }
    }
    let sources = {
        let st = broker.state();
        let Some(vault) = st.vault.as_ref() else {
            return;
        };
        let tag = vault.tag();
        let mut out = Vec::new();
        for def in vault.sources().unwrap_or_default() {
            if let SourceSpec::Postgres(p) = &def.spec
                && let Ok(admin) = admin_secret(vault, &p.admin_from)
            {
                out.push((def.clone(), p.clone(), admin, defs::role_prefix(&tag)));
            }
        }
        out
    };
    for (def, pg, admin, prefix) in sources {
        let Ok(cfg) = postgres::admin_config(&admin) else {
            continue;
        };
        let Ok(roles) = postgres::roles_with_prefix(&cfg, &prefix).await else {
            continue;
        };
        for role in roles {
            if broker.owns_credential(&role) {
                continue;
            }
            if postgres::revoke(&cfg, &pg, &role).await.is_ok() {
                broker.credential_reaped(&def.reference(), &role);
            }
        }
    }
}

/// Handles `source add` / `source ls` / `source rm` (humans only; checked by
/// the caller).
pub(crate) fn define(broker: &Arc<Broker>, def: SourceDef, by: &str) -> Result<Value, WireError> {
    def.validate()
        .map_err(|e| WireError::new("bad_request", e.to_string()))?;
    if let SourceSpec::Postgres(p) = &def.spec {
        // The admin URL must exist and parse now, not at the first lease.
        let admin = {
            let st = broker.state();
            let vault = st.vault.as_ref().ok_or_else(|| {
                WireError::new("locked", "the vault is locked: run `custody unlock`")
            })?;
            admin_secret(vault, &p.admin_from)?
        };
        postgres::admin_config(&admin).map_err(|e| WireError::new("bad_request", e.to_string()))?;
    }
    let reference = def.reference();
    let created = broker.change_vault(
        custody_core::audit::AuditEvent::VaultChange {
            action: custody_core::audit::VaultAction::PutSource,
            environment: reference.clone(),
            variable: None,
            by: Some(by.to_owned()),
        },
        |v| v.put_source(&def),
    )?;
    Ok(json!({"source": reference, "created": created}))
}

/// Every source (no secrets: the admin URL is named, not shown).
pub(crate) fn list(broker: &Arc<Broker>) -> Result<Value, WireError> {
    let defs = broker.with_vault(|v| v.sources())?;
    Ok(serde_json::to_value(defs).unwrap_or_default())
}

/// Removes a source.
pub(crate) fn remove(broker: &Arc<Broker>, name: &str, by: &str) -> Result<Value, WireError> {
    let n = EnvName::new(name).map_err(|e| WireError::new("bad_request", e.to_string()))?;
    let removed = broker.change_vault(
        AuditEvent::VaultChange {
            action: custody_core::audit::VaultAction::RemoveSource,
            environment: name.to_owned(),
            variable: None,
            by: Some(by.to_owned()),
        },
        |v| v.remove_source(&n),
    )?;
    if !removed {
        return Err(WireError::new("not_found", format!("no source '{name}'")));
    }
    Ok(json!({"removed": name}))
}
