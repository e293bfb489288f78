//! `scripts/cluster` as a newcomer runs it: a throwaway PostgreSQL, instances, HAProxy and
//! Prometheus around a port base; stopped and deleted however the test ends.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

/// Every offset from the base that `scripts/cluster` listens on, for two instances.
const OFFSETS: &[u16] = &[0, 1, 2, 50, 90, 96, 97, 98, 99, 101, 102, 190];

pub struct ScriptCluster {
    script: PathBuf,
    state: tempfile::TempDir,
    pub port: u16,
}

impl ScriptCluster {
    /// `scripts/cluster --port BASE` with the test build; panics with the script's output when
    /// it fails.
    pub fn start() -> ScriptCluster {
        let cluster = ScriptCluster {
            script: Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster"),
            state: tempfile::tempdir().unwrap(),
            port: free_base(),
        };
        let started = cluster.command().args(["--port", &cluster.port.to_string()]).output().unwrap();
        let printed = String::from_utf8_lossy(&started.stdout);
        assert!(
            started.status.success(),
            "scripts/cluster failed: {printed}{}",
            String::from_utf8_lossy(&started.stderr)
        );
        assert!(printed.contains(&format!("http://127.0.0.1:{}/", cluster.port)), "{printed}");
        cluster
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.script);
        command.env("DRAW64_CLUSTER_DIR", self.dir()).env("DRAW64_BIN", env!("CARGO_BIN_EXE_draw64"));
        command
    }

    pub fn dir(&self) -> PathBuf {
        self.state.path().join("c")
    }

    /// `scripts/cluster release BINARY ARGS…`, with `env` for the canary.
    pub fn release(&self, binary: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut command = self.command();
        command.arg("release").arg(binary).args(args);
        for (k, v) in env {
            command.env(k, v);
        }
        command.output().unwrap()
    }

    pub fn url(&self, offset: u16, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port + offset)
    }
}

impl Drop for ScriptCluster {
    fn drop(&mut self) {
        let _ = self.command().arg("--stop").output();
    }
}

/// A port base below the kernel's ephemeral range (where the other tests' port-0 sockets land)
/// with every port the script uses free, and no port of another cluster of this test process
/// within reach: a cluster binds its ports seconds after its base is picked (PostgreSQL's
/// initdb comes first), so a free check alone would let two clusters pick overlapping bases.
fn free_base() -> u16 {
    static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let span = OFFSETS.iter().max().unwrap() + 1;
    let mut taken = TAKEN.lock().unwrap();
    loop {
        let base = fastrand::u16(20_000..32_000);
        let apart = taken.iter().all(|t| base.abs_diff(*t) >= span);
        if apart && OFFSETS.iter().all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok()) {
            taken.push(base);
            return base;
        }
    }
}
