//! The per-lease proxy of bound variables, driven by real clients (`curl`,
//! Python `requests`) against a local HTTPS upstream with its own test CA.
//! `api.example.test` and `other.test` reach that upstream through the
//! proxy's resolution override; the clients trust only the lease CA.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use custody_broker::proxy::{Bound, LeaseProxy, ProxyConfig, Rule, placeholder};
use custody_core::audit::AuditEvent;
use custody_core::bound::Place;
use custody_core::secret::Value;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

const SECRET: &str = "sk_live_51RealSecretValue0123456789abcdef";

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    /// The HTTP version the proxy spoke to it.
    version: String,
    host: String,
    path: String,
    query: String,
    authorization: Option<String>,
    body: String,
}

/// A local HTTPS server (its own CA, HTTP/2 and HTTP/1.1) that records each
/// request and answers
/// with the `Authorization` header it got (a destination that echoes the
/// token back, which the proxy must mask).
struct Upstream {
    addr: SocketAddr,
    ca_der: rustls::pki_types::CertificateDer<'static>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn upstream() -> Upstream {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf =
        CertificateParams::new(vec!["api.example.test".into(), "other.test".into()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf_cert.der().clone()], key)
    .unwrap();
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let rec = rec.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let rec = rec.clone();
                    async move {
                        let version = format!("{:?}", req.version());
                        // HTTP/2 carries the host as the URI's authority.
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                            .or_else(|| req.uri().authority().map(|a| a.to_string()))
                            .unwrap_or_default();
                        let path = req.uri().path().to_owned();
                        let query = req.uri().query().unwrap_or_default().to_owned();
                        let authorization = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let answer = format!(
                            "authorization={}\n",
                            authorization.clone().unwrap_or_default()
                        );
                        rec.lock().unwrap().push(Seen {
                            version,
                            host,
                            path,
                            query,
                            authorization,
                            body: String::from_utf8_lossy(&body).into_owned(),
                        });
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(answer),
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    Upstream {
        addr,
        ca_der: ca_cert.der().clone(),
        seen,
    }
}

struct Setup {
    up: Upstream,
    proxy: LeaseProxy,
    events: mpsc::UnboundedReceiver<AuditEvent>,
    placeholder: String,
    ca_file: tempfile::NamedTempFile,
}

async fn setup() -> Setup {
    setup_with(Place::Header).await
}

/// The proxy with `STRIPE_KEY` bound to `https://api.example.test:PORT/v1/*`,
/// its value going to `place`.
async fn setup_with(place: Place) -> Setup {
    let up = upstream().await;
    let placeholder = placeholder(SECRET.as_bytes()).unwrap();
    let rule = Rule::parse(
        &format!("https://api.example.test:{}", up.addr.port()),
        None,
        &[],
        &["/v1/*".into()],
    )
    .unwrap()
    .with_place(place);
    let cfg = ProxyConfig {
        lease_id: "l-test".into(),
        bound: vec![Bound {
            name: "STRIPE_KEY".into(),
            placeholder: placeholder.clone(),
            value: Value::from_vec(SECRET.as_bytes().to_vec()),
            rules: vec![rule],
        }],
        extra_roots: vec![up.ca_der.clone()],
        resolve: HashMap::from([
            ("api.example.test".to_owned(), up.addr),
            ("other.test".to_owned(), up.addr),
        ]),
    };
    let (tx, events) = mpsc::unbounded_channel();
    let proxy = LeaseProxy::start(cfg, tx).await.unwrap();
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), proxy.ca_pem()).unwrap();
    Setup {
        up,
        proxy,
        events,
        placeholder,
        ca_file,
    }
}

impl Setup {
    /// Runs curl as the lease's child would: the proxy URL and the lease
    /// CA from its environment, the placeholder in its hands. Returns
    /// (HTTP status, body).
    async fn curl(&self, args: &[&str]) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HTTPS_PROXY", self.proxy.url().as_str())
            .env("https_proxy", self.proxy.url().as_str())
            .env("CURL_CA_BUNDLE", self.ca_file.path())
            .env("KEY", &self.placeholder);
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.up.addr.port())
    }

    fn drain(&mut self) -> Vec<AuditEvent> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_the_value_injected_only_at_the_bound_destination() {
    let mut s = setup().await;
    let auth = format!("Authorization: Bearer {}", s.placeholder);
    let (status, body) = s
        .curl(&["-H", &auth, &s.url("api.example.test", "/v1/charges")])
        .await;
    assert_eq!(status, 200, "{body}");
    // The upstream got the real value; the child got it masked back.
    let seen = s.up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(&*format!("Bearer {SECRET}"))
    );
    assert_eq!(seen[0].path, "/v1/charges");
    // The upstream offered HTTP/2, and the proxy took it.
    assert_eq!(seen[0].version, "HTTP/2.0");
    assert!(
        seen[0].host.starts_with("api.example.test"),
        "{:?}",
        seen[0]
    );
    assert!(!body.contains(SECRET), "{body}");
    assert!(body.contains("[masked:STRIPE_KEY]"), "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let events = s.drain();
    assert!(
        events.iter().any(
            |e| matches!(e, AuditEvent::ProxyRequest { status: 200, injected, path, .. }
            if injected == &["STRIPE_KEY".to_owned()] && path == "/v1/charges")
        ),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_placeholder_and_its_encodings_never_leave_for_another_host() {
    use base64::Engine;
    let mut s = setup().await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&s.placeholder);
    let hex = hex::encode(&s.placeholder);
    let attempts: Vec<Vec<String>> = vec![
        vec![
            "-d".into(),
            s.placeholder.clone(),
            s.url("other.test", "/collect"),
        ],
        vec!["-d".into(), b64, s.url("other.test", "/collect")],
        vec!["-d".into(), hex, s.url("other.test", "/collect")],
        vec![
            "-H".into(),
            format!("Authorization: Bearer {}", s.placeholder),
            s.url("other.test", "/v1/charges"),
        ],
        // The bound host, but outside the bound paths.
        vec![
            "-H".into(),
            format!("X-Steal: {}", s.placeholder),
            s.url("api.example.test", "/admin"),
        ],
        // The value itself (a child that learned it some other way).
        vec!["-d".into(), SECRET.into(), s.url("other.test", "/collect")],
    ];
    for args in &attempts {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, body) = s.curl(&args).await;
        assert_eq!(status, 403, "{args:?}: {body}");
        assert!(body.contains("STRIPE_KEY"), "{body}");
    }
    assert!(
        s.up.seen.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );
    let blocked = s
        .drain()
        .into_iter()
        .filter(|e| matches!(e, AuditEvent::ExfiltrationBlocked { variables, .. } if variables == &["STRIPE_KEY".to_owned()]))
        .count();
    assert_eq!(blocked, attempts.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_and_body_bindings_put_the_value_only_there() {
    let mut s = setup_with(Place::Query).await;
    let url = s.url(
        "api.example.test",
        &format!("/v1/geo?key={}&q=1", s.placeholder),
    );
    let auth = format!("Authorization: Bearer {}", s.placeholder);
    let (status, _) = s.curl(&["-H", &auth, &url]).await;
    assert_eq!(status, 200);
    let seen = s.up.seen.lock().unwrap().clone();
    // In the query, percent-encoded; the header keeps the placeholder.
    assert_eq!(seen[0].query, format!("key={SECRET}&q=1"));
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(&*format!("Bearer {}", s.placeholder))
    );
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(
        s.drain().iter().any(
            |e| matches!(e, AuditEvent::ProxyRequest { injected, .. } if !injected.is_empty())
        )
    );

    let s = setup_with(Place::Body).await;
    let body = format!("{{\"token\":\"{}\"}}", s.placeholder);
    let (status, _) = s
        .curl(&["-d", &body, &s.url("api.example.test", "/v1/hook")])
        .await;
    assert_eq!(status, 200);
    let seen = s.up.seen.lock().unwrap().clone();
    assert_eq!(seen[0].body, format!("{{\"token\":\"{SECRET}\"}}"));
    assert_eq!(seen[0].authorization, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_the_variable_goes_anywhere_untouched() {
    let mut s = setup().await;
    let (status, body) = s
        .curl(&["-d", "hello", &s.url("other.test", "/plain")])
        .await;
    assert_eq!(status, 200, "{body}");
    let seen = s.up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, "hello");
    assert_eq!(seen[0].authorization, None);
    // At the bound destination without the placeholder: nothing put in.
    let (status, _) = s.curl(&[&s.url("api.example.test", "/v1/public")]).await;
    assert_eq!(status, 200);
    assert_eq!(s.up.seen.lock().unwrap()[1].authorization, None);
    assert_eq!(s.drain().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_refuses_clients_without_the_lease_credentials_and_stops_with_it() {
    let s = setup().await;
    let url = s.proxy.url();
    let anonymous = url.replace(
        &url[url.find("//").unwrap() + 2..=url.find('@').unwrap()],
        "",
    );
    let wrong = url.replacen("custody:", "custody:0", 1);
    for proxy in [anonymous.as_str(), wrong.as_str()] {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(["--proxy", proxy, "--cacert"])
            .arg(s.ca_file.path())
            .arg(s.url("api.example.test", "/v1/x"))
            .output()
            .unwrap();
        // The CONNECT is answered 407; the request behind it never starts.
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains("response 407"), "{proxy}: {err}");
    }
    assert!(s.up.seen.lock().unwrap().is_empty());
    // Dropped with the lease: nothing listens any more.
    let addr = s.proxy.addr();
    drop(s.proxy);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests_gets_the_value_injected_too() {
    // ./scripts/test makes a venv with `requests` and names it here.
    let python = std::env::var("CUSTODY_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_requests = Command::new(&python)
        .args(["-c", "import requests"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_requests,
        "{python} cannot import requests: run ./scripts/test, or pip install requests"
    );
    let s = setup().await;
    let script = r#"
import os, requests
r = requests.get(os.environ["URL"], headers={"Authorization": "Bearer " + os.environ["KEY"]}, timeout=20)
print(r.status_code)
print(r.text)
"#;
    let url = s.url("api.example.test", "/v1/balance");
    let proxy = s.proxy.url().as_str().to_owned();
    let ca = s.ca_file.path().to_owned();
    let key = s.placeholder.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-c", script])
            .env("HTTPS_PROXY", proxy)
            .env("REQUESTS_CA_BUNDLE", ca)
            .env("URL", url)
            .env("KEY", key)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with("200"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("[masked:STRIPE_KEY]") && !text.contains(SECRET),
        "{text}"
    );
    let seen = s.up.seen.lock().unwrap().clone();
    assert_eq!(
        seen[0].authorization.as_deref(),
        Some(&*format!("Bearer {SECRET}"))
    );
}

/// A child that opens uploads and never finishes them holds at most the
/// proxy's body budget (256 MiB) of the broker's memory: further requests
/// wait for it instead of being read, and go on once it is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_uploads_hold_the_body_budget_not_the_brokers_memory() {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup().await;
    let url = s.proxy.url();
    let credentials = url
        .trim_start_matches("http://")
        .rsplit_once('@')
        .unwrap()
        .0
        .to_owned();
    let auth = base64::engine::general_purpose::STANDARD.encode(credentials);
    let port = s.up.addr.port();
    let open = |head: String| {
        let addr = s.proxy.addr();
        async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.write_all(head.as_bytes()).await.unwrap();
            tcp
        }
    };
    // Four streamed uploads (no length: each may grow to 64 MiB) that
    // never end: the whole budget.
    let mut uploads = Vec::new();
    for _ in 0..4 {
        let mut tcp = open(format!(
            "POST http://other.test:{port}/up HTTP/1.1\r\nHost: other.test\r\nProxy-Authorization: Basic {auth}\r\nTransfer-Encoding: chunked\r\n\r\n"
        ))
        .await;
        tcp.write_all(b"4\r\nabcd\r\n").await.unwrap();
        uploads.push(tcp);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut small = open(format!(
        "GET http://other.test:{port}/small HTTP/1.1\r\nHost: other.test\r\nProxy-Authorization: Basic {auth}\r\n\r\n"
    ))
    .await;
    let mut buf = [0u8; 64];
    let waited =
        tokio::time::timeout(std::time::Duration::from_secs(1), small.read(&mut buf)).await;
    assert!(waited.is_err(), "answered while the budget was held");
    drop(uploads);
    let answered =
        tokio::time::timeout(std::time::Duration::from_secs(10), small.read(&mut buf)).await;
    let n = answered
        .expect("answered once the budget was freed")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 "), "{:?}", &buf[..n]);
}
