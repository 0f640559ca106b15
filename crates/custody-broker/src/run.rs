//! One `run` request from admission to result: grant or wait for approval,
//! reveal the values (only here, only into the child), mask, supervise.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use custody_core::mask::MaskingEngine;
use custody_core::names::{EnvName, VarName};
use custody_core::vault::{VarKind, VaultError};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::Error;
use crate::broker::{Broker, Decision, Peer};
use crate::grants::new_id;
use crate::lease::{self, EndReason, Injected, LeasePlan};
use crate::protocol::{Event, LeakCheck, RunLeak, RunPending, RunResult, RunSpec};
use crate::sources;

/// Longest lease anyone can ask for, whatever the policy says.
const MAX_TIMEOUT_SECS: u64 = 24 * 3600;
/// Most argv entries.
const MAX_ARGS: usize = 4096;
/// How much earlier than the spawn the leak check's mtime window opens.
const LEAK_CHECK_SLACK: Duration = Duration::from_millis(20);

fn validate(spec: &RunSpec) -> Result<(), Error> {
    let bad = |m: &str| Err(Error::BadRequest(m.into()));
    if spec.argv.is_empty() || spec.argv[0].is_empty() {
        return bad("command is empty: give argv, e.g. [\"cargo\", \"test\"]");
    }
    if spec.argv.len() > MAX_ARGS {
        return bad("too many arguments");
    }
    if spec.argv.iter().any(|a| a.contains('\0')) {
        return bad("arguments cannot contain NUL bytes");
    }
    if !Path::new(&spec.cwd).is_absolute() || !Path::new(&spec.cwd).is_dir() {
        return Err(Error::BadRequest(format!(
            "cwd '{}' is not an existing absolute directory",
            spec.cwd
        )));
    }
    if spec.environments.is_empty() {
        return bad("name at least one environment (see list_environments / `custody env ls`)");
    }
    if spec.timeout_secs == 0 || spec.timeout_secs > MAX_TIMEOUT_SECS {
        return bad("timeout must be between 1 second and 24 hours");
    }
    Ok(())
}

/// Runs `spec` for `peer`. Events (pending, started, output) go to `events`;
/// `cancelled` turns true when the requester goes away; `input` is what the
/// requester types into a run on a pseudo-terminal. Returns the result
/// object, or `{status: "pending"}` when `spec.wait_secs` passed first.
pub async fn run(
    broker: &Arc<Broker>,
    peer: &Peer,
    spec: RunSpec,
    events: mpsc::Sender<Event>,
    mut cancelled: watch::Receiver<bool>,
    input: mpsc::Receiver<lease::PtyInput>,
) -> Result<Value, Error> {
    validate(&spec)?;
    let requester = broker.requester(peer);
    let preapproved = broker.preapproves(&requester, &spec);
    let spec = RunSpec {
        passthrough: crate::lease::passthrough_for(&requester, &spec.passthrough, preapproved),
        ..spec
    };
    // Binding reads files: off the async threads and the state lock.
    let binding = bind_blocking(&spec).await?;
    let grant_id = match broker.admit(&requester, &spec, binding)? {
        Ok(g) => g,
        Err((request_id, decision)) => {
            let _ = events
                .send(Event::Pending {
                    request_id: request_id.clone(),
                    approve_hint: format!("custody approve {request_id}"),
                    request: None,
                })
                .await;
            let wait = spec.wait_secs.map(Duration::from_secs);
            let timer = async {
                match wait {
                    Some(w) => tokio::time::sleep(w).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                d = decision => match d {
                    Ok(Decision::Approved(g)) => g,
                    Ok(Decision::Denied(why)) => return Err(Error::Denied(format!("request {request_id} was denied ({why}); do not retry the same command without asking the user"))),
                    Ok(Decision::Expired) => return Err(Error::Expired(format!("nobody approved request {request_id} in time"))),
                    Ok(Decision::Cancelled) => return Err(Error::Cancelled("request cancelled".into())),
                    Ok(Decision::Locked) | Err(_) => return Err(Error::Locked("the vault was locked while the request waited: ask the user to run `custody unlock`".into())),
                },
                _ = timer => {
                    return crate::protocol::answer(RunPending {
                        status: "pending".into(),
                        approve_hint: format!("custody approve {request_id}"),
                        request_id,
                    });
                }
                _ = wait_true(&mut cancelled) => {
                    let _ = broker.cancel(&request_id, &requester);
                    return Err(Error::Cancelled("request cancelled".into()));
                }
            }
        }
    };
    let grant = broker.use_grant(&grant_id)?;

    // Reveal the values: the only place they leave the vault, straight into
    // the plan that goes to the child. Dynamic variables name a source
    // instead: prepared here (under the lock), minted below (without it).
    let mut injected = Vec::new();
    let mut wanted = Vec::new();
    // Bound variables (by index in `injected`) and where each may go.
    let mut bound_rules = Vec::new();
    let prepared = {
        let mut st = broker.state();
        let vault = st.vault.as_mut().ok_or_else(|| {
            Error::Locked("the vault is locked: ask the user to run `custody unlock`".into())
        })?;
        // One read transaction for every value (see `read_together`).
        vault.read_together(|vault| -> Result<(), Error> {
            let bad = |x: custody_core::names::NameError| Error::BadRequest(x.to_string());
            // Each environment's values in one query, then back in the
            // grant's order (a later environment's variable wins).
            let mut by_env: Vec<(EnvName, Vec<VarName>)> = Vec::new();
            let mut order = Vec::new();
            for full in &grant.scope.variables {
                let Some((e, v)) = full.split_once('/') else {
                    continue;
                };
                let (env, var) = (EnvName::new(e).map_err(bad)?, VarName::new(v).map_err(bad)?);
                let slot = match by_env.iter().position(|(n, _)| *n == env) {
                    Some(i) => i,
                    None => {
                        by_env.push((env, Vec::new()));
                        by_env.len() - 1
                    }
                };
                order.push((slot, by_env[slot].1.len()));
                by_env[slot].1.push(var);
            }
            let mut revealed = Vec::with_capacity(by_env.len());
            let mut bindings = Vec::with_capacity(by_env.len());
            for (env, vars) in &by_env {
                let values = vault.reveal_many(env, vars).map_err(Error::from)?;
                revealed.push(values.into_iter().map(Some).collect::<Vec<_>>());
                // From the kept listing: the labels' authenticated bindings.
                bindings.push(vault.bindings_of(env, vars).map_err(Error::from)?);
            }
            for (slot, i) in order {
                let name = by_env[slot].1[i].as_str().to_owned();
                match revealed[slot][i].take() {
                    None => continue, // Each slot is taken once.
                    Some(Ok((kind, value))) => {
                        let rules = std::mem::take(&mut bindings[slot][i]);
                        if !rules.is_empty() && kind == VarKind::Env {
                            bound_rules.push((injected.len(), rules));
                        }
                        injected.push(Injected {
                            name,
                            as_file: kind == VarKind::File,
                            value,
                        });
                    }
                    Some(Err(VaultError::Dynamic { from, .. })) => wanted.push((name, from)),
                    Some(Err(other)) => return Err(Error::from(other)),
                }
            }
            Ok(())
        })?;
        sources::prepare(vault, &wanted)?
    };
    let lease_id = new_id("l");
    let ttl = sources::cap_ttl(&prepared, Duration::from_secs(spec.timeout_secs));
    let mut also_mask = Vec::new();
    let dynamic = !prepared.is_empty();
    if dynamic {
        let deadline = SystemTime::now() + ttl;
        let program = spec.argv.first().cloned().unwrap_or_default();
        broker.dynamic_planned(&lease_id, &program, sources::planned(&prepared, deadline))?;
        let mask: Vec<(&str, &[u8])> = injected
            .iter()
            .map(|i| (i.name.as_str(), i.value.expose()))
            .collect();
        let minted = broker
            .mint_all(&lease_id, prepared, deadline, ttl, &mask)
            .await;
        drop(mask);
        match minted {
            Ok(fresh) => {
                for (name, value) in fresh.values {
                    injected.push(Injected {
                        name,
                        as_file: false,
                        value: value.into(),
                    });
                }
                also_mask = fresh.also_mask;
            }
            Err(e) => {
                // Whatever was minted goes again; the requester learns why.
                broker.settle(&lease_id).await;
                return Err(e);
            }
        }
    }
    // Bound variables: the child gets a placeholder, the lease's proxy the
    // value (it puts it in on requests to the bound destinations only).
    let proxy = match start_proxy(broker, &lease_id, &mut injected, bound_rules).await {
        Ok(p) => p,
        Err(e) => {
            broker.settle(&lease_id).await;
            return Err(e);
        }
    };
    let values: Vec<(&str, &[u8])> = injected
        .iter()
        .map(|i| (i.name.as_str(), i.value.expose()))
        .chain(also_mask.iter().map(|(n, v)| (n.as_str(), v.expose())))
        .collect();
    // Stored values only: reused while they stay the same. Minted ones are
    // new each time.
    let engine = if dynamic || proxy.is_some() {
        Arc::new(MaskingEngine::new(values.iter().copied()))
    } else {
        broker.engines.for_values(&values)
    };
    drop(values);
    drop(also_mask);
    // File mtimes come from the kernel's coarse clock, which can lag the
    // wall clock by a tick: start the leak check's window a little early.
    let lease_start = SystemTime::now()
        .checked_sub(LEAK_CHECK_SLACK)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let leak_engine = Arc::clone(&engine);
    let leak_cwd = std::path::PathBuf::from(&spec.cwd);
    let plan = LeasePlan {
        id: lease_id.clone(),
        program: grant.scope.binding.program.clone(),
        argv: spec.argv.clone(),
        cwd: spec.cwd.clone().into(),
        passthrough: spec.passthrough.clone(),
        injected,
        ttl,
        grace: broker.cfg.kill_grace,
        capture_limit: spec.capture_limit.unwrap_or(0).min(broker.cfg.output_cap),
        engine,
        runtime_dir: broker.cfg.runtime_dir.clone(),
        pty: spec.pty,
        proxy: proxy.as_ref().map(|p| lease::ProxyEnv {
            url: p.proxy.url(),
            ca_pem: p.proxy.ca_pem().to_owned(),
        }),
    };
    let proxy_log = proxy.map(|p| p.log(broker));
    // The files may have changed since the request was shown to the human
    // (or since a timed grant was made), or while credentials were minted:
    // what runs must be what was bound, checked as late as possible.
    if bind_blocking(&spec).await.ok().as_ref() != Some(&grant.scope.binding) {
        broker.settle(&lease_id).await;
        return Err(Error::Changed(format!(
            "'{}' or a file it was given changed since it was approved (or its PATH or environment differs); nothing ran: ask again",
            spec.argv.first().map(String::as_str).unwrap_or_default()
        )));
    }
    let (child, started, dir) = match lease::spawn(&plan) {
        Ok(x) => x,
        Err(e) => {
            broker.settle(&lease_id).await;
            return Err(Error::SpawnFailed(e.to_string()));
        }
    };
    let (stop_tx, stop_rx) = watch::channel(None);
    let start_record =
        match broker.lease_started(&lease_id, &grant, started, ttl, dir.clone(), stop_tx) {
            Ok(pending) => pending,
            Err(e) => {
                // Fail closed: no record, no audit → the process must not run.
                lease::signal_group(started.pid, rustix::process::Signal::KILL);
                let _ = std::fs::remove_dir_all(&dir);
                broker.settle(&lease_id).await;
                return Err(e);
            }
        };
    // The start record is in the log; it becomes durable while the child
    // runs, and the result waits for that.
    let start_durable = tokio::task::spawn_blocking({
        let broker = Arc::clone(broker);
        let lease_id = lease_id.clone();
        move || broker.lease_start_durable(&lease_id, start_record)
    });
    let _ = events
        .send(Event::Started {
            lease_id: lease_id.clone(),
        })
        .await;
    // Supervised in this task (a task of its own cost a hand-over between
    // threads at its end).
    let supervised = lease::supervise(plan, child, started, dir, events, stop_rx, input);
    tokio::pin!(supervised);
    let outcome = tokio::select! {
        o = &mut supervised => o,
        _ = wait_true(&mut cancelled) => {
            if let Some(l) = broker.state().leases.get(&lease_id) {
                let _ = l.stop.send(Some(EndReason::Cancelled));
            }
            supervised.await
        }
    };
    // The proxy goes with the lease; what it did is audited, then reported.
    let proxy_report = match proxy_log {
        Some(log) => Some(log.finish().await),
        None => None,
    };
    broker.lease_ended(&outcome);
    // Post-run leak check: the values stay here, with the lease's engine.
    // With dynamic credentials it walks the tree while they are revoked
    // (the lease is over: so are they); else in place.
    let own = vec![broker.cfg.home.clone(), broker.cfg.runtime_dir.clone()];
    let leak_check = move || crate::scan::leak_check(leak_engine, &leak_cwd, lease_start, own);
    let (credentials, report) = if dynamic {
        let walk = tokio::task::spawn_blocking(leak_check);
        let credentials = broker.settle(&lease_id).await;
        (credentials, walk.await.unwrap_or_default())
    } else {
        let report = blocking(leak_check).await.unwrap_or_default();
        (broker.settle(&lease_id).await, report)
    };
    broker.leaks_found(&lease_id, &report.leaks);
    // No result before the start record is durable (G6).
    start_durable
        .await
        .map_err(|_| Error::Internal("the audit sync failed".into()))??;
    // Streamed already when nothing was to be captured: not sent twice.
    let captured = spec.capture_limit.is_some();
    let mut result = RunResult {
        status: "finished".into(),
        lease_id: outcome.lease_id,
        exit_code: outcome.exit_code,
        signal: outcome.signal,
        reason: outcome.reason.as_str().to_owned(),
        mask_counts: outcome.mask_counts,
        masked_count: outcome.masked_count,
        stdout: captured.then_some(outcome.stdout),
        stderr: captured.then_some(outcome.stderr),
        truncated: outcome.truncated,
        duration_ms: outcome.duration_ms,
        leaks: report
            .leaks
            .into_iter()
            .map(|l| RunLeak {
                path: l.path,
                variable: l.variable,
            })
            .collect(),
        credentials,
        leak_check: LeakCheck {
            files: report.files,
            bytes: report.bytes,
            truncated: report.truncated,
        },
        proxy: proxy_report,
    };
    fit_in_frame(&mut result);
    serde_json::to_value(&result)
        .map_err(|_| Error::Internal("the run result does not serialize".into()))
}

/// A lease's proxy, started.
struct RunningProxy {
    proxy: crate::proxy::LeaseProxy,
    events: mpsc::UnboundedReceiver<custody_core::audit::AuditEvent>,
    bound: std::collections::BTreeMap<String, Vec<String>>,
}

/// Swaps each bound variable's value for a placeholder in `injected` and
/// starts the proxy that holds the values; `None` when nothing is bound.
async fn start_proxy(
    broker: &Arc<Broker>,
    lease_id: &str,
    injected: &mut [Injected],
    bound_rules: Vec<(usize, Vec<custody_core::bound::Rule>)>,
) -> Result<Option<RunningProxy>, Error> {
    if bound_rules.is_empty() {
        return Ok(None);
    }
    let mut bound = Vec::with_capacity(bound_rules.len());
    let mut shown = std::collections::BTreeMap::new();
    for (i, rules) in bound_rules {
        let inj = &mut injected[i];
        let placeholder = crate::proxy::placeholder(inj.value.expose())
            .map_err(|e| Error::Internal(e.to_string()))?;
        let value = std::mem::replace(
            &mut inj.value,
            custody_core::secret::Value::from_vec(placeholder.clone().into_bytes()),
        );
        shown.insert(
            inj.name.clone(),
            rules
                .iter()
                .map(custody_core::bound::Rule::destination)
                .collect(),
        );
        bound.push(crate::proxy::Bound {
            name: inj.name.clone(),
            placeholder,
            value,
            rules,
        });
    }
    let cfg = crate::proxy::ProxyConfig {
        lease_id: lease_id.to_owned(),
        bound,
        extra_roots: broker.cfg.proxy.extra_roots.clone(),
        resolve: broker.cfg.proxy.resolve.clone(),
    };
    let (tx, events) = mpsc::unbounded_channel();
    let proxy = crate::proxy::LeaseProxy::start(cfg, tx)
        .await
        .map_err(|e| Error::SpawnFailed(e.to_string()))?;
    Ok(Some(RunningProxy {
        proxy,
        events,
        bound: shown,
    }))
}

impl RunningProxy {
    /// Audits what the proxy does while the lease runs.
    fn log(self, broker: &Arc<Broker>) -> ProxyLog {
        let RunningProxy {
            proxy,
            mut events,
            bound,
        } = self;
        let broker = Arc::clone(broker);
        let task = tokio::spawn(async move {
            let mut report = crate::protocol::ProxyReport {
                bound,
                ..Default::default()
            };
            while let Some(event) = events.recv().await {
                report.add(&event);
                broker.proxy_event(event);
            }
            report
        });
        ProxyLog { proxy, task }
    }
}

/// A running lease's proxy and the task auditing it.
struct ProxyLog {
    proxy: crate::proxy::LeaseProxy,
    task: tokio::task::JoinHandle<crate::protocol::ProxyReport>,
}

impl ProxyLog {
    /// Stops the proxy (every connection through it ends) and returns what
    /// it did, once its last events are audited.
    async fn finish(self) -> crate::protocol::ProxyReport {
        drop(self.proxy);
        match tokio::time::timeout(Duration::from_secs(2), self.task).await {
            Ok(Ok(report)) => report,
            _ => crate::protocol::ProxyReport::default(),
        }
    }
}

/// Room left in a response frame for its envelope (`{"id":…,"ok":…}`).
const FRAME_ENVELOPE: usize = 1024;

/// Trims the captured tails, oldest bytes first, so the result fits in one
/// frame. A capture of up to `output_cap` bytes per stream can encode to more
/// than [`MAX_FRAME`](crate::protocol::MAX_FRAME) (two streams, JSON escapes
/// of up to 6 bytes per byte), and a result that cannot be sent is lost with
/// its connection. Each stream keeps at least half of the room (or all it
/// needs, if less).
fn fit_in_frame(r: &mut RunResult) {
    let budget = crate::protocol::MAX_FRAME - FRAME_ENVELOPE;
    let Ok(len) = serde_json::to_vec(&*r).map(|b| b.len()) else {
        return;
    };
    if len <= budget {
        return;
    }
    let encoded = |s: &Option<String>| {
        s.as_deref()
            .map_or(0, |s| s.chars().map(json_len).sum::<usize>())
    };
    let (out, err) = (encoded(&r.stdout), encoded(&r.stderr));
    let room = budget.saturating_sub(len.saturating_sub(out + err));
    let half = room / 2;
    let (keep_out, keep_err) = if out <= half {
        (out, room - out)
    } else if err <= half {
        (room - err, err)
    } else {
        (half, room - half)
    };
    for (stream, keep) in [(&mut r.stdout, keep_out), (&mut r.stderr, keep_err)] {
        if let Some(s) = stream.as_mut() {
            *s = tail_within(s, keep).to_owned();
        }
    }
    r.truncated = true;
}

/// The longest tail of `s` whose JSON encoding is at most `room` bytes.
fn tail_within(s: &str, room: usize) -> &str {
    let mut used = 0;
    for (i, c) in s.char_indices().rev() {
        used += json_len(c);
        if used > room {
            return &s[i + c.len_utf8()..];
        }
    }
    s
}

/// Length of `c` inside a JSON string as serde_json writes it.
fn json_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if u32::from(c) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Binds `spec` ([`crate::binding::bind`] reads and may hash files: not
/// on an async worker as such), through [`blocking`].
async fn bind_blocking(spec: &RunSpec) -> Result<crate::binding::Binding, Error> {
    let s = spec.clone();
    blocking(move || crate::binding::bind(&s))
        .await
        .ok_or_else(|| Error::Internal("binding the command failed".into()))?
}

/// Runs blocking `work` (file reads, a tree walk) from async code. On the
/// broker's multi-thread runtime it runs in place with `block_in_place`
/// (this worker's other tasks move to another thread meanwhile), which
/// spares the two thread hops through the blocking pool: about 0.1 ms each
/// on the project's 2-core machine, for work that is mostly a few `stat`s
/// (binding twice per run, the leak check once). Elsewhere (a
/// single-threaded runtime), on the blocking pool. `None`: it panicked
/// (caught either way, as the blocking pool catches it).
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        let work = std::panic::AssertUnwindSafe(work);
        return tokio::task::block_in_place(|| std::panic::catch_unwind(work).ok());
    }
    tokio::task::spawn_blocking(work).await.ok()
}

async fn wait_true(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            // Sender gone: the connection handler ended; never fire.
            std::future::pending::<()>().await;
        }
    }
}
