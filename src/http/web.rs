//! The web page, embedded in the binary so it works offline and ships with the server.

use axum::{
    extract::Path,
    http::header,
    response::{Html, IntoResponse, Response},
};

use super::error::ApiError;

pub async fn index() -> Html<&'static str> {
    Html(include_str!("../../web/index.html"))
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
