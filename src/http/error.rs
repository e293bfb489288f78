//! The one mapping from errors to HTTP: a status and `{"detail": "..."}`. Internals never
//! leak: a storage error is answered in short, and its cause rides on the response (`Fault`)
//! to the middleware that logs it once, with the request's trace. The conversion itself has
//! no side effect.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
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
    #[error("Requests that change images are accepted from this site's own pages only (--allowed-origins).")]
    CrossOrigin,
    #[error("Too many {what} from your address; try again in {}s.", retry_after.as_secs().max(1))]
    Throttled { what: &'static str, retry_after: std::time::Duration },
    #[error("Too many {0} open from your address; close some first.")]
    TooManyOpen(&'static str),
    #[error("This needs the admin token: send Authorization: Bearer TOKEN.")]
    AdminRequired,
    #[error("The admin token is not right.")]
    AdminDenied,
    #[error("A command may draw at most {0} pixels (--max-pixels-per-command); send it in parts.")]
    TooManyPixels(usize),
    #[error("The request body did not arrive within {}s (--body-timeout).", .0.as_secs())]
    BodyTimeout(std::time::Duration),
    #[error("Not Found")]
    NoRoute,
    #[error("Method Not Allowed")]
    MethodNotAllowed,
    #[error("The PNG form of an image can only be read (GET or HEAD).")]
    PngIsReadOnly,
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
    #[error("No fault flag {0:?}; the flags are {flags}.", flags = crate::faults::Fault::ALL.map(|f| f.key()).join(", "))]
    UnknownFault(String),
    #[error("Invalid fault setting: {0}")]
    InvalidFault(String),
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
            | ApiError::TooManyPixels(_)
            | ApiError::InvalidQuery(_)
            | ApiError::InvalidFault(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UnknownFault(_) => StatusCode::NOT_FOUND,
            ApiError::Throttled { .. } | ApiError::TooManyOpen(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::AdminRequired => StatusCode::UNAUTHORIZED,
            ApiError::AdminDenied => StatusCode::FORBIDDEN,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Disabled(_) => StatusCode::FORBIDDEN,
            ApiError::Busy(_) => StatusCode::CONFLICT,
            ApiError::Panicked | ApiError::ProfileFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::CrossOrigin => StatusCode::FORBIDDEN,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed | ApiError::PngIsReadOnly => StatusCode::METHOD_NOT_ALLOWED,
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
        ApiError::TooLarge | ApiError::TooManyPixels(_) => "too_large",
        ApiError::Throttled { .. } => "rate_limited",
        ApiError::CrossOrigin | ApiError::AdminRequired | ApiError::AdminDenied => "forbidden",
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
        let mut response = (status, Json(Detail { detail })).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Throttled { retry_after, .. } => {
                let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            ApiError::AdminRequired => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"draw64\""));
            }
            // axum names the methods of its own 405s; this one comes from a shared route.
            ApiError::PngIsReadOnly => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
            }
            // The rest of the body may still be on its way: the connection cannot be reused.
            ApiError::BodyTimeout(_) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        let fault = match self {
            ApiError::Service(ServiceError::Unavailable(cause)) => Some(Fault(cause)),
            _ => None,
        };
        if let Some(fault) = fault {
            response.extensions_mut().insert(fault);
        }
        response
    }
}

pub async fn no_route() -> ApiError {
    ApiError::NoRoute
}

/// axum lists the route's methods in `Allow`; `/images/ID.png` shares its route with the
/// image, but only GET and HEAD apply to it.
pub async fn method_not_allowed(uri: axum::http::Uri) -> ApiError {
    if uri.path().starts_with("/images/") && uri.path().ends_with(".png") {
        ApiError::PngIsReadOnly
    } else {
        ApiError::MethodNotAllowed
    }
}
