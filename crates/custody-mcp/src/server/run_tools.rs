//! The run tools: `run` (approval, injection, masked output) and
//! `request_status` for a run that is still waiting or running.

use super::*;

#[tool_router(router = run_tools, vis = "pub(super)")]
impl CustodyMcp {
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
            .and_then(from::<RequestState>)
        {
            Ok(v) => v,
            Err(e) => return fail(&e),
        };
        let status = v.status;
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
                    v.grant_id.as_deref().unwrap_or("?")
                )),
                request_id: Some(id),
                ..RunOutcome::default()
            },
            other => decided(&id, other, v.reason.as_deref()),
        };
        Self::run_result(Ok(outcome))
    }
}
