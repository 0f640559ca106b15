//! Requests and approvals: admission under policy and grants, the PIN and
//! agent-ancestry checks (G3), decisions, cancellation.

use super::*;
use crate::protocol::PendingRequest;

/// Whether the program a run would start is the one a pre-approval means:
/// the rule's `program`, or else `argv[0]` as the broker's own `PATH` finds
/// it. A requester's `PATH` that finds another program first (its own
/// `date`) gets no pre-approval: the request goes to a human, who sees it.
fn preapproved_program(
    pre: &custody_core::policy::Preapproved,
    spec: &RunSpec,
    program: &std::path::Path,
) -> bool {
    match &pre.program {
        Some(p) => std::path::Path::new(p) == program,
        None => {
            let name = spec.argv.first().map(String::as_str).unwrap_or_default();
            let path =
                std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
            crate::binding::resolve_in(name, std::path::Path::new(&spec.cwd), &path)
                .is_some_and(|p| p == program)
        }
    }
}

/// Longest a once-grant waits for the run it was made for to take it.
const ONCE_GRANT_LIFETIME: Duration = Duration::from_secs(60);

/// The audit record of a request: who asked to run what, where, with which
/// variables (names only).
fn request_event(
    request_id: &str,
    requester: &Requester,
    spec: &RunSpec,
    scope: &crate::grants::Scope,
) -> AuditEvent {
    AuditEvent::Request {
        request_id: request_id.to_owned(),
        requester: requester.describe(),
        argv: spec.argv.clone(),
        cwd: spec.cwd.clone(),
        environments: spec.environments.clone(),
        variables: scope.variables.iter().cloned().collect(),
        ttl_secs: spec.timeout_secs,
    }
}

/// What an approver is shown of pending request `id`.
fn pending_view(id: &str, p: &Pending) -> PendingRequest {
    PendingRequest {
        id: id.to_owned(),
        requester: p.requester.describe(),
        client: p.requester.client_name().to_owned(),
        sandboxed: matches!(
            p.requester,
            Requester::Agent {
                sandboxed: true,
                ..
            }
        ),
        agent: matches!(p.requester, Requester::Agent { .. }),
        argv: p.spec.argv.clone(),
        program: p.scope.binding.program.display().to_string(),
        passthrough: p.scope.binding.passthrough.clone(),
        files: p.scope.binding.files.keys().cloned().collect(),
        cwd: p.spec.cwd.clone(),
        environments: p.spec.environments.clone(),
        variables: p.scope.variables.iter().cloned().collect(),
        bound: p
            .bound
            .iter()
            .filter(|(v, _)| p.scope.variables.contains(*v))
            .map(|(v, d)| (v.clone(), d.clone()))
            .collect(),
        timeout_secs: p.spec.timeout_secs,
        always_approve: p.always_approve,
        created_at: rfc3339(p.created_at),
    }
}

impl Broker {
    /// Whether policy pre-approves `spec` for `requester` (its command,
    /// directory and environments; the program is checked at admission).
    pub fn preapproves(&self, requester: &Requester, spec: &RunSpec) -> bool {
        let environments: BTreeSet<String> = spec.environments.iter().cloned().collect();
        self.policy()
            .preapproved(
                requester.client_name(),
                &spec.argv,
                &spec.cwd,
                &environments,
                SystemTime::now(),
            )
            .is_some()
    }

    /// Resolves a run's variable set and decides: run under a grant now, or
    /// wait for a human. `binding` is [`crate::binding::bind`] of `spec`. Returns `Ok(Ok(grant_id))` or `Ok(Err((request_id,
    /// receiver)))`.
    #[allow(clippy::type_complexity)] // the two outcomes are spelled out above
    pub fn admit(
        &self,
        requester: &Requester,
        spec: &RunSpec,
        binding: crate::binding::Binding,
    ) -> Result<Result<String, (String, oneshot::Receiver<Decision>)>, Error> {
        let policy = self.policy();
        let client = requester.client_name().to_owned();
        if let Requester::Agent {
            sandboxed: false, ..
        } = requester
            && policy.require_sandbox(&client)
        {
            return Err(Error::Forbidden(format!(
                "policy requires agent '{client}' to run inside the custody sandbox: the user starts it with `custody agent -- COMMAND`"
            )));
        }
        let max_ttl = policy.max_ttl(&client);
        let ttl = Duration::from_secs(spec.timeout_secs);
        if ttl > max_ttl {
            return Err(bad(format!(
                "timeout {} is longer than the policy allows for {client} ({})",
                custody_core::duration::format(ttl),
                custody_core::duration::format(max_ttl)
            )));
        }
        let mut st = self.state();
        let vault = st.vault()?;
        let mut variables = BTreeSet::new();
        let mut available = BTreeSet::new();
        let mut bound = BTreeMap::new();
        for e in &spec.environments {
            if !policy.visible(&client, e) {
                return Err(Error::Forbidden(format!(
                    "environment '{e}' is not available to {client} by policy"
                )));
            }
            let env = env_name(e)?;
            vault
                .each_variable(&env, |v| {
                    if v.is_set {
                        if !v.bindings.is_empty() {
                            let shown = v.bindings.iter().map(|r| r.destination()).collect();
                            bound.insert(format!("{e}/{}", v.name), shown);
                        }
                        available.insert((e.clone(), v.name.clone()));
                    }
                })
                .map_err(Error::from)?;
        }
        match &spec.only {
            None => variables.extend(available.iter().map(|(e, v)| format!("{e}/{v}"))),
            Some(only) => {
                for want in only {
                    let hits: Vec<_> = available
                        .iter()
                        .filter(|(e, v)| v == want || format!("{e}/{v}") == *want)
                        .collect();
                    if hits.is_empty() {
                        return Err(Error::NotFound(format!(
                            "no variable '{want}' with a value in the requested environments"
                        )));
                    }
                    variables.extend(hits.iter().map(|(e, v)| format!("{e}/{v}")));
                }
            }
        }
        // What runs is bound (computed by the caller, off this lock): the
        // program as the child's PATH finds it, the passed-through
        // environment, the argument files (G11).
        let mut scope = Scope::of(spec, variables);
        scope.binding = binding;
        let always = spec
            .environments
            .iter()
            .any(|e| policy.always_approve(&client, e));
        let now = Instant::now();
        if !always {
            // A once-grant belongs to the run that asked for it (it takes
            // it at approval); it never covers another request.
            let hit = st
                .grants
                .iter()
                .find(|(_, g)| g.uses_left.is_none() && g.covers(requester, &scope, ttl, now))
                .map(|(id, _)| id.clone());
            if let Some(id) = hit {
                return Ok(Ok(id));
            }
            if let Some(pre) = policy.preapproved(
                &client,
                &spec.argv,
                &spec.cwd,
                &scope.environments,
                SystemTime::now(),
            ) && preapproved_program(pre, spec, &scope.binding.program)
            {
                let id = new_id("g");
                let left = pre
                    .expires
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                // Who ran what stays in the audit for a pre-approved run
                // too: the request, then its grant with no approval between.
                let request_id = new_id("r");
                st.audit(request_event(&request_id, requester, spec, &scope))?;
                st.audit(AuditEvent::Grant {
                    grant_id: id.clone(),
                    request_id,
                    expires_at: rfc3339(pre.expires),
                    max_uses: None,
                })?;
                st.grants.insert(
                    id.clone(),
                    Grant {
                        id: id.clone(),
                        request_id: "policy".into(),
                        requester: requester.clone(),
                        scope,
                        max_ttl,
                        expires: now + left,
                        expires_at: pre.expires,
                        uses_left: None,
                    },
                );
                return Ok(Ok(id));
            }
        }
        let request_id = new_id("r");
        st.audit(request_event(&request_id, requester, spec, &scope))?;
        let (tx, rx) = oneshot::channel();
        st.pending.insert(
            request_id.clone(),
            Pending {
                requester: requester.clone(),
                spec: spec.clone(),
                scope,
                bound,
                always_approve: always,
                created: now,
                created_at: SystemTime::now(),
                notify: Some(tx),
            },
        );
        let view = st
            .pending
            .get(&request_id)
            .map(|p| pending_view(&request_id, p));
        drop(st);
        self.publish(Event::Pending {
            request_id: request_id.clone(),
            approve_hint: format!("custody approve {request_id}"),
            request: view.map(Box::new),
        });
        Ok(Err((request_id, rx)))
    }

    /// Takes one use of a grant for a starting lease. Errors if it is gone.
    pub fn use_grant(&self, grant_id: &str) -> Result<Grant, Error> {
        let mut st = self.state();
        let g = st.grants.get_mut(grant_id).ok_or_else(|| {
            Error::Denied("the grant was revoked or expired before the run started".into())
        })?;
        let spent = g.take_use();
        let copy = g.clone();
        if spent {
            st.grants.remove(grant_id);
        }
        Ok(copy)
    }

    /// Pending requests, for `custody approve --list`; an agent sees only
    /// its own (`only`).
    pub fn pending(&self, only: Option<&Requester>) -> Value {
        let st = self.state();
        let list: Vec<PendingRequest> = st
            .pending
            .iter()
            .filter(|(_, p)| only.is_none_or(|r| &p.requester == r))
            .map(|(id, p)| pending_view(id, p))
            .collect();
        serde_json::to_value(list).unwrap_or_default()
    }

    /// Whether `who` made the pending request `request_id`.
    pub fn is_requester_of(&self, request_id: &str, who: &Requester) -> bool {
        self.state()
            .pending
            .get(request_id)
            .is_some_and(|p| &p.requester == who)
    }

    /// A request's state: pending, or how it was decided.
    pub fn request_status(&self, request_id: &str) -> Result<RequestState, Error> {
        let st = self.state();
        if st.pending.contains_key(request_id) {
            return Ok(RequestState {
                request_id: request_id.to_owned(),
                status: "pending".into(),
                approve_hint: Some(format!("custody approve {request_id}")),
                grant_id: None,
                reason: None,
            });
        }
        match st.decided.get(request_id) {
            Some((d, _)) => Ok(RequestState {
                request_id: request_id.to_owned(),
                status: d.status().into(),
                approve_hint: None,
                grant_id: match d {
                    Decision::Approved(g) => Some(g.clone()),
                    _ => None,
                },
                reason: match d {
                    Decision::Denied(why) => Some((*why).to_owned()),
                    _ => None,
                },
            }),
            None => Err(Error::NotFound(format!("no request '{request_id}'"))),
        }
    }

    pub(super) fn decide(st: &mut State, request_id: &str, decision: Decision) {
        if let Some(mut p) = st.pending.remove(request_id)
            && let Some(n) = p.notify.take()
        {
            let _ = n.send(decision.clone());
        }
        st.decided
            .insert(request_id.to_owned(), (decision, Instant::now()));
    }

    /// The requester gave up (closed its connection, or cancelled).
    pub fn cancel(&self, request_id: &str, by: &Requester) -> Result<RequestCancelled, Error> {
        let mut st = self.state();
        match st.pending.get(request_id) {
            Some(p) if &p.requester == by => {}
            Some(_) => return Err(Error::Forbidden("not your request".into())),
            None => {
                return Err(Error::NotFound(format!(
                    "no pending request '{request_id}'"
                )));
            }
        }
        st.audit_after(AuditEvent::Revoke {
            target: request_id.to_owned(),
            by: by.describe(),
        });
        Self::decide(&mut st, request_id, Decision::Cancelled);
        Ok(RequestCancelled {
            cancelled: request_id.to_owned(),
        })
    }

    /// Approves a pending request: refused for processes descending from an
    /// agent (G3), then only with the PIN proven (a PIN exchange on this
    /// connection, with lockout after repeated failures).
    pub async fn approve(
        self: &Arc<Self>,
        peer: &Peer,
        request_id: &str,
        scope: crate::protocol::ApprovalScope,
        verified: Option<pin::PinVerified>,
    ) -> Result<Approval, Error> {
        use crate::protocol::ApprovalScope as S;
        let approver = peer
            .pid
            .ok_or_else(|| Error::Forbidden("cannot identify the approving process".into()))?;
        let me = self.requester(peer);
        {
            let mut st = self.state();
            st.vault()?;
            let Some(p) = st.pending.get(request_id) else {
                return Err(Self::not_pending(&st, request_id));
            };
            if peer.session.is_some() || st.is_agent_process(approver).is_some() {
                // An agent approving someone else's request must not be
                // able to deny it that way either: refused, left pending.
                if p.requester != me {
                    st.audit_after(AuditEvent::Revoke {
                        target: request_id.to_owned(),
                        by: format!(
                            "refused: {} tried to approve another's request",
                            me.describe()
                        ),
                    });
                    return Err(Error::Forbidden("approvals cannot come from an agent's process tree, and this is not your request".into()));
                }
                st.audit(AuditEvent::Denial {
                    request_id: request_id.to_owned(),
                    approver_pid: Some(approver),
                    reason: audit::DenialReason::ApproverIsAgent,
                })?;
                Self::decide(&mut st, request_id, Decision::Denied("approver_is_agent"));
                return Err(Error::Forbidden("approvals cannot come from an agent's process tree; the request was denied. The human must approve from their own terminal".into()));
            }
            if let (S::For { .. }, Some(p)) = (scope, st.pending.get(request_id))
                && p.always_approve
            {
                return Err(bad(
                    "policy requires a fresh approval for every run in this environment: approve with --once",
                ));
            }
        }
        // The PIN was proven on this connection before the request came
        // (see `pin`); without the proof, nothing is approved.
        verified.ok_or_else(pin::pin_required)?;
        let mut st = self.state();
        let Some(p) = st.pending.get(request_id) else {
            return Err(Self::not_pending(&st, request_id));
        };
        // A once-grant is for the run that asked, now. When nobody waits for
        // the decision any more, there is nothing to approve: a grant kept
        // for a later call would cover whatever that call finds (an edited
        // script) long after the human looked.
        if matches!(scope, S::Once) && p.notify.as_ref().is_none_or(|n| n.is_closed()) {
            st.audit_after(AuditEvent::Revoke {
                target: request_id.to_owned(),
                by: "broker (the requester stopped waiting)".into(),
            });
            Self::decide(&mut st, request_id, Decision::Cancelled);
            return Err(Error::Cancelled(format!(
                "request {request_id} was cancelled: its requester no longer waits for it, so nothing would run; nothing was approved"
            )));
        }
        let requester = p.requester.clone();
        let req_scope = p.scope.clone();
        let client = requester.client_name().to_owned();
        let max_ttl = st.policy.max_ttl(&client);
        let (lifetime, uses, audit_scope) = match scope {
            // A once-grant goes to the run waiting for it, which takes it
            // at once; the lifetime only bounds a start that never comes.
            S::Once => (ONCE_GRANT_LIFETIME, Some(1), audit::ApprovalScope::Once),
            S::For { secs } => (
                Duration::from_secs(secs.clamp(1, 24 * 3600)),
                None,
                audit::ApprovalScope::ForSecs(secs),
            ),
        };
        let grant_id = new_id("g");
        let expires_at = SystemTime::now() + lifetime;
        st.audit(AuditEvent::Approval {
            request_id: request_id.to_owned(),
            scope: audit_scope,
            approver_pid: approver,
        })?;
        st.audit(AuditEvent::Grant {
            grant_id: grant_id.clone(),
            request_id: request_id.to_owned(),
            expires_at: rfc3339(expires_at),
            max_uses: uses,
        })?;
        st.grants.insert(
            grant_id.clone(),
            Grant {
                id: grant_id.clone(),
                request_id: request_id.to_owned(),
                requester,
                scope: req_scope,
                max_ttl,
                expires: Instant::now() + lifetime,
                expires_at,
                uses_left: uses,
            },
        );
        Self::decide(&mut st, request_id, Decision::Approved(grant_id.clone()));
        Ok(Approval {
            approved: request_id.to_owned(),
            grant_id,
            expires_at: rfc3339(expires_at),
        })
    }

    /// Why `request_id` cannot be decided: how it already ended, or that it
    /// never existed.
    fn not_pending(st: &State, request_id: &str) -> Error {
        match st.decided.get(request_id) {
            Some((Decision::Cancelled, _)) => Error::Cancelled(format!(
                "request {request_id} was cancelled (its requester went away or its agent session ended); nothing runs"
            )),
            Some((d, _)) => Error::NotFound(format!(
                "request {request_id} is no longer pending: it was {}",
                d.status()
            )),
            None => Error::NotFound(format!(
                "no pending request '{request_id}' (see `custody approve --list`)"
            )),
        }
    }

    /// Denies a pending request. An agent may deny only its own requests
    /// (withdrawing them); a human's, or another agent's, are not its to
    /// decide.
    pub fn deny(&self, peer: &Peer, request_id: &str) -> Result<DenyAnswer, Error> {
        let me = self.requester(peer);
        let mut st = self.state();
        let Some(p) = st.pending.get(request_id) else {
            return Err(Self::not_pending(&st, request_id));
        };
        if matches!(me, Requester::Agent { .. }) {
            if p.requester != me {
                return Err(Error::Forbidden(
                    "agents can deny or cancel only their own requests".into(),
                ));
            }
            // An agent withdrawing its own request: a cancellation, not a
            // human's denial.
            drop(st);
            return self.cancel(request_id, &me).map(DenyAnswer::Cancelled);
        }
        if st.audit.is_some() {
            st.audit(AuditEvent::Denial {
                request_id: request_id.to_owned(),
                approver_pid: peer.pid,
                reason: audit::DenialReason::Human,
            })?;
        }
        Self::decide(&mut st, request_id, Decision::Denied("human"));
        Ok(DenyAnswer::Denied(RequestDenied {
            denied: request_id.to_owned(),
        }))
    }
}
