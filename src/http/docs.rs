//! `/openapi.json`, generated from the handlers' annotations, and `/docs`, Swagger UI served
//! from files compiled into the binary (no CDN, works offline).

use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use super::{AppState, api, health, rum};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Draw64",
        description = "A real-time collaborative 64×64 pixel canvas. \
        WebSocket: `GET /ws/images/{image_id}` (send the PUT body as text frames; receive \
        `image_updated`, `image_deleted` and `error` events). Server-Sent Events: `GET /sse/announce`."
    ),
    paths(
        api::list,
        api::create_random,
        api::create,
        api::get,
        api::png,
        api::data,
        api::put,
        api::delete,
        api::statistics,
        health::healthz,
        health::readyz,
        rum::report
    )
)]
pub struct ApiDoc;

pub fn router() -> axum::Router<AppState> {
    let docs: axum::Router<AppState> = SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()).into();
    docs.layer(axum::middleware::map_response(|mut res: axum::response::Response| async move {
        let html = res.headers().get(axum::http::header::CONTENT_TYPE).is_some_and(|t| t.as_bytes().starts_with(b"text/html"));
        if html {
            super::middleware::html_headers(&mut res, super::middleware::DOCS_POLICY);
        }
        res
    }))
}
