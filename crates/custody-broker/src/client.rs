//! A blocking client for the broker, as the CLI uses it.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use custody_core::pake;
use serde_json::Value;

use crate::protocol::{
    self, ClientFrame, ClientInfo, Event, FrameError, PROTOCOL_VERSION, Request, ServerFrame,
    WireError,
};

/// Client errors: the broker is not there, or said no.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "the custody broker is not running (no socket at {0}): run `custody unlock` to start it"
    )]
    NotRunning(String),
    /// The connection broke.
    #[error("broker connection failed: {0}")]
    Frame(#[from] FrameError),
    /// The broker answered with an error.
    #[error("{0}")]
    Broker(WireError),
    /// The broker sent something unexpected.
    #[error("unexpected answer from the broker")]
    Protocol,
    /// The peer on the socket could not prove it is the broker (it does
    /// not hold the PIN verifier): nothing secret was sent.
    #[error(
        "refusing to go on: the process on the broker socket did not prove it is custody's broker ({0}); nothing secret was sent. Check `custody status` and the socket's owner"
    )]
    NotTheBroker(String),
}

impl ClientError {
    /// The broker's error code, if it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Broker(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// A connection to the broker.
pub struct Client {
    stream: UnixStream,
    next_id: u64,
    /// The hello sent but not yet answered: its answer is read before the
    /// next one (one round trip less per command; the broker reads the
    /// hello before anything else, so the order holds).
    hello: Option<u64>,
}

impl Client {
    /// Connects and says hello. The hello's answer is read with the first
    /// request's (a broker that refuses it fails that request with its
    /// reason).
    pub fn connect(socket: &Path, client: ClientInfo) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(socket)
            .map_err(|_| ClientError::NotRunning(socket.display().to_string()))?;
        let mut c = Client {
            stream,
            next_id: 1,
            hello: None,
        };
        let id = c.send(
            Request::Hello {
                protocol: PROTOCOL_VERSION,
                client,
            },
            None,
        )?;
        c.hello = Some(id);
        Ok(c)
    }

    /// Whether a broker answers on `socket`.
    pub fn is_running(socket: &Path) -> bool {
        UnixStream::connect(socket).is_ok()
    }

    /// Sets a read timeout (for polling loops).
    pub fn set_timeout(&self, t: Option<Duration>) {
        let _ = self.stream.set_read_timeout(t);
    }

    /// A second handle on this connection for what the user types into a
    /// run on a terminal (`RunSpec::pty`), usable from another thread
    /// while [`Client::call_streaming`] reads the run's events.
    pub fn typist(&self) -> Result<Typist, ClientError> {
        Ok(Typist {
            stream: self.stream.try_clone().map_err(FrameError::from)?,
        })
    }

    fn send(&mut self, request: Request, secret: Option<&[u8]>) -> Result<u64, ClientError> {
        self.send_frame(request, secret, None)
    }

    fn send_frame(
        &mut self,
        request: Request,
        secret: Option<&[u8]>,
        pin_proof: Option<String>,
    ) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = ClientFrame {
            id,
            secret_len: secret.map(|s| s.len() as u32),
            pin_proof,
            request,
        };
        let bytes = serde_json::to_vec(&frame).map_err(|_| ClientError::Protocol)?;
        protocol::write_frame(&mut self.stream, &bytes)?;
        if let Some(s) = secret {
            protocol::write_frame(&mut self.stream, s)?;
        }
        Ok(id)
    }

    /// Reads the next frame from the broker (after the hello's answer).
    pub fn read(&mut self) -> Result<ServerFrame, ClientError> {
        loop {
            let f = protocol::read_frame(&mut self.stream)?;
            let frame = serde_json::from_slice(&f).map_err(|_| ClientError::Protocol)?;
            let Some(hello) = self.hello else {
                return Ok(frame);
            };
            match frame {
                ServerFrame::Ok { id, .. } if id == hello => self.hello = None,
                ServerFrame::Err { id, error } if id == hello || id == 0 => {
                    return Err(ClientError::Broker(error));
                }
                _ => return Err(ClientError::Protocol),
            }
        }
    }

    /// A request and its answer.
    pub fn call(&mut self, request: Request) -> Result<Value, ClientError> {
        self.call_inner(request, None, &mut |_| {})
    }

    /// A request whose answer is one of the typed views
    /// ([`crate::protocol::Status`], [`crate::protocol::LeaseListing`], …).
    pub fn call_as<T: serde::de::DeserializeOwned>(
        &mut self,
        request: Request,
    ) -> Result<T, ClientError> {
        serde_json::from_value(self.call(request)?).map_err(|_| ClientError::Protocol)
    }

    /// The broker's state.
    pub fn status(&mut self) -> Result<crate::protocol::Status, ClientError> {
        self.call_as(Request::Status)
    }

    /// A request carrying a secret frame (passphrase, PIN, value).
    pub fn call_with_secret(
        &mut self,
        request: Request,
        secret: &[u8],
    ) -> Result<Value, ClientError> {
        self.call_inner(request, Some(secret), &mut |_| {})
    }

    /// A request whose events (pending, output) go to `on_event` until the
    /// answer arrives.
    pub fn call_streaming(
        &mut self,
        request: Request,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Value, ClientError> {
        self.call_inner(request, None, on_event)
    }

    /// A request that needs the approval PIN. The PIN never leaves this
    /// process: a PIN exchange (`custody_core::pake`) proves it, the broker
    /// proves it holds the verifier before anything else is sent (so a fake
    /// socket learns neither the PIN nor `secret`), and `secret` travels
    /// sealed under the exchange's key.
    pub fn call_with_pin(
        &mut self,
        request: Request,
        pin: &[u8],
        secret: Option<&[u8]>,
    ) -> Result<Value, ClientError> {
        let params = self.call(Request::PinChallenge)?;
        let params = params["params"].as_str().ok_or(ClientError::Protocol)?;
        let hash =
            pake::pin_hash(pin, params).map_err(|e| ClientError::NotTheBroker(e.to_string()))?;
        let (exchange, msg) = pake::CliExchange::start(&hash);
        drop(hash);
        let reply = self.call(Request::PinExchange {
            msg: hex::encode(msg),
        })?;
        let field = |k: &str| {
            reply[k]
                .as_str()
                .and_then(|h| hex::decode(h).ok())
                .ok_or(ClientError::Protocol)
        };
        let (broker_msg, confirm) = (field("msg")?, field("confirm")?);
        let session = match exchange.finish(&broker_msg, &confirm) {
            Ok(s) => s,
            Err(_) => {
                // Wrong PIN, or not the broker: the real broker counts it
                // and says how many attempts are left; nothing else is sent.
                return Err(match self.call(Request::PinAbort) {
                    Err(ClientError::Broker(e)) => ClientError::Broker(WireError::new(
                        &e.code,
                        format!(
                            "{} (if the PIN is right, the socket may not be custody's broker: nothing was sent)",
                            e.message
                        ),
                    )),
                    _ => ClientError::NotTheBroker(
                        "the peer did not prove it holds the PIN verifier".into(),
                    ),
                });
            }
        };
        self.send_proven(request, &session, secret)
    }

    /// A change proven with the vault's change-proof subkey (derived from
    /// the passphrase by opening the vault file) instead of the PIN;
    /// `secret` travels sealed.
    pub fn call_with_vault_key(
        &mut self,
        request: Request,
        subkey: &custody_core::crypto::Key,
        secret: Option<&[u8]>,
    ) -> Result<Value, ClientError> {
        let v = self.call(Request::KeyChallenge)?;
        let nonce = v["nonce"]
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .ok_or(ClientError::Protocol)?;
        let session = pake::PinSession::from_vault_subkey(subkey, &nonce);
        self.send_proven(request, &session, secret)
    }

    fn send_proven(
        &mut self,
        request: Request,
        session: &pake::PinSession,
        secret: Option<&[u8]>,
    ) -> Result<Value, ClientError> {
        let bytes = serde_json::to_vec(&request).map_err(|_| ClientError::Protocol)?;
        let proof = hex::encode(session.proof(&bytes));
        let sealed = match secret {
            Some(s) => Some(session.seal(&bytes, s).map_err(|_| ClientError::Protocol)?),
            None => None,
        };
        let id = self.send_frame(request, sealed.as_deref(), Some(proof))?;
        self.answer(id, &mut |_| {})
    }

    fn call_inner(
        &mut self,
        request: Request,
        secret: Option<&[u8]>,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Value, ClientError> {
        let id = self.send(request, secret)?;
        self.answer(id, on_event)
    }

    fn answer(&mut self, id: u64, on_event: &mut dyn FnMut(Event)) -> Result<Value, ClientError> {
        loop {
            match self.read()? {
                ServerFrame::Ok { id: got, ok } if got == id => return Ok(ok),
                ServerFrame::Err { id: got, error } if got == id || got == 0 => {
                    return Err(ClientError::Broker(error));
                }
                ServerFrame::Event { id: got, event } if got == id || got == 0 => on_event(event),
                _ => {}
            }
        }
    }
}

/// Sends typed input and size changes into a run on a terminal (see
/// [`Client::typist`]). Nothing is answered.
pub struct Typist {
    stream: UnixStream,
}

impl Typist {
    /// Bytes typed (`end`: and then the input ended).
    pub fn typed(&mut self, bytes: &[u8], end: bool) -> Result<(), ClientError> {
        self.send(Request::RunInput {
            data: protocol::b64(bytes),
            eof: end,
        })
    }

    /// The terminal's new size.
    pub fn resized(&mut self, size: protocol::TermSize) -> Result<(), ClientError> {
        self.send(Request::RunResize(size))
    }

    fn send(&mut self, request: Request) -> Result<(), ClientError> {
        let frame = ClientFrame {
            id: 0,
            secret_len: None,
            pin_proof: None,
            request,
        };
        let bytes =
            zeroize::Zeroizing::new(serde_json::to_vec(&frame).map_err(|_| ClientError::Protocol)?);
        Ok(protocol::write_frame(&mut self.stream, &bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    fn info() -> ClientInfo {
        ClientInfo {
            kind: "cli".into(),
            name: "test".into(),
            version: String::new(),
        }
    }

    /// A peer that reads `frames` frames, then answers with `answers`.
    fn peer(answers: Vec<Value>, frames: usize) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            for _ in 0..frames {
                protocol::read_frame(&mut s).unwrap();
            }
            for a in answers {
                protocol::write_frame(&mut s, a.to_string().as_bytes()).unwrap();
            }
        });
        (dir, path)
    }

    /// The hello goes with the first request (one round trip less); its
    /// answer is read first, and a refused hello fails that request with
    /// the broker's reason.
    #[test]
    fn the_hello_is_answered_before_the_first_request() {
        let (_d, path) = peer(
            vec![
                serde_json::json!({"id": 1, "ok": {"protocol": PROTOCOL_VERSION, "broker": "x"}}),
                serde_json::json!({"id": 2, "ok": {"answer": 42}}),
            ],
            2,
        );
        let mut c = Client::connect(&path, info()).unwrap();
        assert_eq!(c.call(Request::Status).unwrap()["answer"], 42);

        let (_d, path) = peer(
            vec![serde_json::json!({"id": 1, "error": {"code": "version", "message": "no"}})],
            2,
        );
        let mut c = Client::connect(&path, info()).unwrap();
        assert_eq!(c.call(Request::Status).unwrap_err().code(), Some("version"));

        // Anything else first is not a broker speaking this protocol.
        let (_d, path) = peer(vec![serde_json::json!({"id": 2, "ok": {}})], 2);
        let mut c = Client::connect(&path, info()).unwrap();
        assert!(matches!(
            c.call(Request::Status),
            Err(ClientError::Protocol)
        ));
    }
}
