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
    // Never guess a type from the bytes: a report or an image id is never HTML.
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Some(id) = &app.served_by {
        headers.insert("x-served-by", id.clone());
    }
    // While draining, each answer closes its connection so the balancer's next request goes
    // to another instance. Not on an upgrade: that would break the WebSocket handshake.
    if app.lifecycle.is_draining() && !upgraded {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// The page's policy: its own scripts, styles and sockets only, no inline script, never in a
/// frame (clickjacking), no plugins.
pub const PAGE_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'";

/// Swagger UI's (`/docs`): the same, but its components set inline styles.
pub const DOCS_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
    img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; \
    object-src 'none'";

/// The headers of an HTML answer under `policy`. Only a document sends requests that could
/// tell another site where a visitor came from, so only documents carry `Referrer-Policy`.
pub fn html_headers(res: &mut Response, policy: &'static str) {
    let headers = res.headers_mut();
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(policy));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}
