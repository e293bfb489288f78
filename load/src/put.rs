//! `put`: N keep-alive connections, each PUTting one pixel as soon as its last answer came.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::time::Instant;

use super::{
    Common,
    client::{Http, authority, draw_body, ensure_image, pixel, resolve},
    report::{Latency, ProcSample, Report, histogram, record},
};

pub async fn run(common: &Common, connections: usize, requests: Option<u64>) -> Result<Report, String> {
    ensure_image(&common.url, &common.image).await?;
    let (addr, host) = (resolve(&common.url).await?, authority(&common.url)?);
    let path: Arc<str> = format!("/images/{}", common.image).into();
    let body: Arc<[u8]> = draw_body(pixel(1)).into_bytes().into();
    let max = requests.unwrap_or(100_000 * common.duration.as_secs().max(1));
    let issued = Arc::new(AtomicU64::new(0));
    let before = common.pid.and_then(ProcSample::take);
    let started = Instant::now();
    let deadline = started + common.duration;
    let bar = super::progress("put", common.duration);
    let ticker = super::tick(&bar, deadline);
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (issued, path, body, host) = (issued.clone(), path.clone(), body.clone(), host.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = histogram();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            let mut http = match Http::connect(addr, &host).await {
                Ok(http) => http,
                Err(e) => {
                    errors.insert(e, 1);
                    return (latencies, errors);
                }
            };
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max {
                let sent = std::time::Instant::now();
                match http.call("PUT", &path, &body).await {
                    Ok((200, _)) => record(&mut latencies, sent.elapsed()),
                    Ok((status, _)) => *errors.entry(format!("HTTP {status}")).or_default() += 1,
                    Err(e) => {
                        *errors.entry(e).or_default() += 1;
                        // The connection is gone: open another.
                        match Http::connect(addr, &host).await {
                            Ok(again) => http = again,
                            Err(e) => {
                                *errors.entry(e).or_default() += 1;
                                break;
                            }
                        }
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = histogram();
    let mut report = Report { scenario: "put", url: common.url.clone(), ..Default::default() };
    for task in tasks {
        let (h, errors) = task.await.map_err(|e| e.to_string())?;
        latencies.add(&h).map_err(|e| e.to_string())?;
        report.merge_errors(errors);
    }
    let elapsed = started.elapsed().as_secs_f64();
    ticker.abort();
    bar.finish_and_clear();
    report.server = before.zip(common.pid.and_then(ProcSample::take)).map(|(b, a)| a.since(&b));
    report.duration_s = elapsed;
    report.operations = latencies.len();
    report.per_second = latencies.len() as f64 / elapsed;
    report.latency = Latency::of(&latencies);
    report.params.insert("connections", connections as u64);
    Ok(report)
}
