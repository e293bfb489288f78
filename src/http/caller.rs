//! Who is asking, for the requests that change something (create, draw, clear, delete, the
//! WebSocket handshake, browser reports): the client's address (`client`, after trusted
//! proxies), whether a browser sent it from an allowed origin, and whether it holds the admin
//! token. Extracted once per such request, so every handler checks the same way.

use std::net::{IpAddr, SocketAddr};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, header, request::Parts},
};

use std::time::Instant;

use super::{AppState, error::ApiError, serve::peer_ip};
use crate::{
    domain::Command,
    limits::{Limit, Rates},
};

/// `--allowed-origins`: the web origins whose pages may change images.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// The server's own origin (the `Host` the request was sent to): the default.
    #[default]
    Same,
    /// Any origin: unsafe on a public server (any page could use its visitors' browsers).
    Any,
    /// These origins, and the server's own.
    List(Vec<String>),
}

impl std::str::FromStr for AllowedOrigins {
    type Err = String;

    /// Empty for the server's own origin only, `*` for any, or `https://a.example,http://b:8000`.
    fn from_str(list: &str) -> Result<Self, String> {
        let list = list.trim();
        if list.is_empty() {
            return Ok(Self::Same);
        }
        if list == "*" {
            return Ok(Self::Any);
        }
        let mut origins = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((scheme, host)) = item.split_once("://") else {
                return Err(format!("{item:?} is not an origin like https://draw.example"));
            };
            if !matches!(scheme, "http" | "https") || host.is_empty() || host.contains('/') {
                return Err(format!("{item:?} is not an origin like https://draw.example (no path)"));
            }
            origins.push(item.to_ascii_lowercase());
        }
        Ok(Self::List(origins))
    }
}

impl AllowedOrigins {
    /// Whether a request may change something. Without `Origin` it was not sent by a page of
    /// another site (browsers name the origin on every cross-origin request, and on every
    /// POST, PUT, DELETE and WebSocket handshake), so scripts and the original's clients pass.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else { return true };
        let Ok(origin) = origin.to_str() else { return false };
        if *self == Self::Any {
            return true;
        }
        let own = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let origin_host = origin.split_once("://").map(|(_, rest)| rest);
        if matches!((origin_host, own), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h)) {
            return true;
        }
        matches!(self, Self::List(list) if list.iter().any(|o| o.eq_ignore_ascii_case(origin)))
    }
}

/// `DRAW64_ADMIN_TOKEN`: when set, deleting images and clearing canvases need it.
#[derive(Clone, Default)]
pub struct AdminToken(Option<String>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "AdminToken(set)" } else { "AdminToken(unset)" })
    }
}

impl std::str::FromStr for AdminToken {
    type Err = String;

    fn from_str(token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.is_empty() {
            return Ok(Self(None));
        }
        // The characters a WebSocket subprotocol name may carry, so the page can send it there.
        if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)) {
            return Err("the admin token must be at least 16 characters of A-Z a-z 0-9 - . _ ~ \
                        (e.g. openssl rand -hex 32)"
                .into());
        }
        Ok(Self(Some(token.to_owned())))
    }
}

/// What a request may do that needs the admin token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No token is configured: everyone may (the original's behaviour).
    Open,
    Admin,
    /// A token is configured and the request has none.
    Anonymous,
    /// A token is configured and the request has another one.
    WrongToken,
}

impl AdminToken {
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// From `Authorization: Bearer …`, or, for a WebSocket handshake (a browser cannot give
    /// it headers), a `draw64.token.TOKEN` entry of `Sec-WebSocket-Protocol` — not the query
    /// string, which balancers and proxies write to their logs.
    fn access(&self, headers: &HeaderMap) -> Access {
        let Some(expected) = &self.0 else { return Access::Open };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        let protocol = || {
            headers
                .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .find_map(|p| p.trim().strip_prefix(TOKEN_PROTOCOL))
        };
        match bearer.or_else(protocol) {
            None => Access::Anonymous,
            Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => Access::Admin,
            Some(_) => Access::WrongToken,
        }
    }
}

/// The WebSocket subprotocol entry that carries the admin token; the page also offers
/// `draw64`, which the server selects.
pub const TOKEN_PROTOCOL: &str = "draw64.token.";

/// Compares without returning early, so the time taken does not tell how much of a guess
/// was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// The client of a request that changes something, checked against `--allowed-origins`.
pub struct Caller {
    pub client: IpAddr,
    pub access: Access,
}

impl Caller {
    /// For deleting and clearing: refuses (401 without a token, 403 with a wrong one) when a
    /// token is configured and not given.
    /// For the operator's switches (fault flags, retiring the instance): refused outright
    /// unless an admin token is configured, as anyone could otherwise break the service; then
    /// as `require_admin`. `unset` says which switch and why.
    pub fn require_operator(&self, app: &AppState, unset: &'static str) -> Result<(), ApiError> {
        if !app.admin_token.is_set() {
            return Err(ApiError::Disabled(unset));
        }
        self.require_admin(app)
    }

    pub fn require_admin(&self, app: &AppState) -> Result<(), ApiError> {
        match self.access {
            Access::Open | Access::Admin => Ok(()),
            Access::Anonymous | Access::WrongToken => {
                app.limits.refused(Limit::AdminToken, Some(self.client));
                Err(if self.access == Access::Anonymous { ApiError::AdminRequired } else { ApiError::AdminDenied })
            }
        }
    }
}

impl Caller {
    /// A command from this client: within the pixel cap and the client's rates; a clear
    /// needs the admin token when one is set.
    pub fn admit(&self, app: &AppState, command: &Command) -> Result<(), ApiError> {
        let pixels = match command {
            Command::Draw(pixels) => pixels.len(),
            Command::ClearCanvas => {
                self.require_admin(app)?;
                0
            }
        };
        let cap = app.limits.options.max_pixels_per_command;
        if cap > 0 && pixels > cap {
            app.limits.refused(Limit::PixelsPerCommand, Some(self.client));
            return Err(ApiError::TooManyPixels(cap));
        }
        self.take(app, &app.limits.writes, [1.0, pixels as f64], [Limit::Commands, Limit::Pixels])
    }

    /// One image created by this client (`--client-images-per-minute`).
    pub fn may_create(&self, app: &AppState) -> Result<(), ApiError> {
        self.take(app, &app.limits.images, [1.0], [Limit::Images])
    }

    fn take<const N: usize>(
        &self,
        app: &AppState,
        rates: &Rates<N>,
        amounts: [f64; N],
        limits: [Limit; N],
    ) -> Result<(), ApiError> {
        rates.take(self.client, amounts, Instant::now()).map_err(|(k, retry_after)| {
            app.limits.refused(limits[k], Some(self.client));
            ApiError::Throttled { what: limits[k].noun(), retry_after }
        })
    }
}

/// The client's address as `--trusted-proxies` allows it to be known.
pub fn client_address(app: &AppState, parts: &Parts) -> IpAddr {
    let peer = peer_ip(parts.extensions.get::<ConnectInfo<SocketAddr>>());
    app.trusted_proxies.client(peer, &parts.headers)
}

/// Only the client's address, for requests that change nothing (an event stream).
pub struct Client(pub IpAddr);

impl FromRequestParts<AppState> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Self(client_address(app, parts)))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let client = client_address(app, parts);
        if !app.allowed_origins.allows(&parts.headers) {
            app.limits.refused(Limit::Origin, Some(client));
            return Err(ApiError::CrossOrigin);
        }
        Ok(Self { client, access: app.admin_token.access(&parts.headers) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_the_server_s_own_origin_and_listed_ones_pass() {
        let own = |origin: &str| headers(&[(header::HOST, "draw.example:8000"), (header::ORIGIN, origin)]);
        let same = AllowedOrigins::default();
        assert!(same.allows(&headers(&[(header::HOST, "draw.example:8000")])), "no Origin: not a foreign page");
        assert!(same.allows(&own("http://draw.example:8000")));
        assert!(!same.allows(&own("http://evil.example")));
        assert!(!same.allows(&own("null")));
        let listed: AllowedOrigins = "https://app.example, http://localhost:3000".parse().unwrap();
        assert!(listed.allows(&own("https://app.example")) && listed.allows(&own("http://draw.example:8000")));
        assert!(!listed.allows(&own("https://app.example.evil")));
        assert!("*".parse::<AllowedOrigins>().unwrap().allows(&own("null")));
        assert!("draw.example".parse::<AllowedOrigins>().is_err());
        assert!("https://a.example/path".parse::<AllowedOrigins>().is_err());
    }

    #[test]
    fn the_admin_token_from_a_bearer_header_or_a_socket_s_query() {
        let token: AdminToken = "0123456789abcdef".parse().unwrap();
        let bearer = |v: &str| headers(&[(header::AUTHORIZATION, v)]);
        assert_eq!(token.access(&bearer("Bearer 0123456789abcdef")), Access::Admin);
        assert_eq!(token.access(&bearer("Bearer 0123456789abcdeF")), Access::WrongToken);
        assert_eq!(token.access(&HeaderMap::new()), Access::Anonymous);
        let offered = headers(&[(header::SEC_WEBSOCKET_PROTOCOL, "draw64, draw64.token.0123456789abcdef")]);
        assert_eq!(token.access(&offered), Access::Admin);
        assert_eq!(AdminToken::default().access(&HeaderMap::new()), Access::Open);
        assert!("short".parse::<AdminToken>().is_err());
        assert!("0123456789abcdef 0".parse::<AdminToken>().is_err());
        assert!(!constant_time_eq(b"abc", b"abcd") && constant_time_eq(b"abc", b"abc"));
    }
}
