//! Request parts parsed into domain types, with rejections mapped to `ApiError`.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Request},
    http::{StatusCode, header::CONTENT_TYPE, request::Parts},
};

use super::{AppState, caller::client_address, error::ApiError};
use crate::{
    domain::{Command, ImageId},
    limits::Limit,
};

/// The `{image_id}` path segment, validated before any lookup: a bad id is a 422 everywhere.
pub struct ImagePath(pub ImageId);

impl<S: Send + Sync> FromRequestParts<S> for ImagePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        // `/images/ID.png` shares the route: the PNG can only be read.
        if raw.ends_with(".png") && parts.method != axum::http::Method::GET {
            return Err(ApiError::PngIsReadOnly);
        }
        Ok(Self(ImageId::parse(&raw)?))
    }
}

/// A request body read whole within `--body-timeout` (408 beyond, counted and logged), and
/// within the body limit (413).
pub struct TimedBody(pub Bytes);

impl FromRequest<AppState> for TimedBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &AppState) -> Result<Self, ApiError> {
        let timeout = app.limits.options.body_timeout;
        let (parts, body) = req.into_parts();
        let client = client_address(app, &parts);
        let req = Request::from_parts(parts, body);
        match tokio::time::timeout(timeout, Bytes::from_request(req, app)).await {
            Ok(Ok(bytes)) => Ok(Self(bytes)),
            Ok(Err(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::TooLarge),
            Ok(Err(e)) => Err(ApiError::BadBody(e.body_text())),
            Err(_) => {
                app.limits.refused(Limit::BodyTimeout, Some(client));
                Err(ApiError::BodyTimeout(timeout))
            }
        }
    }
}

/// A command body. No `Content-Type` is read as JSON (the original's load script sends none);
/// any other declared type is refused.
pub struct CommandBody(pub Command);

impl FromRequest<AppState> for CommandBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &AppState) -> Result<Self, ApiError> {
        refuse_non_json(req.headers())?;
        let TimedBody(body) = TimedBody::from_request(req, app).await?;
        Ok(Self(Command::parse_json(&body)?))
    }
}

/// A declared body type other than JSON is refused (422), also where no body is read: a
/// cross-site HTML form can send `text/plain` or `application/x-www-form-urlencoded` without
/// asking the server first, never `application/json`.
pub fn refuse_non_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    if let Some(declared) = headers.get(CONTENT_TYPE) {
        let text = String::from_utf8_lossy(declared.as_bytes()).into_owned();
        let mime = text.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        if mime != "application/json" && !mime.ends_with("+json") {
            return Err(ApiError::NotJson(text));
        }
    }
    Ok(())
}
