//! The real binary: restarts, the SIGTERM drain, a second signal, `kill -9`.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::*;

async fn get(http: &reqwest::Client, url: String) -> (u16, Value) {
    let res = http.get(url).send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn a_restart_keeps_images_pixels_and_counters() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(&dir);
    let http = reqwest::Client::new();
    let server = Server::start(&db, "127.0.0.1:0", &["--drain-grace", "0"]);
    http.post(server.url("/images/keep")).send().await.unwrap();
    http.post(server.url("/images/gone")).send().await.unwrap();
    http.delete(server.url("/images/gone")).send().await.unwrap();
    for body in [draw(&[[1, 2, 3, 4, 5]]), draw(&[[63, 63, 9, 8, 7]])] {
        assert_eq!(http.put(server.url("/images/keep")).body(body).send().await.unwrap().status(), 200);
    }
    let before_data = get(&http, server.url("/images/keep/data")).await;
    let before_stats = get(&http, server.url("/statistics")).await;
    assert_eq!(before_stats.1["image_updates"], json!({"keep": 2}));
    server.signal(Signal::SIGTERM);
    assert_eq!(server.wait(), Some(0));

    let server = Server::start(&db, "127.0.0.1:0", &["--drain-grace", "0"]);
    assert_eq!(get(&http, server.url("/images/keep/data")).await, before_data);
    assert_eq!(get(&http, server.url("/statistics")).await, before_stats);
    assert_eq!(get(&http, server.url("/images")).await, (200, json!([{"image_id": "keep"}])));
    server.signal(Signal::SIGTERM);
    assert_eq!(server.wait(), Some(0));
}

/// Two processes on one SQLite file would each commit from their own memory, the second
/// overwriting the first's canvases: the second one must refuse to start, and say why.
#[tokio::test]
async fn a_second_process_on_the_same_sqlite_file_refuses_to_start() {
    if crate::support::pg::suite_on_postgres() {
        // Several instances on one PostgreSQL is the supported way (tests/api/cluster/ tests it).
        eprintln!("SKIPPED the second-process lock: it is SQLite's, and this run is on PostgreSQL");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(&dir);
    let http = reqwest::Client::new();
    let first = Server::start(&db, "127.0.0.1:0", &["--drain-grace", "0"]);
    http.post(first.url("/images/mine")).send().await.unwrap();
    assert_eq!(http.put(first.url("/images/mine")).body(draw(&[[1, 1, 9, 9, 9]])).send().await.unwrap().status(), 200);

    let second = std::process::Command::new(env!("CARGO_BIN_EXE_draw64"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--database", &db])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "the second process exits 1: {stderr}");
    assert!(stderr.contains(&format!("in use by another draw64 process (pid {})", first.pid())), "{stderr}");
    // The first one goes on, its image intact.
    let (status, data) = get(&http, first.url("/images/mine/data")).await;
    assert_eq!(status, 200);
    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait(), Some(0));

    let next = Server::start(&db, "127.0.0.1:0", &["--drain-grace", "0"]);
    assert_eq!(get(&http, next.url("/images/mine/data")).await, (200, data), "starts once the first has exited");
}

#[tokio::test]
async fn kill_9_right_after_acknowledgement_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(&dir);
    let http = reqwest::Client::new();
    let server = Server::start(&db, "127.0.0.1:0", &[]);
    http.post(server.url("/images/k")).send().await.unwrap();
    // Concurrent writers, so acknowledgements come out of group commits.
    let writers = (0..8).map(|w| {
        let http = http.clone();
        let url = server.url("/images/k");
        tokio::spawn(async move {
            for i in 0..25 {
                let n = w * 25 + i; // 200 distinct cells
                let body = draw(&[[n % 64, n / 64, (w + 1), i, 7]]);
                assert_eq!(http.put(&url).body(body).send().await.unwrap().status(), 200);
            }
        })
    });
    for w in writers {
        w.await.unwrap();
    }
    server.signal(Signal::SIGKILL);
    assert_eq!(server.wait(), None, "killed by the signal");

    let server = Server::start(&db, "127.0.0.1:0", &[]);
    let (_, data) = get(&http, server.url("/images/k/data")).await;
    for w in 0..8i64 {
        for i in 0..25i64 {
            let n = w * 25 + i;
            assert_eq!(data[(n % 64) as usize][(n / 64) as usize], json!([w + 1, i, 7]), "change {n} lost");
        }
    }
    let (_, stats) = get(&http, server.url("/statistics")).await;
    assert_eq!(stats["image_updates"]["k"], 200);
}

#[tokio::test]
async fn sigterm_drains_then_closes_websockets_1001_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&test_db(&dir), "127.0.0.1:0", &["--drain-grace", "1500ms"]);
    let http = reqwest::Client::new();
    let mut ws = ws_connect(&format!("ws://{}/ws/images/drain", server.addr)).await;
    let mut sse_app_url = server.url("/sse/announce");
    let sse = http.get(std::mem::take(&mut sse_app_url)).send().await.unwrap();
    assert_eq!(get(&http, server.url("/readyz")).await.0, 200);

    let signalled = Instant::now();
    server.signal(Signal::SIGTERM);
    // Not ready at once (as soon as the signal is handled), but still serving, each answer
    // closing its connection.
    let res = until_draining(&http, &server).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["connection"], "close");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["checks"]["shutdown"]["status"], "draining");
    assert!(body["detail"].as_str().unwrap().contains("shutdown"));
    let res = http.put(server.url("/images/drain")).body(CLEAR).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["connection"], "close");
    // The change made during the drain reached the socket; then it is closed with 1001.
    let (code, events) = until_close(&mut ws, 5).await;
    assert_eq!(events.len(), 1);
    assert_eq!(code, 1001);
    assert!(signalled.elapsed() >= Duration::from_millis(1400), "closed before the grace ended");
    // The SSE stream ends too, so the process can exit.
    let rest = tokio::time::timeout(WAIT, sse.bytes()).await.expect("SSE stream ended");
    assert!(rest.is_ok());
    assert_eq!(server.wait(), Some(0));
}

/// A release retiring its canary: the same drain, but the sockets are told 1012 (service
/// restart), and only an admin may ask.
#[tokio::test]
async fn admin_drain_retires_the_instance_closing_websockets_1012_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let token = "release-token-0123456789";
    let server = Server::start_env(
        &test_db(&dir),
        "127.0.0.1:0",
        &["--drain-grace", "1s"],
        &[("DRAW64_ADMIN_TOKEN", token)],
        None,
    );
    let http = reqwest::Client::new();
    let mut ws = ws_connect(&format!("ws://{}/ws/images/retire", server.addr)).await;
    assert_eq!(http.post(server.url("/admin/drain")).send().await.unwrap().status(), 401);
    let res = http.post(server.url("/admin/drain")).bearer_auth("not-the-token-at-all").send().await.unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(get(&http, server.url("/readyz")).await.0, 200, "a refused drain changes nothing");

    let res = http.post(server.url("/admin/drain")).bearer_auth(token).send().await.unwrap();
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("1012"), "{body}");
    let res = until_draining(&http, &server).await;
    assert_eq!(res.status(), 503);
    let (code, _) = until_close(&mut ws, 0).await;
    assert_eq!(code, 1012);
    assert_eq!(server.wait(), Some(0));
}

#[tokio::test]
async fn admin_drain_is_off_without_an_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&test_db(&dir), "127.0.0.1:0", &[]);
    let http = reqwest::Client::new();
    let res = http.post(server.url("/admin/drain")).send().await.unwrap();
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("DRAW64_ADMIN_TOKEN"), "{body}");
    assert_eq!(get(&http, server.url("/readyz")).await.0, 200);
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&test_db(&dir), "127.0.0.1:0", &["--drain-grace", "60s"]);
    server.signal(Signal::SIGTERM);
    // The second signal must come after the first was handled, however slow the machine.
    until_draining(&reqwest::Client::new(), &server).await;
    let started = Instant::now();
    server.signal(Signal::SIGINT);
    assert_eq!(server.wait(), Some(130));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Polls `/readyz` until the server says it is draining (503); answers that response.
async fn until_draining(http: &reqwest::Client, server: &Server) -> reqwest::Response {
    let deadline = Instant::now() + WAIT;
    loop {
        let res = http.get(server.url("/readyz")).send().await.unwrap();
        if res.status() == 503 {
            return res;
        }
        assert!(Instant::now() < deadline, "never started draining");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
