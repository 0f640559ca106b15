//! The MCP server: one method per tool, each a thin translation between MCP
//! and a broker request. The broker decides, injects, masks and audits; this
//! process only ever sees names, ids, decisions and masked output.

use std::sync::Arc;
use std::time::Duration;

use custody_broker::protocol::{Request, RevokeTarget, RunSpec};
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
        let mut router = Self::tool_router();
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

#[tool_router]
impl CustodyMcp {
    /// Environments with their descriptions and variables (name, kind,
    /// description, whether a value is set). Never a value.
    #[tool(
        name = "list_environments",
        output_schema = schema_for_output::<EnvironmentList>(),
        annotations(title = "List environments", read_only_hint = true, open_world_hint = false)
    )]
    async fn list_environments(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.note_client(&ctx);
        // One request: the broker answers with exactly these views, read
        // straight into them.
        let r: Result<EnvironmentList, LinkError> = async {
            let mut conn = self.inner.link.connect().await?;
            let environments = conn.call_as(Request::Catalog).await?;
            Ok(EnvironmentList { environments })
        }
        .await;
        match r {
            Ok(list) => {
                let mut t = format!("{} environment(s)", list.environments.len());
                for e in &list.environments {
                    let vars: Vec<String> = e
                        .variables
                        .iter()
                        .map(|v| format!("{}{}", v.name, if v.is_set { "" } else { " (not set)" }))
                        .collect();
                    t.push_str(&format!(
                        "\n- {}{}: {} [{}]",
                        e.name,
                        if e.always_approve {
                            " (always asks)"
                        } else {
                            ""
                        },
                        e.description,
                        vars.join(", ")
                    ));
                }
                ok(&list, t)
            }
            Err(e) => fail(&e),
        }
    }

    /// Create an environment (audited). Environments that policy protects
    /// are refused: ask the user.
    #[tool(
        name = "create_environment",
        output_schema = schema_for_output::<VaultChange>(),
        annotations(
            title = "Create environment",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn create_environment(
        &self,
        Parameters(a): Parameters<CreateEnvironmentArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.note_client(&ctx);
        let message = format!(
            "created environment '{}'; add slots with declare_variable",
            a.name
        );
        let req = Request::EnvCreate {
            name: a.name.clone(),
            description: a.description,
        };
        // The broker answers `{"created": NAME}`: success means created.
        self.vault_change(req, a.name, None, true, message).await
    }

    /// Declare an empty variable slot with a description; the user fills
    /// the value out of band with `custody set ENV VAR`.
    #[tool(
        name = "declare_variable",
        output_schema = schema_for_output::<VaultChange>(),
        annotations(
            title = "Declare variable",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn declare_variable(
        &self,
        Parameters(a): Parameters<DeclareVariableArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.note_client(&ctx);
        let message = format!(
            "declared '{}/{}'; ask the user to fill it with `custody set {} {}`",
            a.environment, a.name, a.environment, a.name
        );
        let req = Request::Declare {
            env: a.environment.clone(),
            var: a.name.clone(),
            description: a.description,
            kind: a.kind.map(Into::into),
            source: None,
        };
        self.vault_change(req, a.environment, Some(a.name), false, message)
            .await
    }

    /// Store a random value that nobody sees (not even you) in a variable
    /// that has no value yet.
    #[tool(
        name = "generate_secret",
        output_schema = schema_for_output::<VaultChange>(),
        annotations(
            title = "Generate secret",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn generate_secret(
        &self,
        Parameters(a): Parameters<GenerateSecretArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.note_client(&ctx);
        let length = a.length.unwrap_or(32);
        let alphabet = a.alphabet.unwrap_or_default();
        let message = format!(
            "stored a random {length}-character value in '{}/{}'; use it through run",
            a.environment, a.name
        );
        let req = Request::Generate {
            env: a.environment.clone(),
            var: a.name.clone(),
            length,
            alphabet: alphabet.into(),
            description: a.description,
            kind: a.kind.map(Into::into),
        };
        self.vault_change(req, a.environment, Some(a.name), false, message)
            .await
    }

    /// Run a command with the environments' secrets injected, after the
    /// user approves. Returns exit code and masked output; or status
    /// "pending" with a request_id to follow with request_status.
    #[tool(
        name = "run",
        output_schema = schema_for_output::<RunOutcome>(),
        annotations(
            title = "Run with secrets",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn run(
        &self,
        Parameters(a): Parameters<RunArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.note_client(&ctx);
        let cwd = match a.cwd {
            Some(c) => c,
            None => std::env::current_dir()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        // This server's environment, as its agent client gave it: the
        // broker drops loader variables, binds the rest into the grant and
        // shows what differs from the approver's (`lease::passthrough_for`).
        let passthrough = custody_broker::lease::caller_environment();
        let spec = RunSpec {
            argv: a.command,
            cwd,
            environments: a.environments,
            only: a.only,
            timeout_secs: a.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECS),
            passthrough,
            capture_limit: Some(CAPTURE_LIMIT),
            // The broker waits for the decision as long as the request
            // lives; this server answers `pending` after its approval wait
            // and keeps following the run.
            wait_secs: None,
            pty: None,
        };
        let r = match Flight::start(&self.inner.link, spec).await {
            Ok(flight) => self.follow(flight, &ctx, None).await,
            Err(e) => Err(e),
        };
        Self::run_result(r)
    }

    /// Follow a request that `run` answered with status "pending": waits for
    /// the user's decision (like `run`), then answers with the run's result,
    /// or denied / expired / cancelled. It never runs anything itself: the
    /// approval started the run. Call it again while it says "pending".
    #[tool(
        name = "request_status",
        output_schema = schema_for_output::<RunOutcome>(),
        annotations(
            title = "Request status",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn request_status(
        &self,
        Parameters(a): Parameters<RequestStatusArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.note_client(&ctx);
        let id = a.request_id;
        // A run this server follows: wait for it like `run` does.
        if let Some(flight) = self.inner.runs.get(&id) {
            // A long run answers `running` after the wait (clients time out
            // tool calls); the next call picks it up again.
            let r = self.follow(flight, &ctx, Some(&id)).await;
            if matches!(&r, Err(e) if !matches!(e, LinkError::Cancelled)) {
                self.inner.runs.finish(&id, None);
            }
            let r = match r {
                Err(LinkError::Broker(e))
                    if matches!(
                        e.code.as_str(),
                        "denied" | "expired" | "cancelled" | "locked"
                    ) =>
                {
                    Ok(decided(&id, &e.code, None))
                }
                other => other,
            };
            return Self::run_result(r);
        }
        // Its result was handed out already: the same answer, nothing re-run.
        if let Some(o) = self.inner.runs.finished(&id) {
            return Self::run_result(Ok(o));
        }
        // Not followed here (another server process, or a restart): what
        // the broker knows. Nothing is ever run from here.
        let v = match self
            .inner
            .link
            .call(Request::RequestStatus {
                request_id: id.clone(),
            })
            .await
        {
            Ok(v) => v,
            Err(e) => return fail(&e),
        };
        let status = v["status"].as_str().unwrap_or("unknown").to_owned();
        let outcome = match status.as_str() {
            "pending" => pending_outcome(
                &id,
                format!(
                    "still waiting, but not for this session's run: ask the user to run `custody approve {id}`; once approved, call run again with exactly the same command"
                ),
            ),
            "approved" => RunOutcome {
                status,
                message: Some(format!(
                    "request {id} was approved (grant {}), but its run is not followed by this session (it ended or restarted); call run again with exactly the same command, environments and cwd",
                    v["grant_id"].as_str().unwrap_or("?")
                )),
                request_id: Some(id),
                ..RunOutcome::default()
            },
            other => decided(&id, other, v["reason"].as_str()),
        };
        Self::run_result(Ok(outcome))
    }

    /// This session's grants in force (exact argv, cwd, environments,
    /// expiry, uses left).
    #[tool(
        name = "list_grants",
        output_schema = schema_for_output::<GrantList>(),
        annotations(title = "List grants", read_only_hint = true, open_world_hint = false)
    )]
    async fn list_grants(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.note_client(&ctx);
        let r = async {
            let v = self.inner.link.call(Request::Grants).await?;
            from::<Vec<GrantView>>(v)
        }
        .await;
        match r {
            Ok(grants) => {
                let mut t = format!("{} grant(s)", grants.len());
                for g in &grants {
                    t.push_str(&format!(
                        "\n- {} until {}: {}",
                        g.grant_id,
                        g.expires_at,
                        g.argv.join(" ")
                    ));
                }
                ok(&GrantList { grants }, t)
            }
            Err(e) => fail(&e),
        }
    }

    /// Give up one of this session's grants (`g-…`); its running processes
    /// are killed. A lease id (`l-…`) kills just that process.
    #[tool(
        name = "revoke_grant",
        output_schema = schema_for_output::<Revoked>(),
        annotations(
            title = "Revoke grant",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn revoke_grant(
        &self,
        Parameters(a): Parameters<RevokeGrantArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.note_client(&ctx);
        let target = if a.grant_id.starts_with("l-") {
            RevokeTarget::Lease(a.grant_id)
        } else {
            RevokeTarget::Grant(a.grant_id)
        };
        let r = async {
            let v = self.inner.link.call(Request::Revoke(target)).await?;
            from::<Revoked>(v)
        }
        .await;
        match r {
            Ok(rv) => {
                let t = format!(
                    "revoked {} grant(s), killed {} lease(s)",
                    rv.revoked_grants.len(),
                    rv.revoked_leases.len()
                );
                ok(&rv, t)
            }
            Err(e) => fail(&e),
        }
    }

    /// This session's recent audit records: its requests, approvals,
    /// denials, grants, leases and revocations (names and ids only).
    #[tool(
        name = "audit_tail",
        output_schema = schema_for_output::<AuditTail>(),
        annotations(title = "Audit tail", read_only_hint = true, open_world_hint = false)
    )]
    async fn audit_tail(
        &self,
        Parameters(a): Parameters<AuditTailArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.note_client(&ctx);
        let limit = a.limit.unwrap_or(50);
        let r = async {
            let v = self.inner.link.call(Request::AuditTail { limit }).await?;
            from::<Vec<AuditEntry>>(v)
        }
        .await;
        match r {
            Ok(records) => {
                let mut t = format!("{} record(s)", records.len());
                for rec in &records {
                    t.push_str(&format!(
                        "\n{} {} {}",
                        rec.seq,
                        rec.time,
                        rec.event.get("type").and_then(Value::as_str).unwrap_or("?")
                    ));
                }
                ok(&AuditTail { records }, t)
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
