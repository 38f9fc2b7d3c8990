//! The test kit's real peers themselves: a skipped test is seen in `cargo test`'s output,
//! headless Chromium loads Postern's pages and posts forms, and the node workspace's
//! openid-client reads a tenant's discovery document.

use std::time::Duration;

use postern_testkit::Suite;
use postern_testkit::browser::Browser;
use postern_testkit::node::Node;

/// Set in the child run of [`a_skip_shows_in_the_test_output`].
const PROBE: &str = "POSTERN_SKIP_PROBE";

/// Not a check by itself: the child run of [`a_skip_shows_in_the_test_output`] calls it
/// with [`PROBE`] set, and it then reports a peer missing as a test that skips does.
#[test]
fn skip_probe() {
    if std::env::var_os(PROBE).is_some() {
        postern_testkit::peers::missing("skip_probe", "the probe's peer is absent by design");
    }
}

/// libtest captures what a passing test prints with `eprintln!` and never shows it; a
/// skip must still be seen. This runs this very test binary again as `cargo test` does
/// (output captured, one test, peers not required) and looks for the line in its output.
#[test]
fn a_skip_shows_in_the_test_output() {
    let exe = std::env::current_exe().expect("the test binary");
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--exact", "skip_probe", "--test-threads=1"]).env(PROBE, "1").env_remove("POSTERN_REQUIRE_PEERS");
    let out = postern_testkit::output_within(&mut cmd, Duration::from_secs(60)).expect("the child run");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "the probe ran and passed: {stdout}");
    assert!(
        stderr.contains("SKIPPED skip_probe: the probe's peer is absent by design"),
        "the skip is visible; stdout: {stdout}\nstderr: {stderr}"
    );
}

/// With peers required, the same report fails the test instead.
#[test]
fn a_skip_fails_when_peers_are_required() {
    let exe = std::env::current_exe().expect("the test binary");
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--exact", "skip_probe", "--test-threads=1"]).env(PROBE, "1").env("POSTERN_REQUIRE_PEERS", "1");
    let out = postern_testkit::output_within(&mut cmd, Duration::from_secs(60)).expect("the child run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("POSTERN_REQUIRE_PEERS=1 requires it"), "{stdout}");
}

#[tokio::test]
async fn chromium_loads_a_page_and_posts_a_form() {
    let Some(browser) = Browser::open("chromium_loads_a_page_and_posts_a_form").await else { return };
    // A loopback page with a form whose post lands on a page echoing the field.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(answer(stream));
        }
    });
    browser.goto(&format!("http://{addr}/")).await.expect("open the page");
    browser.fill("#name", "Jane Doe").await.expect("type");
    browser.click("#go").await.expect("submit");
    browser.wait_for_url("the form's target", |u| u.path() == "/submit").await.expect("posted");
    let echoed = browser.find("#echo").await.expect("the second page").text().await.expect("text");
    assert_eq!(echoed, "name=Jane+Doe");
    browser.close().await.expect("close");
    served.abort();
}

/// Answers one request of the form test: `GET /` the form, `POST /submit` its body, else 404.
async fn answer(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    let mut got = Vec::new();
    // Read the head, then as much body as Content-Length says.
    let text = loop {
        let Ok(n) = stream.read(&mut buf).await else { return };
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.to_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                break text;
            }
        }
        if n == 0 {
            return;
        }
    };
    let (status, page) = if text.starts_with("POST /submit ") {
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        ("200 OK", format!("<html><body><p id=echo>{}</p></body></html>", body.replace('<', "&lt;")))
    } else if text.starts_with("GET / ") {
        let form = "<html><body><form method=post action=/submit><label>Name <input id=name name=name></label>\
                    <button id=go type=submit>Go</button></form></body></html>";
        ("200 OK", form.to_owned())
    } else {
        ("404 Not Found", String::new())
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
        page.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
}

#[tokio::test]
async fn openid_client_reads_a_tenants_discovery_document() {
    let Some(node) = Node::find("openid_client_reads_a_tenants_discovery_document") else { return };
    let suite = Suite::start().await.expect("suite");
    let mut admin = suite.admin().await;
    admin.create_tenant("discovered").await.expect("tenant");
    let issuer = format!("http://{}/discovered/", suite.http);
    let input = serde_json::json!({ "issuer": issuer, "client_id": "any" }).to_string();
    let doc = node.run("rp.mjs", &["discover", &input], &[], Duration::from_secs(60)).await.expect("discovery");
    assert_eq!(doc["issuer"], issuer.as_str(), "{doc}");
    assert_eq!(doc["jwks_uri"], format!("{issuer}.well-known/jwks.json"), "{doc}");
    suite.stop().await.expect("stop");
}
