//! Several instances on one PostgreSQL: cross-instance order, cluster-wide limits and presence,
//! listener loss (`instances`); real processes for traces and presence (`processes`); and,
//! behind a real HAProxy, kill -9 failover, a rolling release and a database outage
//! (`failover`, on the `balancer` harness); canary releases on scripts/cluster (`release`). Each
//! prints the figures it measured (`--nocapture`).

mod balancer;
mod failover;
mod instances;
mod processes;
mod release;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{pg, *};

type Canvas = Vec<Vec<[u8; 3]>>;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Two in-process instances on one fresh database.
pub async fn two_apps(pg: &pg::Postgres, flags: &[&str]) -> (TestApp, TestApp) {
    let db = pg.create_database();
    let a = spawn_app_on(&db, flags, tempfile::tempdir().unwrap()).await;
    let b = spawn_app_on(&db, flags, tempfile::tempdir().unwrap()).await;
    (a, b)
}

/// The image events a socket receives until `n` have arrived (pings skipped).
pub async fn collect(ws: &mut Ws, n: usize, within: Duration) -> Vec<(Value, Instant)> {
    let deadline = Instant::now() + within;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => got.push((serde_json::from_str(&t).unwrap(), Instant::now())),
            Ok(Some(Ok(_))) => {}
            other => panic!("after {} of {n} events: {other:?}", got.len()),
        }
    }
    got
}

/// Unique colour of change `seq` by `writer`: how a receipt is matched to its send.
pub fn color(writer: usize, seq: usize) -> [u8; 3] {
    [writer as u8, (seq >> 8) as u8, seq as u8]
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}
