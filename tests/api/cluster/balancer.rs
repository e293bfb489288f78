//! The harness of the failover tests: HAProxy in front of real instances, a steady mixed load
//! through it that tallies every acknowledged change, and the checks that nothing acknowledged
//! was lost.

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::*;
use crate::support::{pg, *};

pub struct Haproxy {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Haproxy {
    /// `deploy/haproxy.cfg` as shipped, pointed at two instances.
    pub fn start(one: SocketAddr, two: SocketAddr) -> Haproxy {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
        let child = Command::new("haproxy")
            .args(["-db", "-f", &format!("{deploy}/haproxy.cfg")])
            .env("DRAW64_LB_BIND", addr.to_string())
            .env("DRAW64_LB_STATS", format!("127.0.0.1:{}", free_port()))
            .env("DRAW64_LB_API", format!("127.0.0.1:{}", free_port()))
            .env("DRAW64_1", one.to_string())
            .env("DRAW64_2", two.to_string())
            .env("DRAW64_HAPROXY_ERRORS", format!("{deploy}/haproxy"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy starts");
        Haproxy { child, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits until both instances answer through the balancer.
    pub async fn wait_both(&self, http: &reqwest::Client, ids: [&str; 2]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = std::collections::HashSet::new();
        while seen.len() < 2 {
            assert!(Instant::now() < deadline, "HAProxy did not reach both instances: saw {seen:?}");
            if let Ok(res) = http.get(self.url("/readyz")).send().await
                && res.status() == 200
                && let Some(by) = res.headers().get("x-served-by").and_then(|v| v.to_str().ok())
                && ids.contains(&by)
            {
                seen.insert(by.to_owned());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One instance as a real process on a fixed port (so it can come back on the same address).
pub fn instance(db: &str, addr: SocketAddr, grace: &str) -> Server {
    Server::start(db, &addr.to_string(), &["--drain-grace", grace, "--shutdown-timeout", "5s"])
}

pub async fn served_by(http: &reqwest::Client, server: &Server) -> String {
    let res = http.get(server.url("/healthz")).send().await.unwrap();
    res.headers()["x-served-by"].to_str().unwrap().to_owned()
}

/// What the clients saw: every acknowledged change (image, cell, colour) and every failure.
#[derive(Default)]
pub struct Tally {
    pub acked: Mutex<Vec<(String, usize, [u8; 3])>>,
    pub http_failed: Mutex<Vec<String>>,
    pub ws_reconnects: AtomicU64,
    pub http_sent: AtomicU64,
    /// Every HTTP answer of the writers: when, which instance (`X-Served-By`), whether 200.
    pub answers: Mutex<Vec<(Instant, String, bool)>>,
}

/// Steady load through the balancer: HTTP writers and WebSocket writers, each on its own image
/// and each change on its own cell (so every acknowledged change can be checked afterwards),
/// and WebSocket readers that keep a replica of an image.
pub struct Load {
    pub stop: Arc<AtomicBool>,
    pub tally: Arc<Tally>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    pub replicas: Vec<tokio::task::JoinHandle<(String, Canvas)>>,
}

pub const HTTP_WRITERS: usize = 2;
pub const WS_WRITERS: usize = 2;

impl Load {
    /// Through the balancer at `lb`.
    pub async fn start(lb: SocketAddr, http: &reqwest::Client) -> Load {
        let url = |path: &str| format!("http://{lb}{path}");
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let mut tasks = Vec::new();
        let mut replicas = Vec::new();
        for w in 0..HTTP_WRITERS + WS_WRITERS {
            let status = http.post(url(&format!("/images/load{w}"))).send().await.unwrap().status();
            assert_eq!(status, 201);
        }
        for w in 0..HTTP_WRITERS {
            let (stop, tally, http) = (stop.clone(), tally.clone(), http.clone());
            let url = url(&format!("/images/load{w}"));
            tasks.push(tokio::spawn(async move {
                for seq in 0..4096 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let c = color(w, seq);
                    let body = draw(&[[(seq % 64) as i64, (seq / 64) as i64, c[0] as i64, c[1] as i64, c[2] as i64]]);
                    tally.http_sent.fetch_add(1, Ordering::Relaxed);
                    match http.put(&url).body(body).timeout(Duration::from_secs(10)).send().await {
                        Ok(res) => {
                            let by = res.headers().get("x-served-by").and_then(|v| v.to_str().ok());
                            let by = by.unwrap_or("the balancer").to_owned();
                            let ok = res.status() == 200;
                            tally.answers.lock().unwrap().push((Instant::now(), by.clone(), ok));
                            if ok {
                                tally.acked.lock().unwrap().push((format!("load{w}"), seq, c));
                            } else {
                                let status = res.status();
                                let body = res.text().await.unwrap_or_default();
                                tally.http_failed.lock().unwrap().push(format!("{status} from {by}: {body}"));
                            }
                        }
                        Err(e) => tally.http_failed.lock().unwrap().push(e.to_string()),
                    }
                    tokio::time::sleep(Duration::from_millis(4)).await;
                }
            }));
        }
        for w in HTTP_WRITERS..HTTP_WRITERS + WS_WRITERS {
            let (stop, tally) = (stop.clone(), tally.clone());
            let url = format!("ws://{lb}/ws/images/load{w}");
            tasks.push(tokio::spawn(ws_writer(url, w, stop, tally)));
        }
        for w in 0..HTTP_WRITERS + WS_WRITERS {
            let (stop, tally, http) = (stop.clone(), tally.clone(), http.clone());
            let image = format!("load{w}");
            let (ws, data) = (format!("ws://{lb}/ws/images/{image}"), url(&format!("/images/{image}/data")));
            replicas.push(tokio::spawn(async move { (image, replica(ws, data, http, stop, tally).await) }));
        }
        Load { stop, tally, tasks, replicas }
    }

    pub async fn finish(self) -> (Arc<Tally>, Vec<(String, Canvas)>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(30), t).await.expect("writers stop").unwrap();
        }
        let mut replicas = Vec::new();
        for r in self.replicas {
            replicas.push(tokio::time::timeout(Duration::from_secs(30), r).await.expect("readers stop").unwrap());
        }
        (self.tally, replicas)
    }
}

/// Sends one change at a time and counts it acknowledged when its echo arrives; reconnects
/// through the balancer whenever the socket ends.
pub async fn ws_writer(url: String, w: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut seq = 0usize;
    'connect: while !stop.load(Ordering::Relaxed) && seq < 4096 {
        let Ok(Ok((mut ws, _))) =
            tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(&url)).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) && seq < 4096 {
            let c = color(w, seq);
            let cell = [(seq % 64) as i64, (seq / 64) as i64];
            let body = draw(&[[cell[0], cell[1], c[0] as i64, c[1] as i64, c[2] as i64]]);
            // A change whose echo never came may or may not be stored: it moves on to a new cell.
            seq += 1;
            if ws.send(Message::text(body)).await.is_err() {
                tally.ws_reconnects.fetch_add(1, Ordering::Relaxed);
                continue 'connect;
            }
            let want = serde_json::json!([cell[0], cell[1], c[0], c[1], c[2]]);
            loop {
                match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let v: Value = serde_json::from_str(&t).unwrap();
                        if v["event"]["command"]["values"][0] == want {
                            tally.acked.lock().unwrap().push((format!("load{w}"), seq - 1, c));
                            break;
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => {
                        tally.ws_reconnects.fetch_add(1, Ordering::Relaxed);
                        continue 'connect;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
    }
}

/// A reader like the web page: connect, load the image, apply every event; on a close,
/// reconnect and reload. Answers its replica when told to stop.
pub async fn replica(
    ws_url: String,
    data_url: String,
    http: reqwest::Client,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Canvas {
    let mut canvas: Canvas;
    loop {
        if stop.load(Ordering::Relaxed) {
            // Let the last changes arrive, then answer.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let Ok(Ok((mut ws, _))) =
            tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(&ws_url)).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        // Subscribed first, then loaded: an event already in the data is applied twice,
        // which is harmless for draws; none can fall between the two.
        let Ok(res) = http.get(&data_url).send().await else { continue };
        if res.status() != 200 {
            continue;
        }
        canvas = res.json().await.unwrap();
        let mut quiet_since: Option<Instant> = None;
        loop {
            let wait = if stop.load(Ordering::Relaxed) { Duration::from_millis(1500) } else { Duration::from_secs(30) };
            match tokio::time::timeout(wait, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    canvas = apply(canvas, &v);
                    quiet_since = None;
                }
                Ok(Some(Ok(_))) => {}
                Err(_) if stop.load(Ordering::Relaxed) => return canvas,
                _ => {
                    tally.ws_reconnects.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            if stop.load(Ordering::Relaxed)
                && quiet_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(3)
            {
                return canvas;
            }
        }
    }
}

pub fn apply(mut canvas: Canvas, event: &Value) -> Canvas {
    if let Some(values) = event["event"]["command"]["values"].as_array() {
        for p in values {
            let n: Vec<i64> = p.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            canvas[n[0] as usize][n[1] as usize] = [n[2] as u8, n[3] as u8, n[4] as u8];
        }
    }
    canvas
}

/// Every acknowledged change is in the image `data_of` answers; returns how many were checked.
pub async fn check_acked(tally: &Tally, http: &reqwest::Client, data_of: impl Fn(&str) -> String) -> usize {
    let acked = tally.acked.lock().unwrap().clone();
    let mut images: HashMap<String, Canvas> = HashMap::new();
    for (image, _, _) in &acked {
        if !images.contains_key(image) {
            let data = http.get(data_of(image)).send().await.unwrap().json().await.unwrap();
            images.insert(image.clone(), data);
        }
    }
    for (image, seq, c) in &acked {
        assert_eq!(images[image][seq % 64][seq / 64], *c, "acknowledged change {seq} on {image} is missing");
    }
    acked.len()
}

/// Every acknowledged change is in what `survivor` (a base URL) serves, and every reader's
/// replica equals the stored image; answers how many acknowledged changes were checked.
pub async fn check_survivor(
    tally: &Tally,
    replicas: &[(String, Canvas)],
    http: &reqwest::Client,
    survivor: &str,
) -> usize {
    let found = check_acked(tally, http, |image| format!("{survivor}/images/{image}/data")).await;
    for (image, canvas) in replicas {
        let stored: Canvas =
            http.get(format!("{survivor}/images/{image}/data")).send().await.unwrap().json().await.unwrap();
        assert!(canvas == &stored, "a reader's replica of {image} differs from the stored image");
    }
    found
}

pub fn require_cluster_tools() -> Option<&'static pg::Postgres> {
    if !require("haproxy", "the HAProxy cluster tests") {
        return None;
    }
    pg::shared()
}
