//! Draw64's own metrics, in one place: name, instrument, unit, attributes, meaning. The
//! instruments are built from this table (so code and documentation cannot drift), the
//! operator guide lists it, and a test holds every row against a live Prometheus scrape.
//! Attribute values are always from small fixed sets: never user input.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instrument {
    Counter,
    UpDownCounter,
    Histogram,
    Gauge,
}

#[derive(Debug)]
pub struct MetricDef {
    pub name: &'static str,
    pub instrument: Instrument,
    pub unit: &'static str,
    pub attributes: &'static [&'static str],
    pub description: &'static str,
}

use Instrument::*;

pub const METRICS: &[MetricDef] = &[
    MetricDef {
        name: "draw64.browser.duration",
        instrument: Histogram,
        unit: "s",
        attributes: &["draw64.browser.timing"],
        description: "What pages measured, in seconds, by timing: ttfb, dom_ready, load (navigation), fcp, lcp, inp (web vitals), draw_echo (a command sent to its echo received), canvas_ready (navigation start to the first painted canvas), reconnect (a socket closed to its replacement open).",
    },
    MetricDef {
        name: "draw64.browser.layout_shift",
        instrument: Histogram,
        unit: "1",
        attributes: &[],
        description: "Cumulative Layout Shift that pages measured (a unitless score; under 0.1 is good).",
    },
    MetricDef {
        name: "draw64.browser.socket.events",
        instrument: Counter,
        unit: "{event}",
        attributes: &["draw64.browser.socket.event", "draw64.close.code"],
        description: "WebSocket events that pages saw: connect, reconnect, close (with its close code), resync.",
    },
    MetricDef {
        name: "draw64.browser.errors",
        instrument: Counter,
        unit: "{error}",
        attributes: &["error.type"],
        description: "JavaScript errors and unhandled rejections that pages reported, by error type.",
    },
    MetricDef {
        name: "draw64.browser.reports",
        instrument: Counter,
        unit: "{report}",
        attributes: &["draw64.report.outcome"],
        description: "Real-user-monitoring reports received at POST /rum, by outcome: accepted, invalid, too_large, forbidden, rate_limited.",
    },
    MetricDef {
        name: "draw64.ws.connections",
        instrument: UpDownCounter,
        unit: "{connection}",
        attributes: &[],
        description: "Open WebSocket connections.",
    },
    MetricDef {
        name: "draw64.ws.disconnections",
        instrument: Counter,
        unit: "{connection}",
        attributes: &["draw64.close.reason"],
        description: "WebSocket connections ended, by reason: client, lagged, deleted, shutdown, too_big, silent, stalled (did not read for --send-timeout), protocol (1002, 1007), policy (1008, over its rates), error, panic.",
    },
    MetricDef {
        name: "draw64.ws.messages",
        instrument: Counter,
        unit: "{message}",
        attributes: &["draw64.direction", "draw64.message.type"],
        description: "WebSocket messages received (in: draw, clear_canvas, invalid) and sent (out: image_updated, image_deleted, error).",
    },
    MetricDef {
        name: "draw64.sse.streams",
        instrument: UpDownCounter,
        unit: "{stream}",
        attributes: &[],
        description: "Open /sse/announce streams.",
    },
    MetricDef {
        name: "draw64.images.active",
        instrument: Gauge,
        unit: "{image}",
        attributes: &[],
        description: "Images that exist.",
    },
    MetricDef {
        name: "draw64.users",
        instrument: Gauge,
        unit: "{user}",
        attributes: &[],
        description: "Users connected to every instance (open WebSockets on all images), as /statistics reports; draw64.ws.connections counts this instance's.",
    },
    MetricDef {
        name: "draw64.image.users",
        instrument: Gauge,
        unit: "{user}",
        attributes: &["draw64.image.rank"],
        description: "Users on the busiest images: rank 1 to 10, then 'other' for the rest (bounded; no image ids as labels).",
    },
    MetricDef {
        name: "draw64.commands.applied",
        instrument: Counter,
        unit: "{command}",
        attributes: &["draw64.command.type"],
        description: "Commands committed, by type (draw, clear_canvas).",
    },
    MetricDef {
        name: "draw64.commands.rejected",
        instrument: Counter,
        unit: "{command}",
        attributes: &["draw64.reject.reason"],
        description: "Commands refused, by reason: invalid, not_found, too_large, unavailable.",
    },
    MetricDef {
        name: "draw64.pixels.drawn",
        instrument: Counter,
        unit: "{pixel}",
        attributes: &[],
        description: "Pixels in committed draw commands (inside the canvas).",
    },
    MetricDef {
        name: "draw64.fanout.latency",
        instrument: Histogram,
        unit: "s",
        attributes: &[],
        description: "From a change's commit to its send on one subscriber's socket: one sample per socket write, the oldest event's (the worst of the write).",
    },
    MetricDef {
        name: "draw64.fanout.undelivered",
        instrument: Counter,
        unit: "{event}",
        attributes: &[],
        description: "Events an open WebSocket subscriber was due and not sent (the droppedFanout fault flag).",
    },
    MetricDef {
        name: "draw64.subscriber.lagged",
        instrument: Counter,
        unit: "{subscriber}",
        attributes: &[],
        description: "Subscribers that fell more than 1,024 events behind and were closed with 1013.",
    },
    MetricDef {
        name: "draw64.store.batch.size",
        instrument: Histogram,
        unit: "{operation}",
        attributes: &[],
        description: "Operations per group commit.",
    },
    MetricDef {
        name: "draw64.store.queue.depth",
        instrument: Gauge,
        unit: "{operation}",
        attributes: &[],
        description: "Operations waiting for the writer (saturation of the write path).",
    },
    MetricDef {
        name: "draw64.errors",
        instrument: Counter,
        unit: "{error}",
        attributes: &["draw64.error.source", "error.type"],
        description: "Failures handled away from the HTTP edge, by where (draw64.error.source: ws_command, writer, bus, exporter, panic) and a bounded error.type (commit_failed, lock_failed, ping_failed, timeout, listener_lost, unreadable_change, the exporters' event names, panic). HTTP answers carry error.type in http.server.request.duration.",
    },
    MetricDef {
        name: "draw64.limits.refused",
        instrument: Counter,
        unit: "{refusal}",
        attributes: &["draw64.limit"],
        description: "Refusals by the public port's limits, by draw64.limit: connections, connections_per_client, websockets_per_client, streams_per_client, header_timeout, body_timeout, send_timeout, silent_client, commands, pixels, pixels_per_command, images, persistent, origin, admin_token (docs/operations.md, Running it in public).",
    },
    MetricDef {
        name: "draw64.faults.active",
        instrument: Gauge,
        unit: "{level}",
        attributes: &["feature_flag.key"],
        description: "Each fault flag's level: 0 when off, else its share, amount or 1 (slowCommits and slowFanout: delay in ms times share).",
    },
    MetricDef {
        name: "draw64.http.connections",
        instrument: Gauge,
        unit: "{connection}",
        attributes: &[],
        description: "Connections open on the public port (HTTP, WebSocket and SSE), against --max-connections.",
    },
    MetricDef {
        name: "draw64.panics",
        instrument: Counter,
        unit: "{panic}",
        attributes: &[],
        description: "Panics caught (each is logged with a backtrace).",
    },
    MetricDef {
        name: "draw64.runtime.workers",
        instrument: Gauge,
        unit: "{thread}",
        attributes: &[],
        description: "Tokio worker threads.",
    },
    MetricDef {
        name: "draw64.runtime.tasks",
        instrument: Gauge,
        unit: "{task}",
        attributes: &[],
        description: "Tokio tasks alive.",
    },
    MetricDef {
        name: "draw64.runtime.global_queue.depth",
        instrument: Gauge,
        unit: "{task}",
        attributes: &[],
        description: "Tasks waiting in Tokio's global queue.",
    },
    MetricDef {
        name: "draw64.runtime.worker.utilization",
        instrument: Gauge,
        unit: "1",
        attributes: &[],
        description: "Share of time Tokio workers were busy since the previous collection (0 to 1).",
    },
    MetricDef {
        name: "draw64.host.load_average",
        instrument: Gauge,
        unit: "{thread}",
        attributes: &["draw64.load.window"],
        description: "Host load average over 1m, 5m and 15m (/proc/loadavg).",
    },
];

pub fn def(name: &str) -> &'static MetricDef {
    METRICS.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("metric {name} is not in the registry"))
}

/// The family name the Prometheus exporter derives: dots to underscores, a unit suffix for
/// units it knows (`s` → `_seconds`, `By` → `_bytes`, `1` → `_ratio`), `_total` for counters.
pub fn prometheus_name(m: &MetricDef) -> String {
    let mut name = m.name.replace('.', "_");
    match m.unit {
        "s" => name.push_str("_seconds"),
        "By" => name.push_str("_bytes"),
        "1" => name.push_str("_ratio"),
        _ => {}
    }
    if m.instrument == Counter {
        name.push_str("_total");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_namespaced() {
        for (i, m) in METRICS.iter().enumerate() {
            assert!(m.name.starts_with("draw64."), "{}", m.name);
            assert!(!m.description.is_empty() && !m.unit.is_empty());
            assert!(METRICS[i + 1..].iter().all(|o| o.name != m.name), "{} twice", m.name);
        }
        assert_eq!(prometheus_name(def("draw64.fanout.latency")), "draw64_fanout_latency_seconds");
    }

    #[test]
    fn the_operator_guide_lists_every_metric() {
        let guide = include_str!("../../docs/observability.md");
        for m in METRICS {
            let row = format!("| `{}` | `{}` |", m.name, prometheus_name(m));
            assert!(guide.contains(&row), "docs/observability.md lacks the row for {}", m.name);
            assert!(guide.contains(m.description), "docs/observability.md has another meaning for {}", m.name);
        }
        assert_eq!(prometheus_name(def("draw64.ws.messages")), "draw64_ws_messages_total");
    }
}
