//! Variables: set, declare, import, unset, list and reveal. Values are
//! sealed with AAD binding vault, environment, variable and version.

use rusqlite::{OptionalExtension, params};

use super::*;

/// A `variables` row as read, before its label is opened.
struct Row {
    id: Vec<u8>,
    sealed_label: Vec<u8>,
    sealed_len: Option<i64>,
    version: i64,
    created_at: i64,
    updated_at: i64,
}

/// The keys and ids an upsert needs, borrowed apart from the connection so a
/// transaction can be open at the same time.
struct Keys<'a> {
    vault_id: &'a Id,
    seal: &'a Key,
    index: &'a Key,
}

/// Borrows the keys of a vault field by field, so the borrow stays disjoint
/// from `conn` (a method taking `&self` would borrow the whole vault).
macro_rules! keys_of {
    ($v:expr) => {
        Keys {
            vault_id: &$v.vault_id,
            seal: &$v.seal_key,
            index: &$v.index_key,
        }
    };
}

impl Vault {
    pub(super) fn var_index(&self, env_id: &Id, name: &VarName) -> [u8; 32] {
        crypto::keyed_hash(&self.index_key, &[b"var", env_id, name.as_str().as_bytes()])
    }

    pub(super) fn what(env: &EnvName, var: &VarName, part: &str) -> String {
        format!("{part} of {env}/{var}")
    }

    /// Sets (creating if needed) a variable's value. Returns whether it was
    /// created.
    pub fn set_variable(
        &mut self,
        env: &EnvName,
        var: &VarName,
        value: &[u8],
        update: &VariableUpdate,
    ) -> Result<bool> {
        let env_id = self.env_id(env)?;
        let path = self.path.clone();
        let tx = self.conn.savepoint().map_err(|e| storage(e, &path))?;
        let created =
            upsert_variable(&tx, &keys_of!(self), &env_id, env, var, Some(value), update)?;
        tx.commit().map_err(|e| storage(e, &path))?;
        Ok(created)
    }

    /// Declares a variable with no value (a slot for the human to fill), or
    /// updates its description/kind if it exists. Returns whether it was
    /// created.
    pub fn declare_variable(
        &mut self,
        env: &EnvName,
        var: &VarName,
        update: &VariableUpdate,
    ) -> Result<bool> {
        let env_id = self.env_id(env)?;
        let path = self.path.clone();
        let tx = self.conn.savepoint().map_err(|e| storage(e, &path))?;
        let created = upsert_variable(&tx, &keys_of!(self), &env_id, env, var, None, update)?;
        tx.commit().map_err(|e| storage(e, &path))?;
        Ok(created)
    }

    /// Imports `(name, value)` pairs into `env`, committing every
    /// `batch_size` variables so an interrupted import leaves a vault that
    /// opens and holds a prefix of the input. `progress(done)` is called after
    /// each committed batch.
    pub fn import<'a, I>(
        &mut self,
        env: &EnvName,
        entries: I,
        batch_size: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<ImportReport>
    where
        I: IntoIterator<Item = (&'a VarName, &'a [u8])>,
    {
        let env_id = self.env_id(env)?;
        let keys = keys_of!(self);
        let path = self.path.clone();
        let mut report = ImportReport::default();
        let mut entries = entries.into_iter().peekable();
        let update = VariableUpdate::default();
        while entries.peek().is_some() {
            let tx = self.conn.savepoint().map_err(|e| storage(e, &path))?;
            for (var, value) in entries.by_ref().take(batch_size.max(1)) {
                if upsert_variable(&tx, &keys, &env_id, env, var, Some(value), &update)? {
                    report.created += 1;
                } else {
                    report.updated += 1;
                }
            }
            tx.commit().map_err(|e| storage(e, &path))?;
            progress(report.created + report.updated);
        }
        Ok(report)
    }

    /// Removes a variable (the row whose sealed name is `var`: a swapped
    /// index never deletes another variable).
    pub fn unset_variable(&mut self, env: &EnvName, var: &VarName) -> Result<()> {
        let env_id = self.env_id(env)?;
        let row: Option<(Vec<u8>, Vec<u8>)> = self
            .conn
            .prepare_cached(
                "SELECT id, sealed_label FROM variables WHERE env_id = ?1 AND name_index = ?2",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![&env_id[..], &self.var_index(&env_id, var)[..]],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
            })
            .map_err(|e| storage(e, &self.path))?;
        let Some((id, sealed)) = row else {
            return Err(VaultError::NoSuchVariable {
                env: env.to_string(),
                var: var.to_string(),
            });
        };
        let id = to_id(id)?;
        let what = Self::what(env, var, "name");
        let label = self.open_label(b"var-label", &[&env_id, &id], &sealed, &what)?;
        if label.name != var.as_str() {
            return Err(VaultError::Tampered { what });
        }
        self.conn
            .execute("DELETE FROM variables WHERE id = ?1", params![&id[..]])
            .map_err(|e| storage(e, &self.path))?;
        self.touch_env(&env_id)
    }

    pub(super) fn touch_env(&self, env_id: &Id) -> Result<()> {
        self.conn
            .execute(
                "UPDATE environments SET updated_at = ?2 WHERE id = ?1",
                params![&env_id[..], now()],
            )
            .map_err(|e| storage(e, &self.path))?;
        Ok(())
    }

    /// The variables of an environment, sorted by name. Never values.
    ///
    /// Opening 1,000 labels costs about a millisecond, and agents list often:
    /// a listing is kept (names, descriptions, kinds — what agents may see;
    /// never a value) until the database changes, by this connection or any
    /// other. The keeping ends with the `Vault`, i.e. at lock.
    pub fn variables(&self, env: &EnvName) -> Result<Vec<VariableInfo>> {
        let env_id = self.env_id(env)?;
        Ok(self.listing(env, &env_id)?.0.infos.clone())
    }

    /// Calls `f` with each variable of `env` in name order, from the kept
    /// listing (nothing copied: what a run's admission reads, once per
    /// variable).
    pub fn each_variable(&self, env: &EnvName, mut f: impl FnMut(&VariableInfo)) -> Result<()> {
        let env_id = self.env_id(env)?;
        let (listing, _) = self.listing(env, &env_id)?;
        listing.infos.iter().for_each(&mut f);
        Ok(())
    }

    /// Where each of `vars` may send its value (empty: not bound), from the
    /// kept listing's authenticated labels: one lookup per name, nothing
    /// else copied (a run with a thousand variables asks this).
    pub fn bindings_of(
        &self,
        env: &EnvName,
        vars: &[VarName],
    ) -> Result<Vec<Vec<crate::bound::Rule>>> {
        let env_id = self.env_id(env)?;
        let (listing, _) = self.listing(env, &env_id)?;
        Ok(vars
            .iter()
            .map(|var| {
                listing
                    .infos
                    .binary_search_by(|i| i.name.as_str().cmp(var.as_str()))
                    .map(|i| listing.infos[i].bindings.clone())
                    .unwrap_or_default()
            })
            .collect())
    }

    /// The kept listing of `env` (opened now if the database changed since),
    /// and the database state it is for.
    pub(super) fn listing(&self, env: &EnvName, env_id: &Id) -> Result<(Arc<Listing>, (i64, u64))> {
        let stamp = self.change_stamp()?;
        {
            let mut l = self.listings.borrow_mut();
            if l.stamp != stamp {
                l.stamp = stamp;
                l.by_env.clear();
            }
            if let Some(hit) = l.by_env.get(env_id) {
                return Ok((Arc::clone(hit), stamp));
            }
        }
        let out = Arc::new(self.open_listing(env, env_id)?);
        self.listings
            .borrow_mut()
            .by_env
            .insert(*env_id, Arc::clone(&out));
        Ok((out, stamp))
    }

    /// Where the database is: see [`Listings`].
    pub(super) fn change_stamp(&self) -> Result<(i64, u64)> {
        let data_version: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| storage(e, &self.path))?;
        Ok((data_version, self.names_changed.load(Ordering::Relaxed)))
    }

    fn open_listing(&self, env: &EnvName, env_id: &Id) -> Result<Listing> {
        let env_id = *env_id;
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, sealed_label, length(sealed_value), version, created_at, updated_at
                 FROM variables WHERE env_id = ?1",
            )
            .map_err(|e| storage(e, &self.path))?;
        let rows = stmt
            .query_map(params![&env_id[..]], |r| {
                Ok(Row {
                    id: r.get(0)?,
                    sealed_label: r.get(1)?,
                    sealed_len: r.get(2)?,
                    version: r.get(3)?,
                    created_at: r.get(4)?,
                    updated_at: r.get(5)?,
                })
            })
            .map_err(|e| storage(e, &self.path))?
            .collect::<rusqlite::Result<Vec<Row>>>()
            .map_err(|e| storage(e, &self.path))?;

        // Opening labels is the cost of a large listing: spread it over the
        // cores for big environments (scoped threads, nothing outlives this).
        // Only the key and ids cross into the threads, not the connection.
        let (seal_key, vault_id) = (&self.seal_key, &self.vault_id);
        let decode = |chunk: &[Row]| -> Result<Vec<(Id, VariableInfo)>> {
            chunk
                .iter()
                .map(|row| variable_info(seal_key, vault_id, env, &env_id, row))
                .collect()
        };
        // available_parallelism reads cgroup files: ask once per process.
        static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        let workers = if rows.len() >= PARALLEL_LIST_MIN {
            *CORES.get_or_init(|| {
                std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .min(8)
            })
        } else {
            1
        };
        let mut out = if workers > 1 {
            let size = rows.len().div_ceil(workers);
            let parts: Vec<Result<Vec<(Id, VariableInfo)>>> = std::thread::scope(|s| {
                let handles: Vec<_> = rows
                    .chunks(size)
                    .map(|chunk| s.spawn(move || decode(chunk)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(VaultError::Storage("label decoding thread failed".into()))
                        })
                    })
                    .collect()
            });
            let mut all = Vec::with_capacity(rows.len());
            for part in parts {
                all.extend(part?);
            }
            all
        } else {
            decode(&rows)?
        };
        out.sort_unstable_by(|a, b| a.1.name.cmp(&b.1.name));
        let (ids, infos) = out.into_iter().unzip();
        Ok(Listing { infos, ids })
    }
}

/// Refuses what would break every run of the environment: an env-kind
/// variable whose name changes how programs are found or loaded (`PATH`,
/// `LD_PRELOAD`, … see [`crate::names::changes_how_programs_load`]), or
/// whose `NAME=value` is longer than a program's environment takes.
/// Only an `env` variable can be bound (a file's or a dynamic variable's
/// value does not reach the child as one string a proxy can stand in for),
/// to at most [`MAX_BINDINGS`](super::MAX_BINDINGS) destinations.
fn check_bindable(env: &EnvName, var: &VarName, label: &Label) -> Result<()> {
    let why = if label.bindings.is_empty() {
        return Ok(());
    } else if label.kind != VarKind::Env {
        "only env variables can be bound to destinations".to_owned()
    } else if label.bindings.len() > super::MAX_BINDINGS {
        format!("at most {} destinations per variable", super::MAX_BINDINGS)
    } else {
        return Ok(());
    };
    Err(VaultError::NotBindable {
        env: env.to_string(),
        var: var.to_string(),
        why,
    })
}

fn check_injectable(
    env: &EnvName,
    var: &VarName,
    kind: VarKind,
    value: Option<&[u8]>,
) -> Result<()> {
    if kind != VarKind::Env {
        return Ok(());
    }
    if crate::names::changes_how_programs_load(var.as_str()) {
        return Err(VaultError::BreaksEveryRun {
            env: env.to_string(),
            var: var.to_string(),
            why: "its name changes how programs are found or loaded, so every run of the environment would get it (and most would fail): store it under another name".into(),
        });
    }
    if let Some(v) = value
        && var.as_str().len() + 1 + v.len() > crate::names::MAX_ENV_STRING
    {
        return Err(VaultError::BreaksEveryRun {
            env: env.to_string(),
            var: var.to_string(),
            why: format!(
                "{} KiB is more than a program's environment takes (128 KiB per variable): store it with `--kind file` (the program gets a file path)",
                v.len() / 1024
            ),
        });
    }
    Ok(())
}

fn upsert_variable(
    tx: &rusqlite::Connection,
    keys: &Keys<'_>,
    env_id: &Id,
    env: &EnvName,
    var: &VarName,
    value: Option<&[u8]>,
    update: &VariableUpdate,
) -> Result<bool> {
    if let Some(v) = value
        && v.len() > MAX_VALUE_LEN
    {
        return Err(VaultError::ValueTooLarge {
            len: v.len(),
            max: MAX_VALUE_LEN,
        });
    }
    if let Some(d) = &update.description {
        check_description(d)?;
    }
    let dynamic_source = match update.kind {
        Some(VarKind::Dynamic) => Some(
            update
                .source
                .clone()
                .filter(|s| !s.is_empty() && s.len() <= 200)
                .ok_or_else(|| VaultError::Storage("a dynamic variable needs its source".into()))?,
        ),
        _ => None,
    };
    let index = crypto::keyed_hash(keys.index, &[b"var", env_id, var.as_str().as_bytes()]);
    let existing: Option<(Vec<u8>, Vec<u8>, i64)> = tx
        .prepare_cached(
            "SELECT id, sealed_label, version FROM variables WHERE env_id = ?1 AND name_index = ?2",
        )
        .and_then(|mut s| {
            s.query_row(params![&env_id[..], &index[..]], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
        })
        .map_err(|e| VaultError::Storage(e.to_string()))?;
    let t = now();
    let seal_label = |id: &Id, label: &Label| -> Result<Vec<u8>> {
        Ok(crypto::seal(
            keys.seal,
            &aad(b"var-label", &[keys.vault_id, env_id, id]),
            &label.encode(),
        )?)
    };
    let seal_value = |id: &Id, version: i64, v: &[u8]| -> Result<Vec<u8>> {
        Ok(crypto::seal(
            keys.seal,
            &aad(
                b"value",
                &[keys.vault_id, env_id, id, &version.to_be_bytes()],
            ),
            v,
        )?)
    };
    let created = match existing {
        None => {
            let id: Id = crypto::random_array()?;
            let label = Label {
                name: var.to_string(),
                description: update.description.clone().unwrap_or_default(),
                kind: update.kind.unwrap_or_default(),
                source: dynamic_source,
                bindings: update.bindings.clone().unwrap_or_default(),
            };
            if label.kind == VarKind::Dynamic && value.is_some() {
                return Err(VaultError::DynamicHasNoValue {
                    env: env.to_string(),
                    var: var.to_string(),
                });
            }
            check_injectable(env, var, label.kind, value)?;
            check_bindable(env, var, &label)?;
            let version = i64::from(value.is_some());
            let sealed_value = value.map(|v| seal_value(&id, version, v)).transpose()?;
            let sealed_label = seal_label(&id, &label)?;
            tx.prepare_cached(
                "INSERT INTO variables
                   (id, env_id, name_index, sealed_label, sealed_value, version, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    &id[..],
                    &env_id[..],
                    &index[..],
                    sealed_label,
                    sealed_value,
                    version,
                    t
                ])
            })
            .map_err(|e| VaultError::Storage(e.to_string()))?;
            true
        }
        Some((id, sealed_label, version)) => {
            let id = to_id(id)?;
            let what = format!("name of {env}/{var}");
            let plain = crypto::open(
                keys.seal,
                &aad(b"var-label", &[keys.vault_id, env_id, &id]),
                &sealed_label,
            )
            .map_err(|_| VaultError::Tampered { what: what.clone() })?;
            let mut label = Label::decode(&plain)
                .ok()
                .filter(|l| l.name == var.as_str())
                .ok_or(VaultError::Tampered { what })?;
            if let Some(d) = &update.description {
                label.description.clone_from(d);
            }
            if let Some(k) = update.kind {
                label.kind = k;
                label.source = dynamic_source;
            }
            if let Some(b) = &update.bindings {
                label.bindings.clone_from(b);
            }
            if label.kind == VarKind::Dynamic && value.is_some() {
                return Err(VaultError::DynamicHasNoValue {
                    env: env.to_string(),
                    var: var.to_string(),
                });
            }
            check_injectable(env, var, label.kind, value)?;
            check_bindable(env, var, &label)?;
            let new_label = seal_label(&id, &label)?;
            match value {
                // A variable turned dynamic keeps no stored value.
                None if label.kind == VarKind::Dynamic => tx.execute(
                    "UPDATE variables SET sealed_label = ?2, sealed_value = NULL, updated_at = ?3
                     WHERE id = ?1",
                    params![&id[..], new_label, t],
                ),
                Some(v) => {
                    let version = version.saturating_add(1);
                    tx.execute(
                        "UPDATE variables SET sealed_label = ?2, sealed_value = ?3, version = ?4,
                                updated_at = ?5 WHERE id = ?1",
                        params![&id[..], new_label, seal_value(&id, version, v)?, version, t],
                    )
                }
                None => tx.execute(
                    "UPDATE variables SET sealed_label = ?2, updated_at = ?3 WHERE id = ?1",
                    params![&id[..], new_label, t],
                ),
            }
            .map_err(|e| VaultError::Storage(e.to_string()))?;
            false
        }
    };
    tx.execute(
        "UPDATE environments SET updated_at = ?2 WHERE id = ?1",
        params![&env_id[..], t],
    )
    .map_err(|e| VaultError::Storage(e.to_string()))?;
    Ok(created)
}

fn variable_info(
    seal_key: &Key,
    vault_id: &Id,
    env: &EnvName,
    env_id: &Id,
    row: &Row,
) -> Result<(Id, VariableInfo)> {
    let id = Id::try_from(row.id.as_slice())
        .map_err(|_| VaultError::Storage("malformed row id".into()))?;
    let plain = crypto::open(
        seal_key,
        &aad(b"var-label", &[vault_id, env_id, &id]),
        &row.sealed_label,
    );
    let label = plain
        .ok()
        .and_then(|p| Label::decode(&p).ok())
        .ok_or_else(|| VaultError::Tampered {
            what: format!("variable name in {env}"),
        })?;
    // The ciphertext length gives the value length without decrypting.
    let value_len = row
        .sealed_len
        .and_then(|n| usize::try_from(n).ok())
        .map(|n| n.saturating_sub(SEALED_OVERHEAD));
    Ok((
        id,
        VariableInfo {
            name: label.name,
            description: label.description,
            kind: label.kind,
            source: label.source,
            is_set: value_len.is_some() || label.kind == VarKind::Dynamic,
            too_short_to_mask: value_len.is_some_and(|n| n < crate::mask::MIN_MASKABLE_LEN),
            version: u64::try_from(row.version).unwrap_or(0),
            created_at: row.created_at,
            updated_at: row.updated_at,
            bindings: label.bindings,
        },
    ))
}
