//! Agent client names: what real clients say in the MCP handshake, and the
//! one canonical name policy and `custody status` use for each.
//!
//! A policy written from the docs (`[clients.codex]`) must apply to the
//! client that says `codex-mcp-client`; so every name goes through
//! [`canonical`] before policy sees it, on both sides: the session's
//! handshake name and the policy file's table names.

/// One known agent client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownClient {
    /// The name policy uses (`[clients.NAME]`).
    pub canonical: &'static str,
    /// The product, for people.
    pub product: &'static str,
    /// Every name it has been seen to send in the MCP handshake
    /// (`clientInfo.name`), the canonical one included.
    pub handshake_names: &'static [&'static str],
    /// The commands that start it (`custody agent -- COMMAND` names the
    /// session after the client these belong to).
    pub commands: &'static [&'static str],
}

/// The alias table (documented in `docs/agents.md`).
pub const KNOWN_CLIENTS: &[KnownClient] = &[
    KnownClient {
        canonical: "codex",
        product: "OpenAI Codex CLI",
        handshake_names: &["codex-mcp-client", "codex"],
        commands: &["codex"],
    },
    KnownClient {
        canonical: "claude-code",
        product: "Claude Code",
        handshake_names: &["claude-code"],
        commands: &["claude"],
    },
    KnownClient {
        canonical: "gemini-cli",
        product: "Gemini CLI",
        handshake_names: &["gemini-cli-mcp-client", "gemini-cli"],
        commands: &["gemini"],
    },
    KnownClient {
        canonical: "cursor",
        product: "Cursor",
        handshake_names: &["cursor-vscode", "cursor"],
        commands: &["cursor-agent", "cursor"],
    },
];

/// The policy name of a human's terminal (`custody run`). No agent can
/// take it: an MCP session that says `cli` is [`UNKNOWN`].
pub const TERMINAL: &str = "cli";
/// The policy name of an agent session whose handshake named nobody, or
/// named the reserved [`TERMINAL`].
pub const UNKNOWN: &str = "unknown";

/// The known client a handshake or policy name belongs to.
pub fn known(name: &str) -> Option<&'static KnownClient> {
    let name = name.trim();
    KNOWN_CLIENTS.iter().find(|k| {
        k.handshake_names
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    })
}

/// The canonical policy name for an agent session's handshake name: the
/// alias table's name for a known client; the reserved names become
/// [`UNKNOWN`]; any other name is kept as sent (lower-cased).
pub fn canonical(handshake_name: &str) -> String {
    if let Some(k) = known(handshake_name) {
        return k.canonical.to_owned();
    }
    let n = handshake_name.trim().to_ascii_lowercase();
    // The name the agent picks becomes a policy name shown on approval
    // screens: only a safe set, or it is `unknown` (never a broader scope).
    let safe = n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if n.is_empty() || n == TERMINAL || n == "*" || !safe {
        return UNKNOWN.to_owned();
    }
    n
}

/// The policy name of an agent started by `custody agent -- COMMAND`
/// without `--name`: the known client whose command it is, else the
/// command's file name under [`canonical`]'s rules.
pub fn for_command(command: &str) -> String {
    let base = command.rsplit('/').next().unwrap_or(command);
    KNOWN_CLIENTS
        .iter()
        .find(|k| k.commands.contains(&base))
        .map_or_else(|| canonical(base), |k| k.canonical.to_owned())
}

/// The canonical name of a policy table: like [`canonical`], except that
/// `cli` (the terminal) and `*` (every other client) keep their meaning.
pub fn canonical_policy_name(table: &str) -> String {
    match table.trim() {
        t @ (TERMINAL | "*") => t.to_owned(),
        t => canonical(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_become_unknown() {
        for name in [
            "evil\x1b[2K",
            "a b",
            "x\u{202e}y",
            "tool/../cli",
            &"a".repeat(65),
        ] {
            assert_eq!(canonical(name), UNKNOWN, "{name:?}");
        }
        assert_eq!(canonical("My-Agent_2.0"), "my-agent_2.0");
    }

    #[test]
    fn real_handshake_names_map_to_the_documented_policy_names() {
        assert_eq!(canonical("codex-mcp-client"), "codex");
        assert_eq!(canonical("claude-code"), "claude-code");
        assert_eq!(canonical("gemini-cli-mcp-client"), "gemini-cli");
        assert_eq!(canonical("Cursor-VSCode"), "cursor");
        assert_eq!(canonical("my-own-agent"), "my-own-agent");
    }

    #[test]
    fn commands_name_their_clients() {
        assert_eq!(for_command("/usr/local/bin/claude"), "claude-code");
        assert_eq!(for_command("codex"), "codex");
        assert_eq!(for_command("gemini"), "gemini-cli");
        assert_eq!(for_command("cursor-agent"), "cursor");
        assert_eq!(for_command("bash"), "bash");
        assert_eq!(for_command("cli"), UNKNOWN);
    }

    #[test]
    fn no_agent_can_call_itself_the_terminal() {
        assert_eq!(canonical("cli"), UNKNOWN);
        assert_eq!(canonical(" CLI "), UNKNOWN);
        assert_eq!(canonical("*"), UNKNOWN);
        assert_eq!(canonical(""), UNKNOWN);
        assert_eq!(canonical_policy_name("cli"), "cli");
        assert_eq!(canonical_policy_name("*"), "*");
        assert_eq!(canonical_policy_name("codex-mcp-client"), "codex");
    }

    #[test]
    fn every_canonical_name_is_one_of_its_own_handshake_names() {
        for k in KNOWN_CLIENTS {
            assert!(k.handshake_names.contains(&k.canonical), "{k:?}");
            for n in k.handshake_names {
                assert_eq!(known(n), Some(k));
            }
        }
    }
}
