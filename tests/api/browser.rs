//! The web page in a real headless Chromium (Debian's `chromium`), driven by playwright-core
//! from Node against the real binary. The scenario lives in `tests/browser/page.test.mjs`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::support::require;

#[test]
fn the_page_works_in_headless_chromium() {
    if !require("chromium", "the browser test") || !require("node", "the browser test") {
        return;
    }
    let (dir, out) = browser_dir();
    let status = Command::new("node")
        .arg("page.test.mjs")
        .current_dir(&dir)
        .env("DRAW64_BIN", env!("CARGO_BIN_EXE_draw64"))
        .env("OUT_DIR", &out)
        .status()
        .unwrap();
    assert!(status.success(), "browser scenario failed: {status}");
    assert!(out.join("page.png").exists(), "no screenshot saved");
}

/// The scenarios' directory (with playwright-core installed) and the screenshots' directory.
fn browser_dir() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !dir.join("node_modules/playwright-core").exists() {
        let ok = Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir).status().unwrap();
        assert!(ok.success(), "npm ci failed in {}", dir.display());
    }
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    (dir, out)
}

/// A port base with the ports `scripts/cluster` uses around it free.
fn cluster_port() -> u16 {
    loop {
        let base = fastrand::u16(20_000..60_000);
        let free =
            [0, 1, 2, 50, 99, 101, 102].iter().all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok());
        if free {
            return base;
        }
    }
}

/// Stops the cluster however the test ends.
struct Cluster {
    script: PathBuf,
    state: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ =
            Command::new(&self.script).arg("--stop").env("DRAW64_CLUSTER_DIR", self.state.path().join("c")).status();
    }
}

/// The newcomer's path: `scripts/cluster`, then two tabs on the balancer's page.
#[test]
fn two_tabs_on_scripts_cluster_land_on_two_instances_and_see_each_other() {
    if !require("chromium", "the cluster browser test")
        || !require("node", "the cluster browser test")
        || !require("haproxy", "the cluster browser test")
        || crate::support::pg::shared().is_none()
    {
        return;
    }
    let (dir, out) = browser_dir();
    let cluster = Cluster {
        script: Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster"),
        state: tempfile::tempdir().unwrap(),
    };
    let port = cluster_port();
    let started = Command::new(&cluster.script)
        .args(["--port", &port.to_string()])
        .env("DRAW64_CLUSTER_DIR", cluster.state.path().join("c"))
        .env("DRAW64_BIN", env!("CARGO_BIN_EXE_draw64"))
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&started.stdout);
    assert!(started.status.success(), "scripts/cluster failed: {printed}{}", String::from_utf8_lossy(&started.stderr));
    assert!(printed.contains(&format!("http://127.0.0.1:{port}/")), "{printed}");
    let metrics = format!("http://127.0.0.1:{}/metrics,http://127.0.0.1:{}/metrics", port + 101, port + 102);
    let status = Command::new("node")
        .arg("cluster.test.mjs")
        .current_dir(&dir)
        .env("BASE", format!("http://127.0.0.1:{port}"))
        .env("METRICS", metrics)
        .env("OUT_DIR", &out)
        .status()
        .unwrap();
    assert!(status.success(), "cluster browser scenario failed: {status}");
    drop(cluster);
}
