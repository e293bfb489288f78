//! W3C trace context (`traceparent: 00-TRACE-SPAN-FLAGS`) as text, for the one place trace
//! context travels outside HTTP headers: with a change, through the shared store, to the
//! instance that fans it out.

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// The `traceparent` of a span context, when there is one.
pub fn traceparent(sc: &SpanContext) -> Option<String> {
    sc.is_valid().then(|| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}

/// The remote span context a `traceparent` names; `None` when it is not a valid version-00 one.
pub fn parse_traceparent(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let sc = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips() {
        for flags in [TraceFlags::SAMPLED, TraceFlags::default()] {
            let sc = SpanContext::new(
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
                SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                flags,
                false,
                TraceState::default(),
            );
            let text = traceparent(&sc).unwrap();
            assert_eq!(text, format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{:02x}", flags.to_u8()));
            let back = parse_traceparent(&text).unwrap();
            assert_eq!((back.trace_id(), back.span_id(), back.trace_flags()), (sc.trace_id(), sc.span_id(), flags));
            assert!(back.is_remote());
        }
        assert_eq!(traceparent(&SpanContext::empty_context()), None);
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for text in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(text).is_none(), "{text:?}");
        }
    }
}
