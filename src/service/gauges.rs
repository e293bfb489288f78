//! The service's state as observable gauges, read when metrics are collected.

use opentelemetry::{KeyValue, global};
use opentelemetry_semantic_conventions::{attribute as attr, metric as semconv};

use super::Service;
use crate::telemetry::metrics::{registry_gauge, registry_gauge_u64};

/// How many images get their own rank in `draw64.image.users`; the rest are summed as `other`.
const RANKED: usize = 10;
const RANKS: [&str; RANKED] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];

pub fn register(service: &Service, pool_size: usize) {
    let meter = global::meter("draw64");
    let gauge = |name: &'static str, read: fn(&Service) -> u64| {
        let service = service.clone();
        registry_gauge(&meter, name, move || read(&service));
    };
    gauge("draw64.images.active", |s| s.image_count() as u64);
    gauge("draw64.users", Service::user_count);
    gauge("draw64.store.queue.depth", |s| s.queue_depth() as u64);

    // The store's connections, as the database-client conventions count them. SQLite has one,
    // owned by the writer: `used` while it commits, `idle` otherwise. Pushed metrics only: the
    // name ends in `.count` (see `telemetry::metrics::push_enabled`).
    let service_db = service.clone();
    if crate::telemetry::metrics::push_enabled() {
        meter
            .i64_observable_up_down_counter(semconv::DB_CLIENT_CONNECTION_COUNT)
            .with_unit("{connection}")
            .with_description("Database connections by state.")
            .with_callback(move |o| {
                let busy = service_db.store_busy();
                for (state, n) in [("used", i64::from(busy)), ("idle", i64::from(!busy))] {
                    o.observe(
                        n,
                        &[
                            KeyValue::new(attr::DB_CLIENT_CONNECTION_POOL_NAME, "draw64-writer"),
                            KeyValue::new(attr::DB_CLIENT_CONNECTION_STATE, state),
                        ],
                    );
                }
            })
            .build();
    }
    meter
        .i64_observable_up_down_counter(semconv::DB_CLIENT_CONNECTION_MAX)
        .with_unit("{connection}")
        .with_description("Most database connections the pool may hold.")
        .with_callback(move |o| {
            o.observe(pool_size as i64, &[KeyValue::new(attr::DB_CLIENT_CONNECTION_POOL_NAME, "draw64-writer")])
        })
        .build();

    let service = service.clone();
    registry_gauge_u64(&meter, "draw64.image.users", move |o| {
        let users = service.users_per_image();
        for (rank, n) in RANKS.iter().zip(&users) {
            o.observe(*n, &[KeyValue::new("draw64.image.rank", *rank)]);
        }
        o.observe(users.iter().skip(RANKED).sum(), &[KeyValue::new("draw64.image.rank", "other")]);
    });
}
