//! Storage that notices its own failures (SQLite): files removed under a running store, a full
//! disk and the way back, a damaged database file and a damaged write-ahead log. In each, what
//! was acknowledged is kept and what cannot be stored is refused, never acknowledged.
//! PostgreSQL runs the same suite without these (its files are the server's).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::*;

/// `db` with `n` images created, its server then ended by `signal`.
async fn with_images(db: &str, n: usize, signal: nix::sys::signal::Signal) {
    let server = Server::start(db, "127.0.0.1:0", &["--drain-grace", "0", "--max-images", &n.to_string()]);
    let http = reqwest::Client::new();
    for i in 0..n {
        assert_eq!(http.post(server.url(&format!("/images/i{i}"))).send().await.unwrap().status(), 201);
    }
    server.signal(signal);
    server.wait();
}

/// Starts Draw64 on `db`, which must refuse to start: what it logged.
fn refused_start(db: &str, served: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_draw64"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--database", db])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{served}");
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn sqlite_only(what: &str) -> bool {
    let postgres = std::env::var("DRAW64_TEST_BACKEND").as_deref() == Ok("postgres");
    if postgres {
        println!("skipped {what}: the files are SQLite's");
    }
    !postgres
}

#[tokio::test]
async fn database_files_removed_under_a_running_store_refuse_writes_and_readiness() {
    if !sqlite_only("removed files") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.db");
    let app = spawn_app_on(&format!("sqlite://{}", path.display()), &[], tempfile::tempdir().unwrap()).await;
    assert_eq!(app.post("/images/default").await.0, 201);
    assert_eq!(app.put("default", &draw(&[[0, 0, 1, 1, 1]])).await.0, 200);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let (status, body) = app.put("default", &draw(&[[0, 0, 2, 2, 2]])).await;
    assert_eq!(status, 503, "{body}");
    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(ready["checks"]["store"]["status"].as_str().unwrap().contains("removed or replaced"), "{ready}");
    app.stop().await;
}

#[tokio::test]
async fn a_damaged_database_file_is_refused_at_start_with_the_reason() {
    if !sqlite_only("the damaged file") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(&dir);
    with_images(&db, 5, nix::sys::signal::Signal::SIGTERM).await;
    // 64 bytes of garbage over the head of the second page (a table's b-tree page).
    let file = db.strip_prefix("sqlite://").unwrap();
    let mut bytes = std::fs::read(file).unwrap();
    let page = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
    bytes[page..page + 64].fill(0xA5);
    std::fs::write(file, bytes).unwrap();
    let logs = refused_start(&db, "a damaged database was served");
    assert!(logs.contains("damaged") || logs.contains("malformed"), "{logs}");
}

#[tokio::test]
async fn a_write_ahead_log_damaged_after_a_kill_is_refused_at_start_not_half_replayed() {
    if !sqlite_only("the damaged log") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(&dir);
    with_images(&db, 20, nix::sys::signal::Signal::SIGKILL).await;
    let log = format!("{}-wal", db.strip_prefix("sqlite://").unwrap());
    let mut bytes = std::fs::read(&log).unwrap();
    // The header, then frames of a 24-byte header and a page each: at least two, so there is a
    // committed frame after the damage.
    let page = u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
    assert!(bytes.len() >= 32 + 2 * (24 + page), "the log holds {} bytes", bytes.len());
    // 64 bytes of garbage in the first frame's page, as a bad sector or a stray write would leave.
    bytes[32 + 24 + 100..32 + 24 + 164].fill(0x5A);
    std::fs::write(&log, bytes).unwrap();
    let logs = refused_start(&db, "a damaged log was half replayed and served");
    assert!(logs.contains("-wal is damaged") && logs.contains("move"), "{logs}");
    println!("refused at start: {}", logs.lines().find(|l| l.contains("damaged")).unwrap_or_default());
}

/// A tmpfs of `size`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts one, or says why not (not root outside CI: skipped; under CI=true: a failure).
    fn mount(size: &str) -> Option<(Tmpfs, tempfile::TempDir)> {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        if status.is_ok_and(|s| s.success()) {
            return Some((Tmpfs(dir.path().to_owned()), dir));
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mounting a tmpfs is required under CI=true (run as root)"
        );
        println!("SKIPPED the full disk: mounting a tmpfs needs root");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// What one writer was told: for each image it created, the values it drew, each with
/// whether it was acknowledged.
#[derive(Default)]
struct Ledger {
    created: Vec<String>,
    drawn: HashMap<String, Vec<(u8, bool)>>,
}

async fn put_pixel(http: &reqwest::Client, url: &str, value: u8) -> u16 {
    let body = draw(&[[0, 0, i64::from(value), 0, 0]]);
    match http.put(url).header("content-type", "application/json").body(body).send().await {
        Ok(res) => res.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_and_readiness_then_recovers_under_load_losing_nothing() {
    if !sqlite_only("the full disk") {
        return;
    }
    let Some((disk, _dir)) = Tmpfs::mount("24m") else { return };
    let db = format!("sqlite://{}", disk.0.join("canvas.db").display());
    let mut flags = ONE_ADDRESS_LOAD.to_vec();
    flags.extend(["--max-images", "100000", "--max-total-images", "100000", "--drain-grace", "0"]);
    let server = Server::start(&db, "127.0.0.1:0", &flags);
    // Room to give back later, that the writers cannot have: 8 MiB, more than the 4 MiB of log
    // (`CHECKPOINT_PAGES`) that a checkpoint may have to find room for in the database file.
    let filler = disk.0.join("filler");
    std::fs::write(&filler, vec![0u8; 8 << 20]).unwrap();

    // Fill: eight writers create images (each a new row, so the file must grow) and draw on
    // them until one is refused for want of space.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let started = Instant::now();
    let full = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (http, base, full) = (http.clone(), server.url(""), full.clone());
        writers.push(tokio::spawn(async move {
            let mut ledger = Ledger::default();
            for n in 0..5_000u32 {
                if full.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(60) {
                    break;
                }
                let id = format!("w{w}-{n}");
                let status =
                    http.post(format!("{base}/images/{id}")).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
                match status {
                    201 => ledger.created.push(id.clone()),
                    503 => {
                        full.store(true, Ordering::Relaxed);
                        break;
                    }
                    other => panic!("creating {id}: {other}"),
                }
                let value = (n % 250) as u8 + 1;
                let status = put_pixel(&http, &format!("{base}/images/{id}"), value).await;
                ledger.drawn.entry(id).or_default().push((value, status == 200));
                assert!(matches!(status, 200 | 503), "drawing: {status}");
                if status == 503 {
                    full.store(true, Ordering::Relaxed);
                }
            }
            ledger
        }));
    }
    let mut ledgers = Vec::new();
    for w in writers {
        ledgers.push(w.await.unwrap());
    }
    assert!(full.load(Ordering::Relaxed), "the disk never filled in 60 s");
    let created: usize = ledgers.iter().map(|l| l.created.len()).sum();
    let size = |name: &str| std::fs::metadata(disk.0.join(name)).map(|m| m.len() >> 10).unwrap_or(0);
    println!(
        "disk full after {:.1} s and {created} images: database {} KiB, log {} KiB",
        started.elapsed().as_secs_f64(),
        size("canvas.db"),
        size("canvas.db-wal")
    );
    let (status, ready) = until_ready_is(&http, &server, 503).await;
    assert_eq!(status, 503, "readiness while the disk is full: {ready}");
    println!("readiness while full: {}", ready["checks"]["store"]["status"]);

    // Space returns while eight writers keep drawing on what they created.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let ledgers = Arc::new(tokio::sync::Mutex::new(ledgers));
    let recovered = Arc::new(tokio::sync::Mutex::new(None::<Duration>));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (http, base, ledgers, recovered) = (http.clone(), server.url(""), ledgers.clone(), recovered.clone());
        writers.push(tokio::spawn(async move {
            let ids: Vec<String> = ledgers.lock().await[w].created.clone();
            let (mut refused_after_recovery, mut n) = (0, 0u32);
            while freed.elapsed() < Duration::from_secs(30) {
                let Some(id) = ids.get(n as usize % ids.len().max(1)) else { break };
                let value = (n % 250) as u8 + 1;
                n += 1;
                let status = put_pixel(&http, &format!("{base}/images/{id}"), value).await;
                assert!(matches!(status, 200 | 503), "drawing: {status}");
                ledgers.lock().await[w].drawn.entry(id.clone()).or_default().push((value, status == 200));
                let mut first = recovered.lock().await;
                match (status, *first) {
                    (200, None) => *first = Some(freed.elapsed()),
                    (503, Some(_)) => refused_after_recovery += 1,
                    _ => {}
                }
                let done = first.is_some_and(|at| freed.elapsed() > at + Duration::from_secs(3));
                drop(first);
                if done {
                    break;
                }
            }
            (refused_after_recovery, n)
        }));
    }
    let (mut refused_after, mut puts) = (0, 0);
    for w in writers {
        let (r, n) = w.await.unwrap();
        refused_after += r;
        puts += n;
    }
    let recovered = recovered.lock().await.expect("writes resumed within 30 s of space returning");
    let (status, ready) = until_ready_is(&http, &server, 200).await;
    assert_eq!(status, 200, "readiness once space returned: {ready}");
    println!(
        "space back: first acknowledged write after {:.0} ms, ready again, {puts} PUTs, {refused_after} refused after the first success",
        recovered.as_secs_f64() * 1000.0
    );
    assert!(recovered < Duration::from_secs(20), "recovered only after {recovered:?}");

    // Nothing acknowledged is lost: a restart on the same files has every image created, each
    // showing its last acknowledged value (or a later one whose answer was a refusal that came
    // after the commit; never an earlier one).
    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(server.wait(), Some(0));
    let again = Server::start(&db, "127.0.0.1:0", &flags);
    let ledgers = ledgers.lock().await;
    let mut checked = 0;
    for ledger in ledgers.iter() {
        for id in &ledger.created {
            let res = http.get(again.url(&format!("/images/{id}/data"))).send().await.unwrap();
            assert_eq!(res.status(), 200, "{id} was acknowledged but is gone");
            let data: Value = res.json().await.unwrap();
            let red = data[0][0][0].as_u64().unwrap() as u8;
            let drawn = &ledger.drawn[id];
            if let Some(last) = drawn.iter().rposition(|(_, acked)| *acked) {
                let allowed: Vec<u8> = drawn[last..].iter().map(|(v, _)| *v).collect();
                assert!(
                    allowed.contains(&red),
                    "{id}: shows {red}, acknowledged {} then tried {allowed:?}",
                    drawn[last].0
                );
                checked += 1;
            }
        }
    }
    println!(
        "after a restart: {} images present, {checked} with their last acknowledged pixel",
        ledgers.iter().map(|l| l.created.len()).sum::<usize>()
    );
    drop(again);
}

async fn until_ready_is(http: &reqwest::Client, server: &Server, want: u16) -> (u16, Value) {
    let deadline = Instant::now() + WAIT;
    loop {
        let res = http.get(server.url("/readyz")).send().await.unwrap();
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        if status == want || Instant::now() > deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
