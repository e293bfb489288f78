//! `/openapi.json`, generated from the handlers' annotations, and `/docs`, Swagger UI served
//! from files compiled into the binary (no CDN, works offline).

use axum::response::IntoResponse as _;
use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::domain::browser::{MAX_EVENTS, MAX_KIND, MAX_MESSAGE};

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

/// The API document: what utoipa derives from the handlers, with the request bodies whose
/// rules it cannot express written as JSON Schema (OpenAPI 3.1), so the document states every
/// constraint the server enforces (schemathesis holds the server to it in CI).
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the API document serialises");
    let schemas = &mut doc["components"]["schemas"];
    let byte = json!({"type": "integer", "minimum": 0, "maximum": 255});
    let coordinate = json!({"type": "integer", "format": "int64", "description": "outside 0..63: skipped"});
    schemas["Pixel"] = json!({
        "type": "array",
        "description": "[x, y, r, g, b]",
        "prefixItems": [coordinate, coordinate, byte, byte, byte],
        "items": false,
        "minItems": 5,
        "maxItems": 5,
    });
    let pixels = |max: Option<usize>| {
        let mut array = json!({"type": "array", "items": {"$ref": "#/components/schemas/Pixel"}});
        if let Some(max) = max {
            array["maxItems"] = json!(max);
        }
        array
    };
    schemas["CommandRequest"] = json!({
        "type": "object",
        "required": ["command"],
        "properties": {
            "command": {"oneOf": [
                {"type": "object", "required": ["command_type", "values"], "properties": {
                    "command_type": {"const": "draw"},
                    "values": pixels(Some(4096)),
                }},
                {"type": "object", "required": ["command_type"], "properties": {
                    "command_type": {"const": "clear_canvas"},
                    "values": {"anyOf": [{"type": "null"}, pixels(None)]},
                }},
            ]},
            "traceparent": {"type": ["string", "null"], "description": "W3C trace context (WebSocket frames)"},
        },
    });
    let timing = |names: Value, max: f64, trace: bool| {
        let mut properties = json!({
            "type": {"const": "timing"},
            "name": names,
            "value": {"type": "number", "minimum": 0, "maximum": max},
        });
        if trace {
            properties["trace_id"] = json!({"anyOf": [{"type": "null"}, {
                "type": "string", "pattern": "^[0-9a-f]{32}$", "not": {"const": "0".repeat(32)},
            }]});
        }
        json!({"type": "object", "additionalProperties": false, "required": ["type", "name", "value"], "properties": properties})
    };
    let durations = json!({"enum": ["ttfb", "dom_ready", "load", "fcp", "lcp", "inp", "canvas_ready", "reconnect"]});
    schemas["BrowserReport"] = json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["session", "events"],
        "properties": {
            "session": {"type": "string", "pattern": "^[0-9a-fA-F]{8,32}$"},
            "events": {"type": "array", "minItems": 1, "maxItems": MAX_EVENTS, "items": {"oneOf": [
                timing(durations, 600_000.0, false),
                timing(json!({"const": "draw_echo"}), 600_000.0, true),
                timing(json!({"const": "cls"}), 100.0, false),
                {"type": "object", "additionalProperties": false, "required": ["type", "event"], "properties": {
                    "type": {"const": "socket"},
                    "event": {"enum": ["connect", "reconnect", "close", "resync"]},
                    "code": {"type": ["integer", "null"], "minimum": 0, "maximum": 65535},
                }},
                {"type": "object", "additionalProperties": false, "required": ["type", "kind", "message"], "properties": {
                    "type": {"const": "error"},
                    "kind": {"type": "string", "maxLength": MAX_KIND},
                    "message": {"type": "string", "maxLength": MAX_MESSAGE},
                }},
            ]}},
        },
    });
    doc
}

async fn serve_document() -> axum::response::Response {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = DOCUMENT.get_or_init(|| document().to_string()).as_str();
    ([(axum::http::header::CONTENT_TYPE, "application/json")], text).into_response()
}

pub fn router() -> axum::Router<AppState> {
    let ui = SwaggerUi::new("/docs").config(utoipa_swagger_ui::Config::from("/openapi.json"));
    let docs: axum::Router<AppState> =
        axum::Router::<AppState>::from(ui).route("/openapi.json", axum::routing::get(serve_document));
    docs.layer(axum::middleware::map_response(|mut res: axum::response::Response| async move {
        let html =
            res.headers().get(axum::http::header::CONTENT_TYPE).is_some_and(|t| t.as_bytes().starts_with(b"text/html"));
        if html {
            super::middleware::html_headers(&mut res, super::middleware::DOCS_POLICY);
        }
        res
    }))
}
