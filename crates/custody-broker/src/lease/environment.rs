//! What a lease's command gets from its requester's environment.

use std::collections::BTreeMap;

/// Environment variables handed through from the requester. Nothing else of
/// the requester's (or the broker's) environment reaches the child.
pub const PASSTHROUGH: &[&str] = &["PATH", "HOME", "USER", "LANG", "TERM", "TMPDIR"];

/// Longest passed-through value, and most passed-through bytes in all.
const MAX_PASSED_VALUE: usize = 32 * 1024;
const MAX_PASSED_TOTAL: usize = 256 * 1024;

/// The environment a requester's command gets besides its secrets: the
/// requester's whole environment, like `op run` (so `cargo` keeps
/// `RUSTUP_HOME` and an app its `RAILS_ENV`; an agent's is its MCP
/// server's), except variables that change how programs load
/// (`LD_PRELOAD`, `NODE_OPTIONS`, `RUSTFLAGS`, …; those of [`PASSTHROUGH`]
/// stay: the program is resolved and bound with `PATH`): a process that
/// escaped an agent's tree counts as a terminal, and must not slip a library
/// into a pre-approved command. A human puts such a variable in the command
/// itself (`-- env RUSTFLAGS=… cargo build`), where the approval shows it.
///
/// What passes is bound into the grant ([`crate::binding`]) and, where it
/// differs from the approver's, shown on the approval. An agent's run that
/// policy pre-approves, which no human sees, gets only [`PASSTHROUGH`]
/// (`preapproved`): an agent cannot point a pre-approved command elsewhere
/// (`HTTPS_PROXY`, `PGHOST`, a CA bundle) unseen. Malformed names and
/// oversized values are dropped.
pub fn passthrough_for(
    requester: &crate::grants::Requester,
    env: &BTreeMap<String, String>,
    preapproved: bool,
) -> BTreeMap<String, String> {
    let short_list = preapproved && matches!(requester, crate::grants::Requester::Agent { .. });
    let mut total = 0;
    env.iter()
        .filter(|(k, _)| {
            PASSTHROUGH.contains(&k.as_str())
                || (!short_list && !custody_core::names::changes_how_programs_load(k))
        })
        .filter(|(k, v)| {
            let ok = !k.is_empty()
                && k.len() <= 256
                && !k.contains(['=', '\0'])
                && !v.contains('\0')
                && v.len() <= MAX_PASSED_VALUE
                && total + k.len() + v.len() <= MAX_PASSED_TOTAL;
            if ok {
                total += k.len() + v.len();
            }
            ok
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// This process's environment as a request passes it (`RunSpec::passthrough`):
/// every variable with a UTF-8 name and value, except `_` (the shell's note
/// of the last command, which would make every request's environment
/// differ and no timed grant cover the next).
pub fn caller_environment() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| k != "_")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Agents and terminals pass their environment but no loader variable
    /// and nothing malformed or oversized; an agent's run pre-approved by
    /// policy passes only PATH, HOME, USER, LANG, TERM and TMPDIR.
    #[test]
    fn what_each_requester_passes() {
        use crate::grants::Requester;
        let env: BTreeMap<String, String> = [
            ("PATH", "/usr/bin"),
            ("HOME", "/home/me"),
            ("RAILS_ENV", "test"),
            ("LD_PRELOAD", "/tmp/evil.so"),
            ("NODE_OPTIONS", "--require /tmp/evil.js"),
            ("BAD=NAME", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let mut env = env;
        env.insert("HUGE".into(), "x".repeat(MAX_PASSED_VALUE + 1));
        let agent = Requester::Agent {
            client: "codex".into(),
            agent_pid: 1,
            sandboxed: false,
        };
        let names = |m: BTreeMap<String, String>| m.into_keys().collect::<Vec<_>>();
        let terminal = Requester::Terminal { session: 1 };
        for who in [&agent, &terminal] {
            assert_eq!(
                names(passthrough_for(who, &env, false)),
                ["HOME", "PATH", "RAILS_ENV"]
            );
        }
        // Pre-approved by policy, nobody sees an agent's environment.
        assert_eq!(names(passthrough_for(&agent, &env, true)), ["HOME", "PATH"]);
        assert_eq!(
            names(passthrough_for(&terminal, &env, true)),
            ["HOME", "PATH", "RAILS_ENV"]
        );
    }
}
