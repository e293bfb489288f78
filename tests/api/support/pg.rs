//! A throwaway PostgreSQL for the tests: `initdb` into a temporary directory and `pg_ctl start`
//! on a free loopback port, as the `postgres` user when the tests run as root (CI). One shared
//! server holds a fresh database per test; tests that stop the server get their own.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::OnceLock,
};

pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Where `initdb` and `pg_ctl` are: Debian keeps them out of PATH, per major version.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().or_else(|| {
        let out = Command::new("sh").args(["-c", "command -v initdb"]).output().ok()?;
        let path = String::from_utf8(out.stdout).ok()?;
        Some(PathBuf::from(path.trim()).parent()?.to_path_buf()).filter(|p| p.join("pg_ctl").exists())
    })
}

/// Runs a PostgreSQL tool, as `postgres` when we are root (the server refuses to run as root).
fn run(bin: &std::path::Path, tool: &str, args: &[&str]) -> std::process::Output {
    let exe = bin.join(tool);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {tool}: {e}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Postgres {
    /// A new server, or `None` (with the reason printed) when PostgreSQL is not installed and
    /// we are not in CI.
    pub fn start() -> Option<Postgres> {
        let Some(bin) = bin_dir() else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("PostgreSQL (initdb, pg_ctl) is required under CI=true but is not installed");
            }
            eprintln!("SKIPPED: PostgreSQL is not installed (apt-get install postgresql)");
            return None;
        };
        let dir = std::env::temp_dir().join(format!("draw64-pg-{}-{:08x}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            assert!(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status().unwrap().success());
        }
        let data = dir.join("data");
        let out = run(&bin, "initdb", &["-D", data.to_str().unwrap(), "-U", "postgres", "-A", "trust", "--no-sync"]);
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let pg = Postgres { port: free_port(), dir, bin };
        pg.up();
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.join("data").to_str().unwrap().to_owned()
    }

    /// Starts (or restarts) the server on its port and waits until it accepts connections.
    pub fn up(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=200 -c fsync=on",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        let out =
            run(&self.bin, "pg_ctl", &["-D", &self.data(), "-l", log.to_str().unwrap(), "-o", &options, "-w", "start"]);
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server at once (in-flight transactions are cut, as in a crash).
    pub fn down(&self) {
        let out = run(&self.bin, "pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
        assert!(out.status.success(), "pg_ctl stop failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs SQL through `psql` and returns its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &self.url(database), "-c", sql])
            .output()
            .expect("psql runs");
        assert!(out.status.success(), "psql failed on {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// A new empty database; answers its URL.
    pub fn create_database(&self) -> String {
        let name = format!("t_{:016x}", fastrand::u64(..));
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    fn stop_quietly(&self) {
        let _ = run(&self.bin, "pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop_quietly();
    }
}

/// The server most tests share, started on first use and stopped when the test process ends
/// (a watcher process does that, since statics are never dropped).
pub fn shared() -> Option<&'static Postgres> {
    static SHARED: OnceLock<Option<Postgres>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let pg = Postgres::start()?;
            let stop = format!(
                "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {runas} {pg_ctl} -D {data} -m immediate -w stop; rm -rf {dir}",
                pid = std::process::id(),
                runas = if is_root() { "runuser -u postgres --" } else { "" },
                pg_ctl = pg.bin.join("pg_ctl").display(),
                data = pg.data(),
                dir = pg.dir.display(),
            );
            // Deliberately not waited for: it must outlive this process to clean up after it.
            #[allow(clippy::zombie_processes)]
            Command::new("sh").args(["-c", &stop]).stdin(Stdio::null()).stdout(Stdio::null()).spawn().unwrap();
            Some(pg)
        })
        .as_ref()
}

/// Whether the black-box suite runs on PostgreSQL (`DRAW64_TEST_BACKEND=postgres`).
pub fn suite_on_postgres() -> bool {
    std::env::var("DRAW64_TEST_BACKEND").is_ok_and(|v| v == "postgres")
}
