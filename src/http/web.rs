//! The web page, embedded in the binary so it works offline and ships with the server.

use axum::{
    extract::{Path, State},
    http::header,
    response::{Html, IntoResponse, Response},
};

use super::{AppState, error::ApiError};

/// The page, told whether deleting and clearing need the admin token (so it hides those
/// controls from a visitor without one).
pub async fn index(State(app): State<AppState>) -> Response {
    let mode = if app.admin_token.is_set() { "token" } else { "open" };
    let page = include_str!("../../web/index.html").replace("{{admin}}", mode);
    let mut res = Html(page).into_response();
    super::middleware::html_headers(&mut res, super::middleware::PAGE_POLICY);
    res
}

pub async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    let (body, mime) = match file.as_str() {
        "app.js" => (include_str!("../../web/app.js"), "text/javascript; charset=utf-8"),
        "rum.js" => (include_str!("../../web/rum.js"), "text/javascript; charset=utf-8"),
        "style.css" => (include_str!("../../web/style.css"), "text/css; charset=utf-8"),
        _ => return Err(ApiError::NoRoute),
    };
    Ok(([(header::CONTENT_TYPE, mime)], body).into_response())
}
