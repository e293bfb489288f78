//! `POST /rum` against the real binary: accepted reports show in the Prometheus scrape as the
//! `draw64.browser.*` histograms and counters and a browser error as a log line; malformed,
//! oversized, cross-origin and flooding reports get a 4xx and change nothing.

use std::time::{Duration, Instant};

use crate::support::*;

/// One event of every kind.
pub const EVERY_KIND: &str = r#"{"session":"0123456789abcdef","events":[
    {"type":"timing","name":"ttfb","value":12},
    {"type":"timing","name":"lcp","value":850},
    {"type":"timing","name":"draw_echo","value":7.5},
    {"type":"timing","name":"draw_echo","value":400,"trace_id":"0af7651916cd43dd8448eb211c80319c"},
    {"type":"timing","name":"cls","value":0.02},
    {"type":"socket","event":"close","code":1006},
    {"type":"socket","event":"reconnect"},
    {"type":"error","kind":"TypeError","message":"canvas is null"}]}"#;

async fn scrape(http: &reqwest::Client, server: &Server) -> String {
    let metrics = server.metrics.expect("a metrics port");
    http.get(format!("http://{metrics}/metrics")).send().await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn reports_become_browser_metrics_and_error_logs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&test_db(&dir), "127.0.0.1:0", &[]);
    let http = reqwest::Client::new();
    let res = http.post(server.url("/rum")).header("content-type", "text/plain").body(EVERY_KIND).send().await.unwrap();
    assert_eq!(res.status(), 204);
    let text = scrape(&http, &server).await;
    for (series, want) in [
        (r#"draw64_browser_duration_seconds_count{draw64_browser_timing="lcp""#, 1.0),
        (r#"draw64_browser_duration_seconds_sum{draw64_browser_timing="lcp""#, 0.85),
        (r#"draw64_browser_duration_seconds_count{draw64_browser_timing="draw_echo""#, 2.0),
        ("draw64_browser_layout_shift_ratio_count", 1.0),
        (r#"draw64_browser_socket_events_total{draw64_browser_socket_event="close",draw64_close_code="1006""#, 1.0),
        (r#"draw64_browser_errors_total{error_type="TypeError""#, 1.0),
        (r#"draw64_browser_reports_total{draw64_report_outcome="accepted""#, 1.0),
    ] {
        let got = sample(&text, series);
        assert!((got - want).abs() < 1e-9, "{series}: {got}, not {want}\n{text}");
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let logged = server.logs.lock().unwrap().iter().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            v["message"] == "browser error"
                && v["error.type"] == "TypeError"
                && v["browser.message"] == "canvas is null"
        });
        if logged {
            break;
        }
        assert!(Instant::now() < deadline, "no browser error or slow stroke log line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn bad_reports_get_4xx_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&test_db(&dir), "127.0.0.1:0", &[]);
    let http = reqwest::Client::new();
    let post = |body: String, origin: Option<&'static str>| {
        let mut req = http.post(server.url("/rum")).body(body);
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        req.send()
    };
    let cases: Vec<(String, Option<&str>, u16)> = vec![
        ("not json".into(), None, 422),
        (r#"{"session":"0123456789abcdef","events":[{"type":"timing","name":"email","value":1}]}"#.into(), None, 422),
        (r#"{"session":"0123456789abcdef","events":[{"type":"timing","name":"lcp","value":-5}]}"#.into(), None, 422),
        (format!(r#"{{"session":"0123456789abcdef","events":[],"pad":"{}"}}"#, "x".repeat(17 * 1024)), None, 413),
        (EVERY_KIND.into(), Some("http://evil.example"), 403),
    ];
    for (body, origin, want) in cases {
        let res = post(body.clone(), origin).await.unwrap();
        assert_eq!(res.status().as_u16(), want, "{}", &body[..body.len().min(80)]);
        let detail: serde_json::Value = res.json().await.unwrap();
        assert!(detail["detail"].is_string(), "{detail}");
    }
    let text = scrape(&http, &server).await;
    assert!(!text.contains("draw64_browser_duration_seconds_count"), "a refused report left a sample");
    assert_eq!(sample(&text, r#"draw64_browser_reports_total{draw64_report_outcome="invalid""#), 3.0);
    assert_eq!(sample(&text, r#"draw64_browser_reports_total{draw64_report_outcome="too_large""#), 1.0);
    assert_eq!(sample(&text, r#"draw64_browser_reports_total{draw64_report_outcome="forbidden""#), 1.0);

    // A flood from one client: what is left of its burst (the refused reports above spent three
    // of its 20) is accepted, the rest refused with 429 (bounded loop).
    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(post(EVERY_KIND.into(), None).await.unwrap().status().as_u16());
    }
    let accepted = statuses.iter().filter(|s| **s == 204).count();
    assert!(statuses.contains(&429), "no 429 in a flood of 60: {statuses:?}");
    assert!((10..40).contains(&accepted), "{accepted} of 60 accepted");
    let text = scrape(&http, &server).await;
    assert_eq!(
        sample(&text, r#"draw64_browser_errors_total{error_type="TypeError""#),
        accepted as f64,
        "only accepted reports are counted"
    );
}

/// Behind a trusted balancer each client has its own allowance (the balancer's `X-Forwarded-For`
/// names it); without `--trusted-proxies` the header is ignored, so a client cannot escape its
/// limit by inventing addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_client_limit_follows_x_forwarded_for_only_from_a_trusted_proxy() {
    let http = reqwest::Client::new();
    // Bounded: `n` reports as one claimed client; answers how many were refused. 30 is more than
    // one client's burst of 20, 15 less.
    let flood = |server: &Server, claimed: &'static str, n: usize| {
        let (http, url) = (http.clone(), server.url("/rum"));
        async move {
            let mut refused = 0;
            for _ in 0..n {
                let res = http.post(&url).header("x-forwarded-for", claimed).body(EVERY_KIND).send().await.unwrap();
                refused += usize::from(res.status() == 429);
            }
            refused
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let behind = Server::start(&test_db(&dir), "127.0.0.1:0", &["--trusted-proxies", "127.0.0.1/32"]);
    assert!(flood(&behind, "203.0.113.1", 30).await > 0, "one client past its burst is refused");
    assert_eq!(flood(&behind, "203.0.113.2", 15).await, 0, "another client behind the same balancer is not");

    let dir = tempfile::tempdir().unwrap();
    let exposed = Server::start(&test_db(&dir), "127.0.0.1:0", &[]);
    let first = flood(&exposed, "203.0.113.1", 30).await;
    let started = Instant::now();
    let second = flood(&exposed, "203.0.113.2", 15).await;
    // The shared allowance refills at 2 a second while the second flood runs, and no faster.
    let refilled = (2.0 * started.elapsed().as_secs_f64()).ceil() as usize;
    assert!(
        first > 0 && second + refilled >= 15,
        "a made-up X-Forwarded-For buys nothing: {first} of 30, then {second} of 15 refused ({refilled} refilled)"
    );
}
