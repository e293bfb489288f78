//! Real processes behind a real HAProxy: kill -9, a rolling release, a database outage.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

use super::balancer::*;
use super::*;
use crate::support::{pg, *};

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

    let load = Load::start(lb.addr, &http).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    one.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = one.wait();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (tally, replicas) = load.finish().await;

    let found = check_survivor(&tally, &replicas, &http, &two.url("")).await;
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

    let load = Load::start(lb.addr, &http).await;
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
    let found = check_survivor(&tally, &replicas, &http, &survivor.url("")).await;
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
