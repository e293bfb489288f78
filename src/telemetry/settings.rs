//! The standard `OTEL_*` variables, read strictly: an unknown value is a startup error that
//! names the variable. (The specification says to warn and ignore; a typo that silently turns
//! tracing off is worse than a refusal to start, so we deviate on purpose.)

use std::{net::SocketAddr, time::Duration};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exporter {
    Otlp,
    Console,
    Prometheus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub service_name: String,
    pub traces: Vec<Exporter>,
    pub metrics: Vec<Exporter>,
    pub logs: Vec<Exporter>,
    pub protocol: Protocol,
    pub sampler: Sampler,
    pub metric_interval: Duration,
    /// Where the Prometheus exposition listens, when metrics include `prometheus`.
    pub prometheus_addr: SocketAddr,
    /// Continuous profiling, when `OTEL_PROFILES_EXPORTER=otlp` (Draw64's own variables while
    /// the specification has none for profiles).
    pub profiles: Option<Profiles>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Profiles {
    /// The full URL: `OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT`, or `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (with `/v1development/profiles` appended for HTTP), or the OTLP default.
    pub endpoint: String,
    pub protocol: Protocol,
    /// One profile per period: `OTEL_PROFILES_EXPORT_INTERVAL` in milliseconds (10 s).
    pub interval: Duration,
    /// `OTEL_EXPORTER_OTLP_PROFILES_TIMEOUT`, or `OTEL_EXPORTER_OTLP_TIMEOUT` (10 s).
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{variable}={value:?} is not valid: {reason}")]
pub struct SettingsError {
    pub variable: String,
    pub value: String,
    pub reason: String,
}

fn invalid(variable: &str, value: &str, reason: impl Into<String>) -> SettingsError {
    SettingsError { variable: variable.into(), value: value.into(), reason: reason.into() }
}

pub const DEFAULT_PROMETHEUS_ADDR: &str = "127.0.0.1:9464";

impl Settings {
    /// `metrics_listen` is `--metrics-listen`, which wins over `OTEL_EXPORTER_PROMETHEUS_HOST`
    /// and `_PORT`. `env` looks a variable up (the process environment in production).
    pub fn from_env(
        env: impl Fn(&str) -> Option<String>,
        metrics_listen: Option<SocketAddr>,
    ) -> Result<Self, SettingsError> {
        let get = |name: &str| env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        // Only chooses the defaults: the exporters read it again themselves (with the
        // per-signal variants).
        let endpoint = get("OTEL_EXPORTER_OTLP_ENDPOINT");
        let push_default: &[Exporter] = if endpoint.is_some() { &[Exporter::Otlp] } else { &[] };
        let traces = exporters(&get, "OTEL_TRACES_EXPORTER", push_default, &["otlp", "console", "none"])?;
        let logs = exporters(&get, "OTEL_LOGS_EXPORTER", push_default, &["otlp", "console", "none"])?;
        let metrics = exporters(
            &get,
            "OTEL_METRICS_EXPORTER",
            &[Exporter::Prometheus],
            &["otlp", "console", "prometheus", "none"],
        )?;

        let protocol = match get("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref() {
            None | Some("grpc") => Protocol::Grpc,
            Some("http/protobuf") => Protocol::HttpProtobuf,
            Some(other) => {
                return Err(invalid("OTEL_EXPORTER_OTLP_PROTOCOL", other, "expected grpc or http/protobuf"));
            }
        };
        let sampler = sampler(get("OTEL_TRACES_SAMPLER"), get("OTEL_TRACES_SAMPLER_ARG"))?;
        let metric_interval = match get("OTEL_METRIC_EXPORT_INTERVAL") {
            None => Duration::from_secs(60),
            Some(ms) => match ms.parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    return Err(invalid(
                        "OTEL_METRIC_EXPORT_INTERVAL",
                        &ms,
                        "expected a positive number of milliseconds",
                    ));
                }
            },
        };
        let prometheus_addr = match metrics_listen {
            Some(addr) => addr,
            None => {
                let host = get("OTEL_EXPORTER_PROMETHEUS_HOST").unwrap_or_else(|| "127.0.0.1".into());
                let port = match get("OTEL_EXPORTER_PROMETHEUS_PORT") {
                    None => 9464,
                    Some(p) => p
                        .parse::<u16>()
                        .map_err(|_| invalid("OTEL_EXPORTER_PROMETHEUS_PORT", &p, "expected a port number 0-65535"))?,
                };
                let joined = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
                joined.parse().map_err(|_| {
                    invalid(
                        "OTEL_EXPORTER_PROMETHEUS_HOST",
                        &host,
                        "expected an IP address such as 127.0.0.1 or 0.0.0.0",
                    )
                })?
            }
        };
        let profiles = profiles(&get, endpoint, protocol)?;
        Ok(Self {
            profiles,
            service_name: get("OTEL_SERVICE_NAME").unwrap_or_else(|| "draw64".into()),
            traces,
            metrics,
            logs,
            protocol,
            sampler,
            metric_interval,
            prometheus_addr,
        })
    }
}

fn milliseconds(get: &impl Fn(&str) -> Option<String>, variable: &str) -> Result<Option<Duration>, SettingsError> {
    let Some(ms) = get(variable) else { return Ok(None) };
    match ms.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Some(Duration::from_millis(n))),
        _ => Err(invalid(variable, &ms, "expected a positive number of milliseconds")),
    }
}

fn profiles(
    get: &impl Fn(&str) -> Option<String>,
    endpoint: Option<String>,
    protocol: Protocol,
) -> Result<Option<Profiles>, SettingsError> {
    // Opt-in, even with an OTLP endpoint set: profiling costs CPU all the time.
    let on = exporters(get, "OTEL_PROFILES_EXPORTER", &[], &["otlp", "none"])?.contains(&Exporter::Otlp);
    if !on {
        return Ok(None);
    }
    let protocol = match get("OTEL_EXPORTER_OTLP_PROFILES_PROTOCOL").as_deref() {
        None => protocol,
        Some("grpc") => Protocol::Grpc,
        Some("http/protobuf") => Protocol::HttpProtobuf,
        Some(other) => {
            return Err(invalid("OTEL_EXPORTER_OTLP_PROFILES_PROTOCOL", other, "expected grpc or http/protobuf"));
        }
    };
    let endpoint = match (get("OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT"), endpoint, protocol) {
        (Some(full), _, _) => full,
        (None, Some(base), Protocol::Grpc) => base,
        (None, Some(base), Protocol::HttpProtobuf) => format!("{}/v1development/profiles", base.trim_end_matches('/')),
        (None, None, Protocol::Grpc) => "http://localhost:4317".into(),
        (None, None, Protocol::HttpProtobuf) => "http://localhost:4318/v1development/profiles".into(),
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(invalid("OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT", &endpoint, "expected an http:// or https:// URL"));
    }
    let interval = milliseconds(get, "OTEL_PROFILES_EXPORT_INTERVAL")?.unwrap_or(Duration::from_secs(10));
    let timeout = match milliseconds(get, "OTEL_EXPORTER_OTLP_PROFILES_TIMEOUT")? {
        Some(t) => t,
        None => milliseconds(get, "OTEL_EXPORTER_OTLP_TIMEOUT")?.unwrap_or(Duration::from_secs(10)),
    };
    Ok(Some(Profiles { endpoint, protocol, interval, timeout }))
}

fn exporters(
    get: &impl Fn(&str) -> Option<String>,
    variable: &str,
    default: &[Exporter],
    allowed: &[&str],
) -> Result<Vec<Exporter>, SettingsError> {
    let Some(value) = get(variable) else { return Ok(default.to_vec()) };
    let mut out = Vec::new();
    for name in value.split(',').map(str::trim) {
        if !allowed.contains(&name) {
            return Err(invalid(variable, &value, format!("{name:?} is not one of {}", allowed.join(", "))));
        }
        let exporter = match name {
            "otlp" => Exporter::Otlp,
            "console" => Exporter::Console,
            "prometheus" => Exporter::Prometheus,
            _ => continue, // "none"
        };
        if !out.contains(&exporter) {
            out.push(exporter);
        }
    }
    Ok(out)
}

fn sampler(name: Option<String>, arg: Option<String>) -> Result<Sampler, SettingsError> {
    let ratio = || -> Result<f64, SettingsError> {
        match &arg {
            None => Ok(1.0),
            Some(raw) => match raw.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(invalid("OTEL_TRACES_SAMPLER_ARG", raw, "expected a ratio between 0 and 1")),
            },
        }
    };
    Ok(match name.as_deref() {
        None | Some("parentbased_always_on") => Sampler::ParentBasedAlwaysOn,
        Some("always_on") => Sampler::AlwaysOn,
        Some("always_off") => Sampler::AlwaysOff,
        Some("traceidratio") => Sampler::TraceIdRatio(ratio()?),
        Some("parentbased_always_off") => Sampler::ParentBasedAlwaysOff,
        Some("parentbased_traceidratio") => Sampler::ParentBasedTraceIdRatio(ratio()?),
        Some(other) => {
            return Err(invalid(
                "OTEL_TRACES_SAMPLER",
                other,
                "expected always_on, always_off, traceidratio, parentbased_always_on, \
                 parentbased_always_off or parentbased_traceidratio",
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_env(|k| map.get(k).cloned(), None)
    }

    #[test]
    fn defaults_push_nothing_without_an_endpoint() {
        let s = settings(&[]).unwrap();
        assert_eq!((s.traces, s.logs, s.metrics), (vec![], vec![], vec![Exporter::Prometheus]));
        assert_eq!(s.prometheus_addr.to_string(), DEFAULT_PROMETHEUS_ADDR);
        assert_eq!(s.service_name, "draw64");
        assert_eq!(s.sampler, Sampler::ParentBasedAlwaysOn);
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")]).unwrap();
        assert_eq!((s.traces, s.logs), (vec![Exporter::Otlp], vec![Exporter::Otlp]));
    }

    #[test]
    fn profiles_are_opt_in_and_follow_the_otlp_variables() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]).unwrap();
        assert_eq!(s.profiles, None);
        let s =
            settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_PROFILES_EXPORTER", "otlp")]).unwrap();
        let p = s.profiles.unwrap();
        assert_eq!(
            (p.endpoint.as_str(), p.protocol, p.interval),
            ("http://c:4317", Protocol::Grpc, Duration::from_secs(10))
        );
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_PROFILES_EXPORTER", "otlp"),
            ("OTEL_PROFILES_EXPORT_INTERVAL", "2000"),
        ])
        .unwrap();
        let p = s.profiles.unwrap();
        assert_eq!(p.endpoint, "http://c:4318/v1development/profiles");
        assert_eq!(p.interval, Duration::from_secs(2));
        let e = settings(&[("OTEL_PROFILES_EXPORTER", "otlp"), ("OTEL_PROFILES_EXPORT_INTERVAL", "0")]).unwrap_err();
        assert_eq!(e.variable, "OTEL_PROFILES_EXPORT_INTERVAL");
        let e = settings(&[("OTEL_PROFILES_EXPORTER", "pyroscope")]).unwrap_err();
        assert_eq!(e.variable, "OTEL_PROFILES_EXPORTER");
    }

    #[test]
    fn lists_and_none() {
        let s = settings(&[("OTEL_METRICS_EXPORTER", "prometheus, otlp"), ("OTEL_TRACES_EXPORTER", "none")]).unwrap();
        assert_eq!(s.metrics, vec![Exporter::Prometheus, Exporter::Otlp]);
        assert!(s.traces.is_empty());
    }

    #[test]
    fn unknown_values_name_the_variable() {
        for (var, value) in [
            ("OTEL_TRACES_EXPORTER", "jaeger"),
            ("OTEL_LOGS_EXPORTER", "prometheus"),
            ("OTEL_METRICS_EXPORTER", "statsd"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "fast"),
            ("OTEL_EXPORTER_PROMETHEUS_PORT", "99999"),
            ("OTEL_EXPORTER_PROMETHEUS_HOST", "not a host"),
        ] {
            let err = settings(&[(var, value)]).unwrap_err();
            assert_eq!(err.variable, var);
            assert!(err.to_string().contains(var), "{err}");
        }
        let err = settings(&[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "2")]).unwrap_err();
        assert_eq!(err.variable, "OTEL_TRACES_SAMPLER_ARG");
    }

    #[test]
    fn sampler_ratio_and_prometheus_address() {
        let s = settings(&[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_EXPORTER_PROMETHEUS_HOST", "0.0.0.0"),
            ("OTEL_EXPORTER_PROMETHEUS_PORT", "0"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .unwrap();
        assert_eq!(s.sampler, Sampler::ParentBasedTraceIdRatio(0.25));
        assert_eq!(s.prometheus_addr.to_string(), "0.0.0.0:0");
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
    }
}
