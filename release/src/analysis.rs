//! The judgement of a canary, with no I/O: the queries it asks Prometheus (the same PromQL as
//! the Argo Rollouts `AnalysisTemplate` in deploy/kubernetes/), the verdict on one measurement,
//! and the server weights that give the canary its share of the traffic.

use std::fmt;

/// The routes compared: the API and the page, not the balancer's health checks nor the
/// long-lived streams (whose "duration" is the connection's life).
pub const ROUTES: &str = r#"http_route!~"/healthz|/readyz|/ws/.*|/sse/.*""#;

/// One measurement's three queries for the instances `selector` picks (a label matcher such as
/// `track="canary"`), over `window` (a PromQL duration such as `10s`).
pub struct Queries {
    pub requests: String,
    pub error_ratio: String,
    pub p99: String,
}

impl Queries {
    pub fn new(selector: &str, window: &str) -> Queries {
        let m = format!("{selector}, {ROUTES}");
        let count = "http_server_request_duration_seconds_count";
        Queries {
            requests: format!("sum(increase({count}{{{m}}}[{window}]))"),
            error_ratio: format!(
                "(sum(rate({count}{{{m}, http_response_status_code=~\"5..\"}}[{window}])) or vector(0)) \
                 / sum(rate({count}{{{m}}}[{window}]))"
            ),
            p99: format!(
                "histogram_quantile(0.99, sum by (le) (rate(http_server_request_duration_seconds_bucket{{{m}}}[{window}])))"
            ),
        }
    }
}

/// What one side (canary or stable) did over a measurement's window. A figure is `None` when
/// Prometheus had no answer (no traffic: a ratio of nothing is no figure, not zero).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Figures {
    pub requests: f64,
    pub error_ratio: Option<f64>,
    pub p99: Option<f64>,
}

/// When a canary fails a measurement, compared with the stable instances over the same window
/// (as Flagger and Argo Rollouts' analyses do, but relative, so that trouble shared by both —
/// the database, the network — is not blamed on the new build).
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// Fewer requests than this and the measurement says nothing: it counts as failed, as a
    /// release nobody exercised is not proven.
    pub min_requests: f64,
    /// The canary's error ratio may exceed the stable's by at most this (0.01: one point).
    pub max_error_increase: f64,
    /// The canary's p99 may be at most this many times the stable's …
    pub max_latency_ratio: f64,
    /// … plus this many seconds, so that a p99 of 3 ms against 1 ms is not a failure.
    pub latency_slack: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Pass,
    /// Each figure that failed, with its threshold.
    Fail(Vec<String>),
}

impl Verdict {
    pub fn passed(&self) -> bool {
        matches!(self, Verdict::Pass)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Pass => f.write_str("pass"),
            Verdict::Fail(reasons) => write!(f, "fail: {}", reasons.join("; ")),
        }
    }
}

/// The verdict on one measurement. `stable` is the stable instances' figures over the same
/// window, or their last ones with traffic when they take none (the last step, at 100 %).
pub fn judge(canary: &Figures, stable: Option<&Figures>, t: &Thresholds) -> Verdict {
    let mut failed = Vec::new();
    let stable_errors = stable.and_then(|s| s.error_ratio).unwrap_or(0.0);
    let errors = canary.error_ratio.unwrap_or(0.0);
    if errors > stable_errors + t.max_error_increase {
        failed.push(format!("error_ratio {errors:.4} > stable {stable_errors:.4} + {:.4}", t.max_error_increase));
    }
    if let (Some(p99), Some(stable_p99)) = (canary.p99, stable.and_then(|s| s.p99)) {
        let limit = stable_p99 * t.max_latency_ratio + t.latency_slack;
        if p99 > limit {
            failed.push(format!(
                "p99 {p99:.4} s > {:.2} x stable {stable_p99:.4} s + {:.3} s = {limit:.4} s",
                t.max_latency_ratio, t.latency_slack
            ));
        }
    }
    if canary.requests < t.min_requests {
        failed.push(format!(
            "requests {:.0} < {:.0}: too little traffic on the canary to judge it",
            canary.requests, t.min_requests
        ));
    }
    if failed.is_empty() { Verdict::Pass } else { Verdict::Fail(failed) }
}

/// HAProxy weights (0..=256) for a canary taking `percent` of the traffic beside `stables`
/// equal instances: (the canary's, each stable's). Exact whenever the weights fit.
pub fn weights(percent: u32, stables: u32) -> (u32, u32) {
    let percent = percent.min(100);
    let stables = stables.max(1);
    let (canary, stable) = (percent * stables, 100 - percent);
    let scale = canary.max(stable).div_ceil(256).max(1);
    let (c, s) = (canary.div_ceil(scale), stable.div_ceil(scale));
    // Rounding up keeps a nonzero share nonzero; a zero stays zero.
    (if canary == 0 { 0 } else { c }, if stable == 0 { 0 } else { s })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds =
        Thresholds { min_requests: 20.0, max_error_increase: 0.01, max_latency_ratio: 1.5, latency_slack: 0.05 };

    fn figures(requests: f64, errors: f64, p99: f64) -> Figures {
        Figures { requests, error_ratio: Some(errors), p99: Some(p99) }
    }

    #[test]
    fn a_canary_like_the_stable_passes() {
        assert_eq!(judge(&figures(100.0, 0.0, 0.010), Some(&figures(900.0, 0.0, 0.008)), &T), Verdict::Pass);
        // Small absolute latencies are within the slack even at several times the stable's.
        assert!(judge(&figures(100.0, 0.0, 0.004), Some(&figures(900.0, 0.0, 0.001)), &T).passed());
        // Errors shared with the stable are not the canary's fault.
        assert!(judge(&figures(100.0, 0.30, 0.01), Some(&figures(900.0, 0.295, 0.01)), &T).passed());
    }

    #[test]
    fn each_failing_figure_is_named_with_its_threshold() {
        let Verdict::Fail(reasons) = judge(&figures(100.0, 0.2, 0.5), Some(&figures(900.0, 0.0, 0.01)), &T) else {
            panic!("should fail")
        };
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].starts_with("error_ratio 0.2000 > stable 0.0000 + 0.0100"), "{reasons:?}");
        assert!(reasons[1].starts_with("p99 0.5000 s > 1.50 x stable 0.0100 s + 0.050 s"), "{reasons:?}");
    }

    #[test]
    fn too_little_traffic_is_no_proof() {
        let v = judge(&Figures { requests: 3.0, error_ratio: None, p99: None }, None, &T);
        assert!(matches!(&v, Verdict::Fail(r) if r.len() == 1 && r[0].contains("too little traffic")), "{v:?}");
        // Failing figures come first, even on little traffic.
        let v = judge(&figures(13.0, 0.45, 0.01), Some(&figures(170.0, 0.0, 0.01)), &T);
        assert!(
            matches!(&v, Verdict::Fail(r) if r[0].starts_with("error_ratio") && r[1].contains("too little")),
            "{v:?}"
        );
    }

    #[test]
    fn without_a_stable_figure_only_the_errors_are_held_to_the_margin() {
        assert!(judge(&figures(100.0, 0.005, 9.0), None, &T).passed());
        assert!(!judge(&figures(100.0, 0.02, 0.01), None, &T).passed());
    }

    #[test]
    fn weights_give_the_share_asked_for() {
        for stables in 1..=6u32 {
            for percent in [1, 10, 25, 50, 90, 100] {
                let (c, s) = weights(percent, stables);
                assert!(c <= 256 && s <= 256);
                let share = f64::from(c) / f64::from(c + s * stables);
                assert!(
                    (share - f64::from(percent) / 100.0).abs() < 0.02,
                    "{percent}% of {stables}: {c}/{s} gives {share}"
                );
            }
        }
        assert_eq!(weights(10, 2), (20, 90));
        assert_eq!(weights(100, 2), (200, 0));
        assert_eq!(weights(0, 2), (0, 100));
    }

    #[test]
    fn the_queries_name_the_selector_and_the_window() {
        let q = Queries::new(r#"track="canary""#, "10s");
        assert_eq!(
            q.requests,
            r#"sum(increase(http_server_request_duration_seconds_count{track="canary", http_route!~"/healthz|/readyz|/ws/.*|/sse/.*"}[10s]))"#
        );
        assert!(q.error_ratio.contains(r#"http_response_status_code=~"5.."}[10s]"#), "{}", q.error_ratio);
        assert!(q.p99.starts_with(
            "histogram_quantile(0.99, sum by (le) (rate(http_server_request_duration_seconds_bucket{track=\"canary\""
        ));
    }
}
