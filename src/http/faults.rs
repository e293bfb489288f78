//! The fault flags over HTTP (`GET /admin/faults`, `PUT` and `DELETE /admin/faults/{flag}`),
//! for an admin only: a setting here wins over the flag file until it is deleted. Without an
//! admin token configured the switches are off, as anyone could otherwise break the service.

use axum::{
    Json,
    extract::{Path, State},
};
use serde_json::{Value, json};

use super::{AppState, caller::Caller, error::ApiError, extract::TimedBody};
use crate::faults::{self, Fault, Setting, Source};

fn admit(caller: &Caller, app: &AppState) -> Result<(), ApiError> {
    caller.require_operator(app, "Fault flags are switched over HTTP only with an admin token (DRAW64_ADMIN_TOKEN).")
}

/// Every flag: its value in force (null when off) and where it came from.
fn listing() -> Value {
    let active = faults::active();
    let flags: serde_json::Map<String, Value> = Fault::ALL
        .iter()
        .map(|fault| {
            let entry = match active.get(fault) {
                Some((setting, source)) => json!({
                    "value": setting.to_json(),
                    "source": match source { Source::File(_) => "file", Source::Admin => "admin" },
                    "variant": source.variant(),
                }),
                None => json!({"value": null, "takes": fault.value_shape()}),
            };
            (fault.key().to_owned(), entry)
        })
        .collect();
    json!({ "flags": flags })
}

pub async fn list(State(app): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    admit(&caller, &app)?;
    Ok(Json(listing()))
}

fn fault(key: &str) -> Result<Fault, ApiError> {
    Fault::from_key(key).ok_or_else(|| ApiError::UnknownFault(key.to_owned()))
}

/// `{"value": …}`, of the shape the flag takes (as a flag file's variant would be).
pub async fn set(
    State(app): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
    TimedBody(body): TimedBody,
) -> Result<Json<Value>, ApiError> {
    admit(&caller, &app)?;
    let fault = fault(&key)?;
    let body: Value = serde_json::from_slice(&body).map_err(|e| ApiError::InvalidFault(format!("not JSON: {e}")))?;
    let value = body
        .get("value")
        .ok_or_else(|| ApiError::InvalidFault(format!(r#"send {{"value": …}}, {}"#, fault.value_shape())))?;
    let setting = Setting::parse(fault, value).map_err(ApiError::InvalidFault)?;
    tracing::warn!(feature_flag.key = fault.key(), client.address = %caller.client, "fault flag set over /admin/faults");
    faults::set_by_admin(fault, Some(setting));
    Ok(Json(listing()))
}

pub async fn clear(
    State(app): State<AppState>,
    caller: Caller,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admit(&caller, &app)?;
    let fault = fault(&key)?;
    tracing::warn!(feature_flag.key = fault.key(), client.address = %caller.client, "fault flag given back to the file over /admin/faults");
    faults::set_by_admin(fault, None);
    Ok(Json(listing()))
}
