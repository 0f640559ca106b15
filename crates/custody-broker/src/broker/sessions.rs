//! Agent sessions and launchers: who is an agent, by process, and under
//! which name (G3, G9).

use super::*;

/// One entry of the sealed record of agent processes: an agent process
/// (pid, start time, name), or with the sandbox flag a launcher. Written
/// as a JSON array per entry.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Recorded {
    Launcher(u32, u64, String, bool),
    Agent(u32, u64, String),
}

/// Which processes are agents, from the state (G3).
impl State {
    pub(super) fn is_agent_process(&self, pid: u32) -> Option<u32> {
        if self.agents.is_empty() {
            return None;
        }
        // Walk up one parent at a time and stop at the first agent process:
        // a `custody mcp` connection is found with a single /proc read.
        let mut cur = pid;
        for _ in 0..procs::MAX_DEPTH {
            let (ppid, start) = procs::stat(cur)?;
            if self.agents.get(&cur) == Some(&start) {
                return Some(cur);
            }
            if ppid == 0 || ppid == cur {
                return None;
            }
            cur = ppid;
        }
        None
    }

    /// Seals the agent processes still alive into the vault (pid, start,
    /// policy name), so a broker started after this one was killed still
    /// knows them. Best effort: without an open vault it waits for unlock.
    pub(super) fn record_agents(&mut self) {
        let Some(vault) = self.vault.as_ref() else {
            return;
        };
        let mut out = Vec::new();
        self.agents
            .retain(|pid, start| procs::same_process(*pid, *start));
        let agents = &self.agents;
        self.launchers.retain(|pid, _| agents.contains_key(pid));
        for (pid, start) in &self.agents {
            if let Some(l) = self.launchers.get(pid) {
                out.push(Recorded::Launcher(
                    *pid,
                    *start,
                    l.name.clone(),
                    l.sandboxed,
                ));
                continue;
            }
            let name = self
                .session_for_agent(*pid)
                .map(|s| s.policy_name.clone())
                .or_else(|| self.recorded.get(pid).cloned())
                .unwrap_or_else(|| "agent".to_owned());
            out.push(Recorded::Agent(*pid, *start, name));
        }
        if let Ok(bytes) = serde_json::to_vec(&out) {
            let _ = vault.set_agents_record(&bytes);
        }
    }

    /// Takes in the agent processes a previous broker recorded, those still
    /// the same processes (pid and start time): their descendants are that
    /// agent's until its session registers again.
    pub(super) fn recall_agents(&mut self) {
        let Some(bytes) = self
            .vault
            .as_ref()
            .and_then(|v| v.agents_record().ok().flatten())
        else {
            return;
        };
        let Ok(list) = serde_json::from_slice::<Vec<Recorded>>(&bytes) else {
            return;
        };
        for entry in list.into_iter().take(4096) {
            let (pid, start, name, launcher) = match entry {
                Recorded::Launcher(p, s, n, sandboxed) => (p, s, n, Some(sandboxed)),
                Recorded::Agent(p, s, n) => (p, s, n, None),
            };
            if pid > 1 && procs::same_process(pid, start) {
                self.agents.insert(pid, start);
                let name = custody_core::clients::canonical(&name);
                if let Some(sandboxed) = launcher {
                    self.launchers.insert(
                        pid,
                        Launcher {
                            name,
                            sandboxed,
                            enforced: Vec::new(),
                            started: SystemTime::now(),
                        },
                    );
                } else {
                    self.recorded.insert(pid, name);
                }
            }
        }
    }

    /// The `custody agent` launcher `pid` descends from (or is), if any: a
    /// registered one, or one this broker has not heard from (it started
    /// after the launcher, and the launcher has not re-registered yet),
    /// which is taken in as an agent, unsandboxed until it registers.
    pub(super) fn launcher_of(&mut self, pid: u32) -> Option<u32> {
        // The outermost agent or launcher above `pid` decides: a launcher
        // counts only when no agent is above it (a process in an agent's
        // tree that calls itself `custody agent --name X` is still that
        // agent's, whatever X it picks).
        let mut outermost: Option<(u32, u64, Option<String>)> = None;
        let mut cur = pid;
        for _ in 0..procs::MAX_DEPTH {
            let Some((ppid, start)) = procs::stat(cur) else {
                break;
            };
            if self.agents.get(&cur) == Some(&start) {
                outermost = Some((cur, start, None));
            } else if let Some(name) = procs::launcher_name(cur) {
                outermost = Some((cur, start, Some(name)));
            }
            if ppid == 0 || ppid == cur {
                break;
            }
            cur = ppid;
        }
        let (pid, start, name) = outermost?;
        if let Some(name) = name {
            self.agents.insert(pid, start);
            self.launchers.insert(
                pid,
                Launcher {
                    name,
                    sandboxed: false,
                    enforced: Vec::new(),
                    started: SystemTime::now(),
                },
            );
        }
        self.launchers.contains_key(&pid).then_some(pid)
    }

    pub(super) fn session_for_agent(&self, agent_pid: u32) -> Option<&Session> {
        self.sessions
            .values()
            .find(|s| s.agent_pid == agent_pid || s.mcp_pid == agent_pid)
    }
}

impl Broker {
    /// Registers an agent session for the connection of `peer`. The agent is
    /// the peer's real parent (from /proc), whatever the client claims.
    pub fn register_session(
        &self,
        peer: &mut Peer,
        client_name: &str,
        client_version: &str,
        claimed_parent: u32,
    ) -> Result<SessionRegistered, Error> {
        let pid = peer
            .pid
            .ok_or_else(|| Error::Forbidden("peer pid unknown".into()))?;
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
            return Err(Error::Forbidden(format!(
                "policy requires agent '{policy_name}' to run inside the custody sandbox: the user starts it with `custody agent -- COMMAND`"
            )));
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
        Ok(SessionRegistered {
            session_id: id,
            agent_pid,
            sandboxed,
        })
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
    ) -> Result<LauncherRegistered, Error> {
        let pid = peer
            .pid
            .ok_or_else(|| Error::Forbidden("peer pid unknown".into()))?;
        let (ppid, start) =
            procs::stat(pid).ok_or_else(|| bad("cannot read the launcher's process"))?;
        // Only custody's own launcher registers (its executable this
        // binary, its command line `custody agent … -- CMD`): a script that
        // sends the request itself cannot vouch for a sandbox.
        if procs::launcher_name(pid).is_none() {
            return Err(Error::Forbidden(
                "only `custody agent` registers an agent: this process is not custody's launcher"
                    .into(),
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
                return Err(Error::Forbidden(format!(
                    "agents cannot start agents (this process belongs to agent '{client}'): the user runs `custody agent` from their own terminal"
                )));
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
            return Err(Error::Forbidden(format!(
                "policy requires agent '{name}' to run inside the custody sandbox, and this launcher runs it unsandboxed"
            )));
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
        Ok(LauncherRegistered {
            name,
            pid,
            sandboxed,
        })
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
