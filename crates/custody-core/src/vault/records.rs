//! The sealed policy and the sealed lease records: what decides access and
//! what the broker must clean up, kept where only the vault key can write
//! them (an agent that can write files cannot grant itself anything, G9).

use rusqlite::{OptionalExtension, params};

use super::*;

/// Largest policy text stored (a request frame must hold it).
pub const MAX_POLICY_TEXT: usize = 256 * 1024;
/// Largest lease record stored.
pub const MAX_LEASE_RECORD: usize = 64 * 1024;

/// A stored lease record: its id and its bytes, or the error for one that
/// does not open.
pub type LeaseRecordEntry = (String, Result<Zeroizing<Vec<u8>>>);

impl Vault {
    /// The sealed policy text, if one was applied. A record that does not
    /// open under this vault's key is an error, never the default policy.
    pub fn policy_text(&self) -> Result<Option<Zeroizing<String>>> {
        let sealed: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'sealed_policy'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| storage(e, &self.path))?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let tampered = || VaultError::Tampered {
            what: "policy".into(),
        };
        let plain = crypto::open(&self.seal_key, &aad(b"policy", &[&self.vault_id]), &sealed)
            .map_err(|_| tampered())?;
        String::from_utf8(plain.to_vec())
            .map(|s| Some(Zeroizing::new(s)))
            .map_err(|_| tampered())
    }

    /// Seals `text` as the vault's policy (the caller has parsed it).
    pub fn set_policy_text(&self, text: &str) -> Result<()> {
        if text.len() > MAX_POLICY_TEXT {
            return Err(VaultError::ValueTooLarge {
                len: text.len(),
                max: MAX_POLICY_TEXT,
            });
        }
        let sealed = crypto::seal(
            &self.seal_key,
            &aad(b"policy", &[&self.vault_id]),
            text.as_bytes(),
        )?;
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES ('sealed_policy', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![sealed],
            )
            .map_err(|e| storage(e, &self.path))?;
        Ok(())
    }

    /// The sealed record of the agent processes the broker knows (the
    /// broker's own serialization), if any.
    pub fn agents_record(&self) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let sealed: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'sealed_agents'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| storage(e, &self.path))?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        crypto::open(&self.seal_key, &aad(b"agents", &[&self.vault_id]), &sealed)
            .map(Some)
            .map_err(|_| VaultError::Tampered {
                what: "agent record".into(),
            })
    }

    /// Seals the record of known agent processes.
    pub fn set_agents_record(&self, record: &[u8]) -> Result<()> {
        if record.len() > MAX_LEASE_RECORD {
            return Err(VaultError::ValueTooLarge {
                len: record.len(),
                max: MAX_LEASE_RECORD,
            });
        }
        let sealed = crypto::seal(&self.seal_key, &aad(b"agents", &[&self.vault_id]), record)?;
        self.write_normal_sync(
            "INSERT INTO meta (key, value) VALUES ('sealed_agents', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![sealed],
        )
    }

    /// Records a live lease (`record` is the broker's serialized record,
    /// sealed and bound to `id`).
    pub fn put_lease_record(&self, id: &str, record: &[u8]) -> Result<()> {
        if record.len() > MAX_LEASE_RECORD {
            return Err(VaultError::ValueTooLarge {
                len: record.len(),
                max: MAX_LEASE_RECORD,
            });
        }
        let sealed = crypto::seal(
            &self.seal_key,
            &aad(b"lease", &[&self.vault_id, id.as_bytes()]),
            record,
        )?;
        self.write_normal_sync(
            "INSERT INTO leases (id, sealed_record) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET sealed_record = excluded.sealed_record",
            params![id, sealed],
        )
    }

    /// Forgets a lease record.
    pub fn remove_lease_record(&self, id: &str) -> Result<()> {
        self.write_normal_sync("DELETE FROM leases WHERE id = ?1", params![id])
    }

    /// Runs `f`'s reads in one read transaction: they see one snapshot and
    /// take the journal's lock once (a run revealing a thousand values
    /// took it two thousand times, a third of its time).
    pub fn read_together<T>(&self, f: impl FnOnce(&Vault) -> T) -> T {
        let began = self.conn.execute_batch("SAVEPOINT custody_read").is_ok();
        let out = f(self);
        if began && self.conn.execute_batch("RELEASE custody_read").is_err() {
            // Never leave it open for later writes to nest in.
            let _ = self
                .conn
                .execute_batch("ROLLBACK TO custody_read; RELEASE custody_read");
        }
        out
    }

    /// Runs `f` as one unit: if it fails, nothing it changed stays (a
    /// savepoint, so the vault's own transactions nest inside it). Lets a
    /// caller make a change and its audit record together: the record is
    /// written only when the change succeeded, and a record that cannot be
    /// written undoes the change.
    pub fn atomically<T, E: From<VaultError>>(
        &mut self,
        f: impl FnOnce(&mut Vault) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let path = self.path.clone();
        self.conn
            .execute_batch("SAVEPOINT custody_change")
            .map_err(|e| E::from(storage(e, &path)))?;
        match f(self) {
            Ok(out) => {
                self.conn
                    .execute_batch("RELEASE custody_change")
                    .map_err(|e| E::from(storage(e, &path)))?;
                Ok(out)
            }
            Err(err) => {
                let _ = self
                    .conn
                    .execute_batch("ROLLBACK TO custody_change; RELEASE custody_change");
                // Rows went back without the update hook seeing it: a
                // listing made inside the change is stale.
                self.names_changed.fetch_add(1, Ordering::Relaxed);
                Err(err)
            }
        }
    }

    /// One statement with `synchronous = NORMAL`: durable across a crash of
    /// the broker process (what lease records must survive), without an
    /// fsync per lease start and end.
    /// The statements are kept prepared (two run per lease, two per
    /// audit record).
    pub(super) fn write_normal_sync(&self, sql: &str, args: impl rusqlite::Params) -> Result<()> {
        let path = &self.path;
        let pragma = |level: &str| {
            self.conn
                .prepare_cached(level)
                .and_then(|mut s| s.execute([]))
                .map_err(|e| storage(e, path))
        };
        pragma("PRAGMA synchronous = NORMAL")?;
        let res = self
            .conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(args));
        pragma("PRAGMA synchronous = FULL")?;
        res.map_err(|e| storage(e, path))?;
        Ok(())
    }

    /// Every lease record: `(id, Ok(record))`, or `(id, Err)` for one that
    /// does not open (moved from another lease, edited, or planted).
    pub fn lease_records(&self) -> Result<Vec<LeaseRecordEntry>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, sealed_record FROM leases ORDER BY id")
            .map_err(|e| storage(e, &self.path))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(|e| storage(e, &self.path))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, sealed) = row.map_err(|e| storage(e, &self.path))?;
            let opened = crypto::open(
                &self.seal_key,
                &aad(b"lease", &[&self.vault_id, id.as_bytes()]),
                &sealed,
            )
            .map_err(|_| VaultError::Tampered {
                what: "lease record".into(),
            });
            out.push((id, opened));
        }
        Ok(out)
    }
}
