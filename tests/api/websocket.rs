use serde_json::json;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::support::*;

fn updated(image: &str, command: serde_json::Value) -> serde_json::Value {
    json!({"event": {"event_type": "image_updated", "image_id": image, "command": command}})
}

#[tokio::test]
async fn clients_on_one_image_see_each_others_changes_in_one_order() {
    let app = spawn_app().await;
    let mut a = ws_connect(&app.ws_url("shared")).await;
    let mut b = ws_connect(&app.ws_url("shared")).await;
    let mut other = ws_connect(&app.ws_url("elsewhere")).await;

    for i in 0..20 {
        let sender = if i % 2 == 0 { &mut a } else { &mut b };
        ws_send(sender, &draw(&[[i, i, 1, 2, 3]])).await;
    }
    let mut seen_a = Vec::new();
    let mut seen_b = Vec::new();
    for _ in 0..20 {
        seen_a.push(next_event(&mut a).await);
        seen_b.push(next_event(&mut b).await);
    }
    assert_eq!(seen_a, seen_b);
    let mut xs: Vec<i64> = seen_a.iter().map(|e| e["event"]["command"]["values"][0][0].as_i64().unwrap()).collect();
    xs.sort();
    assert_eq!(xs, (0..20).collect::<Vec<_>>());
    assert_eq!(seen_a[0]["event"]["event_type"], "image_updated");
    assert_eq!(seen_a[0]["event"]["image_id"], "shared");

    // The client on another image got nothing: the first thing it sees is its own change.
    ws_send(&mut other, CLEAR).await;
    assert_eq!(next_event(&mut other).await, updated("elsewhere", json!({"command_type": "clear_canvas"})));
    app.stop().await;
}

#[tokio::test]
async fn connecting_creates_the_image_and_counts_a_user() {
    let app = spawn_app().await;
    assert_eq!(app.get_json("/images/fresh").await.0, 404);
    let ws = ws_connect(&app.ws_url("fresh")).await;
    assert_eq!(app.get_json("/images/fresh").await.0, 200);
    let (_, stats) = app.get_json("/statistics").await;
    assert_eq!((stats["user_count"].as_u64(), stats["images_created"].as_u64()), (Some(1), Some(1)));
    drop(ws);
    let deadline = std::time::Instant::now() + WAIT;
    while app.get_json("/statistics").await.1["user_count"] != 0 {
        assert!(std::time::Instant::now() < deadline, "user count never went back to 0");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_put_is_pushed_relayed_as_sent() {
    let app = spawn_app().await;
    let mut ws = ws_connect(&app.ws_url("pic")).await;
    let body = draw(&[[3, 4, 5, 6, 7], [70, 0, 1, 1, 1]]);
    assert_eq!(app.put("pic", &body).await.0, 200);
    assert_eq!(
        next_event(&mut ws).await,
        updated("pic", json!({"command_type": "draw", "values": [[3, 4, 5, 6, 7], [70, 0, 1, 1, 1]]}))
    );
    app.stop().await;
}

#[tokio::test]
async fn an_invalid_frame_gets_an_error_event_and_the_socket_stays_open() {
    let app = spawn_app().await;
    let mut ws = ws_connect(&app.ws_url("pic")).await;
    for (frame, reason) in [
        ("{", "EOF"),
        (r#"{"command":{"command_type":"draw","values":[[0,0,0,0,999]]}}"#, "blue value 999"),
        (r#"{"command":{"command_type":"nope"}}"#, "unknown command_type"),
    ] {
        ws_send(&mut ws, frame).await;
        let ev = next_event(&mut ws).await;
        assert_eq!(ev["event"]["event_type"], "error", "{frame}");
        assert!(ev["event"]["detail"].as_str().unwrap().contains(reason), "{ev}");
    }
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(next_event(&mut ws).await["event"]["event_type"], "error");
    ws_send(&mut ws, CLEAR).await;
    assert_eq!(next_event(&mut ws).await, updated("pic", json!({"command_type": "clear_canvas"})));
    assert!(app.data("pic").await.iter().flatten().all(|p| *p == [255, 255, 255]));
    app.stop().await;
}

use futures_util::SinkExt;

#[tokio::test]
async fn deleting_an_image_tells_its_sockets_and_closes_them_4404() {
    let app = spawn_app().await;
    let mut ws = ws_connect(&app.ws_url("doomed")).await;
    let mut other = ws_connect(&app.ws_url("kept")).await;
    let res = app.http.delete(app.url("/images/doomed")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let (code, events) = until_close(&mut ws, 5).await;
    assert_eq!(events, vec![json!({"event": {"event_type": "image_deleted", "image_id": "doomed"}})]);
    assert_eq!(code, 4404);
    ws_send(&mut other, CLEAR).await;
    assert_eq!(next_event(&mut other).await["event"]["image_id"], "kept");
    app.stop().await;
}

#[tokio::test]
async fn handshakes_with_a_bad_id_are_403_and_over_the_total_limit_409() {
    let app = spawn_app_with(&["--max-total-images", "2"]).await;
    for bad in ["a.b", "a_b", &"z".repeat(31)] {
        match tokio_tungstenite::connect_async(app.ws_url(bad)).await {
            Err(tungstenite::Error::Http(res)) => assert_eq!(res.status(), 403, "{bad}"),
            other => panic!("{bad}: expected 403, got {other:?}"),
        }
    }
    let _a = ws_connect(&app.ws_url("one")).await;
    let _b = ws_connect(&app.ws_url("two")).await;
    match tokio_tungstenite::connect_async(app.ws_url("three")).await {
        Err(tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), 409);
            let body = String::from_utf8(res.body().clone().unwrap()).unwrap();
            assert!(body.contains("--max-total-images"), "{body}");
        }
        other => panic!("expected 409, got {other:?}"),
    }
    // Existing images stay reachable at the limit.
    let _again = ws_connect(&app.ws_url("one")).await;
    // A plain GET without the upgrade is a clear 4xx, not a hang.
    let res = app.http.get(app.url("/ws/images/one")).send().await.unwrap();
    assert!(res.status().is_client_error());
    assert!(res.text().await.unwrap().contains("detail"));
    app.stop().await;
}

#[tokio::test]
async fn a_message_over_1_mib_is_closed_1009() {
    let app = spawn_app().await;
    let mut ws = ws_connect(&app.ws_url("pic")).await;
    let pixels: Vec<[i64; 5]> = (0..90_000).map(|i| [i % 64, 0, 1, 2, 3]).collect();
    let big = draw(&pixels);
    assert!(big.len() > 1 << 20);
    ws_send(&mut ws, &big).await;
    let (code, events) = until_close(&mut ws, 0).await;
    assert_eq!(code, 1009);
    assert!(events.is_empty());
    assert!(app.data("pic").await.iter().flatten().all(|p| *p == [255, 255, 255]));
    app.stop().await;
}

#[tokio::test]
async fn a_subscriber_that_falls_far_behind_is_closed_1013() {
    // A reader that catches up late, not one that never reads (`public::` has that one): the
    // writes may wait for it longer than the test's writers take.
    let app = spawn_app_with(&[ONE_ADDRESS_LOAD, &["--send-timeout", "120s"]].concat()).await;
    // Connect and then read nothing while a lot is drawn.
    let mut slow = ws_connect(&app.ws_url("busy")).await;
    // Big events fill the socket buffers quickly; then the 1,024-event backlog overflows.
    let pixels: Vec<[i64; 5]> = (0..2000).map(|i| [i % 64, i / 64, 1, 2, 3]).collect();
    let body = std::sync::Arc::new(draw(&pixels));
    let writers = (0..8).map(|_| {
        let http = app.http.clone();
        let url = app.url("/images/busy");
        let body = body.clone();
        tokio::spawn(async move {
            for _ in 0..250 {
                assert_eq!(http.put(&url).body((*body).clone()).send().await.unwrap().status(), 200);
            }
        })
    });
    for w in writers {
        w.await.unwrap();
    }
    let (code, events) = until_close(&mut slow, 2000).await;
    assert_eq!(code, 1013);
    assert!(events.len() < 2000, "got every event: nothing lagged");
    // A fresh connection works and sees the current image.
    let _again = ws_connect(&app.ws_url("busy")).await;
    assert_eq!(app.data("busy").await[0][0], [1, 2, 3]);
    app.stop().await;
}
