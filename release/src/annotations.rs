//! The release as Prometheus sees it, so dashboards mark it: the canary's share of the traffic
//! and each decision, with the time it was made, on the controller's own `/metrics`.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{Encoder, GaugeVec, Opts, Registry, TextEncoder};

#[derive(Clone)]
pub struct Annotations {
    registry: Registry,
    share: GaugeVec,
    decision: GaugeVec,
    release: String,
}

impl Annotations {
    pub fn new(release: &str) -> Annotations {
        let registry = Registry::new();
        let share = GaugeVec::new(
            Opts::new("draw64_release_canary_share", "The share of the traffic the canary's weights give it, 0 to 1."),
            &["release"],
        )
        .expect("a valid metric");
        let decision = GaugeVec::new(
            Opts::new(
                "draw64_release_decision_timestamp_seconds",
                "When the release controller decided: step_passed, step_failed, promoted, rolled_back or finished (Unix time).",
            ),
            &["release", "step", "decision"],
        )
        .expect("a valid metric");
        registry.register(Box::new(share.clone())).expect("registered once");
        registry.register(Box::new(decision.clone())).expect("registered once");
        Annotations { registry, share, decision, release: release.to_owned() }
    }

    pub fn share(&self, share: f64) {
        self.share.with_label_values(&[&self.release]).set(share);
    }

    pub fn decided(&self, step: &str, decision: &str) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        self.decision.with_label_values(&[&self.release, step, decision]).set(now);
    }

    pub fn exposition(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding does not fail");
        String::from_utf8(out).expect("the exposition is UTF-8")
    }
}
