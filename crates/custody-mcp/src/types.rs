//! Tool inputs and outputs: the public interface agents see (names of tools
//! and fields are stable). Outputs hold names, ids, decisions and masked
//! output only, never a value.

use rmcp::schemars::{self, JsonSchema};
use serde::{Deserialize, Serialize};

/// How a variable is delivered to a command.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// As an environment variable.
    Env,
    /// As the path of an ephemeral 0600 file (TLS keys, kubeconfigs, ...).
    File,
}

impl From<Kind> for custody_core::vault::VarKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Env => custody_core::vault::VarKind::Env,
            Kind::File => custody_core::vault::VarKind::File,
        }
    }
}

/// Which characters a generated value uses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Alphabet {
    /// `A-Z a-z 0-9`.
    #[default]
    Alnum,
    /// `0-9 a-f`.
    Hex,
    /// `A-Z a-z 0-9 - _` (safe in URLs and file names).
    Base64url,
    /// Alphanumerics plus shell-safe punctuation.
    Symbols,
}

impl From<Alphabet> for custody_core::generate::Alphabet {
    fn from(a: Alphabet) -> Self {
        match a {
            Alphabet::Alnum => custody_core::generate::Alphabet::Alnum,
            Alphabet::Hex => custody_core::generate::Alphabet::Hex,
            Alphabet::Base64url => custody_core::generate::Alphabet::Base64url,
            Alphabet::Symbols => custody_core::generate::Alphabet::Symbols,
        }
    }
}

/// No arguments.
#[derive(Debug, Deserialize, JsonSchema, Default)]
pub struct NoArgs {}

/// `create_environment` input.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct CreateEnvironmentArgs {
    /// Environment name, e.g. `shop-dev` (lowercase letters, digits, `-`, `_`).
    pub name: String,
    /// What it is for (the user and other agents read this).
    #[serde(default)]
    pub description: String,
}

/// `declare_variable` input.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct DeclareVariableArgs {
    /// The environment.
    pub environment: String,
    /// Variable name, e.g. `STRIPE_API_KEY`.
    pub name: String,
    /// What the value is and where the user gets it.
    #[serde(default)]
    pub description: Option<String>,
    /// `env` (default) or `file`.
    #[serde(default)]
    pub kind: Option<Kind>,
}

/// `generate_secret` input.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct GenerateSecretArgs {
    /// The environment.
    pub environment: String,
    /// Variable name, e.g. `SESSION_SECRET`.
    pub name: String,
    /// Length in characters (16 to 4096; default 32).
    #[serde(default)]
    pub length: Option<usize>,
    /// Characters used (default `alnum`).
    #[serde(default)]
    pub alphabet: Option<Alphabet>,
    /// What the value is for.
    #[serde(default)]
    pub description: Option<String>,
    /// `env` (default) or `file`.
    #[serde(default)]
    pub kind: Option<Kind>,
}

/// `run` input.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunArgs {
    /// Environments whose variables are injected.
    pub environments: Vec<String>,
    /// The exact argv, e.g. `["cargo", "test"]`; no shell unless you name one.
    pub command: Vec<String>,
    /// Absolute working directory (default: the server's).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Hard deadline in seconds; the process group is killed after it (default 600).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    /// Only these variables (`VAR` or `ENV/VAR`); default: all of the environments'.
    #[serde(default)]
    pub only: Option<Vec<String>>,
}

/// `request_status` input.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RequestStatusArgs {
    /// The id a pending `run` returned (`r-…`).
    pub request_id: String,
}

/// `revoke_grant` input.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RevokeGrantArgs {
    /// A grant id (`g-…`) from `list_grants`, or a running lease id (`l-…`).
    pub grant_id: String,
}

/// `audit_tail` input.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct AuditTailArgs {
    /// Most records (1 to 500; default 50).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// A variable, as listed: never its value.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct VariableView {
    /// Its name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// `env`, `file`, or a dynamic source such as `postgres:main` (each run
    /// gets a fresh credential, revoked when it ends).
    pub kind: String,
    /// Whether a value is stored (if not, ask the user to `custody set` it).
    pub is_set: bool,
}

/// An environment, as listed.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct EnvironmentView {
    /// Its name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Every run needs a fresh human approval, and agents cannot change it.
    pub always_approve: bool,
    /// Its variables.
    pub variables: Vec<VariableView>,
}

/// `list_environments` output.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct EnvironmentList {
    /// The environments this client may see.
    pub environments: Vec<EnvironmentView>,
}

/// Output of `create_environment`, `declare_variable` and `generate_secret`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct VaultChange {
    /// The environment.
    pub environment: String,
    /// The variable, for variable changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variable: Option<String>,
    /// Whether it was created (false: it existed and was updated).
    pub created: bool,
    /// What happened and what comes next.
    pub message: String,
}

/// A file the post-run leak check found holding a secret value.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub struct LeakView {
    /// The file, relative to the run's working directory.
    pub path: String,
    /// The variable whose value (in some form) it holds.
    pub variable: String,
}

/// Output of `run` and `request_status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct RunOutcome {
    /// `finished`, `pending` (ask the user to approve, then call
    /// `request_status`), `running` (approved, still running: call
    /// `request_status` again), `denied`, `expired`, `cancelled` or `locked`.
    pub status: String,
    /// The approval request, while one exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// What the user runs to approve: `custody approve <id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approve_hint: Option<String>,
    /// Exit code, if the process exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal number, if it was killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Why it ended: `exited`, `deadline`, `revoked`, `locked`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
    /// Standard output (tail, at most 1 MiB), every secret value masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// Standard error (tail, at most 1 MiB), every secret value masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// How many secret values were masked in the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_count: Option<u64>,
    /// Whether stdout or stderr was cut to its tail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
    /// The lease the process ran under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    /// Wall time in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Files under the working directory, written during the run, that now
    /// hold a secret value (the post-run leak check): remove them, never
    /// commit them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaks: Option<Vec<LeakView>>,
    /// What to do next, when there is something to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Bound variables: the process held placeholders, and the lease's
    /// proxy put the values in on requests to their destinations only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyView>,
}

/// What a lease's proxy did, by variable name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct ProxyView {
    /// Each bound variable and the destinations its value may go to.
    pub bound: std::collections::BTreeMap<String, Vec<String>>,
    /// Requests sent on through the proxy.
    pub requests: u64,
    /// How many requests each variable's value was put in.
    pub injected: std::collections::BTreeMap<String, u64>,
    /// Requests refused because they carried a bound variable (its
    /// placeholder or value, in any encoding) to another destination.
    pub blocked: Vec<ProxyBlockView>,
}

/// One refused request.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ProxyBlockView {
    /// `https://host[:port]`.
    pub destination: String,
    /// Method and path.
    pub request: String,
    /// The variables it carried.
    pub variables: Vec<String>,
}

/// A grant in force.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct GrantView {
    /// Grant id (`g-…`).
    pub grant_id: String,
    /// The request it came from (`policy` when pre-approved).
    pub request_id: String,
    /// The exact argv it covers.
    pub argv: Vec<String>,
    /// The exact working directory it covers.
    pub cwd: String,
    /// Environments it covers.
    pub environments: Vec<String>,
    /// Variables (`ENV/VAR`) it injects.
    pub variables: Vec<String>,
    /// When it ends (RFC 3339 UTC).
    pub expires_at: String,
    /// Runs left (absent: unlimited until it expires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses_left: Option<u64>,
}

/// `list_grants` output.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct GrantList {
    /// This session's grants.
    pub grants: Vec<GrantView>,
}

/// `revoke_grant` output.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Revoked {
    /// Grants revoked.
    pub revoked_grants: Vec<String>,
    /// Running leases killed.
    pub revoked_leases: Vec<String>,
}

/// One audit record.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct AuditEntry {
    /// Position in the chain.
    pub seq: u64,
    /// When (RFC 3339 UTC).
    pub time: String,
    /// The event: `type` plus its fields (names and ids only).
    pub event: serde_json::Map<String, serde_json::Value>,
}

/// `audit_tail` output.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct AuditTail {
    /// This session's records, oldest first.
    pub records: Vec<AuditEntry>,
}
