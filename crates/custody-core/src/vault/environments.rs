//! Environments: create, describe, list, remove. Names and descriptions are
//! sealed labels found through a keyed-hash index.

use rusqlite::{OptionalExtension, params};

use super::*;

impl Vault {
    pub(super) fn env_index(&self, name: &EnvName) -> [u8; 32] {
        crypto::keyed_hash(&self.index_key, &[b"env", name.as_str().as_bytes()])
    }

    /// The id of environment `name`. The row is found by its keyed name
    /// index, then its sealed label must name `name`: an index column the
    /// same-user agent swapped between two rows is caught here, instead of
    /// `dev` quietly reading `prod`'s variables.
    pub(super) fn env_id(&self, name: &EnvName) -> Result<Id> {
        let row: Option<(Vec<u8>, Vec<u8>)> = self
            .conn
            .prepare_cached("SELECT id, sealed_label FROM environments WHERE name_index = ?1")
            .and_then(|mut s| {
                s.query_row(params![&self.env_index(name)[..]], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
            })
            .map_err(|e| storage(e, &self.path))?;
        let Some((id, sealed)) = row else {
            return Err(VaultError::NoSuchEnvironment(name.to_string()));
        };
        let id = to_id(id)?;
        let what = format!("name of environment {name}");
        let label = self.open_label(b"env-label", &[&id], &sealed, &what)?;
        if label.name != name.as_str() {
            return Err(VaultError::Tampered { what });
        }
        Ok(id)
    }

    pub(super) fn seal_label(&self, kind: &[u8], ids: &[&[u8]], label: &Label) -> Result<Vec<u8>> {
        let mut parts: Vec<&[u8]> = vec![&self.vault_id];
        parts.extend_from_slice(ids);
        Ok(crypto::seal(
            &self.seal_key,
            &aad(kind, &parts),
            &label.encode(),
        )?)
    }

    pub(super) fn open_label(
        &self,
        kind: &[u8],
        ids: &[&[u8]],
        sealed: &[u8],
        what: &str,
    ) -> Result<Label> {
        let mut parts: Vec<&[u8]> = vec![&self.vault_id];
        parts.extend_from_slice(ids);
        let plain = crypto::open(&self.seal_key, &aad(kind, &parts), sealed).map_err(|_| {
            VaultError::Tampered {
                what: what.to_owned(),
            }
        })?;
        Label::decode(&plain).map_err(|_| VaultError::Tampered {
            what: what.to_owned(),
        })
    }

    /// Creates an environment.
    pub fn create_environment(&mut self, name: &EnvName, description: &str) -> Result<()> {
        check_description(description)?;
        let id: Id = crypto::random_array()?;
        let sealed = self.seal_label(b"env-label", &[&id], &env_label(name, description))?;
        let t = now();
        let res = self.conn.execute(
            "INSERT INTO environments (id, name_index, sealed_label, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?4)",
            params![&id[..], &self.env_index(name)[..], sealed, t],
        );
        match res {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(VaultError::EnvironmentExists(name.to_string()))
            }
            Err(e) => Err(storage(e, &self.path)),
        }
    }

    /// Changes an environment's description.
    pub fn describe_environment(&mut self, name: &EnvName, description: &str) -> Result<()> {
        check_description(description)?;
        let id = self.env_id(name)?;
        let sealed = self.seal_label(b"env-label", &[&id], &env_label(name, description))?;
        self.conn
            .execute(
                "UPDATE environments SET sealed_label = ?2, updated_at = ?3 WHERE id = ?1",
                params![&id[..], sealed, now()],
            )
            .map_err(|e| storage(e, &self.path))?;
        Ok(())
    }

    /// Removes an environment and all its variables; returns how many
    /// variables went with it.
    pub fn remove_environment(&mut self, name: &EnvName) -> Result<usize> {
        let id = self.env_id(name)?;
        let path = self.path.clone();
        let tx = self.conn.savepoint().map_err(|e| storage(e, &path))?;
        let removed = tx
            .execute("DELETE FROM variables WHERE env_id = ?1", params![&id[..]])
            .map_err(|e| storage(e, &path))?;
        tx.execute("DELETE FROM environments WHERE id = ?1", params![&id[..]])
            .map_err(|e| storage(e, &path))?;
        tx.commit().map_err(|e| storage(e, &path))?;
        Ok(removed)
    }

    /// All environments, sorted by name.
    pub fn environments(&self) -> Result<Vec<EnvironmentInfo>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT e.id, e.sealed_label, e.created_at, e.updated_at,
                        (SELECT count(*) FROM variables v WHERE v.env_id = e.id)
                 FROM environments e",
            )
            .map_err(|e| storage(e, &self.path))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .map_err(|e| storage(e, &self.path))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, sealed, created_at, updated_at, count) =
                row.map_err(|e| storage(e, &self.path))?;
            let id = to_id(id)?;
            let label = self.open_label(b"env-label", &[&id], &sealed, "environment name")?;
            out.push(EnvironmentInfo {
                name: label.name,
                description: label.description,
                variable_count: usize::try_from(count).unwrap_or(0),
                created_at,
                updated_at,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One environment.
    pub fn environment(&self, name: &EnvName) -> Result<EnvironmentInfo> {
        let id = self.env_id(name)?;
        let (sealed, created_at, updated_at, count): (Vec<u8>, i64, i64, i64) = self
            .conn
            .query_row(
                "SELECT sealed_label, created_at, updated_at,
                        (SELECT count(*) FROM variables WHERE env_id = ?1)
                 FROM environments WHERE id = ?1",
                params![&id[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(|e| storage(e, &self.path))?;
        let label = self.open_label(b"env-label", &[&id], &sealed, "environment name")?;
        Ok(EnvironmentInfo {
            name: label.name,
            description: label.description,
            variable_count: usize::try_from(count).unwrap_or(0),
            created_at,
            updated_at,
        })
    }
}

/// An environment's sealed label: its name and description.
fn env_label(name: &EnvName, description: &str) -> Label {
    Label {
        name: name.to_string(),
        description: description.to_owned(),
        kind: VarKind::Env,
        source: None,
        bindings: Vec::new(),
    }
}
