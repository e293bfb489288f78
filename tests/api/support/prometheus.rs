//! A real Prometheus for tests: Debian's `prometheus` on 127.0.0.1, scraping every second the
//! targets a file lists (rewritten as servers come and go), with Draw64's rules loaded.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

pub struct Prometheus {
    child: Child,
    pub url: String,
    /// The file-discovery file: `[{"targets": ["host:port", …]}]`.
    pub targets: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus in `dir`, evaluating `rules`, scraping what `targets` lists.
    pub fn start(dir: &Path, rules: &Path, targets: &[String]) -> Prometheus {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let file = dir.join("targets.json");
        let prometheus_config = dir.join("prometheus.yml");
        std::fs::write(
            &prometheus_config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [{rules:?}]\n\
                 scrape_configs:\n  - job_name: draw64\n    file_sd_configs: [{{files: [{file:?}], refresh_interval: 1s}}]\n",
                rules = rules.display().to_string(),
                file = file.display().to_string(),
            ),
        )
        .unwrap();
        let prometheus = Prometheus {
            child: Command::new("prometheus")
                .arg(format!("--config.file={}", prometheus_config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
            url: format!("http://127.0.0.1:{port}"),
            targets: file,
        };
        prometheus.scrape(targets);
        prometheus
    }

    pub fn scrape(&self, targets: &[String]) {
        std::fs::write(&self.targets, serde_json::json!([{ "targets": targets }]).to_string()).unwrap();
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// An instant query's result, `None` while it is empty or Prometheus is not up yet.
    pub async fn query(&self, q: &str) -> Option<Vec<Value>> {
        let url = format!("{}/api/v1/query", self.url);
        let res = reqwest::Client::new().get(url).query(&[("query", q)]).send().await.ok()?;
        let body: Value = res.json().await.ok()?;
        let result = body["data"]["result"].as_array()?.clone();
        (!result.is_empty()).then_some(result)
    }

    /// Waits (at most `within`) until `q` has a result.
    pub async fn until(&mut self, q: &str, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(r) = self.query(q).await {
                return r;
            }
            assert!(self.running(), "prometheus exited");
            assert!(Instant::now() < deadline, "Prometheus never answered {q}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
