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
mod records;
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
use secrecy::SecretSlice;
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
pub type SecretValue = SecretSlice<u8>;

/// Largest value accepted, in bytes. Values travel to the broker in 1 MiB
/// protocol frames (base64 in JSON), and real secrets (tokens, keys,
/// kubeconfigs, service-account JSON) are far smaller.
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
    /// Creates a new vault at `path` (which must not exist), in a directory
    /// made 0700, with the file 0600.
    pub fn create(path: &Path, passphrase: &[u8], pin: &[u8], params: KdfParams) -> Result<Vault> {
        if pin.len() < MIN_PIN_LEN {
            return Err(VaultError::PinTooShort { min: MIN_PIN_LEN });
        }
        params.validate()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        // Create the file ourselves, exclusively and 0600, so there is no
        // window where it exists with looser permissions and so an existing
        // vault is never overwritten. SQLite treats an empty file as new and
        // gives its -wal/-shm files the same permissions.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => VaultError::AlreadyExists {
                    path: path.to_owned(),
                },
                _ => VaultError::Io {
                    path: path.to_owned(),
                    source,
                },
            })?;
        match Self::initialize(path, passphrase, pin, params) {
            Ok(v) => Ok(v),
            Err(e) => {
                // Nothing of value is in a half-made vault; remove it so a
                // retry is possible.
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let _ = fs::remove_file(format!("{}{suffix}", path.display()));
                }
                Err(e)
            }
        }
    }

    fn initialize(path: &Path, passphrase: &[u8], pin: &[u8], params: KdfParams) -> Result<Vault> {
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| storage(e, path))?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA application_id = {};",
            schema::APPLICATION_ID
        ))
        .map_err(|e| storage(e, path))?;
        schema::migrate(&mut conn, 0).map_err(|e| storage(e, path))?;

        let vault_id: Id = crypto::random_array()?;
        let vault_key = Key::random()?;
        let sealed_pin = seal_pin(&vault_key, &vault_id, &crypto::hash_pin(pin, &params)?)?;
        let (salt, wrapped) = wrap_vault_key(&vault_key, &vault_id, passphrase, &params)?;
        let params_json =
            serde_json::to_vec(&params).map_err(|e| VaultError::Storage(e.to_string()))?;
        let tx = conn.transaction().map_err(|e| storage(e, path))?;
        {
            let mut put = tx
                .prepare("INSERT INTO meta (key, value) VALUES (?1, ?2)")
                .map_err(|e| storage(e, path))?;
            let created = now().to_be_bytes();
            let check = key_check(&vault_key, &vault_id);
            for (k, v) in [
                ("vault_id", &vault_id[..]),
                ("kdf_params", &params_json[..]),
                ("kdf_salt", &salt[..]),
                ("wrapped_key", &wrapped[..]),
                ("sealed_pin", &sealed_pin[..]),
                ("key_check", &check[..]),
                ("created_at", &created[..]),
            ] {
                put.execute(params![k, v]).map_err(|e| storage(e, path))?;
            }
        }
        tx.commit().map_err(|e| storage(e, path))?;
        Self::finish_open(conn, path, vault_id, vault_key)
    }

    /// Opens the vault at `path` with the passphrase (runs the KDF).
    pub fn unlock(path: &Path, passphrase: &[u8]) -> Result<Vault> {
        let conn = open_existing(path)?;
        let vault_id = to_id(meta(&conn, path, "vault_id")?)?;
        let params: KdfParams = serde_json::from_slice(&meta(&conn, path, "kdf_params")?)
            .map_err(|_| corrupt(path, "KDF parameters unreadable"))?;
        let salt: [u8; SALT_LEN] = meta(&conn, path, "kdf_salt")?
            .as_slice()
            .try_into()
            .map_err(|_| corrupt(path, "KDF salt malformed"))?;
        let wrapped = meta(&conn, path, "wrapped_key")?;
        let kek = crypto::derive_kek(passphrase, &salt, &params)?;
        let (vault_key, legacy) = unwrap_vault_key(&kek, &vault_id, &wrapped)?;
        let mut vault = Self::finish_open(conn, path, vault_id, vault_key)?;
        if legacy {
            vault.seal_legacy_pin(&kek)?;
        }
        Ok(vault)
    }

    /// Opens the vault at `path` with an already unwrapped vault key (the
    /// broker, which holds the key after `unlock`). A wrong key is reported
    /// as [`VaultError::WrongPassphrase`].
    pub fn open_with_key(path: &Path, vault_key: Key) -> Result<Vault> {
        let conn = open_existing(path)?;
        let vault_id = to_id(meta(&conn, path, "vault_id")?)?;
        let vault = Self::finish_open(conn, path, vault_id, vault_key)?;
        vault.check_key()?;
        Ok(vault)
    }

    fn finish_open(
        mut conn: Connection,
        path: &Path,
        vault_id: Id,
        vault_key: Key,
    ) -> Result<Vault> {
        // Every row this connection changes in the tables a listing is made
        // of counts (other connections' commits move `data_version`).
        let names_changed = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&names_changed);
        conn.update_hook(Some(move |_, _: &str, table: &str, _| {
            if table == "variables" || table == "environments" {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }))
        .map_err(|e| storage(e, path))?;
        let counter = Arc::clone(&names_changed);
        conn.rollback_hook(Some(move || {
            counter.fetch_add(1, Ordering::Relaxed);
        }))
        .map_err(|e| storage(e, path))?;
        conn.execute_batch(
            "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
        )
        .map_err(|e| storage(e, path))?;
        let seal_key = crypto::derive_subkey(&vault_key, &vault_id, Subkey::Seal);
        let index_key = crypto::derive_subkey(&vault_key, &vault_id, Subkey::NameIndex);
        Ok(Vault {
            conn,
            path: path.to_owned(),
            vault_id,
            vault_key,
            seal_key,
            index_key,
            listings: RefCell::default(),
            names_changed,
        })
    }

    /// Format 3, for a vault whose key was wrapped the legacy way (only an
    /// older build, with the passphrase, wrote it so): seal its plaintext PIN
    /// verifier (`pin_hash`), re-wrap the key under the format-3 label in the
    /// same transaction, and erase the plaintext from the file and its log.
    /// A `pin_hash` row in a format-3 vault is never read: someone planted it.
    fn seal_legacy_pin(&mut self, kek: &Key) -> Result<()> {
        let legacy: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'pin_hash'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| storage(e, &self.path))?;
        let Some(phc) = legacy else {
            return Err(corrupt(
                &self.path,
                "an older vault without its PIN verifier",
            ));
        };
        let phc = String::from_utf8(phc).map_err(|_| corrupt(&self.path, "PIN hash"))?;
        let sealed = seal_pin(&self.vault_key, &self.vault_id, &phc)?;
        let rewrapped = crypto::seal(
            kek,
            &aad(WRAP_LABEL, &[&self.vault_id]),
            self.vault_key.expose(),
        )?;
        let path = self.path.clone();
        // Deleted content is overwritten, and the log is emptied after, so
        // the plaintext verifier is gone from every file.
        self.conn
            .execute_batch("PRAGMA secure_delete = ON;")
            .map_err(|e| storage(e, &path))?;
        let tx = self.conn.transaction().map_err(|e| storage(e, &path))?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('sealed_pin', ?1)",
            params![sealed],
        )
        .map_err(|e| storage(e, &path))?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'wrapped_key'",
            params![rewrapped],
        )
        .map_err(|e| storage(e, &path))?;
        tx.execute("DELETE FROM meta WHERE key = 'pin_hash'", [])
            .map_err(|e| storage(e, &path))?;
        tx.commit().map_err(|e| storage(e, &path))?;
        self.conn
            .execute_batch(
                "PRAGMA wal_checkpoint(TRUNCATE); VACUUM; PRAGMA wal_checkpoint(TRUNCATE);",
            )
            .map_err(|e| storage(e, &path))
    }

    /// The PIN's Argon2id verifier (PHC string), unsealed.
    fn pin_phc(&self) -> Result<Zeroizing<String>> {
        let sealed = meta(&self.conn, &self.path, "sealed_pin")?;
        let key = crypto::derive_subkey(&self.vault_key, &self.vault_id, Subkey::PinVerifier);
        let phc = crypto::open(&key, &pin_aad(&self.vault_id), &sealed)
            .map_err(|_| corrupt(&self.path, "the sealed PIN verifier does not open"))?;
        String::from_utf8(phc.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| corrupt(&self.path, "PIN verifier"))
    }

    /// Checks the held key against the stored key-check value (a keyed
    /// hash, so it reveals nothing about the key).
    fn check_key(&self) -> Result<()> {
        let stored = meta(&self.conn, &self.path, "key_check")?;
        if crypto::ct_eq(&stored, &key_check(&self.vault_key, &self.vault_id)) {
            Ok(())
        } else {
            Err(VaultError::WrongPassphrase)
        }
    }

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

    /// Re-wraps the vault key under a new passphrase. One transaction (a
    /// savepoint, so it nests in an audited change): after a crash either
    /// the old or the new passphrase works, never neither.
    pub fn change_passphrase(&mut self, new_passphrase: &[u8], params: KdfParams) -> Result<()> {
        params.validate()?;
        let (salt, wrapped) =
            wrap_vault_key(&self.vault_key, &self.vault_id, new_passphrase, &params)?;
        let params_json =
            serde_json::to_vec(&params).map_err(|e| VaultError::Storage(e.to_string()))?;
        let path = self.path.clone();
        let tx = self.conn.savepoint().map_err(|e| storage(e, &path))?;
        for (k, v) in [
            ("kdf_params", &params_json[..]),
            ("kdf_salt", &salt[..]),
            ("wrapped_key", &wrapped[..]),
        ] {
            tx.execute("UPDATE meta SET value = ?2 WHERE key = ?1", params![k, v])
                .map_err(|e| storage(e, &path))?;
        }
        tx.commit().map_err(|e| storage(e, &path))
    }

    /// The KDF parameters the passphrase is currently wrapped with.
    pub fn kdf_params(&self) -> Result<KdfParams> {
        serde_json::from_slice(&meta(&self.conn, &self.path, "kdf_params")?)
            .map_err(|_| corrupt(&self.path, "KDF parameters unreadable"))
    }

    /// Checks an approval PIN (Argon2id, constant-time). Rate limiting and
    /// lockout are the broker's job.
    pub fn verify_pin(&self, pin: &[u8]) -> Result<bool> {
        Ok(crypto::verify_pin(pin, &self.pin_phc()?)?)
    }

    /// A copy of the PIN verifier that can be checked on another thread
    /// while the vault stays usable (the check takes as long as the KDF).
    pub fn pin_checker(&self) -> Result<PinChecker> {
        Ok(PinChecker(self.pin_phc()?))
    }

    /// Replaces the approval PIN.
    pub fn change_pin(&mut self, new_pin: &[u8]) -> Result<()> {
        if new_pin.len() < MIN_PIN_LEN {
            return Err(VaultError::PinTooShort { min: MIN_PIN_LEN });
        }
        let phc = crypto::hash_pin(new_pin, &self.kdf_params()?)?;
        let sealed = seal_pin(&self.vault_key, &self.vault_id, &phc)?;
        self.conn
            .execute(
                "UPDATE meta SET value = ?1 WHERE key = 'sealed_pin'",
                params![sealed],
            )
            .map_err(|e| storage(e, &self.path))?;
        Ok(())
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
        let path = &self.path;
        self.conn
            .execute_batch("PRAGMA synchronous = NORMAL;")
            .map_err(|e| storage(e, path))?;
        let res = self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('audit_head', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![sealed],
        );
        self.conn
            .execute_batch("PRAGMA synchronous = FULL;")
            .map_err(|e| storage(e, path))?;
        res.map_err(|e| storage(e, path))?;
        Ok(())
    }
}

/// Moves decrypted bytes into a secret box of exactly their length, so no
/// spare capacity with a copy is left behind; the source is zeroized.
fn secret_from(plain: Zeroizing<Vec<u8>>) -> SecretValue {
    let boxed: Box<[u8]> = plain.as_slice().into();
    SecretSlice::from(boxed)
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

fn key_check(vault_key: &Key, vault_id: &Id) -> [u8; 32] {
    let k = crypto::derive_subkey(vault_key, vault_id, Subkey::KeyCheck);
    crypto::keyed_hash(&k, &[b"key-check"])
}

/// The wrapped key's label since format 3 (the PIN verifier is sealed).
/// Only a holder of the passphrase can wrap under it, so a vault file cannot
/// be made to look older (and its PIN replaced by a planted plaintext hash)
/// without the passphrase.
const WRAP_LABEL: &[u8] = b"vault-key v3";
/// The label of formats 1 and 2 (plaintext PIN verifier).
const LEGACY_WRAP_LABEL: &[u8] = b"vault-key";

fn wrap_vault_key(
    vault_key: &Key,
    vault_id: &Id,
    passphrase: &[u8],
    params: &KdfParams,
) -> Result<([u8; SALT_LEN], Vec<u8>)> {
    let salt: [u8; SALT_LEN] = crypto::random_array()?;
    let kek = crypto::derive_kek(passphrase, &salt, params)?;
    let wrapped = crypto::seal(&kek, &aad(WRAP_LABEL, &[vault_id]), vault_key.expose())?;
    Ok((salt, wrapped))
}

/// Unwraps the vault key; the flag says it was wrapped the legacy way (a
/// vault from before format 3, whose plaintext PIN verifier may be sealed).
fn unwrap_vault_key(kek: &Key, vault_id: &Id, wrapped: &[u8]) -> Result<(Key, bool)> {
    let (plain, legacy) = match crypto::open(kek, &aad(WRAP_LABEL, &[vault_id]), wrapped) {
        Ok(p) => (p, false),
        Err(crypto::CryptoError::Authentication) => (
            crypto::open(kek, &aad(LEGACY_WRAP_LABEL, &[vault_id]), wrapped).map_err(
                |e| match e {
                    crypto::CryptoError::Authentication => VaultError::WrongPassphrase,
                    other => VaultError::Crypto(other),
                },
            )?,
            true,
        ),
        Err(other) => return Err(VaultError::Crypto(other)),
    };
    let bytes: Zeroizing<[u8; 32]> = Zeroizing::new(
        plain
            .as_slice()
            .try_into()
            .map_err(|_| VaultError::Storage("wrapped key has the wrong length".into()))?,
    );
    Ok((Key::from_bytes(*bytes), legacy))
}

fn create_private_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| VaultError::Io {
                path: dir.to_owned(),
                source,
            })?;
    }
    // Tighten a directory that already existed (e.g. made by hand).
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|source| VaultError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// Opens an existing vault file without ever creating or rewriting it, and
/// checks it is one of ours at a format this build reads.
/// Additional data binding a sealed PIN verifier to its vault.
fn pin_aad(vault_id: &[u8]) -> Vec<u8> {
    [vault_id, b"pin-verifier"].concat()
}

/// Seals the PIN verifier `phc` under the vault's PIN subkey.
fn seal_pin(vault_key: &Key, vault_id: &Id, phc: &str) -> Result<Vec<u8>> {
    let key = crypto::derive_subkey(vault_key, vault_id, Subkey::PinVerifier);
    Ok(crypto::seal(&key, &pin_aad(vault_id), phc.as_bytes())?)
}

fn open_existing(path: &Path) -> Result<Connection> {
    match fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(VaultError::NotFound {
                path: path.to_owned(),
            });
        }
        Err(source) => {
            return Err(VaultError::Io {
                path: path.to_owned(),
                source,
            });
        }
        Ok(m) if m.len() == 0 => return Err(corrupt(path, "the file is empty")),
        Ok(_) => {}
    }
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| storage(e, path))?;
    let app_id: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| storage(e, path))?;
    if app_id != schema::APPLICATION_ID {
        return Err(corrupt(path, "not a custody vault file"));
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| storage(e, path))?;
    if version > schema::CURRENT_VERSION {
        return Err(VaultError::NewerFormat {
            path: path.to_owned(),
            found: version,
            supported: schema::CURRENT_VERSION,
        });
    }
    if version < 1 {
        return Err(corrupt(path, "no schema"));
    }
    schema::migrate(&mut conn, version).map_err(|e| storage(e, path))?;
    Ok(conn)
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
