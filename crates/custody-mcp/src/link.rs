//! The MCP server's side of the broker socket: async connections, the
//! session registration kept open for the server's lifetime, and the errors
//! an agent sees (each says what to do next).
//!
//! Nothing here ever holds a secret value: the broker sends names, ids,
//! decisions and masked output only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use custody_broker::protocol::{
    self, ClientFrame, ClientInfo, Event, PROTOCOL_VERSION, Request, ServerFrame, WireError,
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

/// What can go wrong between a tool and the broker. Every message names the
/// next step for the agent (or its user) and is built from names and ids.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Nothing listens on the socket.
    #[error(
        "the custody broker is not running: ask the user to run `custody unlock`, then call this tool again"
    )]
    NotRunning,
    /// The connection broke or spoke nonsense.
    #[error(
        "the connection to the custody broker failed ({0}): ask the user to check `custody status` (and run `custody unlock` if the broker stopped), then retry"
    )]
    Connection(String),
    /// The broker answered with an error (its message says what to do).
    #[error("{}", .0.message)]
    Broker(WireError),
    /// The client cancelled the tool call.
    #[error("the call was cancelled; nothing is left pending or running")]
    Cancelled,
}

impl LinkError {
    /// The broker's error code, or a local one.
    pub fn code(&self) -> &str {
        match self {
            LinkError::NotRunning => "not_running",
            LinkError::Connection(_) => "connection",
            LinkError::Broker(e) => &e.code,
            LinkError::Cancelled => "cancelled",
        }
    }
}

fn conn_err(e: protocol::FrameError) -> LinkError {
    LinkError::Connection(e.to_string())
}

/// One hello'd connection to the broker.
pub struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    next_id: u64,
}

impl Conn {
    /// Connects to `socket` and says hello as `client`.
    pub async fn connect(socket: &Path, client: ClientInfo) -> Result<Conn, LinkError> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|_| LinkError::NotRunning)?;
        let (rd, wr) = stream.into_split();
        let mut c = Conn { rd, wr, next_id: 1 };
        c.call(Request::Hello {
            protocol: PROTOCOL_VERSION,
            client,
        })
        .await?;
        Ok(c)
    }

    /// Sends a request; returns its id.
    pub async fn send(&mut self, request: Request) -> Result<u64, LinkError> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = ClientFrame {
            id,
            secret_len: None,
            pin_proof: None,
            request,
        };
        let bytes = serde_json::to_vec(&frame)
            .map_err(|_| LinkError::Connection("cannot encode the request".into()))?;
        protocol::write_frame_async(&mut self.wr, &bytes)
            .await
            .map_err(conn_err)?;
        Ok(id)
    }

    /// Reads one frame. Not cancel-safe: use [`Conn::into_frames`] to wait
    /// for frames alongside other things.
    pub async fn read(&mut self) -> Result<ServerFrame, LinkError> {
        read_one(&mut self.rd).await
    }

    /// A request and its answer (events in between are dropped).
    pub async fn call(&mut self, request: Request) -> Result<Value, LinkError> {
        let id = self.send(request).await?;
        loop {
            match self.read().await? {
                ServerFrame::Ok { id: got, ok } if got == id => return Ok(ok),
                ServerFrame::Err { id: got, error } if got == id || got == 0 => {
                    return Err(LinkError::Broker(error));
                }
                _ => {}
            }
        }
    }

    /// A request whose answer is read straight into `T`: one parsing pass,
    /// no intermediate JSON tree (it halves the cost of a big listing).
    /// Events in between are skipped.
    pub async fn call_as<T: DeserializeOwned>(&mut self, request: Request) -> Result<T, LinkError> {
        let id = self.send(request).await?;
        loop {
            let bytes = protocol::read_frame_async(&mut self.rd)
                .await
                .map_err(conn_err)?;
            let frame: TypedFrame<T> = serde_json::from_slice(&bytes)
                .map_err(|_| LinkError::Connection("unexpected answer from the broker".into()))?;
            match frame {
                TypedFrame {
                    id: got,
                    ok: Some(v),
                    ..
                } if got == id => return Ok(v),
                TypedFrame {
                    id: got,
                    error: Some(e),
                    ..
                } if got == id || got == 0 => {
                    return Err(LinkError::Broker(e));
                }
                _ => {}
            }
        }
    }

    /// Splits into a frame channel fed by a reader task and the write half.
    /// Dropping both closes the connection, which the broker takes as the
    /// requester going away (a pending request is cancelled, a running
    /// lease is killed).
    pub fn into_frames(self) -> (Frames, OwnedWriteHalf) {
        let (tx, rx) = mpsc::channel(64);
        let mut rd = self.rd;
        let task = tokio::spawn(async move {
            loop {
                let f = read_one(&mut rd).await;
                let stop = f.is_err();
                if tx.send(f).await.is_err() || stop {
                    return;
                }
            }
        });
        (Frames { rx, task }, self.wr)
    }
}

/// A broker frame whose answer has a known type (events are ignored).
#[derive(serde::Deserialize)]
struct TypedFrame<T> {
    id: u64,
    #[serde(default = "none")]
    ok: Option<T>,
    #[serde(default)]
    error: Option<WireError>,
}

fn none<T>() -> Option<T> {
    None
}

async fn read_one(rd: &mut OwnedReadHalf) -> Result<ServerFrame, LinkError> {
    let f = protocol::read_frame_async(rd).await.map_err(conn_err)?;
    serde_json::from_slice(&f)
        .map_err(|_| LinkError::Connection("unexpected answer from the broker".into()))
}

/// Frames read by a background task (cancel-safe to wait on).
pub struct Frames {
    rx: mpsc::Receiver<Result<ServerFrame, LinkError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Frames {
    /// The next frame; a connection error once the connection is gone.
    pub async fn next(&mut self) -> Result<ServerFrame, LinkError> {
        self.rx
            .recv()
            .await
            .unwrap_or_else(|| Err(LinkError::Connection("connection closed".into())))
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A frame of a streaming request, sorted.
pub enum Streamed {
    /// An event for the request.
    Event(Event),
    /// The answer.
    Done(Result<Value, LinkError>),
    /// Not ours (another id).
    Other,
}

/// Sorts `frame` for request `id`.
pub fn sort(frame: ServerFrame, id: u64) -> Streamed {
    match frame {
        ServerFrame::Ok { id: got, ok } if got == id => Streamed::Done(Ok(ok)),
        ServerFrame::Err { id: got, error } if got == id || got == 0 => {
            Streamed::Done(Err(LinkError::Broker(error)))
        }
        ServerFrame::Event { id: got, event } if got == id => Streamed::Event(event),
        _ => Streamed::Other,
    }
}

/// The agent client, as the MCP handshake (or a request's metadata) names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentClient {
    /// e.g. `codex`, `claude-code`.
    pub name: String,
    /// Its version.
    pub version: String,
}

/// How often a session the broker closed tries to register again.
const REREGISTER_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Registers `link`'s session again as soon as a broker answers (boxed: it
/// is spawned from inside [`Link::ensure_session`]).
fn reregister(link: std::sync::Weak<Link>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        loop {
            tokio::time::sleep(REREGISTER_EVERY).await;
            let Some(link) = link.upgrade() else { return };
            if link.ensure_session().await.is_ok() {
                return;
            }
        }
    })
}

/// The registered session: its connection stays open (the broker ends the
/// session when it closes); a task watches it so a broker restart is noticed
/// and the next tool call registers again.
struct Session {
    alive: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where the broker is and who we are to it.
pub struct Link {
    socket: PathBuf,
    session: tokio::sync::Mutex<Option<Session>>,
    client: std::sync::Mutex<Option<AgentClient>>,
}

impl Link {
    /// A link to the broker at `socket`; nothing is connected yet.
    pub fn new(socket: PathBuf) -> Link {
        Link {
            socket,
            session: tokio::sync::Mutex::new(None),
            client: std::sync::Mutex::new(None),
        }
    }

    /// Notes the agent client's identity (the first one seen wins: a session
    /// is one client).
    pub fn set_client(&self, client: AgentClient) {
        let mut c = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if c.is_none() {
            *c = Some(client);
        }
    }

    fn client(&self) -> AgentClient {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| AgentClient {
                name: "unknown".into(),
                version: String::new(),
            })
    }

    fn info(&self) -> ClientInfo {
        let c = self.client();
        ClientInfo {
            kind: "mcp".into(),
            name: c.name,
            version: c.version,
        }
    }

    /// Registers the session unless it is registered and its connection is
    /// still open. Every tool calls this first: until the broker knows this
    /// process as an agent's, its other connections would count as a
    /// terminal's. When the broker closes the session (it stopped, or was
    /// killed), this registers again as soon as a broker answers, without
    /// waiting for the next tool call.
    pub async fn ensure_session(self: &Arc<Self>) -> Result<(), LinkError> {
        let mut s = self.session.lock().await;
        if s.as_ref().is_some_and(|s| s.alive.load(Ordering::SeqCst)) {
            return Ok(());
        }
        *s = None;
        let client = self.client();
        let parent_pid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32);
        let cwd = std::env::current_dir()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut conn = Conn::connect(&self.socket, self.info()).await?;
        let reg = conn
            .call(Request::RegisterSession {
                client_name: client.name.clone(),
                client_version: client.version.clone(),
                parent_pid,
                cwd,
            })
            .await?;
        eprintln!(
            "custody mcp: registered session {} for {} {}",
            reg["session_id"].as_str().unwrap_or("?"),
            client.name,
            client.version
        );
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        let link = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            // The broker sends nothing on this connection unless asked; any
            // read result means it closed or broke.
            let _ = conn.read().await;
            flag.store(false, Ordering::SeqCst);
            eprintln!(
                "custody mcp: the broker closed the session; registering again as soon as it is back"
            );
            // A new task does the retrying: this one is owned by the session
            // it would replace.
            tokio::spawn(reregister(link));
        });
        *s = Some(Session { alive, task });
        Ok(())
    }

    /// A new connection for one tool call, after making sure the session is
    /// registered.
    pub async fn connect(self: &Arc<Self>) -> Result<Conn, LinkError> {
        self.ensure_session().await?;
        Conn::connect(&self.socket, self.info()).await
    }

    /// A request and its answer on a fresh connection.
    pub async fn call(self: &Arc<Self>, request: Request) -> Result<Value, LinkError> {
        self.connect().await?.call(request).await
    }
}
