//! One client connection to a lease's proxy: the proxy credentials, the
//! `CONNECT` and the TLS inside it, and each request: checked against the
//! bindings, the value put in where bound, sent on, the response masked.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use custody_core::bound::{Place, Rule};
use custody_core::mask::{Masker, MaskingEngine};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc, watch};
use zeroize::Zeroizing;

use custody_core::audit::AuditEvent;

use super::Bound;
use super::upstream::{Dialer, Origin, Upstream, send, spawn_until_stopped, stopped};

/// Largest request body the proxy reads (it must see all of it to check
/// where the variables in it may go).
const MAX_REQUEST_BODY: usize = 64 * 1024 * 1024;
/// Request bodies one proxy holds at once, at most (in [`BUDGET_UNIT`]s):
/// a child sending many large requests at once waits instead of making
/// the broker hold them all.
pub const BODY_BUDGET: u32 = 256 * 1024 * 1024 / BUDGET_UNIT as u32;
/// The budget's unit, in bytes.
const BUDGET_UNIT: usize = 64 * 1024;

/// What every connection of one proxy shares.
pub struct Shared {
    pub lease_id: String,
    pub bound: Vec<Bound>,
    pub authority: super::ca::Authority,
    /// How upstream servers are reached.
    pub dialer: Dialer,
    /// Values and placeholders (the egress check).
    pub detect: Arc<MaskingEngine>,
    /// Values (responses).
    pub mask: Arc<MaskingEngine>,
    pub credentials: Zeroizing<String>,
    pub events: mpsc::UnboundedSender<AuditEvent>,
    /// Turns to `true` (or closes) when the proxy stops: every task ends.
    pub stop: watch::Receiver<bool>,
    /// Request body bytes held at once ([`BODY_BUDGET`]).
    pub budget: tokio::sync::Semaphore,
}

type ProxyBody = BoxBody<Bytes, std::io::Error>;

/// Serves one client connection until it closes or the proxy stops.
pub async fn serve_client(tcp: TcpStream, shared: Arc<Shared>) {
    let stop = shared.stop.clone();
    let svc = {
        let shared = Arc::clone(&shared);
        service_fn(move |req| outer(req, Arc::clone(&shared)))
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), svc)
        .with_upgrades();
    tokio::select! {
        _ = conn => {}
        _ = stopped(stop) => {}
    }
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Whether the request carries this proxy's credentials (Basic, compared
/// in constant time).
fn authorized(headers: &HeaderMap, shared: &Shared) -> bool {
    use base64::Engine;
    use subtle::ConstantTimeEq;
    let Some(given) = headers
        .get(header::PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(given.trim()) else {
        return false;
    };
    let decoded = Zeroizing::new(decoded);
    bool::from(decoded.as_slice().ct_eq(shared.credentials.as_bytes()))
}

/// A request to the proxy itself: `CONNECT host:port`, or an absolute-form
/// `http://` request.
async fn outer(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<ProxyBody>, Infallible> {
    if !authorized(req.headers(), &shared) {
        let mut r = text(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "custody: this proxy serves one lease; use the proxy URL the lease was given\n".into(),
        );
        r.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"custody lease\""),
        );
        return Ok(r);
    }
    if req.method() == Method::CONNECT {
        let Some((host, port)) = req
            .uri()
            .authority()
            .map(|a| (a.host().to_ascii_lowercase(), a.port_u16().unwrap_or(443)))
        else {
            return Ok(text(
                StatusCode::BAD_REQUEST,
                "CONNECT needs host:port\n".into(),
            ));
        };
        spawn_until_stopped(shared.stop.clone(), async move {
            if let Ok(upgraded) = hyper::upgrade::on(req).await {
                intercept(TokioIo::new(upgraded), host, port, shared).await;
            }
        });
        return Ok(Response::new(
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        ));
    }
    let uri = req.uri();
    if uri.scheme_str() != Some("http") {
        return Ok(text(
            StatusCode::BAD_REQUEST,
            "custody: send https:// through CONNECT, http:// in absolute form\n".into(),
        ));
    }
    let Some(host) = uri.host().map(str::to_ascii_lowercase) else {
        return Ok(text(StatusCode::BAD_REQUEST, "no host\n".into()));
    };
    let origin = Origin {
        scheme: "http",
        port: uri.port_u16().unwrap_or(80),
        host,
    };
    exchange(req, origin, shared, Arc::new(Mutex::new(None))).await
}

/// The TLS inside a `CONNECT`: terminated with the lease CA's certificate
/// for `host`, its requests served one by one.
async fn intercept<IO>(io: IO, host: String, port: u16, shared: Arc<Shared>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(config) = shared.authority.server_config(&host) else {
        return;
    };
    let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(io).await else {
        return;
    };
    // The destination is what CONNECT named; a TLS name for another host
    // would have the checks and the certificate disagree.
    if let Some(sni) = tls.get_ref().1.server_name()
        && !sni.eq_ignore_ascii_case(&host)
    {
        return;
    }
    let origin = Origin {
        scheme: "https",
        host,
        port,
    };
    let upstream = Arc::new(Mutex::new(None));
    let svc = service_fn(move |req| {
        exchange(
            req,
            origin.clone(),
            Arc::clone(&shared),
            Arc::clone(&upstream),
        )
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), svc)
        .await;
}

/// Headers that concern one hop, never forwarded.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "proxy-connection"
            | "keep-alive"
            | "proxy-authorization"
            | "proxy-authenticate"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

/// One request to `origin`: refused if it carries a variable not bound
/// there; else the value put in where bound, sent on, the answer masked.
async fn exchange(
    req: Request<Incoming>,
    origin: Origin,
    shared: Arc<Shared>,
    upstream: Arc<Mutex<Option<Upstream>>>,
) -> Result<Response<ProxyBody>, Infallible> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let (parts, body) = req.into_parts();
    // What the body may take of the budget: its known length (0 for none),
    // or the most a body may be when it is streamed without one. Held until
    // it is sent on.
    let hint = body.size_hint();
    let declared = hint
        .exact()
        .or(hint.upper())
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(MAX_REQUEST_BODY)
        .min(MAX_REQUEST_BODY);
    let units = u32::try_from(declared.div_ceil(BUDGET_UNIT).max(1)).unwrap_or(BODY_BUDGET);
    let Ok(_held) = shared.budget.acquire_many(units).await else {
        return Ok(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "custody: proxy stopping\n".into(),
        ));
    };
    let Ok(body) = Limited::new(body, declared.max(1)).collect().await else {
        return Ok(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "custody: request body too large for the lease's proxy\n".into(),
        ));
    };
    let body = body.to_bytes();
    let allowed: Vec<&Bound> = shared
        .bound
        .iter()
        .filter(|b| {
            b.rules
                .iter()
                .any(|r| r.allows(origin.scheme, &origin.host, origin.port, &method, &path))
        })
        .collect();
    // Everything the request carries: its target, its headers, its body.
    let mut carried = Zeroizing::new(Vec::with_capacity(target.len() + body.len() + 512));
    carried.extend_from_slice(target.as_bytes());
    carried.push(b'\n');
    for (name, value) in &parts.headers {
        if hop_by_hop(name) {
            continue;
        }
        carried.extend_from_slice(name.as_str().as_bytes());
        carried.extend_from_slice(b": ");
        carried.extend_from_slice(value.as_bytes());
        carried.push(b'\n');
    }
    carried.extend_from_slice(&body);
    let found = shared.detect.find_variables(&carried);
    let refused: Vec<String> = found
        .iter()
        .filter(|name| !allowed.iter().any(|b| &&b.name == name))
        .cloned()
        .collect();
    if !refused.is_empty() {
        let _ = shared.events.send(AuditEvent::ExfiltrationBlocked {
            lease_id: shared.lease_id.clone(),
            destination: origin.destination(),
            method,
            path,
            variables: refused.clone(),
        });
        return Ok(text(
            StatusCode::FORBIDDEN,
            format!(
                "custody refused this request: it carries {} to {}, where {} not bound (see `custody audit`)\n",
                refused.join(", "),
                origin.destination(),
                if refused.len() == 1 {
                    "it is"
                } else {
                    "they are"
                }
            ),
        ));
    }
    // Headers as sent, the bound variables' put in where their binding
    // says (only when the request carries the placeholder there).
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 2);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let mut injected = Vec::new();
    let (mut target, mut body) = (target, body);
    for b in &allowed {
        let Some(rule) = b
            .rules
            .iter()
            .find(|r| r.allows(origin.scheme, &origin.host, origin.port, &method, &path))
        else {
            continue;
        };
        let placeholder = b.placeholder.as_bytes();
        let put = match rule.place {
            Place::Header => {
                let uses = parts
                    .headers
                    .values()
                    .any(|v| memchr::memmem::find(v.as_bytes(), placeholder).is_some());
                if !uses {
                    continue;
                }
                let Some(value) = header_value(rule, b.value.expose()) else {
                    return Ok(text(
                        StatusCode::BAD_GATEWAY,
                        format!("custody: {}'s value cannot go in a header\n", b.name),
                    ));
                };
                let Ok(name) = HeaderName::from_bytes(rule.header.as_bytes()) else {
                    continue;
                };
                headers.insert(name, value);
                true
            }
            Place::Query => match target.split_once('?') {
                Some((p, query)) if query.contains(&b.placeholder) => {
                    let encoded = percent_encoding::percent_encode(b.value.expose(), QUERY_VALUE);
                    target = format!(
                        "{p}?{}",
                        query.replace(&b.placeholder, &encoded.to_string())
                    );
                    true
                }
                _ => false,
            },
            Place::Body => match memchr::memmem::find(&body, placeholder) {
                Some(_) => {
                    body = Bytes::from(replace_all(&body, placeholder, b.value.expose()));
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                    true
                }
                None => false,
            },
        };
        if put {
            injected.push(b.name.clone());
        }
    }
    if let Ok(host) = HeaderValue::from_str(&origin.host_header()) {
        headers.insert(header::HOST, host);
    }
    let mut out = Request::new(Full::new(body));
    *out.method_mut() = parts.method;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = headers;
    match target.parse() {
        Ok(uri) => *out.uri_mut() = uri,
        Err(_) => return Ok(text(StatusCode::BAD_REQUEST, "bad request target\n".into())),
    }
    let response = match send(&origin, &shared.dialer, &shared.stop, &upstream, out).await {
        Ok(r) => r,
        Err(e) => {
            return Ok(text(
                StatusCode::BAD_GATEWAY,
                format!(
                    "custody: {} cannot be reached ({e})\n",
                    origin.destination()
                ),
            ));
        }
    };
    let (mut parts, body) = response.into_parts();
    let status = parts.status.as_u16();
    // Masking may change the length.
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.retain_hop_by_hop();
    let event = AuditEvent::ProxyRequest {
        lease_id: shared.lease_id.clone(),
        destination: origin.destination(),
        method,
        path,
        status,
        bytes: 0,
        injected,
    };
    let masked = MaskedBody {
        inner: body,
        masker: shared.mask.masker(),
        done: false,
        bytes: 0,
        event: Some((event, shared.events.clone())),
    };
    Ok(Response::from_parts(parts, masked.boxed()))
}

/// Everything but RFC 3986's unreserved characters, for a value put in a
/// query string.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The binding's header value: its template with the value in it, marked
/// sensitive (HTTP/2 never indexes it).
fn header_value(rule: &Rule, value: &[u8]) -> Option<HeaderValue> {
    let (before, after) = rule
        .template
        .split_once("{value}")
        .unwrap_or((rule.template.as_str(), ""));
    let mut v = Zeroizing::new(Vec::with_capacity(rule.template.len() + value.len()));
    v.extend_from_slice(before.as_bytes());
    v.extend_from_slice(value);
    v.extend_from_slice(after.as_bytes());
    let mut header = HeaderValue::from_bytes(&v).ok()?;
    header.set_sensitive(true);
    Some(header)
}

/// `haystack` with every `from` replaced by `to`.
fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len() + to.len());
    let mut rest = haystack;
    while let Some(i) = memchr::memmem::find(rest, from) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(to);
        rest = &rest[i + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// Removes hop-by-hop headers (a small extension so the call reads as
/// what it does).
trait RetainHopByHop {
    fn retain_hop_by_hop(&mut self);
}

impl RetainHopByHop for HeaderMap {
    fn retain_hop_by_hop(&mut self) {
        let names: Vec<HeaderName> = self.keys().filter(|n| hop_by_hop(n)).cloned().collect();
        for n in names {
            self.remove(n);
        }
    }
}

/// A response body, masked on its way to the child; reports the exchange
/// when it ends (or is dropped).
struct MaskedBody {
    inner: Incoming,
    masker: Masker,
    done: bool,
    bytes: u64,
    event: Option<(AuditEvent, mpsc::UnboundedSender<AuditEvent>)>,
}

impl MaskedBody {
    fn report(&mut self) {
        if let Some((mut event, tx)) = self.event.take() {
            if let AuditEvent::ProxyRequest { bytes, .. } = &mut event {
                *bytes = self.bytes;
            }
            let _ = tx.send(event);
        }
    }
}

impl Drop for MaskedBody {
    fn drop(&mut self) {
        self.report();
    }
}

impl Body for MaskedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(std::io::Error::other(e))));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        // Trailers: not forwarded (they could carry anything).
                        continue;
                    };
                    self.bytes += data.len() as u64;
                    let mut out = Vec::with_capacity(data.len());
                    self.masker.push(&data, &mut out);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                }
                Poll::Ready(None) => {
                    self.done = true;
                    let mut out = Vec::new();
                    self.masker.finish(&mut out);
                    self.report();
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
