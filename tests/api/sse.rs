use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn announces_images_and_users_with_counting_ids() {
    let app = spawn_app().await;
    let mut sse = Sse::open(&app).await;

    app.post("/images/made").await;
    let ev = sse.event().await;
    assert_eq!((ev.id, ev.name.as_str()), (Some(1), "image_created"));
    assert_eq!(ev.data, json!({"event": {"event_type": "image_created", "image_id": "made"}}));

    // A connect that creates its image.
    let ws = ws_connect(&app.ws_url("new-one")).await;
    let names: Vec<(Option<u64>, String)> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let ev = sse.event().await;
            v.push((ev.id, ev.name.clone()));
            match ev.name.as_str() {
                "user_connected" => assert_eq!(ev.data, json!({"event": {"event_type": "user_connected"}})),
                "image_created" => assert_eq!(ev.data["event"]["image_id"], "new-one"),
                "user_count_updated" => {
                    assert_eq!(ev.data, json!({"event": {"event_type": "user_count_updated", "user_count": 1}}))
                }
                other => panic!("unexpected {other}"),
            }
        }
        v
    };
    assert_eq!(
        names,
        vec![
            (Some(2), "user_connected".into()),
            (Some(3), "image_created".into()),
            (Some(4), "user_count_updated".into())
        ]
    );

    // A connect to an existing image: no image_created.
    let ws2 = ws_connect(&app.ws_url("made")).await;
    assert_eq!(sse.event().await.name, "user_connected");
    let ev = sse.event().await;
    assert_eq!((ev.id, ev.name.as_str(), &ev.data["event"]["user_count"]), (Some(6), "user_count_updated", &json!(2)));

    // Draws are not announced; a disconnect is.
    app.put("made", CLEAR).await;
    drop(ws2);
    let ev = sse.event().await;
    assert_eq!(
        (ev.name.as_str(), &ev.data),
        ("user_disconnected", &json!({"event": {"event_type": "user_disconnected"}}))
    );
    let ev = sse.event().await;
    assert_eq!((ev.id, ev.name.as_str(), &ev.data["event"]["user_count"]), (Some(8), "user_count_updated", &json!(1)));

    app.http.delete(app.url("/images/made")).send().await.unwrap();
    let ev = sse.event().await;
    assert_eq!(ev.name, "image_deleted");
    assert_eq!(ev.data, json!({"event": {"event_type": "image_deleted", "image_id": "made"}}));
    drop(ws);
    app.stop().await;
}

#[tokio::test]
async fn a_second_stream_counts_from_one_and_pings_every_5_s() {
    let app = spawn_app().await;
    app.post("/images/early").await;
    let mut sse = Sse::open(&app).await;
    app.post("/images/late").await;
    let ev = sse.event().await;
    assert_eq!((ev.id, ev.data["event"]["image_id"].as_str()), (Some(1), Some("late")));
    let started = std::time::Instant::now();
    let ping = sse.next().await;
    assert_eq!(ping.comment.as_deref(), Some("ping"));
    let waited = started.elapsed().as_secs_f64();
    // The interval is 5 s; the upper bound only allows for a loaded machine.
    assert!((4.0..10.0).contains(&waited), "ping after {waited} s");
    app.stop().await;
}

/// Connects that create their images while the instance keeps re-reading the image list (on
/// PostgreSQL each read of a missing image sweeps the list, which is what raced with a creation
/// between its commit and its announcement): every creation is announced exactly once, after
/// its user's `user_connected`.
#[tokio::test]
async fn creating_connects_are_announced_once_each_and_in_order_under_sweeps() {
    const CONNECTS: usize = 40;
    let app = spawn_app_with(ONE_ADDRESS_LOAD).await;
    let mut sse = Sse::open(&app).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sweeper = {
        let (http, url, stop) = (app.http.clone(), app.url("/images/absent/data"), stop.clone());
        tokio::spawn(async move {
            // Bounded in count and in time.
            let deadline = std::time::Instant::now() + WAIT;
            for _ in 0..20_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) || std::time::Instant::now() > deadline {
                    break;
                }
                let res = http.get(&url).send().await.unwrap();
                assert_eq!(res.status(), 404);
            }
        })
    };
    let connects: Vec<_> = (0..CONNECTS)
        .map(|n| {
            let url = app.ws_url(&format!("race-{n}"));
            tokio::spawn(async move { ws_connect(&url).await })
        })
        .collect();
    let mut sockets = Vec::new();
    for connect in connects {
        sockets.push(connect.await.unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sweeper.await.unwrap();
    // Every announcement of those connects comes before this one's.
    let sentinel = ws_connect(&app.ws_url("sentinel")).await;

    let mut created = std::collections::BTreeMap::<String, usize>::new();
    let (mut connected, mut last_id) = (0, 0);
    loop {
        let ev = sse.event().await;
        let id = ev.id.expect("every event has an id");
        assert_eq!(id, last_id + 1, "ids count up by one");
        last_id = id;
        match ev.name.as_str() {
            "user_connected" => connected += 1,
            "user_count_updated" => {}
            "image_created" => {
                let image = ev.data["event"]["image_id"].as_str().unwrap().to_owned();
                if image == "sentinel" {
                    break;
                }
                *created.entry(image.clone()).or_default() += 1;
                let announced: usize = created.values().sum();
                assert!(announced <= connected, "{image} announced before its user connected (event {id})");
            }
            other => panic!("unexpected {other} (event {id})"),
        }
    }
    assert_eq!(connected, CONNECTS + 1);
    let twice: Vec<_> = created.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "announced other than once: {twice:?}");
    assert_eq!(created.len(), CONNECTS);
    drop((sockets, sentinel));
    app.stop().await;
}
