//! Cold-start benchmark: how long the real `confab serve` takes from exec to answering
//! `GET /readyz`, and how much memory the idle process holds, on an empty data directory and
//! on one holding N stored, indexed messages (default 1,000,000 in 1,000 rooms).
//!
//! Then, on the stored corpus, the memory of a server that has served every message once:
//! it pages through the history of every room over REST (200 messages a request) and reads
//! VmRSS right after and once the server has been quiet for a while.
//!
//! `cargo bench --bench coldstart` (or `-- 200000` for a smaller corpus; `-- --keep DIR` stores
//! the corpus in DIR and reuses it on the next run instead of building it again).

#[path = "common/corpus.rs"]
mod corpus;

use anyhow::{Context, bail};
use confab::config::SearchConfig;
use confab::metrics::Metrics;
use confab::search::Search;
use confab::store::Store;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RUNS: usize = 15;

struct Start {
    /// exec → the `listening on` line on stdout.
    listening: Duration,
    /// exec → the first `200` from `GET /readyz`.
    ready: Duration,
    /// VmRSS one second after ready, with nothing connected.
    rss_kib: u64,
    rss_anon_kib: u64,
}

fn main() -> anyhow::Result<()> {
    let mut total = 1_000_000usize;
    let mut keep: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--keep" {
            keep = Some(args.next().context("--keep needs a directory")?.into());
        } else if let Ok(n) = a.parse() {
            total = n;
        }
        // Anything else (cargo's own `--bench`) is ignored.
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_confab"));

    let empty = tempfile::tempdir()?;
    let fresh = start_once(&bin, empty.path())?; // the very first start writes secrets
    println!(
        "first start on an empty data directory: ready in {:.1} ms",
        ms(fresh.ready)
    );
    report("empty data directory", &measure(&bin, empty.path())?);

    let temp;
    let dir = match &keep {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_owned()
        }
    };
    let marker = dir.join(format!("corpus-{total}"));
    if !marker.exists() {
        std::fs::create_dir_all(&dir)?;
        let metrics = Arc::new(Metrics::new());
        let store = Store::open(&dir, Some(1), 4096, metrics)?;
        let words = corpus::vocabulary();
        let (_, took) = corpus::store_corpus(&store, &words, total)?;
        println!(
            "stored {total} messages in {} rooms in {:.1} s",
            corpus::ROOMS,
            took.as_secs_f64()
        );
        let started = Instant::now();
        Search::rebuild(&dir, &SearchConfig::default(), &store)?;
        println!("indexed them in {:.1} s", started.elapsed().as_secs_f64());
        store.close();
        drop(store);
        std::fs::write(&marker, b"")?;
    }
    // One start to settle anything a first start does (setup token, files directories).
    start_once(&bin, &dir)?;
    report(
        &format!("{total} messages in {} rooms", corpus::ROOMS),
        &measure(&bin, &dir)?,
    );
    history_sweep(&bin, &dir)?;
    let db = std::fs::metadata(dir.join("confab.redb")).map_or(0, |m| m.len());
    println!("database file: {:.1} MiB", db as f64 / (1 << 20) as f64);
    Ok(())
}

fn measure(bin: &Path, dir: &Path) -> anyhow::Result<Vec<Start>> {
    (0..RUNS).map(|_| start_once(bin, dir)).collect()
}

fn report(what: &str, runs: &[Start]) {
    let mut ready: Vec<Duration> = runs.iter().map(|r| r.ready).collect();
    let mut listening: Vec<Duration> = runs.iter().map(|r| r.listening).collect();
    ready.sort();
    listening.sort();
    let mut rss: Vec<u64> = runs.iter().map(|r| r.rss_kib).collect();
    rss.sort();
    let mut anon: Vec<u64> = runs.iter().map(|r| r.rss_anon_kib).collect();
    anon.sort();
    let mid = runs.len() / 2;
    println!(
        "{what}: {} starts; exec -> ready p50 {:.1} ms (min {:.1}, max {:.1}); \
         exec -> 'listening on' p50 {:.1} ms; idle RSS p50 {:.1} MiB (anonymous {:.1} MiB)",
        runs.len(),
        ms(ready[mid]),
        ms(ready[0]),
        ms(ready[runs.len() - 1]),
        ms(listening[mid]),
        rss[mid] as f64 / 1024.0,
        anon[mid] as f64 / 1024.0,
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Starts the server on `dir`, times it to ready, reads its memory, and stops it (SIGTERM).
fn start_once(bin: &Path, dir: &Path) -> anyhow::Result<Start> {
    let started = Instant::now();
    let mut child = spawn_server(bin, dir)?;
    let res = time_start(&mut child, started);
    sigterm(&child);
    let exit = wait_bounded(&mut child, Duration::from_secs(20));
    let start = res?;
    if !exit? {
        bail!("the server did not exit within 20 s of SIGTERM");
    }
    Ok(start)
}

fn time_start(child: &mut Child, started: Instant) -> anyhow::Result<Start> {
    time_start_at(child, started).map(|(s, _)| s)
}

/// As `time_start`, and the address the server listens on.
fn time_start_at(child: &mut Child, started: Instant) -> anyhow::Result<(Start, String)> {
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout);
    let mut line = String::new();
    let addr = loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            bail!("the server exited before listening");
        }
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest
                .split(|c: char| c.is_whitespace() || c == '/')
                .next()
                .unwrap_or_default()
                .to_owned();
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("no 'listening on' line within 60 s");
        }
    };
    let listening = started.elapsed();
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut lines, &mut std::io::sink()));
    let ready = loop {
        if readyz(&addr).unwrap_or(false) {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("not ready within 60 s");
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    std::thread::sleep(Duration::from_secs(1));
    let field = |name: &str| status_kib(child.id(), name).unwrap_or(0);
    Ok((
        Start {
            listening,
            ready,
            rss_kib: field("VmRSS:"),
            rss_anon_kib: field("RssAnon:"),
        },
        addr,
    ))
}

/// Starts the server on the corpus, reads every room's whole history as its owner, and
/// reports VmRSS before, right after, and after a quiet spell long enough for the server to
/// hand free memory back (src/memory.rs).
fn history_sweep(bin: &Path, dir: &Path) -> anyhow::Result<()> {
    let token = Command::new(bin)
        .args(["token", "--user", "bench", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .output()?;
    if !token.status.success() {
        bail!(
            "confab token failed: {}",
            String::from_utf8_lossy(&token.stderr)
        );
    }
    let token = String::from_utf8(token.stdout)?.trim().to_owned();
    let started = Instant::now();
    let mut child = spawn_server(bin, dir)?;
    let res = sweep_running(&mut child, started, &token);
    sigterm(&child);
    wait_bounded(&mut child, Duration::from_secs(20))?;
    res
}

fn sweep_running(child: &mut Child, started: Instant, token: &str) -> anyhow::Result<()> {
    let (start, addr) = time_start_at(child, started)?;
    let pid = child.id();
    let rss =
        |what: &str| status_kib(pid, what).with_context(|| format!("no {what} for the server"));
    let rooms = get_json(&addr, "/api/rooms", token)?;
    let rooms: Vec<String> = rooms["rooms"]
        .as_array()
        .context("no rooms in GET /api/rooms")?
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect();
    let t = Instant::now();
    let (mut messages, mut requests) = (0u64, 0u64);
    for room in &rooms {
        let mut before: Option<String> = None;
        loop {
            let path = match &before {
                Some(b) => format!("/api/rooms/{room}/messages?limit=200&before={b}"),
                None => format!("/api/rooms/{room}/messages?limit=200"),
            };
            let page = get_json(&addr, &path, token)?;
            requests += 1;
            let list = page["messages"].as_array().context("no messages")?;
            messages += list.len() as u64;
            // Pages come newest first; the next page ends before this one's last message.
            before = list
                .last()
                .and_then(|m| m["id"].as_str().map(str::to_owned));
            if page["has_more"] != serde_json::Value::Bool(true) || before.is_none() {
                break;
            }
        }
    }
    let took = t.elapsed();
    let after = rss("VmRSS:")?;
    let (hwm, anon) = (rss("VmHWM:")?, rss("RssAnon:")?);
    // The trimmer gives memory back after 5-10 s without traffic.
    std::thread::sleep(Duration::from_secs(12));
    let quiet = rss("VmRSS:")?;
    let quiet_anon = rss("RssAnon:")?;
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "history of {} rooms ({messages} messages, {requests} requests) read in {:.1} s; \
         RSS idle {:.1} MiB, right after {:.1} MiB (anonymous {:.1}, peak {:.1}), \
         after 12 s quiet {:.1} MiB (anonymous {:.1})",
        rooms.len(),
        took.as_secs_f64(),
        mib(start.rss_kib),
        mib(after),
        mib(anon),
        mib(hwm),
        mib(quiet),
        mib(quiet_anon),
    );
    Ok(())
}

/// `GET path` with a bearer token on a fresh connection; the body as JSON.
fn get_json(addr: &str, path: &str, token: &str) -> anyhow::Result<serde_json::Value> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    // Chunked or not: the JSON object spans the first '{' to the last '}'.
    let (Some(a), Some(b)) = (body.find('{'), body.rfind('}')) else {
        bail!("GET {path}: no JSON body");
    };
    Ok(serde_json::from_str(&body[a..=b])?)
}

/// `confab serve` on an OS-chosen port over `dir`, its stdout piped (for `listening on`).
fn spawn_server(bin: &Path, dir: &Path) -> std::io::Result<Child> {
    Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
}

fn sigterm(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

/// One `kB` field of `/proc/PID/status` (`VmRSS:`, `RssAnon:`, `VmHWM:`), in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn readyz(addr: &str) -> anyhow::Result<bool> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    Ok(head.ends_with(b"200"))
}

/// Waits for the child to exit, at most `limit`; kills it after that. True if it exited.
fn wait_bounded(child: &mut Child, limit: Duration) -> anyhow::Result<bool> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if child.try_wait()?.is_some() {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill()?;
    child.wait()?;
    Ok(false)
}
