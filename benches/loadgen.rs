//! confab-loadgen: a black-box WebSocket load generator for Confab (fan-out, latency, memory).
//!
//! It sets up users and rooms over REST (Confab only; `--peer ceiling|socketio` drive the
//! comparison servers, which need no setup), opens N WebSocket connections, has K of them send
//! `send_message` at a fixed rate (or as fast as a bounded in-flight window allows) with the send
//! time embedded in the content, and has every connection measure send→receipt latency from the
//! `receive_message` frames it gets. It checks that every acked message reaches every member of
//! its room exactly once and in id order, and reads the server's resident memory before and
//! after opening the connections. See `benches/README.md`.

#[path = "loadgen/api.rs"]
mod api;
#[path = "loadgen/conn.rs"]
mod conn;
#[path = "loadgen/stats.rs"]
mod stats;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::api::{Api, Minter};
use crate::conn::{Peer, ReaderCtx, ReaderOut, SenderCfg, SenderOut, Target, Window, Writer};
use crate::stats::Shared;

/// Load generator for the Confab chat server (a black-box WebSocket client).
#[derive(Parser, Debug, Clone)]
#[command(name = "confab-loadgen", version)]
struct Args {
    /// Server base URL (http only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The server: Confab, the bare ceiling server (confab-ceiling), or a Socket.IO v4 server.
    #[arg(long, value_enum, default_value_t = Peer::Confab)]
    peer: Peer,
    /// WebSocket connections to open (one user each).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Rooms; connection i joins room i % rooms, so each has connections/rooms members.
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Messages per second across all senders; 0 = as fast as the in-flight bound allows.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Measured seconds of load (after the warmup).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Message content size in bytes (at least the ~30-byte timestamp marker).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Connections that send (connection k sends into room k % rooms); default one per room.
    #[arg(long)]
    senders: Option<usize>,
    /// Most unacknowledged messages per sender.
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
    /// Open and authenticate the connections, measure memory, send nothing.
    #[arg(long)]
    idle: bool,
    /// Mint tokens locally with the HS256 secret in DATA_DIR/jwt-secret (Confab only).
    #[arg(long, value_name = "DATA_DIR", conflicts_with = "register")]
    tokens_from: Option<PathBuf>,
    /// Register users over REST (the default; Confab only).
    #[arg(long)]
    register: bool,
    /// Also print the result as one line of JSON (last line of stdout).
    #[arg(long)]
    json: bool,
    /// Server process id: also read VmRSS from /proc/PID/status.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Setup requests and connection attempts in flight at once.
    #[arg(long, default_value_t = 64)]
    setup_concurrency: usize,
    /// Seconds each setup phase (users, rooms, joins, connections) may take in all.
    #[arg(long, default_value_t = 300)]
    setup_timeout: u64,
    /// Seconds one connection may take to upgrade and receive `hello`.
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
    /// Seconds to wait after the load for outstanding acks and deliveries.
    #[arg(long, default_value_t = 5)]
    drain: u64,
    /// Run id used in usernames and room names (default: random).
    #[arg(long)]
    run_id: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(ok) => {
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("confab-loadgen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs a progress line on stderr.
macro_rules! info {
    ($($t:tt)*) => { eprintln!("[loadgen] {}", format_args!($($t)*)) };
}

/// One open connection, as the run holds it.
struct Conn {
    writer: Writer,
    reader: JoinHandle<ReaderOut>,
    in_flight: Option<Arc<Window>>,
}

/// Runs the whole scenario; `Ok(false)` when the run completed but found loss or failures.
async fn run(args: Args) -> Result<bool> {
    let n = args.connections;
    let r = args.rooms;
    let k = if args.idle {
        0
    } else {
        args.senders.unwrap_or(r)
    };
    if n == 0 || r == 0 || r > n {
        bail!("need 1 <= --rooms <= --connections (got {r} rooms, {n} connections)");
    }
    if k > n {
        bail!("--senders {k} is more than --connections {n}");
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be >= 0");
    }
    if args.in_flight == 0 || args.setup_concurrency == 0 {
        bail!("--in-flight and --setup-concurrency must be at least 1");
    }
    check_fd_limit(n + args.setup_concurrency + 64)?;

    let (base, target) = parse_url(&args.url).await?;
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(|| format!("{:08x}", rand::random::<u32>()));
    let setup_timeout = Duration::from_secs(args.setup_timeout);
    let conc = args.setup_concurrency;
    let members: Vec<usize> = (0..r).map(|j| (n - j).div_ceil(r)).collect();
    let senders_in_room: Vec<usize> = (0..r)
        .map(|j| if j < k { (k - j).div_ceil(r) } else { 0 })
        .collect();
    let peer = args.peer;
    info!(
        "run {run_id}: {n} connections, {r} rooms, {k} senders, {peer:?} server {}",
        args.url
    );
    if peer != Peer::Confab {
        if args.server_pid.is_none() {
            info!("warning: without --server-pid there is no memory or server CPU figure");
        }
        if args.tokens_from.is_some() || args.register {
            info!("note: --tokens-from and --register are for Confab; ignored");
        }
    }

    let (tokens, room_ids, tokens_s, rooms_s) = if peer == Peer::Confab {
        confab_setup(&args, &base, &run_id).await?
    } else {
        // No accounts, no REST: connection i names its room, `r<i % rooms>`, when it connects.
        (
            Vec::new(),
            (0..r).map(|j| format!("r{j}")).collect(),
            0.0,
            0.0,
        )
    };
    let tokens = Arc::new(tokens);

    // Memory before: REST connections closed, nothing open.
    let metrics_api = Api::new(&base, 0, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mem_before = read_memory(&metrics_api, args.server_pid, peer).await;

    // Connections.
    let shared = Arc::new(Shared::new(r));
    let (stop_tx, stop_rx) = watch::channel(false);
    let t = Instant::now();
    let conns: Vec<Conn> = {
        let (tokens, shared, senders_in_room) = (
            tokens.clone(),
            shared.clone(),
            Arc::new(senders_in_room.clone()),
        );
        let connect_timeout = Duration::from_secs(args.connect_timeout);
        let in_flight = args.in_flight;
        let target = Arc::new(target);
        bounded("connect", n, conc, setup_timeout, move |i| {
            let (tokens, shared, target) = (tokens.clone(), shared.clone(), target.clone());
            let senders_in_room = senders_in_room.clone();
            let stop = stop_rx.clone();
            async move {
                let path = match peer {
                    Peer::Confab => format!("/ws?token={}", tokens[i]),
                    Peer::Ceiling => format!("/ws?user={i}&room=r{}", i % r),
                    Peer::Socketio => {
                        format!(
                            "/socket.io/?EIO=4&transport=websocket&user={i}&room=r{}",
                            i % r
                        )
                    }
                };
                let (reader, writer) = tokio::time::timeout(
                    connect_timeout,
                    conn::connect(&target, &path, peer, shared.base),
                )
                .await
                .map_err(|_| anyhow!("no upgrade and hello within {connect_timeout:?}"))??;
                let window = (i < k).then(|| Arc::new(Window::new(in_flight)));
                let ctx = ReaderCtx {
                    conn: i,
                    peer,
                    room: i % r,
                    rooms: r,
                    senders_in_room: senders_in_room[i % r],
                    shared,
                    in_flight: window.clone(),
                    stop,
                };
                let reader = tokio::spawn(conn::read_loop(ctx, reader, writer.clone()));
                Ok(Conn {
                    writer,
                    reader,
                    in_flight: window,
                })
            }
        })
        .await?
    };
    let connect_s = t.elapsed().as_secs_f64();
    info!("{n} connections open (hello received) in {connect_s:.2} s");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let mem_after = read_memory(&metrics_api, args.server_pid, peer).await;
    let mut memory = MemoryReport::new(&mem_before, &mem_after, n);
    let dropped_while_idle: u64 = shared.disconnects.lock().values().sum();

    // Load.
    let mut sender_outs: Vec<SenderOut> = Vec::new();
    let mut drained = true;
    let mut drain_s = 0.0;
    let mut cpu = CpuReport::default();
    if !args.idle && k > 0 {
        let start = Instant::now() + Duration::from_millis(100);
        let warm_end = start + Duration::from_secs_f64(args.warmup);
        let end = warm_end + Duration::from_secs_f64(args.duration);
        let ns = |at: Instant| (at.into_std() - shared.base).as_nanos() as u64;
        shared.window_start.store(ns(warm_end), Ordering::Relaxed);
        shared.window_end.store(ns(end), Ordering::Relaxed);
        let period = (args.rate > 0.0).then(|| Duration::from_secs_f64(k as f64 / args.rate));
        info!(
            "load: {} for {:.1} s warmup + {:.1} s measured",
            if args.rate > 0.0 {
                format!("{} msg/s over {k} senders", args.rate)
            } else {
                format!(
                    "as fast as possible, {} in flight per sender",
                    args.in_flight
                )
            },
            args.warmup,
            args.duration
        );
        let mut handles = Vec::with_capacity(k);
        for (s, c) in conns.iter().enumerate().take(k) {
            let offset = if args.rate > 0.0 {
                Duration::from_secs_f64(s as f64 / args.rate)
            } else {
                Duration::ZERO
            };
            let cfg = SenderCfg {
                peer,
                k: s,
                room_id: room_ids[s % r].clone(),
                size: args.size,
                period,
                first_at: start + offset,
                end_at: end,
            };
            let sem = c
                .in_flight
                .clone()
                .ok_or_else(|| anyhow!("sender without permits"))?;
            handles.push(tokio::spawn(conn::send_loop(
                cfg,
                c.writer.clone(),
                sem,
                shared.clone(),
            )));
        }
        // CPU use over the measured window (who is the bottleneck).
        tokio::time::sleep_until(warm_end).await;
        let server = args.server_pid.map(|p| p.to_string());
        let server = server.as_deref();
        let t0 = std::time::Instant::now();
        let (lg0, sv0) = (sched("self"), server.and_then(sched));
        tokio::time::sleep_until(end).await;
        let (lg1, sv1) = (sched("self"), server.and_then(sched));
        cpu = CpuReport::new(t0.elapsed(), lg0.zip(lg1), sv0.zip(sv1));
        for h in handles {
            sender_outs.push(h.await.unwrap_or_default());
        }
        // Drain: wait for outstanding replies and deliveries.
        let t = Instant::now();
        let deadline = t + Duration::from_secs(args.drain);
        loop {
            let sent = shared.sent.load(Ordering::Relaxed);
            let replies =
                shared.acked.load(Ordering::Relaxed) + shared.error_replies.load(Ordering::Relaxed);
            let all_delivered = (0..r).all(|j| {
                shared.room_delivered[j].load(Ordering::Relaxed)
                    >= shared.room_acked[j].load(Ordering::Relaxed) * members[j] as u64
            });
            if replies >= sent && all_delivered {
                break;
            }
            let gone: u64 = shared.disconnects.lock().values().sum();
            if gone >= n as u64 {
                drained = false;
                info!("drain: every connection has ended");
                break;
            }
            if Instant::now() >= deadline {
                drained = false;
                info!(
                    "drain: gave up after {} s ({replies}/{sent} replies)",
                    args.drain
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drain_s = t.elapsed().as_secs_f64();
    }
    // The server's peak resident memory over the whole run (each scenario gets a fresh
    // server, so this is the peak under this load), and where it stands after the drain.
    if let Some(p) = args.server_pid {
        memory.vmrss_peak_bytes = api::vm_hwm(p).ok();
        memory.vmrss_end_bytes = api::vm_rss(p).ok();
    }

    // Stop readers, close connections.
    let _ = stop_tx.send(true);
    let mut outs: Vec<Option<ReaderOut>> = Vec::with_capacity(n);
    let join_deadline = Instant::now() + Duration::from_secs(5);
    let mut writers = Vec::with_capacity(n);
    for c in conns {
        writers.push(c.writer);
        let mut reader = c.reader;
        let out = match tokio::time::timeout_at(join_deadline, &mut reader).await {
            Ok(Ok(out)) => Some(out),
            _ => {
                reader.abort();
                None
            }
        };
        outs.push(out);
    }
    let closers: Vec<_> = writers
        .into_iter()
        .map(|w| tokio::spawn(async move { conn::close(&w, peer).await }))
        .collect();
    for c in closers {
        let _ = c.await;
    }

    let report = build_report(ReportInput {
        args: &args,
        run_id,
        k,
        members: &members,
        senders_in_room: &senders_in_room,
        shared: &shared,
        outs: &outs,
        senders: &sender_outs,
        setup: SetupTimes {
            tokens_s,
            rooms_s,
            connect_s,
        },
        memory,
        drained,
        drain_s,
        dropped_while_idle,
        cpu,
    });
    print_human(&report);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(report.ok)
}

/// Confab's REST setup: a token per user, room j created by connection j, the others joined.
/// Returns the tokens, the room ids and the seconds each phase took.
async fn confab_setup(
    args: &Args,
    base: &str,
    run_id: &str,
) -> Result<(Vec<String>, Vec<String>, f64, f64)> {
    let (n, r, conc) = (args.connections, args.rooms, args.setup_concurrency);
    let setup_timeout = Duration::from_secs(args.setup_timeout);
    let t = Instant::now();
    let api = Api::new(base, conc, Duration::from_secs(30));
    let usernames: Vec<String> = (0..n).map(|i| format!("lg{run_id}u{i}")).collect();
    let tokens: Vec<String> = if let Some(dir) = &args.tokens_from {
        let minter = Minter::from_data_dir(dir, Duration::from_secs(24 * 3600))?;
        usernames
            .iter()
            .map(|u| minter.token(u))
            .collect::<Result<_>>()?
    } else {
        let api = api.clone();
        let names = Arc::new(usernames.clone());
        bounded("register user", n, conc, setup_timeout, move |i| {
            let api = api.clone();
            let names = names.clone();
            async move { api.register(&names[i]).await }
        })
        .await?
    };
    let tokens = Arc::new(tokens);
    let tokens_s = t.elapsed().as_secs_f64();
    info!("tokens for {n} users in {tokens_s:.2} s");

    // Rooms: connection j < r creates room j; the others join room i % r.
    let t = Instant::now();
    let room_ids = {
        let (api, tokens, run_id) = (api.clone(), tokens.clone(), run_id.to_owned());
        bounded("create room", r, conc, setup_timeout, move |j| {
            let (api, tokens) = (api.clone(), tokens.clone());
            let name = format!("lg {run_id} room {j}");
            async move { api.create_room(&tokens[j], &name).await }
        })
        .await?
    };
    let room_ids = Arc::new(room_ids);
    {
        let (api, tokens, room_ids) = (api.clone(), tokens.clone(), room_ids.clone());
        bounded("join room", n - r, conc, setup_timeout, move |t| {
            let (api, tokens, room_ids) = (api.clone(), tokens.clone(), room_ids.clone());
            let i = t + r;
            async move { api.join_room(&tokens[i], &room_ids[i % r]).await }
        })
        .await?;
    }
    drop(api);
    let rooms_s = t.elapsed().as_secs_f64();
    info!("{r} rooms created and joined in {rooms_s:.2} s");
    let tokens = Arc::try_unwrap(tokens).unwrap_or_else(|t| (*t).clone());
    let room_ids = Arc::try_unwrap(room_ids).unwrap_or_else(|ids| (*ids).clone());
    Ok((tokens, room_ids, tokens_s, rooms_s))
}

/// Runs `f(0..n)` with at most `concurrency` in flight, failing on the first error or when the
/// whole phase exceeds `deadline`. Prints progress every few seconds.
async fn bounded<T, F, Fut>(
    what: &str,
    n: usize,
    concurrency: usize,
    deadline: Duration,
    f: F,
) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let slots: Arc<parking_lot::Mutex<Vec<Option<T>>>> =
        Arc::new(parking_lot::Mutex::new((0..n).map(|_| None).collect()));
    let mut set = JoinSet::new();
    for _ in 0..concurrency.min(n) {
        let (f, next, done, slots) = (f.clone(), next.clone(), done.clone(), slots.clone());
        let what = what.to_owned();
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                let v = f(i).await.with_context(|| format!("{what} #{i}"))?;
                slots.lock()[i] = Some(v);
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let started = Instant::now();
    let hard_deadline = started + deadline;
    let mut tick =
        tokio::time::interval_at(started + Duration::from_secs(5), Duration::from_secs(5));
    loop {
        tokio::select! {
            r = set.join_next() => match r {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(anyhow!("{what}: task failed: {e}")),
            },
            _ = tick.tick() => info!("{what}: {}/{n}", done.load(Ordering::Relaxed)),
            _ = tokio::time::sleep_until(hard_deadline) => bail!(
                "{what}: only {}/{n} done within {deadline:?} (see --setup-timeout, --setup-concurrency)",
                done.load(Ordering::Relaxed)
            ),
        }
    }
    let mut slots = slots.lock();
    slots
        .iter_mut()
        .enumerate()
        .map(|(i, s)| s.take().ok_or_else(|| anyhow!("{what} #{i}: no result")))
        .collect()
}

/// Splits `http://host:port[/]` into the REST base and the WebSocket target.
async fn parse_url(url: &str) -> Result<(String, Target)> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("bad --url {url:?}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--url must be http://host:port (TLS is not supported)");
    }
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow!("--url {url:?} has no host"))?;
    let host = authority.host();
    let port = authority.port_u16().unwrap_or(80);
    let addr = conn::resolve(&format!("{host}:{port}")).await?;
    let base = format!("http://{authority}");
    Ok((
        base,
        Target {
            addr,
            host: authority.to_string(),
        },
    ))
}

/// Fails early when the open-file limit cannot hold the connections (raise it with `ulimit -n`).
fn check_fd_limit(needed: usize) -> Result<()> {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return Ok(());
    };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    match soft {
        Some(soft) if soft < needed => Err(anyhow!(
            "open-file limit {soft} is below the ~{needed} this run needs; raise it (ulimit -n)"
        )),
        _ => Ok(()),
    }
}

/// Nanoseconds on a CPU and waiting for one (run queue), summed over the threads of a
/// process (`"self"` or a pid), from /proc/PID/task/*/schedstat.
fn sched(pid: &str) -> Option<(u64, u64)> {
    let mut total = (0u64, 0u64);
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(line) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        let mut f = line
            .split_whitespace()
            .map(|v| v.parse::<u64>().unwrap_or(0));
        total.0 += f.next().unwrap_or(0);
        total.1 += f.next().unwrap_or(0);
    }
    Some(total)
}

/// CPU use over the measured window, in % of one core.
#[derive(Serialize, Default)]
struct CpuReport {
    /// The server's CPU time (needs --server-pid).
    server_pct: Option<f64>,
    /// Time the server's threads were runnable but waiting for a CPU: when high, something else
    /// (the generator, another process) took the server's core and the figures understate it.
    server_wait_pct: Option<f64>,
    /// The generator's own CPU time: near 100 % means the generator may be the bottleneck.
    loadgen_pct: Option<f64>,
    /// Time the generator's threads waited for a CPU.
    loadgen_wait_pct: Option<f64>,
}

/// Two (on-CPU ns, waiting ns) samples.
type SchedPair = ((u64, u64), (u64, u64));

impl CpuReport {
    fn new(window: Duration, loadgen: Option<SchedPair>, server: Option<SchedPair>) -> Self {
        let ns = window.as_nanos().max(1) as f64;
        let pct = |a: u64, b: u64| b.saturating_sub(a) as f64 * 100.0 / ns;
        CpuReport {
            server_pct: server.map(|(a, b)| pct(a.0, b.0)),
            server_wait_pct: server.map(|(a, b)| pct(a.1, b.1)),
            loadgen_pct: loadgen.map(|(a, b)| pct(a.0, b.0)),
            loadgen_wait_pct: loadgen.map(|(a, b)| pct(a.1, b.1)),
        }
    }
}

/// Resident memory readings at one point.
#[derive(Default)]
struct Memory {
    metrics: Option<u64>,
    vmrss: Option<u64>,
}

/// Resident memory from `/metrics` and from VmRSS (`--server-pid`). Only Confab must have
/// `/metrics`: for the other peers its absence is normal and VmRSS is the figure.
async fn read_memory(api: &Api, pid: Option<u32>, peer: Peer) -> Memory {
    let metrics = match api.resident_memory().await {
        Ok(Some(v)) => Some(v),
        _ if peer != Peer::Confab => None,
        Ok(None) => {
            info!("warning: /metrics has no process_resident_memory_bytes");
            None
        }
        Err(e) => {
            info!("warning: reading /metrics: {e:#}");
            None
        }
    };
    let vmrss = pid.and_then(|p| match api::vm_rss(p) {
        Ok(v) => Some(v),
        Err(e) => {
            info!("warning: {e:#}");
            None
        }
    });
    Memory { metrics, vmrss }
}

#[derive(Serialize, Default)]
struct MemoryReport {
    metrics_before_bytes: Option<u64>,
    metrics_after_bytes: Option<u64>,
    /// (after - before) / connections, from /metrics.
    per_connection_bytes: Option<f64>,
    vmrss_before_bytes: Option<u64>,
    vmrss_after_bytes: Option<u64>,
    /// (after - before) / connections, from /proc/PID/status.
    vmrss_per_connection_bytes: Option<f64>,
    /// VmHWM after the load and drain: the server's peak resident memory.
    vmrss_peak_bytes: Option<u64>,
    /// VmRSS after the load and drain.
    vmrss_end_bytes: Option<u64>,
}

impl MemoryReport {
    fn new(before: &Memory, after: &Memory, n: usize) -> Self {
        let per = |b: Option<u64>, a: Option<u64>| Some((a? as f64 - b? as f64) / n as f64);
        MemoryReport {
            metrics_before_bytes: before.metrics,
            metrics_after_bytes: after.metrics,
            per_connection_bytes: per(before.metrics, after.metrics),
            vmrss_before_bytes: before.vmrss,
            vmrss_after_bytes: after.vmrss,
            vmrss_per_connection_bytes: per(before.vmrss, after.vmrss),
            vmrss_peak_bytes: None,
            vmrss_end_bytes: None,
        }
    }
}

#[derive(Serialize)]
struct SetupTimes {
    tokens_s: f64,
    rooms_s: f64,
    connect_s: f64,
}

#[derive(Serialize, Default)]
struct Latency {
    count: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    mean_ms: f64,
}

impl Latency {
    fn from(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// The result of a run (printed as a table, and as JSON with `--json`).
#[derive(Serialize)]
struct Report {
    run_id: String,
    /// The server driven: `confab`, `ceiling` or `socketio`.
    peer: Peer,
    url: String,
    mode: &'static str,
    connections: usize,
    rooms: usize,
    members_per_room: usize,
    senders: usize,
    rate: f64,
    in_flight: usize,
    size: usize,
    warmup_s: f64,
    duration_s: f64,
    setup: SetupTimes,
    messages_sent: u64,
    messages_acked: u64,
    error_replies: u64,
    late_sends: u64,
    write_errors: Vec<String>,
    /// Acks of messages sent inside the measured window, per second.
    acked_per_s: f64,
    deliveries_expected: u64,
    deliveries_received: u64,
    deliveries_lost: u64,
    /// Of the lost deliveries, those on connections that stayed open to the end (a real loss;
    /// the rest were on connections the server closed).
    deliveries_lost_open: u64,
    loss_pct: f64,
    /// Deliveries of messages whose ack never came.
    deliveries_unacked: u64,
    duplicates: u64,
    reorders: u64,
    foreign_frames: u64,
    duplicate_acks: u64,
    /// `receive_message` frames received inside the measured window, per second.
    delivered_per_s: f64,
    latency: Latency,
    ack_latency: Latency,
    errors: BTreeMap<String, u64>,
    disconnects: BTreeMap<String, u64>,
    disconnects_before_load: u64,
    /// CPU use during the measured window, in % of one core.
    cpu: CpuReport,
    other_events: BTreeMap<String, u64>,
    readers_lost: usize,
    drained: bool,
    drain_s: f64,
    memory: MemoryReport,
    /// No loss, no errors, no disconnects, no reorders or duplicates.
    ok: bool,
}

struct ReportInput<'a> {
    args: &'a Args,
    run_id: String,
    k: usize,
    members: &'a [usize],
    senders_in_room: &'a [usize],
    shared: &'a Shared,
    outs: &'a [Option<ReaderOut>],
    senders: &'a [SenderOut],
    setup: SetupTimes,
    memory: MemoryReport,
    drained: bool,
    drain_s: f64,
    dropped_while_idle: u64,
    cpu: CpuReport,
}

fn build_report(inp: ReportInput<'_>) -> Report {
    let args = inp.args;
    let (n, r) = (args.connections, args.rooms);
    let empty = ReaderOut::default();
    let out = |i: usize| inp.outs[i].as_ref().unwrap_or(&empty);

    // Expected = acked × members, per room; received = deliveries of acked messages.
    // Losses on connections the server closed (or whose reader never reported) are counted
    // apart: a real client would reconnect and catch up from history.
    let (mut expected, mut received, mut seen_total) = (0u64, 0u64, 0u64);
    let mut lost_on_closed = 0u64;
    for s in 0..inp.k {
        let room = s % r;
        let local = s / r;
        let acked = &out(s).acked;
        let n_acked = acked.count();
        expected += n_acked * inp.members[room] as u64;
        for i in (room..n).step_by(r) {
            let got = out(i).seen.get(local).map_or(0, |bits| {
                seen_total += bits.count();
                bits.count_and(acked)
            });
            received += got;
            if inp.outs[i].as_ref().is_none_or(|o| o.ended_early) {
                lost_on_closed += n_acked - got;
            }
        }
    }
    debug_assert!(inp.senders_in_room.iter().sum::<usize>() == inp.k);
    let sum = |f: fn(&ReaderOut) -> u64| inp.outs.iter().flatten().map(f).sum::<u64>();
    let lost = expected.saturating_sub(received);
    let delivery_hist = inp.shared.delivery_histogram();
    let ack_hist = inp.shared.ack_histogram();
    let errors = inp.shared.errors.lock().clone();
    let disconnects = inp.shared.disconnects.lock().clone();
    let duplicates = sum(|o| o.duplicates);
    let reorders = sum(|o| o.reorders);
    let readers_lost = inp.outs.iter().filter(|o| o.is_none()).count();
    let duration = args.duration.max(1e-9);
    let write_errors: Vec<String> = inp
        .senders
        .iter()
        .filter_map(|s| s.write_error.clone())
        .collect();
    let ok = lost == 0
        && errors.is_empty()
        && disconnects.is_empty()
        && duplicates == 0
        && reorders == 0
        && readers_lost == 0
        && write_errors.is_empty()
        && inp.drained;
    Report {
        run_id: inp.run_id,
        peer: args.peer,
        url: args.url.clone(),
        mode: if args.idle { "idle" } else { "load" },
        connections: n,
        rooms: r,
        members_per_room: n / r,
        senders: inp.k,
        rate: args.rate,
        in_flight: args.in_flight,
        size: args.size,
        warmup_s: args.warmup,
        duration_s: args.duration,
        setup: inp.setup,
        messages_sent: inp.senders.iter().map(|s| s.sent).sum(),
        messages_acked: inp.shared.acked.load(Ordering::Relaxed),
        error_replies: inp.shared.error_replies.load(Ordering::Relaxed),
        late_sends: inp.senders.iter().map(|s| s.late).sum(),
        write_errors,
        acked_per_s: ack_hist.len() as f64 / duration,
        deliveries_expected: expected,
        deliveries_received: received,
        deliveries_lost: lost,
        deliveries_lost_open: lost - lost_on_closed.min(lost),
        loss_pct: if expected == 0 {
            0.0
        } else {
            lost as f64 * 100.0 / expected as f64
        },
        deliveries_unacked: seen_total - received,
        duplicates,
        reorders,
        foreign_frames: sum(|o| o.foreign),
        duplicate_acks: sum(|o| o.duplicate_acks),
        delivered_per_s: inp.shared.window_deliveries.load(Ordering::Relaxed) as f64 / duration,
        latency: Latency::from(&delivery_hist),
        ack_latency: Latency::from(&ack_hist),
        errors,
        disconnects,
        disconnects_before_load: inp.dropped_while_idle,
        cpu: inp.cpu,
        other_events: inp.shared.other_events.lock().clone(),
        readers_lost,
        drained: inp.drained,
        drain_s: inp.drain_s,
        memory: inp.memory,
        ok,
    }
}

fn fmt_map(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn fmt_lat(l: &Latency) -> String {
    if l.count == 0 {
        return "no samples".into();
    }
    format!(
        "p50 {:.3}  p99 {:.3}  p999 {:.3}  max {:.3} ms  (mean {:.3}, n={})",
        l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms, l.count
    )
}

fn fmt_mem(before: Option<u64>, after: Option<u64>, per: Option<f64>) -> Option<String> {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    Some(format!(
        "{:.1} MiB -> {:.1} MiB = {:.2} KiB/connection",
        mib(before?),
        mib(after?),
        per? / 1024.0
    ))
}

fn print_human(r: &Report) {
    let row = |k: &str, v: String| println!("  {k:<22} {v}");
    println!(
        "confab-loadgen run {} against {:?} at {} ({})",
        r.run_id, r.peer, r.url, r.mode
    );
    row(
        "connections",
        format!(
            "{} in {} rooms of ~{} members",
            r.connections, r.rooms, r.members_per_room
        ),
    );
    row(
        "setup",
        format!(
            "tokens {:.2} s, rooms {:.2} s, connect {:.2} s",
            r.setup.tokens_s, r.setup.rooms_s, r.setup.connect_s
        ),
    );
    if r.mode == "load" {
        row(
            "senders",
            format!(
                "{} at {}, <= {} in flight each, content {} B",
                r.senders,
                if r.rate > 0.0 {
                    format!("{} msg/s in all", r.rate)
                } else {
                    "full speed".into()
                },
                r.in_flight,
                r.size
            ),
        );
        row(
            "window",
            format!(
                "{:.1} s warmup + {:.1} s measured",
                r.warmup_s, r.duration_s
            ),
        );
        row(
            "messages sent",
            format!(
                "{} (acked {}, error replies {}, late sends {})",
                r.messages_sent, r.messages_acked, r.error_replies, r.late_sends
            ),
        );
        row("acked/s", format!("{:.0}", r.acked_per_s));
        row(
            "deliveries",
            format!(
                "expected {}, received {}, lost {} ({:.3} %; {} on connections still open)",
                r.deliveries_expected,
                r.deliveries_received,
                r.deliveries_lost,
                r.loss_pct,
                r.deliveries_lost_open
            ),
        );
        row(
            "anomalies",
            format!(
                "duplicates {}, reorders {}, unacked deliveries {}, foreign frames {}, duplicate acks {}",
                r.duplicates, r.reorders, r.deliveries_unacked, r.foreign_frames, r.duplicate_acks
            ),
        );
        row("delivered/s", format!("{:.0}", r.delivered_per_s));
        let pct = |p: Option<f64>| p.map_or("n/a".to_string(), |p| format!("{p:.0} %"));
        row(
            "CPU (% of one core)",
            format!(
                "server {} (waiting for CPU {}), loadgen {} (waiting {})",
                pct(r.cpu.server_pct),
                pct(r.cpu.server_wait_pct),
                pct(r.cpu.loadgen_pct),
                pct(r.cpu.loadgen_wait_pct)
            ),
        );
        row("latency send->receive", fmt_lat(&r.latency));
        row("latency send->ack", fmt_lat(&r.ack_latency));
        row("errors", fmt_map(&r.errors));
        if !r.write_errors.is_empty() {
            row("write errors", r.write_errors.join("; "));
        }
        row(
            "drain",
            format!(
                "{} in {:.2} s",
                if r.drained { "complete" } else { "TIMED OUT" },
                r.drain_s
            ),
        );
    }
    row("disconnects", fmt_map(&r.disconnects));
    if !r.other_events.is_empty() {
        row("other events", fmt_map(&r.other_events));
    }
    if r.readers_lost > 0 {
        row("readers lost", r.readers_lost.to_string());
    }
    let m = &r.memory;
    let vmrss = fmt_mem(
        m.vmrss_before_bytes,
        m.vmrss_after_bytes,
        m.vmrss_per_connection_bytes,
    );
    let metrics = fmt_mem(
        m.metrics_before_bytes,
        m.metrics_after_bytes,
        m.per_connection_bytes,
    );
    // Confab always has /metrics; the other peers may not, and then VmRSS is the figure.
    let mut label = "server memory";
    if metrics.is_some() || r.peer == Peer::Confab {
        let s = metrics.unwrap_or_else(|| "n/a".into());
        row(label, format!("{s} (/metrics)"));
        label = "";
    }
    match vmrss {
        Some(s) => row(label, format!("{s} (VmRSS)")),
        None if !label.is_empty() => row(label, "n/a (no /metrics; pass --server-pid)".into()),
        None => {}
    }
    if let Some(peak) = m.vmrss_peak_bytes {
        let end = m
            .vmrss_end_bytes
            .map(|e| format!(", {:.1} MiB after the drain", e as f64 / 1048576.0))
            .unwrap_or_default();
        row(
            "server peak RSS",
            format!("{:.1} MiB (VmHWM){end}", peak as f64 / 1048576.0),
        );
    }
    row(
        "result",
        if r.ok { "OK" } else { "PROBLEMS (see above)" }.into(),
    );
}
