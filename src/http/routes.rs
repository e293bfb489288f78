//! Every route Draw64 serves, written once: both routers are built from these tables, the
//! span names and the `http.route` attribute come from them (a bounded set of `&'static str`,
//! no allocation per request), and a test holds the OpenAPI document to them.

use std::sync::OnceLock;

use axum::routing::{MethodRouter, get, post};

use super::{AppState, api, debug, drain, faults, health, metrics_port, rum, sse, web, ws};

pub struct Route {
    pub template: &'static str,
    pub handlers: MethodRouter<AppState>,
    /// Described in the OpenAPI document (`/openapi.json`): held to it by a test.
    #[cfg_attr(not(test), allow(dead_code))]
    pub documented: bool,
}

fn route(template: &'static str, handlers: MethodRouter<AppState>, documented: bool) -> Route {
    Route { template, handlers, documented }
}

/// The public port.
pub fn public() -> Vec<Route> {
    vec![
        route("/", get(web::index), false),
        route("/static/{file}", get(web::asset), false),
        route("/images", get(api::list).post(api::create_random), true),
        route("/images/{image_id}", get(api::get_or_png).post(api::create).put(api::put).delete(api::delete), true),
        route("/images/{image_id}/data", get(api::data), true),
        route("/statistics", get(api::statistics), true),
        route("/ws/images/{image_id}", get(ws::upgrade), false),
        route("/sse/announce", get(sse::announce), false),
        route("/rum", post(rum::report), true),
        route("/healthz", get(health::healthz), true),
        route("/readyz", get(health::readyz), true),
        route("/admin/faults", get(faults::list), false),
        route("/admin/faults/{flag}", axum::routing::put(faults::set).delete(faults::clear), false),
        route("/admin/drain", post(drain::drain), false),
    ]
}

/// The metrics port: the exposition, health for the scraper's network, and the operators'
/// tools (profiles, fire drills).
pub fn metrics_port() -> Vec<Route> {
    vec![
        route("/metrics", get(metrics_port::metrics), false),
        route("/healthz", get(health::healthz), false),
        route("/readyz", get(health::readyz), false),
        route("/debug/pprof/profile", get(debug::profile), false),
        route("/debug/panic", post(debug::panic), false),
    ]
}

/// Templates served outside the tables: the PNG form of an image (axum's dynamic segment
/// cannot carry a suffix, so it shares `/images/{image_id}`; the API documents it apart) and
/// Swagger UI's routes (`docs`).
const OTHER: &[&str] = &["/images/{image_id}.png", "/openapi.json", "/docs", "/docs/", "/docs/{*rest}"];

/// Every template either port can match, each once.
pub fn templates() -> &'static [&'static str] {
    static TEMPLATES: OnceLock<Vec<&'static str>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let mut all: Vec<&'static str> = Vec::new();
        let tables = public().into_iter().chain(metrics_port()).map(|r| r.template);
        for template in tables.chain(OTHER.iter().copied()) {
            if !all.contains(&template) {
                all.push(template);
            }
        }
        all
    })
}

#[cfg(test)]
mod tests {
    use utoipa::OpenApi;

    use super::*;

    #[test]
    fn the_openapi_document_describes_exactly_the_documented_routes() {
        let doc = super::super::docs::ApiDoc::openapi();
        let documented: Vec<&str> = doc.paths.paths.keys().map(String::as_str).collect();
        for path in &documented {
            assert!(templates().contains(path), "{path} is documented but not served");
        }
        for route in public().iter().filter(|r| r.documented) {
            assert!(documented.contains(&route.template), "{} is served but not documented", route.template);
        }
        assert!(documented.contains(&"/images/{image_id}.png"));
    }

    #[test]
    fn templates_are_listed_once() {
        let all = templates();
        assert!(all.len() >= public().len() + OTHER.len());
        for t in all {
            assert_eq!(all.iter().filter(|x| *x == t).count(), 1, "{t}");
        }
    }
}
