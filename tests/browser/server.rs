//! The Confab server under test (the real binary on a loopback port with a temporary data dir)
//! and the REST and WebSocket calls the browser tests use to prepare and check state.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// The server binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_confab");
const TIMEOUT: Duration = Duration::from_secs(15);

/// Every test server gets these: browsers and seeding scripts share 127.0.0.1, so the
/// per-IP and per-connection buckets are opened up; presence settles in 1 s.
const ENV: &[(&str, &str)] = &[
    ("CONFAB_PRESENCE__OFFLINE_GRACE_SECS", "1"),
    ("CONFAB_RATE_LIMITS__MESSAGES_PER_SEC", "100000"),
    ("CONFAB_RATE_LIMITS__MESSAGES_BURST", "100000"),
    ("CONFAB_RATE_LIMITS__USER_MESSAGES_PER_SEC", "100000"),
    ("CONFAB_RATE_LIMITS__USER_MESSAGES_BURST", "100000"),
    ("CONFAB_RATE_LIMITS__CONNECTS_PER_SEC_PER_IP", "100000"),
    ("CONFAB_RATE_LIMITS__CONNECTS_BURST_PER_IP", "100000"),
    ("CONFAB_RATE_LIMITS__UPLOADS_PER_SEC", "100000"),
    ("CONFAB_RATE_LIMITS__UPLOADS_BURST", "100000"),
    ("CONFAB_RATE_LIMITS__REGISTRATIONS_PER_MIN_PER_IP", "100000"),
    ("CONFAB_RATE_LIMITS__REGISTRATIONS_BURST_PER_IP", "100000"),
];

static UNIQUE: AtomicU64 = AtomicU64::new(1);

/// A built-in account: its id (username), display name, password and a token.
#[derive(Clone, Debug)]
pub struct Account {
    pub id: String,
    pub name: String,
    pub password: String,
    pub token: String,
}

/// A parsed HTTP answer.
pub struct Reply {
    pub status: u16,
    pub text: String,
    pub json: Value,
}

/// A running `confab serve` on 127.0.0.1; killed on drop (its output printed if the test is
/// failing).
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    output: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        let dir = tempfile::tempdir().expect("temp dir for the server");
        let mut cmd = Command::new(BIN);
        cmd.current_dir(dir.path())
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .envs(ENV.iter().copied())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn `confab serve`");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<u16>();
        let pipes: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout piped")),
            Box::new(child.stderr.take().expect("stderr piped")),
        ];
        for pipe in pipes {
            let tx = tx.clone();
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split("listening on http://127.0.0.1:").nth(1) {
                        let digits: String =
                            rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                        if let Ok(port) = digits.parse() {
                            let _ = tx.send(port);
                        }
                    }
                    output.lock().expect("output lock").push(line);
                }
            });
        }
        drop(tx);
        let port = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(p) => p,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "confab serve printed no `listening on` line ({e}); output:\n{}",
                    output.lock().expect("output lock").join("\n")
                );
            }
        };
        Server {
            child: Some(child),
            port,
            output,
            _dir: dir,
        }
    }

    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `origin` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }

    /// The last `n` lines the server printed.
    pub fn output_tail(&self, n: usize) -> String {
        let out = self.output.lock().expect("output lock");
        out[out.len().saturating_sub(n)..].join("\n")
    }

    /// The first-run setup URL the server printed on stdout (`http://ADDR/?setup=TOKEN`).
    pub async fn setup_url(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = self
                .output
                .lock()
                .expect("output lock")
                .iter()
                .find_map(|l| {
                    let start = l.find("http://")?;
                    let url = l[start..].split_whitespace().next()?;
                    url.contains("/?setup=").then(|| url.to_string())
                });
            if let Some(url) = found {
                return url;
            }
            assert!(
                Instant::now() < deadline,
                "the server printed no setup URL (`http://ADDR/?setup=TOKEN`) on a first run; \
                 output:\n{}",
                self.output_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // -- HTTP ---------------------------------------------------------------------------------

    /// One HTTP/1.1 request over a fresh connection (`Connection: close`).
    pub async fn request_bytes(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &[u8],
    ) -> Reply {
        let io = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
            let mut head = format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\
                 Content-Length: {}\r\n",
                self.port,
                body.len()
            );
            if !body.is_empty() {
                head.push_str(&format!("Content-Type: {content_type}\r\n"));
            }
            if let Some(t) = token {
                head.push_str(&format!("Authorization: Bearer {t}\r\n"));
            }
            head.push_str("\r\n");
            s.write_all(head.as_bytes()).await?;
            s.write_all(body).await?;
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).await?;
            Ok::<_, std::io::Error>(raw)
        };
        let raw = tokio::time::timeout(TIMEOUT, io)
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer within {TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| {
                panic!(
                    "{method} {path}: no HTTP head in {:?}",
                    String::from_utf8_lossy(&raw)
                )
            });
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let mut body = raw[split + 4..].to_vec();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{method} {path}: bad status line in {head:?}"));
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        let text = String::from_utf8_lossy(&body).to_string();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, text, json }
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.request_bytes(method, path, token, "application/json", body.as_bytes())
            .await
    }

    /// A request that must answer `expect`; returns its JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        expect: u16,
    ) -> Value {
        let r = self.request(method, path, token, body.as_ref()).await;
        assert_eq!(
            r.status, expect,
            "{method} {path} {body:?}: expected HTTP {expect}, got {}: {}",
            r.status, r.text
        );
        r.json
    }

    // -- Accounts and rooms -------------------------------------------------------------------

    /// Creates the administrator and the first room (`general`) through `POST /api/setup`,
    /// with the token the server printed.
    pub async fn setup_admin(&self) -> Account {
        let url = self.setup_url().await;
        let token = url.split("setup=").nth(1).expect("setup token").to_string();
        let password = "admin-password-1".to_string();
        let r = self
            .call(
                "POST",
                "/api/setup",
                None,
                Some(
                    json!({"setup_token": token, "username": "admin", "password": password,
                            "display_name": "Ada Admin", "room_name": "general"}),
                ),
                201,
            )
            .await;
        Account {
            id: "admin".into(),
            name: "Ada Admin".into(),
            password,
            token: r["token"].as_str().expect("setup token answer").to_string(),
        }
    }

    /// Registers a built-in account over REST.
    pub async fn register(&self, username: &str, display_name: &str) -> Account {
        let password = format!("{username}-password-1");
        let r = self
            .call(
                "POST",
                "/api/auth/register",
                None,
                Some(json!({"username": username, "password": password,
                            "display_name": display_name})),
                201,
            )
            .await;
        Account {
            id: r["user"]["id"].as_str().unwrap_or(username).to_string(),
            name: display_name.to_string(),
            password,
            token: r["token"].as_str().expect("register token").to_string(),
        }
    }

    /// Logs in over REST; the answer's status and body.
    pub async fn login(&self, username: &str, password: &str) -> Reply {
        self.request(
            "POST",
            "/api/auth/login",
            None,
            Some(&json!({"username": username, "password": password})),
        )
        .await
    }

    /// Creates a room; returns its id.
    pub async fn create_room(&self, who: &Account, name: &str, visibility: &str) -> String {
        let r = self
            .call(
                "POST",
                "/api/rooms",
                Some(&who.token),
                Some(json!({"name": name, "visibility": visibility})),
                201,
            )
            .await;
        r["room"]["id"].as_str().expect("room id").to_string()
    }

    pub async fn invite(&self, who: &Account, room: &str, user: &str) {
        self.call(
            "POST",
            &format!("/api/rooms/{room}/invite"),
            Some(&who.token),
            Some(json!({"user_id": user})),
            200,
        )
        .await;
    }

    /// Sends a text message over REST; returns the stored message.
    pub async fn send(&self, who: &Account, room: &str, text: &str) -> Value {
        let r = self
            .call(
                "POST",
                &format!("/api/rooms/{room}/messages"),
                Some(&who.token),
                Some(json!({"client_msg_id": format!("rest-{}", UNIQUE.fetch_add(1, Ordering::Relaxed)),
                            "type": "text", "content": text})),
                201,
            )
            .await;
        r["message"].clone()
    }

    /// Uploads a file and shares it in `room` as an image message; returns the message.
    pub async fn send_image(&self, who: &Account, room: &str, name: &str, bytes: &[u8]) -> Value {
        let r = self
            .request_bytes(
                "POST",
                &format!("/api/files?name={name}"),
                Some(&who.token),
                "application/octet-stream",
                bytes,
            )
            .await;
        assert_eq!(r.status, 201, "upload {name}: {}", r.text);
        let file_id = r.json["file"]["id"].as_str().expect("file id").to_string();
        let r = self
            .call(
                "POST",
                &format!("/api/rooms/{room}/messages"),
                Some(&who.token),
                Some(json!({"client_msg_id": format!("rest-{}", UNIQUE.fetch_add(1, Ordering::Relaxed)),
                            "type": "image", "content": "", "file_id": file_id})),
                201,
            )
            .await;
        r["message"].clone()
    }

    /// Every message of a room, oldest first (REST history, paged).
    pub async fn history(&self, who: &Account, room: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let path = match &before {
                Some(b) => format!("/api/rooms/{room}/messages?limit=200&before={b}"),
                None => format!("/api/rooms/{room}/messages?limit=200"),
            };
            let r = self.call("GET", &path, Some(&who.token), None, 200).await;
            let page = r["messages"].as_array().cloned().unwrap_or_default();
            before = page
                .last()
                .and_then(|m| m["id"].as_str())
                .map(str::to_string);
            all.extend(page);
            if r["has_more"] != json!(true) || before.is_none() {
                break;
            }
        }
        all.reverse();
        all
    }

    /// Sends `texts` in order over one WebSocket, pipelined (fast seeding); returns their ids.
    pub async fn seed(&self, who: &Account, room: &str, texts: &[String]) -> Vec<String> {
        let url = format!("ws://127.0.0.1:{}/ws?token={}", self.port, who.token);
        let (mut ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(&url))
            .await
            .expect("seeding WebSocket: connect timed out")
            .expect("seeding WebSocket: connect");
        for (i, text) in texts.iter().enumerate() {
            let frame = json!({"event": "send_message", "ref": i.to_string(),
                "data": {"room_id": room, "type": "text", "content": text,
                         "client_msg_id": format!("seed-{}-{i}", UNIQUE.fetch_add(1, Ordering::Relaxed))}});
            ws.send(Message::text(frame.to_string()))
                .await
                .expect("seeding WebSocket: send");
        }
        let mut ids = vec![String::new(); texts.len()];
        let mut acked = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked < texts.len() {
            let next = tokio::time::timeout_at(deadline, ws.next())
                .await
                .unwrap_or_else(|_| panic!("seeding: only {acked} of {} acked", texts.len()));
            let Some(Ok(Message::Text(t))) = next else {
                if matches!(next, Some(Ok(_))) {
                    continue;
                }
                panic!("seeding WebSocket ended after {acked} acks: {next:?}");
            };
            let v: Value = serde_json::from_str(t.as_str()).expect("server frame is JSON");
            match v["event"].as_str() {
                Some("ack") => {
                    if let Some(i) = v["ref"].as_str().and_then(|r| r.parse::<usize>().ok()) {
                        ids[i] = v["data"]["message"]["id"]
                            .as_str()
                            .expect("acked message id")
                            .to_string();
                        acked += 1;
                    }
                }
                Some("error") => panic!("seeding: server refused a message: {v}"),
                _ => {}
            }
        }
        let _ = ws.close(None).await;
        ids
    }

    /// Waits until a search for `q` as `who` finds message `id`.
    pub async fn wait_searchable(&self, who: &Account, q: &str, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self
                .call(
                    "GET",
                    &format!("/api/search?q={q}&limit=100"),
                    Some(&who.token),
                    None,
                    200,
                )
                .await;
            let found = r["hits"]
                .as_array()
                .is_some_and(|h| h.iter().any(|h| h["message"]["id"] == json!(id)));
            if found {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "search for {q:?} did not find message {id} within 10 s: {r}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&body[..eol]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        body = &body[eol + 2..];
        if size == 0 || body.len() < size {
            break;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[(size + 2).min(body.len())..];
    }
    out
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- confab server output (last 40 lines) ---\n{}",
                self.output_tail(40)
            );
        }
    }
}
