//! Instant queries against Prometheus's HTTP API.

use serde_json::Value;

use crate::{ReleaseError, analysis::Figures, analysis::Queries, http};

#[derive(Clone, Debug)]
pub struct Prometheus {
    url: String,
}

impl Prometheus {
    pub fn new(url: &str) -> Prometheus {
        Prometheus { url: url.trim_end_matches('/').to_owned() }
    }

    /// The first sample of the query's result, or `None` when the result is empty or not a
    /// number (a ratio of no traffic).
    pub async fn scalar(&self, query: &str) -> Result<Option<f64>, ReleaseError> {
        let encoded: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
        let url = format!("{}/api/v1/query?query={encoded}", self.url);
        let (status, body) = http::request("GET", &url, None).await?;
        let failed = |cause: String| ReleaseError::Prometheus { query: query.to_owned(), cause };
        let v: Value = serde_json::from_str(&body).map_err(|e| failed(format!("HTTP {status}, not JSON: {e}")))?;
        if v["status"] != "success" {
            return Err(failed(format!("HTTP {status}: {}", v["error"].as_str().unwrap_or(&body))));
        }
        let sample = v["data"]["result"].get(0).and_then(|r| r["value"].get(1)).and_then(Value::as_str);
        Ok(sample.and_then(|s| s.parse::<f64>().ok()).filter(|x| x.is_finite()))
    }

    pub async fn figures(&self, queries: &Queries) -> Result<Figures, ReleaseError> {
        Ok(Figures {
            requests: self.scalar(&queries.requests).await?.unwrap_or(0.0),
            error_ratio: self.scalar(&queries.error_ratio).await?,
            p99: self.scalar(&queries.p99).await?,
        })
    }
}
