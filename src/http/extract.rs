//! Request parts parsed into domain types, with rejections mapped to `ApiError`.

use std::net::SocketAddr;

use axum::{
    body::Bytes,
    extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request},
    http::{HeaderMap, HeaderName, StatusCode, header::CONTENT_TYPE, request::Parts},
};

use super::{AppState, error::ApiError, serve::peer_ip};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
use crate::{
    domain::{Command, ImageId},
    limits::{Limit, within},
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
        // Who it was matters only on a timeout: keep what names the client, resolve it then.
        let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().copied();
        // Every value: the trusted-proxy rule reads them all.
        let forwarded: Vec<_> = req.headers().get_all(X_FORWARDED_FOR).iter().cloned().collect();
        match within(timeout, Bytes::from_request(req, app)).await {
            Some(Ok(bytes)) => Ok(Self(bytes)),
            Some(Err(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::TooLarge),
            Some(Err(e)) => Err(ApiError::BadBody(e.body_text())),
            None => {
                let headers = HeaderMap::from_iter(forwarded.into_iter().map(|f| (X_FORWARDED_FOR, f)));
                let client = app.trusted_proxies.client(peer_ip(peer.as_ref()), &headers);
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
    let Some(declared) = headers.get(CONTENT_TYPE) else { return Ok(()) };
    let bytes = declared.as_bytes();
    let mime = bytes.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
    let json = mime.eq_ignore_ascii_case(b"application/json")
        || (mime.len() >= 5 && mime[mime.len() - 5..].eq_ignore_ascii_case(b"+json"));
    if json { Ok(()) } else { Err(ApiError::NotJson(String::from_utf8_lossy(bytes).into_owned())) }
}
