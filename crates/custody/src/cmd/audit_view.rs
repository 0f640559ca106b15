//! `custody audit` for people: "what did my agent do today?" — a table in
//! local time with who, what and which environment, filters, and a
//! one-screen summary. The records link up by id (request → grant →
//! lease), so a lease's row names the agent that asked for it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use custody_core::audit::AuditRecord;
use serde_json::Value;

use crate::output;

/// What to show.
#[derive(Debug, Default)]
pub struct Filter {
    /// Rows whose "who" contains this (case-insensitive).
    pub agent: Option<String>,
    /// Rows that concern this environment.
    pub env: Option<String>,
    /// Only these record types.
    pub types: Vec<String>,
}

/// One record, for people.
#[derive(Debug, Clone)]
pub struct Row {
    pub seq: u64,
    pub time: String,
    pub kind: String,
    pub who: String,
    pub what: String,
    pub envs: Vec<String>,
    event: Value,
}

/// What earlier records said, to name who is behind a later one.
#[derive(Default)]
pub struct Links {
    /// request id → (who, environments, argv)
    requests: HashMap<String, (String, Vec<String>, Vec<String>)>,
    grants: HashMap<String, String>,
    leases: HashMap<String, String>,
    /// Requests a human decided (a grant without one came from policy).
    decided: BTreeSet<String>,
    sessions: HashMap<String, String>,
}

/// "agent codex (pid 7, sandboxed)" → "codex"; a terminal → "you".
fn short_who(requester: &str) -> String {
    let rest = requester
        .strip_prefix("unsandboxed agent ")
        .or_else(|| requester.strip_prefix("agent "));
    match rest {
        Some(r) => r.split(" (").next().unwrap_or(r).to_owned(),
        None if requester.starts_with("terminal") => "you".to_owned(),
        None => requester.to_owned(),
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_owned))
        .collect()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

impl Links {
    /// The row for `r`, remembering what later records need.
    pub fn row(&mut self, r: &AuditRecord) -> Row {
        let event = serde_json::to_value(&r.event).unwrap_or(Value::Null);
        let kind = s(&event["type"]).to_owned();
        let e = &event;
        let from_request = |links: &Links, rid: &str| {
            links
                .requests
                .get(rid)
                .cloned()
                .unwrap_or_else(|| (String::new(), Vec::new(), Vec::new()))
        };
        let (who, what, envs) = match kind.as_str() {
            "request" => {
                let who = short_who(s(&e["requester"]));
                let argv = strs(&e["argv"]);
                let envs = strs(&e["environments"]);
                self.requests.insert(
                    s(&e["request_id"]).to_owned(),
                    (who.clone(), envs.clone(), argv.clone()),
                );
                let what = format!(
                    "asked to run `{}` ({})",
                    super::argv_line(&e["argv"]),
                    s(&e["request_id"])
                );
                (who, what, envs)
            }
            "approval" | "denial" | "request_expired" => {
                let rid = s(&e["request_id"]);
                self.decided.insert(rid.to_owned());
                let (asker, envs, argv) = from_request(self, rid);
                let verb = match kind.as_str() {
                    "approval" => "you approved".to_owned(),
                    "denial" => format!("denied ({})", e["reason"].as_str().unwrap_or("by you")),
                    _ => "nobody decided in time".to_owned(),
                };
                let cmd = super::argv_words(&argv);
                (asker, format!("{verb}: `{cmd}` ({rid})"), envs)
            }
            "grant" => {
                let rid = s(&e["request_id"]).to_owned();
                self.grants
                    .insert(s(&e["grant_id"]).to_owned(), rid.clone());
                let (asker, envs, _) = from_request(self, &rid);
                let by = if self.decided.contains(&rid) {
                    ""
                } else {
                    "pre-approved by policy: "
                };
                (
                    asker,
                    format!(
                        "{by}grant {} until {}",
                        s(&e["grant_id"]),
                        s(&e["expires_at"])
                    ),
                    envs,
                )
            }
            "lease_start" => {
                let gid = s(&e["grant_id"]);
                let rid = self.grants.get(gid).cloned().unwrap_or_default();
                self.leases
                    .insert(s(&e["lease_id"]).to_owned(), rid.clone());
                let (asker, envs, argv) = from_request(self, &rid);
                let cmd = super::argv_words(&argv);
                (asker, format!("ran `{cmd}` ({})", s(&e["lease_id"])), envs)
            }
            "lease_end" => {
                let lid = s(&e["lease_id"]);
                let rid = self.leases.get(lid).cloned().unwrap_or_default();
                let (asker, envs, _) = from_request(self, &rid);
                let how = match (e["exit_code"].as_i64(), e["signal"].as_i64()) {
                    (Some(c), _) => format!("exit {c}"),
                    (None, Some(sig)) => format!("signal {sig}"),
                    _ => "ended".to_owned(),
                };
                let masked: Vec<String> = e["mask_counts"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}×{v}"))
                    .collect();
                let masked = if masked.is_empty() {
                    String::new()
                } else {
                    format!(", masked {}", masked.join(" "))
                };
                (
                    asker,
                    format!("{lid} ended ({}): {how}{masked}", s(&e["reason"])),
                    envs,
                )
            }
            "session_start" => {
                let name = s(&e["client_name"]).to_owned();
                self.sessions
                    .insert(s(&e["session_id"]).to_owned(), name.clone());
                (
                    name,
                    format!("connected over MCP ({})", s(&e["session_id"])),
                    Vec::new(),
                )
            }
            "session_end" => {
                let sid = s(&e["session_id"]);
                let name = self.sessions.get(sid).cloned().unwrap_or_default();
                (name, format!("disconnected ({sid})"), Vec::new())
            }
            "agent_start" => (
                s(&e["name"]).to_owned(),
                if e["sandboxed"] == Value::Bool(true) {
                    "started in custody's sandbox (custody agent)".to_owned()
                } else {
                    "started UNSANDBOXED (custody agent --allow-unsandboxed)".to_owned()
                },
                Vec::new(),
            ),
            "vault_change" | "vault_change_refused" => {
                let env = s(&e["environment"]).to_owned();
                let target = match e["variable"].as_str() {
                    Some(v) => format!("{env}/{v}"),
                    None => env.clone(),
                };
                let verb = if kind == "vault_change" {
                    ""
                } else {
                    "refused: "
                };
                (
                    short_who(s(&e["by"])),
                    format!("{verb}{} {target}", s(&e["action"])),
                    vec![env],
                )
            }
            "revoke" => (
                short_who(s(&e["by"])),
                format!("revoked {}", s(&e["target"])),
                Vec::new(),
            ),
            "lock" => (
                String::new(),
                format!("vault locked ({})", s(&e["reason"])),
                Vec::new(),
            ),
            "unlock" => ("you".to_owned(), "vault unlocked".to_owned(), Vec::new()),
            _ => {
                let mut rest = e.clone();
                if let Some(o) = rest.as_object_mut() {
                    o.remove("type");
                }
                (String::new(), format!("{kind} {rest}"), Vec::new())
            }
        };
        Row {
            seq: r.seq,
            time: r.time.clone(),
            kind,
            who,
            what,
            envs,
            event,
        }
    }
}

impl Filter {
    /// Whether `row` passes.
    pub fn keeps(&self, row: &Row) -> bool {
        let agent_ok = self
            .agent
            .as_ref()
            .is_none_or(|a| row.who.to_lowercase().contains(&a.to_lowercase()));
        let env_ok = self
            .env
            .as_ref()
            .is_none_or(|e| row.envs.iter().any(|x| x == e));
        let type_ok = self.types.is_empty() || self.types.contains(&row.kind);
        agent_ok && env_ok && type_ok
    }
}

/// `2026-12-03T18:50:06.855Z` in local time, `Dec 03 19:50:06`, and how
/// long ago.
fn local(time: &str, now: jiff::Timestamp) -> (String, String) {
    let Ok(t) = time.parse::<jiff::Timestamp>() else {
        return (time.to_owned(), String::new());
    };
    let zoned = t.to_zoned(jiff::tz::TimeZone::system());
    let shown = zoned.strftime("%b %d %H:%M:%S").to_string();
    let secs = now.as_second().saturating_sub(t.as_second()).max(0);
    let ago = match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    };
    (shown, ago)
}

/// Prints `row` as a table line (everything the agent can influence is
/// escaped).
pub fn print_row(row: &Row) {
    let (when, ago) = local(&row.time, jiff::Timestamp::now());
    println!(
        "{:>6}  {when} {:>8}  {:<14} {:<14} {}",
        row.seq,
        ago,
        output::field(&row.who),
        output::field(&row.envs.join(",")),
        output::field(&row.what),
    );
}

/// The header of the table.
pub fn print_header() {
    println!(
        "{:>6}  {:<15} {:>8}  {:<14} {:<14} WHAT",
        "SEQ", "WHEN", "", "WHO", "ENV"
    );
}

/// Counts per actor for `--summary`.
#[derive(Default)]
struct Tally {
    requests: u64,
    approved: u64,
    denied: u64,
    expired: u64,
    runs: u64,
    failed: u64,
    masked: u64,
    envs: BTreeSet<String>,
}

/// `custody audit --summary`: one screen, per agent (and you).
pub fn print_summary(rows: &[Row], since: &str) {
    let mut by: BTreeMap<String, Tally> = BTreeMap::new();
    let mut changes = 0;
    let mut leaks = 0;
    let mut sessions = 0;
    for r in rows {
        let who = if r.who.is_empty() {
            "(custody)"
        } else {
            &r.who
        };
        let t = by.entry(who.to_owned()).or_default();
        t.envs.extend(r.envs.iter().cloned());
        match r.kind.as_str() {
            "request" => t.requests += 1,
            "approval" => t.approved += 1,
            "denial" => t.denied += 1,
            "request_expired" => t.expired += 1,
            "lease_start" => t.runs += 1,
            "lease_end" => {
                if r.event["exit_code"].as_i64().is_none_or(|c| c != 0) {
                    t.failed += 1;
                }
                t.masked += r.event["mask_counts"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(_, v)| v.as_u64())
                    .sum::<u64>();
            }
            "vault_change" => changes += 1,
            "leak_found" => leaks += 1,
            "session_start" => sessions += 1,
            _ => {}
        }
    }
    println!("Since {since}: {} records", rows.len());
    for (who, t) in &by {
        if t.requests + t.runs == 0 {
            continue;
        }
        println!(
            "  {:<16} {} request(s): {} approved, {} denied, {} expired; {} run(s), {} not exit 0; values masked {} time(s); {}",
            output::field(who),
            t.requests,
            t.approved,
            t.denied,
            t.expired,
            t.runs,
            t.failed,
            t.masked,
            if t.envs.is_empty() {
                "no environment".to_owned()
            } else {
                output::field(&t.envs.iter().cloned().collect::<Vec<_>>().join(", "))
            }
        );
    }
    println!(
        "  agent sessions: {sessions}; vault changes: {changes}; leaks found after runs: {leaks}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_is_shortened_for_the_table() {
        assert_eq!(short_who("unsandboxed agent codex (pid 7)"), "codex");
        assert_eq!(
            short_who("agent claude-code (pid 9, sandboxed)"),
            "claude-code"
        );
        assert_eq!(short_who("terminal session 42"), "you");
    }
}
