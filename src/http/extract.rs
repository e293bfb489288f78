//! Request parts parsed into domain types, with rejections mapped to `ApiError`.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Request},
    http::{header::CONTENT_TYPE, request::Parts},
};

use super::error::ApiError;
use crate::domain::{Command, ImageId};

/// The `{image_id}` path segment, validated before any lookup: a bad id is a 422 everywhere.
pub struct ImagePath(pub ImageId);

impl<S: Send + Sync> FromRequestParts<S> for ImagePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await?;
        Ok(Self(ImageId::parse(&raw)?))
    }
}

/// A command body. No `Content-Type` is read as JSON (the original's load script sends none);
/// any other declared type is refused.
pub struct CommandBody(pub Command);

impl<S: Send + Sync> FromRequest<S> for CommandBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if let Some(declared) = req.headers().get(CONTENT_TYPE) {
            let text = String::from_utf8_lossy(declared.as_bytes()).into_owned();
            let mime = text.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
            if mime != "application/json" && !mime.ends_with("+json") {
                return Err(ApiError::NotJson(text));
            }
        }
        let body = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge
            } else {
                ApiError::BadBody(e.body_text())
            }
        })?;
        Ok(Self(Command::parse_json(&body)?))
    }
}
