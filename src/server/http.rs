//! HTTP routes: the REST API under /api/, health, metrics, the WebSocket endpoint, assets.

use super::AppState;
use super::reply::{
    ApiResult, Resp, created, error_response, full, ok, ok_json, store_error, text,
};
use super::request::{
    BodyClock, BodyTimeout, auth_error, bearer, decode_query_value, verify_token,
};
use crate::auth::{self, Identity};
use crate::chat::{ChatError, NewMessage};
use crate::config::Registration;
use crate::model::{Account, Id, UserId, now_ms};
use crate::protocol::{self, ErrorCode, WireError};
use crate::store::{StoreError, WriteOp};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Largest REST request body.
const MAX_BODY: usize = 64 * 1024;

pub async fn route(st: AppState, peer: SocketAddr, mut req: Request<Incoming>) -> Resp {
    st.metrics.http_requests.inc();
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400.
    if req.version() == hyper::Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
        let e = WireError::new(
            ErrorCode::InvalidPayload,
            "HTTP/1.1 requests need a Host header",
        );
        st.metrics.error(e.code);
        return error_response(&e);
    }
    // Handlers that read a body find its time limit here (see `BodyClock`).
    req.extensions_mut().insert(BodyTimeout(Duration::from_secs(
        st.config.server.body_timeout_secs,
    )));
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let cross_origin = cors_origin(&st, req.headers());
    let mut resp = route_inner(&st, peer, req, &method, &path, &segments).await;
    match segments.as_slice() {
        ["api" | "files", ..] => {
            if let Some(origin) = cross_origin {
                let h = resp.headers_mut();
                h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                h.insert(header::VARY, HeaderValue::from_static("origin"));
                h.insert(
                    header::ACCESS_CONTROL_EXPOSE_HEADERS,
                    HeaderValue::from_static("content-range, content-disposition, etag"),
                );
            }
        }
        // The SDK is a public script: any page may import it.
        ["sdk", ..] => {
            resp.headers_mut().insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
        _ => {}
    }
    resp
}

/// The request's Origin when `server.allowed_origins` lists it (or has "*"): host pages on
/// other origins may then call the REST API and fetch files with their tokens.
fn cors_origin(st: &AppState, h: &hyper::HeaderMap) -> Option<HeaderValue> {
    let origin = h.get(header::ORIGIN)?;
    let o = origin.to_str().ok()?;
    st.config
        .server
        .allowed_origins
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(o))
        .then(|| origin.clone())
}

/// A CORS preflight: what a cross-origin page may send.
fn preflight(st: &AppState, h: &hyper::HeaderMap) -> Resp {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    if cors_origin(st, h).is_some() {
        let hs = r.headers_mut();
        hs.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, POST, PATCH, DELETE"),
        );
        hs.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, range, if-none-match"),
        );
        hs.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    r
}

async fn route_inner(
    st: &AppState,
    peer: SocketAddr,
    req: Request<Incoming>,
    method: &Method,
    path: &str,
    segments: &[&str],
) -> Resp {
    let st = st.clone();
    let preflight_ok = *method == Method::OPTIONS && matches!(segments, ["api" | "files", ..]);
    if let Some(allow) = allowed_methods(segments, path)
        && !preflight_ok
        && !allow.split(", ").any(|m| m == method.as_str())
    {
        let e = WireError::new(
            ErrorCode::MethodNotAllowed,
            format!("{method} is not allowed here; allowed: {allow}"),
        );
        st.metrics.error(e.code);
        let mut r = error_response(&e);
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        return r;
    }
    // HEAD is GET without the body, which hyper leaves out of the answer by itself.
    let method = if *method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    let res = match (method, segments) {
        (_, ["ws"]) => return super::ws::upgrade(st, peer, req).await,
        (&Method::OPTIONS, ["api" | "files", ..]) => return preflight(&st, req.headers()),
        (&Method::GET, ["healthz"]) => Ok(text(StatusCode::OK, "ok\n")),
        (&Method::GET, ["readyz"]) => Ok(if !st.ready.load(Ordering::Acquire) {
            text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
        } else if st.hub.store().is_stopped() {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage stopped after a failed disk write; restart Confab\n",
            )
        } else if st.hub.store().is_disk_full() {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the disk is nearly full (storage.min_free_disk_bytes): writes are refused until space is freed\n",
            )
        } else {
            text(StatusCode::OK, "ready\n")
        }),
        (&Method::GET, ["metrics"]) => {
            st.sample_limiters();
            let body = st.metrics.render(st.hub.store().path());
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok(r)
        }
        (_, ["api", rest @ ..]) => api(&st, peer.ip(), method, rest, req).await,
        (&Method::GET | &Method::HEAD, ["files", id]) => {
            super::files::download(&st, req, id, false).await
        }
        (&Method::GET | &Method::HEAD, ["files", id, "thumb"]) => {
            super::files::download(&st, req, id, true).await
        }
        (&Method::GET, _) => Ok(super::assets::serve(path, req.headers())),
        _ => Err(WireError::new(ErrorCode::NotFound, "no such endpoint")),
    };
    match res {
        Ok(r) => r,
        Err(e) => {
            st.metrics.error(e.code);
            error_response(&e)
        }
    }
}

/// The methods a known path answers (for `405` and its `Allow`), or `None` for a path that
/// is not one (answered `404`). Kept beside the routes above and below: a route added there
/// is added here too: `tests/it/edges.rs` walks the endpoint tables of `docs/protocol.md` and
/// checks each documented method against this list.
fn allowed_methods(seg: &[&str], path: &str) -> Option<&'static str> {
    const GET: &str = "GET, HEAD";
    Some(match seg {
        ["healthz" | "readyz" | "metrics"] => GET,
        ["ws"] => return None,
        ["api", rest @ ..] => match rest {
            ["auth", "register" | "login"] | ["setup"] | ["dm"] => "POST",
            ["server" | "me" | "search"] => GET,
            ["me", "settings"] => "PATCH",
            ["rooms"] => "GET, HEAD, POST",
            ["rooms", "public"] | ["rooms", _] | ["rooms", _, "members"] => GET,
            ["rooms", _, "read" | "join" | "invite" | "leave"] => "POST",
            ["rooms", _, "messages"] => "GET, HEAD, POST",
            ["rooms", _, "messages", _] => "PATCH, DELETE",
            ["rooms", _, "messages", _, "receipts"] => GET,
            ["files"] | ["files", "cookie"] => "POST",
            ["files", _] | ["files", _, "url"] => GET,
            ["admin", "settings"] => "GET, HEAD, PATCH",
            ["admin", "invites"] => "GET, HEAD, POST",
            ["admin", "invites", _] => "DELETE",
            _ => return None,
        },
        ["files", _] | ["files", _, "thumb"] => GET,
        ["files", ..] => return None,
        _ if super::assets::exists(path) => GET,
        _ => return None,
    })
}

async fn api(
    st: &AppState,
    ip: IpAddr,
    method: &Method,
    seg: &[&str],
    req: Request<Incoming>,
) -> ApiResult {
    match (method, seg) {
        (&Method::POST, ["auth", "register"]) => {
            return counted(st, "register", register(st, ip, req).await);
        }
        (&Method::POST, ["auth", "login"]) => {
            return counted(st, "login", login(st, ip, req).await);
        }
        (&Method::POST, ["setup"]) => return counted(st, "setup", setup(st, ip, req).await),
        (&Method::GET, ["server"]) => {
            return ok(&serde_json::json!({
                "name": "Confab",
                "version": env!("CARGO_PKG_VERSION"),
                "registration": st.hub.registration(),
                "setup_needed": st.hub.setup_token().is_some(),
            }));
        }
        _ => {}
    }
    let me = authenticate(st, &req)?;
    let hub = &st.hub;
    let user = &me.user_id;
    // A user who only ever calls REST is known too, so that no registration can take the
    // name later (issue 24, point 1). Free when the name is already known.
    hub.remember_name(user, &me.name);
    if let ["files", rest @ ..] = seg {
        return super::files::api(st, user, method, rest, req).await;
    }
    if let ["admin", rest @ ..] = seg {
        return admin(st, user, method, rest, req).await;
    }
    match (method, seg) {
        (&Method::GET, ["me"]) => ok(&serde_json::json!({
            "user": {"id": user, "name": me.name},
            "admin": hub.is_admin(user),
            "settings": hub.settings(user),
        })),
        (&Method::PATCH, ["me", "settings"]) => {
            let b: protocol::Settings = body(req).await?;
            let settings = hub
                .set_settings(user, b.private_receipts)
                .await
                .map_err(|e| hub.wire_error(&e))?;
            ok(&serde_json::json!({ "settings": settings }))
        }
        (&Method::GET, ["rooms"]) => {
            let rooms = hub.my_rooms(user).await.map_err(|e| hub.wire_error(&e))?;
            ok(&serde_json::json!({ "rooms": rooms }))
        }
        (&Method::POST, ["rooms", id, "read"]) => {
            let room = room_id(id)?;
            let b: protocol::ReadBody = body(req).await?;
            let read_at = hub
                .mark_read(user, room, b.message_id)
                .await
                .map_err(|e| hub.wire_error(&e))?;
            ok(&serde_json::json!({ "read_at": read_at }))
        }
        (&Method::GET, ["rooms", id, "messages", mid, "receipts"]) => {
            let (room, mid) = (room_id(id)?, message_id(mid)?);
            let r = hub
                .message_receipts(user, room, mid)
                .await
                .map_err(|e| hub.wire_error(&e))?;
            ok(&r)
        }
        (&Method::POST, ["rooms"]) => {
            let b: protocol::CreateRoom = body(req).await?;
            let room = hub
                .create_room(user, &b.name, &b.topic, b.visibility)
                .await
                .map_err(|e| hub.wire_error(&e))?;
            created(&serde_json::json!({ "room": room }))
        }
        (&Method::GET, ["rooms", "public"]) => {
            ok(&serde_json::json!({"rooms": hub.public_rooms()}))
        }
        (&Method::GET, ["rooms", id]) => {
            let room = hub
                .room(user, room_id(id)?)
                .map_err(|e| hub.wire_error(&e))?;
            ok(&serde_json::json!({ "room": room }))
        }
        (&Method::POST, ["rooms", id, "join"]) => {
            let room = hub
                .join_room(user, room_id(id)?)
                .await
                .map_err(|e| hub.wire_error(&e))?;
            ok(&serde_json::json!({ "room": room }))
        }
        (&Method::POST, ["rooms", id, "invite"]) => {
            let room = room_id(id)?;
            let b: protocol::UserRef = body(req).await?;
            hub.invite(user, room, &b.user_id)
                .await
                .map_err(|e| hub.wire_error(&e))?;
            ok(&serde_json::json!({}))
        }
        (&Method::POST, ["rooms", id, "leave"]) => {
            hub.leave_room(user, room_id(id)?)
                .await
                .map_err(|e| hub.wire_error(&e))?;
            ok(&serde_json::json!({}))
        }
        (&Method::GET, ["rooms", id, "members"]) => {
            let members = hub
                .members(user, room_id(id)?)
                .map_err(|e| hub.wire_error(&e))?;
            ok(&serde_json::json!({ "members": members }))
        }
        (&Method::GET, ["rooms", id, "messages"]) => {
            let room = room_id(id)?;
            let q = Query::parse(req.uri().query())?;
            let page = hub
                .history(user, room, q.before, q.after, q.limit)
                .await
                .map_err(|e| hub.wire_error(&e))?;
            ok(&page)
        }
        (&Method::POST, ["rooms", id, "messages"]) => {
            let room = room_id(id)?;
            let b: protocol::PostMessage = body(req).await?;
            let ack = hub
                .send_message_wait(
                    user,
                    NewMessage {
                        room_id: room,
                        client_msg_id: b.client_msg_id,
                        kind: b.kind,
                        content: b.content,
                        file_id: b.file_id,
                    },
                )
                .await
                .map_err(|e| hub.wire_error(&e))?;
            // A retry gets the same answer as the original send.
            created(&ack)
        }
        (&Method::PATCH, ["rooms", id, "messages", mid]) => {
            let (room, mid) = (room_id(id)?, message_id(mid)?);
            let b: protocol::EditBody = body(req).await?;
            let m = hub
                .edit_message(user, room, mid, b.content)
                .await
                .map_err(|e| hub.wire_error(&e))?;
            ok(&serde_json::json!({ "message": m }))
        }
        (&Method::DELETE, ["rooms", id, "messages", mid]) => {
            let (room, mid) = (room_id(id)?, message_id(mid)?);
            let m = hub
                .delete_message(user, room, mid)
                .await
                .map_err(|e| hub.wire_error(&e))?;
            ok(&serde_json::json!({ "message": m }))
        }
        (&Method::GET, ["search"]) => {
            let q = search_query(req.uri().query())?;
            let answer = hub.search(user, q).await.map_err(|e| hub.wire_error(&e))?;
            ok(&answer)
        }
        (&Method::POST, ["dm"]) => {
            let b: protocol::UserRef = body(req).await?;
            let room = hub
                .open_dm(user, &b.user_id)
                .await
                .map_err(|e| hub.wire_error(&e))?;
            ok(&serde_json::json!({ "room": room }))
        }
        _ => Err(WireError::new(ErrorCode::NotFound, "no such endpoint")),
    }
}

/// The Bearer token of a REST request, verified.
fn authenticate(st: &AppState, req: &Request<Incoming>) -> Result<Identity, WireError> {
    let token = bearer(req.headers()).ok_or_else(|| {
        WireError::new(
            ErrorCode::Unauthorized,
            "missing Authorization: Bearer token",
        )
    })?;
    verify_token(st, token)
}

#[derive(Serialize)]
struct Session<'a> {
    token: String,
    user: UserView<'a>,
}

#[derive(Serialize)]
struct UserView<'a> {
    id: &'a str,
    name: &'a str,
}

/// Checks a new account's username, password and display name, and hashes the password.
async fn new_account(
    username: &str,
    password: String,
    display_name: Option<String>,
) -> Result<(String, Account), WireError> {
    let username = auth::validate_username(username).map_err(auth_error)?;
    let display = display_name
        .map(|d| d.trim().chars().take(64).collect::<String>())
        .filter(|d| !d.is_empty() && !d.chars().any(char::is_control))
        .unwrap_or_else(|| username.clone());
    auth::validate_password(&password, &[&username, &display]).map_err(auth_error)?;
    let _slot = hashing_slots()
        .acquire()
        .await
        .map_err(|_| WireError::new(ErrorCode::Unavailable, "shutting down"))?;
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|_| WireError::new(ErrorCode::Internal, "internal error"))?
        .map_err(auth_error)?;
    let account = Account {
        user_id: UserId::from(username.as_str()),
        display_name: display,
        password_hash: hash,
        created_at: now_ms(),
    };
    Ok((username, account))
}

async fn register(st: &AppState, ip: IpAddr, req: Request<Incoming>) -> ApiResult {
    st.auth_limits.signup(ip).map_err(|e| e.to_wire())?;
    let mode = st.hub.registration();
    if mode == Registration::Closed {
        return Err(WireError::new(
            ErrorCode::Forbidden,
            "registration is closed",
        ));
    }
    let b: protocol::Register = body(req).await?;
    let invite = match (mode, b.invite) {
        (Registration::Invite, None) => {
            return Err(WireError::new(
                ErrorCode::Forbidden,
                "registration needs an invite from the administrator",
            ));
        }
        (Registration::Invite, Some(code)) => Some(code),
        _ => None,
    };
    let (username, account) = new_account(&b.username, b.password, b.display_name).await?;
    let user_id = account.user_id.clone();
    let display = account.display_name.clone();
    st.hub
        .store()
        .write(WriteOp::CreateAccount {
            username: username.clone(),
            account,
            invite,
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict => WireError::new(ErrorCode::Conflict, "username is taken"),
            StoreError::Forbidden => WireError::new(
                ErrorCode::Forbidden,
                "this invite is unknown, used up or expired",
            ),
            other => store_error(other),
        })?;
    st.hub.remember_name(&user_id, &display);
    let token = st
        .auth
        .mint(&username, Some(&display), None)
        .map_err(auth_error)?;
    tracing::info!(user = %username, "account registered");
    created(&Session {
        token,
        user: UserView {
            id: &username,
            name: &display,
        },
    })
}

/// First-run setup: the administrator's account and the first room.
async fn setup(st: &AppState, ip: IpAddr, req: Request<Incoming>) -> ApiResult {
    st.auth_limits.signup(ip).map_err(|e| e.to_wire())?;
    let hub = &st.hub;
    if hub.setup_token().is_none() {
        return Err(WireError::new(
            ErrorCode::Conflict,
            "this server is already set up",
        ));
    }
    let b: protocol::Setup = body(req).await?;
    let (username, account) = new_account(&b.username, b.password, b.display_name).await?;
    let display = account.display_name.clone();
    let room_name = b.room_name.unwrap_or_else(|| "general".to_owned());
    let room = hub
        .setup(&b.setup_token, username.clone(), account, &room_name)
        .await
        .map_err(|e| hub.wire_error(&e))?;
    let token = st
        .auth
        .mint(&username, Some(&display), None)
        .map_err(auth_error)?;
    created(&serde_json::json!({
        "token": token,
        "user": {"id": username, "name": display},
        "room": room,
    }))
}

/// `/api/admin/...` for an administrator.
async fn admin(
    st: &AppState,
    user: &UserId,
    method: &Method,
    seg: &[&str],
    req: Request<Incoming>,
) -> ApiResult {
    let hub = &st.hub;
    let e = |e: ChatError| hub.wire_error(&e);
    match (method, seg) {
        (&Method::GET, ["settings"]) => ok(&hub.admin_settings(user).map_err(e)?),
        (&Method::PATCH, ["settings"]) => {
            let b: protocol::AdminSettingsBody = body(req).await?;
            ok(&hub
                .set_registration(user, b.registration)
                .await
                .map_err(e)?)
        }
        (&Method::POST, ["invites"]) => {
            let b: protocol::NewInvite = body(req).await?;
            let invite = hub
                .create_invite(user, b.max_uses, b.ttl_secs)
                .await
                .map_err(e)?;
            let url = format!("/?invite={}", invite.code);
            let mut v = serde_json::to_value(&invite).unwrap_or_default();
            v["url"] = serde_json::Value::String(url);
            created(&serde_json::json!({ "invite": v }))
        }
        (&Method::GET, ["invites"]) => {
            let invites = hub.invites(user).await.map_err(e)?;
            ok(&serde_json::json!({ "invites": invites }))
        }
        (&Method::DELETE, ["invites", code]) => {
            hub.delete_invite(user, code).await.map_err(e)?;
            ok(&serde_json::json!({}))
        }
        _ => Err(WireError::new(ErrorCode::NotFound, "no such endpoint")),
    }
}

/// Password hashing is slow and takes ~19 MiB per hash (argon2id defaults): run at most one
/// per core at a time, so a burst of sign-ups queues instead of eating memory.
fn hashing_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(n)
    })
}

/// Counts a login, registration or setup that was refused, or held back by its rate limit.
fn counted(st: &AppState, kind: &'static str, res: ApiResult) -> ApiResult {
    if let Err(e) = &res {
        match e.code {
            ErrorCode::RateLimited => st.metrics.auth_throttled(kind),
            // The server's trouble, not the client's attempt.
            ErrorCode::Internal | ErrorCode::Unavailable => {}
            _ => st.metrics.auth_failure(kind),
        }
    }
    res
}

/// A hash to verify against when the account does not exist, so a wrong username costs the
/// same time as a wrong password.
static DUMMY_HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

async fn login(st: &AppState, ip: IpAddr, req: Request<Incoming>) -> ApiResult {
    st.auth_limits.check_address(ip).map_err(|e| e.to_wire())?;
    let b: protocol::Login = body(req).await?;
    let bad = || WireError::new(ErrorCode::Unauthorized, "wrong username or password");
    let username = auth::validate_username(&b.username).ok();
    // Dropped before `succeeded`, the attempt counts as a failure: every return below.
    let attempt = st
        .auth_limits
        .begin_login(username.as_deref(), ip)
        .map_err(|e| e.to_wire())?;
    let Some(username) = username else {
        return Err(bad());
    };
    let account = st
        .hub
        .store()
        .account(username.clone())
        .await
        .map_err(store_error)?;
    let phc = account.as_ref().map(|a| a.password_hash.clone());
    let password = b.password;
    let _slot = hashing_slots()
        .acquire()
        .await
        .map_err(|_| WireError::new(ErrorCode::Unavailable, "shutting down"))?;
    let ok = tokio::task::spawn_blocking(move || {
        let phc = phc.unwrap_or_else(|| {
            DUMMY_HASH
                .get_or_init(|| auth::hash_password("not a real password").unwrap_or_default())
                .clone()
        });
        auth::verify_password(&password, &phc)
    })
    .await
    .unwrap_or(false);
    let account = match account {
        Some(a) if ok => a,
        _ => {
            tracing::info!(user = %username, %ip, "login refused");
            return Err(bad());
        }
    };
    attempt.succeeded();
    let token = st
        .auth
        .mint(&account.user_id, Some(&account.display_name), None)
        .map_err(auth_error)?;
    ok_json(&Session {
        token,
        user: UserView {
            id: &account.user_id,
            name: &account.display_name,
        },
    })
}

struct Query {
    before: Option<Id>,
    after: Option<Id>,
    limit: Option<u32>,
}

impl Query {
    fn parse(q: Option<&str>) -> Result<Self, WireError> {
        let mut out = Query {
            before: None,
            after: None,
            limit: None,
        };
        let bad = |k: &str| {
            WireError::new(
                ErrorCode::InvalidPayload,
                format!("bad query parameter {k}"),
            )
        };
        for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "before" => out.before = Some(v.parse().map_err(|_| bad(k))?),
                "after" => out.after = Some(v.parse().map_err(|_| bad(k))?),
                "limit" => out.limit = Some(v.parse().map_err(|_| bad(k))?),
                _ => return Err(bad(k)),
            }
        }
        Ok(out)
    }
}

/// `GET /api/search` parameters into the request the WebSocket `search` takes.
fn search_query(q: Option<&str>) -> Result<protocol::SearchRequest, WireError> {
    let bad = |k: &str| {
        WireError::new(
            ErrorCode::InvalidPayload,
            format!("bad query parameter {k}"),
        )
    };
    let mut out = protocol::SearchRequest::default();
    let mut seen_q = false;
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode_query_value(v).ok_or_else(|| bad(k))?;
        match k {
            "q" => {
                out.q = v;
                seen_q = true;
            }
            "room" => out.room_id = Some(v.parse().map_err(|_| bad(k))?),
            "sender" => out.sender_id = Some(v),
            "from" => out.from = Some(v.parse().map_err(|_| bad(k))?),
            "to" => out.to = Some(v.parse().map_err(|_| bad(k))?),
            "has_file" => out.has_file = Some(v.parse().map_err(|_| bad(k))?),
            "sort" => out.sort = Some(v),
            "limit" => out.limit = Some(v.parse().map_err(|_| bad(k))?),
            "cursor" => out.cursor = Some(v),
            _ => return Err(bad(k)),
        }
    }
    if !seen_q {
        return Err(bad("q (missing)"));
    }
    Ok(out)
}

fn room_id(s: &str) -> Result<Id, WireError> {
    // An unparseable id names no room: the same answer as a room you cannot see.
    s.parse()
        .map_err(|_| WireError::new(ErrorCode::NotFound, "room not found"))
}

fn message_id(s: &str) -> Result<Id, WireError> {
    s.parse()
        .map_err(|_| WireError::new(ErrorCode::NotFound, "message not found"))
}

/// Reads and parses a JSON body of at most `MAX_BODY` bytes.
async fn body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, WireError> {
    let mut clock = BodyClock::new(&req);
    let mut incoming = req.into_body();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(data) = clock.next(&mut incoming).await? {
        if buf.len() + data.len() > MAX_BODY {
            return Err(WireError::new(
                ErrorCode::TooLarge,
                format!("body over {MAX_BODY} bytes"),
            ));
        }
        buf.extend_from_slice(&data);
    }
    let bytes: &[u8] = if buf.is_empty() { b"{}" } else { &buf };
    serde_json::from_slice(bytes).map_err(|e| {
        if e.is_data() {
            WireError::new(ErrorCode::InvalidPayload, format!("bad body: {e}"))
        } else {
            WireError::new(
                ErrorCode::InvalidJson,
                format!("body is not valid JSON: {e}"),
            )
        }
    })
}
