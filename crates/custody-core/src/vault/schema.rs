//! The vault's SQLite schema and its migrations.
//!
//! `PRAGMA application_id` marks the file as custody's; `PRAGMA user_version`
//! is the format version. Each migration runs in the transaction that bumps
//! the version, so a crash leaves the old or the new format, never a mix.

use rusqlite::{Connection, Transaction};

/// `PRAGMA application_id` of a custody vault ("CSTY").
pub const APPLICATION_ID: i64 = 0x4353_5459;

/// The newest format this build writes and reads.
pub const CURRENT_VERSION: i64 = 4;

/// Migrations, in order: `MIGRATIONS[i]` takes the format from `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 → 1: the first format.
    "
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) STRICT;

    -- Names never appear in plaintext: `name_index` is an HMAC of the name,
    -- `sealed_label` an AEAD record of name, description and kind.
    CREATE TABLE environments (
        id           BLOB PRIMARY KEY,
        name_index   BLOB NOT NULL UNIQUE,
        sealed_label BLOB NOT NULL,
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL
    ) STRICT;

    -- Clustered by (environment, name index): listing an environment is one
    -- contiguous range scan, not a lookup per variable.
    CREATE TABLE variables (
        env_id       BLOB NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
        name_index   BLOB NOT NULL,
        id           BLOB NOT NULL UNIQUE,
        sealed_label BLOB NOT NULL,
        sealed_value BLOB,
        version      INTEGER NOT NULL,
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL,
        PRIMARY KEY (env_id, name_index)
    ) STRICT, WITHOUT ROWID;
    ",
    // 1 → 2: dynamic sources (sealed definitions, found by keyed hash).
    "
    CREATE TABLE sources (
        name_index BLOB PRIMARY KEY,
        sealed_def BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) STRICT;
    ",
    // 2 → 3: the approval PIN's verifier is sealed under a vault subkey
    // (`meta.sealed_pin` replaces the plaintext Argon2id hash `meta.pin_hash`).
    // Sealing needs the vault key, so it happens at the first open with the
    // key (`Vault::seal_legacy_pin`); this step only marks the format, so an
    // older build refuses the file instead of finding no PIN.
    "SELECT 1;",
    // 3 → 4: live leases are recorded in the vault too (sealed, bound to the
    // lease id), so deleting or forging the files beside it hides nothing;
    // the policy is sealed in `meta.sealed_policy` (no table needed).
    "
    CREATE TABLE IF NOT EXISTS leases (
        id            TEXT PRIMARY KEY,
        sealed_record BLOB NOT NULL
    ) STRICT;
    ",
];

/// Brings a vault at format `from` up to [`CURRENT_VERSION`].
pub fn migrate(conn: &mut Connection, from: i64) -> rusqlite::Result<()> {
    for version in from..CURRENT_VERSION {
        let Some(sql) = usize::try_from(version)
            .ok()
            .and_then(|i| MIGRATIONS.get(i))
        else {
            break;
        };
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        set_version(&tx, version + 1)?;
        tx.commit()?;
    }
    Ok(())
}

fn set_version(tx: &Transaction<'_>, version: i64) -> rusqlite::Result<()> {
    // PRAGMA takes no bound parameters; `version` is our own integer.
    tx.execute_batch(&format!("PRAGMA user_version = {version};"))
}
