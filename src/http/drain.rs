//! `POST /admin/drain`: an admin retires this instance, as a release controller does with a
//! canary it rolls back or replaces. The drain is a signal's (readiness 503 at once, answers
//! close their connections for the drain grace, then the process exits 0), except that the
//! WebSockets are closed with 1012 (service restart), which tells pages to reconnect: the
//! balancer sends them to another instance.

use axum::{Json, extract::State, http::StatusCode};
use serde_json::{Value, json};

use super::{AppState, caller::Caller, error::ApiError};

pub async fn drain(State(app): State<AppState>, caller: Caller) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require_operator(&app, "Retiring the instance over HTTP needs an admin token (DRAW64_ADMIN_TOKEN).")?;
    if app.lifecycle.retire() {
        tracing::warn!(client.address = %caller.client, "retired over /admin/drain: draining, then exiting");
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({"detail": "Draining: readiness is 503; WebSockets will be closed with 1012, then the process exits."}),
        ),
    ))
}
