//! In-process instances sharing one database.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::*;
use crate::{
    concurrency::replay,
    support::{pg, *},
};

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
