//! The MCP server: one method per tool, each a thin translation between MCP
//! and a broker request. The broker decides, injects, masks and audits; this
//! process only ever sees names, ids, decisions and masked output.

use std::sync::Arc;
use std::time::Duration;

use custody_broker::protocol::{Request, RequestState, RevokeTarget, RunSpec};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::schema_for_output;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, ErrorData, ProgressNotificationParam, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{RoleServer, ServerHandler, tool, tool_handler, tool_router};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::link::{AgentClient, Link, LinkError};
use crate::runs::{Flight, Phase, Runs, Waited};
use crate::types::*;

mod grant_tools;
mod run_tools;
mod vault_tools;

/// Bytes of the result's stdout/stderr the broker keeps (tail).
const CAPTURE_LIMIT: usize = 1 << 20;
/// Bytes of each stream repeated in the text block (tail).
const TEXT_TAIL: usize = 16 * 1024;
/// Default lease deadline.
const DEFAULT_TIMEOUT_SECS: u64 = 600;
/// Time between progress notifications while a run waits or runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

const INSTRUCTIONS: &str = "custody lets you use secrets without ever seeing them. \
`list_environments` shows environments and variable names (never values). \
To use secrets, call `run` with the environments and the exact argv: custody injects the values, \
runs it after the user approves, and returns the output with every secret masked. \
If `run` answers status \"pending\", tell the user to run the `approve_hint` command \
(e.g. `custody approve r-…`) in their terminal, then call `request_status` with the request_id. \
Missing values: `declare_variable` makes an empty slot and the user fills it with `custody set`; \
`generate_secret` stores a random value nobody sees. You can never read, print or export a value; \
do not try to work around the masking.";

/// Settings for the server.
#[derive(Debug, Clone)]
pub struct McpConfig {
    /// The broker socket.
    pub socket: std::path::PathBuf,
    /// How long `run` waits for an approval before answering `pending`
    /// (keep it under the client's tool-call timeout).
    pub approval_wait: Duration,
}

struct Inner {
    cfg: McpConfig,
    link: Arc<Link>,
    /// Runs answered `pending`, still followed for `request_status`.
    runs: Runs,
}

/// The custody MCP server.
#[derive(Clone)]
pub struct CustodyMcp {
    inner: Arc<Inner>,
    tool_router: ToolRouter<CustodyMcp>,
}

impl std::fmt::Debug for CustodyMcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustodyMcp")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

/// A tool's answer: a structured result with a short text, or an error
/// result (`isError`) whose text says what to do.
fn ok<T: Serialize>(value: &T, text: String) -> Result<CallToolResult, ErrorData> {
    let v = serde_json::to_value(value)
        .map_err(|_| ErrorData::internal_error("cannot encode the result", None))?;
    let mut r = CallToolResult::structured(v);
    r.content = vec![ContentBlock::text(text)];
    Ok(r)
}

fn fail(e: &LinkError) -> Result<CallToolResult, ErrorData> {
    Ok(CallToolResult::error(vec![ContentBlock::text(format!(
        "custody: {e} [{}]",
        e.code()
    ))]))
}

fn from<T: DeserializeOwned>(v: Value) -> Result<T, LinkError> {
    serde_json::from_value(v)
        .map_err(|_| LinkError::Connection("unexpected answer from the broker".into()))
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = s.len() - max;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// A `pending` answer for request `id`.
fn pending_outcome(id: &str, message: String) -> RunOutcome {
    RunOutcome {
        status: "pending".into(),
        approve_hint: Some(format!("custody approve {id}")),
        message: Some(message),
        request_id: Some(id.to_owned()),
        ..RunOutcome::default()
    }
}

/// The answer for a request that ended without running: `denied`,
/// `expired`, `cancelled` or `locked` (`reason`: the broker's word on why).
fn decided(id: &str, status: &str, reason: Option<&str>) -> RunOutcome {
    let message = match status {
        "denied" => format!(
            "request {id} was denied{}; do not retry the same command without asking the user",
            reason.map(|r| format!(" ({r})")).unwrap_or_default()
        ),
        "locked" => format!(
            "request {id} ended because the vault was locked: ask the user to run `custody unlock`"
        ),
        other => format!("request {id} is {other}; call run again if it is still needed"),
    };
    RunOutcome {
        status: status.to_owned(),
        message: Some(message),
        request_id: Some(id.to_owned()),
        ..RunOutcome::default()
    }
}

impl CustodyMcp {
    /// A server talking to the broker at `cfg.socket`.
    pub fn new(cfg: McpConfig) -> CustodyMcp {
        CustodyMcp {
            inner: Arc::new(Inner {
                link: Arc::new(Link::new(cfg.socket.clone())),
                cfg,
                runs: Runs::default(),
            }),
            tool_router: Self::standard_tool_router(),
        }
    }

    /// The tools, with schemas strict validators accept (see [`crate::schema`]).
    fn standard_tool_router() -> ToolRouter<CustodyMcp> {
        let mut router = Self::vault_tools() + Self::run_tools() + Self::grant_tools();
        for route in router.map.values_mut() {
            let tool = &mut route.attr;
            crate::schema::standardize(Arc::make_mut(&mut tool.input_schema));
            if let Some(out) = tool.output_schema.as_mut() {
                crate::schema::standardize(Arc::make_mut(out));
            }
        }
        router
    }

    /// Learns the agent client's name from the handshake (2025-11-25) or
    /// from the request's metadata (2026-07-28, no handshake).
    fn note_client(&self, ctx: &RequestContext<RoleServer>) {
        let info = ctx
            .peer
            .peer_info()
            .map(|p| p.client_info.clone())
            .or_else(|| ctx.meta.client_info());
        if let Some(i) = info {
            self.inner.link.set_client(AgentClient {
                name: i.name,
                version: i.version,
            });
        }
    }

    /// Sends a vault change (create, declare, generate) to the broker and
    /// answers with a [`VaultChange`]; `created` is the broker's answer, or
    /// `created_default` when it gives none.
    async fn vault_change(
        &self,
        request: Request,
        environment: String,
        variable: Option<String>,
        created_default: bool,
        message: String,
    ) -> Result<CallToolResult, ErrorData> {
        match self.inner.link.call(request).await {
            Ok(v) => {
                let c = VaultChange {
                    environment,
                    variable,
                    created: v["created"].as_bool().unwrap_or(created_default),
                    message,
                };
                let t = c.message.clone();
                ok(&c, t)
            }
            Err(e) => fail(&e),
        }
    }

    /// Waits for `flight` on behalf of this tool call, with progress
    /// notifications: its result, or `pending` once the approval wait has
    /// passed (the flight is then kept, and `request_status` picks it up).
    /// `following` (a `request_status` call for that request) also stops
    /// waiting for a command that runs longer, answering `running`.
    async fn follow(
        &self,
        flight: Arc<Flight>,
        ctx: &RequestContext<RoleServer>,
        following: Option<&str>,
    ) -> Result<RunOutcome, LinkError> {
        let token = ctx.meta.get_progress_token();
        let until = tokio::time::Instant::now() + self.inner.cfg.approval_wait;
        let mut ticker = tokio::time::interval(PROGRESS_EVERY);
        ticker.tick().await;
        let mut phases = flight.watch();
        let mut step = 0.0;
        loop {
            let w = tokio::select! {
                w = Flight::wait(&mut phases, until, following.is_some(), &mut ticker) => w,
                _ = ctx.ct.cancelled() => return Err(LinkError::Cancelled),
            };
            let phase = match w {
                Waited::Done(r) => {
                    let r = *r;
                    if let Ok(o) = &r
                        && let Some(id) = &o.request_id
                    {
                        self.inner.runs.finish(id, Some(o));
                    }
                    return r;
                }
                Waited::StillPending(r) => {
                    self.inner.runs.keep(&r, flight);
                    return Ok(pending_outcome(
                        &r,
                        format!(
                            "waiting for the user's approval: ask them to run `custody approve {r}` in their terminal, then call request_status with request_id {r} (it waits for the decision and returns the run's result)"
                        ),
                    ));
                }
                Waited::StillRunning(lease) => {
                    let id = following.map(str::to_owned);
                    if let Some(r) = &id {
                        self.inner.runs.keep(r, flight);
                    }
                    return Ok(RunOutcome {
                        status: "running".into(),
                        message: Some(format!(
                            "approved and running under lease {lease}; call request_status again for its result"
                        )),
                        lease_id: Some(lease),
                        request_id: id,
                        ..RunOutcome::default()
                    });
                }
                Waited::Tick(phase) => phase,
            };
            let Some(t) = &token else { continue };
            step += 1.0;
            let status = match phase {
                Phase::Starting => "waiting for the broker".to_owned(),
                Phase::Pending(r) => format!(
                    "waiting for approval of request {r}: ask the user to run `custody approve {r}`"
                ),
                Phase::Running(l) => format!("running under lease {l}"),
                Phase::Done(_) => "finished".to_owned(),
            };
            let _ = ctx
                .peer
                .notify_progress(
                    ProgressNotificationParam::new(t.clone(), step).with_message(status),
                )
                .await;
        }
    }

    fn run_text(o: &RunOutcome) -> String {
        match o.status.as_str() {
            "finished" => {
                let how = match (o.exit_code, o.signal) {
                    (Some(c), _) => format!("exit code {c}"),
                    (None, Some(s)) => format!("killed by signal {s}"),
                    _ => "ended".into(),
                };
                let mut t = format!(
                    "{how} ({}) after {} ms under lease {}; {} secret value(s) masked{}",
                    o.ended_by.as_deref().unwrap_or("exited"),
                    o.duration_ms.unwrap_or(0),
                    o.lease_id.as_deref().unwrap_or("?"),
                    o.masked_count.unwrap_or(0),
                    if o.truncated == Some(true) {
                        "; output truncated to its tail"
                    } else {
                        ""
                    }
                );
                for l in o.leaks.iter().flatten() {
                    t.push_str(&format!(
                        "\nLEAK: {} now holds the value of {} (written during the run): remove it, never commit it",
                        l.path, l.variable
                    ));
                }
                for (name, s) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
                    let s = s.as_deref().unwrap_or_default();
                    if !s.is_empty() {
                        let shown = tail(s, TEXT_TAIL);
                        let cut = if shown.len() < s.len() {
                            " (tail; full text in structuredContent)"
                        } else {
                            ""
                        };
                        t.push_str(&format!("\n--- {name}{cut} ---\n{shown}"));
                    }
                }
                t
            }
            _ => o.message.clone().unwrap_or_else(|| o.status.clone()),
        }
    }

    fn run_result(r: Result<RunOutcome, LinkError>) -> Result<CallToolResult, ErrorData> {
        match r {
            Ok(o) => {
                let text = Self::run_text(&o);
                ok(&o, text)
            }
            Err(e) => fail(&e),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for CustodyMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(rmcp::model::Implementation::new(
                "custody",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(INSTRUCTIONS)
    }

    /// 2025-11-25 clients: the handshake named the client; register the
    /// session now (a broker that is not running yet is retried lazily).
    async fn on_initialized(&self, ctx: NotificationContext<RoleServer>) {
        if let Some(p) = ctx.peer.peer_info() {
            self.inner.link.set_client(AgentClient {
                name: p.client_info.name.clone(),
                version: p.client_info.version.clone(),
            });
        }
        if let Err(e) = self.inner.link.ensure_session().await {
            eprintln!("custody mcp: not registered yet: {e}");
        }
    }
}
