//! Agent sessions and launchers: who is an agent, by process, and under
//! which name (G3, G9).

use super::*;

impl Broker {
    /// Registers an agent session for the connection of `peer`. The agent is
    /// the peer's real parent (from /proc), whatever the client claims.
    pub fn register_session(
        &self,
        peer: &mut Peer,
        client_name: &str,
        client_version: &str,
        claimed_parent: u32,
    ) -> Result<Value, WireError> {
        let pid = peer
            .pid
            .ok_or_else(|| WireError::new("forbidden", "peer pid unknown"))?;
        let (ppid, _) = procs::stat(pid).ok_or_else(|| bad("cannot read the session's process"))?;
        let id = new_id("s");
        let mut st = self.state();
        // Under `custody agent` the session is the launcher's agent: its
        // name (the human's choice), its whole tree, its sandbox. Inside
        // the agent's PID namespace the session knows its parent by another
        // number, so only a session outside one must name it right.
        let launcher = st.launcher_of(pid);
        if launcher.is_none() && claimed_parent != ppid {
            return Err(bad(format!(
                "parent_pid {claimed_parent} is not the session's parent ({ppid})"
            )));
        }
        let (policy_name, agent_pid, sandboxed) =
            match launcher.and_then(|l| st.launchers.get(&l).map(|x| (l, x))) {
                Some((l, x)) => (x.name.clone(), l, x.sandboxed),
                None => (custody_core::clients::canonical(client_name), ppid, false),
            };
        if !sandboxed && st.policy.require_sandbox(&policy_name) {
            // Refused, and still known as an agent: its tree never passes
            // for a terminal.
            for p in [pid, ppid] {
                if let Some((_, start)) = procs::stat(p) {
                    st.agents.insert(p, start);
                }
            }
            return Err(WireError::new(
                "forbidden",
                format!(
                    "policy requires agent '{policy_name}' to run inside the custody sandbox: the user starts it with `custody agent -- COMMAND`"
                ),
            ));
        }
        if launcher.is_none() {
            for p in [pid, ppid] {
                if let Some((_, start)) = procs::stat(p) {
                    st.agents.insert(p, start);
                }
            }
        }
        st.audit_or_defer(AuditEvent::SessionStart {
            session_id: id.clone(),
            client_name: client_name.to_owned(),
            client_version: client_version.to_owned(),
            pid,
            parent_pid: Some(ppid),
        })?;
        st.sessions.insert(
            id.clone(),
            Session {
                client_name: client_name.to_owned(),
                policy_name,
                client_version: client_version.to_owned(),
                agent_exe: std::fs::read_link(format!("/proc/{ppid}/exe"))
                    .ok()
                    .map(|p| p.display().to_string()),
                mcp_pid: pid,
                agent_pid,
                sandboxed,
                started: SystemTime::now(),
            },
        );
        st.record_agents();
        peer.session = Some(id.clone());
        Ok(json!({"session_id": id, "agent_pid": agent_pid, "sandboxed": sandboxed}))
    }

    /// `custody agent`: registers the launcher `peer` (a human's process)
    /// as an agent named `name`; every process that descends from it is that
    /// agent from now on, also for a broker started later (sealed record).
    pub fn register_launcher(
        &self,
        peer: &Peer,
        name: &str,
        sandboxed: bool,
        enforced: Vec<String>,
    ) -> Result<Value, WireError> {
        let pid = peer
            .pid
            .ok_or_else(|| WireError::new("forbidden", "peer pid unknown"))?;
        let (ppid, start) =
            procs::stat(pid).ok_or_else(|| bad("cannot read the launcher's process"))?;
        // Only custody's own launcher registers (its executable this
        // binary, its command line `custody agent … -- CMD`): a script that
        // sends the request itself cannot vouch for a sandbox.
        if procs::launcher_name(pid).is_none() {
            return Err(WireError::new(
                "forbidden",
                "only `custody agent` registers an agent: this process is not custody's launcher",
            ));
        }
        {
            // The launcher is itself a launcher by its command line: what
            // counts is whose tree it was started in.
            let mut st = self.state();
            if let Some(hit) = st.is_agent_process(ppid).or_else(|| st.launcher_of(ppid)) {
                let client = st
                    .launchers
                    .get(&hit)
                    .map(|l| l.name.clone())
                    .or_else(|| st.session_for_agent(hit).map(|s| s.policy_name.clone()))
                    .or_else(|| st.recorded.get(&hit).cloned())
                    .unwrap_or_else(|| "agent".to_owned());
                return Err(WireError::new(
                    "forbidden",
                    format!(
                        "agents cannot start agents (this process belongs to agent '{client}'): the user runs `custody agent` from their own terminal"
                    ),
                ));
            }
        }
        let name = custody_core::clients::canonical(name);
        // What the launcher reports is shown in `status`: a short, plain list.
        let enforced: Vec<String> = enforced
            .into_iter()
            .filter(|e| {
                e.len() <= 64
                    && e.chars()
                        .all(|c| c.is_ascii_alphanumeric() || " _-./:()".contains(c))
            })
            .take(32)
            .collect();
        let mut st = self.state();
        if !sandboxed && st.policy.require_sandbox(&name) {
            return Err(WireError::new(
                "forbidden",
                format!(
                    "policy requires agent '{name}' to run inside the custody sandbox, and this launcher runs it unsandboxed"
                ),
            ));
        }
        let event = AuditEvent::AgentStart {
            name: name.clone(),
            pid,
            sandboxed,
            enforced: enforced.clone(),
        };
        st.audit_or_defer(event)?;
        st.agents.insert(pid, start);
        st.launchers.insert(
            pid,
            Launcher {
                name: name.clone(),
                sandboxed,
                enforced,
                started: SystemTime::now(),
            },
        );
        st.record_agents();
        Ok(json!({"name": name, "pid": pid, "sandboxed": sandboxed}))
    }

    /// Ends a session when its connection closes. When it was the agent's
    /// last session, the agent's pending requests are cancelled and its
    /// grants dropped (each audited): nothing it asked for outlives it.
    pub fn end_session(&self, id: &str) {
        let mut st = self.state();
        let Some(session) = st.sessions.remove(id) else {
            return;
        };
        st.audit_after(AuditEvent::SessionEnd {
            session_id: id.to_owned(),
        });
        let agent = session.agent_pid;
        if st.sessions.values().any(|s| s.agent_pid == agent) {
            return;
        }
        let by = format!("broker (session {id} ended)");
        let theirs =
            |r: &Requester| matches!(r, Requester::Agent { agent_pid, .. } if *agent_pid == agent);
        let requests: Vec<String> = st
            .pending
            .iter()
            .filter(|(_, p)| theirs(&p.requester))
            .map(|(r, _)| r.clone())
            .collect();
        for r in requests {
            st.audit_after(AuditEvent::Revoke {
                target: r.clone(),
                by: by.clone(),
            });
            Self::decide(&mut st, &r, Decision::Cancelled);
        }
        let grants: Vec<String> = st
            .grants
            .iter()
            .filter(|(_, g)| theirs(&g.requester))
            .map(|(g, _)| g.clone())
            .collect();
        for g in grants {
            st.grants.remove(&g);
            st.audit_after(AuditEvent::Revoke {
                target: g,
                by: by.clone(),
            });
        }
    }

    /// Whether `pid` descends from a registered agent (or is one).
    pub fn is_agent_pid(&self, pid: u32) -> bool {
        self.state().is_agent_process(pid).is_some()
    }

    /// Who a connection is, for grants and policy.
    pub fn requester(&self, peer: &Peer) -> Requester {
        let mut st = self.state();
        if let Some(s) = peer.session.as_ref().and_then(|id| st.sessions.get(id)) {
            return Requester::Agent {
                client: s.policy_name.clone(),
                agent_pid: s.agent_pid,
                sandboxed: s.sandboxed,
            };
        }
        let pid = peer.pid.unwrap_or(0);
        let hit = st.is_agent_process(pid).or_else(|| st.launcher_of(pid));
        if let Some(hit) = hit {
            // The hit may be the agent client or one of its `custody mcp`
            // processes; either way the identity is the agent client's, so
            // every connection of a session shares its grants.
            if let Some(l) = st.launchers.get(&hit) {
                return Requester::Agent {
                    client: l.name.clone(),
                    agent_pid: hit,
                    sandboxed: l.sandboxed,
                };
            }
            let (client, agent_pid) = st.session_for_agent(hit).map_or_else(
                || {
                    let name = st.recorded.get(&hit).cloned();
                    (name.unwrap_or_else(|| "agent".to_owned()), hit)
                },
                |s| (s.policy_name.clone(), s.agent_pid),
            );
            return Requester::Agent {
                client,
                agent_pid,
                sandboxed: false,
            };
        }
        Requester::Terminal {
            session: procs::session_id(pid).unwrap_or(pid),
        }
    }
}
