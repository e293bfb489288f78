//! The REST interface, path for path and shape for shape the original Draw64's.

use axum::{
    Json,
    extract::{Path, State, rejection::PathRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use super::{
    AppState,
    caller::Caller,
    error::{ApiError, Detail, count_rejection},
    extract::{CommandBody, ImagePath, refuse_non_json},
};
use crate::{
    domain::{ImageId, encode_png},
    service::Statistics,
};

#[derive(Serialize, ToSchema)]
pub struct ImageInfo {
    /// `^[a-zA-Z0-9-]+$`, at most 30 characters.
    #[schema(example = "ambre-042", pattern = "^[a-zA-Z0-9-]+$", min_length = 1, max_length = 30)]
    pub image_id: String,
}

impl From<&ImageId> for ImageInfo {
    fn from(id: &ImageId) -> Self {
        Self { image_id: id.to_string() }
    }
}

/// The body of `PUT /images/{image_id}` and of every WebSocket frame a client sends.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only: the parser lives in `domain::command`
pub struct CommandRequest {
    command: CommandSpec,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CommandSpec {
    /// `draw` or `clear_canvas`.
    #[schema(example = "draw")]
    command_type: String,
    /// For `draw`: pixels `[x, y, r, g, b]`; x and y outside 0..63 are skipped, r, g, b must be
    /// 0..255.
    #[schema(example = json!([[3, 4, 255, 0, 0]]), nullable = false, max_items = 4096)]
    values: Option<Vec<Pixel>>,
}

/// `[x, y, r, g, b]` (its exact schema is written in `docs::document`: utoipa cannot say
/// "five integers, the last three 0 to 255").
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Pixel(Vec<i64>);

#[utoipa::path(get, path = "/images", tag = "images",
    responses((status = 200, description = "Every image", body = [ImageInfo])))]
pub async fn list(State(app): State<AppState>) -> Json<Vec<ImageInfo>> {
    Json(app.service.list().iter().map(ImageInfo::from).collect())
}

#[utoipa::path(post, path = "/images", tag = "images",
    responses(
        (status = 201, description = "Created with a random readable id", body = ImageInfo),
        (status = 403, description = "Sent by a page of another origin (--allowed-origins)", body = Detail),
        (status = 409, description = "The active-image limit is reached", body = Detail),
        (status = 422, description = "A body declared as a form or text", body = Detail),
        (status = 429, description = "Over --client-images-per-minute; Retry-After says when", body = Detail),
        (status = 503, description = "Storage unavailable; nothing changed", body = Detail)))]
pub async fn create_random(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<ImageInfo>), ApiError> {
    refuse_non_json(&headers)?;
    caller.may_create(&app)?;
    let id = app.service.create(None).await?;
    Ok((StatusCode::CREATED, Json(ImageInfo::from(&id))))
}

#[utoipa::path(post, path = "/images/{image_id}", tag = "images", params(ImageIdParam),
    responses(
        (status = 201, description = "Created", body = ImageInfo),
        (status = 403, description = "Sent by a page of another origin (--allowed-origins)", body = Detail),
        (status = 409, description = "The id exists, or the active-image limit is reached", body = Detail),
        (status = 422, description = "Invalid image id, or a body declared as a form or text", body = Detail),
        (status = 429, description = "Over --client-images-per-minute; Retry-After says when", body = Detail),
        (status = 503, description = "Storage unavailable; nothing changed", body = Detail)))]
pub async fn create(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ImagePath(id): ImagePath,
) -> Result<(StatusCode, Json<ImageInfo>), ApiError> {
    refuse_non_json(&headers)?;
    caller.may_create(&app)?;
    let id = app.service.create(Some(id)).await?;
    Ok((StatusCode::CREATED, Json(ImageInfo::from(&id))))
}

/// `GET /images/{image_id}` and `GET /images/{image_id}.png` share one axum route: a dynamic
/// segment cannot carry a suffix. A `.` is never part of a valid id, so there is no ambiguity.
pub async fn get_or_png(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(raw) = path?;
    match raw.strip_suffix(".png") {
        Some(id) => png(&app, ImageId::parse(id)?).await,
        None => get(&app, ImageId::parse(&raw)?).await,
    }
}

#[utoipa::path(get, path = "/images/{image_id}", tag = "images", params(ImageIdParam),
    responses(
        (status = 200, description = "The image exists", body = ImageInfo),
        (status = 404, description = "No such image", body = Detail),
        (status = 422, description = "Invalid image id", body = Detail)))]
async fn get(app: &AppState, id: ImageId) -> Result<Response, ApiError> {
    if !app.service.exists(&id) {
        return Err(crate::service::ServiceError::NotFound.into());
    }
    Ok(Json(ImageInfo::from(&id)).into_response())
}

#[utoipa::path(get, path = "/images/{image_id}.png", tag = "images", params(ImageIdParam),
    responses(
        (status = 200, description = "64×64 RGB PNG; pixel (x, y) at column x, row y", content_type = "image/png", body = Vec<u8>),
        (status = 404, description = "No such image", body = Detail),
        (status = 422, description = "Invalid image id", body = Detail)))]
async fn png(app: &AppState, id: ImageId) -> Result<Response, ApiError> {
    let canvas = app.service.committed_canvas(&id).await.ok_or(crate::service::ServiceError::NotFound)?;
    if let Some(delay) = crate::faults::png_delay() {
        use opentelemetry::trace::TraceContextExt as _;
        crate::faults::mark_span(&opentelemetry::Context::current().span(), crate::faults::Fault::SlowPng);
        tokio::time::sleep(delay).await;
    }
    Ok(([(header::CONTENT_TYPE, "image/png")], encode_png(&canvas)).into_response())
}

#[utoipa::path(get, path = "/images/{image_id}/data", tag = "images", params(ImageIdParam),
    responses(
        (status = 200, description = "64 arrays (one per x) of 64 [r, g, b] (one per y): data[x][y]", body = Vec<Vec<[u8; 3]>>),
        (status = 404, description = "No such image", body = Detail),
        (status = 422, description = "Invalid image id", body = Detail)))]
pub async fn data(State(app): State<AppState>, ImagePath(id): ImagePath) -> Result<Response, ApiError> {
    let canvas = app.service.committed_canvas(&id).await.ok_or(crate::service::ServiceError::NotFound)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], canvas.to_json_columns()).into_response())
}

#[utoipa::path(put, path = "/images/{image_id}", tag = "images", params(ImageIdParam),
    request_body(content = CommandRequest, description = "No Content-Type is read as JSON"),
    responses(
        (status = 200, description = "Applied and durable; pushed to the image's WebSockets", body = ()),
        (status = 401, description = "A clear_canvas without the admin token (when one is set)", body = Detail),
        (status = 403, description = "Another origin's page, or a wrong admin token", body = Detail),
        (status = 404, description = "No such image", body = Detail),
        (status = 405, description = "The PNG form of an image can only be read", body = Detail),
        (status = 408, description = "The body did not arrive within --body-timeout", body = Detail),
        (status = 413, description = "Body over 1 MiB", body = Detail),
        (status = 422, description = "Invalid id, JSON or command (or over --max-pixels-per-command); nothing changed", body = Detail),
        (status = 429, description = "Over the client's command or pixel rate; Retry-After says when", body = Detail),
        (status = 503, description = "Storage unavailable; nothing changed", body = Detail)))]
pub async fn put(
    State(app): State<AppState>,
    caller: Result<Caller, ApiError>,
    ImagePath(id): ImagePath,
    body: Result<CommandBody, ApiError>,
) -> Result<Json<()>, ApiError> {
    let result = async {
        let caller = caller?;
        let CommandBody(command) = body?;
        caller.admit(&app, &command)?;
        app.service.apply(id, command).await.map_err(ApiError::from)
    }
    .await;
    result.inspect_err(count_rejection)?;
    Ok(Json(()))
}

#[utoipa::path(delete, path = "/images/{image_id}", tag = "images", params(ImageIdParam),
    responses(
        (status = 200, description = "Deleted; its WebSockets get image_deleted and close 4404", body = ()),
        (status = 401, description = "No admin token (when one is set)", body = Detail),
        (status = 403, description = "Another origin's page, or a wrong admin token", body = Detail),
        (status = 404, description = "No such image", body = Detail),
        (status = 405, description = "The PNG form of an image can only be read", body = Detail),
        (status = 422, description = "Invalid image id", body = Detail),
        (status = 503, description = "Storage unavailable; nothing changed", body = Detail)))]
pub async fn delete(
    State(app): State<AppState>,
    caller: Caller,
    ImagePath(id): ImagePath,
) -> Result<Json<()>, ApiError> {
    caller.require_admin(&app)?;
    app.service.delete(id).await?;
    Ok(Json(()))
}

#[utoipa::path(get, path = "/statistics", tag = "statistics",
    responses((status = 200, description = "Counters (kept across restarts) and the live user count", body = Statistics)))]
pub async fn statistics(State(app): State<AppState>) -> Json<Statistics> {
    Json(app.service.statistics())
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct ImageIdParam {
    /// `^[a-zA-Z0-9-]+$`, at most 30 characters; anything else is a 422.
    #[param(pattern = "^[a-zA-Z0-9-]+$", min_length = 1, max_length = 30)]
    image_id: String,
}
