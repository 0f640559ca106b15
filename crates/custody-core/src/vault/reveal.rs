//! Revealing values: one ([`Vault::reveal`], the row found by its keyed name
//! index and its sealed name checked) or a run's worth of one environment
//! ([`Vault::reveal_many`], rows found through the kept listing).

use rusqlite::{OptionalExtension, params};

use super::*;

/// A `variables` row as read by [`Vault::reveal`], before anything in it is
/// opened.
struct SealedRow {
    id: Vec<u8>,
    sealed_label: Vec<u8>,
    /// `None` while the variable is declared but not set.
    sealed_value: Option<Vec<u8>>,
    version: i64,
}

impl Vault {
    /// Decrypts one value. Only the broker (and the CLI path that opens
    /// the vault directly) calls this.
    pub fn reveal(&self, env: &EnvName, var: &VarName) -> Result<(VarKind, SecretValue)> {
        let env_id = self.env_id(env)?;
        let row: Option<SealedRow> = self
            .conn
            .prepare_cached(
                "SELECT id, sealed_label, sealed_value, version FROM variables
                 WHERE env_id = ?1 AND name_index = ?2",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![&env_id[..], &self.var_index(&env_id, var)[..]],
                    |r| {
                        Ok(SealedRow {
                            id: r.get(0)?,
                            sealed_label: r.get(1)?,
                            sealed_value: r.get(2)?,
                            version: r.get(3)?,
                        })
                    },
                )
                .optional()
            })
            .map_err(|e| storage(e, &self.path))?;
        self.open_row(env, &env_id, var, row.as_ref())
    }

    /// Decrypts several values of one environment, each as [`Vault::reveal`]
    /// would (its own error for a variable that is missing, dynamic, unset
    /// or tampered with), in one query. Which row holds which variable comes
    /// from the kept listing (each row's label authenticated, bound to its
    /// id), not from the name index; if the database changed between the
    /// listing and the query, each value goes through [`Vault::reveal`].
    pub fn reveal_many(
        &self,
        env: &EnvName,
        vars: &[VarName],
    ) -> Result<Vec<Result<(VarKind, SecretValue)>>> {
        let env_id = self.env_id(env)?;
        let (listing, listed_at) = self.listing(env, &env_id)?;
        let missing = |var: &VarName| VaultError::NoSuchVariable {
            env: env.to_string(),
            var: var.to_string(),
        };
        // Each wanted variable's row id and listing entry, from the labels.
        let mut out: Vec<Option<Result<(VarKind, SecretValue)>>> =
            std::iter::repeat_with(|| None).take(vars.len()).collect();
        let mut wanted: HashMap<Id, Vec<(usize, usize)>> = HashMap::with_capacity(vars.len());
        for (k, var) in vars.iter().enumerate() {
            match listing
                .infos
                .binary_search_by(|i| i.name.as_str().cmp(var.as_str()))
            {
                Ok(i) => wanted.entry(listing.ids[i]).or_default().push((k, i)),
                Err(_) => out[k] = Some(Err(missing(var))),
            }
        }
        {
            // Each wanted row opened as it is read, from SQLite's own buffer
            // (no copy of every row of the environment).
            let mut stmt = self
                .conn
                .prepare_cached("SELECT id, sealed_value, version FROM variables WHERE env_id = ?1")
                .map_err(|e| storage(e, &self.path))?;
            let mut q = stmt
                .query(params![&env_id[..]])
                .map_err(|e| storage(e, &self.path))?;
            while let Some(r) = q.next().map_err(|e| storage(e, &self.path))? {
                let id = r
                    .get_ref(0)
                    .and_then(|v| v.as_blob().map_err(Into::into))
                    .map_err(|e| storage(e, &self.path))?;
                let Some(hits) = Id::try_from(id).ok().and_then(|id| wanted.get(&id)) else {
                    continue;
                };
                let sealed = r
                    .get_ref(1)
                    .and_then(|v| v.as_blob_or_null().map_err(Into::into))
                    .map_err(|e| storage(e, &self.path))?;
                let version: i64 = r.get(2).map_err(|e| storage(e, &self.path))?;
                for &(k, i) in hits {
                    let info = &listing.infos[i];
                    out[k] = Some(self.open_value(
                        env,
                        &env_id,
                        &vars[k],
                        &listing.ids[i],
                        info.kind,
                        info.source.as_ref(),
                        sealed,
                        version,
                    ));
                }
            }
        }
        if self.change_stamp()? != listed_at {
            return Ok(vars.iter().map(|var| self.reveal(env, var)).collect());
        }
        Ok(out
            .into_iter()
            .zip(vars)
            .map(|(r, var)| r.unwrap_or_else(|| Err(missing(var))))
            .collect())
    }

    /// Opens a row found for `env/var` by its name index: its label must
    /// name `var` (the index is a column anyone who can write the file can
    /// swap between rows), then its value.
    fn open_row(
        &self,
        env: &EnvName,
        env_id: &Id,
        var: &VarName,
        row: Option<&SealedRow>,
    ) -> Result<(VarKind, SecretValue)> {
        let Some(row) = row else {
            return Err(VaultError::NoSuchVariable {
                env: env.to_string(),
                var: var.to_string(),
            });
        };
        let id = to_id(row.id.clone())?;
        let what = Self::what(env, var, "name");
        let label = self.open_label(b"var-label", &[env_id, &id], &row.sealed_label, &what)?;
        if label.name != var.as_str() {
            return Err(VaultError::Tampered { what });
        }
        self.open_value(
            env,
            env_id,
            var,
            &id,
            label.kind,
            label.source.as_ref(),
            row.sealed_value.as_deref(),
            row.version,
        )
    }

    /// Opens the value of row `id`, whose authenticated label says `kind`.
    #[allow(clippy::too_many_arguments)] // one row's parts, named
    fn open_value(
        &self,
        env: &EnvName,
        env_id: &Id,
        var: &VarName,
        id: &Id,
        kind: VarKind,
        source: Option<&String>,
        sealed: Option<&[u8]>,
        version: i64,
    ) -> Result<(VarKind, SecretValue)> {
        if kind == VarKind::Dynamic {
            return Err(VaultError::Dynamic {
                env: env.to_string(),
                var: var.to_string(),
                from: source.cloned().unwrap_or_default(),
            });
        }
        let Some(sealed) = sealed else {
            return Err(VaultError::NotSet {
                env: env.to_string(),
                var: var.to_string(),
            });
        };
        let plain = crypto::open(
            &self.seal_key,
            &aad(
                b"value",
                &[&self.vault_id, env_id, id, &version.to_be_bytes()],
            ),
            sealed,
        )
        .map_err(|_| VaultError::Tampered {
            what: Self::what(env, var, "value"),
        })?;
        Ok((kind, secret_from(plain)))
    }
}
