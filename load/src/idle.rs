//! `idle`: C WebSockets opened and held; then one change proves every one is still served.
//! With `--pid`, the server's resident memory growth divided by the sockets.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt, stream};
use tokio_tungstenite::tungstenite::Message;

use super::{
    Common,
    client::{connect_ws, draw_body, ensure_image, pixel, ws_url},
    report::{ProcSample, Report},
};

/// Handshakes in flight at once while opening.
const OPENING: usize = 64;

pub async fn run(common: &Common, connections: usize) -> Result<Report, String> {
    ensure_image(&common.url, &common.image).await?;
    let url = ws_url(&common.url, &common.image);
    let mut report = Report { scenario: "idle", url: common.url.clone(), ..Default::default() };
    // Let the server settle before the first reading.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = common.pid.and_then(ProcSample::take);
    let started = std::time::Instant::now();
    let results: Vec<Result<super::client::Ws, String>> =
        stream::iter(0..connections).map(|_| connect_ws(&url)).buffer_unordered(OPENING).collect().await;
    let mut sockets = Vec::with_capacity(connections);
    for result in results {
        match result {
            Ok(ws) => sockets.push(ws),
            Err(e) => report.error(e),
        }
    }
    let opened = started.elapsed();
    // Held idle for the rest of --duration (at least 2 s), then measured.
    tokio::time::sleep(common.duration.saturating_sub(opened).max(Duration::from_secs(2))).await;
    let after = common.pid.and_then(ProcSample::take);
    // Every socket still served: one change, sent through the first socket, reaches each.
    if let Some(first) = sockets.first_mut() {
        first.send(Message::text(draw_body(pixel(3)))).await.map_err(|e| format!("the proving change: {e}"))?;
    }
    let served: Vec<bool> = stream::iter(sockets.iter_mut())
        .map(|ws| async move {
            loop {
                match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
                    Ok(Some(Ok(Message::Text(_)))) => return true,
                    Ok(Some(Ok(_))) => continue,
                    _ => return false,
                }
            }
        })
        .buffer_unordered(1024)
        .collect()
        .await;
    let served = served.iter().filter(|s| **s).count();
    if served < sockets.len() {
        *report.errors.entry("not served".into()).or_default() += (sockets.len() - served) as u64;
    }
    if let (Some(b), Some(a)) = (&before, &after) {
        let usage = a.since(b);
        report.bytes_per_socket =
            Some(usage.rss_after_bytes.saturating_sub(usage.rss_before_bytes) as f64 / sockets.len().max(1) as f64);
        report.server = Some(usage);
    }
    report.duration_s = opened.as_secs_f64();
    report.operations = served as u64;
    report.per_second = sockets.len() as f64 / opened.as_secs_f64();
    report.params.insert("connections", connections as u64);
    Ok(report)
}
