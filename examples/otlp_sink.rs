//! An OTLP receiver for benchmarks: gRPC and HTTP/protobuf, counting what arrives. It is the
//! test suite's receiver (tests/api/otlp.rs), run standalone.
//!
//! Run with `cargo run --release --example otlp_sink -- 127.0.0.1:14000`; it prints its gRPC and
//! HTTP addresses, and `GET /stats` on the given address answers
//! `{"spans": n, "spans_by_name": {...}, "logs": n, "metric_requests": n}`.

#[allow(dead_code)]
#[path = "../tests/api/otlp.rs"]
mod otlp;

use std::collections::BTreeMap;

use axum::{Json, Router, extract::State, routing::get};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let stats_addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:14000".into());
    let receiver = otlp::Receiver::start().await;
    println!("grpc http://{}", receiver.grpc);
    println!("http http://{}", receiver.http);
    let app = Router::new().route("/stats", get(stats)).with_state(receiver.sink.clone());
    let listener = tokio::net::TcpListener::bind(&stats_addr).await?;
    println!("stats http://{}/stats", listener.local_addr()?);
    axum::serve(listener, app).await
}

async fn stats(State(sink): State<otlp::Sink>) -> Json<serde_json::Value> {
    let got = sink.0.lock().unwrap();
    let mut by_name: BTreeMap<&str, u64> = BTreeMap::new();
    for span in &got.spans {
        *by_name.entry(span.name.as_str()).or_default() += 1;
    }
    Json(serde_json::json!({
        "spans": got.spans.len(),
        "spans_by_name": by_name,
        "logs": got.logs.len(),
        "metric_requests": got.metric_requests,
    }))
}
