//! An OTLP receiver for benchmarks: gRPC and HTTP/protobuf, counting what arrives. It is the
//! test suite's receiver (tests/api/support/otlp.rs), run standalone.
//!
//! Run with `cargo run --release --example otlp_sink -- 127.0.0.1:14000`; it prints its gRPC and
//! HTTP addresses, and `GET /stats` on the given address answers
//! `{"spans": n, "spans_by_name": {...}, "logs": n, "metric_requests": n, "profiles": n}`.

#[allow(dead_code)]
#[path = "../tests/api/support/otlp.rs"]
mod otlp;

use std::collections::BTreeMap;

use axum::{Json, Router, extract::State, routing::get};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let stats_addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:14000".into());
    let receiver = otlp::Receiver::start().await;
    receiver.sink.0.lock().unwrap().count_only = true;
    println!("grpc http://{}", receiver.grpc);
    println!("http http://{}", receiver.http);
    let app = Router::new().route("/stats", get(stats)).with_state(receiver.sink.clone());
    let listener = tokio::net::TcpListener::bind(&stats_addr).await?;
    println!("stats http://{}/stats", listener.local_addr()?);
    axum::serve(listener, app).await
}

async fn stats(State(sink): State<otlp::Sink>) -> Json<serde_json::Value> {
    let got = sink.0.lock().unwrap();
    let by_name: &BTreeMap<String, u64> = &got.spans_by_name;
    Json(serde_json::json!({
        "spans": by_name.values().sum::<u64>(),
        "spans_by_name": by_name,
        "logs": got.log_count,
        "metric_requests": got.metric_requests,
        "profiles": got.profiles.len(),
    }))
}
