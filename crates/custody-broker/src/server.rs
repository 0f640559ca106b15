//! The socket server: accept, check the peer, speak the protocol.
//!
//! Every connection's peer uid must equal the broker's (SO_PEERCRED; G7) and
//! its pid is recorded. Malformed frames get an error frame; an oversized
//! frame gets an error frame and the connection is closed (its framing can no
//! longer be trusted). Nothing a client sends can panic the broker (G8).
//!
//! The human keeps control under agent load (G13): connections from agents'
//! process trees share one pool, everyone else has a pool of their own that
//! agents cannot use up; one process holds at most a few dozen connections;
//! a connection that does not say hello in time is closed.

use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::AsyncWrite;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, watch};
use zeroize::Zeroizing;

use crate::broker::{Broker, Peer};
use crate::protocol::{
    self, ClientFrame, Event, FrameError, PROTOCOL_VERSION, Request, ServerFrame, WireError,
};

async fn send(w: &mut (impl AsyncWrite + Unpin), frame: &ServerFrame) -> Result<(), FrameError> {
    let bytes = serde_json::to_vec(frame).map_err(|e| FrameError::Malformed(e.to_string()))?;
    protocol::write_frame_async(w, &bytes).await
}

/// Sends a connection-level error (id 0): the reason the broker is about to
/// close the connection, or why it cannot take a frame.
async fn refuse(
    w: &mut (impl AsyncWrite + Unpin),
    code: &str,
    message: impl Into<String>,
) -> Result<(), FrameError> {
    send(
        w,
        &ServerFrame::Err {
            id: 0,
            error: WireError::new(code, message),
        },
    )
    .await
}

async fn send_result(
    w: &mut OwnedWriteHalf,
    id: u64,
    result: Result<Value, WireError>,
) -> Result<(), FrameError> {
    let frame = match result {
        Ok(ok) => ServerFrame::Ok { id, ok },
        Err(error) => ServerFrame::Err { id, error },
    };
    send(w, &frame).await
}

/// Sends a typed answer without building a JSON tree first: for big
/// listings, where the tree cost more than reading the vault.
async fn send_typed<T: Serialize>(
    w: &mut OwnedWriteHalf,
    id: u64,
    result: Result<T, WireError>,
) -> Result<(), FrameError> {
    #[derive(Serialize)]
    struct Answer<'a, T> {
        id: u64,
        ok: &'a T,
    }
    match result {
        Ok(ok) => {
            let bytes = serde_json::to_vec(&Answer { id, ok: &ok })
                .map_err(|e| FrameError::Malformed(e.to_string()))?;
            protocol::write_frame_async(w, &bytes).await
        }
        Err(error) => send(w, &ServerFrame::Err { id, error }).await,
    }
}

/// Serves `listener` until `shutdown` completes, then locks the broker (which
/// ends every lease).
pub async fn serve(
    listener: UnixListener,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let agents = Arc::new(Semaphore::new(broker.cfg.max_connections));
    let others = Arc::new(Semaphore::new(broker.cfg.reserved_connections));
    let per_process = Arc::new(PerProcess::default());
    let own_uid = rustix::process::getuid().as_raw();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((mut stream, _)) = accepted else { continue };
                let pid = stream.peer_cred().ok().and_then(|c| c.pid()).and_then(|p| u32::try_from(p).ok());
                let pool = match pid {
                    Some(p) if !broker.is_agent_pid(p) => &others,
                    _ => &agents,
                };
                let slot = per_process.take(pid, broker.cfg.max_per_process);
                let permit = pool.clone().try_acquire_owned();
                let (Some(slot), Ok(permit)) = (slot, permit) else {
                    let _ = refuse(&mut stream, "busy", "too many connections to the broker from this process or its agent; try again").await;
                    continue;
                };
                let b = broker.clone();
                tokio::spawn(async move {
                    let _held = (permit, slot);
                    handle(b, stream, own_uid).await;
                });
            }
        }
    }
    broker.lock(custody_core::audit::LockReason::Shutdown).await;
    Ok(())
}

/// Open connections per peer process.
#[derive(Default)]
struct PerProcess(std::sync::Mutex<std::collections::HashMap<u32, usize>>);

/// One connection counted against its process; uncounted on drop.
struct Slot {
    table: Arc<PerProcess>,
    pid: Option<u32>,
}

impl PerProcess {
    /// Counts a connection of `pid`, unless it already holds `max`.
    fn take(self: &Arc<Self>, pid: Option<u32>, max: usize) -> Option<Slot> {
        if let Some(p) = pid {
            let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let n = t.entry(p).or_insert(0);
            if *n >= max {
                return None;
            }
            *n += 1;
        }
        Some(Slot {
            table: Arc::clone(self),
            pid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(p) = self.pid {
            let mut t = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = t.get_mut(&p) {
                *n -= 1;
                if *n == 0 {
                    t.remove(&p);
                }
            }
        }
    }
}

async fn handle(broker: Arc<Broker>, mut stream: UnixStream, own_uid: u32) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(_) => return,
    };
    if cred.uid() != own_uid {
        let _ = refuse(
            &mut stream,
            "forbidden",
            "connections from other users are refused",
        )
        .await;
        return;
    }
    let pid = cred.pid().and_then(|p| u32::try_from(p).ok());
    let (mut rd, mut wr) = stream.into_split();

    // hello, in time: a connection that says nothing does not hold a slot.
    let first = match tokio::time::timeout(
        broker.cfg.hello_timeout,
        protocol::read_frame_async(&mut rd),
    )
    .await
    {
        Ok(f) => f,
        Err(_) => {
            let _ = refuse(&mut wr, "timeout", "no hello in time; closing").await;
            return;
        }
    };
    let client = match first {
        Ok(f) => match serde_json::from_slice::<ClientFrame>(&f) {
            Ok(ClientFrame {
                id,
                request:
                    Request::Hello {
                        protocol: v,
                        client,
                    },
                ..
            }) if v == PROTOCOL_VERSION => {
                let ok = json!({"protocol": PROTOCOL_VERSION, "broker": env!("CARGO_PKG_VERSION")});
                if send(&mut wr, &ServerFrame::Ok { id, ok }).await.is_err() {
                    return;
                }
                client
            }
            Ok(ClientFrame {
                id,
                request: Request::Hello { protocol: v, .. },
                ..
            }) => {
                let msg = format!(
                    "protocol {v} is not supported (this broker speaks {PROTOCOL_VERSION}): use matching custody versions"
                );
                let _ = send(
                    &mut wr,
                    &ServerFrame::Err {
                        id,
                        error: WireError::new("version", msg),
                    },
                )
                .await;
                return;
            }
            _ => {
                let _ = refuse(&mut wr, "bad_request", "the first frame must be hello").await;
                return;
            }
        },
        Err(FrameError::TooLarge(n)) => {
            let _ = refuse(
                &mut wr,
                "too_large",
                format!("frame of {n} bytes exceeds the limit"),
            )
            .await;
            return;
        }
        Err(_) => return,
    };
    let mut peer = Peer {
        uid: cred.uid(),
        pid,
        client,
        session: None,
    };
    // A PIN exchange made on this connection, waiting for the request it
    // proves (`custody_core::pake`).
    let mut pin: Option<custody_core::pake::PinSession> = None;

    loop {
        let frame = match protocol::read_frame_async(&mut rd).await {
            Ok(f) => f,
            Err(FrameError::TooLarge(n)) => {
                let _ = refuse(
                    &mut wr,
                    "too_large",
                    format!(
                        "frame of {n} bytes exceeds the {}-byte limit; closing",
                        protocol::MAX_FRAME
                    ),
                )
                .await;
                break;
            }
            Err(_) => break,
        };
        let msg: ClientFrame = match serde_json::from_slice(&frame) {
            Ok(m) => m,
            Err(e) => {
                // The frame boundary is intact, so the connection can go on.
                let err = WireError::new(
                    "bad_request",
                    format!("malformed request: {}", e.classify_name()),
                );
                if send(&mut wr, &ServerFrame::Err { id: 0, error: err })
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
        };
        drop(frame);
        let secret = match msg.secret_len {
            None => None,
            Some(n) => match protocol::read_frame_async(&mut rd).await {
                Ok(s) if s.len() == n as usize => Some(s),
                Ok(_) => {
                    let err = WireError::new(
                        "bad_request",
                        "secret frame length does not match secret_len",
                    );
                    if send(
                        &mut wr,
                        &ServerFrame::Err {
                            id: msg.id,
                            error: err,
                        },
                    )
                    .await
                    .is_err()
                    {
                        break;
                    }
                    continue;
                }
                Err(_) => break,
            },
        };
        broker.touch();
        let id = msg.id;
        // A PIN proof covers the request's exact bytes and unseals its
        // secret; any other use of the exchange counts as a wrong PIN.
        let mut secret = secret;
        let mut verified = None;
        if let Some(proof) = &msg.pin_proof {
            let bytes = serde_json::to_vec(&msg.request).unwrap_or_default();
            let opened = pin.take().and_then(|s| {
                let ok = hex::decode(proof).is_ok_and(|p| s.check(&bytes, &p));
                match (ok, secret.take()) {
                    (false, _) => None,
                    (true, None) => Some(None),
                    (true, Some(sealed)) => s.open(&bytes, &sealed).ok().map(Some),
                }
            });
            match opened {
                Some(plain) => {
                    broker.pin_confirmed();
                    secret = plain;
                    verified = Some(crate::broker::pin::PinVerified::new());
                }
                None => {
                    let err = broker.pin_failed().await;
                    if send(&mut wr, &ServerFrame::Err { id, error: err })
                        .await
                        .is_err()
                    {
                        break;
                    }
                    continue;
                }
            }
        }
        let outcome = match msg.request {
            Request::PinChallenge => send_result(&mut wr, id, broker.pin_challenge()).await,
            Request::PinExchange { msg } => {
                if pin.take().is_some() {
                    // A second exchange before the first was used.
                    let _ = broker.pin_failed().await;
                }
                let res = match broker.pin_exchange(&msg).await {
                    Ok((reply, session)) => {
                        pin = Some(session);
                        Ok(reply)
                    }
                    Err(e) => Err(e),
                };
                send_result(&mut wr, id, res).await
            }
            Request::KeyChallenge => {
                if pin.take().is_some() {
                    let _ = broker.pin_failed().await;
                }
                let res = match broker.key_challenge().await {
                    Ok((reply, session)) => {
                        pin = Some(session);
                        Ok(reply)
                    }
                    Err(e) => Err(e),
                };
                send_result(&mut wr, id, res).await
            }
            Request::PinAbort => {
                pin = None;
                let err = broker.pin_failed().await;
                send_result(&mut wr, id, Err(err)).await
            }
            Request::Run(spec) => run_streaming(&broker, &peer, id, spec, &mut rd, &mut wr).await,
            Request::Watch => {
                let me = broker.requester(&peer);
                watch_events(&broker, &me, id, &mut rd, &mut wr).await;
                break;
            }
            Request::Catalog => send_typed(&mut wr, id, crate::ops::catalog(&broker, &peer)).await,
            Request::Scan {
                path,
                git_history,
                staged,
                index_file,
                progress: true,
            } => {
                let (tx, rx) = mpsc::channel(4);
                let staged = staged.then(|| index_file.map(std::path::PathBuf::from));
                let scan = crate::scan_request::handle(
                    &broker,
                    &peer,
                    path,
                    git_history,
                    staged,
                    Some(tx),
                );
                with_events(&mut wr, id, scan, rx).await
            }
            other => {
                let res = dispatch(&broker, &mut peer, other, secret, verified).await;
                send_result(&mut wr, id, res).await
            }
        };
        if outcome.is_err() {
            break;
        }
    }
    if pin.is_some() {
        // An exchange nobody proved a request with: a wrong PIN (or a probe).
        let _ = broker.pin_failed().await;
    }
    if let Some(s) = &peer.session {
        broker.end_session(s);
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    /// Parser errors can quote the input; report only their class so a value
    /// pasted into the wrong field is never echoed back.
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O",
            serde_json::error::Category::Syntax => "not valid JSON",
            serde_json::error::Category::Data => "unknown op or wrong fields",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

fn secret_required(
    secret: Option<Zeroizing<Vec<u8>>>,
    what: &str,
) -> Result<Zeroizing<Vec<u8>>, WireError> {
    secret.ok_or_else(|| {
        WireError::new(
            "bad_request",
            format!("{what} must be sent in a secret frame"),
        )
    })
}

async fn dispatch(
    broker: &Arc<Broker>,
    peer: &mut Peer,
    req: Request,
    secret: Option<Zeroizing<Vec<u8>>>,
    verified: Option<crate::broker::pin::PinVerified>,
) -> Result<Value, WireError> {
    use crate::ops;
    match req {
        Request::Hello { .. } => Err(WireError::new("bad_request", "hello was already sent")),
        Request::Status => view(broker.status()),
        Request::Unlock => {
            broker
                .unlock(secret_required(secret, "the passphrase")?)
                .await
        }
        Request::Lock => Ok(broker.lock(custody_core::audit::LockReason::Manual).await),
        Request::RegisterSession {
            client_name,
            client_version,
            parent_pid,
            ..
        } => broker.register_session(peer, &client_name, &client_version, parent_pid),
        Request::AgentLaunch {
            name,
            sandboxed,
            enforced,
        } => broker.register_launcher(peer, &name, sandboxed, enforced),
        Request::Approve { request_id, scope } => {
            broker.approve(peer, &request_id, scope, verified).await
        }
        Request::Deny { request_id } => broker.deny(peer, &request_id),
        Request::PolicyShow => broker.policy_show(&broker.requester(peer)),
        Request::PolicyApply { text } => broker.policy_apply(peer, text, verified).await,
        Request::PinChallenge
        | Request::PinExchange { .. }
        | Request::KeyChallenge
        | Request::PinAbort => Err(WireError::new(
            "bad_request",
            "PIN exchanges are handled by the connection",
        )),
        Request::Pending => {
            let me = broker.requester(peer);
            let only = matches!(me, crate::grants::Requester::Agent { .. }).then_some(&me);
            Ok(broker.pending(only))
        }
        Request::RequestStatus { request_id } => broker.request_status(&request_id),
        Request::Cancel { request_id } => broker.cancel(&request_id, &broker.requester(peer)),
        Request::Grants => {
            let me = broker.requester(peer);
            let only = matches!(me, crate::grants::Requester::Agent { .. }).then_some(&me);
            Ok(broker.grants(only))
        }
        Request::Leases => view(broker.leases()),
        Request::Revoke(target) => {
            let me = broker.requester(peer);
            let only = matches!(me, crate::grants::Requester::Agent { .. }).then_some(&me);
            broker.revoke(&target, &me.describe(), only)
        }
        Request::AuditVerify => broker.audit_verify(),
        Request::Scan {
            path,
            git_history,
            staged,
            index_file,
            ..
        } => {
            let staged = staged.then(|| index_file.map(std::path::PathBuf::from));
            crate::scan_request::handle(broker, peer, path, git_history, staged, None).await
        }
        Request::Run(_) | Request::Watch | Request::Catalog => {
            Err(WireError::new("internal", "handled by the connection"))
        }
        Request::RunInput { .. } | Request::RunResize(_) => Err(WireError::new(
            "bad_request",
            "run_input and run_resize are sent only during a run on a terminal",
        )),
        vault @ (Request::EnvCreate { .. }
        | Request::EnvList
        | Request::EnvDescribe { .. }
        | Request::EnvRemove { .. }
        | Request::Set { .. }
        | Request::Declare { .. }
        | Request::Generate { .. }
        | Request::SourceAdd { .. }
        | Request::SourceList
        | Request::SourceRemove { .. }
        | Request::Unset { .. }
        | Request::List { .. }
        | Request::Import { .. }
        | Request::AuditTail { .. }) => ops::vault_request(broker, peer, vault, secret, verified),
    }
}

/// Sends `work`'s result for request `id`, and the events it sends on
/// `events` while it runs.
async fn with_events(
    wr: &mut OwnedWriteHalf,
    id: u64,
    work: impl std::future::Future<Output = Result<Value, WireError>>,
    mut events: mpsc::Receiver<Event>,
) -> Result<(), FrameError> {
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            Some(event) = events.recv() => send(wr, &ServerFrame::Event { id, event }).await?,
            r = &mut work => break r,
        }
    };
    send_result(wr, id, result).await
}

/// Input frames a run on a terminal may have queued and not yet written.
const TYPED_AHEAD: usize = 1024;

/// A `run_input`/`run_resize` frame, as the lease takes it.
fn typed_input(frame: &[u8]) -> Option<crate::lease::PtyInput> {
    use crate::lease::PtyInput;
    match serde_json::from_slice::<ClientFrame>(frame).ok()?.request {
        Request::RunInput { data, eof } => Some(PtyInput::Typed {
            bytes: zeroize::Zeroizing::new(protocol::unb64(&data)?),
            end: eof,
        }),
        Request::RunResize(size) => Some(PtyInput::Resize(size)),
        _ => None,
    }
}

/// Runs a command, forwarding events as they come, watching the connection
/// for the requester going away (cancel).
async fn run_streaming(
    broker: &Arc<Broker>,
    peer: &Peer,
    id: u64,
    spec: protocol::RunSpec,
    rd: &mut tokio::net::unix::OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
) -> Result<(), FrameError> {
    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(64);
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let (in_tx, in_rx) = mpsc::channel::<crate::lease::PtyInput>(TYPED_AHEAD);
    let b = broker.clone();
    let p = peer.clone();
    let mut task =
        tokio::spawn(async move { crate::run::run(&b, &p, spec, ev_tx, cancel_rx, in_rx).await });
    let mut reader_open = true;
    let result = loop {
        tokio::select! {
            Some(event) = ev_rx.recv() => {
                // A requester that cannot be written to is gone: cancel.
                if send(wr, &ServerFrame::Event { id, event }).await.is_err() {
                    let _ = cancel_tx.send(true);
                }
            }
            r = &mut task => {
                break r.unwrap_or_else(|_| Err(WireError::new("internal", "run failed")));
            }
            f = protocol::read_frame_async(rd), if reader_open => {
                // During a run the client sends only what it types into a
                // run on a terminal; EOF or anything else means it went
                // away or changed its mind: cancel.
                if let Some(typed) = f.ok().and_then(|f| typed_input(&f)) {
                    // A lease that stopped reading its terminal does not
                    // stall its output: what it has not read is dropped.
                    let _ = in_tx.try_send(typed);
                    continue;
                }
                reader_open = false;
                let _ = cancel_tx.send(true);
            }
        }
    };
    while let Ok(event) = ev_rx.try_recv() {
        send(wr, &ServerFrame::Event { id, event }).await?;
    }
    send_result(wr, id, result).await
}

/// Acknowledges `watch` (request `id`), then pushes every broker event
/// (with id 0) until the watcher closes the connection.
async fn watch_events(
    broker: &Arc<Broker>,
    me: &crate::grants::Requester,
    id: u64,
    rd: &mut tokio::net::unix::OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
) {
    let mut rx = broker.subscribe();
    if send(
        wr,
        &ServerFrame::Ok {
            id,
            ok: json!({"watching": true}),
        },
    )
    .await
    .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok((id, event)) => {
                    // An agent hears of its own requests only, as it lists
                    // only its own pending ones.
                    if let Event::Pending { request_id, .. } = &event
                        && matches!(me, crate::grants::Requester::Agent { .. })
                        && !broker.is_requester_of(request_id, me)
                    {
                        continue;
                    }
                    if send(wr, &ServerFrame::Event { id, event }).await.is_err() { return; }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            },
            _ = protocol::read_frame_async(rd) => return,
        }
    }
}

/// A typed answer on the wire.
fn view(answer: impl serde::Serialize) -> Result<Value, WireError> {
    serde_json::to_value(answer)
        .map_err(|_| WireError::new("internal", "the answer does not serialize"))
}
