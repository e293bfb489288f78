//! The HTTP server metrics of every request, recorded through instruments bound once to their
//! attributes (OpenTelemetry's bound instruments). Recording with an attribute list makes the
//! SDK sort, deduplicate and hash the list on every call: about 2,400 instructions for each of
//! the three histograms a request feeds. Here a request packs what tells its series apart (its
//! method, route, status, protocol version and error kind) into one integer and finds the bound
//! histograms under it; the attribute list is built only the first time a kind of answer is
//! seen. The kinds are bounded (routes are templates, statuses are the server's own), and past
//! `MAX_KINDS` a request records unbound, as before.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::{OnceLock, RwLock},
};

use opentelemetry::{
    KeyValue,
    metrics::{BoundHistogram, BoundUpDownCounter},
};

use super::metrics::metrics;

/// Whether the answer is one of the server's failures, and how `error.type` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    None,
    Panic,
    /// A 5xx: `error.type` is the status code.
    Status,
}

/// What tells one request's series from another's, as indexes into fixed tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub method: usize,
    pub route: Option<usize>,
    pub protocol: usize,
    pub status: u16,
    pub failure: Failure,
}

impl Answer {
    fn key(&self) -> u64 {
        let route = self.route.map_or(0xff, |r| (r as u64).min(0xfe));
        let failure = match self.failure {
            Failure::None => 0,
            Failure::Panic => 1,
            Failure::Status => 2,
        };
        (self.method as u64 & 0xff)
            | (route << 8)
            | ((self.protocol as u64 & 0xff) << 16)
            | (u64::from(self.status) << 24)
            | (failure << 40)
    }
}

struct Bound {
    duration: BoundHistogram<f64>,
    request_size: BoundHistogram<u64>,
    response_size: BoundHistogram<u64>,
}

/// The keys are already well spread small integers: one multiplication mixes them.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type Kinds = RwLock<HashMap<u64, Bound, BuildHasherDefault<KeyHasher>>>;

/// Far above what the routes, methods and statuses the server answers can make.
const MAX_KINDS: usize = 4096;

fn kinds() -> &'static Kinds {
    static KINDS: OnceLock<Kinds> = OnceLock::new();
    KINDS.get_or_init(Default::default)
}

/// Records one answer: its duration, and the sizes that are known. `attributes` builds the
/// answer's attribute list, called only for a kind not seen before.
pub fn record(
    answer: Answer,
    attributes: impl FnOnce() -> Vec<KeyValue>,
    seconds: f64,
    request_size: Option<u64>,
    response_size: Option<u64>,
) {
    let key = answer.key();
    let write = |bound: &Bound| {
        bound.duration.record(seconds);
        if let Some(size) = request_size {
            bound.request_size.record(size);
        }
        if let Some(size) = response_size {
            bound.response_size.record(size);
        }
    };
    if let Some(bound) = kinds().read().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return write(bound);
    }
    let attributes = attributes();
    let m = metrics();
    let mut map = kinds().write().unwrap_or_else(|e| e.into_inner());
    if map.len() >= MAX_KINDS && !map.contains_key(&key) {
        drop(map);
        m.http_duration.record(seconds, &attributes);
        if let Some(size) = request_size {
            m.http_request_size.record(size, &attributes);
        }
        if let Some(size) = response_size {
            m.http_response_size.record(size, &attributes);
        }
        return;
    }
    let bound = map.entry(key).or_insert_with(|| Bound {
        duration: m.http_duration.bind(&attributes),
        request_size: m.http_request_size.bind(&attributes),
        response_size: m.http_response_size.bind(&attributes),
    });
    write(bound);
}

/// `http.server.active_requests` for a method (by its index among `methods`, at most 16),
/// bound once.
pub fn active(method: usize, methods: &[&'static str]) -> &'static BoundUpDownCounter<i64> {
    static ACTIVE: OnceLock<Vec<BoundUpDownCounter<i64>>> = OnceLock::new();
    let all = ACTIVE.get_or_init(|| {
        methods
            .iter()
            .map(|m| {
                metrics().http_active.bind(&[
                    KeyValue::new(opentelemetry_semantic_conventions::attribute::HTTP_REQUEST_METHOD, *m),
                    KeyValue::new(opentelemetry_semantic_conventions::attribute::URL_SCHEME, "http"),
                ])
            })
            .collect()
    });
    &all[method.min(all.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_of_an_answer_tells_its_key_apart() {
        let a = Answer { method: 3, route: Some(2), protocol: 1, status: 200, failure: Failure::None };
        let others = [
            Answer { method: 4, ..a },
            Answer { route: Some(3), ..a },
            Answer { route: None, ..a },
            Answer { protocol: 2, ..a },
            Answer { status: 201, ..a },
            Answer { failure: Failure::Panic, ..a },
            Answer { failure: Failure::Status, ..a },
        ];
        for other in others {
            assert_ne!(a.key(), other.key(), "{a:?} and {other:?}");
        }
        assert_eq!(a.key(), Answer { ..a }.key());
    }
}
