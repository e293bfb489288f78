//! The service's state as observable gauges, read when metrics are collected.

use opentelemetry::{KeyValue, global};

use super::Service;
use crate::telemetry::{metrics::registry_gauge, registry::def};

/// How many images get their own rank in `draw64.image.users`; the rest are summed as `other`.
const RANKED: usize = 10;
const RANKS: [&str; RANKED] = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];

pub fn register(service: &Service) {
    let meter = global::meter("draw64");
    let gauge = |name: &'static str, read: fn(&Service) -> u64| {
        let service = service.clone();
        registry_gauge(&meter, name, move || read(&service));
    };
    gauge("draw64.images.active", |s| s.image_count() as u64);
    gauge("draw64.users", Service::user_count);
    gauge("draw64.store.queue.depth", |s| s.queue_depth() as u64);

    let d = def("draw64.image.users");
    let service = service.clone();
    meter
        .u64_observable_gauge(d.name)
        .with_unit(d.unit)
        .with_description(d.description)
        .with_callback(move |o| {
            let users = service.users_per_image();
            for (rank, n) in RANKS.iter().zip(&users) {
                o.observe(*n, &[KeyValue::new("draw64.image.rank", *rank)]);
            }
            o.observe(users.iter().skip(RANKED).sum(), &[KeyValue::new("draw64.image.rank", "other")]);
        })
        .build();
}
