//! Telemetry, checked with real parts: an OTLP receiver (gRPC and HTTP), the console exporter,
//! a collector that is not there, and the live Prometheus exposition.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use opentelemetry_proto::tonic::{common::v1::any_value::Value as Any, trace::v1::span::SpanKind};
use serde_json::Value;

use crate::support::{otlp::Receiver, *};

pub const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn attr<'a>(attrs: &'a [opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> Option<&'a Any> {
    attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()
}

pub fn string(v: Option<&Any>) -> Option<&str> {
    match v? {
        Any::StringValue(s) => Some(s),
        _ => None,
    }
}

fn int(v: Option<&Any>) -> Option<i64> {
    match v? {
        Any::IntValue(i) => Some(*i),
        _ => None,
    }
}

/// A one-pixel PUT of `image` in the trace `trace`, as a child of the span `PARENT_ID`.
pub async fn put_in_trace(http: &reqwest::Client, server: &Server, image: &str, trace: &str) -> reqwest::Response {
    http.put(server.url(&format!("/images/{image}")))
        .header("traceparent", format!("00-{trace}-{PARENT_ID}-01"))
        .header("content-type", "application/json")
        .body(draw(&[[1, 1, 9, 9, 9]]))
        .send()
        .await
        .unwrap()
}

pub async fn put_traced(http: &reqwest::Client, server: &Server, image: &str) {
    http.post(server.url(&format!("/images/{image}"))).send().await.unwrap();
    assert_eq!(put_in_trace(http, server, image, TRACE_ID).await.status(), 200);
}

async fn otlp_scenario(protocol: &str) {
    let receiver = Receiver::start().await;
    let endpoint = match protocol {
        "grpc" => format!("http://{}", receiver.grpc),
        _ => format!("http://{}", receiver.http),
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_env(
        &test_db(&dir),
        "127.0.0.1:0",
        &["--drain-grace", "0"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_METRICS_EXPORTER", "otlp,prometheus"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_BLRP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "draw64-under-test"),
            ("DRAW64_LOG", "info,draw64=debug"),
        ],
        None,
    );
    let http = reqwest::Client::new();
    put_traced(&http, &server, "traced").await;

    let deadline = Instant::now() + WAIT;
    loop {
        {
            let got = receiver.sink.0.lock().unwrap();
            let server_span =
                got.spans.iter().find(|s| s.name == "PUT /images/{image_id}" && hex(&s.trace_id) == TRACE_ID);
            let logs = got.logs.iter().filter(|l| hex(&l.trace_id) == TRACE_ID).count();
            if let (Some(span), true, true) = (server_span, logs > 0, got.metric_requests > 0) {
                // The incoming trace is continued: same trace, the caller's span as parent.
                assert_eq!(hex(&span.parent_span_id), PARENT_ID, "{protocol}");
                assert_eq!(span.kind, SpanKind::Server as i32);
                assert_eq!(string(attr(&span.attributes, "http.request.method")), Some("PUT"));
                assert_eq!(string(attr(&span.attributes, "http.route")), Some("/images/{image_id}"));
                assert_eq!(string(attr(&span.attributes, "url.scheme")), Some("http"));
                assert_eq!(string(attr(&span.attributes, "url.path")), Some("/images/traced"));
                assert_eq!(int(attr(&span.attributes, "http.response.status_code")), Some(200));
                for deprecated in ["http.method", "http.target", "http.status_code", "net.host.port", "http.url"] {
                    assert!(attr(&span.attributes, deprecated).is_none(), "deprecated {deprecated}");
                }
                // The commit is a database client span, a child of the request's span.
                let db = got
                    .spans
                    .iter()
                    .find(|s| s.kind == SpanKind::Client as i32 && s.parent_span_id == span.span_id)
                    .expect("a database span under the PUT");
                assert_eq!(hex(&db.trace_id), TRACE_ID);
                let (system, placeholder) =
                    if crate::support::pg::suite_on_postgres() { ("postgresql", "$1") } else { ("sqlite", "?1") };
                assert_eq!(string(attr(&db.attributes, "db.system.name")), Some(system));
                assert_eq!(string(attr(&db.attributes, "db.operation.name")), Some("BATCH UPSERT"));
                let query = string(attr(&db.attributes, "db.query.text")).unwrap();
                assert!(
                    query.contains(placeholder) && !query.contains("traced"),
                    "parameters are never inlined: {query}"
                );
                assert!(got.services.iter().any(|s| s.contains("draw64-under-test")), "{:?}", got.services);
                break;
            }
        }
        assert!(Instant::now() < deadline, "{protocol}: the receiver did not get the PUT's spans, logs and metrics");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.signal(Signal::SIGTERM);
    assert_eq!(server.wait(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_grpc_receives_the_spans_and_logs_of_a_put() {
    otlp_scenario("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_http_receives_the_spans_and_logs_of_a_put() {
    otlp_scenario("http/protobuf").await;
}

/// A WebSocket frame is a trace of its own (`ws command`, a consumer span) linked to the socket's
/// `ws connect`, with `validate` and `commit` under it and the batch's database span under the
/// commit; a refused frame's span carries `error.type`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_command_is_a_trace_of_its_own_linked_to_the_connect() {
    let (receiver, server, _dir) = traced_server().await;
    let mut ws = ws_connect(&format!("ws://{}/ws/images/spans", server.addr)).await;
    ws_send(&mut ws, &draw(&[[2, 3, 9, 9, 9]])).await;
    assert_eq!(next_event(&mut ws).await["event"]["event_type"], "image_updated");
    ws_send(&mut ws, "not json").await;
    assert_eq!(next_event(&mut ws).await["event"]["event_type"], "error");
    drop(ws);

    let deadline = Instant::now() + WAIT;
    loop {
        {
            let got = receiver.sink.0.lock().unwrap();
            let commands: Vec<_> = got.spans.iter().filter(|s| s.name == "ws command").collect();
            let connect = got.spans.iter().find(|s| s.name == "ws connect");
            let draw = commands.iter().find(|s| string(attr(&s.attributes, "draw64.command.type")) == Some("draw"));
            let bad = commands.iter().find(|s| string(attr(&s.attributes, "error.type")) == Some("invalid_command"));
            let children = |of: &opentelemetry_proto::tonic::trace::v1::Span| -> Vec<String> {
                let mut names: Vec<String> = got
                    .spans
                    .iter()
                    .filter(|s| s.parent_span_id == of.span_id && s.trace_id == of.trace_id)
                    .map(|s| s.name.clone())
                    .collect();
                names.sort();
                names
            };
            if let (Some(connect), Some(draw), Some(bad)) = (connect, draw, bad)
                && children(draw).len() == 2
            {
                assert_eq!(draw.kind, SpanKind::Consumer as i32);
                assert!(draw.parent_span_id.is_empty(), "a trace of its own");
                assert_ne!(draw.trace_id, connect.trace_id);
                assert!(
                    draw.links.iter().any(|l| l.span_id == connect.span_id && l.trace_id == connect.trace_id),
                    "linked to the socket's connect"
                );
                assert_eq!(string(attr(&draw.attributes, "draw64.image.id")), Some("spans"));
                assert_eq!(int(attr(&draw.attributes, "draw64.pixel.count")), Some(1));
                let session = string(attr(&connect.attributes, "draw64.ws.session_id"));
                assert!(session.is_some());
                assert_eq!(string(attr(&draw.attributes, "draw64.ws.session_id")), session);
                assert!(attr(&draw.attributes, "error.type").is_none());
                assert_eq!(children(draw), ["commit", "validate"]);
                let commit = got.spans.iter().find(|s| s.name == "commit" && s.parent_span_id == draw.span_id).unwrap();
                // The batch's database span: under the first traced request of the batch, linked
                // to the others; here the command's commit.
                assert!(
                    got.spans.iter().any(|s| s.kind == SpanKind::Client as i32
                        && (s.parent_span_id == commit.span_id && s.trace_id == commit.trace_id
                            || s.links.iter().any(|l| l.span_id == commit.span_id))),
                    "the batch's database span is under the command's commit"
                );
                // Refused while parsing: validated, never queued.
                assert_eq!(bad.kind, SpanKind::Consumer as i32);
                assert_eq!(children(bad), ["validate"]);
                break;
            }
        }
        assert!(Instant::now() < deadline, "the receiver did not get the WebSocket command spans");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.signal(Signal::SIGTERM);
    assert_eq!(server.wait(), Some(0));
}

#[tokio::test]
async fn the_console_exporter_prints_span_names_and_trace_ids() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stdout.txt");
    let server = Server::start_env(
        &test_db(&dir),
        "127.0.0.1:0",
        &["--drain-grace", "0"],
        &[("OTEL_TRACES_EXPORTER", "console"), ("OTEL_SERVICE_NAME", "draw64")],
        Some(&out),
    );
    put_traced(&reqwest::Client::new(), &server, "shown").await;
    server.signal(Signal::SIGTERM);
    assert_eq!(server.wait(), Some(0));
    let printed = std::fs::read_to_string(&out).unwrap();
    let put = printed
        .lines()
        .find(|l| l.starts_with("span \"PUT /images/{image_id}\""))
        .unwrap_or_else(|| panic!("no PUT span line in:\n{printed}"));
    assert!(put.contains(&format!("trace_id={TRACE_ID}")), "{put}");
    assert!(put.contains(&format!("parent_span_id={PARENT_ID}")), "{put}");
    assert!(put.contains("kind=Server") && put.contains("duration_ms="), "{put}");
    assert!(put.contains("http.response.status_code=200") && put.contains("http.route=/images/{image_id}"), "{put}");
    assert!(
        printed.lines().any(|l| l.starts_with("span \"BATCH UPSERT images\"") && l.contains(TRACE_ID)),
        "{printed}"
    );
}

#[tokio::test]
async fn logs_are_json_lines_with_the_trace_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_env(&test_db(&dir), "127.0.0.1:0", &[], &[("DRAW64_LOG", "info,draw64=debug")], None);
    put_traced(&reqwest::Client::new(), &server, "logged").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let found = server.logs.lock().unwrap().iter().any(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
            v["trace_id"] == TRACE_ID && v["span_id"].is_string() && v["timestamp"].is_string() && v["level"] == "DEBUG"
        });
        if found {
            break;
        }
        assert!(Instant::now() < deadline, "no JSON log line with the trace id");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 100,000 requests with every span sent to a port where nothing listens: all succeed, and
/// memory stays bounded (the exporter's queue drops what it cannot send).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_costs_nothing_but_a_bounded_buffer() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let endpoint = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_env(
        &test_db(&dir),
        "127.0.0.1:0",
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_METRICS_EXPORTER", "otlp,prometheus")],
        None,
    );
    let http = reqwest::Client::new();
    http.post(server.url("/images/busy")).send().await.unwrap();
    let run = |count: usize| {
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let http = http.clone();
                let url = server.url("/images/busy");
                tokio::spawn(async move {
                    for _ in 0..count / 16 {
                        assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
                    }
                })
            })
            .collect();
        async move {
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    run(10_000).await;
    let before = server.rss_bytes();
    run(100_000).await;
    let after = server.rss_bytes();
    let grown = after.saturating_sub(before);
    eprintln!("unreachable collector: RSS {before} -> {after} bytes after 100,000 requests");
    assert!(grown <= 50 << 20, "RSS grew by {grown} bytes");
    // Still serving, and still ready: telemetry never takes the service down.
    assert_eq!(http.get(server.url("/readyz")).send().await.unwrap().status(), 200);
    assert!(server.logs.lock().unwrap().iter().any(|l| l.contains("opentelemetry")), "no log line about the exporter");
}

/// Every Draw64 metric in the registry, and every family the issue lists, is in a live scrape;
/// `promtool check metrics` finds no problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_scrape_has_every_family_and_passes_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&test_db(&dir), "127.0.0.1:0", &[]);
    let scrape = exercise_and_scrape(&server).await;
    for family in required_families() {
        assert!(scrape.lines().any(|l| l.starts_with("# TYPE ") && l[7..].starts_with(&family)), "no {family} family");
    }
    for m in draw64::telemetry::registry::METRICS {
        let name = draw64::telemetry::registry::prometheus_name(m);
        let kind = match m.instrument {
            draw64::telemetry::registry::Instrument::Counter => "counter",
            draw64::telemetry::registry::Instrument::Histogram => "histogram",
            _ => "gauge",
        };
        assert!(
            scrape.contains(&format!("# TYPE {name} {kind}\n")),
            "registry metric {} is not in the scrape as {name} {kind}",
            m.name
        );
        assert!(scrape.contains(&format!("# HELP {name} {}", m.description)), "{name} lacks its description");
    }
    for deprecated in ["http_method", "http_target", "http_status_code", "net_host_port", "http_server_duration"] {
        assert!(!scrape.contains(deprecated), "deprecated name {deprecated} in the scrape");
    }
    if require("promtool", "promtool check metrics") {
        let out = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .output_with_stdin(scrape.as_bytes())
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

pub fn required_families() -> Vec<String> {
    [
        "http_server_request_duration_seconds",
        "http_server_active_requests",
        "db_client_operation_duration_seconds",
        "system_cpu_utilization",
        "system_memory_usage",
        "system_memory_utilization",
        "system_filesystem_usage",
        "system_filesystem_utilization",
        "system_disk_io",
        "system_disk_operations",
        "system_network_io",
        "process_cpu_time",
        "process_memory_usage",
        "target_info",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// One request of each kind (REST, WebSocket with a draw, SSE), then the exposition text.
pub async fn exercise_and_scrape(server: &Server) -> String {
    let http = reqwest::Client::new();
    put_traced(&http, server, "scraped").await;
    http.get(server.url("/images/scraped.png")).send().await.unwrap();
    http.get(server.url("/images/nope")).send().await.unwrap();
    let sse = http.get(server.url("/sse/announce")).send().await.unwrap();
    let mut ws = ws_connect(&format!("ws://{}/ws/images/scraped", server.addr)).await;
    ws_send(&mut ws, &draw(&[[2, 2, 1, 1, 1]])).await;
    next_event(&mut ws).await;
    ws_send(&mut ws, "not json").await;
    next_event(&mut ws).await;
    let res = http.post(server.url("/rum")).body(crate::rum::EVERY_KIND).send().await.unwrap();
    assert_eq!(res.status(), 204);
    let metrics = server.metrics.expect("a metrics port");
    let text = http.get(format!("http://{metrics}/metrics")).send().await.unwrap().text().await.unwrap();
    drop((sse, ws));
    text
}

trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> Option<std::process::Output>;
}

impl OutputWithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> Option<std::process::Output> {
        use std::io::Write;
        let mut child = self.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().ok()?;
        child.stdin.take()?.write_all(input).ok()?;
        child.wait_with_output().ok()
    }
}

/// A frame may carry the page's stroke as a W3C `traceparent`: the server's command span
/// continues that trace (so a slow stroke seen in the browser leads to its server trace), and
/// the relayed event is the command exactly as without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_s_traceparent_is_the_parent_of_its_command_span_and_is_not_relayed() {
    let (receiver, server, _dir) = traced_server().await;
    let mut ws = ws_connect(&format!("ws://{}/ws/images/stroke", server.addr)).await;
    let stroke = "0af7651916cd43dd8448eb211c80319c";
    let frame = format!(
        r#"{{"command":{{"command_type":"draw","values":[[1,2,3,4,5]]}},"traceparent":"00-{stroke}-b7ad6b7169203331-01"}}"#
    );
    ws_send(&mut ws, &frame).await;
    let echo = next_event(&mut ws).await;
    assert_eq!(
        echo,
        serde_json::json!({"event": {"event_type": "image_updated", "image_id": "stroke",
            "command": {"command_type": "draw", "values": [[1, 2, 3, 4, 5]]}}})
    );
    drop(ws);
    let deadline = Instant::now() + WAIT;
    loop {
        {
            let got = receiver.sink.0.lock().unwrap();
            if let Some(command) = got.spans.iter().find(|s| s.name == "ws command") {
                assert_eq!(hex(&command.trace_id), stroke);
                assert_eq!(hex(&command.parent_span_id), "b7ad6b7169203331");
                let connect = got.spans.iter().find(|s| s.name == "ws connect");
                if let Some(connect) = connect {
                    assert!(command.links.iter().any(|l| l.span_id == connect.span_id), "still linked to the connect");
                    break;
                }
            }
        }
        assert!(Instant::now() < deadline, "no ws command span in the stroke's trace");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The real binary exporting its spans over OTLP/gRPC to an in-test receiver, every 100 ms.
async fn traced_server() -> (Receiver, Server, tempfile::TempDir) {
    let receiver = Receiver::start().await;
    let endpoint = format!("http://{}", receiver.grpc);
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let server = Server::start_env(&test_db(&dir), "127.0.0.1:0", &["--drain-grace", "0"], &env, None);
    (receiver, server, dir)
}

/// The counters the hot path records through bound instruments count what happened, by their
/// attributes: commands by type, WebSocket messages by direction and type, HTTP requests by
/// route and status.
#[tokio::test]
async fn bound_counters_count_by_their_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&test_db(&dir), "127.0.0.1:0", &[]);
    let http = reqwest::Client::new();
    assert_eq!(http.post(server.url("/images/bound")).send().await.unwrap().status(), 201);
    let mut ws = ws_connect(&format!("ws://{}/ws/images/bound", server.addr)).await;
    ws_send(&mut ws, &draw(&[[1, 1, 1, 2, 3]])).await;
    ws_send(&mut ws, CLEAR).await;
    ws_send(&mut ws, "not json").await;
    let put = http.put(server.url("/images/bound")).body(draw(&[[2, 2, 4, 5, 6]])).send().await.unwrap();
    assert_eq!(put.status(), 200);
    let missing = http.put(server.url("/images/nowhere")).body(draw(&[[2, 2, 4, 5, 6]])).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let series = |s: &str| s.to_owned();
    let expected = [
        (series(r#"draw64_commands_applied_total{draw64_command_type="draw""#), 2.0),
        (series(r#"draw64_commands_applied_total{draw64_command_type="clear_canvas""#), 1.0),
        (series(r#"draw64_ws_messages_total{draw64_direction="in",draw64_message_type="draw""#), 1.0),
        (series(r#"draw64_ws_messages_total{draw64_direction="in",draw64_message_type="clear_canvas""#), 1.0),
        (series(r#"draw64_ws_messages_total{draw64_direction="in",draw64_message_type="invalid""#), 1.0),
        // The socket's own draw and clear, and the PUT's draw, came back to it.
        (series(r#"draw64_ws_messages_total{draw64_direction="out",draw64_message_type="image_updated""#), 3.0),
        (series(r#"draw64_ws_messages_total{draw64_direction="out",draw64_message_type="error""#), 1.0),
    ];
    for (s, want) in &expected {
        assert_eq!(server.until_sample(s, *want).await, *want, "{s}");
    }
    let scrape = server.scrape().await;
    let requests = |route: &str, status: u16| {
        scrape
            .lines()
            .filter(|l| l.starts_with("http_server_request_duration_seconds_count{"))
            .filter(|l| l.contains(&format!("http_response_status_code=\"{status}\"")))
            .filter(|l| l.contains(&format!("http_route=\"{route}\"")) && l.contains("http_request_method=\"PUT\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert_eq!(requests("/images/{image_id}", 200), 1.0, "{scrape}");
    assert_eq!(requests("/images/{image_id}", 404), 1.0, "{scrape}");
}
