//! Unlocking and locking: the vault key, the audit chain and the sealed
//! policy come and go together.

use super::*;

impl Broker {
    /// Broker state for `custody status`.
    pub fn status(&self) -> Status {
        let st = self.state();
        Status {
            pid: std::process::id(),
            locked: st.vault.is_none(),
            vault: self.cfg.vault_path(),
            audit_unrecorded: st.unrecorded,
            sessions: st
                .sessions
                .iter()
                .map(|(id, s)| SessionView {
                    session_id: id.clone(),
                    client_name: s.client_name.clone(),
                    policy_name: s.policy_name.clone(),
                    client_version: s.client_version.clone(),
                    agent_exe: s.agent_exe.clone(),
                    pid: s.mcp_pid,
                    agent_pid: s.agent_pid,
                    sandboxed: s.sandboxed,
                    started_at: rfc3339(s.started),
                })
                .collect(),
            agents: st
                .launchers
                .iter()
                .filter(|(pid, _)| {
                    st.agents
                        .get(pid)
                        .is_some_and(|start| procs::same_process(**pid, *start))
                })
                .map(|(pid, l)| AgentView {
                    name: l.name.clone(),
                    pid: *pid,
                    sandboxed: l.sandboxed,
                    enforced: l.enforced.clone(),
                    started_at: rfc3339(l.started),
                    sessions: st.sessions.values().filter(|s| s.agent_pid == *pid).count(),
                })
                .collect(),
            pending: st.pending.len(),
            grants: st.grants.len(),
            leases: st
                .leases
                .iter()
                .map(|(id, l)| LeaseView {
                    lease_id: id.clone(),
                    lease: l.view(),
                })
                .collect(),
            pin_failures: st.pin_failures,
            idle_lock_secs: self.cfg.idle_lock.as_secs(),
            leaks: st.recent_leaks.iter().cloned().collect(),
            credentials: Self::dynamic_view(&st),
        }
    }

    /// Unlocks with the passphrase (KDF on a blocking thread), opens the audit
    /// chain, and writes what the reaper found since the last unlock.
    pub async fn unlock(
        self: &Arc<Self>,
        passphrase: custody_core::secret::Passphrase,
    ) -> Result<Unlocked, Error> {
        let already = Unlocked {
            unlocked: true,
            already: true,
            policy_note: None,
        };
        if self.state().vault.is_some() {
            return Ok(already);
        }
        if let Some((pid, comm)) = procs::tracer_of_self() {
            return Err(Error::Traced(format!(
                "the broker is being traced by pid {pid} ({comm}), which could read the vault key: refusing to unlock"
            )));
        }
        let path = self.cfg.vault_path();
        let vault = tokio::task::spawn_blocking(move || Vault::unlock(&path, passphrase.expose()))
            .await
            .map_err(|_| Error::Internal("unlock task failed".into()))?
            .map_err(Error::from)?;
        let head = vault.audit_head().map_err(Error::from)?;
        let key = vault.subkey(Subkey::Audit);
        let (chain, _report) = AuditChain::open(&self.cfg.audit_path(), &key, head.as_ref())
            .map_err(|e| {
                Error::AuditDamaged(format!(
                        "the audit log does not verify ({e}); the vault stays locked: inspect it with `custody audit verify`"
                    ))
            })?;
        if head != Some(chain.head()) {
            vault.set_audit_head(&chain.head()).map_err(Error::from)?;
        }
        crate::sys::lock_in_memory(vault.vault_key().expose());
        let (policy, policy_note) = self.sealed_policy(&vault)?;
        let mut st = self.state();
        if st.vault.is_some() {
            return Ok(already);
        }
        st.vault = Some(vault);
        st.audit = Some(chain);
        st.policy = Arc::new(policy);
        st.recall_agents();
        st.record_agents();
        st.pin_failures = 0;
        st.last_activity = Instant::now();
        let deferred = std::mem::take(&mut st.deferred);
        let mut result = st.audit(AuditEvent::Unlock {});
        for ev in deferred {
            if result.is_ok() {
                result = st.audit(ev);
            }
        }
        if let Err(e) = result {
            st.vault = None;
            st.audit = None;
            return Err(e);
        }
        drop(st);
        // Credentials a crashed broker left, and this vault's orphaned roles.
        tokio::spawn(Arc::clone(self).recover_credentials());
        Ok(Unlocked {
            unlocked: true,
            already: false,
            policy_note,
        })
    }

    /// Locks: stops every lease (waits for them to end, so their ends are
    /// audited), cancels pending requests, drops grants, then zeroizes the key.
    pub async fn lock(self: &Arc<Self>, reason: audit::LockReason) -> Locked {
        let lease_reason = if reason == audit::LockReason::Shutdown {
            EndReason::Shutdown
        } else {
            EndReason::Locked
        };
        let killed = {
            let mut st = self.state();
            if st.vault.is_none() && st.leases.is_empty() {
                return Locked {
                    locked: true,
                    already: true,
                    leases_killed: None,
                };
            }
            for (_, mut p) in std::mem::take(&mut st.pending) {
                if let Some(n) = p.notify.take() {
                    let _ = n.send(Decision::Locked);
                }
            }
            st.grants.clear();
            for l in st.leases.values() {
                let _ = l.stop.send(Some(lease_reason));
            }
            st.leases.len()
        };
        // A lease ends within two graces (SIGTERM → grace → SIGKILL for the
        // child, then the same for what it left in its group); wait a little
        // beyond that so every lease's end is audited before the lock record.
        let until = Instant::now() + 2 * self.cfg.kill_grace + Duration::from_secs(2);
        // Then their credentials' first revocation attempts (an irrevocable
        // one keeps its record on disk for the next unlock).
        let busy = |st: &State| {
            !st.leases.is_empty() || st.dynamic.values().any(|e| e.irrevocable.is_none())
        };
        crate::retry::poll_until(until, Duration::from_millis(20), || !busy(&self.state())).await;
        let mut st = self.state();
        st.audit_after(AuditEvent::Lock { reason });
        st.dynamic.clear(); // Their records stay on disk for the next unlock.
        st.policy = Arc::new(Policy::default());
        st.vault = None; // Vault's keys zeroize on drop.
        st.audit = None;
        drop(st);
        self.engines.clear();
        self.publish(Event::Locked);
        Locked {
            locked: true,
            already: false,
            leases_killed: Some(killed),
        }
    }
}
