//! The broker's side of the audit chain (G6): records written before what
//! they describe (fail closed), after it (never dropped silently), or
//! behind (a lease's end: durable within a second), or pending (a lease's
//! start: written before the child runs, durable before the result), and
//! the head sealed in the vault once a record is durable.

use custody_core::audit::{AuditError, AuditEvent, PendingSync, SyncedHead};

use super::{MAX_DEFERRED, State};
use crate::Error;

impl State {
    /// Appends an audit record and stores the new head in the vault. An error
    /// here means the caller must not go on (fail closed).
    pub(super) fn audit(&mut self, event: AuditEvent) -> Result<(), Error> {
        let chain = self.audit.as_mut().ok_or_else(Error::locked)?;
        let head = chain.append(&event).map_err(|e| {
            Error::AuditFailed(format!(
                "the audit log cannot be written ({e}); nothing was done"
            ))
        })?;
        if let Some(v) = self.vault.as_ref() {
            v.set_audit_head(&head).map_err(Error::from)?;
        }
        Ok(())
    }

    /// Records `event` before what it describes happens (fail closed); while
    /// the vault is locked, at the next unlock (at most [`MAX_DEFERRED`]).
    pub(super) fn audit_or_defer(&mut self, event: AuditEvent) -> Result<(), Error> {
        if self.audit.is_some() {
            return self.audit(event);
        }
        if self.deferred.len() >= MAX_DEFERRED {
            return Err(Error::AuditFailed(
                "too many records wait for the vault to be unlocked: run `custody unlock`".into(),
            ));
        }
        self.deferred.push(event);
        Ok(())
    }

    /// Records something that has already happened (a lease ended, a grant
    /// expired, a revoke, a wrong PIN), which no failure can undo. Its
    /// record is never dropped silently: while the vault is locked it waits
    /// for the next unlock (at most [`MAX_DEFERRED`]); a record that cannot
    /// be written is logged by kind and counted (`audit_unrecorded` in
    /// `custody status`).
    pub(crate) fn audit_after(&mut self, event: AuditEvent) {
        if self.audit.is_none() {
            if self.deferred.len() < MAX_DEFERRED {
                self.deferred.push(event);
            } else {
                self.unrecorded += 1;
            }
            return;
        }
        let kind = event.kind();
        if let Err(e) = self.audit(event) {
            self.unrecorded += 1;
            eprintln!("custody daemon: the audit record `{kind}` could not be written: {e}");
        }
    }

    /// [`audit_after`](Self::audit_after) written behind: one `write`, no
    /// `fdatasync` (see [`custody_core::audit::AuditChain::append_unsynced`]). For a
    /// lease's end, which a run's result does not wait on, and the requests
    /// a lease's proxy sent on: durable with the
    /// next durable record or at the next [`flush_audit`](Self::flush_audit)
    /// (the broker's tick, within a second), so a run costs one `fdatasync`.
    pub(crate) fn audit_behind(&mut self, event: AuditEvent) {
        let Some(chain) = self.audit.as_mut() else {
            return self.audit_after(event);
        };
        let kind = event.kind();
        if let Err(e) = chain.append_unsynced(&event) {
            self.unrecorded += 1;
            eprintln!("custody daemon: the audit record `{kind}` could not be written: {e}");
        }
    }

    /// Writes `event` now (fail closed: an error means the caller must not
    /// go on) and returns what makes it durable off the state's lock: for a
    /// lease's start, whose `fdatasync` runs alongside the child and which
    /// the run's result waits for ([`audit_synced`](Self::audit_synced)).
    pub(crate) fn audit_pending(&mut self, event: AuditEvent) -> Result<PendingSync, Error> {
        let chain = self.audit.as_mut().ok_or_else(Error::locked)?;
        chain.append_pending(&event).map_err(|e| {
            Error::AuditFailed(format!(
                "the audit log cannot be written ({e}); nothing was done"
            ))
        })
    }

    /// Takes back a pending record's sync and stores the head it made
    /// durable. An error means the record's fate is unknown: the caller
    /// stops what it describes and gives no result.
    pub(crate) fn audit_synced(
        &mut self,
        synced: Result<SyncedHead, AuditError>,
    ) -> Result<(), Error> {
        let failed =
            |e: AuditError| Error::AuditFailed(format!("the audit log could not be synced ({e})"));
        let Some(chain) = self.audit.as_mut() else {
            // Locked since: the chain went, and with it its head; the record
            // itself is durable if the sync was.
            return synced.map(drop).map_err(failed);
        };
        if let (Some(head), Some(v)) = (chain.synced(synced).map_err(failed)?, &self.vault) {
            v.set_audit_head(&head).map_err(Error::from)?;
        }
        Ok(())
    }

    /// Makes the records written behind durable and stores their head.
    pub(crate) fn flush_audit(&mut self) {
        let Some(chain) = self.audit.as_mut() else {
            return;
        };
        let synced = chain.sync().map_err(|e| e.to_string()).and_then(|head| {
            match (head, self.vault.as_ref()) {
                (Some(h), Some(v)) => v.set_audit_head(&h).map_err(|e| e.to_string()),
                _ => Ok(()),
            }
        });
        if let Err(e) = synced {
            self.unrecorded += 1;
            eprintln!("custody daemon: the audit log could not be synced: {e}");
        }
    }
}
