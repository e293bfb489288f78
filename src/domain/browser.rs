//! What a page reports about its user's experience (real-user monitoring), parsed strictly:
//! every name is from a fixed set, every number finite and in range, every text bounded, so
//! nothing a page sends can grow a metric's label set or a log line. No I/O.

use serde::Deserialize;

use super::Integral;

/// Most events one report may carry.
pub const MAX_EVENTS: usize = 64;
/// Longest error message, in characters (the page cuts it there); in the log it is cut further
/// to this many bytes, on a character boundary.
pub const MAX_MESSAGE: usize = 200;
/// Longest error type name, in characters (the page cuts it there).
pub const MAX_KIND: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    session: String,
    events: Vec<WireEvent>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum WireEvent {
    Timing {
        name: Timing,
        value: f64,
        #[serde(default)]
        trace_id: Option<String>,
    },
    Socket {
        event: Socket,
        #[serde(default)]
        code: Option<Integral>,
    },
    Error {
        kind: String,
        message: String,
    },
}

/// A measured duration, in milliseconds as the page measures it; or CLS, a unitless score.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Timing {
    /// Navigation: time to first byte, DOM ready, load.
    Ttfb,
    DomReady,
    Load,
    /// Core Web Vitals (and FCP).
    Fcp,
    Lcp,
    Inp,
    Cls,
    /// From sending a command to receiving that same command back from the server.
    DrawEcho,
    /// From navigation start to the first painted canvas.
    CanvasReady,
    /// From a socket closing to its replacement opening.
    Reconnect,
}

impl Timing {
    pub fn as_str(self) -> &'static str {
        match self {
            Timing::Ttfb => "ttfb",
            Timing::DomReady => "dom_ready",
            Timing::Load => "load",
            Timing::Fcp => "fcp",
            Timing::Lcp => "lcp",
            Timing::Inp => "inp",
            Timing::Cls => "cls",
            Timing::DrawEcho => "draw_echo",
            Timing::CanvasReady => "canvas_ready",
            Timing::Reconnect => "reconnect",
        }
    }

    /// The largest value believed: ten minutes for a duration, 100 for CLS.
    fn limit(self) -> f64 {
        if self == Timing::Cls { 100.0 } else { 600_000.0 }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Socket {
    Connect,
    Reconnect,
    Close,
    Resync,
}

impl Socket {
    pub fn as_str(self) -> &'static str {
        match self {
            Socket::Connect => "connect",
            Socket::Reconnect => "reconnect",
            Socket::Close => "close",
            Socket::Resync => "resync",
        }
    }
}

/// Close codes a page can see from Draw64 or its own network; any other is `other`.
const CLOSE_CODES: [&str; 12] =
    ["1000", "1001", "1002", "1005", "1006", "1007", "1008", "1009", "1011", "1012", "1013", "4404"];
/// JavaScript error names kept as themselves; any other is `Error`.
const ERROR_KINDS: [&str; 8] = [
    "Error",
    "TypeError",
    "ReferenceError",
    "RangeError",
    "SyntaxError",
    "URIError",
    "EvalError",
    "unhandledrejection",
];

#[derive(Debug, PartialEq)]
pub enum Event {
    /// `trace_id`: for a draw→echo, the trace of that stroke (32 lowercase hexadecimal digits).
    Timing {
        name: Timing,
        value: f64,
        trace_id: Option<String>,
    },
    Socket {
        event: Socket,
        code: &'static str,
    },
    Error {
        kind: &'static str,
        message: String,
    },
}

#[derive(Debug, PartialEq)]
pub struct Report {
    pub session: String,
    pub events: Vec<Event>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("invalid report: {0}")]
    Invalid(String),
}

impl Report {
    pub fn parse_json(body: &[u8]) -> Result<Self, ReportError> {
        let invalid = |why: String| ReportError::Invalid(why);
        let wire: Wire = serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
        let session_ok = (8..=32).contains(&wire.session.len()) && wire.session.bytes().all(|b| b.is_ascii_hexdigit());
        if !session_ok {
            return Err(invalid("session must be 8 to 32 hexadecimal digits".into()));
        }
        if wire.events.is_empty() || wire.events.len() > MAX_EVENTS {
            return Err(invalid(format!("a report carries 1 to {MAX_EVENTS} events")));
        }
        let events = wire.events.into_iter().map(Event::from_wire).collect::<Result<_, _>>()?;
        Ok(Report { session: wire.session, events })
    }
}

impl Event {
    fn from_wire(wire: WireEvent) -> Result<Self, ReportError> {
        Ok(match wire {
            WireEvent::Timing { name, value, trace_id } => {
                if !value.is_finite() || !(0.0..=name.limit()).contains(&value) {
                    return Err(ReportError::Invalid(format!("{} must be from 0 to {}", name.as_str(), name.limit())));
                }
                let trace_ok = |t: &String| {
                    name == Timing::DrawEcho
                        && t.len() == 32
                        && t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                        && t.bytes().any(|b| b != b'0')
                };
                if trace_id.as_ref().is_some_and(|t| !trace_ok(t)) {
                    return Err(ReportError::Invalid("trace_id: 32 lowercase hex digits, on draw_echo only".into()));
                }
                Event::Timing { name, value, trace_id }
            }
            WireEvent::Socket { event, code } => {
                let code = match code.map(|Integral(c)| u16::try_from(c)) {
                    None => "none",
                    Some(Ok(code)) => CLOSE_CODES.iter().find(|c| **c == code.to_string()).copied().unwrap_or("other"),
                    Some(Err(_)) => return Err(ReportError::Invalid("a close code is from 0 to 65535".into())),
                };
                Event::Socket { event, code }
            }
            WireEvent::Error { kind, message } => {
                if kind.chars().count() > MAX_KIND || message.chars().count() > MAX_MESSAGE {
                    return Err(ReportError::Invalid(format!(
                        "an error's kind is at most {MAX_KIND} characters and its message {MAX_MESSAGE}"
                    )));
                }
                let kind = ERROR_KINDS.iter().find(|k| **k == kind).copied().unwrap_or("Error");
                let mut end = message.len().min(MAX_MESSAGE);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                Event::Error { kind, message: message[..end].to_owned() }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_parses_into_bounded_events() {
        let body = br#"{"session":"0123456789abcdef","events":[
            {"type":"timing","name":"lcp","value":812.5},
            {"type":"timing","name":"draw_echo","value":9,"trace_id":"0af7651916cd43dd8448eb211c80319c"},
            {"type":"timing","name":"cls","value":0.02},
            {"type":"socket","event":"close","code":1006},
            {"type":"socket","event":"reconnect","code":3999},
            {"type":"socket","event":"connect"},
            {"type":"error","kind":"WeirdError","message":"x is undefined"}]}"#;
        let report = Report::parse_json(body).unwrap();
        assert_eq!(report.events[0], Event::Timing { name: Timing::Lcp, value: 812.5, trace_id: None });
        let trace_id = Some("0af7651916cd43dd8448eb211c80319c".to_owned());
        assert_eq!(report.events[1], Event::Timing { name: Timing::DrawEcho, value: 9.0, trace_id });
        assert_eq!(report.events[3], Event::Socket { event: Socket::Close, code: "1006" });
        assert_eq!(report.events[4], Event::Socket { event: Socket::Reconnect, code: "other" });
        assert_eq!(report.events[5], Event::Socket { event: Socket::Connect, code: "none" });
        assert_eq!(report.events[6], Event::Error { kind: "Error", message: "x is undefined".into() });
    }

    #[test]
    fn messages_are_cut_on_a_character_boundary() {
        let long = "é".repeat(150);
        let body =
            format!(r#"{{"session":"abcdef01","events":[{{"type":"error","kind":"TypeError","message":"{long}"}}]}}"#);
        let Event::Error { message, .. } = &Report::parse_json(body.as_bytes()).unwrap().events[0] else { panic!() };
        assert!(message.len() <= MAX_MESSAGE && message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn anything_else_is_refused() {
        let many = format!(
            r#"{{"session":"abcdef01","events":[{}]}}"#,
            vec![r#"{"type":"timing","name":"load","value":1}"#; MAX_EVENTS + 1].join(",")
        );
        for body in [
            "",
            "{}",
            r#"{"session":"abcdef01","events":[]}"#,
            r#"{"session":"xyz","events":[{"type":"timing","name":"load","value":1}]}"#,
            r#"{"session":"abcdef01","events":[{"type":"timing","name":"user_email","value":1}]}"#,
            r#"{"session":"abcdef01","events":[{"type":"timing","name":"load","value":-1}]}"#,
            r#"{"session":"abcdef01","events":[{"type":"timing","name":"load","value":1e9}]}"#,
            r#"{"session":"abcdef01","events":[{"type":"timing","name":"cls","value":101}]}"#,
            r#"{"session":"abcdef01","events":[{"type":"timing","name":"lcp","value":1,"trace_id":"0af7651916cd43dd8448eb211c80319c"}]}"#,
            r#"{"session":"abcdef01","events":[{"type":"timing","name":"draw_echo","value":1,"trace_id":"not-a-trace"}]}"#,
            r#"{"session":"abcdef01","events":[{"type":"timing","name":"load","value":1,"url":"x"}]}"#,
            r#"{"session":"abcdef01","events":[{"type":"timing","name":"load","value":1}],"user":"me"}"#,
            &many,
        ] {
            assert!(Report::parse_json(body.as_bytes()).is_err(), "{body}");
        }
    }
}
