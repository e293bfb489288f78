//! Operators' tools on the metrics port (never the public one): CPU profiles on demand, in the
//! format `go tool pprof` and Grafana read or as a flame graph, and fire drills (a panic on
//! purpose, only with `--fire-drills`).

use std::time::Duration;

use axum::{
    extract::{Query, State, rejection::QueryRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{AppState, error::ApiError};
use crate::{
    drill::{self, Drill},
    telemetry::profile::{self, MAX_SECONDS, ProfileError, Stacks},
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileQuery {
    /// How long to sample: 1 to 60 seconds (30, as Go's endpoint).
    seconds: Option<u64>,
    /// `pprof` (gzip-compressed protobuf, the default) or `svg` (a flame graph).
    format: Option<String>,
}

enum Format {
    Pprof,
    Svg,
}

impl Format {
    fn as_str(&self) -> &'static str {
        match self {
            Format::Pprof => "pprof",
            Format::Svg => "svg",
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::InvalidQuery(e.body_text())
    }
}

impl From<ProfileError> for ApiError {
    fn from(e: ProfileError) -> Self {
        match e {
            ProfileError::Busy(why) => ApiError::Busy(why),
            other => ApiError::ProfileFailed(other.to_string()),
        }
    }
}

/// `GET /debug/pprof/profile?seconds=N[&format=svg]`: samples the whole process for N seconds.
pub async fn profile(query: Result<Query<ProfileQuery>, QueryRejection>) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let seconds = q.seconds.unwrap_or(30);
    if !(1..=MAX_SECONDS).contains(&seconds) {
        return Err(ApiError::InvalidQuery(format!("seconds={seconds}: expected 1 to {MAX_SECONDS}")));
    }
    let format = match q.format.as_deref() {
        None | Some("pprof") => Format::Pprof,
        Some("svg") => Format::Svg,
        Some(other) => return Err(ApiError::InvalidQuery(format!("format={other:?}: expected pprof or svg"))),
    };
    // Claimed before sampling, so a second request is refused at once rather than after N s.
    let session = profile::start()?;
    // Profiling costs CPU while it runs: the log says who is paying it, and when.
    tracing::info!(seconds, format = format.as_str(), "taking a CPU profile");
    let sampled = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_secs(seconds));
        let report = session.report()?;
        drop(session);
        match format {
            Format::Pprof => Ok((profile::pprof::encode(&Stacks::from_report(&report)), Format::Pprof)),
            Format::Svg => profile::flamegraph(&report).map(|svg| (svg, Format::Svg)),
        }
    })
    .await
    .map_err(|e| ApiError::ProfileFailed(e.to_string()))??;
    let response = match sampled {
        (body, Format::Pprof) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (header::CONTENT_DISPOSITION, "attachment; filename=\"profile.pb.gz\""),
            ],
            body,
        )
            .into_response(),
        (body, Format::Svg) => ([(header::CONTENT_TYPE, "image/svg+xml")], body).into_response(),
    };
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanicQuery {
    #[serde(rename = "in")]
    at: String,
}

/// `POST /debug/panic?in=request|writer`: arms a fire drill (202), if they are allowed.
pub async fn panic(
    State(app): State<AppState>,
    query: Result<Query<PanicQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    if !app.fire_drills {
        return Err(ApiError::Disabled("fire drills are off; start draw64 with --fire-drills to allow them"));
    }
    let Query(q) = query?;
    let drill = match q.at.as_str() {
        "request" => Drill::Request,
        "writer" => Drill::Writer,
        other => return Err(ApiError::InvalidQuery(format!("in={other:?}: expected request or writer"))),
    };
    drill::arm(drill);
    tracing::warn!(drill = q.at, "fire drill armed: the next one panics");
    Ok((StatusCode::ACCEPTED, axum::Json(serde_json::json!({ "armed": q.at }))).into_response())
}
