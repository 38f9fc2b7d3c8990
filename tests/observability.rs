//! What operators see: the request id returned to the caller, the caller's W3C trace id on the
//! backend's log lines, no secret in any log line, and the HTTP port's `/healthz` and
//! `/metrics`. This file owns its process's log subscriber, so it is a test binary of its own.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use postern_proto::tenant::v1 as pb;
use postern_testkit::{ADMIN_KEY, Suite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Everything logged by this test process.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        tracing_subscriber::fmt().with_env_filter("debug").with_ansi(false).with_writer(move || writer.clone()).init();
        captured
    })
}

fn text() -> String {
    String::from_utf8_lossy(&logs().0.lock().map(|v| v.clone()).unwrap_or_default()).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn request_ids_and_trace_context_reach_the_backend_and_secrets_stay_out_of_logs() {
    logs();
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant("fabrikam-internal").await.expect("tenant");

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = tonic::Request::new(pb::CreateClientRequest {
        tenant: "fabrikam-internal".into(),
        client: Some(pb::Client {
            name: "Fabrikam Employee Timesheets".into(),
            app_type: pb::AppType::RegularWeb as i32,
            ..Default::default()
        }),
    });
    req.metadata_mut().insert("traceparent", format!("00-{trace}-00f067aa0ba902b7-01").parse().expect("ascii"));
    req.metadata_mut().insert("x-request-id", "req-1234".parse().expect("ascii"));
    let answer = admin.clients.create_client(req).await.expect("create client");
    assert_eq!(answer.metadata().get("x-request-id").and_then(|v| v.to_str().ok()), Some("req-1234"));
    let secret = answer.into_inner().client.expect("client").client_secret;
    let key = admin.create_api_key("fabrikam-internal").await.expect("key");

    // A call without a request id gets one.
    let answer = admin.tenants.list_tenants(pb::ListTenantsRequest::default()).await.expect("list");
    assert!(answer.metadata().get("x-request-id").is_some());

    let logged = text();
    let line = logged.lines().find(|l| l.contains("client created")).expect("the backend logged the creation");
    assert!(line.contains(&format!("trace_id={trace}")), "the backend's span carries the caller's trace: {line}");
    assert!(line.contains("request_id=req-1234"), "{line}");
    for secret in [secret.as_str(), key.as_str(), ADMIN_KEY] {
        assert!(!logged.contains(secret), "a secret reached the logs");
    }
    suite.stop().await.expect("stop");
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_port_serves_health_and_metrics() {
    logs();
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    admin.tenants.list_tenants(pb::ListTenantsRequest::default()).await.expect("a call to count");
    let (status, body) = http_get(suite.http, "/healthz").await;
    assert_eq!(status, 200);
    assert!(body.contains("postern.tenant.v1.TenantService SERVING"), "{body}");
    let (status, body) = http_get(suite.http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("postern_gateway_requests_total"), "{body}");
    suite.stop().await.expect("stop");
}
