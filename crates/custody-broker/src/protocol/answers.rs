//! The typed answers of the requests that change or manage something:
//! vault changes, unlock and lock, sessions, the PIN exchange, policy and
//! the audit check. Same wire shape as before they were typed (a field
//! that was only sent when it said something is still skipped otherwise).

use custody_core::generate::Alphabet;
use custody_core::import::ImportOutcome;
use custody_core::vault::{EnvironmentInfo, VariableInfo};
use serde::{Deserialize, Serialize};

fn is_false(b: &bool) -> bool {
    !*b
}

/// The `hello` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version the broker speaks.
    pub protocol: u32,
    /// The broker's version.
    pub broker: String,
}

/// `watch` accepted: events follow on the connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Watching {
    /// Always `true`.
    pub watching: bool,
}

/// `env create`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnvCreated {
    /// The environment's name.
    pub created: String,
}

/// `env show` (and a description change).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnvDescribed {
    /// The environment.
    pub environment: EnvironmentInfo,
    /// Its variables (never values).
    pub variables: Vec<VariableInfo>,
    /// Whether policy asks for a fresh approval for every run in it.
    pub always_approve: bool,
}

/// `env rm`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnvRemoved {
    /// The environment's name.
    pub removed: String,
    /// How many variables went with it.
    pub variables: usize,
}

/// `set`, `declare` and `generate`: a variable stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VariableSaved {
    /// Its environment.
    pub environment: String,
    /// Its name.
    pub variable: String,
    /// New (`false`: it was there and was replaced).
    pub created: bool,
    /// `set`: the value is too short to be masked reliably.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub too_short_to_mask: Option<bool>,
    /// `generate`: the value's length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<usize>,
    /// `generate`: the characters it was drawn from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alphabet: Option<Alphabet>,
}

impl VariableSaved {
    /// The fields every such answer has.
    pub fn new(environment: String, variable: String, created: bool) -> VariableSaved {
        VariableSaved {
            environment,
            variable,
            created,
            too_short_to_mask: None,
            length: None,
            alphabet: None,
        }
    }
}

/// `unset`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VariableRemoved {
    /// Its environment.
    pub environment: String,
    /// The variable's name.
    pub removed: String,
}

/// One row of `ls`: a variable and its environment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListedVariable {
    /// Its environment.
    pub environment: String,
    /// The variable (never its value).
    #[serde(flatten)]
    pub variable: VariableInfo,
}

/// `import`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Imported {
    /// The environment imported into.
    pub environment: String,
    /// Variables created or updated.
    pub imported: usize,
    /// What the import did, line by line.
    #[serde(flatten)]
    pub outcome: ImportOutcome,
}

/// `unlock`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Unlocked {
    /// Always `true`.
    pub unlocked: bool,
    /// It was unlocked already.
    #[serde(default, skip_serializing_if = "is_false")]
    pub already: bool,
    /// What the human should know about the policy now in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_note: Option<String>,
}

/// `lock`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Locked {
    /// Always `true`.
    pub locked: bool,
    /// It was locked already.
    #[serde(default, skip_serializing_if = "is_false")]
    pub already: bool,
    /// Running leases ended by the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leases_killed: Option<usize>,
}

/// An MCP session registered for an agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRegistered {
    /// The session's id.
    pub session_id: String,
    /// The agent's process.
    pub agent_pid: u32,
    /// Whether the agent runs in custody's sandbox.
    pub sandboxed: bool,
}

/// A `custody agent` launcher registered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LauncherRegistered {
    /// The agent's name.
    pub name: String,
    /// The launcher's process.
    pub pid: u32,
    /// Whether it sandboxes the agent.
    pub sandboxed: bool,
}

/// A pending request cancelled by its requester.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestCancelled {
    /// The request's id.
    pub cancelled: String,
}

/// A pending request denied by a human.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestDenied {
    /// The request's id.
    pub denied: String,
}

/// `deny`: a human's denial, or an agent withdrawing its own request
/// (which is a cancellation, and answers as one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum DenyAnswer {
    /// A human denied it.
    Denied(RequestDenied),
    /// Its requester withdrew it.
    Cancelled(RequestCancelled),
}

/// A run that waited longer than its `wait_secs` for approval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunPending {
    /// Always `pending`.
    pub status: String,
    /// The request to follow (`request_status`).
    pub request_id: String,
    /// The command a human approves it with.
    pub approve_hint: String,
}

/// The PIN verifier's public parameters (first step of the exchange).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PinParams {
    /// Salt and costs, as the client needs them.
    pub params: String,
}

/// The broker's half of a PIN exchange.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PinReply {
    /// Its exchange message (hex).
    pub msg: String,
    /// Its key confirmation (hex).
    pub confirm: String,
}

/// A nonce for a passphrase holder's proof.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyNonce {
    /// 32 random bytes (hex).
    pub nonce: String,
}

/// `policy show`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyShown {
    /// Whether a policy was applied (else the default is in force).
    pub sealed: bool,
    /// The applied text's SHA-256 (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The applied text (empty for the default).
    pub text: String,
}

/// `policy apply`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyApplied {
    /// Whether anything changed.
    pub applied: bool,
    /// The text was the one in force already.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unchanged: bool,
    /// The text's SHA-256 (hex).
    pub sha256: String,
    /// Grants the new policy no longer allows, withdrawn (their ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants_withdrawn: Option<Vec<String>>,
}

/// `audit verify`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditVerified {
    /// Whether the chain verifies.
    pub intact: bool,
    /// Records checked (intact chains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<u64>,
    /// The sealed head's sequence number (intact chains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_seq: Option<u64>,
    /// The first record that does not verify (broken chains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<u64>,
    /// What is wrong (broken chains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn wire(v: impl Serialize) -> Value {
        serde_json::to_value(v).expect("serializes")
    }

    /// The shapes scripts read: a field that says nothing is not sent.
    #[test]
    fn answers_keep_their_wire_shape() {
        let unlocked = Unlocked {
            unlocked: true,
            already: false,
            policy_note: None,
        };
        assert_eq!(wire(&unlocked), json!({"unlocked": true}));
        let locked = Locked {
            locked: true,
            already: true,
            leases_killed: None,
        };
        assert_eq!(wire(&locked), json!({"locked": true, "already": true}));
        let saved = VariableSaved::new("prod".into(), "TOKEN".into(), true);
        assert_eq!(
            wire(&saved),
            json!({"environment": "prod", "variable": "TOKEN", "created": true})
        );
        let withdrawn = DenyAnswer::Cancelled(RequestCancelled {
            cancelled: "r-1".into(),
        });
        assert_eq!(wire(&withdrawn), json!({"cancelled": "r-1"}));
        let unchanged = PolicyApplied {
            applied: false,
            unchanged: true,
            sha256: "ab".into(),
            grants_withdrawn: None,
        };
        assert_eq!(
            wire(&unchanged),
            json!({"applied": false, "unchanged": true, "sha256": "ab"})
        );
    }

    /// Typed front ends read what the broker sends back, also the
    /// flattened rows of `ls`.
    #[test]
    fn listed_variables_round_trip() {
        let row = json!({"environment": "prod", "name": "TOKEN", "description": "",
                         "kind": "env", "is_set": true,
                         "too_short_to_mask": false, "version": 1,
                         "created_at": 0, "updated_at": 0});
        let listed: ListedVariable = serde_json::from_value(row.clone()).expect("reads");
        assert_eq!(listed.environment, "prod");
        assert_eq!(listed.variable.name, "TOKEN");
        assert_eq!(wire(&listed), row);
    }
}
