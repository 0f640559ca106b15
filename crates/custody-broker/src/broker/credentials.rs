//! Dynamic credentials, the broker's side: minting a lease's credentials
//! through the source drivers (`crate::sources`), revoking them at its end
//! with retries, recovering what a crashed broker left, and the `source`
//! requests. What is recorded and audited at each step is in `dynamic.rs`.

use custody_core::crypto::Subkey;
use custody_core::sources::SourceDef;

use super::*;
use crate::protocol::{SettledCredential, SourceRemoved, SourceSaved};
use crate::sources::{self, Minted, Prepared, Revocation};

/// Revocation attempts at lease end before the credential is reported
/// irrevocable (the retries go on in the background).
const FIRST_ATTEMPTS: u32 = 3;

/// What a lease gets from its sources.
pub(crate) struct Fresh {
    /// Injected as `(variable, value)`.
    pub values: Vec<(String, custody_core::secret::Token)>,
    /// Masked too, never injected alone (a role's password inside its URL).
    pub also_mask: Vec<(String, custody_core::secret::Token)>,
}

impl Broker {
    /// Checks a dynamic variable's `TYPE:NAME` source reference.
    pub(crate) fn check_source_reference(&self, reference: Option<&str>) -> Result<String, Error> {
        let st = self.state();
        let vault = st.vault.as_ref().ok_or_else(Error::locked)?;
        Ok(sources::check_reference(vault, reference)?)
    }

    /// `source add` (humans only; checked by the caller).
    pub(crate) fn define_source(&self, def: SourceDef, by: &str) -> Result<SourceSaved, Error> {
        {
            let st = self.state();
            let vault = st
                .vault
                .as_ref()
                .ok_or_else(|| Error::Locked("the vault is locked: run `custody unlock`".into()))?;
            sources::check_definition(vault, &def)?;
        }
        let reference = def.reference();
        let created = self.change_vault(
            AuditEvent::VaultChange {
                action: audit::VaultAction::PutSource,
                environment: reference.clone(),
                variable: None,
                by: Some(by.to_owned()),
            },
            |v| v.put_source(&def),
        )?;
        Ok(SourceSaved {
            source: reference,
            created,
        })
    }

    /// `source ls`: every source (no secrets: the admin URL is named, not
    /// shown).
    pub(crate) fn list_sources(&self) -> Result<Value, Error> {
        let defs = self.with_vault(|v| v.sources())?;
        Ok(serde_json::to_value(defs).unwrap_or_default())
    }

    /// `source rm` (humans only; checked by the caller).
    pub(crate) fn remove_source(&self, name: &str, by: &str) -> Result<SourceRemoved, Error> {
        let n = EnvName::new(name).map_err(|e| Error::BadRequest(e.to_string()))?;
        let removed = self.change_vault(
            AuditEvent::VaultChange {
                action: audit::VaultAction::RemoveSource,
                environment: name.to_owned(),
                variable: None,
                by: Some(by.to_owned()),
            },
            |v| v.remove_source(&n),
        )?;
        if !removed {
            return Err(Error::NotFound(format!("no source '{name}'")));
        }
        Ok(SourceRemoved {
            removed: name.to_owned(),
        })
    }

    /// Mints every prepared credential for `lease_id` (planned with
    /// [`Broker::dynamic_planned`] first). On failure the ones already
    /// minted are revoked by the caller through [`Broker::settle`]; a
    /// command that printed nothing minted nothing and leaves nothing to
    /// revoke. `mask` names the values a failed command's stderr must not
    /// show.
    pub(crate) async fn mint_all(
        &self,
        lease_id: &str,
        prepared: Vec<Prepared>,
        deadline: SystemTime,
        ttl: Duration,
        mask: &[(&str, &[u8])],
    ) -> Result<Fresh, Error> {
        let mut fresh = Fresh {
            values: Vec::new(),
            also_mask: Vec::new(),
        };
        for p in prepared {
            let expires = audit::format_rfc3339(p.expiry(deadline));
            match sources::mint(&p, lease_id, ttl, &expires, mask).await {
                Ok(c) => {
                    if c.keep_sealed {
                        let sealed = self.seal_token(lease_id, &p.credential, c.value.expose())?;
                        self.credential_sealed(lease_id, &p.credential, sealed);
                    }
                    fresh.values.push((p.var.clone(), c.value));
                    if let Some(m) = c.also_mask {
                        fresh.also_mask.push((p.var.clone(), m));
                    }
                }
                Err(sources::MintError { error, printed }) => {
                    match printed {
                        // It printed something: a token may exist; keep it
                        // sealed so the revocation can end it.
                        Some(t) => {
                            if let Ok(sealed) = self.seal_token(lease_id, &p.credential, t.expose())
                            {
                                self.credential_sealed(lease_id, &p.credential, sealed);
                            }
                        }
                        // Nothing printed, nothing minted: nothing to revoke.
                        None => self.credential_never_minted(lease_id, &p.credential),
                    }
                    return Err(error.into());
                }
            }
            self.credential_minted(lease_id, &p.reference(), &p.credential, &expires);
        }
        Ok(fresh)
    }

    fn seal_token(&self, lease_id: &str, credential: &str, token: &[u8]) -> Result<String, Error> {
        let key = self.with_vault(|v| Ok(v.subkey(Subkey::LeaseToken)))?;
        Ok(sources::seal_token(&key, lease_id, credential, token)?)
    }

    /// Revokes one credential; the source is read from the vault each time.
    async fn revoke_one(&self, lease_id: &str, m: &Minted) -> Result<(), String> {
        let revocation = {
            let st = self.state();
            let vault = st
                .vault
                .as_ref()
                .ok_or("the vault is locked (revocation resumes at unlock)")?;
            Revocation::read(vault, &m.reference, vault.subkey(Subkey::LeaseToken))
                .map_err(|e| e.to_string())?
        };
        revocation
            .revoke(lease_id, m)
            .await
            .map_err(|e| e.to_string())
    }

    /// Revokes what is left of `lease_id`'s credentials once. Returns the
    /// failure of the first one that did not go.
    async fn revoke_lease(&self, lease_id: &str, attempts: u32) -> Result<(), String> {
        for m in self.credentials_of(lease_id) {
            self.revoke_one(lease_id, &m).await?;
            self.credential_revoked(lease_id, &m, attempts);
        }
        Ok(())
    }

    /// Ends `lease_id`'s credentials: a few quick attempts, then (if they
    /// all failed) the lease is marked irrevocable and retried in the
    /// background with exponential backoff. Returns what to tell the
    /// requester.
    pub(crate) async fn settle(self: &Arc<Self>, lease_id: &str) -> Vec<SettledCredential> {
        let before = self.credentials_of(lease_id);
        if before.is_empty() && !self.has_dynamic(lease_id) {
            return Vec::new();
        }
        self.dynamic_ending(lease_id);
        let mut backoff =
            crate::retry::Backoff::new(Duration::from_millis(100), 3, self.cfg.revoke_retry_max);
        let mut last = String::new();
        for attempt in 1..=FIRST_ATTEMPTS {
            match self.revoke_lease(lease_id, attempt).await {
                Ok(()) => {
                    self.dynamic_done(lease_id);
                    return before
                        .iter()
                        .map(|m| SettledCredential {
                            source: m.reference.clone(),
                            credential: m.credential.clone(),
                            state: "revoked".into(),
                            reason: None,
                        })
                        .collect();
                }
                Err(e) => last = e,
            }
            if attempt < FIRST_ATTEMPTS {
                backoff.wait().await;
            }
        }
        self.credential_irrevocable(lease_id, &last, FIRST_ATTEMPTS);
        tokio::spawn(Arc::clone(self).retry(lease_id.to_owned()));
        self.credentials_of(lease_id)
            .iter()
            .map(|m| SettledCredential {
                source: m.reference.clone(),
                credential: m.credential.clone(),
                state: "irrevocable".into(),
                reason: Some(last.clone()),
            })
            .collect()
    }

    /// Background retries with exponential backoff (capped by
    /// `revoke_retry_max`) until the credentials are revoked or the vault
    /// is locked (then the lease record waits for the next unlock).
    async fn retry(self: Arc<Self>, lease_id: String) {
        let mut backoff =
            crate::retry::Backoff::new(Duration::from_secs(1), 2, self.cfg.revoke_retry_max);
        let mut attempts = FIRST_ATTEMPTS;
        loop {
            backoff.wait().await;
            if self.state().vault.is_none() || !self.has_dynamic(&lease_id) {
                return;
            }
            attempts += 1;
            match self.revoke_lease(&lease_id, attempts).await {
                Ok(()) => {
                    self.dynamic_done(&lease_id);
                    return;
                }
                Err(e) => self.credential_irrevocable(&lease_id, &e, attempts),
            }
        }
    }

    /// At unlock: ends what a previous broker left and revokes the
    /// credentials of its leases (from their sealed records in the vault),
    /// then drops this vault's roles that no lease owns, at every
    /// PostgreSQL source. Audited.
    pub(crate) async fn recover_credentials(self: Arc<Self>) {
        for rec in self.recover_records() {
            if self.adopt(rec.clone()) {
                let b = Arc::clone(&self);
                tokio::spawn(async move {
                    b.settle(&rec.id).await;
                });
            }
        }
        let reapable = match self.state().vault.as_ref() {
            Some(vault) => sources::reapable(vault),
            None => return,
        };
        for source in reapable {
            for role in source.reap(|role| self.owns_credential(role)).await {
                self.credential_reaped(&source.reference, &role);
            }
        }
    }
}
