//! The encrypted vault: one SQLite file (WAL mode) holding only ciphertext,
//! keyed hashes and timestamps.
//!
//! Key hierarchy: passphrase → Argon2id → KEK → unwraps the random vault key →
//! HKDF subkeys for sealing and for the name index. Every value is sealed with
//! associated data binding vault id, environment id, variable id and version,
//! so a ciphertext moved to another row fails to open. Names are stored only
//! sealed, and found through an HMAC index.

pub mod audited;
mod environments;
mod error;
mod label;
pub use label::MAX_BINDINGS;
mod lifecycle;
mod records;
mod reveal;
mod schema;
mod sources;
mod variables;

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{self, KdfParams, Key, SALT_LEN, SEALED_OVERHEAD, Subkey};
use crate::names::{EnvName, VarName};

pub use error::VaultError;
pub use label::{Label, LabelError};
pub use records::{LeaseRecordEntry, MAX_LEASE_RECORD, MAX_POLICY_TEXT};
pub use schema::CURRENT_VERSION as FORMAT_VERSION;

/// Shorthand for vault results.
pub type Result<T, E = VaultError> = std::result::Result<T, E>;

/// A secret value as handed out by the vault: zeroized on drop, `Debug`
/// prints `[REDACTED]`, no `Display` or `Serialize`.
pub type SecretValue = crate::secret::Value;

/// Largest value accepted, in bytes. Values travel to the broker as raw
/// secret frames (never through JSON) of at most 1 MiB, and real secrets
/// (tokens, keys, kubeconfigs, service-account JSON) are far smaller.
pub const MAX_VALUE_LEN: usize = 512 * 1024;
/// Largest description accepted, in bytes.
pub const MAX_DESCRIPTION_LEN: usize = 4096;
/// Shortest approval PIN accepted.
pub const MIN_PIN_LEN: usize = 6;

/// Listings at least this long open their labels on several threads.
const PARALLEL_LIST_MIN: usize = 512;

const ID_LEN: usize = 16;
type Id = [u8; ID_LEN];

/// How a variable reaches a child process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum VarKind {
    /// Injected as an environment variable.
    #[default]
    Env,
    /// Delivered as the path of an ephemeral 0600 file.
    File,
    /// Minted per lease by a dynamic source (a PostgreSQL role, a command's
    /// token) and revoked when the lease ends; the vault stores no value.
    /// The source is named in [`VariableInfo::source`] as `TYPE:NAME`.
    Dynamic,
}

impl VarKind {
    /// The kind's name as used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            VarKind::Env => "env",
            VarKind::File => "file",
            VarKind::Dynamic => "dynamic",
        }
    }
}

/// An environment as listed: names and metadata only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentInfo {
    /// Its name.
    pub name: EnvNameSer,
    /// What it is for (readable by the agent).
    pub description: String,
    /// Number of variables declared in it.
    pub variable_count: usize,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
    /// Last change, seconds since the Unix epoch.
    pub updated_at: i64,
}

/// An environment name in serializable form.
pub type EnvNameSer = String;

/// A variable as listed: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VariableInfo {
    /// Its name.
    pub name: String,
    /// What it is for (readable by the agent).
    pub description: String,
    /// How it is delivered.
    pub kind: VarKind,
    /// For a dynamic variable: its source, `TYPE:NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Whether a value is stored (always, for a dynamic variable: it is
    /// minted per lease).
    pub is_set: bool,
    /// Whether the value is too short for the masking engine to mask
    /// reliably (shorter than [`crate::mask::MIN_MASKABLE_LEN`] bytes).
    pub too_short_to_mask: bool,
    /// Incremented each time the value changes.
    pub version: u64,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
    /// Last change, seconds since the Unix epoch.
    pub updated_at: i64,
    /// Where a bound variable's value may go (empty: anywhere the child
    /// sends it, as an ordinary variable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<crate::bound::Rule>,
}

impl VariableInfo {
    /// The kind as shown to people and agents: `env`, `file`, or the
    /// dynamic source (`postgres:main`).
    pub fn kind_label(&self) -> String {
        match (&self.kind, &self.source) {
            (VarKind::Dynamic, Some(s)) => s.clone(),
            (k, _) => k.as_str().to_owned(),
        }
    }
}

/// What to change on a variable besides its value.
#[derive(Debug, Clone, Default)]
pub struct VariableUpdate {
    /// New description; `None` keeps the current one.
    pub description: Option<String>,
    /// New kind; `None` keeps the current one (`env` for a new variable).
    pub kind: Option<VarKind>,
    /// For [`VarKind::Dynamic`]: the source, as `TYPE:NAME` (e.g.
    /// `postgres:main`). Ignored for other kinds.
    pub source: Option<String>,
    /// Where the value may go (a bound variable: the child gets a
    /// placeholder, the lease's proxy puts the value in); `None` keeps the
    /// current ones, an empty list unbinds.
    pub bindings: Option<Vec<crate::bound::Rule>>,
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImportReport {
    /// Variables created.
    pub created: usize,
    /// Existing variables whose value was replaced.
    pub updated: usize,
}

/// Checks approval PINs against a copy of the PIN's Argon2id verifier
/// (unsealed: it exists only in memory, zeroized on drop).
pub struct PinChecker(Zeroizing<String>);

impl PinChecker {
    /// Whether `pin` is the approval PIN (constant-time compare inside).
    pub fn verify(&self, pin: &[u8]) -> bool {
        crypto::verify_pin(pin, &self.0).unwrap_or(false)
    }

    /// The verifier's public parameters (costs and salt), for a PIN
    /// exchange (`crate::pake`).
    pub fn public_params(&self) -> std::result::Result<String, crate::pake::PakeError> {
        crate::pake::public_params(&self.0)
    }

    /// The broker's side of a PIN exchange: answers the CLI's message.
    pub fn exchange(
        &self,
        cli_msg: &[u8],
    ) -> std::result::Result<(Vec<u8>, [u8; 32], crate::pake::PinSession), crate::pake::PakeError>
    {
        let hash = crate::pake::verifier_hash(&self.0)?;
        crate::pake::broker_exchange(&hash, cli_msg)
    }
}

impl fmt::Debug for PinChecker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PinChecker")
    }
}

/// An open, unlocked vault.
pub struct Vault {
    conn: Connection,
    path: PathBuf,
    vault_id: Id,
    vault_key: Key,
    seal_key: Key,
    index_key: Key,
    /// Opened variable listings (names and facts, never values), reused
    /// while the database is unchanged: see `Vault::variables`.
    listings: RefCell<Listings>,
    /// Rows of `variables` and `environments` this connection changed.
    names_changed: Arc<AtomicU64>,
}

/// Listings valid for one database state.
#[derive(Default)]
struct Listings {
    /// `(PRAGMA data_version, names_changed)` when they were made: the first
    /// moves when another connection commits, the second when this one
    /// changes a variable or an environment (not at every audit head or
    /// lease record, so a run does not throw the listings away).
    stamp: (i64, u64),
    by_env: HashMap<Id, std::sync::Arc<Listing>>,
}

/// One environment's variables, opened: what `variables` answers, and which
/// row holds each (its sealed label, bound to the row id, already
/// authenticated), so a reveal need not open labels or trust name indexes.
struct Listing {
    /// Sorted by name.
    infos: Vec<VariableInfo>,
    /// The row id of each.
    ids: Vec<Id>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("path", &self.path)
            .field("vault_id", &hex::encode(self.vault_id))
            .finish_non_exhaustive()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn aad(kind: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + parts.iter().map(|p| p.len()).sum::<usize>());
    out.extend_from_slice(b"custody/v1/");
    out.extend_from_slice(kind);
    for p in parts {
        out.push(0);
        out.extend_from_slice(p);
    }
    out
}

fn to_id(bytes: Vec<u8>) -> Result<Id> {
    Id::try_from(bytes.as_slice()).map_err(|_| VaultError::Storage("malformed row id".into()))
}

impl Vault {
    /// The file this vault lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The vault's random id, hex-encoded (not secret).
    pub fn id_hex(&self) -> String {
        hex::encode(self.vault_id)
    }

    /// The unwrapped vault key, for the broker to hold.
    pub fn vault_key(&self) -> &Key {
        &self.vault_key
    }

    /// A key derived from the vault key for `purpose` (e.g. the audit chain).
    pub fn subkey(&self, purpose: Subkey) -> Key {
        crypto::derive_subkey(&self.vault_key, &self.vault_id, purpose)
    }

    // ----- audit head -------------------------------------------------

    /// The audit chain's head as last stored (`None` before the first record).
    /// Sealed, so editing the vault file cannot move it to hide a truncation.
    pub fn audit_head(&self) -> Result<Option<crate::audit::AuditHead>> {
        let sealed: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'audit_head'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| storage(e, &self.path))?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let tampered = || VaultError::Tampered {
            what: "audit head".into(),
        };
        let plain = crypto::open(
            &self.seal_key,
            &aad(b"audit-head", &[&self.vault_id]),
            &sealed,
        )
        .map_err(|_| tampered())?;
        let (seq, hash) = plain.split_at_checked(8).ok_or_else(tampered)?;
        Ok(Some(crate::audit::AuditHead {
            seq: u64::from_be_bytes(seq.try_into().map_err(|_| tampered())?),
            hash: hash.try_into().map_err(|_| tampered())?,
        }))
    }

    /// Stores the audit chain's head. Called after every append, so this one
    /// write uses `synchronous = NORMAL` (durable across a process crash; the
    /// log itself is fsynced per record, and a head that lags the log is
    /// accepted by verification while one ahead of it is not).
    pub fn set_audit_head(&self, head: &crate::audit::AuditHead) -> Result<()> {
        let mut plain = Vec::with_capacity(40);
        plain.extend_from_slice(&head.seq.to_be_bytes());
        plain.extend_from_slice(&head.hash);
        let sealed = crypto::seal(
            &self.seal_key,
            &aad(b"audit-head", &[&self.vault_id]),
            &plain,
        )?;
        self.write_normal_sync(
            "INSERT INTO meta (key, value) VALUES ('audit_head', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![sealed],
        )
    }
}

/// Moves decrypted bytes into the named value type (no copy; the buffer's
/// spare capacity is zeroized with it).
fn secret_from(plain: Zeroizing<Vec<u8>>) -> SecretValue {
    SecretValue::new(plain)
}

fn check_description(d: &str) -> Result<()> {
    if let Some(c) = d
        .chars()
        .find(|c| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
    {
        return Err(VaultError::DescriptionControl { code: u32::from(c) });
    }
    if d.len() > MAX_DESCRIPTION_LEN {
        return Err(VaultError::DescriptionTooLarge {
            len: d.len(),
            max: MAX_DESCRIPTION_LEN,
        });
    }
    Ok(())
}

fn meta(conn: &Connection, path: &Path, key: &str) -> Result<Vec<u8>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
        r.get(0)
    })
    .optional()
    .map_err(|e| storage(e, path))?
    .ok_or_else(|| corrupt(path, "vault metadata missing"))
}

fn corrupt(path: &Path, detail: &str) -> VaultError {
    VaultError::Corrupt {
        path: path.to_owned(),
        detail: detail.to_owned(),
    }
}

/// Maps SQLite errors: damage becomes [`VaultError::Corrupt`], the rest
/// [`VaultError::Storage`]. Our SQL binds every value as a parameter, so
/// SQLite's messages carry no secrets.
fn storage(e: rusqlite::Error, path: &Path) -> VaultError {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => corrupt(path, "not an SQLite database"),
        Some(ErrorCode::DatabaseCorrupt) => corrupt(path, "SQLite reports the file is damaged"),
        _ => VaultError::Storage(e.to_string()),
    }
}

#[cfg(test)]
mod tests;
