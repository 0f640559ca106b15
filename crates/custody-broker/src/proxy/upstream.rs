//! The proxy's side towards upstream servers: where a request goes
//! ([`Origin`]), their TLS (the platform's roots and any extra), one
//! connection per client connection, HTTP/2 when the server offers it, and
//! the tasks that end when the proxy stops. Imports nothing from
//! `exchange` (which uses it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header;
use http::{Request, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, watch};

/// How the proxy reaches upstream servers: names the broker was told to
/// resolve itself (`CUSTODY_PROXY_RESOLVE`), and their TLS.
pub struct Dialer {
    /// Host names resolved to these addresses instead of by DNS.
    pub resolve: HashMap<String, SocketAddr>,
    /// The TLS client configuration ([`upstream_tls`]).
    pub tls: Arc<rustls::ClientConfig>,
}

/// The TLS client configuration for upstream servers: the platform's
/// roots and `extra`.
pub(super) fn upstream_tls(
    extra: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A platform root rustls cannot parse is skipped, as browsers do.
        let _ = roots.add(cert);
    }
    for cert in extra {
        roots.add(cert.clone()).map_err(|e| e.to_string())?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A connection to the upstream server, HTTP/2 when it offers it.
pub(super) enum Upstream {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Upstream {
    /// Whether it can take another request (waits for the one before).
    pub(super) async fn ready(&mut self) -> bool {
        match self {
            Upstream::H1(s) => s.ready().await.is_ok(),
            Upstream::H2(s) => s.ready().await.is_ok(),
        }
    }

    /// Sends `req` (origin-form, with a `Host` header) as this connection's
    /// version wants it: HTTP/2 takes the scheme and authority in the URI.
    pub(super) async fn send(
        &mut self,
        origin: &Origin,
        mut req: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<Incoming>, String> {
        match self {
            Upstream::H1(s) => s.send_request(req).await.map_err(|e| e.to_string()),
            Upstream::H2(s) => {
                let target = req
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                let absolute = format!("{}://{}{target}", origin.scheme, origin.host_header());
                *req.uri_mut() = absolute
                    .parse()
                    .map_err(|_| "bad request target".to_owned())?;
                *req.version_mut() = Version::HTTP_2;
                req.headers_mut().remove(header::HOST);
                s.send_request(req).await.map_err(|e| e.to_string())
            }
        }
    }
}

/// Sends `req` over the connection's upstream connection, opening one
/// (TCP, then TLS verified against the upstream roots) when there is none
/// or it closed.
pub(super) async fn send(
    origin: &Origin,
    dialer: &Dialer,
    stop: &watch::Receiver<bool>,
    slot: &Mutex<Option<Upstream>>,
    req: Request<Full<Bytes>>,
) -> Result<hyper::Response<Incoming>, String> {
    let mut slot = slot.lock().await;
    if let Some(sender) = slot.as_mut()
        && sender.ready().await
    {
        return sender.send(origin, req).await;
    }
    let addr = dialer.resolve.get(&origin.host).copied();
    let tcp = match addr {
        Some(a) => TcpStream::connect(a).await,
        None => TcpStream::connect((origin.host.as_str(), origin.port)).await,
    }
    .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let mut sender = if origin.scheme == "https" {
        let name = rustls::pki_types::ServerName::try_from(origin.host.clone())
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&dialer.tls))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        handshake(tls, h2, stop).await?
    } else {
        handshake(tcp, false, stop).await?
    };
    let response = sender.send(origin, req).await;
    *slot = Some(sender);
    response
}

/// Opens HTTP/2 (`h2`: the server chose it) or HTTP/1.1 on `io`; the
/// connection's task ends with the proxy.
async fn handshake<IO>(io: IO, h2: bool, stop: &watch::Receiver<bool>) -> Result<Upstream, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stop = stop.clone();
    let io = TokioIo::new(io);
    if h2 {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        spawn_until_stopped(stop, conn);
        return Ok(Upstream::H2(sender));
    }
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    spawn_until_stopped(stop, conn);
    Ok(Upstream::H1(sender))
}

/// The scheme, host and port a request goes to.
#[derive(Debug, Clone)]
pub(super) struct Origin {
    pub(super) scheme: &'static str,
    pub(super) host: String,
    pub(super) port: u16,
}

impl Origin {
    pub(super) fn destination(&self) -> String {
        let default = if self.scheme == "https" { 443 } else { 80 };
        if self.port == default {
            format!("{}://{}", self.scheme, self.host)
        } else {
            format!("{}://{}:{}", self.scheme, self.host, self.port)
        }
    }

    pub(super) fn host_header(&self) -> String {
        let default = if self.scheme == "https" { 443 } else { 80 };
        if self.port == default {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Resolves when the proxy stops.
pub(super) async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Runs `work` on its own task until it ends or the proxy stops.
pub(super) fn spawn_until_stopped(
    stop: watch::Receiver<bool>,
    work: impl std::future::Future<Output = impl Send> + Send + 'static,
) {
    tokio::spawn(async move {
        tokio::select! {
            _ = work => {}
            _ = stopped(stop) => {}
        }
    });
}
