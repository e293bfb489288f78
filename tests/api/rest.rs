use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn image_lifecycle_and_shapes() {
    let app = spawn_app().await;
    assert_eq!(app.get_json("/images").await, (200, json!([])));

    let (status, body) = app.post("/images").await;
    assert_eq!(status, 201);
    let random = body["image_id"].as_str().unwrap().to_owned();
    let (word, digits) = random.rsplit_once('-').unwrap();
    assert!(word.chars().all(|c| c.is_ascii_lowercase()) && digits.len() == 3, "{random}");

    assert_eq!(app.post("/images/mine").await, (201, json!({"image_id": "mine"})));
    assert_eq!(app.post("/images/mine").await, (409, json!({"detail": "Image ID already exists."})));
    assert_eq!(app.get_json("/images/mine").await, (200, json!({"image_id": "mine"})));
    let (_, list) = app.get_json("/images").await;
    let mut ids: Vec<&str> = list.as_array().unwrap().iter().map(|v| v["image_id"].as_str().unwrap()).collect();
    ids.sort();
    let mut expected = vec!["mine", random.as_str()];
    expected.sort();
    assert_eq!(ids, expected);

    let res = app.http.delete(app.url("/images/mine")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), Value::Null);
    let not_found = json!({"detail": "Image ID not found."});
    assert_eq!(app.get_json("/images/mine").await, (404, not_found.clone()));
    let res = app.http.delete(app.url("/images/mine")).send().await.unwrap();
    assert_eq!((res.status().as_u16(), res.json::<Value>().await.unwrap()), (404, not_found));
    app.stop().await;
}

#[tokio::test]
async fn unknown_images_are_404_everywhere() {
    let app = spawn_app().await;
    let nf = json!({"detail": "Image ID not found."});
    assert_eq!(app.get_json("/images/ghost").await, (404, nf.clone()));
    assert_eq!(app.get_json("/images/ghost/data").await, (404, nf.clone()));
    assert_eq!(app.get_json("/images/ghost.png").await, (404, nf.clone()));
    assert_eq!(app.put("ghost", CLEAR).await, (404, nf.clone()));
    app.stop().await;
}

#[tokio::test]
async fn invalid_ids_are_422_on_every_route_before_lookup() {
    let app = spawn_app().await;
    let long = "x".repeat(31);
    for bad in ["a.b", "a_b", "a%20b", "%C3%A9", long.as_str()] {
        for (method, path) in [
            ("GET", format!("/images/{bad}")),
            ("GET", format!("/images/{bad}/data")),
            ("GET", format!("/images/{bad}.png")),
            ("POST", format!("/images/{bad}")),
            ("PUT", format!("/images/{bad}")),
            ("DELETE", format!("/images/{bad}")),
        ] {
            let res = app.http.request(method.parse().unwrap(), app.url(&path)).body(CLEAR).send().await.unwrap();
            assert_eq!(res.status(), 422, "{method} {path}");
            let detail = res.json::<Value>().await.unwrap()["detail"].as_str().unwrap().to_owned();
            assert!(detail.contains("image_id"), "{method} {path}: {detail}");
        }
    }
    // Exactly 30 characters is fine.
    assert_eq!(app.post(&format!("/images/{}", "y".repeat(30))).await.0, 201);
    app.stop().await;
}

#[tokio::test]
async fn put_draws_skips_outside_pixels_and_data_is_x_first() {
    let app = spawn_app().await;
    app.post("/images/pic").await;
    let body = draw(&[[1, 2, 10, 20, 30], [63, 0, 1, 1, 1], [64, 0, 9, 9, 9], [-1, 5, 9, 9, 9], [0, 99, 9, 9, 9]]);
    // No Content-Type at all, as the original's load script sends.
    let res = app.http.put(app.url("/images/pic")).body(body).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap(), Value::Null);
    let data = app.data("pic").await;
    assert_eq!(data.len(), 64);
    assert!(data.iter().all(|col| col.len() == 64));
    assert_eq!(data[1][2], [10, 20, 30]);
    assert_eq!(data[2][1], [255, 255, 255]);
    assert_eq!(data[63][0], [1, 1, 1]);
    let changed: usize = data.iter().flatten().filter(|p| **p != [255, 255, 255]).count();
    assert_eq!(changed, 2);

    // With an explicit JSON Content-Type too.
    let res = app
        .http
        .put(app.url("/images/pic"))
        .json(&json!({"command": {"command_type": "clear_canvas"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(app.data("pic").await.iter().flatten().all(|p| *p == [255, 255, 255]));
    app.stop().await;
}

#[tokio::test]
async fn bad_commands_are_422_with_a_reason_and_change_nothing() {
    let app = spawn_app().await;
    app.post("/images/pic").await;
    let cases = [
        (draw(&[[0, 0, 1, 1, 1], [1, 1, 256, 0, 0]]), "red value 256"),
        (draw(&[[0, 0, 1, 1, 1], [1, 1, 0, -1, 0]]), "green value -1"),
        (r#"{"command":{"command_type":"draw","values":[[0,0,1,1,1],[1,1,1,1]]}}"#.into(), "exactly 5 integers"),
        (r#"{"command":{"command_type":"draw","values":[[0,0,1,1,1,1]]}}"#.into(), "exactly 5 integers"),
        (r#"{"command":{"command_type":"draw","values":[[0.5,0,1,1,1]]}}"#.into(), "0.5 is not an integer"),
        (r#"{"command":{"command_type":"draw","values":"no"}}"#.into(), "invalid type"),
        (r#"{"command":{"command_type":"paint","values":[]}}"#.into(), "unknown command_type \"paint\""),
        (r#"{"command":{"command_type":"draw"}}"#.into(), "needs \"values\""),
        (r#"{"command":{}}"#.into(), "missing field `command_type`"),
        (r#"{"command": "#.into(), "EOF"),
        ("not json".into(), "expected"),
        ("".into(), "EOF"),
        ("[]".into(), "invalid"),
    ];
    for (body, reason) in cases {
        let (status, answer) = app.put("pic", &body).await;
        assert_eq!(status, 422, "{body}");
        let detail = answer["detail"].as_str().unwrap();
        assert!(detail.contains(reason), "{body}: {detail}");
    }
    let res =
        app.http.put(app.url("/images/pic")).header("content-type", "text/plain").body(CLEAR).send().await.unwrap();
    assert_eq!(res.status(), 422);
    assert!(res.json::<Value>().await.unwrap()["detail"].as_str().unwrap().contains("text/plain"));
    assert!(app.data("pic").await.iter().flatten().all(|p| *p == [255, 255, 255]), "a rejected command changed pixels");
    let (_, stats) = app.get_json("/statistics").await;
    assert_eq!(stats["image_updates"], json!({}));
    app.stop().await;
}

#[tokio::test]
async fn bodies_over_1_mib_are_413() {
    let app = spawn_app().await;
    app.post("/images/pic").await;
    let pixels: Vec<[i64; 5]> = (0..90_000).map(|i| [i % 64, i / 64 % 64, 1, 2, 3]).collect();
    let body = draw(&pixels);
    assert!(body.len() > 1 << 20);
    let (status, answer) = app.put("pic", &body).await;
    assert_eq!(status, 413);
    assert!(answer["detail"].as_str().unwrap().contains("1 MiB"));
    assert!(app.data("pic").await.iter().flatten().all(|p| *p == [255, 255, 255]));
    app.stop().await;
}

#[tokio::test]
async fn png_decodes_to_the_drawn_pixels() {
    let app = spawn_app().await;
    app.post("/images/pic").await;
    app.put("pic", &draw(&[[5, 9, 200, 100, 50], [63, 63, 0, 0, 0]])).await;
    let res = app.http.get(app.url("/images/pic.png")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/png");
    let bytes = res.bytes().await.unwrap();
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height, info.color_type), (64, 64, png::ColorType::Rgb));
    let at = |x: usize, y: usize| &buf[(y * 64 + x) * 3..(y * 64 + x) * 3 + 3];
    assert_eq!(at(5, 9), [200, 100, 50]);
    assert_eq!(at(9, 5), [255, 255, 255]);
    assert_eq!(at(63, 63), [0, 0, 0]);
    // The PNG shares the image's route but can only be read, and the 405 says so (RFC 9110).
    for method in [reqwest::Method::PUT, reqwest::Method::DELETE, reqwest::Method::POST] {
        let res = app.http.request(method.clone(), app.url("/images/pic.png")).send().await.unwrap();
        assert_eq!(res.status(), 405, "{method}");
        assert_eq!(res.headers()["allow"], "GET,HEAD", "{method}");
    }
    assert_eq!(app.get_json("/images/pic/data").await.0, 200, "the image is still there");
    app.stop().await;
}

#[tokio::test]
async fn the_active_image_limit_is_exact() {
    let app = spawn_app_with(&["--max-images", "3"]).await;
    assert_eq!(app.post("/images").await.0, 201);
    assert_eq!(app.post("/images/two").await.0, 201);
    assert_eq!(app.post("/images").await.0, 201);
    let full = json!({"detail": "Too many images already created."});
    assert_eq!(app.post("/images").await, (409, full.clone()));
    assert_eq!(app.post("/images/four").await, (409, full.clone()));
    // Deleting one frees one place, and only one, even for concurrent requests.
    app.http.delete(app.url("/images/two")).send().await.unwrap();
    let posts = (0..20).map(|i| {
        let http = app.http.clone();
        let url = if i % 2 == 0 { app.url("/images") } else { app.url(&format!("/images/c{i}")) };
        tokio::spawn(async move { http.post(url).send().await.unwrap().status().as_u16() })
    });
    let mut statuses = Vec::new();
    for p in posts {
        statuses.push(p.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 19);
    app.stop().await;
}

#[tokio::test]
async fn statistics_count_and_list_updated_images() {
    let app = spawn_app().await;
    app.post("/images/a").await;
    app.post("/images/b").await;
    app.post("/images/c").await;
    app.put("a", CLEAR).await;
    app.put("a", &draw(&[[1, 1, 1, 1, 1]])).await;
    app.put("c", &draw(&[[100, 100, 1, 1, 1]])).await; // accepted even though nothing lands
    app.http.delete(app.url("/images/c")).send().await.unwrap();
    assert_eq!(
        app.get_json("/statistics").await,
        (200, json!({"images_created": 3, "images_deleted": 1, "user_count": 0, "image_updates": {"a": 2}}))
    );
    app.stop().await;
}

#[tokio::test]
async fn every_answer_has_cache_control_and_head_works() {
    let app = spawn_app().await;
    app.post("/images/pic").await;
    for (method, path, status) in [
        ("GET", "/", 200),
        ("GET", "/images", 200),
        ("GET", "/images/pic", 200),
        ("GET", "/images/pic.png", 200),
        ("GET", "/images/pic/data", 200),
        ("GET", "/statistics", 200),
        ("GET", "/healthz", 200),
        ("GET", "/readyz", 200),
        ("GET", "/openapi.json", 200),
        ("GET", "/images/nope", 404),
        ("GET", "/images/a.b", 422),
        ("GET", "/no/such/route", 404),
        ("PATCH", "/images", 405),
        ("POST", "/images/pic", 409),
    ] {
        let res = app.http.request(method.parse().unwrap(), app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), status, "{method} {path}");
        assert_eq!(res.headers()["cache-control"], "no-cache, no-store", "{method} {path}");
        assert!(!res.headers()["x-served-by"].is_empty(), "{method} {path}: no X-Served-By");
        if status >= 400 {
            let body: Value = res.json().await.unwrap();
            assert!(body["detail"].is_string(), "{method} {path}: {body}");
        }
        if method == "GET" {
            let head = app.http.head(app.url(path)).send().await.unwrap();
            assert_eq!(head.status(), status, "HEAD {path}");
            assert_eq!(head.headers()["cache-control"], "no-cache, no-store");
            assert!(head.bytes().await.unwrap().is_empty());
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    assert_eq!(app.get_json("/healthz").await, (200, json!({"status": "ok"})));
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(body["checks"]["store"]["status"], "ok");
    assert!(body["checks"]["store"]["latency_seconds"].as_f64().unwrap() < 2.0);
    assert_eq!(body["checks"]["shutdown"], json!({"status": "ok"}));
    app.stop().await;
}

#[tokio::test]
async fn page_openapi_and_docs_are_served() {
    let app = spawn_app().await;
    let page = app.http.get(app.url("/")).send().await.unwrap().text().await.unwrap();
    for id in ["id=\"canvas\"", "id=\"palette\"", "id=\"images\"", "id=\"user-count\"", "id=\"random\""] {
        assert!(page.contains(id), "page lacks {id}");
    }
    let js = app.http.get(app.url("/static/app.js")).send().await.unwrap();
    assert_eq!(js.status(), 200);
    assert!(js.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));

    let (status, spec) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let paths = spec["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/images", &["get", "post"][..]),
        ("/images/{image_id}", &["get", "post", "put", "delete"]),
        ("/images/{image_id}.png", &["get"]),
        ("/images/{image_id}/data", &["get"]),
        ("/statistics", &["get"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
    ] {
        for m in methods {
            assert!(paths[path][m].is_object(), "openapi lacks {m} {path}");
        }
    }
    let docs = app.http.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    let css = app.http.get(app.url("/docs/swagger-ui.css")).send().await.unwrap();
    assert_eq!(css.status(), 200);
    app.stop().await;
}
