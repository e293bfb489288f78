//! Headers every response carries.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::Response,
};

use super::Shared;

/// Headers every response carries, set once the handler answered.
pub fn stamp(app: &Shared, res: &mut Response) {
    let upgraded = res.status() == StatusCode::SWITCHING_PROTOCOLS;
    let headers = res.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store"));
    if let Some(id) = &app.served_by {
        headers.insert("x-served-by", id.clone());
    }
    // While draining, each answer closes its connection so the balancer's next request goes
    // to another instance. Not on an upgrade: that would break the WebSocket handshake.
    if app.lifecycle.is_draining() && !upgraded {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}
