//! Runs in flight.
//!
//! A `run` is a background task that owns its broker connection from the
//! request to the result. When the tool call has to answer `pending` (the
//! human has not approved within the approval wait), the task goes on
//! waiting: an approval starts the command at once, under the grant it just
//! made (a once-grant is spent by the run that asked for it, never kept for
//! a later call), and `request_status` waits for the same task instead of
//! running anything again. The result is handed out once it exists and kept
//! for a few repeated calls; nothing is ever re-run by polling.
//!
//! When this process ends, every task's connection closes: the broker
//! cancels what still waits and kills what still runs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use custody_broker::protocol::{Event, Request, RunResult, RunSpec};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::link::{Link, LinkError, Streamed, sort};
use crate::types::{LeakView, ProxyBlockView, ProxyView, RunOutcome};

/// Runs answered `pending` and still followed (oldest dropped, and so
/// cancelled, first). Each holds a broker connection, and the broker allows
/// one process 64.
const MAX_IN_FLIGHT: usize = 32;
/// Results already handed out, kept for a repeated `request_status`.
const MAX_FINISHED: usize = 32;

/// Where a run is.
#[derive(Clone)]
pub enum Phase {
    /// Sent; the broker has not said more yet (admission, minting).
    Starting,
    /// Waiting for a human to decide request `.0`.
    Pending(String),
    /// Running under lease `.0`.
    Running(String),
    /// Over: the result, or why there is none.
    Done(Box<Result<RunOutcome, LinkError>>),
}

/// One run and the task that follows it.
pub struct Flight {
    phase: watch::Receiver<Phase>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        // Closes the connection: the broker cancels or kills what is left.
        self.task.abort();
    }
}

/// How a wait on a flight ended.
pub enum Waited {
    /// The run is over.
    Done(Box<Result<RunOutcome, LinkError>>),
    /// The approval wait passed; request `.0` still waits for a human.
    StillPending(String),
    /// The wait passed while the approved run goes on under lease `.0`
    /// (only when the caller asked not to wait for a running command).
    StillRunning(String),
    /// Time for a progress notification; the run is in this phase.
    Tick(Phase),
}

impl Flight {
    /// Sends `spec` and starts following it.
    pub async fn start(link: &Arc<Link>, spec: RunSpec) -> Result<Arc<Flight>, LinkError> {
        let mut conn = link.connect().await?;
        let id = conn.send(Request::Run(spec)).await?;
        let (mut frames, writer) = conn.into_frames();
        let (tx, rx) = watch::channel(Phase::Starting);
        let task = tokio::spawn(async move {
            // The write half lives as long as the task: the connection is
            // the run.
            let _writer = writer;
            let mut request_id: Option<String> = None;
            loop {
                let frame = match frames.next().await {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = tx.send(Phase::Done(Box::new(Err(e))));
                        return;
                    }
                };
                match sort(frame, id) {
                    Streamed::Done(r) => {
                        let done = r.and_then(|v| {
                            serde_json::from_value::<RunResult>(v)
                                .map(|r| outcome(r, request_id.take()))
                                .map_err(|_| {
                                    LinkError::Connection("the run result did not parse".into())
                                })
                        });
                        let _ = tx.send(Phase::Done(Box::new(done)));
                        return;
                    }
                    Streamed::Event(Event::Pending { request_id: r, .. }) => {
                        request_id = Some(r.clone());
                        let _ = tx.send(Phase::Pending(r));
                    }
                    Streamed::Event(Event::Started { lease_id }) => {
                        let _ = tx.send(Phase::Running(lease_id));
                    }
                    _ => {}
                }
            }
        });
        Ok(Arc::new(Flight { phase: rx, task }))
    }

    /// A receiver of the run's phases, for [`Flight::wait`]; it has not
    /// seen any phase yet.
    pub fn watch(&self) -> watch::Receiver<Phase> {
        self.phase.clone()
    }

    /// Waits until the run is over, until `until` has passed while it
    /// still waits for a human (a run that started keeps being waited for,
    /// its lease deadline bounding it, unless `stop_running`), or until there
    /// is news for a progress notification: a phase `rx` has not seen, or a
    /// tick of `ticker`.
    pub async fn wait(
        rx: &mut watch::Receiver<Phase>,
        until: Instant,
        stop_running: bool,
        ticker: &mut tokio::time::Interval,
    ) -> Waited {
        let mut news = false;
        loop {
            news |= rx.has_changed().unwrap_or(false);
            let phase = rx.borrow_and_update().clone();
            let timed = matches!(phase, Phase::Pending(_))
                || (stop_running && matches!(phase, Phase::Running(_)));
            match &phase {
                Phase::Done(r) => return Waited::Done(r.clone()),
                Phase::Pending(r) if Instant::now() >= until => {
                    return Waited::StillPending(r.clone());
                }
                Phase::Running(l) if stop_running && Instant::now() >= until => {
                    return Waited::StillRunning(l.clone());
                }
                _ if news => return Waited::Tick(phase),
                _ => {}
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The task is gone without a result (aborted).
                        return Waited::Done(Box::new(Err(LinkError::Cancelled)));
                    }
                    news = true;
                }
                _ = tokio::time::sleep_until(until), if timed => {}
                _ = ticker.tick() => return Waited::Tick(phase),
            }
        }
    }
}

/// The runs this server follows, by request id, and the results it handed
/// out last.
#[derive(Default)]
pub struct Runs {
    flights: Mutex<BTreeMap<String, Arc<Flight>>>,
    order: Mutex<VecDeque<String>>,
    finished: Mutex<VecDeque<(String, RunOutcome)>>,
}

impl Runs {
    /// Keeps following `flight`, pending as request `request_id`.
    pub fn keep(&self, request_id: &str, flight: Arc<Flight>) {
        let mut f = lock(&self.flights);
        let mut order = lock(&self.order);
        if f.insert(request_id.to_owned(), flight).is_none() {
            order.push_back(request_id.to_owned());
        }
        while f.len() > MAX_IN_FLIGHT {
            match order.pop_front() {
                Some(old) => drop(f.remove(&old)),
                None => break,
            }
        }
    }

    /// The flight for `request_id`, if this server follows it.
    pub fn get(&self, request_id: &str) -> Option<Arc<Flight>> {
        lock(&self.flights).get(request_id).cloned()
    }

    /// The run of `request_id` is over and its result handed out: stop
    /// following it, keep the result for a repeated call.
    pub fn finish(&self, request_id: &str, outcome: Option<&RunOutcome>) {
        lock(&self.flights).remove(request_id);
        lock(&self.order).retain(|r| r != request_id);
        if let Some(o) = outcome {
            let mut done = lock(&self.finished);
            done.push_back((request_id.to_owned(), o.clone()));
            while done.len() > MAX_FINISHED {
                done.pop_front();
            }
        }
    }

    /// The result already handed out for `request_id`.
    pub fn finished(&self, request_id: &str) -> Option<RunOutcome> {
        lock(&self.finished)
            .iter()
            .rev()
            .find(|(r, _)| r == request_id)
            .map(|(_, o)| o.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A finished run's result, from the broker's answer.
fn outcome(r: RunResult, request_id: Option<String>) -> RunOutcome {
    let leaks: Vec<LeakView> = r
        .leaks
        .into_iter()
        .map(|l| LeakView {
            path: l.path,
            variable: l.variable,
        })
        .collect();
    let blocked = r.proxy.as_ref().map_or(0, |p| p.blocked.len());
    let mut notes = Vec::new();
    if !leaks.is_empty() {
        notes.push(format!(
            "{} file(s) written during the run hold a secret value: remove them and do not commit them",
            leaks.len()
        ));
    }
    if blocked > 0 {
        notes.push(format!(
            "{blocked} request(s) were refused for carrying a bound variable to a destination it is not bound to: do not retry them"
        ));
    }
    let message = (!notes.is_empty()).then(|| notes.join("; "));
    let proxy = r.proxy.map(|p| ProxyView {
        bound: p.bound,
        requests: p.requests,
        injected: p.injected,
        blocked: p
            .blocked
            .into_iter()
            .map(|b| ProxyBlockView {
                destination: b.destination,
                request: b.request,
                variables: b.variables,
            })
            .collect(),
    });
    RunOutcome {
        status: "finished".into(),
        exit_code: r.exit_code,
        signal: r.signal,
        ended_by: Some(r.reason),
        stdout: Some(r.stdout.unwrap_or_default()),
        stderr: Some(r.stderr.unwrap_or_default()),
        masked_count: Some(r.masked_count),
        truncated: Some(r.truncated),
        lease_id: Some(r.lease_id),
        duration_ms: Some(r.duration_ms),
        leaks: Some(leaks),
        message,
        request_id,
        proxy,
        ..RunOutcome::default()
    }
}
