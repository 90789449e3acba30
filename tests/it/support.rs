//! Shared helpers: start the real `confab` binary, mint and forge tokens, and speak REST and WebSocket to it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data as OpData, OpCode};
use tokio_tungstenite::tungstenite::{self, Message, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The server binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_confab");
/// Longest wait for any single reply, event or HTTP answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the server to report its port.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// 2025-01-01T00:00:00Z in Unix milliseconds: the epoch of message ids.
pub const ID_EPOCH_MS: u64 = 1_735_689_600_000;

static UNIQUE: AtomicU64 = AtomicU64::new(1);

/// A process-wide unique suffix for client_msg_ids and refs.
pub fn unique() -> u64 {
    UNIQUE.fetch_add(1, Ordering::Relaxed)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Parses a decimal-string id (message or room) into its integer value.
pub fn id_of(v: &Value) -> u64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("id is not a string: {v}"));
    s.parse()
        .unwrap_or_else(|e| panic!("id {s:?} is not a decimal u64: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

/// Limits every test server starts with, unless the test asks for the shipped ones with
/// `Options::stock_limits`. The shipped rate limits suit people (10 messages/s per connection,
/// 50 connection attempts per IP, ...); tests send thousands of messages and open many
/// connections from 127.0.0.1, so by default every bucket is practically unlimited.
///
/// They travel as `CONFAB_*` environment variables, which beat a config file: a test that sets
/// one of these keys in its config file must also call `stock_limits()` (or set the key through
/// `Options::env`, which replaces the relaxed value).
pub const RELAXED_LIMITS: &[(&str, &str)] = &[
    ("CONFAB_RATE_LIMITS__MESSAGES_PER_SEC", "100000"),
    ("CONFAB_RATE_LIMITS__MESSAGES_BURST", "100000"),
    ("CONFAB_RATE_LIMITS__USER_MESSAGES_PER_SEC", "100000"),
    ("CONFAB_RATE_LIMITS__USER_MESSAGES_BURST", "100000"),
    ("CONFAB_RATE_LIMITS__TYPING_PER_SEC", "100000"),
    ("CONFAB_RATE_LIMITS__TYPING_BURST", "100000"),
    ("CONFAB_RATE_LIMITS__JOINS_PER_SEC", "100000"),
    ("CONFAB_RATE_LIMITS__JOINS_BURST", "100000"),
    ("CONFAB_RATE_LIMITS__CONNECTS_PER_SEC_PER_IP", "100000"),
    ("CONFAB_RATE_LIMITS__CONNECTS_BURST_PER_IP", "100000"),
    ("CONFAB_RATE_LIMITS__UPLOADS_PER_SEC", "100000"),
    ("CONFAB_RATE_LIMITS__UPLOADS_BURST", "100000"),
    ("CONFAB_RATE_LIMITS__ABUSE_STRIKES", "100000"),
    ("CONFAB_RATE_LIMITS__REGISTRATIONS_PER_MIN_PER_IP", "100000"),
    ("CONFAB_RATE_LIMITS__REGISTRATIONS_BURST_PER_IP", "100000"),
    ("CONFAB_LIMITS__MAX_CONNECTIONS_PER_USER", "100000"),
    ("CONFAB_LIMITS__MAX_ROOMS_PER_USER", "100000"),
];

/// Settings every test server starts with whatever its limits: presence goes offline 1 s after
/// a user's last connection closes (the shipped grace is 5 s), so presence tests stay fast.
pub const TEST_DEFAULTS: &[(&str, &str)] = &[("CONFAB_PRESENCE__OFFLINE_GRACE_SECS", "1")];

/// How to start a server: an optional config file and extra environment variables.
#[derive(Clone, Default)]
pub struct Options {
    pub config_toml: Option<String>,
    /// Environment variables; they replace any `RELAXED_LIMITS` or `TEST_DEFAULTS` entry of the
    /// same name.
    pub env: Vec<(String, String)>,
    /// Start with the shipped rate and connection limits instead of `RELAXED_LIMITS`.
    pub stock_limits: bool,
    /// A command that runs the server (e.g. `prlimit --nofile=300:300`); empty: run it directly.
    pub wrapper: Vec<String>,
}

impl Options {
    pub fn config(toml: &str) -> Options {
        Options {
            config_toml: Some(toml.to_string()),
            ..Options::default()
        }
    }

    pub fn env(pairs: &[(&str, &str)]) -> Options {
        Options::default().with_env(pairs)
    }

    /// Adds environment variables (later ones win).
    pub fn with_env(mut self, pairs: &[(&str, &str)]) -> Options {
        self.env
            .extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Keeps the shipped limits (`config.toml`'s `[rate_limits]` and `[limits]`): only what the
    /// test sets itself changes.
    pub fn stock_limits(mut self) -> Options {
        self.stock_limits = true;
        self
    }

    /// The environment the server gets: test defaults, relaxed limits unless `stock_limits`,
    /// then the test's own variables, each name once (the test's value wins).
    fn resolved_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        let mut put = |k: &str, v: &str| {
            env.retain(|(name, _)| name != k);
            env.push((k.to_string(), v.to_string()));
        };
        for (k, v) in TEST_DEFAULTS {
            put(k, v);
        }
        if !self.stock_limits {
            for (k, v) in RELAXED_LIMITS {
                put(k, v);
            }
        }
        for (k, v) in &self.env {
            put(k, v);
        }
        env
    }
}

/// A running `confab serve` on 127.0.0.1 with its own temporary data dir; killed on drop.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub data_dir: PathBuf,
    config_path: Option<PathBuf>,
    env: Vec<(String, String)>,
    wrapper: Vec<String>,
    output: Arc<Mutex<Vec<String>>>,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server with the built-in defaults.
    pub fn start() -> Server {
        Server::start_with(Options::default())
    }

    /// Starts a server with a config file and/or environment variables.
    pub fn start_with(opts: Options) -> Server {
        let dir = tempfile::tempdir().expect("create temp dir");
        let data_dir = dir.path().join("data");
        let config_path = opts.config_toml.as_ref().map(|toml| {
            let p = dir.path().join("confab.toml");
            std::fs::write(&p, toml).expect("write config file");
            p
        });
        let mut server = Server {
            child: None,
            port: 0,
            data_dir,
            config_path,
            env: opts.resolved_env(),
            wrapper: opts.wrapper.clone(),
            output: Arc::new(Mutex::new(Vec::new())),
            dir,
        };
        server.spawn();
        server
    }

    fn command(&self) -> Command {
        let mut cmd = match self.wrapper.split_first() {
            Some((run, args)) => {
                let mut c = Command::new(run);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        cmd
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let mut cmd = self.command();
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&self.data_dir);
        if let Some(p) = &self.config_path {
            cmd.arg("--config").arg(p);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn `confab serve`");
        let (tx, rx) = mpsc::channel::<u16>();
        let pipes: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout piped")),
            Box::new(child.stderr.take().expect("stderr piped")),
        ];
        for pipe in pipes {
            let tx = tx.clone();
            let output = Arc::clone(&self.output);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Some(port) = parse_listening_port(&line) {
                        let _ = tx.send(port);
                    }
                    output.lock().expect("output lock").push(line);
                }
            });
        }
        drop(tx);
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(port) => {
                self.port = port;
                self.child = Some(child);
            }
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "confab serve did not print `listening on http://127.0.0.1:PORT` ({e}); \
                     status {status:?}; output:\n{}",
                    self.output()
                );
            }
        }
    }

    /// Everything the server printed so far (stdout and stderr), for failure messages.
    pub fn output(&self) -> String {
        self.output.lock().expect("output lock").join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// kill -9: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("server running");
        child.kill().expect("SIGKILL the server");
        child.wait().expect("reap the server");
    }

    /// Sends SIGTERM (a clean shutdown request). `libc::kill` would need `unsafe`, which the
    /// crate forbids, so this goes through kill(1).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits for the server process to exit on its own.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(within) {
            Ok(status) => status.expect("wait for the server"),
            Err(_) => {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
                panic!(
                    "server did not exit within {within:?}; output:\n{}",
                    self.output()
                );
            }
        }
    }

    /// Starts the server again on the same data dir and config (after kill9 or a clean exit).
    pub fn restart(&mut self) {
        self.spawn();
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `confab <args>` with this server's environment; returns the raw output.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = self.command();
        cmd.args(args);
        run_bounded(cmd)
    }

    /// Mints a token with `confab token --data-dir <dir> --user <user> [--name <name>]`.
    pub fn token(&self, user: &str, name: Option<&str>) -> String {
        let data_dir = self.data_dir.to_str().expect("utf-8 temp path").to_string();
        let mut args = vec!["token", "--data-dir", data_dir.as_str(), "--user", user];
        if let Some(name) = name {
            args.push("--name");
            args.push(name);
        }
        let out = self.cli(&args);
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success(),
            "confab token failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout.split('.').count(),
            3,
            "confab token should print only a JWT: {stdout:?}"
        );
        stdout
    }

    /// The HS256 key the server generated: the raw bytes of `<data_dir>/jwt-secret`.
    pub fn jwt_secret(&self) -> Vec<u8> {
        std::fs::read(self.data_dir.join("jwt-secret")).expect("read <data_dir>/jwt-secret")
    }

    /// Mints a token for `user` (display name: the user id capitalised) and connects with it.
    pub async fn connect(&self, user: &str) -> Client {
        let token = self.token(user, Some(&capitalise(user)));
        Client::connect(self, &token).await
    }

    // -- REST ---------------------------------------------------------------------------------

    pub async fn http(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> HttpReply {
        let body = body.map(|b| b.to_string());
        self.http_raw(method, path, token, &[], body).await
    }

    /// One HTTP/1.1 request with an optional raw body and extra headers.
    pub async fn http_raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> HttpReply {
        let client: HttpClient<_, Full<Bytes>> =
            HttpClient::builder(TokioExecutor::new()).build_http();
        let mut req = hyper::Request::builder()
            .method(method.clone())
            .uri(format!("http://127.0.0.1:{}{path}", self.port));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Full::new(Bytes::from(b))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).expect("build HTTP request");
        let resp = tokio::time::timeout(TIMEOUT, client.request(req))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer within {TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = tokio::time::timeout(TIMEOUT, resp.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: body not complete within {TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("{method} {path}: reading body: {e}"))
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let json = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        HttpReply {
            status,
            content_type,
            text,
            json,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> HttpReply {
        self.http(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> HttpReply {
        self.http(Method::POST, path, token, Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: &Value) -> HttpReply {
        self.http(Method::PATCH, path, token, Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> HttpReply {
        self.http(Method::DELETE, path, token, None).await
    }

    /// Walks a room's whole history over REST from the newest page to the oldest.
    pub async fn full_history(&self, room_id: &str, token: &str) -> Vec<Value> {
        let mut all: Vec<Value> = Vec::new();
        let mut before: Option<String> = None;
        for _ in 0..10_000 {
            let path = match &before {
                Some(b) => format!("/api/rooms/{room_id}/messages?limit=200&before={b}"),
                None => format!("/api/rooms/{room_id}/messages?limit=200"),
            };
            let r = self.get(&path, Some(token)).await;
            assert_eq!(r.status, 200, "GET {path}: {}", r.text);
            let page = r.json["messages"]
                .as_array()
                .expect("messages array")
                .clone();
            let has_more = r.json["has_more"].as_bool().expect("has_more bool");
            if let Some(last) = page.last() {
                before = Some(last["id"].as_str().expect("id string").to_string());
            }
            all.extend(page.iter().cloned());
            if !has_more || page.is_empty() {
                return all;
            }
        }
        panic!("history of room {room_id} did not end within 10,000 pages");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Finds PORT in a line containing `listening on http://127.0.0.1:PORT` (ANSI colours ignored).
fn parse_listening_port(line: &str) -> Option<u16> {
    let clean = strip_ansi(line);
    let rest = &clean[clean.find("listening on http://")? + "listening on http://".len()..];
    let authority = rest.split(|c: char| c.is_whitespace() || c == '/').next()?;
    let port: String = authority
        .rsplit(':')
        .next()?
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    port.parse().ok()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// An HTTP answer: status, content type, body text and (if it parsed) the body as JSON.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub content_type: String,
    pub text: String,
    pub json: Value,
}

impl HttpReply {
    /// The `error.code` of a REST error body.
    pub fn error_code(&self) -> &str {
        self.json["error"]["code"]
            .as_str()
            .unwrap_or("<no error.code>")
    }

    /// Asserts an error answer with this status and code.
    pub fn assert_error(&self, status: u16, code: &str, what: &str) {
        assert_eq!(
            (self.status, self.error_code()),
            (status, code),
            "{what}: expected {status} {code}, got {} {}",
            self.status,
            self.text
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

/// The claims (payload) of a JWT, decoded without verification.
pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT has a payload");
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .expect("JWT payload is base64url");
    serde_json::from_slice(&bytes).expect("JWT payload is JSON")
}

/// Signs claims with HS256 and the given key.
pub fn sign_hs256(claims: &Value, key: &[u8]) -> String {
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .expect("sign JWT")
}

/// A token with `alg: none` and an empty signature.
pub fn unsigned_token(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

// ---------------------------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------------------------

pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A request's outcome: the ack's `data`, or the error's `(code, message)`.
pub type Reply = Result<Value, (String, String)>;

/// Why waiting for a frame stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    Timeout,
    /// The connection closed; the close code if the server sent one.
    Closed(Option<u16>),
}

/// A connected WebSocket client that buffers pushed events while it waits for replies.
pub struct Client {
    ws: Ws,
    events: VecDeque<Value>,
    replies: VecDeque<Value>,
    closed: Option<Option<u16>>,
    /// Every JSON frame after `hello`, in arrival order: (event, ref). Lets a test check what
    /// came before what, across events and replies.
    arrivals: Vec<(String, Option<String>)>,
    /// The `data` of the `hello` frame.
    pub hello: Value,
}

impl Client {
    /// Connects with the token in the `token` query parameter; panics on failure.
    pub async fn connect(server: &Server, token: &str) -> Client {
        let url = format!("{}?token={token}", server.ws_url());
        match Client::try_connect(url.into_client_request().expect("ws request")).await {
            Ok((c, _)) => c,
            Err(e) => panic!("WebSocket connect failed: {}", describe_ws_error(&e)),
        }
    }

    /// Connects with `/ws?token=..&sync=1`: a catching-up connection that gets no room events
    /// until a `sync` answer says `live: true`.
    pub async fn connect_sync(server: &Server, token: &str) -> Client {
        let url = format!("{}?token={token}&sync=1", server.ws_url());
        match Client::try_connect(url.into_client_request().expect("ws request")).await {
            Ok((c, _)) => c,
            Err(e) => panic!(
                "WebSocket connect (sync=1) failed: {}",
                describe_ws_error(&e)
            ),
        }
    }

    /// Connects over a socket whose kernel receive buffer is `recv_buffer` bytes, so that a
    /// client that stops reading backs up into the server quickly.
    pub async fn connect_small_buffer(server: &Server, token: &str, recv_buffer: u32) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().expect("create a TCP socket");
        socket
            .set_recv_buffer_size(recv_buffer)
            .expect("set SO_RCVBUF");
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", server.port)
            .parse()
            .expect("socket address");
        let tcp = tokio::time::timeout(TIMEOUT, socket.connect(addr))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        let url = format!("{}?token={token}", server.ws_url());
        let req = url.into_client_request().expect("ws request");
        let (ws, _) = tokio::time::timeout(
            TIMEOUT,
            tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp)),
        )
        .await
        .expect("WebSocket handshake timed out")
        .unwrap_or_else(|e| panic!("WebSocket connect failed: {}", describe_ws_error(&e)));
        Client::greeted(ws).await
    }

    /// Connects with any request (extra headers etc.) and reads the `hello` frame.
    pub async fn try_connect(
        req: http::Request<()>,
    ) -> Result<(Client, http::Response<Option<Vec<u8>>>), tungstenite::Error> {
        let (ws, resp) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(req))
            .await
            .expect("WebSocket handshake timed out")?;
        Ok((Client::greeted(ws).await, resp))
    }

    /// Wraps an upgraded socket and reads its `hello` frame.
    async fn greeted(ws: Ws) -> Client {
        let mut c = Client {
            ws,
            events: VecDeque::new(),
            replies: VecDeque::new(),
            closed: None,
            arrivals: Vec::new(),
            hello: Value::Null,
        };
        let deadline = Instant::now() + TIMEOUT;
        match c.recv(deadline).await {
            Ok(Incoming::Json(v)) if v["event"] == "hello" => c.hello = v["data"].clone(),
            other => panic!("the first frame after connect should be `hello`, got {other:?}"),
        }
        c
    }

    /// The user id the server greeted this connection as.
    pub fn user_id(&self) -> String {
        self.hello["user"]["id"]
            .as_str()
            .expect("hello.user.id")
            .to_string()
    }

    async fn recv(&mut self, deadline: Instant) -> Result<Incoming, Stop> {
        if let Some(code) = self.closed {
            return Err(Stop::Closed(code));
        }
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(Stop::Timeout),
                Ok(n) => n,
            };
            match next {
                None | Some(Err(_)) => {
                    self.closed = Some(None);
                    return Err(Stop::Closed(None));
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code));
                    self.closed = Some(code);
                    return Err(Stop::Closed(code));
                }
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or_else(|e| {
                        panic!("server sent a text frame that is not JSON ({e}): {t}")
                    });
                    return Ok(Incoming::Json(v));
                }
                Some(Ok(Message::Binary(b))) => return Ok(Incoming::Binary(b.to_vec())),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Reads one frame and files it as a reply (ack/error) or a pushed event.
    async fn pump(&mut self, deadline: Instant) -> Result<(), Stop> {
        match self.recv(deadline).await? {
            Incoming::Json(v) => {
                self.arrivals.push((
                    v["event"].as_str().unwrap_or("<no event>").to_string(),
                    v["ref"].as_str().map(str::to_string),
                ));
                match v["event"].as_str() {
                    Some("ack") | Some("error") => self.replies.push_back(v),
                    _ => self.events.push_back(v),
                }
                Ok(())
            }
            Incoming::Binary(b) => panic!("server sent a binary frame of {} bytes", b.len()),
        }
    }

    /// Sends any WebSocket message (raw frames included).
    pub async fn send_raw(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        match tokio::time::timeout(TIMEOUT, self.ws.send(msg)).await {
            Ok(r) => r,
            Err(_) => Err(tungstenite::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "send timed out",
            ))),
        }
    }

    /// Sends a text frame; panics if the connection is gone.
    pub async fn send_text_frame(&mut self, text: &str) {
        let r = self.send_raw(Message::text(text)).await;
        r.unwrap_or_else(|e| panic!("sending a text frame failed: {e}"));
    }

    /// Sends one message split into text fragments (first Text, then Continue frames).
    pub async fn send_fragments(&mut self, parts: &[&[u8]]) -> Result<(), tungstenite::Error> {
        for (i, part) in parts.iter().enumerate() {
            let opcode = if i == 0 {
                OpData::Text
            } else {
                OpData::Continue
            };
            let last = i + 1 == parts.len();
            let frame = Frame::message(Bytes::copy_from_slice(part), OpCode::Data(opcode), last);
            self.send_raw(Message::Frame(frame)).await?;
        }
        Ok(())
    }

    /// Sends a request with a fresh `ref` without waiting; returns the ref.
    pub async fn try_send_request(
        &mut self,
        event: &str,
        data: Value,
    ) -> Result<String, tungstenite::Error> {
        let r = format!("r{}", unique());
        let frame = json!({"event": event, "ref": r, "data": data});
        self.send_raw(Message::text(frame.to_string())).await?;
        Ok(r)
    }

    /// Sends text frames back to back and flushes once, so they leave in one write and the
    /// server reads them without waiting for any answer; `Err` if the connection is gone.
    pub async fn try_send_frames_at_once(
        &mut self,
        texts: &[String],
    ) -> Result<(), tungstenite::Error> {
        let all = async {
            for t in texts {
                self.ws.feed(Message::text(t.clone())).await?;
            }
            self.ws.flush().await
        };
        match tokio::time::timeout(TIMEOUT, all).await {
            Ok(r) => r,
            Err(_) => Err(tungstenite::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "send timed out",
            ))),
        }
    }

    /// Sends requests (event, data) back to back in one write, without waiting for any
    /// answer; returns their refs in order. Panics if the connection is gone.
    pub async fn send_requests_at_once(&mut self, requests: &[(&str, Value)]) -> Vec<String> {
        let refs: Vec<String> = requests.iter().map(|_| format!("r{}", unique())).collect();
        let texts: Vec<String> = requests
            .iter()
            .zip(&refs)
            .map(|((event, data), r)| json!({"event": event, "ref": r, "data": data}).to_string())
            .collect();
        if let Err(e) = self.try_send_frames_at_once(&texts).await {
            panic!("sending {} requests at once failed: {e}", texts.len());
        }
        refs
    }

    pub async fn send_request(&mut self, event: &str, data: Value) -> String {
        let r = self.try_send_request(event, data).await;
        r.unwrap_or_else(|e| panic!("sending {event} failed: {e}"))
    }

    /// Waits for the ack or error carrying `r`.
    pub async fn try_reply(&mut self, r: &str, within: Duration) -> Result<Reply, Stop> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(pos) = self.replies.iter().position(|v| v["ref"] == r) {
                let v = self.replies.remove(pos).expect("position is valid");
                return Ok(split_reply(v));
            }
            self.pump(deadline).await?;
        }
    }

    pub async fn reply(&mut self, r: &str) -> Reply {
        match self.try_reply(r, TIMEOUT).await {
            Ok(reply) => reply,
            Err(stop) => panic!("no reply to ref {r}: {stop:?}"),
        }
    }

    /// Sends a request and waits for its ack (Ok(data)) or error (Err((code, message))).
    pub async fn request(&mut self, event: &str, data: Value) -> Reply {
        let r = self.send_request(event, data).await;
        self.reply(&r).await
    }

    /// Like `request`, but panics with context unless it is acked.
    pub async fn ok(&mut self, event: &str, data: Value) -> Value {
        let shown = data.to_string();
        match self.request(event, data).await {
            Ok(v) => v,
            Err((code, message)) => panic!("{event} {shown} failed: {code}: {message}"),
        }
    }

    /// Waits for the next ack or error frame whatever its ref; returns the whole frame.
    pub async fn next_reply_frame(&mut self, within: Duration) -> Result<Value, Stop> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = self.replies.pop_front() {
                return Ok(v);
            }
            self.pump(deadline).await?;
        }
    }

    /// Waits for the next pushed event called `name`; returns its `data`. Other events stay buffered.
    pub async fn try_next_event(&mut self, name: &str, within: Duration) -> Result<Value, Stop> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(pos) = self.events.iter().position(|v| v["event"] == name) {
                let v = self.events.remove(pos).expect("position is valid");
                return Ok(v["data"].clone());
            }
            self.pump(deadline).await?;
        }
    }

    pub async fn next_event(&mut self, name: &str) -> Value {
        match self.try_next_event(name, TIMEOUT).await {
            Ok(v) => v,
            Err(stop) => panic!(
                "no `{name}` event arrived ({stop:?}); buffered events: {:?}",
                self.events
                    .iter()
                    .map(|e| e["event"].to_string())
                    .collect::<Vec<_>>()
            ),
        }
    }

    /// Waits for the next pushed event called `name` whose data matches; returns its `data`.
    pub async fn next_event_where(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(pos) = self
                .events
                .iter()
                .position(|v| v["event"] == name && pred(&v["data"]))
            {
                let v = self.events.remove(pos).expect("position is valid");
                return v["data"].clone();
            }
            if let Err(stop) = self.pump(deadline).await {
                panic!(
                    "no matching `{name}` event arrived ({stop:?}); buffered events: {:?}",
                    self.events
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    /// Waits for the `member_joined` of `user_id` in `room_id`; returns the member record.
    pub async fn next_member_joined(&mut self, room_id: &str, user_id: &str) -> Value {
        let data = self
            .next_event_where("member_joined", |d| {
                d["room_id"] == room_id && d["member"]["user_id"] == user_id
            })
            .await;
        data["member"].clone()
    }

    /// Waits for the next `receive_message` whose message matches; returns the message.
    pub async fn next_message_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let data = self
            .next_event_where("receive_message", |d| pred(&d["message"]))
            .await;
        data["message"].clone()
    }

    /// Every pushed event buffered so far (not yet taken by `next_event`).
    pub fn buffered_events(&self) -> &VecDeque<Value> {
        &self.events
    }

    /// Every ack and error buffered so far (not yet taken by `reply`).
    pub fn buffered_replies(&self) -> &VecDeque<Value> {
        &self.replies
    }

    pub fn clear_events(&mut self) {
        self.events.clear();
    }

    /// Reads until the server closes; returns the close code (None: closed without a close frame).
    pub async fn expect_close(&mut self, within: Duration) -> Option<u16> {
        let deadline = Instant::now() + within;
        loop {
            match self.pump(deadline).await {
                Ok(()) => continue,
                Err(Stop::Closed(code)) => return code,
                Err(Stop::Timeout) => {
                    panic!("the server did not close the connection within {within:?}")
                }
            }
        }
    }

    /// A full round trip proving the connection still serves requests.
    pub async fn ping(&mut self) {
        let ack = self.ok("ping", json!({})).await;
        assert!(
            ack["server_time"].is_u64(),
            "ping ack carries server_time: {ack}"
        );
    }

    /// Sends a text message and returns the ack data.
    pub async fn send_message(
        &mut self,
        room_id: &str,
        client_msg_id: &str,
        content: &str,
    ) -> Reply {
        self.request(
            "send_message",
            json!({"room_id": room_id, "client_msg_id": client_msg_id, "type": "text", "content": content}),
        )
        .await
    }

    /// Sends a text message with a fresh client_msg_id; panics unless acked; returns the message.
    pub async fn say(&mut self, room_id: &str, content: &str) -> Value {
        let cmid = format!("m-{}", unique());
        match self.send_message(room_id, &cmid, content).await {
            Ok(ack) => ack["message"].clone(),
            Err((code, message)) => panic!("send_message to {room_id} failed: {code}: {message}"),
        }
    }

    /// Creates a group room; returns its id.
    pub async fn create_room(&mut self, name: &str, visibility: &str) -> String {
        let ack = self
            .ok(
                "create_room",
                json!({"name": name, "visibility": visibility}),
            )
            .await;
        ack["room"]["id"]
            .as_str()
            .expect("room.id is a string")
            .to_string()
    }

    /// Invites a user into a room; panics unless acked.
    pub async fn invite(&mut self, room_id: &str, user_id: &str) {
        self.ok("invite", json!({"room_id": room_id, "user_id": user_id}))
            .await;
    }

    /// Every JSON frame received after `hello`, in order: (event, ref).
    pub fn arrivals(&self) -> &[(String, Option<String>)] {
        &self.arrivals
    }

    /// Waits for the whole ack or error frame carrying `r` (`data.retry_after_ms` and all).
    pub async fn reply_frame(&mut self, r: &str) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(pos) = self.replies.iter().position(|v| v["ref"] == r) {
                return self.replies.remove(pos).expect("position is valid");
            }
            if let Err(stop) = self.pump(deadline).await {
                panic!("no reply to ref {r}: {stop:?}");
            }
        }
    }

    /// Sends a request and returns its whole ack or error frame.
    pub async fn request_frame(&mut self, event: &str, data: Value) -> Value {
        let r = self.send_request(event, data).await;
        self.reply_frame(&r).await
    }

    /// Like `next_event_where`, with its own bound; `Err` if nothing matched in time.
    pub async fn try_next_event_where(
        &mut self,
        name: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, Stop> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(pos) = self
                .events
                .iter()
                .position(|v| v["event"] == name && pred(&v["data"]))
            {
                let v = self.events.remove(pos).expect("position is valid");
                return Ok(v["data"].clone());
            }
            self.pump(deadline).await?;
        }
    }

    /// Reads for `within` and panics if an event called `name` matching `pred` arrives (or is
    /// already buffered). The connection must stay open meanwhile.
    pub async fn assert_no_event(
        &mut self,
        name: &str,
        within: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) {
        match self.try_next_event_where(name, within, pred).await {
            Err(Stop::Timeout) => {}
            Ok(v) => panic!("{what}: an unexpected `{name}` arrived: {v}"),
            Err(Stop::Closed(code)) => {
                panic!("{what}: the connection closed ({code:?}) while waiting")
            }
        }
    }

    /// The matching buffered events called `name` (their `data`), without taking them.
    pub fn buffered(&self, name: &str) -> Vec<Value> {
        self.events
            .iter()
            .filter(|v| v["event"] == name)
            .map(|v| v["data"].clone())
            .collect()
    }

    /// Closes from the client side and waits (bounded) for the server's close or EOF.
    pub async fn close(mut self) {
        let _ = self.send_raw(Message::Close(None)).await;
        let deadline = Instant::now() + TIMEOUT;
        while self.closed.is_none() {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("the server did not answer a close within {TIMEOUT:?}"),
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => break,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Sends `n` text messages to `room_id` with up to `window` in flight, waiting for every
    /// ack; returns the acked messages in the order they were sent. `content(i)` makes the text.
    pub async fn say_many(
        &mut self,
        room_id: &str,
        n: usize,
        window: usize,
        content: impl Fn(usize) -> String,
    ) -> Vec<Value> {
        let mut in_flight: VecDeque<(String, usize)> = VecDeque::new();
        let mut acked: Vec<Option<Value>> = vec![None; n];
        let mut next = 0;
        while next < n || !in_flight.is_empty() {
            while next < n && in_flight.len() < window.max(1) {
                let data = json!({"room_id": room_id, "client_msg_id": format!("many-{}", unique()),
                    "type": "text", "content": content(next)});
                let r = self.send_request("send_message", data).await;
                in_flight.push_back((r, next));
                next += 1;
            }
            let (r, i) = in_flight.pop_front().expect("a send is in flight");
            match self.reply(&r).await {
                Ok(ack) => acked[i] = Some(ack["message"].clone()),
                Err((code, message)) => {
                    panic!("send_message #{i} to {room_id} failed: {code}: {message}")
                }
            }
        }
        acked
            .into_iter()
            .map(|m| m.expect("every send was acked"))
            .collect()
    }

    /// Fetches one history page: (messages, has_more).
    pub async fn history(&mut self, data: Value) -> (Vec<Value>, bool) {
        let ack = self.ok("history", data).await;
        let messages = ack["messages"].as_array().expect("messages array").clone();
        let has_more = ack["has_more"].as_bool().expect("has_more bool");
        (messages, has_more)
    }
}

/// What one frame from the server was.
#[derive(Debug)]
pub enum Incoming {
    Json(Value),
    Binary(Vec<u8>),
}

fn split_reply(v: Value) -> Reply {
    if v["event"] == "ack" {
        Ok(v.get("data").cloned().unwrap_or(Value::Null))
    } else {
        let code = v["data"]["code"]
            .as_str()
            .unwrap_or("<no code>")
            .to_string();
        let message = v["data"]["message"].as_str().unwrap_or("").to_string();
        Err((code, message))
    }
}

/// A request for `/ws` with no token, to which a test adds headers.
pub fn ws_request(server: &Server, query: &str) -> http::Request<()> {
    format!("{}{query}", server.ws_url())
        .into_client_request()
        .expect("ws request")
}

/// Tries to upgrade; expects a refusal and returns its HTTP status and (if it parsed) JSON body.
pub async fn refused_upgrade(req: http::Request<()>, what: &str) -> (u16, Value) {
    match tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(req))
        .await
        .expect("WebSocket handshake timed out")
    {
        Ok(_) => panic!("{what}: the upgrade was accepted but should have been refused"),
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("{what}: expected an HTTP refusal, got {e}"),
    }
}

pub fn describe_ws_error(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(resp) => format!(
            "HTTP {} {}",
            resp.status(),
            resp.body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).to_string())
                .unwrap_or_default()
        ),
        other => other.to_string(),
    }
}

/// Asserts that a message record has every documented field with the right types.
pub fn assert_message_shape(m: &Value) {
    for key in [
        "id",
        "room_id",
        "sender_id",
        "client_msg_id",
        "type",
        "content",
        "status",
    ] {
        assert!(m[key].is_string(), "message.{key} should be a string: {m}");
    }
    assert!(
        m["created_at"].is_u64(),
        "message.created_at should be an integer: {m}"
    );
    assert!(
        m.get("edited_at").is_some(),
        "message.edited_at should be present: {m}"
    );
    assert!(
        m.get("deleted_at").is_some(),
        "message.deleted_at should be present: {m}"
    );
    let id = id_of(&m["id"]);
    let created_at = m["created_at"].as_u64().expect("created_at");
    assert_eq!(
        (id >> 22) + ID_EPOCH_MS,
        created_at,
        "created_at must be the time part of the id (42 bits of ms since 2025-01-01): {m}"
    );
}

/// True if any string anywhere inside `v` equals `needle`.
pub fn mentions(v: &Value, needle: &str) -> bool {
    match v {
        Value::String(s) => s == needle,
        Value::Array(a) => a.iter().any(|x| mentions(x, needle)),
        Value::Object(o) => o.values().any(|x| mentions(x, needle)),
        _ => false,
    }
}

/// Runs `confab <args>` outside any server, in a temp dir; returns (success, stdout + stderr).
pub fn run_cli(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null());
    let out = run_bounded(cmd);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs a command to completion, killing it if it takes longer than `TIMEOUT`.
fn run_bounded(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn confab");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(out) => out.expect("collect confab output"),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            panic!(
                "`confab {:?}` did not finish within {TIMEOUT:?}",
                cmd.get_args().collect::<Vec<_>>()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP: byte bodies in, headers and exact body bytes out (uploads and downloads)
// ---------------------------------------------------------------------------------------------

/// An HTTP answer with every header and the exact body bytes.
#[derive(Debug, Clone)]
pub struct RawReply {
    pub status: u16,
    /// Header names lowercased, in arrival order; values decoded lossily from their bytes.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body as JSON, if it parsed (Null otherwise).
    pub json: Value,
}

impl RawReply {
    fn new(status: u16, headers: Vec<(String, String)>, body: Vec<u8>) -> RawReply {
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        RawReply {
            status,
            headers,
            body,
            json,
        }
    }

    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header (name case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text (lossy), for failure messages.
    pub fn text(&self) -> String {
        let shown = &self.body[..self.body.len().min(2000)];
        String::from_utf8_lossy(shown).to_string()
    }

    /// The `error.code` of a REST error body.
    pub fn error_code(&self) -> &str {
        self.json["error"]["code"]
            .as_str()
            .unwrap_or("<no error.code>")
    }

    /// Asserts an error answer with this status and code.
    pub fn assert_error(&self, status: u16, code: &str, what: &str) {
        assert_eq!(
            (self.status, self.error_code()),
            (status, code),
            "{what}: expected {status} {code}, got {} {}",
            self.status,
            self.text()
        );
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for query values).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Server {
    /// One HTTP/1.1 request with a byte body (Content-Length set when not empty) and exactly
    /// the given headers (no Authorization unless passed); the whole answer, headers and bytes.
    pub async fn request_bytes(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> RawReply {
        let client: HttpClient<_, Full<Bytes>> =
            HttpClient::builder(TokioExecutor::new()).build_http();
        let mut req = hyper::Request::builder()
            .method(method.clone())
            .uri(format!("http://127.0.0.1:{}{path}", self.port));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .expect("build HTTP request");
        let resp = tokio::time::timeout(TIMEOUT, client.request(req))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer within {TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let bytes = tokio::time::timeout(TIMEOUT, resp.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: body not complete within {TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("{method} {path}: reading body: {e}"))
            .to_bytes();
        RawReply::new(status, headers, bytes.to_vec())
    }

    /// `POST /api/files[?name=..]` with the raw bytes as the body and a Content-Length
    /// (Content-Type application/octet-stream unless `extra` sets one). Goes over a raw socket
    /// that reads the answer while the body is still being written, so an early refusal
    /// followed by a close is seen as the refusal; panics if no complete answer comes.
    pub async fn upload_raw(
        &self,
        token: Option<&str>,
        name: Option<&str>,
        extra: &[(&str, &str)],
        bytes: &[u8],
    ) -> RawReply {
        let path = match name {
            Some(n) => format!("/api/files?name={}", percent_encode(n)),
            None => "/api/files".to_string(),
        };
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        if !extra
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            headers.push(("Content-Type", "application/octet-stream"));
        }
        headers.extend_from_slice(extra);
        let len = bytes.len();
        let chunks: Vec<Bytes> = bytes.chunks(65536).map(Bytes::copy_from_slice).collect();
        let (reply, _) = self
            .send_streaming("POST", &path, &headers, chunks.into_iter(), Some(len))
            .await;
        reply.unwrap_or_else(|e| panic!("POST {path} ({len} bytes): {e}"))
    }

    /// Uploads `bytes` as `token`'s user; the answer, whatever it is.
    pub async fn upload(&self, token: &str, name: &str, bytes: &[u8]) -> RawReply {
        self.upload_raw(Some(token), Some(name), &[], bytes).await
    }

    /// Uploads and panics unless the answer is `201 {"file": Upload}`; returns the Upload.
    pub async fn upload_ok(&self, token: &str, name: &str, bytes: &[u8]) -> Value {
        let r = self.upload(token, name, bytes).await;
        assert_eq!(
            r.status,
            201,
            "upload of {name:?} ({} bytes): {}",
            bytes.len(),
            r.text()
        );
        assert!(r.json["file"].is_object(), "upload answer: {}", r.text());
        r.json["file"].clone()
    }

    /// GET (or HEAD) a path with an optional Bearer token and extra headers.
    pub async fn fetch(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        extra: &[(&str, &str)],
    ) -> RawReply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        headers.extend_from_slice(extra);
        self.request_bytes(method, path, &headers, Vec::new()).await
    }

    /// GET a path with an optional Bearer token.
    pub async fn download(&self, path: &str, token: Option<&str>) -> RawReply {
        self.fetch(Method::GET, path, token, &[]).await
    }

    /// The sum of every sample of the Prometheus metric `name` (exact name, any labels) at
    /// `/metrics`; panics if there is none.
    pub async fn metric(&self, name: &str) -> f64 {
        let r = self.get("/metrics", None).await;
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text);
        let mut found = false;
        let mut sum = 0.0;
        for line in r.text.lines().filter(|l| !l.starts_with('#')) {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            if &line[..end] != name {
                continue;
            }
            let value = line
                .rsplit(' ')
                .find_map(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("metric line without a value: {line}"));
            found = true;
            sum += value;
        }
        assert!(found, "/metrics has no `{name}`:\n{}", r.text);
        sum
    }

    /// Opens a plain TCP connection to the server.
    pub async fn tcp(&self) -> tokio::net::TcpStream {
        tokio::time::timeout(
            TIMEOUT,
            tokio::net::TcpStream::connect(("127.0.0.1", self.port)),
        )
        .await
        .expect("TCP connect timed out")
        .expect("TCP connect")
    }

    /// Uploads with `Transfer-Encoding: chunked` (see `send_streaming`).
    pub async fn upload_chunked(
        &self,
        token: &str,
        name: &str,
        chunks: impl Iterator<Item = Bytes> + Send + 'static,
    ) -> (Result<RawReply, String>, usize) {
        let path = format!("/api/files?name={}", percent_encode(name));
        let auth = format!("Bearer {token}");
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/octet-stream"),
        ];
        self.send_streaming("POST", &path, &headers, chunks, None)
            .await
    }

    /// One request over a raw socket with `Connection: close`: the head, then the body from
    /// `chunks`, framed with `Content-Length: len` if `content_length` is given, else
    /// `Transfer-Encoding: chunked`. The answer is read concurrently; writing stops once it is
    /// in or a write fails. Returns the answer (Err: the connection ended without a complete
    /// one, with what was seen) and how many body bytes were written.
    pub async fn send_streaming(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        chunks: impl Iterator<Item = Bytes> + Send + 'static,
        content_length: Option<usize>,
    ) -> (Result<RawReply, String>, usize) {
        let stream = self.tcp().await;
        let (mut rd, mut wr) = stream.into_split();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n",
            self.port
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        match content_length {
            Some(n) => head.push_str(&format!("Content-Length: {n}\r\n")),
            None => head.push_str("Transfer-Encoding: chunked\r\n"),
        }
        head.push_str("Connection: close\r\n\r\n");
        let chunked = content_length.is_none();
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicUsize::new(0));
        let writer = {
            let stop = Arc::clone(&stop);
            let written = Arc::clone(&written);
            tokio::spawn(async move {
                if wr.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for chunk in chunks {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let framed = if chunked {
                        [
                            format!("{:x}\r\n", chunk.len()).into_bytes(),
                            chunk.to_vec(),
                            b"\r\n".to_vec(),
                        ]
                        .concat()
                    } else {
                        chunk.to_vec()
                    };
                    if wr.write_all(&framed).await.is_err() {
                        return;
                    }
                    written.fetch_add(chunk.len(), Ordering::Relaxed);
                }
                if chunked {
                    let _ = wr.write_all(b"0\r\n\r\n").await;
                }
                let _ = wr.flush().await;
                // Keep the write half open until the answer is read (dropping it sends FIN).
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        let head_request = method.eq_ignore_ascii_case("HEAD");
        let reply =
            match tokio::time::timeout(TIMEOUT, read_http_response(&mut rd, head_request)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no complete answer within {TIMEOUT:?}")),
            };
        stop.store(true, Ordering::Relaxed);
        // A writer stuck on a socket nobody reads any more is left to end with the runtime.
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
        (reply, written.load(Ordering::Relaxed))
    }
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A read buffer over an async reader, for parsing one HTTP/1.1 answer by hand.
struct HttpReader<'a, R> {
    r: &'a mut R,
    buf: Vec<u8>,
}

impl<R: tokio::io::AsyncRead + Unpin> HttpReader<'_, R> {
    /// Reads more; false on EOF.
    async fn fill(&mut self) -> Result<bool, String> {
        let mut tmp = [0u8; 16384];
        match self.r.read(&mut tmp).await {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Ok(true)
            }
            Err(e) => Err(format!("read error: {e}")),
        }
    }

    /// Takes exactly `n` bytes.
    async fn take(&mut self, n: usize) -> Result<Vec<u8>, String> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Err(format!("EOF after {} of {n} body bytes", self.buf.len()));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Takes one CRLF-terminated line (without the CRLF).
    async fn line(&mut self) -> Result<Vec<u8>, String> {
        loop {
            if let Some(p) = find_bytes(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..p + 2).collect();
                return Ok(line[..p].to_vec());
            }
            if !self.fill().await? {
                return Err("EOF inside a chunked body".to_string());
            }
        }
    }
}

/// Reads one HTTP/1.1 answer (head, then a Content-Length, chunked or read-to-EOF body) from a
/// raw socket. `head_request`: the answer to a HEAD has no body. Err if the connection ends
/// (or fails) before the answer is complete; the message shows what was read.
pub async fn read_http_response<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    head_request: bool,
) -> Result<RawReply, String> {
    let mut rd = HttpReader { r, buf: Vec::new() };
    let head_end = loop {
        if let Some(p) = find_bytes(&rd.buf, b"\r\n\r\n") {
            break p;
        }
        let more = rd.fill().await.map_err(|e| {
            format!(
                "{e} before a complete head; read {:?}",
                String::from_utf8_lossy(&rd.buf)
            )
        })?;
        if !more {
            return Err(format!(
                "connection closed before a complete head; read {:?}",
                String::from_utf8_lossy(&rd.buf)
            ));
        }
    };
    let head: Vec<u8> = rd.buf.drain(..head_end + 4).collect();
    let head = String::from_utf8_lossy(&head[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let body = if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let size_line = rd.line().await.map_err(|e| format!("HTTP {status}: {e}"))?;
            let size_text = String::from_utf8_lossy(&size_line).to_string();
            let size_hex = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|e| format!("HTTP {status}: bad chunk size {size_text:?}: {e}"))?;
            if size == 0 {
                break;
            }
            let chunk = rd
                .take(size + 2)
                .await
                .map_err(|e| format!("HTTP {status}: {e}"))?;
            body.extend_from_slice(&chunk[..size]);
        }
        body
    } else if let Some(len) = get("content-length") {
        let len: usize = len
            .parse()
            .map_err(|e| format!("HTTP {status}: bad Content-Length {len:?}: {e}"))?;
        rd.take(len)
            .await
            .map_err(|e| format!("HTTP {status}: {e}"))?
    } else {
        while rd.fill().await.map_err(|e| format!("HTTP {status}: {e}"))? {}
        std::mem::take(&mut rd.buf)
    };
    Ok(RawReply::new(status, headers, body))
}

// ---------------------------------------------------------------------------------------------
// Search tests (tests/it/search.rs): changing the environment between restarts
// ---------------------------------------------------------------------------------------------

impl Server {
    /// Sets (or replaces) one environment variable for the next `restart` and `cli` calls, e.g.
    /// to restart after a crash with a different setting on the same data dir.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }
}

/// A file that a Debian package provides, installed with apt-get when missing (the tests run
/// as root in CI; elsewhere the panic says what to install).
pub fn debian_file(package: &str, path: &str) -> PathBuf {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let file = PathBuf::from(path);
    if !file.exists() {
        let apt = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let install = ["install", "-y", "--no-install-recommends", package];
        if !apt(&install) {
            apt(&["update"]);
            apt(&install);
        }
    }
    assert!(
        file.exists(),
        "this test needs {path} from Debian's {package}: `apt-get install {package}` (as root)"
    );
    file
}

/// A tmpfs of `size` mounted over `dir` (keeping what `dir` held), unmounted on drop.
pub struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    pub fn mount_over(dir: &Path, size: u64) -> SmallDisk {
        let keep = dir.with_extension("before-mount");
        let run = |cmd: &mut Command| {
            let out = cmd.output().expect("run");
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(Command::new("cp").arg("-a").arg(dir).arg(&keep));
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}")])
            .arg("tmpfs")
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            mounted.status.success(),
            "this test mounts a small tmpfs and needs root: {}",
            String::from_utf8_lossy(&mounted.stderr)
        );
        run(Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", keep.display()))
            .arg(dir));
        let _ = std::fs::remove_dir_all(&keep);
        SmallDisk {
            dir: dir.to_owned(),
        }
    }

    pub fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.dir)
            .output()
            .expect("run df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df prints the free bytes")
    }

    /// Fills the disk until `left` bytes are free; returns the filler's path.
    pub fn fill_leaving(&self, left: u64) -> PathBuf {
        let filler = self.dir.join("filler");
        let size = self.free().saturating_sub(left);
        std::fs::write(&filler, vec![0u8; size as usize]).expect("write the filler");
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
