//! A small Chrome DevTools Protocol client: launches headless Chromium, talks CDP over its
//! browser WebSocket (flattened sessions), and drives pages through the DOM.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The browser the tests drive (Debian's package); `CONFAB_CHROMIUM` overrides it.
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";
/// Longest wait for one CDP answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound of `Page::wait`.
pub const WAIT: Duration = Duration::from_secs(10);

/// Helpers every `Page::eval` expression can use (the page is the app under test; these only
/// read the DOM through the stable `data-testid` hooks).
const PRELUDE: &str = r#"
const T = (id) => `[data-testid="${id}"]`;
const $t = (id, root = document) => root.querySelector(T(id));
const $$t = (id, root = document) => Array.from(root.querySelectorAll(T(id)));
const vis = (el) => !!el && el.isConnected && el.getClientRects().length > 0
  && !el.closest('[hidden]') && getComputedStyle(el).visibility !== 'hidden'
  && getComputedStyle(el).display !== 'none';
const txt = (el) => el ? (el.textContent || '').trim() : null;
const norm = (s) => (s || '').replace(/^#\s*/, '').trim();
const roomItem = (name) => $$t('room-item').find((r) => {
  const n = $t('room-name', r);
  return norm(txt(n || r)) === name;
}) || null;
const msgList = () => $t('message-list');
const messages = () => { const l = msgList(); return l ? $$t('message', l) : []; };
const msgByText = (s) => messages().find((m) => txt($t('message-text', m)) === s) || null;
const msgsByText = (s) => messages().filter((m) => txt($t('message-text', m)) === s);
const inViewport = (el) => {
  const r = el.getBoundingClientRect();
  return r.height > 0 && r.top >= -1 && r.bottom <= innerHeight + 1 && r.left >= -1 && r.right <= innerWidth + 1;
};
const within = (el, box) => {
  const r = el.getBoundingClientRect(), b = box.getBoundingClientRect();
  return r.height > 0 && r.top >= b.top - 1 && r.bottom <= b.bottom + 1;
};
const byLabel = (label) => Array.from(document.querySelectorAll('[aria-label]'))
  .find((e) => e.getAttribute('aria-label') === label && vis(e)) || null;
const describe = (el) => el ? `<${el.tagName.toLowerCase()}${el.dataset && el.dataset.testid ? ` data-testid="${el.dataset.testid}"` : ''}${el.id ? ` id="${el.id}"` : ''}${el.className && typeof el.className === 'string' ? ` class="${el.className}"` : ''}>` : 'nothing';
"#;

/// Installed in every document before the app's scripts: records CSP violations (so a test
/// can tell that the page tried to run injected script) and the notifications it shows.
const ON_NEW_DOCUMENT: &str = r#"
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || '(inline)'} at ${e.sourceFile || ''}:${e.lineNumber || ''}`);
});
window.__notifications = [];
if (typeof window.Notification === 'function') {
  window.Notification = class extends window.Notification {
    constructor(title, options) {
      window.__notifications.push({title, body: options && options.body});
      super(title, options);
    }
  };
}
"#;

/// What a page reported on its own: console errors, exceptions, dialogs, requests.
#[derive(Default)]
pub struct PageLog {
    pub console: Mutex<Vec<String>>,
    pub dialogs: Mutex<Vec<String>>,
    pub requests: Mutex<Vec<String>>,
}

type Reply = Result<Value, String>;

/// The browser-level CDP connection shared by every page.
struct Conn {
    out: mpsc::UnboundedSender<Message>,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    logs: Mutex<HashMap<String, Arc<PageLog>>>,
}

impl Conn {
    fn send_raw(&self, session: Option<&str>, method: &str, params: Value) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let _ = self.out.send(Message::text(msg.to_string()));
        id
    }

    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Reply {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        if self.out.send(Message::text(msg.to_string())).is_err() {
            return Err(format!("{method}: the DevTools connection is closed"));
        }
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(r)) => r.map_err(|e| format!("{method}: {e}")),
            Ok(Err(_)) => Err(format!("{method}: the DevTools connection closed")),
            Err(_) => {
                self.pending.lock().expect("pending lock").remove(&id);
                Err(format!("{method}: no answer within {CALL_TIMEOUT:?}"))
            }
        }
    }

    fn on_text(&self, text: &str) {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return;
        };
        if let Some(id) = v["id"].as_u64() {
            let tx = self.pending.lock().expect("pending lock").remove(&id);
            if let Some(tx) = tx {
                let r = if v["error"].is_object() {
                    Err(v["error"].to_string())
                } else {
                    Ok(v["result"].clone())
                };
                let _ = tx.send(r);
            }
            return;
        }
        let Some(method) = v["method"].as_str() else {
            return;
        };
        let Some(session) = v["sessionId"].as_str() else {
            return;
        };
        let Some(log) = self.logs.lock().expect("logs lock").get(session).cloned() else {
            return;
        };
        let p = &v["params"];
        match method {
            "Runtime.consoleAPICalled" => {
                let kind = p["type"].as_str().unwrap_or("");
                if kind == "error" || kind == "warning" || kind == "assert" {
                    let args: Vec<String> = p["args"]
                        .as_array()
                        .map(|a| a.iter().map(remote_object_text).collect())
                        .unwrap_or_default();
                    push(&log.console, format!("console.{kind}: {}", args.join(" ")));
                }
            }
            "Runtime.exceptionThrown" => {
                let d = &p["exceptionDetails"];
                let desc = d["exception"]["description"]
                    .as_str()
                    .or(d["text"].as_str())
                    .unwrap_or("exception");
                push(
                    &log.console,
                    format!(
                        "uncaught: {desc} ({}:{})",
                        d["url"].as_str().unwrap_or(""),
                        d["lineNumber"]
                    ),
                );
            }
            "Log.entryAdded" => {
                let e = &p["entry"];
                if e["level"] == "error" || e["level"] == "warning" {
                    push(
                        &log.console,
                        format!(
                            "log.{}: {} {}",
                            e["level"].as_str().unwrap_or(""),
                            e["text"].as_str().unwrap_or(""),
                            e["url"].as_str().unwrap_or("")
                        ),
                    );
                }
            }
            "Page.javascriptDialogOpening" => {
                push(
                    &log.dialogs,
                    format!(
                        "{}: {}",
                        p["type"].as_str().unwrap_or("dialog"),
                        p["message"].as_str().unwrap_or("")
                    ),
                );
                // Dismiss it, or the page stays blocked.
                self.send_raw(
                    Some(session),
                    "Page.handleJavaScriptDialog",
                    json!({"accept": false}),
                );
            }
            "Network.requestWillBeSent" => {
                if let Some(url) = p["request"]["url"].as_str() {
                    push(&log.requests, url.to_string());
                }
            }
            "Inspector.targetCrashed" => push(&log.console, "the page crashed".to_string()),
            _ => {}
        }
    }
}

fn push(list: &Mutex<Vec<String>>, line: String) {
    let mut l = list.lock().expect("log lock");
    if l.len() < 2000 {
        l.push(line);
    }
}

fn remote_object_text(o: &Value) -> String {
    if let Some(s) = o["value"].as_str() {
        return s.to_string();
    }
    if !o["value"].is_null() {
        return o["value"].to_string();
    }
    o["description"]
        .as_str()
        .unwrap_or(o["type"].as_str().unwrap_or("?"))
        .to_string()
}

/// A child process started in its own process group; the whole group is killed on drop.
struct ProcessGroup(Option<Child>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // The browser, its zygote, renderers and GPU process.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One headless Chromium process, killed (with its whole process group) on drop.
pub struct Browser {
    conn: Arc<Conn>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    // Dropped after the tasks are aborted (fields drop in order; see Drop below).
    process: ProcessGroup,
    // The profile directory, removed after the process is gone (fields drop in order).
    _profile: tempfile::TempDir,
    artifacts: PathBuf,
}

/// The Chromium binary, installed with apt-get when missing and running as root.
fn chromium_path() -> PathBuf {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = std::env::var_os("CONFAB_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = PathBuf::from(DEFAULT_CHROMIUM);
    if path.exists() {
        return path;
    }
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if uid != "0" {
        panic!(
            "the browser tests need Chromium at {DEFAULT_CHROMIUM} (or CONFAB_CHROMIUM=/path): \
             install it with `sudo apt-get install -y chromium` (not running as root, so the \
             test cannot install it itself)"
        );
    }
    eprintln!("{DEFAULT_CHROMIUM} is missing: installing it with apt-get (running as root)");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "chromium"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    let ok = install().is_ok_and(|s| s.success()) || {
        let _ = Command::new("apt-get").arg("update").status();
        install().is_ok_and(|s| s.success())
    };
    assert!(
        ok && path.exists(),
        "`apt-get install -y chromium` did not provide {DEFAULT_CHROMIUM}; install Chromium \
         and run again (or set CONFAB_CHROMIUM)"
    );
    path
}

impl Browser {
    /// Starts headless Chromium and connects to its browser endpoint. `artifacts` is where
    /// screenshots go.
    pub async fn launch(artifacts: &Path) -> Browser {
        let exe = chromium_path();
        let profile = tempfile::tempdir().expect("temp dir for the Chromium profile");
        let log = File::create(profile.path().join("chromium.log")).expect("chromium log file");
        let log2 = log.try_clone().expect("clone log file handle");
        let mut cmd = Command::new(&exe);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
            "--mute-audio",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let mut process = ProcessGroup(Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", exe.display())),
        ));
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let endpoint = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break format!("ws://127.0.0.1:{}{}", port.trim(), path.trim());
                }
            }
            if let Some(child) = process.0.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "Chromium exited ({status}) before opening DevTools; its log:\n{}",
                    log_tail(profile.path())
                );
            }
            assert!(
                Instant::now() < deadline,
                "Chromium wrote no {} within 30 s; its log:\n{}",
                port_file.display(),
                log_tail(profile.path())
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(512 << 20))
            .max_frame_size(Some(512 << 20));
        let (ws, _) = tokio_tungstenite::connect_async_with_config(&endpoint, Some(config), false)
            .await
            .unwrap_or_else(|e| panic!("connect to Chromium's DevTools at {endpoint}: {e}"));
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        let conn = Arc::new(Conn {
            out: tx,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            logs: Mutex::new(HashMap::new()),
        });
        let writer = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
        });
        let reader_conn = Arc::clone(&conn);
        let reader = tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                if let Message::Text(t) = m {
                    reader_conn.on_text(t.as_str());
                }
            }
            // Fail whatever still waits for an answer.
            reader_conn.pending.lock().expect("pending lock").clear();
        });
        Browser {
            conn,
            tasks: vec![writer, reader],
            process,
            _profile: profile,
            artifacts: artifacts.to_path_buf(),
        }
    }

    async fn call(&self, method: &str, params: Value) -> Value {
        self.conn
            .call(None, method, params)
            .await
            .unwrap_or_else(|e| panic!("CDP {e}"))
    }

    /// Opens a page in a new, isolated browser context (own cookies and localStorage) at a
    /// desktop size (1280x800). `name` labels it in failure messages and screenshots.
    pub async fn new_page(&self, name: &str) -> Page {
        let ctx = self.call("Target.createBrowserContext", json!({})).await;
        let context_id = ctx["browserContextId"]
            .as_str()
            .expect("browserContextId")
            .to_string();
        let t = self
            .call(
                "Target.createTarget",
                json!({"url": "about:blank", "browserContextId": context_id, "newWindow": true}),
            )
            .await;
        let target_id = t["targetId"].as_str().expect("targetId").to_string();
        let a = self
            .call(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        let session = a["sessionId"].as_str().expect("sessionId").to_string();
        let log = Arc::new(PageLog::default());
        self.conn
            .logs
            .lock()
            .expect("logs lock")
            .insert(session.clone(), Arc::clone(&log));
        let page = Page {
            conn: Arc::clone(&self.conn),
            session,
            context_id,
            name: name.to_string(),
            log,
            artifacts: self.artifacts.clone(),
            shots: AtomicUsize::new(0),
        };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable", "DOM.enable"] {
            page.cmd(domain, json!({})).await;
        }
        page.cmd("Network.enable", json!({})).await;
        page.cmd(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({"source": ON_NEW_DOCUMENT}),
        )
        .await;
        page.cmd(
            "Emulation.setFocusEmulationEnabled",
            json!({"enabled": true}),
        )
        .await;
        page.set_viewport(1280, 800, false).await;
        page
    }

    /// Lets pages of `page`'s context show notifications without a prompt.
    pub async fn grant_notifications(&self, page: &Page, origin: &str) {
        self.call(
            "Browser.grantPermissions",
            json!({"permissions": ["notifications"], "origin": origin,
                   "browserContextId": page.context_id}),
        )
        .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // `process` drops next and kills the process group.
        let _ = &self.process;
    }
}

fn log_tail(profile: &Path) -> String {
    let text = std::fs::read_to_string(profile.join("chromium.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains("dbus")).collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// One tab in its own browser context.
pub struct Page {
    conn: Arc<Conn>,
    session: String,
    context_id: String,
    pub name: String,
    log: Arc<PageLog>,
    artifacts: PathBuf,
    shots: AtomicUsize,
}

/// Whether a JSON value counts as "yes" the way JavaScript's truthiness does.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// A JS string literal for `s`.
pub fn js_str(s: &str) -> String {
    serde_json::to_string(s).expect("serialize a string")
}

impl Page {
    /// Sends a CDP command to this page; panics (with the page's diagnostics) on error.
    pub async fn cmd(&self, method: &str, params: Value) -> Value {
        match self.conn.call(Some(&self.session), method, params).await {
            Ok(v) => v,
            Err(e) => panic!("page {}: CDP {e}", self.name),
        }
    }

    /// Evaluates `expr` (with the helpers of PRELUDE in scope; `await` allowed) and returns
    /// its value as JSON, or the exception's text.
    pub async fn try_eval(&self, expr: &str) -> Result<Value, String> {
        let wrapped = format!("(async () => {{ {PRELUDE}\n return ({expr}\n); }})()");
        let r = self
            .conn
            .call(
                Some(&self.session),
                "Runtime.evaluate",
                json!({"expression": wrapped, "awaitPromise": true, "returnByValue": true,
                       "userGesture": true}),
            )
            .await?;
        if let Some(d) = r.get("exceptionDetails") {
            let desc = d["exception"]["description"]
                .as_str()
                .or(d["text"].as_str())
                .unwrap_or("exception");
            return Err(format!("{desc} (evaluating `{expr}`)"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// `try_eval`, failing the test on an exception.
    pub async fn eval(&self, expr: &str) -> Value {
        match self.try_eval(expr).await {
            Ok(v) => v,
            Err(e) => self.fail(&format!("script failed: {e}")).await,
        }
    }

    /// Polls `expr` every 100 ms until it is truthy and returns its value; fails with `what`
    /// after `within`.
    pub async fn wait_within(&self, what: &str, expr: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        let last = loop {
            let last = match self.try_eval(expr).await {
                Ok(v) if truthy(&v) => return v,
                other => other,
            };
            if Instant::now() >= deadline {
                break last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let last = match last {
            Ok(v) => format!("last value {v}"),
            Err(e) => format!("last error {e}"),
        };
        self.fail(&format!(
            "timed out after {within:?} waiting for {what} ({last}; condition `{expr}`)"
        ))
        .await
    }

    /// `wait_within` with the default bound (10 s).
    pub async fn wait(&self, what: &str, expr: &str) -> Value {
        self.wait_within(what, expr, WAIT).await
    }

    /// Waits until `testid` has a visible element.
    pub async fn wait_testid(&self, testid: &str) {
        self.wait(
            &format!("a visible [data-testid={testid}]"),
            &format!("vis($t({}))", js_str(testid)),
        )
        .await;
    }

    /// Checks `expr` once: fails with `what` unless truthy.
    pub async fn check(&self, what: &str, expr: &str) -> Value {
        let v = self.eval(expr).await;
        if !truthy(&v) {
            self.fail(&format!("check failed: {what} (got {v}; `{expr}`)"))
                .await;
        }
        v
    }

    /// Opens `url` and waits for the new document to load.
    pub async fn goto(&self, url: &str) {
        self.mark_document().await;
        let r = self.cmd("Page.navigate", json!({"url": url})).await;
        if let Some(e) = r["errorText"].as_str() {
            self.fail(&format!("navigating to {url}: {e}")).await;
        }
        self.wait_loaded().await;
    }

    /// Reloads the page and waits for the new document to load.
    pub async fn reload(&self) {
        self.mark_document().await;
        self.cmd("Page.reload", json!({"ignoreCache": false})).await;
        self.wait_loaded().await;
    }

    /// Marks the current document, so `wait_loaded` can tell the next one from it.
    async fn mark_document(&self) {
        let _ = self.try_eval("window.__oldDocument = true").await;
    }

    async fn wait_loaded(&self) {
        self.wait(
            "the new document to finish loading",
            "!window.__oldDocument && document.readyState === 'complete'",
        )
        .await;
    }

    /// Waits until the element `el_expr` (a JS expression giving an element) is visible and
    /// not covered, scrolls it into view and returns a viewport point inside it (halfway down,
    /// at most 40 px from its left edge).
    async fn point_of(&self, what: &str, el_expr: &str) -> (f64, f64) {
        let probe = format!(
            "(() => {{ const el = ({el_expr}); if (!vis(el)) return null;
               el.scrollIntoView({{block: 'nearest', inline: 'nearest'}});
               const r = el.getBoundingClientRect();
               const x = r.left + Math.min(r.width / 2, 40), y = r.top + r.height / 2;
               const hit = document.elementFromPoint(x, y);
               if (!hit || !(hit === el || el.contains(hit) || hit.contains(el) && hit.tagName === 'LABEL'))
                 return {{covered: describe(hit)}};
               return [x, y]; }})()"
        );
        let deadline = Instant::now() + WAIT;
        let mut last = Value::Null;
        loop {
            if let Ok(v) = self.try_eval(&probe).await {
                if let Some(a) = v.as_array() {
                    let x = a[0].as_f64().unwrap_or(0.0);
                    let y = a[1].as_f64().unwrap_or(0.0);
                    return (x, y);
                }
                last = v;
            }
            if Instant::now() >= deadline {
                let why = if last.is_null() {
                    "it never became visible".to_string()
                } else {
                    format!("it stayed covered ({last})")
                };
                self.fail(&format!("cannot click {what}: {why}; element `{el_expr}`"))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element `el_expr` with real mouse events (see `point_of` for where), once it
    /// is visible and nothing covers it.
    pub async fn click(&self, what: &str, el_expr: &str) {
        let (x, y) = self.point_of(what, el_expr).await;
        self.mouse_click(x, y).await;
    }

    /// Clicks the visible element with `data-testid=testid`.
    pub async fn click_testid(&self, testid: &str) {
        self.click(
            &format!("[data-testid={testid}]"),
            &format!("$$t({}).find(vis)", js_str(testid)),
        )
        .await;
    }

    /// A left click at viewport coordinates.
    pub async fn mouse_click(&self, x: f64, y: f64) {
        for (kind, buttons) in [("mouseMoved", 0), ("mousePressed", 1), ("mouseReleased", 0)] {
            self.cmd(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "buttons": buttons,
                       "clickCount": 1}),
            )
            .await;
        }
    }

    /// Focuses the field `el_expr`, empties it and types `text` into it (trusted input events,
    /// as an IME commit).
    pub async fn fill(&self, what: &str, el_expr: &str, text: &str) {
        self.point_of(what, el_expr).await;
        self.eval(&format!(
            "(() => {{ const el = ({el_expr}); el.focus();
               if ('value' in el && el.value !== '') {{
                 el.select && el.select();
                 document.execCommand('delete');
                 if (el.value !== '') {{ el.value = ''; el.dispatchEvent(new Event('input', {{bubbles: true}})); }}
               }}
               return document.activeElement === el; }})()"
        ))
        .await;
        if !text.is_empty() {
            self.cmd("Input.insertText", json!({"text": text})).await;
        }
    }

    /// `fill` on the visible element with `data-testid=testid`.
    pub async fn fill_testid(&self, testid: &str, text: &str) {
        self.fill(
            &format!("[data-testid={testid}]"),
            &format!("$$t({}).find(vis)", js_str(testid)),
            text,
        )
        .await;
    }

    /// Presses and releases a key (`Enter`, `Escape`, ...) on the focused element.
    pub async fn press(&self, key: &str) {
        let (code, vk, text) = match key {
            "Enter" => ("Enter", 13, Some("\r")),
            "Escape" => ("Escape", 27, None),
            "Tab" => ("Tab", 9, None),
            other => panic!("press: no mapping for key {other}"),
        };
        let mut down = json!({"type": "keyDown", "key": key, "code": code,
                              "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk});
        if let Some(t) = text {
            down["text"] = json!(t);
            down["unmodifiedText"] = json!(t);
        }
        self.cmd("Input.dispatchKeyEvent", down).await;
        self.cmd(
            "Input.dispatchKeyEvent",
            json!({"type": "keyUp", "key": key, "code": code,
                   "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk}),
        )
        .await;
    }

    /// Chooses `value` in the `<select>` (or sets the field) `el_expr`, with input and
    /// change events, as a user picking it would.
    pub async fn select(&self, what: &str, el_expr: &str, value: &str) {
        self.point_of(what, el_expr).await;
        let r = self
            .eval(&format!(
                "(() => {{ const el = ({el_expr}); const v = {v};
                   if (el.tagName === 'SELECT') {{
                     const opts = Array.from(el.options).map((o) => o.value);
                     if (!opts.includes(v)) return 'no option ' + v + ' among ' + JSON.stringify(opts);
                   }} else if (el.type === 'checkbox' || el.type === 'radio') {{
                     return 'not a select: ' + describe(el);
                   }}
                   el.focus(); el.value = v;
                   el.dispatchEvent(new Event('input', {{bubbles: true}}));
                   el.dispatchEvent(new Event('change', {{bubbles: true}}));
                   return 'ok'; }})()",
                v = js_str(value)
            ))
            .await;
        if r != "ok" {
            self.fail(&format!("cannot choose {value:?} in {what}: {r}"))
                .await;
        }
    }

    /// Gives the file input `el_expr` the files at `paths` (fires its change event).
    pub async fn set_files(&self, what: &str, el_expr: &str, paths: &[&Path]) {
        let r = self
            .cmd(
                "Runtime.evaluate",
                json!({"expression": format!("(() => {{ {PRELUDE}\n return ({el_expr}); }})()")}),
            )
            .await;
        let Some(object_id) = r["result"]["objectId"].as_str() else {
            self.fail(&format!("no element for {what}: {}", r["result"]))
                .await
        };
        let files: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        self.cmd(
            "DOM.setFileInputFiles",
            json!({"files": files, "objectId": object_id}),
        )
        .await;
    }

    /// Sets the viewport (CSS pixels); `mobile` also emulates a phone (touch, mobile viewport).
    pub async fn set_viewport(&self, width: u32, height: u32, mobile: bool) {
        self.cmd(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
        self.cmd(
            "Emulation.setTouchEmulationEnabled",
            json!({"enabled": mobile, "maxTouchPoints": 1}),
        )
        .await;
    }

    /// Cuts this page's network (new and open connections) or gives it back.
    pub async fn set_offline(&self, offline: bool) {
        self.cmd(
            "Network.emulateNetworkConditions",
            json!({"offline": offline, "latency": 0, "downloadThroughput": -1,
                   "uploadThroughput": -1}),
        )
        .await;
    }

    /// Saves a PNG screenshot of the viewport as `<artifacts>/<name>.png` and returns the path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let r = self
            .conn
            .call(
                Some(&self.session),
                "Page.captureScreenshot",
                json!({"format": "png"}),
            )
            .await;
        let path = self.artifacts.join(format!("{name}.png"));
        match r {
            Ok(r) => {
                let data = r["data"].as_str().unwrap_or("");
                match STANDARD.decode(data) {
                    Ok(bytes) => {
                        if let Err(e) = std::fs::write(&path, bytes) {
                            eprintln!("cannot write {}: {e}", path.display());
                        }
                    }
                    Err(e) => eprintln!("screenshot {name}: bad base64: {e}"),
                }
            }
            Err(e) => eprintln!("screenshot {name}: {e}"),
        }
        path
    }

    /// Console errors and warnings, uncaught exceptions, crashes.
    pub fn console(&self) -> Vec<String> {
        self.log.console.lock().expect("log lock").clone()
    }

    /// JavaScript dialogs (alert, confirm, prompt) the page opened.
    pub fn dialogs(&self) -> Vec<String> {
        self.log.dialogs.lock().expect("log lock").clone()
    }

    /// URLs of every request the page made.
    pub fn requests(&self) -> Vec<String> {
        self.log.requests.lock().expect("log lock").clone()
    }

    /// What to print when something goes wrong: the URL, the console, dialogs, CSP
    /// violations and the start of the visible text.
    pub async fn diagnostics(&self) -> String {
        let state = self
            .try_eval(
                "({url: location.href, csp: window.__cspViolations || [],
                   active: describe(document.activeElement),
                   text: (document.body ? document.body.innerText : '').slice(0, 1500)})",
            )
            .await
            .unwrap_or_else(|e| json!({"error": e}));
        let console = self.console();
        let console = &console[console.len().saturating_sub(25)..];
        format!(
            "  url: {}\n  focused: {}\n  console errors/warnings ({}):\n    {}\n  dialogs: {:?}\n  CSP violations: {}\n  visible text:\n    {}",
            state["url"],
            state["active"],
            console.len(),
            console.join("\n    "),
            self.dialogs(),
            state["csp"],
            state["text"].as_str().unwrap_or("").replace('\n', "\n    "),
        )
    }

    /// Fails the test: saves a screenshot and panics with `msg` and the diagnostics.
    pub async fn fail(&self, msg: &str) -> ! {
        let n = self.shots.fetch_add(1, Ordering::Relaxed);
        let shot = self.screenshot(&format!("FAILED-{}-{n}", self.name)).await;
        let diag = self.diagnostics().await;
        panic!(
            "[page {}] {msg}\n  screenshot: {}\n{diag}",
            self.name,
            shot.display()
        );
    }
}
