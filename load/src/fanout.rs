//! `fanout`: S subscribers on one image; W writers send changes at a fixed total rate, each on
//! its schedule (open loop: a writer that falls behind is reported, never silently slowed).
//! Change n carries a unique pixel, so each receipt is matched to its send instant.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    Common,
    client::{authority, draw_body, ensure_image, first_pixel, pixel, resolve, seq_of, ws_path},
    lean_ws,
    report::{Delivery, Latency, ProcSample, Report, histogram, record},
};

/// How long receipts may trail the last send before the missing ones count as lost.
const SETTLE: Duration = Duration::from_secs(5);

struct Shared {
    started: Instant,
    /// Send instant of change n, in nanoseconds since `started` (0: not sent).
    sent_at: Vec<AtomicU64>,
    /// Changes sent in all, final once `sending` is false.
    sent: AtomicU64,
    sending: AtomicBool,
}

pub async fn run(
    common: &Common,
    subscribers: usize,
    rate: u64,
    writers: usize,
    write_urls: &[String],
) -> Result<Report, String> {
    if rate == 0 || writers == 0 {
        return Err("--rate and --writers must be at least 1".into());
    }
    ensure_image(&common.url, &common.image).await?;
    let total = (rate * common.duration.as_secs().max(1)).min(1 << 28);
    let path = ws_path(&common.image);
    let (addr, host) = (resolve(&common.url).await?, authority(&common.url)?);
    let mut subs = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        subs.push(lean_ws::connect(addr, &host, &path).await?);
    }
    let urls: Vec<&str> =
        if write_urls.is_empty() { vec![&common.url] } else { write_urls.iter().map(String::as_str).collect() };
    let mut outs = Vec::with_capacity(writers);
    for w in 0..writers {
        let url = urls[w % urls.len()];
        outs.push(lean_ws::connect(resolve(url).await?, &authority(url)?, &path).await?);
    }
    let shared = Arc::new(Shared {
        started: Instant::now(),
        sent_at: (0..total).map(|_| AtomicU64::new(0)).collect(),
        sent: AtomicU64::new(0),
        sending: AtomicBool::new(true),
    });
    let before = common.pid.and_then(ProcSample::take);
    let bar = super::progress("fanout", common.duration);
    let ticker = super::tick(&bar, tokio::time::Instant::now() + common.duration);

    let receivers: Vec<_> =
        subs.into_iter().map(|ws| tokio::spawn(subscribe(ws, shared.clone(), total, writers as u64))).collect();
    let senders: Vec<_> = outs
        .into_iter()
        .enumerate()
        .map(|(w, ws)| tokio::spawn(send(ws, shared.clone(), w as u64, writers as u64, total, rate)))
        .collect();

    let mut delivery = Delivery::default();
    let mut report = Report { scenario: "fanout", url: common.url.clone(), ..Default::default() };
    for sender in senders {
        let (late, max_late, error) = sender.await.map_err(|e| e.to_string())?;
        delivery.late_sends += late;
        delivery.max_late_ms = delivery.max_late_ms.max(max_late.as_secs_f64() * 1e3);
        if let Some(e) = error {
            report.error(e);
        }
    }
    let send_phase = shared.started.elapsed();
    shared.sending.store(false, Ordering::Release);
    let sent = shared.sent.load(Ordering::Acquire);
    let mut latencies = histogram();
    for receiver in receivers {
        let r = receiver.await.map_err(|e| e.to_string())?;
        latencies.add(&r.latencies).map_err(|e| e.to_string())?;
        delivery.received += r.received;
        delivery.duplicates += r.duplicates;
        delivery.reordered += r.reordered;
        delivery.closed_subscribers += u64::from(r.closed);
    }
    ticker.abort();
    bar.finish_and_clear();
    delivery.expected = sent * subscribers as u64;
    delivery.missing = delivery.expected.saturating_sub(delivery.received - delivery.duplicates);
    report.server = before.zip(common.pid.and_then(ProcSample::take)).map(|(b, a)| a.since(&b));
    report.duration_s = send_phase.as_secs_f64();
    report.operations = sent;
    report.per_second = sent as f64 / send_phase.as_secs_f64();
    report.latency = Latency::of(&latencies);
    report.delivery = Some(delivery);
    report.params.insert("subscribers", subscribers as u64);
    report.params.insert("rate", rate);
    report.params.insert("writers", writers as u64);
    Ok(report)
}

/// Sends changes w, w+W, w+2W… each at its scheduled instant. Answers (late sends, worst
/// lateness, the error that stopped it).
async fn send(
    (mut stream, mut sink): (lean_ws::Reader, lean_ws::Writer),
    shared: Arc<Shared>,
    w: u64,
    writers: u64,
    total: u64,
    rate: u64,
) -> (u64, Duration, Option<String>) {
    // The writer's socket receives every change too: read and drop them, or it would lag. It
    // hangs up only once its own last change came back: closing with unread data makes the
    // kernel reset the connection, which can take the server's unread frames with it.
    let (last_tx, mut last_rx) = tokio::sync::watch::channel(None::<u64>);
    let drain = tokio::spawn(async move {
        let mut newest = None;
        loop {
            tokio::select! {
                frame = stream.next_text() => match frame {
                    Ok(Some(text)) => {
                        if let Some(seq) = first_pixel(text).map(seq_of).filter(|s| s % writers == w) {
                            newest = Some(seq);
                        }
                    }
                    _ => return,
                },
                Ok(()) = last_rx.changed() => {}
            }
            if let (Some(want), Some(got)) = (*last_rx.borrow(), newest)
                && got >= want
            {
                return;
            }
        }
    });
    let (mut late, mut worst, mut error) = (0, Duration::ZERO, None);
    let mut seq = w;
    let mut last = None;
    while seq < total {
        let due = shared.started + Duration::from_nanos(seq * 1_000_000_000 / rate);
        tokio::time::sleep_until(due.into()).await;
        let now = Instant::now();
        let behind = now - due;
        if behind > Duration::from_millis(1) {
            late += 1;
            worst = worst.max(behind);
        }
        shared.sent_at[seq as usize].store((now - shared.started).as_nanos() as u64, Ordering::Relaxed);
        if let Err(e) = sink.send_text(draw_body(pixel(seq)).as_bytes()).await {
            shared.sent_at[seq as usize].store(0, Ordering::Relaxed);
            error = Some(format!("writer: {e}"));
            break;
        }
        shared.sent.fetch_add(1, Ordering::AcqRel);
        last = Some(seq);
        seq += writers;
    }
    let _ = last_tx.send(last);
    let _ = tokio::time::timeout(SETTLE, drain).await;
    sink.close().await;
    (late, worst, error)
}

struct Received {
    latencies: hdrhistogram::Histogram<u64>,
    received: u64,
    duplicates: u64,
    reordered: u64,
    closed: bool,
}

async fn subscribe(
    (mut ws, mut out): (lean_ws::Reader, lean_ws::Writer),
    shared: Arc<Shared>,
    total: u64,
    writers: u64,
) -> Received {
    let mut r = Received { latencies: histogram(), received: 0, duplicates: 0, reordered: 0, closed: false };
    let mut seen = vec![0u64; total.div_ceil(64) as usize];
    let mut last = vec![None::<u64>; writers as usize];
    let mut settle_until: Option<Instant> = None;
    loop {
        if !shared.sending.load(Ordering::Acquire) {
            let until = *settle_until.get_or_insert_with(|| Instant::now() + SETTLE);
            if r.received - r.duplicates >= shared.sent.load(Ordering::Acquire) || Instant::now() > until {
                break;
            }
        }
        // A subscriber only listens: it must answer pings, or the server drops it as silent.
        if let Some(ping) = ws.take_ping()
            && out.pong(&ping).await.is_err()
        {
            r.closed = true;
            break;
        }
        let text = match tokio::time::timeout(Duration::from_millis(100), ws.next_text()).await {
            Err(_) => continue,
            Ok(Ok(Some(text))) => text,
            Ok(_) => {
                r.closed = true;
                break;
            }
        };
        let now = Instant::now();
        let Some(seq) = first_pixel(text).map(seq_of).filter(|s| *s < total) else { continue };
        r.received += 1;
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if seen[word] & bit != 0 {
            r.duplicates += 1;
            continue;
        }
        seen[word] |= bit;
        let sent = shared.sent_at[seq as usize].load(Ordering::Relaxed);
        if sent > 0 {
            record(&mut r.latencies, (now - shared.started).saturating_sub(Duration::from_nanos(sent)));
        }
        let writer = (seq % writers) as usize;
        if last[writer].is_some_and(|l| seq < l) {
            r.reordered += 1;
        } else {
            last[writer] = Some(seq);
        }
    }
    out.close().await;
    r
}
