//! Dynamic sources, stored sealed: a source's statements and commands decide
//! what runs with admin rights, so they live where only the vault key can
//! change them (not in a file an agent could edit).

use rusqlite::{OptionalExtension, params};

use super::*;
use crate::sources::SourceDef;

impl Vault {
    fn source_index(&self, name: &EnvName) -> [u8; 32] {
        crypto::keyed_hash(&self.index_key, &[b"source", name.as_str().as_bytes()])
    }

    fn seal_source(&self, index: &[u8; 32], def: &SourceDef) -> Result<Vec<u8>> {
        let plain = Zeroizing::new(
            serde_json::to_vec(def).map_err(|e| VaultError::Storage(e.to_string()))?,
        );
        Ok(crypto::seal(
            &self.seal_key,
            &aad(b"source", &[&self.vault_id, index]),
            &plain,
        )?)
    }

    fn open_source(&self, index: &[u8], sealed: &[u8]) -> Result<SourceDef> {
        let tampered = || VaultError::Tampered {
            what: "source definition".into(),
        };
        let plain = crypto::open(
            &self.seal_key,
            &aad(b"source", &[&self.vault_id, index]),
            sealed,
        )
        .map_err(|_| tampered())?;
        serde_json::from_slice(&plain).map_err(|_| tampered())
    }

    /// Adds or replaces a source. Returns whether it was new.
    pub fn put_source(&mut self, def: &SourceDef) -> Result<bool> {
        let name = EnvName::new(&def.name)?;
        let index = self.source_index(&name);
        let sealed = self.seal_source(&index, def)?;
        let t = now();
        let existed = self.source(&name)?.is_some();
        self.conn
            .execute(
                "INSERT INTO sources (name_index, sealed_def, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?3)
                 ON CONFLICT (name_index) DO UPDATE SET sealed_def = ?2, updated_at = ?3",
                params![&index[..], sealed, t],
            )
            .map_err(|e| storage(e, &self.path))?;
        Ok(!existed)
    }

    /// One source, if configured.
    pub fn source(&self, name: &EnvName) -> Result<Option<SourceDef>> {
        let index = self.source_index(name);
        let sealed: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT sealed_def FROM sources WHERE name_index = ?1")
            .and_then(|mut s| s.query_row(params![&index[..]], |r| r.get(0)).optional())
            .map_err(|e| storage(e, &self.path))?;
        sealed.map(|s| self.open_source(&index, &s)).transpose()
    }

    /// Every source, sorted by name.
    pub fn sources(&self) -> Result<Vec<SourceDef>> {
        let rows: Vec<(Vec<u8>, Vec<u8>)> = self
            .conn
            .prepare_cached("SELECT name_index, sealed_def FROM sources")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(|e| storage(e, &self.path))?;
        let mut out = rows
            .iter()
            .map(|(i, s)| self.open_source(i, s))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes a source. Returns whether it existed.
    pub fn remove_source(&mut self, name: &EnvName) -> Result<bool> {
        let n = self
            .conn
            .execute(
                "DELETE FROM sources WHERE name_index = ?1",
                params![&self.source_index(name)[..]],
            )
            .map_err(|e| storage(e, &self.path))?;
        Ok(n > 0)
    }

    /// A short, stable tag of this vault (8 hex digits of a keyed hash of its
    /// id): minted role names carry it, so one vault's reaper never touches
    /// another vault's roles on a shared server.
    pub fn tag(&self) -> String {
        let h = crypto::keyed_hash(&self.index_key, &[b"role-tag", &self.vault_id]);
        hex::encode(&h[..4])
    }
}
