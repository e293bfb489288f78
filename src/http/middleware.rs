//! Headers every response carries.

use axum::{
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::Response,
};

use super::AppState;

pub async fn headers(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let headers = res.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store"));
    if let Some(id) = &app.served_by {
        headers.insert("x-served-by", id.clone());
    }
    // While draining, each answer closes its connection so the balancer's next request goes
    // to another instance. Not on an upgrade: that would break the WebSocket handshake.
    if app.lifecycle.is_draining() && res.status() != StatusCode::SWITCHING_PROTOCOLS {
        res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}
