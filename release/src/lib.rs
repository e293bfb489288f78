//! `draw64 release`: a canary release through HAProxy's runtime API, judged from Prometheus.
//!
//! `canary` adds the new build's instance to every backend at weight 0, then gives it a
//! growing share of the traffic (`--steps`), measuring it against the stable instances at each
//! step (`--count` measurements `--interval` apart, each over the interval just past). Any
//! failing measurement beyond `--failure-limit` rolls back: the canary's weight goes to 0, the
//! stable weights come back, and the canary is retired (`POST /admin/drain`: readiness 503,
//! WebSockets closed 1012 so pages reconnect elsewhere, then it exits) and removed. When every
//! step passes, the canary holds all the traffic; the stable instances are then replaced by
//! the new build (scripts/cluster restarts them), and `finish` gives them their traffic back
//! and retires the canary. Every decision is a JSON line on stdout with its figures, and a
//! series on `--annotations-listen` for dashboards.

mod analysis;
mod annotations;
mod haproxy;
mod http;
mod prometheus;

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::{Args, Subcommand};
use serde_json::{Value, json};

pub use analysis::{Figures, Queries, Thresholds, Verdict, judge, weights};
use annotations::Annotations;
use haproxy::RuntimeApi;
use prometheus::Prometheus;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("HAProxy's runtime API refused `{command}`: {cause}")]
    Haproxy { command: String, cause: String },
    #[error("HTTP request to {url} failed: {cause}")]
    Http { url: String, cause: String },
    #[error("Prometheus query `{query}` failed: {cause}")]
    Prometheus { query: String, cause: String },
    #[error("{0}")]
    Setup(String),
}

/// Exit statuses: promoted (or finished), rolled back, could not run.
const PROMOTED: u8 = 0;
const FAILED: u8 = 1;
const ROLLED_BACK: u8 = 3;

#[derive(Subcommand, Debug, Clone)]
pub enum Release {
    /// Roll a new instance out as a canary: add it to HAProxy, shift traffic to it step by
    /// step, judge it from Prometheus; exits 0 with the canary holding all traffic (promote
    /// next: replace the stable instances, then `finish`), or 3 after rolling it back.
    Canary(Canary),
    /// After the stable instances run the new build: give them their traffic back and retire
    /// the canary.
    Finish(Finish),
    /// Print the analysis's PromQL for a selector and a window (for dashboards, and the same
    /// as deploy/kubernetes/'s AnalysisTemplate).
    Queries {
        #[arg(long, default_value = r#"track="canary""#)]
        selector: String,
        #[arg(long, default_value = "10s")]
        window: String,
    },
}

#[derive(Args, Debug, Clone)]
pub struct Target {
    /// HAProxy's runtime API: host:port, or the path of its Unix socket.
    #[arg(long, env = "DRAW64_HAPROXY_API", default_value = "127.0.0.1:8097")]
    pub haproxy: String,
    /// The canary's public address (host:port), as HAProxy reaches it.
    #[arg(long)]
    pub canary: String,
    /// The canary's server name in every backend.
    #[arg(long, default_value = "canary")]
    pub canary_name: String,
    /// The instances' admin token, to retire the canary (`POST /admin/drain`).
    #[arg(long, env = "DRAW64_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// The canary's health checks in HAProxy (dynamic servers do not take `default-server`):
    /// the same as deploy/haproxy.cfg's.
    #[arg(long, default_value = "check inter 1s fastinter 500ms downinter 1s fall 2 rise 2")]
    pub server_options: String,
    /// How long the canary may take to drain and exit once retired.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub retire_timeout: Duration,
    /// The release's name in the logs and the annotations (e.g. the new version).
    #[arg(long, default_value = "canary")]
    pub release: String,
    /// Serve the annotations (`draw64_release_*`) here for Prometheus to scrape.
    #[arg(long)]
    pub annotations_listen: Option<SocketAddr>,
    /// Prometheus's URL. `canary` judges from it; both wait (bounded) for it to have scraped
    /// the last decision's annotation before exiting.
    #[arg(long, env = "DRAW64_PROMETHEUS_URL")]
    pub prometheus: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct Canary {
    #[command(flatten)]
    pub target: Target,
    /// The canary's share of the traffic at each step, in percent, ascending, the last 100.
    #[arg(long, default_value = "10,50,100", value_delimiter = ',')]
    pub steps: Vec<u32>,
    /// Time between measurements, and each measurement's window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Measurements per step.
    #[arg(long, default_value_t = 3)]
    pub count: u32,
    /// Failed measurements tolerated over the whole release (Argo Rollouts' failureLimit).
    #[arg(long, default_value_t = 0)]
    pub failure_limit: u32,
    /// A measurement with fewer canary requests than this fails: nothing was proven.
    #[arg(long, default_value_t = 20.0)]
    pub min_requests: f64,
    /// How far the canary's 5xx ratio may exceed the stable's.
    #[arg(long, default_value_t = 0.01)]
    pub max_error_increase: f64,
    /// How many times the stable's p99 the canary's may be …
    #[arg(long, default_value_t = 1.5)]
    pub max_latency_ratio: f64,
    /// … plus this: a margin no user notices, so that one slow request among a few dozen
    /// (their p99) does not fail a good build.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub latency_slack: Duration,
    /// PromQL label matcher for the canary's series.
    #[arg(long, default_value = r#"track="canary""#)]
    pub canary_selector: String,
    /// PromQL label matcher for the stable instances' series.
    #[arg(long, default_value = r#"track="stable""#)]
    pub stable_selector: String,
    /// How long the canary may take to pass HAProxy's health checks.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub ready_timeout: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct Finish {
    #[command(flatten)]
    pub target: Target,
    /// How long the stable instances may take to pass HAProxy's health checks.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub ready_timeout: Duration,
}

pub async fn main(release: Release) -> ExitCode {
    let outcome = match release {
        Release::Canary(args) => canary(&args).await,
        Release::Finish(args) => finish(&args).await,
        Release::Queries { selector, window } => {
            let q = Queries::new(&selector, &window);
            println!("requests:    {}\nerror_ratio: {}\np99:         {}", q.requests, q.error_ratio, q.p99);
            Ok(PROMOTED)
        }
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            log("release failed", json!({"error": e.to_string()}));
            ExitCode::from(FAILED)
        }
    }
}

/// One decision log line: JSON on stdout, like the server's logs.
fn log(msg: &str, fields: Value) {
    let time =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let mut line = json!({"time": (time * 1000.0).round() / 1000.0, "msg": msg});
    if let (Some(line), Value::Object(fields)) = (line.as_object_mut(), fields) {
        line.extend(fields);
    }
    println!("{line}");
}

fn figures_json(f: &Figures) -> Value {
    json!({"requests": f.requests.round(), "error_ratio": f.error_ratio, "p99_seconds": f.p99})
}

/// What both verbs share: HAProxy, the annotations, and how the canary leaves.
struct Controller<'a> {
    target: &'a Target,
    api: RuntimeApi,
    annotations: Annotations,
}

impl<'a> Controller<'a> {
    async fn new(target: &'a Target) -> Result<Controller<'a>, ReleaseError> {
        let annotations = Annotations::new(&target.release);
        if let Some(address) = target.annotations_listen {
            let exposition = {
                let a = annotations.clone();
                move || a.exposition()
            };
            let bound = http::serve_metrics(address, exposition).await?;
            log("annotations served", json!({"address": format!("http://{bound}/metrics")}));
        }
        Ok(Controller { target, api: RuntimeApi::new(&target.haproxy), annotations })
    }

    fn name(&self) -> &str {
        &self.target.canary_name
    }

    /// Sets every backend's weights for the canary's `percent`.
    async fn shift(&self, percent: u32) -> Result<(), ReleaseError> {
        for (backend, stables) in self.api.backends(self.name()).await? {
            let (canary, stable) = weights(percent, stables.len() as u32);
            self.api.set_weight(&backend, self.name(), canary).await?;
            for s in &stables {
                self.api.set_weight(&backend, &s.name, stable).await?;
            }
        }
        self.annotations.share(f64::from(percent) / 100.0);
        Ok(())
    }

    /// Every stable back to its configured weight, then the canary's to 0. In that order: after a
    /// promotion the stables are at 0, and the canary first would leave a moment with no server
    /// of any weight, which HAProxy answers 503.
    async fn restore_stable(&self) -> Result<(), ReleaseError> {
        for (backend, stables) in self.api.backends(self.name()).await? {
            for s in &stables {
                self.api.set_weight(&backend, &s.name, s.initial_weight).await?;
            }
            if self.api.servers().await?.iter().any(|s| s.backend == backend && s.name == self.name()) {
                self.api.set_weight(&backend, self.name(), 0).await?;
            }
        }
        self.annotations.share(0.0);
        Ok(())
    }

    /// Waits until `names` are up in every backend that has them.
    async fn until_up(&self, names: &[&str], within: Duration) -> Result<(), ReleaseError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let servers = self.api.servers().await?;
            let down: Vec<String> = servers
                .iter()
                .filter(|s| names.contains(&s.name.as_str()) && !s.up)
                .map(|s| format!("{}/{}", s.backend, s.name))
                .collect();
            if down.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ReleaseError::Setup(format!(
                    "not up in HAProxy after {within:?}: {} (its /readyz fails?)",
                    down.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Retires the canary (it drains and exits) and deletes it from every backend.
    async fn retire(&self) -> Result<(), ReleaseError> {
        let url = format!("http://{}/admin/drain", self.target.canary);
        match http::request("POST", &url, Some(&self.target.admin_token)).await {
            Ok((202, _)) => {
                log("canary retired: draining, its WebSockets closed with 1012", json!({"canary": self.target.canary}))
            }
            Ok((status, body)) => {
                return Err(ReleaseError::Setup(format!("the canary refused {url}: {status} {body}")));
            }
            // Already gone: nothing to drain.
            Err(e) => log("canary not reachable to retire; removing it", json!({"error": e.to_string()})),
        }
        let deadline = tokio::time::Instant::now() + self.target.retire_timeout;
        while http::request("GET", &format!("http://{}/healthz", self.target.canary), None).await.is_ok() {
            if tokio::time::Instant::now() >= deadline {
                return Err(ReleaseError::Setup(format!(
                    "the canary still answers {:?} after being retired",
                    self.target.retire_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for server in self.api.servers().await?.into_iter().filter(|s| s.name == self.name()) {
            self.api.remove_server(&server.backend, self.name(), Duration::from_secs(10)).await?;
        }
        log("canary removed from HAProxy", json!({"canary": self.target.canary}));
        Ok(())
    }

    /// Records a decision and, when Prometheus scrapes the annotations, waits (bounded) until
    /// it has the series, so a dashboard marks even the last one.
    async fn decided(&self, step: &str, decision: &str) {
        self.annotations.decided(step, decision);
        let (Some(url), Some(_)) = (&self.target.prometheus, self.target.annotations_listen) else { return };
        if !matches!(decision, "promoted" | "rolled_back" | "finished") {
            return;
        }
        let query = format!(
            r#"draw64_release_decision_timestamp_seconds{{release="{}", decision="{decision}"}}"#,
            self.target.release.replace('\\', "\\\\").replace('"', "\\\"")
        );
        let prometheus = Prometheus::new(url);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = prometheus.scalar(&query).await {
                log("annotation scraped by Prometheus", json!({"decision": decision}));
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        log("Prometheus did not scrape the annotation within 30 s", json!({"decision": decision}));
    }
}

async fn canary(args: &Canary) -> Result<u8, ReleaseError> {
    let steps = &args.steps;
    if steps.is_empty() || steps.windows(2).any(|w| w[0] >= w[1]) || steps.iter().any(|s| !(1..=100).contains(s)) {
        return Err(ReleaseError::Setup(format!("--steps must ascend within 1..=100: {steps:?}")));
    }
    let Some(url) = &args.target.prometheus else {
        return Err(ReleaseError::Setup(
            "--prometheus (or DRAW64_PROMETHEUS_URL) is needed to judge the canary".into(),
        ));
    };
    let prometheus = Prometheus::new(url);
    let c = Controller::new(&args.target).await?;
    let backends = c.api.backends(c.name()).await?;
    if backends.is_empty() {
        return Err(ReleaseError::Setup("HAProxy has no backend with servers".into()));
    }
    let started = tokio::time::Instant::now();
    log(
        "release started",
        json!({"release": args.target.release, "canary": args.target.canary, "steps": steps,
               "backends": backends.keys().collect::<Vec<_>>(),
               "interval_seconds": args.interval.as_secs_f64(), "count": args.count, "failure_limit": args.failure_limit}),
    );
    let outcome = tokio::select! {
        outcome = run_steps(args, &c, &prometheus) => outcome,
        _ = interrupted() => Err(ReleaseError::Setup("interrupted".into())),
    };
    let seconds = |t: tokio::time::Instant| (t.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    match outcome {
        Ok(None) => {
            log(
                "promoted: the canary holds all traffic; replace the stable instances, then `draw64 release finish`",
                json!({"release": args.target.release, "seconds": seconds(started)}),
            );
            c.decided("promote", "promoted").await;
            Ok(PROMOTED)
        }
        Ok(Some((step, why))) => rollback(&c, &step, &why, seconds(started)).await,
        // HAProxy or Prometheus failing mid-release, or an interruption: the canary was not
        // proven, so it goes.
        Err(e) => rollback(&c, "error", &e.to_string(), seconds(started)).await,
    }
}

async fn rollback(c: &Controller<'_>, step: &str, why: &str, seconds: f64) -> Result<u8, ReleaseError> {
    log("rolling back", json!({"step": step, "reason": why, "seconds_since_start": seconds}));
    c.restore_stable().await?;
    c.retire().await?;
    log("rolled back: the stable instances hold all traffic", json!({"step": step, "reason": why}));
    c.decided(step, "rolled_back").await;
    Ok(ROLLED_BACK)
}

/// Adds the canary and walks the steps; answers `None` when every one passed, or the step and
/// the reason to roll back.
async fn run_steps(
    args: &Canary,
    c: &Controller<'_>,
    prometheus: &Prometheus,
) -> Result<Option<(String, String)>, ReleaseError> {
    for backend in c.api.backends(c.name()).await?.keys() {
        c.api.add_server(backend, c.name(), &args.target.canary, &args.target.server_options).await?;
    }
    log("canary added at weight 0", json!({"canary": args.target.canary}));
    if let Err(e) = c.until_up(&[c.name()], args.ready_timeout).await {
        return Ok(Some(("0".into(), e.to_string())));
    }
    let thresholds = Thresholds {
        min_requests: args.min_requests,
        max_error_increase: args.max_error_increase,
        max_latency_ratio: args.max_latency_ratio,
        latency_slack: args.latency_slack.as_secs_f64(),
    };
    let window = format!("{}ms", args.interval.as_millis().max(1000));
    let canary_q = Queries::new(&args.canary_selector, &window);
    let stable_q = Queries::new(&args.stable_selector, &window);
    let mut failures = 0;
    let mut last_stable: Option<Figures> = None;
    for (i, &percent) in args.steps.iter().enumerate() {
        let step = format!("{}", i + 1);
        c.shift(percent).await?;
        log("step", json!({"step": i + 1, "canary_percent": percent}));
        for m in 1..=args.count {
            tokio::time::sleep(args.interval).await;
            let canary = prometheus.figures(&canary_q).await?;
            let stable = prometheus.figures(&stable_q).await?;
            // At 100 % the stable instances take nothing: compare with their last figures.
            if stable.requests >= args.min_requests {
                last_stable = Some(stable);
            }
            let verdict = judge(&canary, last_stable.as_ref(), &thresholds);
            log(
                "measurement",
                json!({"step": i + 1, "canary_percent": percent, "measurement": m, "verdict": verdict.to_string(),
                       "canary": figures_json(&canary), "stable": figures_json(&stable)}),
            );
            if let Verdict::Fail(reasons) = verdict {
                failures += 1;
                if failures > args.failure_limit {
                    c.annotations.decided(&step, "step_failed");
                    return Ok(Some((step, reasons.join("; "))));
                }
            }
        }
        c.annotations.decided(&step, "step_passed");
        log("step passed", json!({"step": i + 1, "canary_percent": percent}));
    }
    Ok(None)
}

async fn finish(args: &Finish) -> Result<u8, ReleaseError> {
    let c = Controller::new(&args.target).await?;
    let stables: Vec<String> = c
        .api
        .backends(c.name())
        .await?
        .into_values()
        .flatten()
        .map(|s| s.name)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let names: Vec<&str> = stables.iter().map(String::as_str).collect();
    c.until_up(&names, args.ready_timeout).await?;
    c.restore_stable().await?;
    log("stable instances hold the traffic again", json!({"servers": names}));
    c.retire().await?;
    log("release finished", json!({"release": args.target.release}));
    c.decided("finish", "finished").await;
    Ok(PROMOTED)
}

/// Resolves at SIGINT or SIGTERM: the release then rolls back rather than leave traffic split.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// `10s`, `500ms`, `2m` (as the server and the load tool read durations).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(raw.len());
    let unit = match &raw[split..] {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        other => return Err(format!("unknown unit {other:?} in {raw:?}: use s, ms or m")),
    };
    raw[..split]
        .trim()
        .parse::<f64>()
        .ok()
        .and_then(|n| Duration::try_from_secs_f64(n * unit).ok())
        .ok_or_else(|| format!("{raw:?} is not a duration like 10s, 500ms or 2m"))
}
