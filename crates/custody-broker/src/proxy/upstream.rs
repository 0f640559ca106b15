//! The proxy's side towards upstream servers: their TLS (the platform's
//! roots and any extra), one connection per client connection, HTTP/2 when
//! the server offers it.

use std::sync::Arc;

use bytes::Bytes;
use http::header;
use http::{Request, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::exchange::{Origin, Shared, spawn_until_stopped};

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
    shared: &Shared,
    slot: &Mutex<Option<Upstream>>,
    req: Request<Full<Bytes>>,
) -> Result<hyper::Response<Incoming>, String> {
    let mut slot = slot.lock().await;
    if let Some(sender) = slot.as_mut()
        && sender.ready().await
    {
        return sender.send(origin, req).await;
    }
    let addr = shared.resolve.get(&origin.host).copied();
    let tcp = match addr {
        Some(a) => TcpStream::connect(a).await,
        None => TcpStream::connect((origin.host.as_str(), origin.port)).await,
    }
    .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let mut sender = if origin.scheme == "https" {
        let name = rustls::pki_types::ServerName::try_from(origin.host.clone())
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&shared.upstream))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        handshake(tls, h2, shared).await?
    } else {
        handshake(tcp, false, shared).await?
    };
    let response = sender.send(origin, req).await;
    *slot = Some(sender);
    response
}

/// Opens HTTP/2 (`h2`: the server chose it) or HTTP/1.1 on `io`; the
/// connection's task ends with the proxy.
async fn handshake<IO>(io: IO, h2: bool, shared: &Shared) -> Result<Upstream, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stop = shared.stop.clone();
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
