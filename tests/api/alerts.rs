//! Each fault flag fires the alert meant to catch it, and the alert resolves once the flag is
//! off. A real Prometheus, scraping every second, evaluates a time-compressed copy of
//! `deploy/prometheus/rules.yml` (every range and `for` divided by 30, at least 3 s; groups
//! evaluated every second; in a debug build the CPU-per-request threshold times 8) against a real Draw64 under steady load, whose flag is switched over
//! `/admin/faults`. The alert must not fire before the flag is on. Every wait is bounded; the
//! times to fire and to resolve are printed (the figures of the closing note).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use serde_json::{Value, json};

use crate::support::{
    app::{ONE_ADDRESS_LOAD, Server, require, test_db},
    prometheus::Prometheus,
};

const TOKEN: &str = "0123456789abcdef-alerts";

/// Longest wait for an alert to fire, or to resolve, once the flag changed.
const WITHIN: Duration = Duration::from_secs(150);

/// `rules.yml` with every duration divided by 30 (at least 3 s), evaluated every second.
fn compressed_rules(dir: &Path) -> std::path::PathBuf {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/rules.yml")).unwrap();
    let scale = |n: u64, unit: &str| -> String {
        let seconds = n * match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            other => panic!("unit {other}"),
        };
        format!("{}s", (seconds / 30).max(3))
    };
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let line = if let Some(rest) = trimmed.strip_prefix("interval: ") {
            line.replace(&format!("interval: {rest}"), "interval: 1s")
        } else if let Some(rest) = trimmed.strip_prefix("for: ") {
            let (n, unit) = rest.split_at(rest.len() - 1);
            line.replace(&format!("for: {rest}"), &format!("for: {}", scale(n.parse().unwrap(), unit)))
        } else {
            let mut scaled = String::new();
            let mut rest = line;
            while let Some(open) = rest.find('[') {
                let close = open + rest[open..].find(']').unwrap();
                let inner = &rest[open + 1..close];
                let (n, unit) = inner.split_at(inner.len() - 1);
                scaled.push_str(&rest[..=open]);
                match n.parse::<u64>() {
                    Ok(n) => scaled.push_str(&scale(n, unit)),
                    Err(_) => scaled.push_str(inner),
                }
                scaled.push(']');
                rest = &rest[close + 1..];
            }
            scaled.push_str(rest);
            scaled
        };
        out.push_str(&line);
        out.push('\n');
    }
    // The CPU threshold is for an optimised build. This debug build spends 3.7 ms of CPU per
    // request of this load on an idle machine, more with PostgreSQL on a busy one, so the shipped
    // 5 ms left the alert firing after the flag went off in a fresh-clone CI run.
    let threshold = "_count[10s])) > 0.005";
    assert_eq!(out.matches(threshold).count(), 1, "Draw64CpuPerRequest's threshold moved");
    let out = out.replace(threshold, &format!("_count[10s])) > {}", 0.005 * CPU_SCALE));
    let path = dir.join("rules.yml");
    std::fs::write(&path, out).unwrap();
    path
}

/// How much more CPU a request costs in this build than in an optimised one, at most: the
/// CPU-per-request alert's threshold (5 ms) and the `cpuBurn` that proves it are scaled by it.
const CPU_SCALE: f64 = if cfg!(debug_assertions) { 8.0 } else { 1.0 };

/// Steady traffic of every kind the alerts read, until the task is aborted: PUTs, a WebSocket
/// subscriber reading the events they cause, a balancer's readiness checks, PNGs.
fn load(server: &Server) -> tokio::task::JoinHandle<()> {
    let base = server.url("");
    let ws = format!("ws://{}/ws/images/alerts", server.addr);
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let _ = http.post(format!("{base}/images/alerts")).send().await;
        let (mut socket, _) = tokio_tungstenite::connect_async(ws).await.unwrap();
        // Reads until the server closes it (it ends with the server).
        tokio::spawn(async move { while socket.next().await.is_some() {} });
        let put = json!({"command": {"command_type": "draw", "values": [[1, 2, 3, 4, 5]]}});
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        for n in 0u64.. {
            tick.tick().await;
            let _ = http.put(format!("{base}/images/alerts")).json(&put).send().await;
            if n % 4 == 0 {
                let _ = http.get(format!("{base}/readyz")).send().await;
                let _ = http.get(format!("{base}/images/alerts.png")).send().await;
            }
        }
    })
}

async fn firing(prometheus: &Prometheus, query: &str) -> bool {
    prometheus.query(query).await.is_some()
}

async fn until(prometheus: &mut Prometheus, query: &str, want: bool) -> Duration {
    let start = Instant::now();
    loop {
        if firing(prometheus, query).await == want {
            return start.elapsed();
        }
        assert!(prometheus.running(), "prometheus exited");
        assert!(start.elapsed() < WITHIN, "{query} was never {}", if want { "firing" } else { "resolved" });
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Switches `flag` to `value`, waits for `alert` (with `labels`) to fire, switches it off, and
/// waits for the alert to resolve.
async fn proves(flag: &str, value: Value, alert: &str, labels: &str) {
    if !require("prometheus", "the fault-flag alert tests") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--admin-token", TOKEN];
    args.extend_from_slice(ONE_ADDRESS_LOAD);
    let server = Server::start(&test_db(&dir), "127.0.0.1:0", &args);
    let rules = compressed_rules(dir.path());
    let mut prometheus = Prometheus::start(dir.path(), &rules, &[server.metrics.unwrap().to_string()]);
    let traffic = load(&server);
    let query = format!("ALERTS{{alertname=\"{alert}\", alertstate=\"firing\"{labels}}}");
    // Warm: the flag's gauge is scraped (at 0) and the alert's inputs have had traffic.
    prometheus.until(&format!("draw64_faults_active{{feature_flag_key=\"{flag}\"}} == 0"), WITHIN).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(!firing(&prometheus, &query).await, "{alert} fires before {flag} is on");

    let http = reqwest::Client::new();
    let url = server.url(&format!("/admin/faults/{flag}"));
    let on = http.put(&url).bearer_auth(TOKEN).json(&json!({ "value": value })).send().await.unwrap();
    assert_eq!(on.status(), 200, "{}", on.text().await.unwrap());
    let fired = until(&mut prometheus, &query, true).await;
    let off = http.delete(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(off.status(), 200);
    let resolved = until(&mut prometheus, &query, false).await;
    println!(
        "alert-proof: {flag}={value} -> {alert}{labels}: fired {:.1} s after the flag went on, resolved {:.1} s after it went off",
        fired.as_secs_f64(),
        resolved.as_secs_f64()
    );
    traffic.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_commits_burn_the_put_slo() {
    proves("failingCommits", json!(0.5), "Draw64ErrorBudgetBurnFast", ", slo=\"put\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_commits_burn_the_put_latency_slo() {
    proves("slowCommits", json!({"delayMs": 300, "share": 1}), "Draw64ErrorBudgetBurnFast", ", slo=\"put_latency\"")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_readiness_fires_not_ready() {
    proves("failingReadiness", json!(true), "Draw64NotReady", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_fanout_burns_the_fanout_latency_slo() {
    proves("slowFanout", json!({"delayMs": 200, "share": 1}), "Draw64ErrorBudgetBurnFast", ", slo=\"fanout_latency\"")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_fanout_burns_the_fanout_slo() {
    proves("droppedFanout", json!(1), "Draw64ErrorBudgetBurnFast", ", slo=\"fanout\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_leak_fires_memory_growing() {
    proves("memoryLeak", json!(120), "Draw64MemoryGrowing", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_burn_fires_cpu_per_request() {
    // Four times the threshold, as shipped (20 ms against 5); 2.5 times it in a debug build,
    // where the flag's ceiling (100 ms) is the limit.
    let burn = (20_000.0 * CPU_SCALE).min(100_000.0);
    proves("cpuBurn", json!(burn), "Draw64CpuPerRequest", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_pngs_fire_slow_png() {
    proves("slowPng", json!(600), "Draw64SlowPng", "").await;
}

#[test]
fn the_compressed_rules_keep_every_rule_and_scale_every_duration() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(compressed_rules(dir.path())).unwrap();
    assert!(text.contains("[10s]") && text.contains("[120s]") && text.contains("for: 20s"), "{text}");
    assert!(!text.contains("[5m]") && !text.contains("interval: 15s"));
    assert!(text.contains("le=\"0.25\""), "label values in brackets are left alone");
}
