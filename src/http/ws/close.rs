//! How a socket ends: the RFC 6455 close codes Draw64 sends, why each socket ended (for the
//! disconnections metric and the close span), and the close frame itself.

use std::pin::Pin;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};

use super::Sink;
use crate::{domain::ImageId, telemetry::metrics};

pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub const CLOSE_INVALID_DATA: u16 = 1007;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Service restart: a release retired this instance; reconnect (to another one).
pub const CLOSE_SERVICE_RESTART: u16 = 1012;
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
/// Draw64's own code (4000–4999 are for applications): the image was deleted.
pub const CLOSE_IMAGE_DELETED: u16 = 4404;

/// Why a socket ended.
#[derive(Clone, Copy)]
pub enum Ended {
    Client,
    Lagged,
    Deleted,
    Shutdown,
    TooBig,
    Silent,
    /// The client did not read what was sent to it for `--send-timeout`.
    Stalled,
    /// It broke the protocol (1002) or sent text that is not UTF-8 (1007).
    Protocol,
    /// It kept going over its rates (1008).
    Policy,
    Error,
    /// The socket's task panicked (recorded by the panic hook); the socket is dropped.
    Panic,
}

impl Ended {
    /// Whether a close frame went to the client (which then answers with its own).
    pub fn sent_close(self) -> bool {
        matches!(
            self,
            Ended::Lagged | Ended::Deleted | Ended::Shutdown | Ended::TooBig | Ended::Protocol | Ended::Policy
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Client => "client",
            Ended::Lagged => "lagged",
            Ended::Deleted => "deleted",
            Ended::Shutdown => "shutdown",
            Ended::TooBig => "too_big",
            Ended::Silent => "silent",
            Ended::Stalled => "stalled",
            Ended::Protocol => "protocol",
            Ended::Policy => "policy",
            Ended::Error => "error",
            Ended::Panic => "panic",
        }
    }
}

/// Sends a close frame and answers `ended`. Boxed: it happens once per socket, and inline its
/// future would make every idle socket's task larger.
pub fn close<'a>(
    sink: &'a mut Sink,
    code: u16,
    reason: &str,
    ended: Ended,
) -> Pin<Box<dyn Future<Output = Ended> + Send + 'a>> {
    let frame = CloseFrame { code, reason: Utf8Bytes::from(reason) };
    Box::pin(async move {
        let _ = sink.send(Message::Close(Some(frame))).await;
        sink.close().await;
        ended
    })
}

/// A subscriber `missed` events behind: told to reconnect and reload rather than buffered.
pub async fn lagged(sink: &mut Sink, id: &ImageId, missed: u64) -> Ended {
    tracing::info!(image_id = %id, missed, "subscriber lagged; closing it");
    metrics().subscriber_lagged.add(1, &[]);
    let reason = format!("Fell {missed} events behind; reconnect and reload the image.");
    close(sink, CLOSE_TRY_AGAIN_LATER, &reason, Ended::Lagged).await
}

/// The close a failed read deserves (RFC 6455, 7.4.1): `None` when the connection itself is
/// gone and nothing can be sent.
pub fn for_read_error(e: &axum::Error) -> Option<(u16, &'static str, Ended)> {
    use tokio_tungstenite::tungstenite::{Error, error::CapacityError};
    let cause = std::error::Error::source(e).and_then(|cause| cause.downcast_ref::<Error>());
    match cause? {
        Error::Capacity(CapacityError::MessageTooLong { .. }) => {
            Some((CLOSE_TOO_BIG, "Message larger than 1 MiB.", Ended::TooBig))
        }
        Error::Utf8(_) => Some((CLOSE_INVALID_DATA, "Text frames must be UTF-8.", Ended::Protocol)),
        Error::Protocol(p)
            if !matches!(p, tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) =>
        {
            Some((CLOSE_PROTOCOL_ERROR, "WebSocket protocol violation.", Ended::Protocol))
        }
        _ => None,
    }
}
