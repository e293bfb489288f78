//! The one mapping from errors to HTTP: a status and `{"detail": "..."}`. Internals never
//! leak: a storage error is answered in short, and its cause rides on the response (`Fault`)
//! to the middleware that logs it once, with the request's trace. The conversion itself has
//! no side effect.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};

use crate::{
    domain::{CommandError, IdError},
    service::ServiceError,
};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    InvalidId(#[from] IdError),
    #[error("invalid path: {0}")]
    InvalidPath(String),
    #[error(transparent)]
    InvalidCommand(#[from] CommandError),
    #[error("Content-Type {0:?} is not JSON; send application/json (or no Content-Type)")]
    NotJson(String),
    #[error("cannot read the request body: {0}")]
    BadBody(String),
    #[error("request body is larger than the 1 MiB limit")]
    TooLarge,
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    InvalidReport(#[from] crate::domain::browser::ReportError),
    #[error("reports are accepted from this site's own pages only")]
    CrossOrigin,
    #[error("too many reports; send fewer")]
    RateLimited,
    #[error("Not Found")]
    NoRoute,
    #[error("Method Not Allowed")]
    MethodNotAllowed,
    #[error("Internal server error; the request was not completed.")]
    Panicked,
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("{0}")]
    Disabled(&'static str),
    #[error("{0}")]
    Busy(&'static str),
    #[error("{0}")]
    ProfileFailed(String),
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(e: axum::extract::rejection::PathRejection) -> Self {
        ApiError::InvalidPath(e.body_text())
    }
}

impl ApiError {
    /// What the client is told: the error itself, but a storage failure only in short.
    pub fn detail(&self) -> String {
        match self {
            ApiError::Service(ServiceError::Unavailable(_)) => "Storage unavailable; try again shortly.".to_owned(),
            other => other.to_string(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidId(_)
            | ApiError::InvalidPath(_)
            | ApiError::InvalidCommand(_)
            | ApiError::NotJson(_)
            | ApiError::BadBody(_)
            | ApiError::InvalidReport(_)
            | ApiError::InvalidQuery(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Disabled(_) => StatusCode::FORBIDDEN,
            ApiError::Busy(_) => StatusCode::CONFLICT,
            ApiError::Panicked | ApiError::ProfileFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::CrossOrigin => StatusCode::FORBIDDEN,
            ApiError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Service(e) => match e {
                ServiceError::NotFound => StatusCode::NOT_FOUND,
                ServiceError::AlreadyExists | ServiceError::TooManyImages | ServiceError::TooManyTotal(_) => {
                    StatusCode::CONFLICT
                }
                ServiceError::NoFreeId => StatusCode::CONFLICT,
                ServiceError::Unavailable(_) | ServiceError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
            },
        }
    }
}

/// Counts a refused command in `draw64.commands.rejected`, by a bounded reason.
pub fn count_rejection(e: &ApiError) {
    let reason = match e {
        ApiError::TooLarge => "too_large",
        ApiError::Service(ServiceError::NotFound) => "not_found",
        ApiError::Service(ServiceError::Unavailable(_) | ServiceError::Stopped) => "unavailable",
        _ => "invalid",
    };
    crate::telemetry::metrics()
        .commands_rejected
        .add(1, &[opentelemetry::KeyValue::new("draw64.reject.reason", reason)]);
}

/// The body of every error answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Detail {
    pub detail: String,
}

/// The cause of a server-side failure, for the log; never sent to the client.
#[derive(Clone, Debug)]
pub struct Fault(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = self.detail();
        let fault = match self {
            ApiError::Service(ServiceError::Unavailable(cause)) => Some(Fault(cause)),
            _ => None,
        };
        let mut response = (status, Json(Detail { detail })).into_response();
        if let Some(fault) = fault {
            response.extensions_mut().insert(fault);
        }
        response
    }
}

pub async fn no_route() -> ApiError {
    ApiError::NoRoute
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
