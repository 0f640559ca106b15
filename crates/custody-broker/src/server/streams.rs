//! Requests answered with a stream of events: a run (its output, and what
//! the user types on a terminal), the watch stream, a scan's progress.

use super::*;

use crate::Error;

/// Sends `work`'s result for request `id`, and the events it sends on
/// `events` while it runs.
pub(super) async fn with_events(
    wr: &mut OwnedWriteHalf,
    id: u64,
    work: impl std::future::Future<Output = Result<Value, Error>>,
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
pub(super) const TYPED_AHEAD: usize = 1024;

/// A `run_input`/`run_resize` frame, as the lease takes it.
pub(super) fn typed_input(frame: &[u8]) -> Option<crate::lease::PtyInput> {
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
pub(super) async fn run_streaming(
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
                break r.unwrap_or_else(|_| Err(Error::Internal("run failed".into())));
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
pub(super) async fn watch_events(
    broker: &Arc<Broker>,
    me: &crate::grants::Requester,
    id: u64,
    rd: &mut tokio::net::unix::OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
) {
    let mut rx = broker.subscribe();
    if send_typed(wr, id, Ok(protocol::Watching { watching: true }))
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
