//! Many writers, one image: every subscriber sees one order, and the stored image is the
//! replay of that order.

use serde_json::Value;

use crate::support::*;

pub fn replay(events: &[Value]) -> Vec<Vec<[u8; 3]>> {
    let mut canvas = vec![vec![[255u8; 3]; 64]; 64];
    for ev in events {
        let cmd = &ev["event"]["command"];
        match cmd["command_type"].as_str().unwrap() {
            "clear_canvas" => canvas = vec![vec![[255u8; 3]; 64]; 64],
            "draw" => {
                for p in cmd["values"].as_array().unwrap() {
                    let n: Vec<i64> = p.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
                    if (0..64).contains(&n[0]) && (0..64).contains(&n[1]) {
                        canvas[n[0] as usize][n[1] as usize] = [n[2] as u8, n[3] as u8, n[4] as u8];
                    }
                }
            }
            other => panic!("unexpected command {other}"),
        }
    }
    canvas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_writers_end_with_the_replay_of_the_order_subscribers_saw() {
    // A thousand commands at once from one address: over the per-client rate, which is not
    // what this test is about.
    let app = spawn_app_with(ONE_ADDRESS_LOAD).await;
    let mut watchers = vec![ws_connect(&app.ws_url("race")).await, ws_connect(&app.ws_url("race")).await];
    const WRITERS: i64 = 100;
    const EACH: i64 = 10;
    let writers = (0..WRITERS).map(|w| {
        let http = app.http.clone();
        let url = app.url("/images/race");
        tokio::spawn(async move {
            for i in 0..EACH {
                // Everyone fights over the same 16 cells, so the order decides the result.
                let body = if (w + i) % 37 == 0 {
                    CLEAR.to_owned()
                } else {
                    draw(&[[(w + i) % 4, i % 4, w as u8 as i64, i, 1], [i % 4, w % 4, 0, w, i]])
                };
                assert_eq!(http.put(&url).body(body).send().await.unwrap().status(), 200);
            }
        })
    });
    for w in writers {
        w.await.unwrap();
    }
    let mut orders = Vec::new();
    for ws in &mut watchers {
        let mut seen = Vec::new();
        for _ in 0..WRITERS * EACH {
            seen.push(next_event(ws).await);
        }
        orders.push(seen);
    }
    assert_eq!(orders[0], orders[1], "two subscribers saw different orders");
    assert_eq!(app.data("race").await, replay(&orders[0]));
    let (_, stats) = app.get_json("/statistics").await;
    assert_eq!(stats["image_updates"]["race"], WRITERS * EACH);
    app.stop().await;
}
