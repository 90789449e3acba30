//! The `confab` binary: parses the command line, loads configuration, sets up logging, and
//! hands over to the library. No chat logic lives here.

use anyhow::Context;
use clap::{Parser, Subcommand};
use confab::config::{self, LogFormat, Overrides};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "confab",
    version,
    about = "Confab: a single-binary chat server"
)]
struct Cli {
    /// Configuration file (default: ./config.toml when present).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Data directory (overrides storage.data_dir).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on (overrides server.listen), e.g. 0.0.0.0:8080.
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<String>,
    /// Log filter (overrides log.level), e.g. debug or confab=debug,info.
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Mint a token signed with the local key, for embedding hosts, scripts and tests.
    Token {
        /// The user id (the token's `sub`): a built-in name, without `:` (a host
        /// application's users are `<namespace>:<sub>` and come only from its own keys).
        #[arg(long)]
        user: String,
        /// Display name (the token's `name`).
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. 30m, 1h, 7d (default: auth.token_ttl_secs).
        #[arg(long)]
        ttl: Option<humantime::Duration>,
    },
    /// Check the configuration, print every value and where it came from, and exit.
    CheckConfig,
    /// Rebuild the search index from storage (stop the server first).
    Reindex,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let overrides = Overrides {
        listen: cli.listen.clone(),
        data_dir: cli.data_dir.clone(),
        log_level: cli.log_level.clone(),
    };
    let loaded = match config::load(cli.config.as_deref(), &overrides) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    for key in &loaded.unknown_keys {
        eprintln!("warning: unknown configuration key `{key}` (ignored)");
    }
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(loaded),
        Command::Token { user, name, ttl } => {
            let auth = confab::auth::Authenticator::new(
                &loaded.config.auth,
                &loaded.config.storage.data_dir,
            )?;
            let token = auth.mint(&user, name.as_deref(), ttl.map(|d| d.as_secs().max(1)))?;
            println!("{token}");
            Ok(())
        }
        Command::Reindex => {
            init_logging(&loaded.config.log.level, loaded.config.log.format);
            let started = std::time::Instant::now();
            let n = match confab::app::reindex(&loaded.config) {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("error: could not rebuild the search index: {e}");
                    std::process::exit(1);
                }
            };
            println!(
                "search index rebuilt: {n} messages in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::CheckConfig => {
            print_provenance(&loaded);
            if let Err(e) = confab::auth::check_public_keys(&loaded.config.auth) {
                eprintln!("error: auth.public_keys: {e}");
                std::process::exit(2);
            }
            println!("configuration is valid");
            Ok(())
        }
    }
}

fn print_provenance(loaded: &config::Loaded) {
    let width = loaded
        .provenance
        .iter()
        .map(|(k, v, _)| k.len() + v.len())
        .max()
        .unwrap_or(0);
    for (key, value, source) in &loaded.provenance {
        let pad = width.saturating_sub(key.len() + value.len());
        println!("  {key} = {value}{:pad$}   ({source})", "");
    }
}

fn serve(loaded: config::Loaded) -> anyhow::Result<()> {
    let mut cfg = loaded.config.clone();
    init_logging(&cfg.log.level, cfg.log.format);
    // Many connections need many descriptors: take what the hard limit allows, then fit the
    // connection cap under what we got.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    cfg.open_file_limit = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _)) if soft != rlimit::INFINITY => Some(soft),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the open-file limit");
            None
        }
    };
    let caps = confab::server::Caps::fit(cfg.server.max_connections, cfg.open_file_limit);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let data_dir =
            std::path::absolute(&cfg.storage.data_dir).unwrap_or(cfg.storage.data_dir.clone());
        let app = confab::App::open(cfg.clone())
            .with_context(|| format!("opening the data directory {}", data_dir.display()))?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("listening on {}", cfg.listen))?;
        let addr = listener.local_addr()?;
        println!(
            "Confab {} (node {})",
            env!("CARGO_PKG_VERSION"),
            app.node_id()
        );
        println!("data directory: {}", data_dir.display());
        println!("configuration (value and where it came from):");
        print_provenance(&loaded);
        match cfg.open_file_limit {
            Some(limit) if caps.websockets < cfg.server.max_connections => {
                println!(
                    "connections: at most {} WebSockets, not server.max_connections = {}: the \
                     open-file limit is {limit} ({} kept for files); raise it (ulimit -n, \
                     LimitNOFILE=) to allow more",
                    caps.websockets, cfg.server.max_connections, caps.reserve
                );
                tracing::warn!(
                    websockets = caps.websockets,
                    max_connections = cfg.server.max_connections,
                    open_file_limit = limit,
                    "connection cap lowered to fit the open-file limit"
                );
            }
            Some(limit) => println!(
                "connections: at most {} WebSockets (open-file limit {limit})",
                caps.websockets
            ),
            None => println!("connections: at most {} WebSockets", caps.websockets),
        }
        println!("listening on http://{addr}");
        println!(
            "  open http://{addr}/ in a browser, or connect a WebSocket to ws://{addr}/ws?token=..."
        );
        if let Some(token) = app.setup_token() {
            println!();
            println!(
                "First run: no administrator yet. Create the admin account and a first room at"
            );
            println!("  http://{addr}/?setup={token}");
            println!(
                "(this link works once; a new one is printed at every start until setup is done)"
            );
            println!();
        }
        tracing::info!(%addr, "ready");
        app.run(listener, shutdown_signal()).await;
        anyhow::Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
