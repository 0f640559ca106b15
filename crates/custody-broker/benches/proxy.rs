//! A lease's proxy against going direct, in one run: the added latency of
//! one small request on a kept-alive connection (the bound value put in,
//! the response masked), and body throughput.
//!
//! `cargo bench -p custody-broker --bench proxy`
//!
//! The upstream is a local HTTPS server (its own CA) on 127.0.0.1; the
//! client is hyper over rustls, kept alive, `CONNECT`ing through the
//! proxy with the lease's credentials and trusting the lease CA.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use custody_broker::proxy::{Bound, LeaseProxy, ProxyConfig, Rule, placeholder};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "sk_live_51BenchSecretValue0123456789abcdef";
const BULK: usize = 64 << 20;
const CHUNK: usize = 256 << 10;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Serves `/small` (a short answer) and `/bulk` (64 MiB) over TLS.
async fn upstream() -> (std::net::SocketAddr, CertificateDer<'static>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("key");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca, ca_key);
    let leaf = CertificateParams::new(vec!["api.example.test".into()]).expect("params");
    let leaf_key = KeyPair::generate().expect("key");
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).expect("leaf");
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .expect("cert");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, chunk) = (acceptor.clone(), chunk.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let chunk = chunk.clone();
                    async move {
                        type B = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;
                        let body: B = if req.uri().path() == "/v1/bulk" {
                            Bulk { left: BULK, chunk }.boxed()
                        } else {
                            Full::new(Bytes::from_static(b"{\"ok\":true}\n"))
                                .map_err(|never| match never {})
                                .boxed()
                        };
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, ca_cert.der().clone())
}

/// `left` bytes of `chunk`s.
struct Bulk {
    left: usize,
    chunk: Bytes,
}

impl hyper::body::Body for Bulk {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= self.chunk.len();
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }
}

/// A kept-alive TLS connection to `api.example.test`, direct or through
/// the proxy (a `CONNECT` with the lease's credentials first).
async fn connect(
    upstream: std::net::SocketAddr,
    root: CertificateDer<'static>,
    proxy: Option<(&str, std::net::SocketAddr)>,
) -> SendRequest<Full<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tcp = match proxy {
        Some((credentials, addr)) => {
            let mut tcp = TcpStream::connect(addr).await.expect("proxy");
            let auth = base64::engine::general_purpose::STANDARD.encode(credentials);
            let port = upstream.port();
            tcp.write_all(
                format!(
                    "CONNECT api.example.test:{port} HTTP/1.1\r\nHost: api.example.test:{port}\r\nProxy-Authorization: Basic {auth}\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .expect("connect");
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(tcp.read_u8().await.expect("answer"));
            }
            assert!(head.starts_with(b"HTTP/1.1 200"), "CONNECT refused");
            tcp
        }
        None => TcpStream::connect(upstream).await.expect("upstream"),
    };
    tcp.set_nodelay(true).expect("nodelay");
    let _ = &mut tcp;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("api.example.test").expect("name"), tcp)
        .await
        .expect("tls");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

async fn get(sender: &mut SendRequest<Full<Bytes>>, path: &str, auth: &str) -> usize {
    sender.ready().await.expect("ready");
    let req = hyper::Request::get(path)
        .header("host", "api.example.test")
        .header("authorization", auth)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let mut body = sender.send_request(req).await.expect("send").into_body();
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            n += data.len();
        }
    }
    n
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (addr, root) = rt.block_on(upstream());
    let placeholder = placeholder(SECRET.as_bytes()).expect("random");
    let rule = Rule::parse(
        &format!("https://api.example.test:{}", addr.port()),
        None,
        &[],
        &["/v1/*".into()],
    )
    .expect("rule");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let proxy = rt
        .block_on(LeaseProxy::start(
            ProxyConfig {
                lease_id: "l-bench".into(),
                bound: vec![Bound {
                    name: "STRIPE_KEY".into(),
                    placeholder: placeholder.clone(),
                    value: custody_core::secret::Value::from_vec(SECRET.as_bytes().to_vec()),
                    rules: vec![rule],
                }],
                extra_roots: vec![root.clone()],
                resolve: HashMap::from([("api.example.test".to_owned(), addr)]),
            },
            tx,
        ))
        .expect("proxy");
    // The events would be audited by the broker; here they are dropped.
    rt.spawn(async move { while rx.recv().await.is_some() {} });
    let url = proxy.url();
    let credentials = url
        .trim_start_matches("http://")
        .rsplit_once('@')
        .map(|(c, _)| c.to_owned())
        .expect("credentials");
    let lease_ca = CertificateDer::from_pem_slice(proxy.ca_pem().as_bytes()).expect("ca");
    let mut direct = rt.block_on(connect(addr, root, None));
    let mut through = rt.block_on(connect(addr, lease_ca, Some((&credentials, proxy.addr()))));
    let direct_auth = format!("Bearer {SECRET}");
    let proxied_auth = format!("Bearer {placeholder}");

    let mut g = c.benchmark_group("proxy_request");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("direct", |b| {
        b.iter(|| rt.block_on(get(&mut direct, "/v1/small", &direct_auth)));
    });
    g.bench_function("through_proxy", |b| {
        b.iter(|| rt.block_on(get(&mut through, "/v1/small", &proxied_auth)));
    });
    g.finish();

    let mut g = c.benchmark_group("proxy_body");
    g.throughput(Throughput::Bytes(BULK as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("direct", |b| {
        b.iter(|| {
            assert_eq!(
                rt.block_on(get(&mut direct, "/v1/bulk", &direct_auth)),
                BULK
            )
        });
    });
    g.bench_function("through_proxy", |b| {
        b.iter(|| {
            assert_eq!(
                rt.block_on(get(&mut through, "/v1/bulk", &proxied_auth)),
                BULK
            )
        });
    });
    g.finish();
    drop(proxy);
}

use rustls::pki_types::pem::PemObject;

criterion_group!(benches, bench);
criterion_main!(benches);
