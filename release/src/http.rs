//! Plain HTTP/1.1 requests, one connection each: Prometheus's query API and the canary's own
//! endpoints (`/healthz`, `/admin/drain`), all on a private network; and the `/metrics` that
//! carries the release's annotations.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Bytes};
use hyper_util::rt::TokioIo;

use crate::ReleaseError;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `method url` (an `http://host:port/path?query` URL) with an optional bearer token;
/// answers the status and the body.
pub async fn request(method: &str, url: &str, token: Option<&str>) -> Result<(u16, String), ReleaseError> {
    let failed = |cause: String| ReleaseError::Http { url: url.to_owned(), cause };
    let uri: hyper::Uri = url.parse().map_err(|e| failed(format!("not a URL: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(failed("only http:// URLs are supported (a private network)".into()));
    }
    let authority = uri.authority().ok_or_else(|| failed("no host".into()))?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let exchange = async {
        let stream = tokio::net::TcpStream::connect((authority.host(), port)).await.map_err(|e| e.to_string())?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let mut req = Request::builder()
            .method(method)
            .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
            .header(hyper::header::HOST, authority.as_str());
        if let Some(token) = token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| failed("timed out".into()))?.map_err(failed)
}

/// Serves `exposition()` at every path of `address` until the process ends.
pub async fn serve_metrics(
    address: SocketAddr,
    exposition: impl Fn() -> String + Clone + Send + Sync + 'static,
) -> Result<SocketAddr, ReleaseError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| ReleaseError::Http { url: address.to_string(), cause: format!("cannot listen: {e}") })?;
    let bound =
        listener.local_addr().map_err(|e| ReleaseError::Http { url: address.to_string(), cause: e.to_string() })?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let exposition = exposition.clone();
            let service = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                let body = exposition();
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header(hyper::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(body)))
                            .expect("a static response"),
                    )
                }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    Ok(bound)
}
