//! End-to-end browser tests: the real server, the embedded web UI, headless Chromium over CDP.
//!
//! Each test starts its own `confab serve` (loopback, temporary data dir) and its own headless
//! Chromium, one test at a time; users are isolated browser contexts. The UI is driven only
//! through its `data-testid` hooks and standard labels. Screenshots go to
//! `<target dir>/browser-artifacts/<test>/`, also on failure (`FAILED-<page>-<n>.png`, named in
//! the panic message with the page's console errors).

mod cdp;
mod server;
mod ui;

mod chat;
mod files;
mod history;
mod offline;
mod screens;
mod search;
mod setup;
mod xss;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cdp::Browser;
use server::Server;

/// Everything one test drives.
pub struct Ctx {
    pub server: Server,
    pub browser: Browser,
}

/// `<target dir>/browser-artifacts`, next to the `release`/`debug` directory of the binary.
fn artifacts_root() -> PathBuf {
    let bin = PathBuf::from(server::BIN);
    bin.parent()
        .and_then(|p| p.parent())
        .map(|t| t.join("browser-artifacts"))
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser-artifacts")
        })
}

/// Runs one browser test: one at a time (they share the machine), each with its own
/// Chromium and server, on its own runtime, bounded in time.
fn run<F, Fut>(name: &str, test: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = ()>,
{
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let artifacts = artifacts_root().join(name);
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts)
        .unwrap_or_else(|e| panic!("create {}: {e}", artifacts.display()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let browser = Browser::launch(&artifacts).await;
        let server = Server::start();
        let ctx = Ctx { server, browser };
        if tokio::time::timeout(Duration::from_secs(150), test(ctx))
            .await
            .is_err()
        {
            panic!("{name}: did not finish within 150 s");
        }
    });
    eprintln!(
        "{name}: passed in {:.1} s; artifacts in {}",
        started.elapsed().as_secs_f64(),
        artifacts.display()
    );
}
