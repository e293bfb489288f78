//! `users`: a fixed, realistic mix. U WebSocket users spread over 10 images, each entering one
//! new cell every 50 ms in strokes of 20 cells with 1 s pauses between strokes; one SSE listener
//! per 10 users; one PNG and one `/data` read per user per 10 s. Latency is each user's own
//! send → receipt of its change (the echo every user on the image gets).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    Common,
    client::{Http, authority, ensure_image, first_pixel, resolve, ws_path},
    lean_ws,
    report::{Latency, ProcSample, Report, histogram, record},
};

const IMAGES: usize = 10;
const CELL_EVERY: Duration = Duration::from_millis(50);
const STROKE: u64 = 20;
const PAUSE: Duration = Duration::from_secs(1);
/// Send instants kept per user, indexed by change number modulo this.
const RING: usize = 1024;

pub async fn run(common: &Common, users: usize, every: Option<Duration>) -> Result<Report, String> {
    if users == 0 || users > 65_535 {
        return Err("--users must be 1..65535".into());
    }
    let images: Vec<String> = (0..IMAGES).map(|i| format!("{}-{i}", common.image)).collect();
    for image in &images {
        ensure_image(&common.url, image).await?;
    }
    let started = Instant::now();
    let deadline = started + common.duration;
    let before = common.pid.and_then(ProcSample::take);
    let sent = Arc::new(AtomicU64::new(0));
    let bar = super::progress("users", common.duration);
    let ticker = super::tick(&bar, deadline.into());
    let (addr, host) = (resolve(&common.url).await?, authority(&common.url)?);
    let mut tasks = Vec::with_capacity(users);
    for u in 0..users {
        let path = ws_path(&images[u % IMAGES]);
        tasks.push(tokio::spawn(user(addr, host.clone(), path, u as u64, deadline, sent.clone())));
    }
    let listeners: Vec<_> = (0..users.div_ceil(10)).map(|_| tokio::spawn(sse(addr, host.clone(), deadline))).collect();
    let readers: Vec<_> =
        (0..users.div_ceil(10)).map(|r| tokio::spawn(reads(addr, host.clone(), images.clone(), r, deadline))).collect();
    let watch =
        every.zip(common.pid).map(|(every, pid)| tokio::spawn(watch(pid, every, started, deadline, sent.clone())));

    let mut report = Report { scenario: "users", url: common.url.clone(), ..Default::default() };
    let mut latencies = histogram();
    let mut received = 0;
    for task in tasks {
        let (h, got, error) = task.await.map_err(|e| e.to_string())?;
        latencies.add(&h).map_err(|e| e.to_string())?;
        received += got;
        if let Some(e) = error {
            report.error(e);
        }
    }
    let mut read_latencies = histogram();
    for reader in readers {
        let (h, errors) = reader.await.map_err(|e| e.to_string())?;
        read_latencies.add(&h).map_err(|e| e.to_string())?;
        report.merge_errors(errors);
    }
    for listener in listeners {
        if let Some(e) = listener.await.map_err(|e| e.to_string())? {
            report.error(e);
        }
    }
    if let Some(w) = watch {
        w.abort();
    }
    ticker.abort();
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let sent = sent.load(Ordering::Relaxed);
    report.server = before.zip(common.pid.and_then(ProcSample::take)).map(|(b, a)| a.since(&b));
    report.duration_s = elapsed;
    report.operations = sent;
    report.per_second = sent as f64 / elapsed;
    report.latency = Latency::of(&latencies);
    report.figures.insert("own changes received", received as f64);
    report.figures.insert("reads", read_latencies.len() as f64);
    if let Some(l) = Latency::of(&read_latencies) {
        report.figures.insert("read p99 ms", l.p99_ms);
    }
    report.params.insert("users", users as u64);
    Ok(report)
}

/// The pixel of user u's change n: position from n, colour from u (and n's high bits).
fn user_pixel(u: u64, n: u64) -> [u64; 5] {
    [n % 64, (n / 64) % 64, u & 0xff, (u >> 8) & 0xff, (n >> 12) & 0xff]
}

/// One drawing user: strokes on its own schedule, and its own changes timed on their way back.
async fn user(
    addr: std::net::SocketAddr,
    host: String,
    path: String,
    u: u64,
    deadline: Instant,
    sent: Arc<AtomicU64>,
) -> (hdrhistogram::Histogram<u64>, u64, Option<String>) {
    let (mut stream, mut sink) = match lean_ws::connect(addr, &host, &path).await {
        Ok(ws) => ws,
        Err(e) => return (histogram(), 0, Some(e)),
    };
    let clock = Instant::now();
    let ring: Arc<Vec<AtomicU64>> = Arc::new((0..RING).map(|_| AtomicU64::new(0)).collect());
    let seen = ring.clone();
    let reader = tokio::spawn(async move {
        let mut h = histogram();
        let mut got = 0u64;
        while let Ok(Some(text)) = stream.next_text().await {
            let Some(p) = first_pixel(text) else { continue };
            if p[2] != (u & 0xff) || p[3] != ((u >> 8) & 0xff) {
                continue;
            }
            let n = p[0] + p[1] * 64 + (p[4] << 12);
            let at = seen[n as usize % RING].load(Ordering::Relaxed);
            if at > 0 {
                record(&mut h, clock.elapsed().saturating_sub(Duration::from_nanos(at)));
                got += 1;
            }
        }
        (h, got)
    });
    // Users do not start in step.
    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..2000))).await;
    let mut n = 0u64;
    let mut error = None;
    'strokes: while Instant::now() < deadline {
        let stroke_start = tokio::time::Instant::now();
        for i in 0..STROKE {
            tokio::time::sleep_until(stroke_start + CELL_EVERY * i as u32).await;
            if Instant::now() >= deadline {
                break 'strokes;
            }
            let p = user_pixel(u, n);
            ring[n as usize % RING].store(clock.elapsed().as_nanos() as u64, Ordering::Relaxed);
            let body = super::client::draw_body(p);
            if let Err(e) = sink.send_text(body.as_bytes()).await {
                error = Some(format!("user: {e}"));
                break 'strokes;
            }
            sent.fetch_add(1, Ordering::Relaxed);
            n += 1;
        }
        tokio::time::sleep(PAUSE).await;
    }
    // Let the last echoes arrive, then hang up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sink.close().await;
    let (h, got) = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or((histogram(), 0));
    (h, got, error)
}

/// One `/sse/announce` listener, read and discarded until the deadline.
async fn sse(addr: std::net::SocketAddr, host: String, deadline: Instant) -> Option<String> {
    let mut stream = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Some(format!("sse: {e}")),
    };
    let request = format!("GET /sse/announce HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return Some(format!("sse: {e}"));
    }
    let mut buf = vec![0u8; 16 * 1024];
    while Instant::now() < deadline {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) => return Some("sse: closed by the server".into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Some(format!("sse: {e}")),
            Err(_) => break,
        }
    }
    None
}

/// Ten users' reads: one PNG and one `/data` each per 10 s, i.e. two reads a second.
async fn reads(
    addr: std::net::SocketAddr,
    host: String,
    images: Vec<String>,
    r: usize,
    deadline: Instant,
) -> (hdrhistogram::Histogram<u64>, std::collections::BTreeMap<String, u64>) {
    let mut h = histogram();
    let mut errors = std::collections::BTreeMap::new();
    let mut http = match Http::connect(addr, &host).await {
        Ok(http) => http,
        Err(e) => {
            errors.insert(format!("reads: {e}"), 1);
            return (h, errors);
        }
    };
    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..1000))).await;
    let mut every = tokio::time::interval(Duration::from_millis(500));
    let mut k = r;
    while Instant::now() < deadline {
        every.tick().await;
        let image = &images[k % images.len()];
        let path = if k.is_multiple_of(2) { format!("/images/{image}.png") } else { format!("/images/{image}/data") };
        k += 1;
        let started = Instant::now();
        match http.call("GET", &path, b"").await {
            Ok((200, _)) => record(&mut h, started.elapsed()),
            Ok((status, _)) => *errors.entry(format!("read HTTP {status}")).or_default() += 1,
            Err(e) => {
                *errors.entry(format!("reads: {e}")).or_default() += 1;
                match Http::connect(addr, &host).await {
                    Ok(again) => http = again,
                    Err(_) => break,
                }
            }
        }
    }
    (h, errors)
}

/// Prints the server's memory and CPU, and the changes sent, every `every` (steady-state runs).
async fn watch(pid: u32, every: Duration, started: Instant, deadline: Instant, sent: Arc<AtomicU64>) {
    let mut last = ProcSample::take(pid);
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    while Instant::now() < deadline {
        tick.tick().await;
        let Some(now) = ProcSample::take(pid) else { return };
        if let Some(before) = &last {
            let usage = now.since(before);
            eprintln!(
                "users: t={:.0}s rss={} bytes cpu={:.2} cores sent={}",
                started.elapsed().as_secs_f64(),
                now.rss_bytes,
                usage.cpu_cores,
                sent.load(Ordering::Relaxed)
            );
        }
        last = Some(now);
    }
}
