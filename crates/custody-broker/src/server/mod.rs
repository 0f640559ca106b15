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
use serde_json::Value;
use tokio::io::AsyncWrite;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, watch};
use zeroize::Zeroizing;

mod dispatch;
mod streams;

use dispatch::dispatch;
use streams::{run_streaming, watch_events, with_events};

use crate::Error;
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
    result: Result<Value, Error>,
) -> Result<(), FrameError> {
    let frame = match result {
        Ok(ok) => ServerFrame::Ok { id, ok },
        Err(error) => ServerFrame::Err {
            id,
            error: error.into(),
        },
    };
    send(w, &frame).await
}

/// Sends a typed answer without building a JSON tree first: for big
/// listings, where the tree cost more than reading the vault.
async fn send_typed<T: Serialize>(
    w: &mut OwnedWriteHalf,
    id: u64,
    result: Result<T, Error>,
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
        Err(error) => {
            let error = error.into();
            send(w, &ServerFrame::Err { id, error }).await
        }
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

async fn handle(broker: Arc<Broker>, stream: UnixStream, own_uid: u32) {
    let Some((mut peer, mut rd, mut wr)) = handshake(&broker, stream, own_uid).await else {
        return;
    };
    // A PIN exchange made on this connection, waiting for the request it
    // proves (`custody_core::pake`).
    let mut pin: Option<custody_core::pake::PinSession> = None;

    loop {
        let (msg, secret) = match next_request(&mut rd, &mut wr).await {
            Next::Request(msg, secret) => (msg, secret),
            Next::Skip => continue,
            Next::Close => break,
        };
        broker.touch();
        let id = msg.id;
        let (secret, verified) = match prove_pin(&broker, &mut pin, &msg, secret).await {
            Ok(proved) => proved,
            Err(err) => {
                let error = err.into();
                if send(&mut wr, &ServerFrame::Err { id, error })
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
        };
        let outcome = match msg.request {
            Request::PinChallenge => send_typed(&mut wr, id, broker.pin_challenge()).await,
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
                send_typed(&mut wr, id, res).await
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
                send_typed(&mut wr, id, res).await
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

/// Checks the peer (same uid, G7) and reads its hello in time: a
/// connection that says nothing does not hold a slot.
async fn handshake(
    broker: &Broker,
    mut stream: UnixStream,
    own_uid: u32,
) -> Option<(Peer, OwnedReadHalf, OwnedWriteHalf)> {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(_) => return None,
    };
    if cred.uid() != own_uid {
        let _ = refuse(
            &mut stream,
            "forbidden",
            "connections from other users are refused",
        )
        .await;
        return None;
    }
    let pid = cred.pid().and_then(|p| u32::try_from(p).ok());
    let (mut rd, mut wr) = stream.into_split();

    let first = match tokio::time::timeout(
        broker.cfg.hello_timeout,
        protocol::read_frame_async(&mut rd),
    )
    .await
    {
        Ok(f) => f,
        Err(_) => {
            let _ = refuse(&mut wr, "timeout", "no hello in time; closing").await;
            return None;
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
                let hello = protocol::Hello {
                    protocol: PROTOCOL_VERSION,
                    broker: env!("CARGO_PKG_VERSION").to_owned(),
                };
                if send_typed(&mut wr, id, Ok(hello)).await.is_err() {
                    return None;
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
                        error: Error::Version(msg).into(),
                    },
                )
                .await;
                return None;
            }
            _ => {
                let _ = refuse(&mut wr, "bad_request", "the first frame must be hello").await;
                return None;
            }
        },
        Err(FrameError::TooLarge(n)) => {
            let _ = refuse(
                &mut wr,
                "too_large",
                format!("frame of {n} bytes exceeds the limit"),
            )
            .await;
            return None;
        }
        Err(_) => return None,
    };
    let peer = Peer {
        uid: cred.uid(),
        pid,
        client,
        session: None,
    };
    Some((peer, rd, wr))
}

/// What the next frame on a connection is.
#[allow(clippy::large_enum_variant)] // one per frame, moved once, never stored
enum Next {
    /// A request, with its secret frame.
    Request(ClientFrame, Option<Zeroizing<Vec<u8>>>),
    /// A malformed request, answered with an error: read on.
    Skip,
    /// The connection ends.
    Close,
}

async fn next_request(rd: &mut OwnedReadHalf, wr: &mut OwnedWriteHalf) -> Next {
    let frame = match protocol::read_frame_async(rd).await {
        Ok(f) => f,
        Err(FrameError::TooLarge(n)) => {
            let _ = refuse(
                wr,
                "too_large",
                format!(
                    "frame of {n} bytes exceeds the {}-byte limit; closing",
                    protocol::MAX_FRAME
                ),
            )
            .await;
            return Next::Close;
        }
        Err(_) => return Next::Close,
    };
    let msg: ClientFrame = match serde_json::from_slice(&frame) {
        Ok(m) => m,
        Err(e) => {
            // The frame boundary is intact, so the connection can go on.
            let err = Error::BadRequest(format!("malformed request: {}", e.classify_name())).into();
            if send(wr, &ServerFrame::Err { id: 0, error: err })
                .await
                .is_err()
            {
                return Next::Close;
            }
            return Next::Skip;
        }
    };
    drop(frame);
    let secret = match msg.secret_len {
        None => None,
        Some(n) => match protocol::read_frame_async(rd).await {
            Ok(s) if s.len() == n as usize => Some(s),
            Ok(_) => {
                let err = Error::BadRequest("secret frame length does not match secret_len".into())
                    .into();
                if send(
                    wr,
                    &ServerFrame::Err {
                        id: msg.id,
                        error: err,
                    },
                )
                .await
                .is_err()
                {
                    return Next::Close;
                }
                return Next::Skip;
            }
            Err(_) => return Next::Close,
        },
    };
    Next::Request(msg, secret)
}

/// A PIN proof covers the request's exact bytes and unseals its secret;
/// any other use of the exchange counts as a wrong PIN (the error to send).
async fn prove_pin(
    broker: &Arc<Broker>,
    pin: &mut Option<custody_core::pake::PinSession>,
    msg: &ClientFrame,
    mut secret: Option<Zeroizing<Vec<u8>>>,
) -> Result<
    (
        Option<Zeroizing<Vec<u8>>>,
        Option<crate::broker::pin::PinVerified>,
    ),
    Error,
> {
    let Some(proof) = &msg.pin_proof else {
        return Ok((secret, None));
    };
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
            Ok((plain, Some(crate::broker::pin::PinVerified::new())))
        }
        None => Err(broker.pin_failed().await),
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
