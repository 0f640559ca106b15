//! Grants: what an approval allows, bound exactly (G4). Anything that differs
//! in argv, cwd, environments, variable set, requester, time or use count is
//! a new request.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::protocol::RunSpec;

/// Who asks. Grants are bound to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Requester {
    /// An agent's MCP session: the agent client's name and process.
    Agent {
        /// Client name from the MCP handshake (e.g. `codex`).
        client: String,
        /// The agent client's pid (for an agent under `custody agent`:
        /// the launcher's, so its whole tree is one agent).
        agent_pid: u32,
        /// Whether it runs inside a `custody agent` sandbox.
        sandboxed: bool,
    },
    /// `custody run` from a human's terminal session (processes started from
    /// one terminal share a session id, so "for 15 minutes" means "from this
    /// terminal for 15 minutes").
    Terminal {
        /// The kernel session id of the requesting process.
        session: u32,
    },
}

impl Requester {
    /// The name policy rules match (`cli` for a terminal).
    pub fn client_name(&self) -> &str {
        match self {
            Requester::Agent { client, .. } => client,
            Requester::Terminal { .. } => "cli",
        }
    }

    /// A short description for approval screens and audit records.
    pub fn describe(&self) -> String {
        match self {
            Requester::Agent {
                client,
                agent_pid,
                sandboxed: true,
            } => format!("agent {client} (pid {agent_pid}, sandboxed)"),
            Requester::Agent {
                client, agent_pid, ..
            } => format!("unsandboxed agent {client} (pid {agent_pid})"),
            Requester::Terminal { session } => format!("terminal session {session}"),
        }
    }
}

/// The exact thing a grant covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Scope {
    /// Exact argv.
    pub argv: Vec<String>,
    /// Exact working directory.
    pub cwd: String,
    /// Environments, as a set.
    pub environments: BTreeSet<String>,
    /// Variables (resolved, `ENV/VAR`), as a set.
    pub variables: BTreeSet<String>,
    /// The resolved program, the passed-through environment and the
    /// argument files, as they were at request time (G11).
    pub binding: crate::binding::Binding,
}

impl Scope {
    /// The scope a run asks for, given its resolved variable set (the
    /// binding is left empty: the broker fills it from
    /// [`crate::binding::bind`]).
    pub fn of(spec: &RunSpec, variables: BTreeSet<String>) -> Scope {
        Scope {
            argv: spec.argv.clone(),
            cwd: spec.cwd.clone(),
            environments: spec.environments.iter().cloned().collect(),
            variables,
            binding: Default::default(),
        }
    }
}

/// An approval (or a pre-approval from policy) in force.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Id (`g-…`).
    pub id: String,
    /// The request it came from (`policy` for pre-approved rules).
    pub request_id: String,
    /// Who may use it.
    pub requester: Requester,
    /// What it covers.
    pub scope: Scope,
    /// Longest lease it allows.
    pub max_ttl: Duration,
    /// When it stops (monotonic).
    pub expires: Instant,
    /// The same, as wall-clock time for display.
    pub expires_at: SystemTime,
    /// Uses left (`None`: unlimited until expiry).
    pub uses_left: Option<u32>,
}

impl Grant {
    /// Whether this grant covers `scope` for `requester` now, with a lease
    /// of `ttl`.
    pub fn covers(
        &self,
        requester: &Requester,
        scope: &Scope,
        ttl: Duration,
        now: Instant,
    ) -> bool {
        now < self.expires
            && self.uses_left != Some(0)
            && &self.requester == requester
            && &self.scope == scope
            && ttl <= self.max_ttl
    }

    /// Takes one use; returns whether the grant is now spent.
    pub fn take_use(&mut self) -> bool {
        if let Some(n) = self.uses_left.as_mut() {
            *n = n.saturating_sub(1);
            *n == 0
        } else {
            false
        }
    }
}

/// A fresh id with a prefix: 12 random hex digits, not secret.
pub fn new_id(prefix: &str) -> String {
    let bytes: [u8; 6] = custody_core::crypto::random_array().unwrap_or_else(|_| {
        // The RNG failing is near impossible; fall back to time so ids stay
        // unique rather than crash the broker.
        let n = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let b = n.to_le_bytes();
        [b[0], b[1], b[2], b[3], b[4], b[5]]
    });
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str], cwd: &str) -> RunSpec {
        RunSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cwd: cwd.into(),
            environments: vec!["dev".into()],
            only: None,
            timeout_secs: 60,
            passthrough: Default::default(),
            capture_limit: None,
            wait_secs: None,
            pty: None,
        }
    }

    fn vars(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn grant(scope: Scope, uses: Option<u32>) -> Grant {
        Grant {
            id: new_id("g"),
            request_id: "r".into(),
            requester: Requester::Terminal { session: 7 },
            scope,
            max_ttl: Duration::from_secs(600),
            expires: Instant::now() + Duration::from_secs(60),
            expires_at: SystemTime::now(),
            uses_left: uses,
        }
    }

    /// G4: a grant does not cover anything it was not approved for.
    #[test]
    fn grant_covers_only_the_exact_request() {
        let scope = Scope::of(&spec(&["cargo", "test"], "/src"), vars(&["dev/DB"]));
        let g = grant(scope.clone(), Some(1));
        let me = Requester::Terminal { session: 7 };
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        assert!(g.covers(&me, &scope, ttl, now));

        let other_argv = Scope::of(
            &spec(&["cargo", "test", "--all"], "/src"),
            vars(&["dev/DB"]),
        );
        let other_cwd = Scope::of(&spec(&["cargo", "test"], "/src/.."), vars(&["dev/DB"]));
        let more_vars = Scope::of(
            &spec(&["cargo", "test"], "/src"),
            vars(&["dev/DB", "dev/TOKEN"]),
        );
        let mut other_env = scope.clone();
        other_env.environments.insert("prod".into());
        for s in [other_argv, other_cwd, more_vars, other_env] {
            assert!(!g.covers(&me, &s, ttl, now), "{s:?}");
        }
        assert!(!g.covers(&Requester::Terminal { session: 8 }, &scope, ttl, now));
        let agent = Requester::Agent {
            client: "codex".into(),
            agent_pid: 7,
            sandboxed: false,
        };
        assert!(!g.covers(&agent, &scope, ttl, now));
        assert!(!g.covers(&me, &scope, Duration::from_secs(601), now));
        assert!(!g.covers(&me, &scope, ttl, now + Duration::from_secs(61)));
    }

    #[test]
    fn uses_run_out() {
        let scope = Scope::of(&spec(&["true"], "/"), vars(&[]));
        let mut g = grant(scope.clone(), Some(2));
        let me = Requester::Terminal { session: 7 };
        assert!(!g.take_use());
        assert!(g.take_use());
        assert!(!g.covers(&me, &scope, Duration::from_secs(1), Instant::now()));
        let mut unlimited = grant(scope, None);
        assert!(!unlimited.take_use());
    }

    #[test]
    fn ids_are_prefixed_and_distinct() {
        let a = new_id("r");
        assert!(a.starts_with("r-") && a.len() == 14);
        assert_ne!(a, new_id("r"));
    }
}
