//! The per-lease HTTPS proxy of bound variables: the child holds a
//! placeholder, and the proxy puts the value in only on requests to the
//! destinations the human bound it to.
//!
//! One proxy per lease, on 127.0.0.1, usable only with the lease's
//! credentials (in the proxy URL, compared in constant time). A `CONNECT`
//! is answered, then the TLS inside it is terminated with a leaf
//! certificate of the lease's own CA ([`ca`]), minted per host; the
//! requests in it are read, checked and sent on over a fresh TLS
//! connection that verifies the real server (platform roots plus any
//! configured extra roots). Plain `http://` requests are handled the same
//! way without TLS. Every host is terminated, not only bound ones, so that
//! the egress rule holds everywhere: a request that carries a bound
//! variable's placeholder or value (in any form the masking engine knows)
//! to a destination it is not bound to is refused with a 403 and reported.
//! Responses are masked. The proxy's tasks end when it is dropped.

mod ca;
mod exchange;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use custody_core::audit::AuditEvent;
use custody_core::mask::MaskingEngine;
use custody_core::secret::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use zeroize::Zeroizing;

pub use custody_core::bound::{Place, Rule, RuleError, placeholder};

/// A bound variable, as one lease's proxy holds it.
pub struct Bound {
    /// Its name.
    pub name: String,
    /// What the child holds instead.
    pub placeholder: String,
    /// The value, put in on allowed requests only.
    pub value: Value,
    /// Where it may go.
    pub rules: Vec<Rule>,
}

/// What a lease's proxy is given.
pub struct ProxyConfig {
    /// The lease (its events name it).
    pub lease_id: String,
    /// The lease's bound variables.
    pub bound: Vec<Bound>,
    /// Roots trusted for upstream servers besides the platform's.
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Host → address overrides (tests reach `api.example.test` this way).
    pub resolve: HashMap<String, SocketAddr>,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listening socket.
    #[error("the proxy cannot listen on 127.0.0.1: {0}")]
    Listen(#[from] std::io::Error),
    /// The lease's CA.
    #[error("the proxy's certificate authority cannot be made: {0}")]
    Ca(String),
    /// The platform's roots or randomness.
    #[error("the proxy cannot start: {0}")]
    Setup(String),
}

/// A running proxy. Dropping it stops it and every connection through it.
pub struct LeaseProxy {
    addr: SocketAddr,
    /// `custody:PASSWORD`, as it goes in the proxy URL.
    credentials: Zeroizing<String>,
    ca_pem: String,
    _tasks: JoinSet<()>,
    /// Dropped with the proxy: every connection's task sees it and ends.
    _stop: watch::Sender<bool>,
}

impl LeaseProxy {
    /// Starts a proxy for one lease. What it does goes to `events`, as the
    /// audit records it makes (`proxy_request`, `exfiltration_blocked`:
    /// destinations and names, never headers or bodies).
    pub async fn start(
        cfg: ProxyConfig,
        events: mpsc::UnboundedSender<AuditEvent>,
    ) -> Result<LeaseProxy, ProxyError> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let secret: [u8; 24] =
            custody_core::crypto::random_array().map_err(|e| ProxyError::Setup(e.to_string()))?;
        let credentials = Zeroizing::new(format!("custody:{}", hex::encode(secret)));
        let authority = ca::Authority::new().map_err(|e| ProxyError::Ca(e.to_string()))?;
        let ca_pem = authority.ca_pem().to_owned();
        let upstream = upstream::upstream_tls(&cfg.extra_roots)
            .map_err(|e| ProxyError::Setup(e.to_string()))?;
        // Everything the masker and the egress check know: each bound
        // variable's value and its placeholder, under its name.
        let forms: Vec<(&str, &[u8])> = cfg
            .bound
            .iter()
            .flat_map(|b| {
                [
                    (b.name.as_str(), b.value.expose()),
                    (b.name.as_str(), b.placeholder.as_bytes()),
                ]
            })
            .collect();
        let detect = Arc::new(MaskingEngine::new(forms.iter().copied()));
        let values: Vec<(&str, &[u8])> = cfg
            .bound
            .iter()
            .map(|b| (b.name.as_str(), b.value.expose()))
            .collect();
        let mask = Arc::new(MaskingEngine::new(values.iter().copied()));
        drop((forms, values));
        let (stop_tx, stop) = watch::channel(false);
        let shared = Arc::new(exchange::Shared {
            lease_id: cfg.lease_id,
            bound: cfg.bound,
            authority,
            dialer: upstream::Dialer {
                resolve: cfg.resolve,
                tls: upstream,
            },
            detect,
            mask,
            credentials: credentials.clone(),
            events,
            stop,
            budget: tokio::sync::Semaphore::new(exchange::BODY_BUDGET as usize),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(listener, shared));
        Ok(LeaseProxy {
            addr,
            credentials,
            ca_pem,
            _tasks: tasks,
            _stop: stop_tx,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://custody:PASSWORD@127.0.0.1:PORT`: for the child's
    /// `HTTPS_PROXY` and `HTTP_PROXY` only.
    pub fn url(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "http://{}@{}",
            self.credentials.as_str(),
            self.addr
        ))
    }

    /// The lease CA's certificate (PEM), for the child's CA bundle.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

/// Accepts connections until the proxy is dropped; each connection's task
/// ends with it (the set aborts them when this task is aborted).
async fn accept_loop(listener: TcpListener, shared: Arc<exchange::Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                conns.spawn(exchange::serve_client(tcp, Arc::clone(&shared)));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}
