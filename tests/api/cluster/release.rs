//! Canary releases on `scripts/cluster` (real PostgreSQL, HAProxy, Prometheus and instances)
//! under the failover tests' steady HTTP + WebSocket load: a good build rolls forward to every
//! instance with no failed request; a bad one (the same binary with a fault flag on) is rolled
//! back at the first step, having taken no more than that step's share.

use std::{collections::HashSet, net::SocketAddr, sync::atomic::Ordering, time::Instant};

use serde_json::Value;

use super::balancer::*;
use crate::support::{require, script::ScriptCluster};

/// Short steps for a test: two measurements of 4 s per step instead of three of 10 s, each
/// judging from 5 canary requests at least. The load sends 50 requests a second on an idle
/// machine, but about 22 beside the rest of a fresh-clone CI run, where a 10 % window got 8
/// and 10 failed it as too little traffic; the share is HAProxy's weights, so it is the
/// machine's speed, not chance, that sets the count. The p99 of a few dozen requests is their
/// slowest one, and this debug build shares two cores with the load, PostgreSQL, Prometheus
/// and the other tests: a latency slack of 1 s keeps one slow request from failing a good build
/// (250 ms did not, once in five local runs beside the WebSocket tests; a bad build here fails
/// on errors).
const STEP_FLAGS: &[&str] = &["--interval", "4s", "--count", "2", "--min-requests", "5", "--latency-slack", "1s"];

/// The decision log: the JSON lines the release printed (the script's own lines are text).
fn decisions(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn with_msg<'a>(log: &'a [Value], msg: &str) -> Vec<&'a Value> {
    log.iter().filter(|l| l["msg"].as_str().is_some_and(|m| m.starts_with(msg))).collect()
}

fn tools() -> bool {
    require_cluster_tools().is_some() && require("prometheus", "the canary release tests (they judge from it)")
}

async fn ids(http: &reqwest::Client, cluster: &ScriptCluster) -> HashSet<String> {
    let mut ids = HashSet::new();
    for i in 1..=2 {
        let res = http.get(cluster.url(i, "/healthz")).send().await.unwrap();
        ids.insert(res.headers()["x-served-by"].to_str().unwrap().to_owned());
    }
    ids
}

fn balancer(cluster: &ScriptCluster) -> SocketAddr {
    format!("127.0.0.1:{}", cluster.port).parse().unwrap()
}

struct Released {
    took: std::time::Duration,
    tally: std::sync::Arc<Tally>,
    replicas: Vec<(String, super::Canvas)>,
    log: Vec<Value>,
    printed: String,
}

/// `scripts/cluster release` of the test binary (with `env` for the canary) under the steady
/// load, which runs from 2 s before to 1 s after; the release must exit with `code`.
async fn release_under_load(
    cluster: &ScriptCluster,
    http: &reqwest::Client,
    env: &[(&str, &str)],
    code: i32,
) -> Released {
    let load = Load::start(balancer(cluster), http).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let started = Instant::now();
    let out = tokio::task::block_in_place(|| cluster.release(env!("CARGO_BIN_EXE_draw64"), env, STEP_FLAGS));
    let took = started.elapsed();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let (tally, replicas) = load.finish().await;
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(code), "the release should exit {code} (0 promoted, 3 rolled back):\n{printed}");
    Released { took, tally, replicas, log: decisions(&out.stdout), printed }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_release_rolls_forward_with_no_failed_request_and_readers_miss_nothing() {
    if !tools() {
        return;
    }
    let cluster = ScriptCluster::start();
    let http = reqwest::Client::new();
    let before = ids(&http, &cluster).await;
    let Released { took, tally, replicas, log, printed } = release_under_load(&cluster, &http, &[], 0).await;

    let steps = with_msg(&log, "step passed");
    assert_eq!(steps.len(), 3, "three steps should pass:\n{printed}");
    assert_eq!(with_msg(&log, "promoted").len(), 1, "{printed}");
    assert_eq!(with_msg(&log, "release finished").len(), 1, "{printed}");
    assert_eq!(with_msg(&log, "annotation scraped").len(), 2, "promoted and finished reach Prometheus:\n{printed}");
    let after = ids(&http, &cluster).await;
    assert!(before.is_disjoint(&after), "every instance should have been replaced: {before:?} then {after:?}");

    let found = check_survivor(&tally, &replicas, &http, &cluster.url(0, "")).await;
    let failed = tally.http_failed.lock().unwrap().clone();
    let answers = tally.answers.lock().unwrap().clone();
    let by: HashSet<&String> = answers.iter().map(|(_, by, _)| by).collect();
    let reconnects = tally.ws_reconnects.load(Ordering::Relaxed);
    eprintln!(
        "FIGURES good release: {} steps passed, {:.1} s from start to every instance on the new build; \
         {} HTTP requests, {} failed; {found} changes acknowledged, {found} found; {reconnects} WebSocket reconnects; \
         answered by {} instances in turn",
        steps.len(),
        took.as_secs_f64(),
        tally.http_sent.load(Ordering::Relaxed),
        failed.len(),
        by.len()
    );
    assert!(failed.is_empty(), "requests failed during the release: {failed:?}");
    assert!(found > 200, "too little load to mean anything: {found}");
    assert!(reconnects >= 2, "the sockets should have moved to the new instances");
    assert!(by.len() >= 5, "the old pair, the canary and the new pair should all have answered: {by:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_release_is_rolled_back_at_the_first_step_naming_the_failed_figure() {
    if !tools() {
        return;
    }
    let cluster = ScriptCluster::start();
    let flags = cluster.dir().join("bad-release.flagd.json");
    // Four in five of the canary's commits fail. The first step must show the fault with near
    // certainty from the few requests a 10 % share gets in two short windows: 16 or more,
    // about four in five of them PUTs. At 20 % failing commits all of 28 succeeded 0.8 % of
    // the time, and a fresh-clone CI run drew exactly that (0 errors in 12 and 16, caught at
    // the second step); at 80 % all of 16 succeed 0.36^16 of the time, under one in ten million.
    std::fs::write(
        &flags,
        r#"{"flags": {"failingCommits": {"state": "ENABLED", "variants": {"off": 0, "80%": 0.8}, "defaultVariant": "80%"}}}"#,
    )
    .unwrap();
    let http = reqwest::Client::new();
    let stable = ids(&http, &cluster).await;
    let flags = flags.to_str().unwrap();
    let Released { took, tally, replicas, log, printed } =
        release_under_load(&cluster, &http, &[("DRAW64_FAULT_FLAGS", flags)], 3).await;

    let rollback = with_msg(&log, "rolling back");
    assert_eq!(rollback.len(), 1, "{printed}");
    assert_eq!(rollback[0]["step"], "1", "rolled back at the first step:\n{printed}");
    let reason = rollback[0]["reason"].as_str().unwrap();
    assert!(reason.starts_with("error_ratio "), "the log should name the failed figure: {reason}");
    assert!(with_msg(&log, "step passed").is_empty(), "{printed}");
    assert_eq!(with_msg(&log, "annotation scraped").len(), 1, "{printed}");
    assert_eq!(ids(&http, &cluster).await, stable, "the stable instances should be untouched");

    let found = check_survivor(&tally, &replicas, &http, &cluster.url(0, "")).await;
    // The canary's share of the writers' answers while it was in, from its first to its last.
    let answers = tally.answers.lock().unwrap().clone();
    let canary: Vec<&(Instant, String, bool)> = answers.iter().filter(|(_, by, _)| !stable.contains(by)).collect();
    assert!(!canary.is_empty(), "the canary should have answered some requests");
    let (first, last) = (canary[0].0, canary[canary.len() - 1].0);
    let during = answers.iter().filter(|(at, _, _)| *at >= first && *at <= last).count();
    let share = canary.len() as f64 / during as f64;
    let failed = tally.http_failed.lock().unwrap().clone();
    let from_canary = failed.iter().filter(|f| !stable.iter().any(|id| f.contains(&format!("from {id}:")))).count();
    eprintln!(
        "FIGURES bad release (failingCommits 80 % on the canary): rolled back at step {} ({reason}), {:.1} s after the \
         rollout began ({:.1} s until the canary was gone); the canary answered {} of {during} requests while in \
         ({:.1} %); {} of {} HTTP requests failed, {from_canary} of them on the canary: {:?}; {found} changes \
         acknowledged, {found} found; {} WebSocket reconnects",
        rollback[0]["step"].as_str().unwrap(),
        rollback[0]["seconds_since_start"].as_f64().unwrap(),
        took.as_secs_f64(),
        canary.len(),
        share * 100.0,
        failed.len(),
        tally.http_sent.load(Ordering::Relaxed),
        failed.first(),
        tally.ws_reconnects.load(Ordering::Relaxed)
    );
    assert!(share <= 0.15, "the canary took {:.1} % at a 10 % step", share * 100.0);
    assert_eq!(from_canary, failed.len(), "only the canary's failing commits should fail: {failed:?}");
    assert!(failed.iter().all(|f| f.starts_with("503")), "{failed:?}");
    assert!(found > 100, "too little load to mean anything: {found}");
}
