//! Bookkeeping of dynamic credentials (the ledger; minting and revoking
//! are in `credentials.rs`): what each
//! lease holds, its lease record on disk, and the audit of every step.

use std::path::Path;

use super::*;
use crate::sources::Minted;

/// The broker's view of one lease's credentials.
#[derive(Debug, Clone)]
pub(crate) struct DynamicEntry {
    /// Still to revoke.
    pub minted: Vec<Minted>,
    /// The lease record on disk (re-persisted as credentials go).
    pub record: reaper::LeaseRecord,
    /// The lease has ended and revocation is under way.
    pub ending: bool,
    /// Set once the first attempts failed.
    pub irrevocable: Option<Irrevocable>,
}

/// Why a credential is not revoked yet.
#[derive(Debug, Clone)]
pub(crate) struct Irrevocable {
    pub reason: String,
    pub since: SystemTime,
    pub attempts: u32,
}

/// Rewrites a lease's record with the credentials it still holds (sealed
/// in the vault and a small file, written under the state lock so records
/// never go out of order).
fn persist_entry(home: &Path, st: &mut State, lease_id: &str) {
    let State { vault, dynamic, .. } = st;
    if let Some(e) = dynamic.get_mut(lease_id) {
        e.record.dynamic = e.minted.clone();
        let _ = reaper::persist(home, vault.as_ref(), &e.record);
    }
}

impl Broker {
    /// Records the credentials a lease is about to get, before any is
    /// created: in the state (so the orphan reaper leaves them alone) and in
    /// a lease record on disk (so a crash cannot lose them).
    pub(crate) fn dynamic_planned(
        &self,
        lease_id: &str,
        program: &str,
        minted: Vec<Minted>,
    ) -> Result<(), Error> {
        let record = reaper::LeaseRecord {
            id: lease_id.to_owned(),
            pid: 0,
            start_ticks: 0,
            dir: PathBuf::new(),
            program: program.to_owned(),
            dynamic: minted.clone(),
        };
        // Recorded and tracked under one hold of the lock, so the unlock's
        // recovery never takes the record for a previous broker's.
        let mut st = self.state();
        reaper::persist(&self.cfg.home, st.vault.as_ref(), &record).map_err(|e| {
            Error::Internal(format!("cannot record the lease ({e}); nothing was minted"))
        })?;
        st.dynamic.insert(
            lease_id.to_owned(),
            DynamicEntry {
                minted,
                record,
                ending: false,
                irrevocable: None,
            },
        );
        Ok(())
    }

    /// The credentials `lease_id` still holds.
    pub(crate) fn credentials_of(&self, lease_id: &str) -> Vec<Minted> {
        self.state()
            .dynamic
            .get(lease_id)
            .map(|e| e.minted.clone())
            .unwrap_or_default()
    }

    /// Whether `lease_id` has credentials on record.
    pub(crate) fn has_dynamic(&self, lease_id: &str) -> bool {
        self.state().dynamic.contains_key(lease_id)
    }

    /// Whether a credential id belongs to a lease this broker knows.
    pub(crate) fn owns_credential(&self, credential: &str) -> bool {
        self.state()
            .dynamic
            .values()
            .any(|e| e.minted.iter().any(|m| m.credential == credential))
    }

    /// At unlock: the sealed lease records a previous broker left. A record
    /// that does not open or is not one the broker could have written is
    /// dropped (audited) and nothing in it is acted on; a lease still
    /// running (its file deleted, so the start-up reaper missed it) is
    /// killed (audited); records with credentials are returned for
    /// revocation; the rest are forgotten.
    pub(crate) fn recover_records(&self) -> Vec<reaper::LeaseRecord> {
        let mut st = self.state();
        let Some(vault) = st.vault.as_ref() else {
            return Vec::new();
        };
        let (records, rejected) = reaper::sealed_records(vault, &self.cfg.runtime_dir);
        for id in &rejected {
            let _ = vault.remove_lease_record(id);
        }
        for lease_id in rejected {
            st.audit_after(AuditEvent::LeaseRecordRejected {
                lease_id,
                place: "vault".into(),
            });
        }
        let mut leftovers = Vec::new();
        for rec in records {
            if st.leases.contains_key(&rec.id) || st.dynamic.contains_key(&rec.id) {
                continue; // This broker's own.
            }
            if rec.end() {
                st.audit_after(AuditEvent::Reaped {
                    lease_id: rec.id.clone(),
                    pgid: Some(rec.pid),
                    files_removed: 0,
                    credentials_revoked: 0,
                });
            }
            if rec.dynamic.is_empty() {
                reaper::forget(&self.cfg.home, st.vault.as_ref(), &rec.id);
            } else {
                leftovers.push(rec);
            }
        }
        leftovers
    }

    /// Takes over a record a previous broker left (at unlock). False if this
    /// broker already tracks it.
    pub(crate) fn adopt(&self, record: reaper::LeaseRecord) -> bool {
        let mut st = self.state();
        if st.dynamic.contains_key(&record.id) || st.leases.contains_key(&record.id) {
            return false;
        }
        st.dynamic.insert(
            record.id.clone(),
            DynamicEntry {
                minted: record.dynamic.clone(),
                record,
                ending: true,
                irrevocable: None,
            },
        );
        true
    }

    /// The lease ended: its credentials are being revoked.
    pub(crate) fn dynamic_ending(&self, lease_id: &str) {
        if let Some(e) = self.state().dynamic.get_mut(lease_id) {
            e.ending = true;
        }
    }

    /// The lease's process started: its record gains the pid (and keeps the
    /// credentials).
    pub(crate) fn dynamic_record(&self, record: &reaper::LeaseRecord) -> reaper::LeaseRecord {
        let mut rec = record.clone();
        let mut st = self.state();
        if let Some(e) = st.dynamic.get_mut(&record.id) {
            rec.dynamic = e.minted.clone();
            e.record = rec.clone();
        }
        rec
    }

    /// A command token was minted: keep it sealed in the record.
    pub(crate) fn credential_sealed(&self, lease_id: &str, credential: &str, sealed: String) {
        let mut st = self.state();
        if let Some(e) = st.dynamic.get_mut(lease_id)
            && let Some(m) = e.minted.iter_mut().find(|m| m.credential == credential)
        {
            m.sealed_token = Some(sealed);
        }
        persist_entry(&self.cfg.home, &mut st, lease_id);
    }

    /// A command source's mint printed nothing: no credential exists, so
    /// none is kept to revoke (it would show as irrevocable forever).
    pub(crate) fn credential_never_minted(&self, lease_id: &str, credential: &str) {
        let mut st = self.state();
        if let Some(e) = st.dynamic.get_mut(lease_id) {
            e.minted.retain(|m| m.credential != credential);
        }
        persist_entry(&self.cfg.home, &mut st, lease_id);
    }

    /// Audits a mint.
    pub(crate) fn credential_minted(
        &self,
        lease_id: &str,
        reference: &str,
        credential: &str,
        expires: &str,
    ) {
        self.state().audit_after(AuditEvent::CredentialMinted {
            lease_id: lease_id.to_owned(),
            source: reference.to_owned(),
            credential: credential.to_owned(),
            expires: expires.to_owned(),
        });
    }

    /// One credential is revoked: audit it, drop it from the lease.
    pub(crate) fn credential_revoked(&self, lease_id: &str, m: &Minted, attempts: u32) {
        let mut st = self.state();
        st.audit_after(AuditEvent::CredentialRevoked {
            lease_id: lease_id.to_owned(),
            source: m.reference.clone(),
            credential: m.credential.clone(),
            attempts,
        });
        if let Some(e) = st.dynamic.get_mut(lease_id) {
            e.minted.retain(|x| x.credential != m.credential);
        }
        persist_entry(&self.cfg.home, &mut st, lease_id);
    }

    /// Every credential of `lease_id` is revoked: forget the lease.
    pub(crate) fn dynamic_done(&self, lease_id: &str) {
        let mut st = self.state();
        st.dynamic.remove(lease_id);
        // The process may still be running (a failed mint before spawn has
        // none); its record goes with the lease's end otherwise.
        if !st.leases.contains_key(lease_id) {
            reaper::forget(&self.cfg.home, st.vault.as_ref(), lease_id);
        }
    }

    /// Revocation failed: shown as irrevocable (audited the first time and
    /// whenever the reason changes).
    pub(crate) fn credential_irrevocable(&self, lease_id: &str, reason: &str, attempts: u32) {
        let mut st = self.state();
        let Some(e) = st.dynamic.get_mut(lease_id) else {
            return;
        };
        let changed = e.irrevocable.as_ref().is_none_or(|i| i.reason != reason);
        let since = e
            .irrevocable
            .as_ref()
            .map_or_else(SystemTime::now, |i| i.since);
        e.irrevocable = Some(Irrevocable {
            reason: reason.to_owned(),
            since,
            attempts,
        });
        let minted = e.minted.clone();
        if changed && st.audit.is_some() {
            for m in minted {
                st.audit_after(AuditEvent::CredentialIrrevocable {
                    lease_id: lease_id.to_owned(),
                    source: m.reference,
                    credential: m.credential,
                    reason: reason.to_owned(),
                });
            }
        }
    }

    /// A credential of this vault that no lease owned was revoked.
    pub(crate) fn credential_reaped(&self, reference: &str, credential: &str) {
        self.state().audit_after(AuditEvent::CredentialReaped {
            source: reference.to_owned(),
            credential: credential.to_owned(),
        });
    }

    /// The credentials view for `status` and `leases`.
    pub(crate) fn dynamic_view(st: &State) -> Vec<CredentialView> {
        st.dynamic
            .iter()
            .flat_map(|(lease, e)| {
                e.minted.iter().map(move |m| {
                    let (state, reason, since, attempts) = match (&e.irrevocable, e.ending) {
                        (Some(i), _) => (
                            CredentialState::Irrevocable,
                            Some(i.reason.clone()),
                            Some(rfc3339(i.since)),
                            i.attempts,
                        ),
                        (None, true) => (CredentialState::Revoking, None, None, 0),
                        (None, false) => (CredentialState::Live, None, None, 0),
                    };
                    CredentialView {
                        lease_id: lease.clone(),
                        source: m.reference.clone(),
                        credential: m.credential.clone(),
                        expires: m.expires.clone(),
                        state,
                        reason,
                        since,
                        attempts,
                    }
                })
            })
            .collect()
    }
}
