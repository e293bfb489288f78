//! Errors as a signal, seen through the in-test OTLP receiver: for a forced failure on each
//! path — a panic in a request handler, a panic in the writer, the store unavailable, an
//! invalid WebSocket frame — the span's status and `error.type`, its `exception` event, exactly
//! one log record with the span's trace, the counts in the scrape, and a service that goes on.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::{
    common::v1::any_value::Value as Any,
    logs::v1::LogRecord,
    trace::v1::{Span, status::StatusCode},
};

use crate::{
    support::{otlp::Receiver, *},
    telemetry::{TRACE_ID, attr, hex, put_in_trace, string},
};

const PARENT: &str = "00f067aa0ba902b7";

/// The binary with traces and logs going to `receiver` every 100 ms, fire drills allowed.
fn server(receiver: &Receiver, dir: &tempfile::TempDir) -> Server {
    let endpoint = format!("http://{}", receiver.grpc);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_METRICS_EXPORTER", "prometheus"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_BLRP_SCHEDULE_DELAY", "100"),
    ];
    Server::start_env(&test_db(dir), "127.0.0.1:0", &["--drain-grace", "0", "--fire-drills"], &env, None)
}

fn traceparent(trace: &str) -> String {
    format!("00-{trace}-{PARENT}-01")
}

async fn arm(server: &Server, drill: &str) {
    let url = format!("http://{}/debug/panic?in={drill}", server.metrics.unwrap());
    let res = reqwest::Client::new().post(url).send().await.unwrap();
    assert_eq!(res.status(), 202, "{drill} drill armed");
}

fn body(log: &LogRecord) -> &str {
    match log.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(Any::StringValue(s)) => s,
        _ => "",
    }
}

/// Waits until `found` sees what it wants in what the receiver holds.
async fn until<T>(receiver: &Receiver, what: &str, found: impl Fn(&crate::support::otlp::Received) -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(t) = found(&receiver.sink.0.lock().unwrap()) {
            return t;
        }
        assert!(Instant::now() < deadline, "the receiver never got {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Logs go out in the order they were written: once a log written later (the marker: a page's
/// error report) has arrived, every earlier one has too, so the count is exact.
async fn logs_of_trace_before_marker(receiver: &Receiver, server: &Server, trace: &str) -> Vec<LogRecord> {
    let res = reqwest::Client::new()
        .post(server.url("/rum"))
        .header("content-type", "text/plain")
        .body(crate::rum::EVERY_KIND)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    until(receiver, "the marker log", |got| got.logs.iter().any(|l| body(l) == "browser error").then_some(())).await;
    let got = receiver.sink.0.lock().unwrap();
    got.logs.iter().filter(|l| hex(&l.trace_id) == trace).cloned().collect()
}

fn exception(span: &Span) -> &opentelemetry_proto::tonic::trace::v1::span::Event {
    span.events.iter().find(|e| e.name == "exception").unwrap_or_else(|| panic!("no exception event on {}", span.name))
}

fn is_error(span: &Span) -> bool {
    span.status.as_ref().is_some_and(|s| s.code == StatusCode::Error as i32)
}

async fn scrape(server: &Server) -> String {
    let url = format!("http://{}/metrics", server.metrics.unwrap());
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_handler_is_one_exception_one_log_and_a_500_and_the_service_goes_on() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = server(&receiver, &dir);
    let http = reqwest::Client::new();
    arm(&server, "request").await;
    let res = http.get(server.url("/images")).header("traceparent", traceparent(TRACE_ID)).send().await.unwrap();
    assert_eq!(res.status(), 500);
    let detail: serde_json::Value = res.json().await.unwrap();
    assert_eq!(detail["detail"], "Internal server error; the request was not completed.");
    // The same connection pool, the same instance: it goes on serving.
    assert_eq!(http.get(server.url("/images")).send().await.unwrap().status(), 200);

    let span = until(&receiver, "the request's span", |got| {
        got.spans.iter().find(|s| hex(&s.trace_id) == TRACE_ID && s.name == "GET /images").cloned()
    })
    .await;
    assert!(is_error(&span), "span status {:?}", span.status);
    assert_eq!(string(attr(&span.attributes, "error.type")), Some("panic"));
    let event = exception(&span);
    assert_eq!(string(attr(&event.attributes, "exception.message")), Some("fire drill: a panic in a request handler"));
    let stack = string(attr(&event.attributes, "exception.stacktrace")).unwrap();
    assert!(stack.contains("draw64::http::observe"), "the stack trace names the handler's frames: {stack}");

    let logs = logs_of_trace_before_marker(&receiver, &server, TRACE_ID).await;
    assert_eq!(logs.len(), 1, "exactly one log record: {logs:?}");
    assert_eq!(body(&logs[0]), "panic");
    assert_eq!(logs[0].severity_text, "ERROR");
    assert_eq!(hex(&logs[0].span_id), hex(&span.span_id), "the log points at the panicking span");

    let text = scrape(&server).await;
    assert!(text.contains(r#"draw64_errors_total{draw64_error_source="panic",error_type="panic""#), "{text}");
    assert!(text.lines().any(|l| l.starts_with("draw64_panics_total") && l.ends_with(" 1")), "one panic counted");
    assert!(
        text.lines().any(|l| l.starts_with("http_server_request_duration_seconds_count")
            && l.contains(r#"error_type="panic""#)
            && l.contains(r#"http_response_status_code="500""#)),
        "the HTTP metrics carry the panic's error.type"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_writer_fails_its_batch_only_and_the_next_change_is_committed() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = server(&receiver, &dir);
    let http = reqwest::Client::new();
    assert_eq!(http.post(server.url("/images/drill")).send().await.unwrap().status(), 201);
    arm(&server, "writer").await;
    let put = |x: i64| {
        http.put(server.url("/images/drill"))
            .header("content-type", "application/json")
            .body(draw(&[[x, 0, 200, 0, 0]]))
            .send()
    };
    let res = put(1).await.unwrap();
    assert_eq!(res.status(), 503, "the panicking batch's caller is told");
    assert_eq!(put(2).await.unwrap().status(), 200, "the writer goes on");
    let data: serde_json::Value =
        http.get(server.url("/images/drill/data")).send().await.unwrap().json().await.unwrap();
    assert_eq!(data[1][0], serde_json::json!([255, 255, 255]), "the failed change is not there");
    assert_eq!(data[2][0], serde_json::json!([200, 0, 0]), "the next change is");
    assert_eq!(http.get(server.url("/readyz")).send().await.unwrap().status(), 200, "nothing was half-published");
    let log = until(&receiver, "the writer's panic log", |got| {
        got.logs
            .iter()
            .find(|l| body(l) == "panic" && string(attr(&l.attributes, "thread.name")) == Some("draw64-writer"))
            .cloned()
    })
    .await;
    let message = string(attr(&log.attributes, "exception.message"));
    assert_eq!(message, Some("fire drill: a panic in the writer"));
    assert!(string(attr(&log.attributes, "exception.stacktrace")).unwrap().contains("draw64::service::writer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_store_is_one_exception_on_the_commit_one_log_and_a_503() {
    if crate::support::pg::suite_on_postgres() {
        eprintln!("skipped on PostgreSQL: the outage there is cluster::failover's; this one holds SQLite's write lock");
        return;
    }
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = server(&receiver, &dir);
    let http = reqwest::Client::new();
    assert_eq!(http.post(server.url("/images/locked")).send().await.unwrap().status(), 201);
    // Another process's write lock on the database file: the writer's commit waits out its
    // busy timeout (5 s) and fails, as on a disk that stopped answering.
    let path = dir.path().join("draw64.db");
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let res = put_in_trace(&http, &server, "locked", trace).await;
    assert_eq!(res.status(), 503);
    let detail: serde_json::Value = res.json().await.unwrap();
    assert_eq!(detail["detail"], "Storage unavailable; try again shortly.", "the cause stays inside");
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);

    let (request, commit) = until(&receiver, "the PUT's and the commit's spans", |got| {
        let request = got.spans.iter().find(|s| hex(&s.trace_id) == trace && s.name == "PUT /images/{image_id}")?;
        let commit = got.spans.iter().find(|s| hex(&s.trace_id) == trace && s.name.ends_with(" images"))?;
        Some((request.clone(), commit.clone()))
    })
    .await;
    assert!(is_error(&commit), "the commit's span: {:?}", commit.status);
    assert_eq!(string(attr(&commit.attributes, "error.type")), Some("commit_failed"));
    let event = exception(&commit);
    assert_eq!(string(attr(&event.attributes, "exception.type")), Some("draw64::store::StoreError"));
    let message = string(attr(&event.attributes, "exception.message")).unwrap();
    assert!(message.contains("locked"), "the cause, with its chain: {message}");
    assert!(is_error(&request));
    assert_eq!(string(attr(&request.attributes, "error.type")), Some("503"));
    exception(&request);

    let logs = logs_of_trace_before_marker(&receiver, &server, trace).await;
    assert_eq!(logs.len(), 1, "exactly one log record, the commit's: {logs:?}");
    assert_eq!(body(&logs[0]), "commit failed; batch rolled back");
    assert_eq!(logs[0].severity_text, "ERROR");
    assert_eq!(string(attr(&logs[0].attributes, "error.type")), Some("commit_failed"));
    let text = scrape(&server).await;
    assert!(text.contains(r#"draw64_errors_total{draw64_error_source="writer",error_type="commit_failed""#), "{text}");
    // The store answers again, and so does the service.
    let res = http
        .put(server.url("/images/locked"))
        .header("content-type", "application/json")
        .body(draw(&[[1, 1, 9, 9, 9]]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_frame_is_one_exception_and_one_information_log_and_the_socket_stays() {
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = server(&receiver, &dir);
    let mut ws = ws_connect(&format!("ws://{}/ws/images/frames", server.addr)).await;
    ws_send(&mut ws, r#"{"command":{"command_type":"paint"}}"#).await;
    let refused = next_event(&mut ws).await;
    assert!(refused["event"]["detail"].as_str().unwrap().contains("invalid command"), "{refused}");
    ws_send(&mut ws, &draw(&[[1, 1, 1, 1, 1]])).await;
    assert_eq!(next_event(&mut ws).await["event"]["event_type"], "image_updated", "the socket goes on");

    let span = until(&receiver, "the refused command's span", |got| {
        got.spans
            .iter()
            .find(|s| s.name == "ws command" && string(attr(&s.attributes, "error.type")) == Some("invalid_command"))
            .cloned()
    })
    .await;
    assert!(is_error(&span));
    let event = exception(&span);
    assert_eq!(string(attr(&event.attributes, "exception.type")), Some("draw64::domain::command::CommandError"));
    let trace = hex(&span.trace_id);
    let logs = logs_of_trace_before_marker(&receiver, &server, &trace).await;
    assert_eq!(logs.len(), 1, "exactly one log record: {logs:?}");
    assert_eq!(body(&logs[0]), "invalid command refused");
    assert_eq!(logs[0].severity_text, "INFO", "the client's mistake is not the server's error");
}
