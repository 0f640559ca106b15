//! The broker's wire protocol.
//!
//! Every frame is a big-endian `u32` length followed by that many bytes, at
//! most [`MAX_FRAME`]. A frame is a JSON object, except a *secret frame*: a
//! request whose `secret_len` is set is followed by one raw frame of exactly
//! that many bytes (a passphrase, a PIN, a value). Secret bytes never pass
//! through serde, so no serializable type ever holds one; they are read
//! straight into a zeroizing buffer.
//!
//! The first frame on a connection is `hello` with [`PROTOCOL_VERSION`].
//! Requests carry an `id`; the broker answers each with one response frame
//! (`{"id", "ok": ...}` or `{"id", "error": {"code", "message"}}`) and may
//! send event frames before it (`{"id", "event": ...}`: output chunks of a
//! run, a pending approval) or at any time to a watcher (`id` 0).

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

mod answers;
mod request;
mod views;
pub use answers::*;
pub use request::*;
pub use views::*;

/// Version spoken by this build; `hello` with another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame, in bytes. A longer announced length gets an error frame and
/// the connection is closed before anything is allocated.
pub const MAX_FRAME: usize = 1 << 20;

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The peer announced a frame over [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// The connection closed (cleanly, between frames).
    #[error("connection closed")]
    Closed,
    /// An I/O error (including a close in the middle of a frame).
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// A frame that is not the JSON expected here.
    #[error("malformed message: {0}")]
    Malformed(String),
}

fn check_len(len: u32) -> Result<usize, FrameError> {
    let len = usize::try_from(len).map_err(|_| FrameError::TooLarge(usize::MAX))?;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Reads one frame (blocking). The buffer is zeroizing: it may be a secret.
pub fn read_frame(r: &mut impl Read) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = check_len(u32::from_be_bytes(len))?;
    let mut buf = Zeroizing::new(vec![0u8; len]);
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// Writes one frame (blocking), length and body in one `write`: a peer
/// woken by the length alone would only go back to wait for the body. The
/// buffer is zeroizing: the body may be a secret.
pub fn write_frame(w: &mut impl Write, bytes: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(bytes.len()).map_err(|_| FrameError::TooLarge(bytes.len()))?;
    check_len(len)?;
    let mut out = Zeroizing::new(Vec::with_capacity(4 + bytes.len()));
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    w.write_all(&out)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame (async).
pub async fn read_frame_async(
    r: &mut (impl AsyncRead + Unpin),
) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = check_len(u32::from_be_bytes(len))?;
    let mut buf = Zeroizing::new(vec![0u8; len]);
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Writes one frame (async).
pub async fn write_frame_async(
    w: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
) -> Result<(), FrameError> {
    let len = u32::try_from(bytes.len()).map_err(|_| FrameError::TooLarge(bytes.len()))?;
    check_len(len)?;
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

/// An error as sent on the wire: a stable code and a message built from
/// names and ids only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct WireError {
    /// Stable machine-readable code (`locked`, `denied`, `bad_request`, ...).
    pub code: String,
    /// One line for a human, saying what to do.
    pub message: String,
}

impl WireError {
    /// Builds an error.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        WireError {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// One environment of a [`Request::Catalog`] answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogEnvironment {
    /// Its name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Whether policy asks for a fresh approval for every run in it.
    pub always_approve: bool,
    /// Its variables, sorted by name.
    pub variables: Vec<CatalogVariable>,
}

/// One variable of a [`CatalogEnvironment`]: never its value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CatalogVariable {
    /// Its name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// How it reaches a child (`env`, `file`).
    pub kind: String,
    /// Whether a value is stored.
    pub is_set: bool,
}

/// A frame from the broker.
///
/// Serialized untagged (the key — `ok`, `error` or `event` — says which);
/// deserialized through [`WireFrame`], because serde's untagged enums buffer
/// the whole frame in an intermediate tree first, which doubled the cost of a
/// 1,000-variable listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged, try_from = "WireFrame")]
pub enum ServerFrame {
    /// The answer to request `id`.
    Ok {
        /// The request id.
        id: u64,
        /// The result.
        ok: serde_json::Value,
    },
    /// The failure of request `id` (id 0: the connection itself).
    Err {
        /// The request id.
        id: u64,
        /// What went wrong.
        error: WireError,
    },
    /// Something that happened while request `id` runs (0: pushed to a watcher).
    Event {
        /// The request id.
        id: u64,
        /// The event.
        event: Event,
    },
}

/// The shape of any broker frame, read in one pass (see [`ServerFrame`]).
#[derive(Deserialize)]
struct WireFrame {
    id: u64,
    #[serde(default, deserialize_with = "present")]
    ok: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<WireError>,
    #[serde(default)]
    event: Option<Event>,
}

/// A present `ok` key is an answer even when its value is `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

impl TryFrom<WireFrame> for ServerFrame {
    type Error = &'static str;

    fn try_from(f: WireFrame) -> Result<Self, Self::Error> {
        match (f.ok, f.error, f.event) {
            (Some(ok), None, None) => Ok(ServerFrame::Ok { id: f.id, ok }),
            (None, Some(error), None) => Ok(ServerFrame::Err { id: f.id, error }),
            (None, None, Some(event)) => Ok(ServerFrame::Event { id: f.id, event }),
            _ => Err("a broker frame carries exactly one of ok, error, event"),
        }
    }
}

/// Pushed events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A run waits for approval.
    Pending {
        /// The pending request's id.
        request_id: String,
        /// Hint for the human.
        approve_hint: String,
        /// On the `watch` stream: everything an approver is shown, so a
        /// queue needs no second request (unset on a run's own events).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<Box<PendingRequest>>,
    },
    /// The request was approved and the process started.
    Started {
        /// The lease.
        lease_id: String,
    },
    /// A chunk of masked output.
    Output {
        /// `stdout` or `stderr`.
        stream: String,
        /// The masked bytes, base64 (output may be binary).
        data: String,
    },
    /// A lease ended.
    LeaseEnded {
        /// The lease.
        lease_id: String,
        /// Why (`exited`, `deadline`, `revoked`, `locked`).
        reason: String,
    },
    /// The vault was locked.
    Locked,
    /// A scan asked with `progress`: how far it got (at most ten a second).
    ScanProgress {
        /// Files (or blobs) read so far.
        files: u64,
        /// Bytes read so far.
        bytes: u64,
    },
}

/// A typed answer as the `ok` of a response frame.
pub fn answer(typed: impl Serialize) -> Result<serde_json::Value, crate::Error> {
    serde_json::to_value(typed)
        .map_err(|_| crate::Error::Internal("the answer does not serialize".into()))
}

/// Encodes bytes for an [`Event::Output`].
pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes an [`Event::Output`]'s data.
pub fn unb64(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    #[test]
    fn frames_round_trip_and_cap() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"{\"a\":1}").unwrap();
        let mut r = &buf[..];
        assert_eq!(&read_frame(&mut r).unwrap()[..], b"{\"a\":1}");
        assert!(matches!(read_frame(&mut r), Err(FrameError::Closed)));

        let mut big = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        big.extend_from_slice(b"xx");
        assert!(matches!(
            read_frame(&mut &big[..]),
            Err(FrameError::TooLarge(_))
        ));
        let torn = [0, 0, 0, 9, b'x'];
        assert!(matches!(read_frame(&mut &torn[..]), Err(FrameError::Io(_))));
    }

    #[test]
    fn requests_serialize_as_documented() {
        let f = ClientFrame {
            id: 3,
            secret_len: Some(6),
            pin_proof: None,
            request: Request::Approve {
                request_id: "r1".into(),
                scope: ApprovalScope::For { secs: 900 },
            },
        };
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":3,"secret_len":6,"op":"approve","request_id":"r1","scope":"for","secs":900})
        );
        let back: ClientFrame = serde_json::from_value(json).unwrap();
        assert!(matches!(back.request, Request::Approve { .. }));
        let revoke = ClientFrame {
            id: 4,
            secret_len: None,
            pin_proof: None,
            request: Request::Revoke(RevokeTarget::Grant("g-1".into())),
        };
        let json = serde_json::to_value(&revoke).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":4,"op":"revoke","target":"grant","target_id":"g-1"})
        );
        let back: ClientFrame = serde_json::from_value(json).unwrap();
        assert_eq!(back.id, 4);
        assert!(matches!(back.request, Request::Revoke(RevokeTarget::Grant(g)) if g == "g-1"));
        let bad: Result<ClientFrame, _> = serde_json::from_str(r#"{"id":1,"op":"nope"}"#);
        assert!(bad.is_err());
    }
}
