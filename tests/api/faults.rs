//! Fault flags, on the real binary (they are process-wide): switched by the flagd file (watched
//! and re-read) and by an admin over HTTP, each visible in `/readyz`, the gauge and the log.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::app::{Server, test_db};

const TOKEN: &str = "0123456789abcdef-faults";

fn flag_file(key: &str, variant_value: Value) -> String {
    json!({
        "$schema": "https://flagd.dev/schema/v0/flags.json",
        "flags": { key: {"state": "ENABLED", "variants": {"on": variant_value, "off": 0}, "defaultVariant": "on"} }
    })
    .to_string()
}

async fn put_pixel(http: &reqwest::Client, server: &Server) -> u16 {
    let body = json!({"command": {"command_type": "draw", "values": [[1, 1, 255, 0, 0]]}});
    http.put(server.url("/images/default")).json(&body).send().await.unwrap().status().as_u16()
}

/// Polls `probe` until it answers `want` (bounded).
async fn until<F: Future<Output = u16>>(want: u16, mut probe: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if probe().await == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never answered {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_flag_file_switches_failing_commits_on_and_off_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let flags = dir.path().join("flags.json");
    std::fs::write(&flags, r#"{"flags": {}}"#).unwrap();
    let server = Server::start(&test_db(&dir), "127.0.0.1:0", &["--fault-flags", flags.to_str().unwrap()]);
    let http = reqwest::Client::new();
    assert_eq!(http.post(server.url("/images/default")).send().await.unwrap().status(), 201);
    assert_eq!(put_pixel(&http, &server).await, 200);
    std::fs::write(&flags, flag_file("failingCommits", json!(1))).unwrap();
    until(503, || put_pixel(&http, &server)).await;
    let ready: Value = http.get(server.url("/readyz")).send().await.unwrap().json().await.unwrap();
    let banner = ready["faults"].as_str().unwrap();
    assert!(banner.contains("failingCommits=1.0 (variant on of the flag file)"), "{ready}");
    server.until_sample("draw64_faults_active{feature_flag_key=\"failingCommits\"", 1.0).await;
    assert!(server.logs.lock().unwrap().iter().any(|l| l.contains("fault injection: failingCommits is on")));

    // A file with a mistake is logged and changes nothing.
    std::fs::write(&flags, flag_file("failingComits", json!(0))).unwrap();
    let refused =
        || server.logs.lock().unwrap().iter().any(|l| l.contains("cannot be used") && l.contains("failingComits"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !refused() {
        assert!(std::time::Instant::now() < deadline, "the bad file was not reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(put_pixel(&http, &server).await, 503);

    std::fs::write(&flags, r#"{"flags": {}}"#).unwrap();
    until(200, || put_pixel(&http, &server)).await;
    let ready: Value = http.get(server.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert!(ready.get("faults").is_none(), "{ready}");
    server.until_sample_below("draw64_faults_active{feature_flag_key=\"failingCommits\"", 0.0).await;
}

#[tokio::test]
async fn an_admin_switches_faults_over_http_and_nobody_else_can() {
    let dir = tempfile::tempdir().unwrap();
    let open = Server::start(&test_db(&dir), "127.0.0.1:0", &[]);
    let http = reqwest::Client::new();
    let answer = http.get(open.url("/admin/faults")).send().await.unwrap();
    assert_eq!(answer.status(), 403, "no admin token configured: no switches");
    drop(open);

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&test_db(&dir), "127.0.0.1:0", &["--admin-token", TOKEN]);
    let url = server.url("/admin/faults/failingReadiness");
    assert_eq!(http.put(&url).json(&json!({"value": true})).send().await.unwrap().status(), 401);
    let admin = |req: reqwest::RequestBuilder| req.bearer_auth(TOKEN).send();
    let bad = admin(http.put(&url).json(&json!({"value": 3}))).await.unwrap();
    assert_eq!(bad.status(), 422);
    assert!(bad.text().await.unwrap().contains("true or false"));
    let unknown = admin(http.put(server.url("/admin/faults/paymentFailure")).json(&json!({"value": 1}))).await.unwrap();
    assert_eq!(unknown.status(), 404);

    let set: Value = admin(http.put(&url).json(&json!({"value": true}))).await.unwrap().json().await.unwrap();
    assert_eq!(set["flags"]["failingReadiness"]["source"], "admin", "{set}");
    let ready = http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert!(ready["checks"]["faults"]["status"].as_str().unwrap().contains("failingReadiness"), "{ready}");
    assert!(ready["faults"].as_str().unwrap().contains("set over /admin/faults"), "{ready}");

    assert_eq!(admin(http.delete(&url)).await.unwrap().status(), 200);
    assert_eq!(http.get(server.url("/readyz")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_flag_file_with_an_unknown_flag_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let flags = dir.path().join("flags.json");
    std::fs::write(&flags, flag_file("paymentFailure", json!(1))).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_draw64"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--database", &test_db(&dir)])
        .args(["--fault-flags", flags.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("unknown flags paymentFailure") && said.contains("failingCommits"), "{said}");
}
