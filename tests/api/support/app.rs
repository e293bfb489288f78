//! Test harness: the real app on 127.0.0.1 port 0 with a fresh database, and clients that speak
//! the wire protocols like a browser would.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use draw64::{App, Config};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::{net::TcpStream, sync::oneshot};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

pub const WAIT: Duration = Duration::from_secs(10);

/// For tests that put load on purpose from one address (as the benchmark suite does): the rates
/// off and the seats per client as many as in all; the checks still run, and the time limits
/// and the caps in all stay at their defaults.
pub const ONE_ADDRESS_LOAD: &[&str] = &[
    "--max-connections-per-client",
    "16384",
    "--max-websockets-per-client",
    "16384",
    "--max-streams-per-client",
    "16384",
    "--ws-command-rate",
    "0",
    "--ws-pixel-rate",
    "0",
    "--client-command-rate",
    "0",
    "--client-pixel-rate",
    "0",
    "--client-images-per-minute",
    "0",
    "--client-report-rate",
    "0",
];

pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Starts the app in-process with extra command-line flags.
pub async fn spawn_app_with(flags: &[&str]) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(&dir);
    spawn_app_on(&db, flags, dir).await
}

/// Starts the app in-process on a given database URL (several apps may share one).
pub async fn spawn_app_on(db: &str, flags: &[&str], dir: tempfile::TempDir) -> TestApp {
    let mut args = vec!["draw64", "--listen", "127.0.0.1:0", "--database", db, "--drain-grace", "0"];
    args.extend_from_slice(flags);
    let config = Config::try_from_args(args).unwrap();
    let app = App::build(&config, None).await.unwrap();
    let addr = app.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    TestApp { addr, http: reqwest::Client::new(), stop: Some(stop), handle: Some(handle), _dir: dir }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self, image: &str) -> String {
        format!("ws://{}/ws/images/{image}", self.addr)
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let res = self.http.get(self.url(path)).send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap())
    }

    pub async fn put(&self, image: &str, body: &str) -> (u16, Value) {
        let res = self.http.put(self.url(&format!("/images/{image}"))).body(body.to_owned()).send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap())
    }

    pub async fn post(&self, path: &str) -> (u16, Value) {
        let res = self.http.post(self.url(path)).send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap())
    }

    pub async fn data(&self, image: &str) -> Vec<Vec<[u8; 3]>> {
        let res = self.http.get(self.url(&format!("/images/{image}/data"))).send().await.unwrap();
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.handle.take().unwrap()).await.unwrap().unwrap().unwrap();
    }
}

pub fn draw(pixels: &[[i64; 5]]) -> String {
    serde_json::json!({"command": {"command_type": "draw", "values": pixels}}).to_string()
}

pub const CLEAR: &str = r#"{"command":{"command_type":"clear_canvas"}}"#;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub async fn ws_connect(url: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws
}

/// The next text frame as JSON (pings skipped); panics on close or after `WAIT`.
pub async fn next_event(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next()).await.expect("event in time").expect("open").unwrap();
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

/// Reads until the server closes; returns the close code and the events before it.
pub async fn until_close(ws: &mut Ws, max_events: usize) -> (u16, Vec<Value>) {
    let mut events = Vec::new();
    while events.len() <= max_events {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("close in time") {
            Some(Ok(Message::Text(t))) => events.push(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(frame))) => return (frame.map(|f| u16::from(f.code)).unwrap_or(1005), events),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("socket error before close: {e}"),
            None => panic!("closed without a close frame"),
        }
    }
    panic!("no close after {max_events} events");
}

pub async fn ws_send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
}

/// A Server-Sent Events reader for `/sse/announce`.
pub struct Sse {
    stream: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<u64>,
    pub name: String,
    pub data: Value,
    pub comment: Option<String>,
}

impl Sse {
    pub async fn open(app: &TestApp) -> Sse {
        let res = app.http.get(app.url("/sse/announce")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        Sse { stream: Box::pin(res.bytes_stream()), buf: String::new() }
    }

    /// The next event or comment block.
    pub async fn next(&mut self) -> SseEvent {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent { id: None, name: String::new(), data: Value::Null, comment: None };
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        ev.comment = Some(c.trim().to_owned());
                    } else if let Some((k, v)) = line.split_once(':') {
                        let v = v.strip_prefix(' ').unwrap_or(v);
                        match k {
                            "id" => ev.id = Some(v.parse().unwrap()),
                            "event" => ev.name = v.to_owned(),
                            "data" => ev.data = serde_json::from_str(v).unwrap(),
                            _ => {}
                        }
                    }
                }
                return ev;
            }
            let chunk = tokio::time::timeout(WAIT, self.stream.next()).await.expect("SSE in time").unwrap().unwrap();
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next named event, skipping keep-alive comments.
    pub async fn event(&mut self) -> SseEvent {
        loop {
            let ev = self.next().await;
            if ev.comment.is_none() {
                return ev;
            }
        }
    }
}

/// The real `draw64` binary, for restarts, signals and `kill -9`.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The Prometheus port, when metrics go to Prometheus.
    pub metrics: Option<SocketAddr>,
    /// Every stderr line, as the server wrote it.
    pub logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(db: &str, listen: &str, extra: &[&str]) -> Server {
        Self::start_env(db, listen, extra, &[], None)
    }

    /// With environment variables, and stdout written to `stdout` when given.
    pub fn start_env(db: &str, listen: &str, extra: &[&str], env: &[(&str, &str)], stdout: Option<&Path>) -> Server {
        let out = match stdout {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::null(),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_draw64"))
            .args(["--listen", listen, "--metrics-listen", "127.0.0.1:0", "--database", db])
            .args(extra)
            .env("DRAW64_LOG_FORMAT", "json")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(out)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut metrics = None;
        let addr = loop {
            let line = lines.next().expect("server printed its address").unwrap();
            logs.lock().unwrap().push(line.clone());
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v["message"] == "metrics listening" {
                metrics = v["address"].as_str().map(|a| a.parse().unwrap());
            }
            if v["message"] == "listening" {
                break v["address"].as_str().unwrap().parse().unwrap();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Server { child, addr, metrics, logs }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .trim()
            .trim_end_matches(" kB")
            .trim()
            .parse()
            .unwrap();
        kb * 1024
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits for the process to exit and returns its code (None if killed by a signal).
    pub fn wait(mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(std::time::Instant::now() < deadline, "server did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh database URL: SQLite in `dir`, or a new PostgreSQL database when the suite runs on
/// PostgreSQL (`DRAW64_TEST_BACKEND=postgres`).
pub fn test_db(dir: &tempfile::TempDir) -> String {
    if crate::support::pg::suite_on_postgres() {
        let pg = crate::support::pg::shared().expect("DRAW64_TEST_BACKEND=postgres needs PostgreSQL installed");
        return pg.create_database();
    }
    format!("sqlite://{}", dir.path().join("draw64.db").display())
}

/// Tests that need a tool CI installs: fail under `CI=true`, skip with a reason elsewhere.
pub fn require(tool: &str, what: &str) -> bool {
    let found =
        Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{tool} is required for {what} under CI=true but is not installed");
        }
        eprintln!("SKIPPED {what}: {tool} is not installed");
    }
    found
}

impl Server {
    /// The metrics port's exposition, now.
    pub async fn scrape(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics.expect("a metrics port"));
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }

    /// Polls the scrape until `series` reaches `at_least` (bounded by `WAIT`); its last value.
    pub async fn until_sample(&self, series: &str, at_least: f64) -> f64 {
        self.until_sample_is(series, |v| v >= at_least).await
    }

    /// Polls the scrape until `series` falls to `at_most` (bounded by `WAIT`); its last value.
    pub async fn until_sample_below(&self, series: &str, at_most: f64) -> f64 {
        self.until_sample_is(series, |v| v <= at_most).await
    }

    async fn until_sample_is(&self, series: &str, done: impl Fn(f64) -> bool) -> f64 {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let value = sample(&self.scrape().await, series);
            if done(value) || std::time::Instant::now() > deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The value of the first sample line that starts with `series` (0 when absent).
pub fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A TCP connection from a loopback address of its own (127.0.0.0/8 is all loopback on
/// Linux): another client, as far as per-address limits can tell.
pub async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// A WebSocket from `source` (see `connect_from`), with extra handshake headers.
pub async fn ws_connect_from(
    source: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let tcp = connect_from(source, addr).await;
    tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp)).await.map(|(ws, _)| ws)
}
