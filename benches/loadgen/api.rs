//! REST calls (register, rooms, metrics), local token minting and server memory readings.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// Password of every registered load-generator user.
pub const PASSWORD: &str = "confab-loadgen-pw";

/// A small JSON-over-HTTP/1 client for the server's REST API.
#[derive(Clone)]
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    timeout: Duration,
}

impl Api {
    /// `base` is `http://host:port` without a trailing slash; `idle_per_host` 0 keeps no
    /// connection open between calls (so memory readings do not count them).
    pub fn new(base: &str, idle_per_host: usize, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(idle_per_host)
            .build(connector);
        Api {
            client,
            base: base.to_owned(),
            timeout,
        }
    }

    /// One request; returns the status and the whole body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes)> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("{}{}", self.base, path));
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(serde_json::to_vec(v)?))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body)?;
        let fut = async {
            let resp = self.client.request(req).await?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| anyhow!("{method} {path}: no answer within {:?}", self.timeout))?
            .with_context(|| format!("{method} {path}"))
    }

    /// A call that must succeed with a 2xx JSON answer.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value> {
        let (status, bytes) = self.call(method.clone(), path, token, body).await?;
        if !status.is_success() {
            bail!(
                "{method} {path}: HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{method} {path}: answer is not JSON"))
    }

    /// Registers `username` (logging in instead if it exists) and returns its token.
    pub async fn register(&self, username: &str) -> Result<String> {
        let body = json!({ "username": username, "password": PASSWORD });
        let (status, bytes) = self
            .call(Method::POST, "/api/auth/register", None, Some(&body))
            .await?;
        let v: Value = if status == StatusCode::CONFLICT {
            self.json(Method::POST, "/api/auth/login", None, Some(&body))
                .await?
        } else if status.is_success() {
            serde_json::from_slice(&bytes).context("register: answer is not JSON")?
        } else {
            bail!(
                "POST /api/auth/register {username}: HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        };
        v["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("register {username}: no token in {v}"))
    }

    /// Creates a public room and returns its id.
    pub async fn create_room(&self, token: &str, name: &str) -> Result<String> {
        let body = json!({ "name": name, "visibility": "public" });
        let v = self
            .json(Method::POST, "/api/rooms", Some(token), Some(&body))
            .await?;
        v["room"]["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("POST /api/rooms: no room.id in {v}"))
    }

    /// Joins a public room.
    pub async fn join_room(&self, token: &str, room_id: &str) -> Result<()> {
        self.json(
            Method::POST,
            &format!("/api/rooms/{room_id}/join"),
            Some(token),
            None,
        )
        .await?;
        Ok(())
    }

    /// `process_resident_memory_bytes` from `/metrics`, if the server exports it.
    pub async fn resident_memory(&self) -> Result<Option<u64>> {
        let (status, bytes) = self.call(Method::GET, "/metrics", None, None).await?;
        if !status.is_success() {
            bail!("GET /metrics: HTTP {status}");
        }
        Ok(parse_metric(
            &String::from_utf8_lossy(&bytes),
            "process_resident_memory_bytes",
        ))
    }
}

/// The value of an unlabelled (or first labelled) sample of `name` in Prometheus text.
pub fn parse_metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let rest = match rest.chars().next()? {
            ' ' => rest,
            '{' => &rest[rest.find('}')? + 1..],
            _ => return None,
        };
        let v: f64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(v as u64)
    })
}

/// VmRSS of a process, in bytes, from `/proc/PID/status`.
pub fn vm_rss(pid: u32) -> Result<u64> {
    vm_status(pid, "VmRSS:")
}

/// The process's peak resident memory so far (VmHWM), in bytes.
pub fn vm_hwm(pid: u32) -> Result<u64> {
    vm_status(pid, "VmHWM:")
}

/// One `kB` field of `/proc/PID/status`, in bytes.
fn vm_status(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("bad {field} line {line:?}"))?;
    Ok(kib * 1024)
}

/// Mints HS256 tokens with the server's secret (`DIR/jwt-secret`, raw bytes).
pub struct Minter {
    key: jsonwebtoken::EncodingKey,
    exp: u64,
}

impl Minter {
    pub fn from_data_dir(dir: &Path, ttl: Duration) -> Result<Self> {
        let path = dir.join("jwt-secret");
        let secret = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if secret.is_empty() {
            bail!("{} is empty", path.display());
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        Ok(Minter {
            key: jsonwebtoken::EncodingKey::from_secret(&secret),
            exp: now + ttl.as_secs(),
        })
    }

    pub fn token(&self, sub: &str) -> Result<String> {
        let claims = json!({ "sub": sub, "exp": self.exp });
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines() {
        let text = "# HELP x\nprocess_resident_memory_bytes_total 1\nprocess_resident_memory_bytes 1.2345e7\n";
        assert_eq!(
            parse_metric(text, "process_resident_memory_bytes"),
            Some(12_345_000)
        );
        assert_eq!(parse_metric("a{b=\"c\"} 42\n", "a"), Some(42));
        assert_eq!(parse_metric("ab 42\n", "a"), None);
    }
}
