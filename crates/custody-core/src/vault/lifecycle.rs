//! A vault's life: created, unlocked with the passphrase (or opened with a
//! key the broker holds), its passphrase and PIN changed. The vault key is
//! wrapped under a key derived from the passphrase; the PIN verifier is
//! sealed under the vault key.

use super::*;

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

    pub(super) fn initialize(
        path: &Path,
        passphrase: &[u8],
        pin: &[u8],
        params: KdfParams,
    ) -> Result<Vault> {
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

    pub(super) fn finish_open(
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
    pub(super) fn seal_legacy_pin(&mut self, kek: &Key) -> Result<()> {
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
    pub(super) fn pin_phc(&self) -> Result<Zeroizing<String>> {
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
    pub(super) fn check_key(&self) -> Result<()> {
        let stored = meta(&self.conn, &self.path, "key_check")?;
        if crypto::ct_eq(&stored, &key_check(&self.vault_key, &self.vault_id)) {
            Ok(())
        } else {
            Err(VaultError::WrongPassphrase)
        }
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
}

pub(super) fn key_check(vault_key: &Key, vault_id: &Id) -> [u8; 32] {
    let k = crypto::derive_subkey(vault_key, vault_id, Subkey::KeyCheck);
    crypto::keyed_hash(&k, &[b"key-check"])
}

/// The wrapped key's label since format 3 (the PIN verifier is sealed).
/// Only a holder of the passphrase can wrap under it, so a vault file cannot
/// be made to look older (and its PIN replaced by a planted plaintext hash)
/// without the passphrase.
pub(super) const WRAP_LABEL: &[u8] = b"vault-key v3";
/// The label of formats 1 and 2 (plaintext PIN verifier).
pub(super) const LEGACY_WRAP_LABEL: &[u8] = b"vault-key";

pub(super) fn wrap_vault_key(
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
pub(super) fn unwrap_vault_key(kek: &Key, vault_id: &Id, wrapped: &[u8]) -> Result<(Key, bool)> {
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

pub(super) fn create_private_dir(dir: &Path) -> Result<()> {
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
pub(super) fn pin_aad(vault_id: &[u8]) -> Vec<u8> {
    [vault_id, b"pin-verifier"].concat()
}

/// Seals the PIN verifier `phc` under the vault's PIN subkey.
pub(super) fn seal_pin(vault_key: &Key, vault_id: &Id, phc: &str) -> Result<Vec<u8>> {
    let key = crypto::derive_subkey(vault_key, vault_id, Subkey::PinVerifier);
    Ok(crypto::seal(&key, &pin_aad(vault_id), phc.as_bytes())?)
}

pub(super) fn open_existing(path: &Path) -> Result<Connection> {
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
