//! Grants, revocation, running leases and their bookkeeping (records for
//! the reaper, audit of starts, ends and leaks), and audit verification.

use super::*;

impl Broker {
    /// Active grants (an agent sees only its own).
    pub fn grants(&self, only: Option<&Requester>) -> Vec<GrantInfo> {
        let st = self.state();
        st.grants
            .values()
            .filter(|g| only.is_none_or(|r| &g.requester == r))
            .map(|g| GrantInfo {
                grant_id: g.id.clone(),
                request_id: g.request_id.clone(),
                requester: g.requester.describe(),
                argv: g.scope.argv.clone(),
                cwd: g.scope.cwd.clone(),
                environments: g.scope.environments.iter().cloned().collect(),
                variables: g.scope.variables.iter().cloned().collect(),
                expires_at: rfc3339(g.expires_at),
                uses_left: g.uses_left,
            })
            .collect()
    }

    /// Revokes grants and/or leases. `only`: an agent may revoke only its own.
    pub fn revoke(
        &self,
        target: &crate::protocol::RevokeTarget,
        by: &str,
        only: Option<&Requester>,
    ) -> Result<Revoked, Error> {
        use crate::protocol::RevokeTarget as T;
        let mut st = self.state();
        let mine = |r: &Requester| only.is_none_or(|o| o == r);
        let (revoked_grants, revoked_leases): (Vec<String>, Vec<String>) = match target {
            T::All => (
                st.grants
                    .values()
                    .filter(|g| mine(&g.requester))
                    .map(|g| g.id.clone())
                    .collect(),
                st.leases
                    .iter()
                    .filter(|(_, l)| mine(&l.requester))
                    .map(|(id, _)| id.clone())
                    .collect(),
            ),
            T::Grant(id) => match st.grants.get(id) {
                Some(g) if mine(&g.requester) => (
                    vec![id.clone()],
                    st.leases
                        .iter()
                        .filter(|(_, l)| &l.grant_id == id)
                        .map(|(lid, _)| lid.clone())
                        .collect(),
                ),
                _ => {
                    return Err(Error::NotFound(format!("no grant '{id}' of yours")));
                }
            },
            T::Lease(id) => match st.leases.get(id) {
                Some(l) if mine(&l.requester) => (vec![], vec![id.clone()]),
                _ => {
                    return Err(Error::NotFound(format!("no running lease '{id}' of yours")));
                }
            },
        };
        if st.audit.is_some() {
            for t in revoked_grants.iter().chain(&revoked_leases) {
                st.audit(AuditEvent::Revoke {
                    target: t.clone(),
                    by: by.to_owned(),
                })?;
            }
        }
        for g in &revoked_grants {
            st.grants.remove(g);
        }
        for l in &revoked_leases {
            if let Some(entry) = st.leases.get(l) {
                let _ = entry.stop.send(Some(EndReason::Revoked));
            }
        }
        Ok(Revoked {
            revoked_grants,
            revoked_leases,
        })
    }

    /// Running leases (`state: running`, with their dynamic credentials),
    /// then ended leases whose credentials are still being revoked
    /// (`state: revoking` or `irrevocable`, with the reason).
    pub fn leases(&self) -> Vec<LeaseListing> {
        let st = self.state();
        let creds = Self::dynamic_view(&st);
        let of = |id: &str| -> Vec<CredentialView> {
            creds.iter().filter(|c| c.lease_id == id).cloned().collect()
        };
        let mut out: Vec<LeaseListing> = st
            .leases
            .iter()
            .map(|(id, l)| LeaseListing {
                lease_id: id.clone(),
                state: "running".into(),
                reason: None,
                running: Some(l.view()),
                credentials: of(id),
            })
            .collect();
        for c in &creds {
            if out.iter().any(|l| l.lease_id == c.lease_id) {
                continue;
            }
            out.push(LeaseListing {
                lease_id: c.lease_id.clone(),
                state: match c.state {
                    CredentialState::Irrevocable => "irrevocable",
                    CredentialState::Revoking => "revoking",
                    CredentialState::Live => "live",
                }
                .into(),
                reason: c.reason.clone(),
                running: None,
                credentials: of(&c.lease_id),
            });
        }
        out
    }

    // ----- lease bookkeeping (used by run) ---------------------------------

    pub(crate) fn lease_started(
        &self,
        lease_id: &str,
        grant: &Grant,
        started: crate::lease::Started,
        ttl: Duration,
        dir: PathBuf,
        stop: watch::Sender<Option<EndReason>>,
    ) -> Result<custody_core::audit::PendingSync, Error> {
        let record = reaper::LeaseRecord {
            id: lease_id.to_owned(),
            pid: started.pid,
            start_ticks: started.start_ticks,
            dir,
            program: grant.scope.argv.first().cloned().unwrap_or_default(),
            dynamic: Vec::new(),
        };
        let record = self.dynamic_record(&record);
        // Recorded, audited and tracked under one hold of the lock, so the
        // unlock's recovery never takes it for a previous broker's lease.
        let mut st = self.state();
        reaper::persist(&self.cfg.home, st.vault.as_ref(), &record)
            .map_err(|e| Error::Internal(format!("cannot record the lease ({e}); not running")))?;
        let deadline_at = SystemTime::now() + ttl;
        // In the log now; durable before the result (`lease_start_durable`).
        let pending = st.audit_pending(AuditEvent::LeaseStart {
            lease_id: lease_id.to_owned(),
            grant_id: grant.id.clone(),
            pid: started.pid,
            pgid: started.pid,
            deadline: rfc3339(deadline_at),
        })?;
        st.leases.insert(
            lease_id.to_owned(),
            LeaseEntry {
                grant_id: grant.id.clone(),
                requester: grant.requester.clone(),
                pid: started.pid,
                argv: grant.scope.argv.clone(),
                started_at: SystemTime::now(),
                deadline_at,
                stop,
            },
        );
        Ok(pending)
    }

    /// Makes a lease's start record durable and stores the head: blocking
    /// (an `fdatasync`), for a thread of its own while the child runs (the
    /// sync was a quarter of a short run's time in the broker). If it fails
    /// the lease is stopped; the run gives the error, not a result.
    pub(crate) fn lease_start_durable(
        &self,
        lease_id: &str,
        pending: custody_core::audit::PendingSync,
    ) -> Result<(), Error> {
        let synced = pending.sync();
        let mut st = self.state();
        let recorded = st.audit_synced(synced);
        if recorded.is_err()
            && let Some(l) = st.leases.get(lease_id)
        {
            let _ = l.stop.send(Some(EndReason::Revoked));
        }
        recorded
    }

    pub(crate) fn lease_ended(&self, outcome: &crate::lease::LeaseOutcome) {
        let mut st = self.state();
        st.leases.remove(&outcome.lease_id);
        match st.dynamic.get_mut(&outcome.lease_id) {
            // With credentials, the record goes once they are revoked.
            Some(e) => e.ending = true,
            None => reaper::forget(&self.cfg.home, st.vault.as_ref(), &outcome.lease_id),
        }
        let reason = match outcome.reason {
            EndReason::Exited => audit::LeaseEndReason::Exited,
            EndReason::Deadline => audit::LeaseEndReason::Deadline,
            EndReason::Revoked | EndReason::Cancelled => audit::LeaseEndReason::Revoked,
            EndReason::Locked => audit::LeaseEndReason::Locked,
            EndReason::Shutdown => audit::LeaseEndReason::BrokerShutdown,
        };
        // Written behind: the result does not wait for its `fdatasync`.
        st.audit_behind(AuditEvent::LeaseEnd {
            lease_id: outcome.lease_id.clone(),
            exit_code: outcome.exit_code,
            signal: outcome.signal,
            mask_counts: outcome.mask_counts.clone(),
            reason,
        });
        drop(st);
        self.publish(Event::LeaseEnded {
            lease_id: outcome.lease_id.clone(),
            reason: outcome.reason.as_str().to_owned(),
        });
    }

    /// Audits the post-run leak check's findings and keeps them for
    /// `custody status`. The lease already ran; a failed audit write cannot
    /// undo it, so it is not an error here (the `leaks` in the run result
    /// still say it).
    pub(crate) fn leaks_found(&self, lease_id: &str, leaks: &[crate::scan::Leak]) {
        if leaks.is_empty() {
            return;
        }
        let mut st = self.state();
        let at = rfc3339(SystemTime::now());
        for leak in leaks {
            st.audit_after(AuditEvent::LeakFound {
                lease_id: lease_id.to_owned(),
                path: leak.path.clone(),
                variable: leak.variable.clone(),
            });
            st.recent_leaks.push_back(LeakView {
                lease_id: lease_id.to_owned(),
                path: leak.path.clone(),
                variable: leak.variable.clone(),
                at: at.clone(),
            });
            while st.recent_leaks.len() > RECENT_LEAKS {
                st.recent_leaks.pop_front();
            }
        }
    }

    /// Audits what a lease's proxy did (destinations and names only). A
    /// request sent on is written behind, like a lease's end (one per
    /// request: an `fdatasync` each would hold the broker's lock that
    /// long); a refused one is durable at once.
    pub(crate) fn proxy_event(&self, event: AuditEvent) {
        let mut st = self.state();
        match event {
            AuditEvent::ProxyRequest { .. } => st.audit_behind(event),
            _ => st.audit_after(event),
        }
    }

    /// Verifies the audit chain against the head the vault holds.
    pub fn audit_verify(&self) -> Result<AuditVerified, Error> {
        let st = self.state();
        let vault = st.vault.as_ref().ok_or_else(Error::locked)?;
        let head: Option<AuditHead> = vault.audit_head().map_err(Error::from)?;
        let key = vault.subkey(Subkey::Audit);
        match audit::verify(&self.cfg.audit_path(), &key, head.as_ref()) {
            Ok(r) => Ok(AuditVerified {
                intact: true,
                records: Some(r.records),
                head_seq: Some(r.head.seq),
                first_bad_seq: None,
                problem: None,
            }),
            Err(e) => Ok(AuditVerified {
                intact: false,
                records: None,
                head_seq: None,
                first_bad_seq: e.first_bad_seq(),
                problem: Some(e.to_string()),
            }),
        }
    }
}
