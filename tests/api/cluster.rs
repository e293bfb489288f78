//! Several instances on one PostgreSQL: cross-instance order, cluster-wide limits and presence,
//! listener loss; and, with real processes behind a real HAProxy, kill -9 failover, a rolling
//! release and a database outage. Each prints the figures it measured (`--nocapture`).

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

use crate::{concurrency::replay, helpers::*, pg};

type Canvas = Vec<Vec<[u8; 3]>>;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Two in-process instances on one fresh database.
async fn two_apps(pg: &pg::Postgres, flags: &[&str]) -> (TestApp, TestApp) {
    let db = pg.create_database();
    let a = spawn_app_on(&db, flags, tempfile::tempdir().unwrap()).await;
    let b = spawn_app_on(&db, flags, tempfile::tempdir().unwrap()).await;
    (a, b)
}

/// The image events a socket receives until `n` have arrived (pings skipped).
async fn collect(ws: &mut Ws, n: usize, within: Duration) -> Vec<(Value, Instant)> {
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
fn color(writer: usize, seq: usize) -> [u8; 3] {
    [writer as u8, (seq >> 8) as u8, seq as u8]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_on_two_instances_give_every_subscriber_one_order() {
    let Some(pg) = pg::shared() else { return };
    let (a, b) = two_apps(pg, &[]).await;
    assert_eq!(a.post("/images/shared").await.0, 201);
    let mut on_a = ws_connect(&a.ws_url("shared")).await;
    let mut on_b = ws_connect(&b.ws_url("shared")).await;
    // A change made on A reaches a socket on B.
    assert_eq!(a.put("shared", &draw(&[[0, 0, 1, 2, 3]])).await.0, 200);
    assert_eq!(next_event(&mut on_b).await["event"]["command"]["values"][0], serde_json::json!([0, 0, 1, 2, 3]));
    assert_eq!(next_event(&mut on_a).await["event"]["command"]["values"][0], serde_json::json!([0, 0, 1, 2, 3]));

    // 4 writers, 2 on each instance, 250 changes each; cells collide, so order matters.
    const WRITERS: usize = 4;
    const EACH: usize = 250;
    let sent: Arc<Mutex<HashMap<[u8; 3], Instant>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (http, url) = if w % 2 == 0 {
            (a.http.clone(), a.url("/images/shared"))
        } else {
            (b.http.clone(), b.url("/images/shared"))
        };
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 0..EACH {
                let c = color(w, seq);
                let body = draw(&[[(seq % 8) as i64, (w % 2) as i64, c[0] as i64, c[1] as i64, c[2] as i64]]);
                sent.lock().unwrap().insert(c, Instant::now());
                let res = http.put(&url).body(body).send().await.unwrap();
                assert_eq!(res.status(), 200);
            }
        }));
    }
    let (got_a, got_b) = tokio::join!(
        collect(&mut on_a, WRITERS * EACH, Duration::from_secs(60)),
        collect(&mut on_b, WRITERS * EACH, Duration::from_secs(60))
    );
    for t in tasks {
        t.await.unwrap();
    }
    let order_a: Vec<&Value> = got_a.iter().map(|(v, _)| v).collect();
    let order_b: Vec<&Value> = got_b.iter().map(|(v, _)| v).collect();
    assert!(order_a == order_b, "the two instances' subscribers saw different orders");
    let distinct: std::collections::HashSet<String> =
        order_a.iter().map(|v| v["event"]["command"]["values"][0].to_string()).collect();
    assert_eq!(distinct.len(), WRITERS * EACH, "no change missing, none twice");

    // The stored image (read through either instance, and from a fresh instance) is the replay.
    let mut all = vec![serde_json::json!({"event":{"command":{"command_type":"draw","values":[[0,0,1,2,3]]}}})];
    all.extend(got_a.iter().map(|(v, _)| v.clone()));
    let expected = replay(&all);
    assert_eq!(a.data("shared").await, expected);
    assert_eq!(b.data("shared").await, expected);

    // Cross-instance latency: send on one instance, receipt on the other.
    let sent = sent.lock().unwrap().clone();
    let mut latencies: Vec<Duration> = got_b
        .iter()
        .filter_map(|(v, at)| {
            let p = &v["event"]["command"]["values"][0];
            let c = [p[2].as_u64()? as u8, p[3].as_u64()? as u8, p[4].as_u64()? as u8];
            // Writers 0 and 2 wrote through A: their receipts on B crossed instances.
            c[0].is_multiple_of(2).then(|| at.saturating_duration_since(sent[&c]))
        })
        .collect();
    latencies.sort();
    eprintln!(
        "FIGURES cross-instance fan-out (PUT on A -> WebSocket on B, {} changes): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_limit_holds_across_instances() {
    let Some(pg) = pg::shared() else { return };
    let (a, b) = two_apps(pg, &["--max-images", "5"]).await;
    for n in 0..4 {
        assert_eq!(a.post(&format!("/images/pre{n}")).await.0, 201);
    }
    let mut tasks = Vec::new();
    for n in 0..20 {
        let url = if n % 2 == 0 { a.url("/images") } else { b.url("/images") };
        let http = a.http.clone();
        tasks.push(tokio::spawn(async move { http.post(url).send().await.unwrap().status().as_u16() }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 201 || *s == 409), "{statuses:?}");
    // Both instances list the same five images.
    let deadline = Instant::now() + WAIT;
    loop {
        let (la, lb) = (a.get_json("/images").await.1, b.get_json("/images").await.1);
        if la == lb && la.as_array().unwrap().len() == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "lists differ: {la} vs {lb}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_and_the_user_count_are_cluster_wide() {
    let Some(pg) = pg::shared() else { return };
    let (a, b) = two_apps(pg, &[]).await;
    let mut sse_b = Sse::open(&b).await;
    // A user connects on A to a new image: B's listeners hear of the image and of the user.
    let ws = ws_connect(&a.ws_url("fresh")).await;
    let mut seen_created = false;
    let mut count = None;
    let deadline = Instant::now() + WAIT;
    while !(seen_created && count == Some(1)) {
        assert!(Instant::now() < deadline, "B did not announce A's image and user");
        let ev = sse_b.event().await;
        match ev.name.as_str() {
            "image_created" => seen_created |= ev.data["event"]["image_id"] == "fresh",
            "user_count_updated" => count = ev.data["event"]["user_count"].as_u64(),
            _ => {}
        }
    }
    assert_eq!(b.get_json("/statistics").await.1["user_count"], 1);
    assert_eq!(b.get_json("/images").await.1, serde_json::json!([{"image_id": "fresh"}]));
    drop(ws);
    loop {
        assert!(Instant::now() < deadline, "B did not see the user leave");
        let ev = sse_b.event().await;
        if ev.name == "user_count_updated" && ev.data["event"]["user_count"] == 0 {
            break;
        }
    }
    // Deleting on B removes it on A, and A's subscribers are told.
    let mut on_a = ws_connect(&a.ws_url("fresh")).await;
    assert_eq!(b.http.delete(b.url("/images/fresh")).send().await.unwrap().status(), 200);
    let (code, events) = until_close(&mut on_a, 5).await;
    assert_eq!(code, 4404);
    assert_eq!(events.last().unwrap()["event"]["event_type"], "image_deleted");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_listener_reconnects_and_catches_up_with_no_gap() {
    let Some(pg) = pg::shared() else { return };
    let db = pg.create_database();
    let a = spawn_app_on(&db, &[], tempfile::tempdir().unwrap()).await;
    let b = spawn_app_on(&db, &[], tempfile::tempdir().unwrap()).await;
    assert_eq!(a.post("/images/img").await.0, 201);
    let mut on_b = ws_connect(&b.ws_url("img")).await;
    let dbname = db.rsplit('/').next().unwrap().to_owned();
    let writer = {
        let (http, url) = (a.http.clone(), a.url("/images/img"));
        tokio::spawn(async move {
            for seq in 0..300usize {
                let c = color(1, seq);
                let body = draw(&[[(seq % 64) as i64, (seq / 64) as i64, c[0] as i64, c[1] as i64, c[2] as i64]]);
                assert_eq!(http.put(&url).body(body).send().await.unwrap().status(), 200);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Cut every instance's LISTEN connection (twice, to hit a reconnect in progress too).
    let kill = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'draw64-listener' AND datname = '{dbname}'"
    );
    assert_eq!(pg.psql("postgres", &kill), "2");
    tokio::time::sleep(Duration::from_millis(150)).await;
    pg.psql("postgres", &kill);
    let got = collect(&mut on_b, 300, Duration::from_secs(30)).await;
    writer.await.unwrap();
    for (n, (ev, _)) in got.iter().enumerate() {
        let c = color(1, n);
        assert_eq!(
            ev["event"]["command"]["values"][0],
            serde_json::json!([n % 64, n / 64, c[0], c[1], c[2]]),
            "change {n} out of order or missing"
        );
    }
    // The listener is back: B is ready again.
    let deadline = Instant::now() + WAIT;
    while b.get_json("/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "B did not become ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.stop().await;
    b.stop().await;
}

// ---- Real processes behind HAProxy ------------------------------------------------------------

struct Haproxy {
    child: Child,
    addr: SocketAddr,
}

impl Haproxy {
    /// `deploy/haproxy.cfg` as shipped, pointed at two instances.
    fn start(one: SocketAddr, two: SocketAddr) -> Haproxy {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
        let child = Command::new("haproxy")
            .args(["-db", "-f", &format!("{deploy}/haproxy.cfg")])
            .env("DRAW64_LB_BIND", addr.to_string())
            .env("DRAW64_LB_STATS", format!("127.0.0.1:{}", free_port()))
            .env("DRAW64_1", one.to_string())
            .env("DRAW64_2", two.to_string())
            .env("DRAW64_HAPROXY_ERRORS", format!("{deploy}/haproxy"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy starts");
        Haproxy { child, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits until both instances answer through the balancer.
    async fn wait_both(&self, http: &reqwest::Client, ids: [&str; 2]) {
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
fn instance(db: &str, addr: SocketAddr, grace: &str) -> Server {
    Server::start(db, &addr.to_string(), &["--drain-grace", grace, "--shutdown-timeout", "5s"])
}

async fn served_by(http: &reqwest::Client, server: &Server) -> String {
    let res = http.get(server.url("/healthz")).send().await.unwrap();
    res.headers()["x-served-by"].to_str().unwrap().to_owned()
}

/// What the clients saw: every acknowledged change (image, cell, colour) and every failure.
#[derive(Default)]
struct Tally {
    acked: Mutex<Vec<(String, usize, [u8; 3])>>,
    http_failed: Mutex<Vec<String>>,
    ws_reconnects: AtomicU64,
    http_sent: AtomicU64,
}

/// Steady load through the balancer: HTTP writers and WebSocket writers, each on its own image
/// and each change on its own cell (so every acknowledged change can be checked afterwards),
/// and WebSocket readers that keep a replica of an image.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    replicas: Vec<tokio::task::JoinHandle<(String, Canvas)>>,
}

const HTTP_WRITERS: usize = 2;
const WS_WRITERS: usize = 2;

impl Load {
    async fn start(lb: &Haproxy, http: &reqwest::Client) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let mut tasks = Vec::new();
        let mut replicas = Vec::new();
        for w in 0..HTTP_WRITERS + WS_WRITERS {
            let status = http.post(lb.url(&format!("/images/load{w}"))).send().await.unwrap().status();
            assert_eq!(status, 201);
        }
        for w in 0..HTTP_WRITERS {
            let (stop, tally, http) = (stop.clone(), tally.clone(), http.clone());
            let url = lb.url(&format!("/images/load{w}"));
            tasks.push(tokio::spawn(async move {
                for seq in 0..4096 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let c = color(w, seq);
                    let body = draw(&[[(seq % 64) as i64, (seq / 64) as i64, c[0] as i64, c[1] as i64, c[2] as i64]]);
                    tally.http_sent.fetch_add(1, Ordering::Relaxed);
                    match http.put(&url).body(body).timeout(Duration::from_secs(10)).send().await {
                        Ok(res) if res.status() == 200 => {
                            tally.acked.lock().unwrap().push((format!("load{w}"), seq, c))
                        }
                        Ok(res) => {
                            let status = res.status();
                            let body = res.text().await.unwrap_or_default();
                            tally.http_failed.lock().unwrap().push(format!("{status} {body}"));
                        }
                        Err(e) => tally.http_failed.lock().unwrap().push(e.to_string()),
                    }
                    tokio::time::sleep(Duration::from_millis(4)).await;
                }
            }));
        }
        for w in HTTP_WRITERS..HTTP_WRITERS + WS_WRITERS {
            let (stop, tally) = (stop.clone(), tally.clone());
            let url = format!("ws://{}/ws/images/load{w}", lb.addr);
            tasks.push(tokio::spawn(ws_writer(url, w, stop, tally)));
        }
        for w in 0..HTTP_WRITERS + WS_WRITERS {
            let (stop, tally, http) = (stop.clone(), tally.clone(), http.clone());
            let image = format!("load{w}");
            let (ws, data) = (format!("ws://{}/ws/images/{image}", lb.addr), lb.url(&format!("/images/{image}/data")));
            replicas.push(tokio::spawn(async move { (image, replica(ws, data, http, stop, tally).await) }));
        }
        Load { stop, tally, tasks, replicas }
    }

    async fn finish(self) -> (Arc<Tally>, Vec<(String, Canvas)>) {
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
async fn ws_writer(url: String, w: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
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
async fn replica(
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

fn apply(mut canvas: Canvas, event: &Value) -> Canvas {
    if let Some(values) = event["event"]["command"]["values"].as_array() {
        for p in values {
            let n: Vec<i64> = p.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            canvas[n[0] as usize][n[1] as usize] = [n[2] as u8, n[3] as u8, n[4] as u8];
        }
    }
    canvas
}

/// Every acknowledged change is in the image `data_of` answers; returns how many were checked.
async fn check_acked(tally: &Tally, http: &reqwest::Client, data_of: impl Fn(&str) -> String) -> usize {
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

/// Every acknowledged change is in what `survivor` serves, and every reader's replica equals
/// the stored image; answers how many acknowledged changes were checked.
async fn check_survivor(
    tally: &Tally,
    replicas: &[(String, Canvas)],
    http: &reqwest::Client,
    survivor: &Server,
) -> usize {
    let found = check_acked(tally, http, |image| survivor.url(&format!("/images/{image}/data"))).await;
    for (image, canvas) in replicas {
        let stored: Canvas =
            http.get(survivor.url(&format!("/images/{image}/data"))).send().await.unwrap().json().await.unwrap();
        assert!(canvas == &stored, "a reader's replica of {image} differs from the stored image");
    }
    found
}

fn require_cluster_tools() -> Option<&'static pg::Postgres> {
    if !require("haproxy", "the HAProxy cluster tests") {
        return None;
    }
    pg::shared()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_instance_loses_no_acknowledged_change() {
    let Some(pg) = require_cluster_tools() else { return };
    let db = pg.create_database();
    let (addr1, addr2) =
        (format!("127.0.0.1:{}", free_port()).parse().unwrap(), format!("127.0.0.1:{}", free_port()).parse().unwrap());
    let one = instance(&db, addr1, "3s");
    let two = instance(&db, addr2, "3s");
    let lb = Haproxy::start(addr1, addr2);
    let http = reqwest::Client::new();
    lb.wait_both(&http, [&served_by(&http, &one).await, &served_by(&http, &two).await]).await;

    let load = Load::start(&lb, &http).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    one.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = one.wait();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (tally, replicas) = load.finish().await;

    let found = check_survivor(&tally, &replicas, &http, &two).await;
    let failed = tally.http_failed.lock().unwrap().len();
    eprintln!(
        "FIGURES failover (kill -9 of one of two instances under load): {found} changes acknowledged, {found} found \
         through the survivor; {failed} of {} HTTP requests failed; {} WebSocket reconnects",
        tally.http_sent.load(Ordering::Relaxed),
        tally.ws_reconnects.load(Ordering::Relaxed)
    );
    assert!(found > 200, "too little load to mean anything: {found}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_release_fails_no_request_and_readers_miss_nothing() {
    let Some(pg) = require_cluster_tools() else { return };
    let db = pg.create_database();
    let addrs: [SocketAddr; 2] =
        [format!("127.0.0.1:{}", free_port()).parse().unwrap(), format!("127.0.0.1:{}", free_port()).parse().unwrap()];
    let mut servers = [Some(instance(&db, addrs[0], "3s")), Some(instance(&db, addrs[1], "3s"))];
    let lb = Haproxy::start(addrs[0], addrs[1]);
    let http = reqwest::Client::new();
    let mut ids =
        [served_by(&http, servers[0].as_ref().unwrap()).await, served_by(&http, servers[1].as_ref().unwrap()).await];
    lb.wait_both(&http, [&ids[0], &ids[1]]).await;

    let load = Load::start(&lb, &http).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in 0..2 {
        let old = servers[n].take().unwrap();
        old.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(old.wait(), Some(0), "instance {n} exits 0 after draining");
        let new = instance(&db, addrs[n], "3s");
        ids[n] = served_by(&http, &new).await;
        servers[n] = Some(new);
        lb.wait_both(&http, [&ids[0], &ids[1]]).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (tally, replicas) = load.finish().await;
    let survivor = servers[0].as_ref().unwrap();
    let found = check_survivor(&tally, &replicas, &http, survivor).await;
    let failed = tally.http_failed.lock().unwrap().clone();
    eprintln!(
        "FIGURES rolling release (SIGTERM, restart, one instance at a time): {} HTTP requests, {} failed; \
         {found} changes acknowledged, {found} found; {} WebSocket reconnects",
        tally.http_sent.load(Ordering::Relaxed),
        failed.len(),
        tally.ws_reconnects.load(Ordering::Relaxed)
    );
    assert!(failed.is_empty(), "requests failed during the rolling release: {failed:?}");
    assert!(tally.ws_reconnects.load(Ordering::Relaxed) >= 2, "the sockets should have moved instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_503_and_recovers_by_itself() {
    let Some(pg) = pg::Postgres::start() else { return };
    let db = pg.create_database();
    let a = spawn_app_on(&db, &[], tempfile::tempdir().unwrap()).await;
    let b = spawn_app_on(&db, &[], tempfile::tempdir().unwrap()).await;
    assert_eq!(a.post("/images/img").await.0, 201);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let writer = {
        let (stop, tally, http) = (stop.clone(), tally.clone(), a.http.clone());
        let urls = [a.url("/images/img"), b.url("/images/img")];
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            for seq in 0..4096usize {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let c = color(1, seq);
                let body = draw(&[[(seq % 64) as i64, (seq / 64) as i64, c[0] as i64, c[1] as i64, c[2] as i64]]);
                let started = Instant::now();
                let res = http.put(&urls[seq % 2]).body(body).send().await.unwrap();
                slowest = slowest.max(started.elapsed());
                match res.status().as_u16() {
                    200 => tally.acked.lock().unwrap().push(("img".into(), seq, c)),
                    503 => {
                        let v: Value = res.json().await.unwrap();
                        let detail = v["detail"].as_str().unwrap().to_owned();
                        assert!(detail.starts_with("Storage unavailable"), "{detail}");
                        tally.http_failed.lock().unwrap().push(detail);
                    }
                    other => panic!("unexpected status {other}"),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            slowest
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.down();
    let down_at = Instant::now();
    // Both instances report not ready, with the reason, quickly.
    for app in [&a, &b] {
        let deadline = Instant::now() + WAIT;
        loop {
            let (status, body) = app.get_json("/readyz").await;
            if status == 503 {
                assert!(body["detail"].as_str().unwrap().contains("store"), "{body}");
                break;
            }
            assert!(Instant::now() < deadline, "still ready with the database down");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(down_at.elapsed())).await;
    pg.up();
    let up_at = Instant::now();
    for app in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while app.get_json("/readyz").await.0 != 200 {
            assert!(Instant::now() < deadline, "did not recover within 20 s of the database's return");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let recovered = up_at.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let slowest = writer.await.unwrap();
    // Settle, then every acknowledged change is visible through both instances.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let found_a = check_acked(&tally, &a.http, |image| a.url(&format!("/images/{image}/data"))).await;
    check_acked(&tally, &b.http, |image| b.url(&format!("/images/{image}/data"))).await;
    let refused = tally.http_failed.lock().unwrap().len();
    eprintln!(
        "FIGURES database outage (~3 s): both instances ready again {:.2} s after the database returned; \
         {found_a} changes acknowledged, {found_a} found; {refused} refused with 503; slowest answer {:.2} s",
        recovered.as_secs_f64(),
        slowest.as_secs_f64()
    );
    assert!(refused > 0, "the outage should have refused some writes");
    assert!(slowest < Duration::from_secs(5), "an answer took {slowest:?}: requests must not hang");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn with_no_instance_ready_haproxy_answers_json_503() {
    if !require("haproxy", "the HAProxy error-page test") {
        return;
    }
    let closed = |_| -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().unwrap() };
    let lb = Haproxy::start(closed(1), closed(2));
    let http = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    let res = loop {
        match http.get(lb.url("/images")).send().await {
            Ok(res) => break res,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("HAProxy did not answer: {e}"),
        }
    };
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: Value = res.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("No Draw64 instance is ready"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_shows_the_write_on_one_instance_and_the_fan_out_on_the_other() {
    use crate::{
        otlp::Receiver,
        telemetry::{TRACE_ID, hex, put_traced},
    };
    let Some(pg) = pg::shared() else { return };
    let db = pg.create_database();
    let receiver = Receiver::start().await;
    let endpoint = format!("http://{}", receiver.grpc);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_SERVICE_NAME", "draw64-cluster"),
    ];
    let a = Server::start_env(&db, "127.0.0.1:0", &["--drain-grace", "0"], &env, None);
    let b = Server::start_env(&db, "127.0.0.1:0", &["--drain-grace", "0"], &env, None);
    let http = reqwest::Client::new();
    assert_eq!(http.post(a.url("/images/traced")).send().await.unwrap().status(), 201);
    let mut on_b = ws_connect(&format!("ws://{}/ws/images/traced", b.addr)).await;
    put_traced(&http, &a, "traced").await;
    next_event(&mut on_b).await;

    let deadline = Instant::now() + WAIT;
    loop {
        {
            let got = receiver.sink.0.lock().unwrap();
            let put = got.spans.iter().find(|s| s.name == "PUT /images/{image_id}" && hex(&s.trace_id) == TRACE_ID);
            let fan_out = got.spans.iter().find(|s| s.name == "fan-out" && hex(&s.trace_id) == TRACE_ID);
            if let (Some(put), Some(fan_out)) = (put, fan_out) {
                // Only B has a subscriber, so this fan-out ran on B, under A's request span.
                assert_eq!(fan_out.parent_span_id, put.span_id, "the fan-out on B is a child of the PUT on A");
                break;
            }
        }
        assert!(Instant::now() < deadline, "no fan-out span on B in the PUT's trace");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_migrate_once() {
    let Some(pg) = pg::shared() else { return };
    let db = pg.create_database();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let [d1, d2, d3] = dirs;
    let (a, b, c) = tokio::join!(spawn_app_on(&db, &[], d1), spawn_app_on(&db, &[], d2), spawn_app_on(&db, &[], d3));
    let name = db.rsplit('/').next().unwrap();
    assert_eq!(pg.psql(name, "SELECT count(*) FROM schema_migrations"), "1");
    for app in [&a, &b, &c] {
        assert_eq!(app.get_json("/readyz").await.0, 200);
    }
    for app in [a, b, c] {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_of_a_killed_instance_leave_the_total() {
    let Some(pg) = pg::shared() else { return };
    let db = pg.create_database();
    let a = Server::start(&db, "127.0.0.1:0", &["--drain-grace", "0"]);
    let b = Server::start(&db, "127.0.0.1:0", &["--drain-grace", "0"]);
    let http = reqwest::Client::new();
    let _user = ws_connect(&format!("ws://{}/ws/images/img", a.addr)).await;
    let users = |v: Value| v["user_count"].as_u64().unwrap();
    let deadline = Instant::now() + WAIT;
    while users(http.get(b.url("/statistics")).send().await.unwrap().json().await.unwrap()) != 1 {
        assert!(Instant::now() < deadline, "B never counted A's user");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Killed: no goodbye. B drops A's users once A's heartbeats stop for 10 s.
    a.signal(nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    loop {
        if users(http.get(b.url("/statistics")).send().await.unwrap().json().await.unwrap()) == 0 {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(20), "A's user is still counted 20 s after A died");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("FIGURES a killed instance's users left the total after {:.1} s", killed.elapsed().as_secs_f64());
}
