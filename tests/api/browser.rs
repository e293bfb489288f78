//! The web page in a real headless Chromium (Debian's `chromium`), driven by playwright-core
//! from Node against the real binary. The scenario lives in `tests/browser/page.test.mjs`.

use std::{path::Path, process::Command};

use crate::helpers::require;

#[test]
fn the_page_works_in_headless_chromium() {
    if !require("chromium", "the browser test") || !require("node", "the browser test") {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !dir.join("node_modules/playwright-core").exists() {
        let ok = Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir).status().unwrap();
        assert!(ok.success(), "npm ci failed in {}", dir.display());
    }
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
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
