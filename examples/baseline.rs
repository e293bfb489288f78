//! The bare baseline for benchmarks: an axum server that parses a PUT's JSON command and
//! answers `null`, with no storage, no fan-out and no validation beyond the parse. It is the
//! practical ceiling a Draw64 PUT is measured against.
//!
//! Run with `cargo run --release --example baseline -- 127.0.0.1:8001`.

use axum::{Json, Router, body::Bytes, http::StatusCode, routing::put};

async fn put_image(body: Bytes) -> Result<Json<()>, StatusCode> {
    serde_json::from_slice::<serde_json::Value>(&body).map_err(|_| StatusCode::UNPROCESSABLE_ENTITY)?;
    Ok(Json(()))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8001".into());
    let app = Router::new().route("/images/{image_id}", put(put_image));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("baseline listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
