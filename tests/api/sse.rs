use serde_json::json;

use crate::helpers::*;

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
