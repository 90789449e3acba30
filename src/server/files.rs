//! File routes: streaming upload (`POST /api/files`), upload info, signed URLs and the download
//! cookie, and safe serving of originals and thumbnails (`GET|HEAD /files/{id}[/thumb]`) with
//! range requests.

use super::AppState;
use super::reply::{ApiResult, Body, Resp, created, full, ok, store_error};
use super::request::{bearer, decode_query_value};
use crate::chat::ChatError;
use crate::files::{FileError, sniff};
use crate::model::{Blob, Id, ThumbState, Upload, UploadView, UserId};
use crate::protocol::{ErrorCode, WireError};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncSeekExt, ReadBuf};

const COOKIE: &str = "confab_files";
/// RFC 8187 attr-chars left as they are in `filename*`.
const ATTR_CHARS: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// Bytes read from disk per body frame.
const CHUNK: usize = 64 * 1024;

/// The one mapping of file errors to wire errors.
pub fn file_error(e: FileError) -> WireError {
    match e {
        FileError::TooLarge { .. } => WireError::new(ErrorCode::TooLarge, e.to_string()),
        FileError::QuotaExceeded { .. } => WireError::new(ErrorCode::QuotaExceeded, e.to_string()),
        FileError::InsufficientStorage => {
            WireError::new(ErrorCode::InsufficientStorage, e.to_string())
        }
        FileError::Empty => WireError::new(ErrorCode::InvalidPayload, e.to_string()),
        FileError::NotFound => WireError::new(ErrorCode::NotFound, "file not found"),
        FileError::Store(s) => store_error(s),
        // The disk filled up while the bytes streamed in (the floor is checked every 8 MiB):
        // nothing was recorded, and the client learns why.
        FileError::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            tracing::warn!(error = %io, "upload refused: the disk is full");
            WireError::new(
                ErrorCode::InsufficientStorage,
                FileError::InsufficientStorage.to_string(),
            )
        }
        FileError::Io(io) => {
            tracing::error!(error = %io, "file i/o failure");
            WireError::new(ErrorCode::Internal, "internal error; nothing was saved")
        }
    }
}

fn file_id(s: &str) -> Result<Id, WireError> {
    s.parse()
        .map_err(|_| WireError::new(ErrorCode::NotFound, "file not found"))
}

/// The value of one query parameter, percent-decoded (`None` if absent or not UTF-8).
fn query_param(q: Option<&str>, key: &str) -> Option<String> {
    q?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| decode_query_value(v)).flatten()
    })
}

/// `/api/files...` routes for an authenticated user.
pub async fn api(
    st: &AppState,
    user: &UserId,
    method: &Method,
    seg: &[&str],
    req: Request<Incoming>,
) -> ApiResult {
    let hub = &st.hub;
    match (method, seg) {
        (&Method::POST, []) => upload(st, user, req).await,
        (&Method::POST, ["cookie"]) => {
            let (value, ttl) = hub.files().cookie_for(user);
            let secure = req
                .headers()
                .get("x-forwarded-proto")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
            let cookie = format!(
                "{COOKIE}={value}; Path=/files; Max-Age={ttl}; HttpOnly; SameSite=Strict{}",
                if secure { "; Secure" } else { "" }
            );
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            let h = r.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                h.insert(header::SET_COOKIE, v);
            }
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(r)
        }
        (&Method::GET, [id]) => {
            let (upload, blob) = hub
                .downloadable(user, file_id(id)?)
                .await
                .map_err(|e| hub.wire_error(&e))?;
            ok(&serde_json::json!({ "file": UploadView::new(&upload, &blob) }))
        }
        (&Method::GET, [id, "url"]) => {
            let id = file_id(id)?;
            let (_, blob) = hub
                .downloadable(user, id)
                .await
                .map_err(|e| hub.wire_error(&e))?;
            let (url, expires_at) = hub.files().signed_url(id, user, false);
            let thumbnail_url = matches!(blob.thumb_state, ThumbState::Ready | ThumbState::Pending)
                .then(|| hub.files().signed_url(id, user, true).0);
            ok(&serde_json::json!({
                "url": url,
                "thumbnail_url": thumbnail_url,
                "expires_at": expires_at,
            }))
        }
        _ => Err(WireError::new(ErrorCode::NotFound, "no such endpoint")),
    }
}

/// Streams the body to disk: limits are checked from the headers before the body is read,
/// then again as bytes arrive.
async fn upload(st: &AppState, user: &UserId, req: Request<Incoming>) -> ApiResult {
    let hub = &st.hub;
    hub.take_upload_token(user)
        .map_err(|e| hub.wire_error(&e))?;
    let declared = match req.headers().get(header::CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| WireError::new(ErrorCode::InvalidPayload, "bad Content-Length"))?,
        ),
        None => None,
    };
    let name = query_param(req.uri().query(), "name").unwrap_or_default();
    let mut sink = hub
        .files()
        .begin_upload(user, declared)
        .await
        .map_err(file_error)?;
    let mut clock = super::request::BodyClock::new(&req);
    let mut body = req.into_body();
    while let Some(data) = clock.next(&mut body).await? {
        sink.write(&data).await.map_err(file_error)?;
    }
    let (upload, blob) = sink.finish(&name).await.map_err(file_error)?;
    created(&serde_json::json!({ "file": UploadView::new(&upload, &blob) }))
}

/// The user a download request speaks for: a signed URL, a Bearer token, or the cookie.
/// A signed URL opens only the resource it was made for: the original or the thumbnail.
fn downloader(
    st: &AppState,
    req: &Request<Incoming>,
    id: Id,
    thumb: bool,
) -> Result<UserId, WireError> {
    let q = req.uri().query();
    if let (Some(u), Some(exp), Some(sig)) = (
        query_param(q, "u"),
        query_param(q, "exp"),
        query_param(q, "sig"),
    ) {
        let exp = exp.parse().unwrap_or(0);
        if st.hub.files().check_signed_url(id, thumb, &u, exp, &sig) {
            return Ok(UserId::from(u));
        }
        return Err(WireError::new(
            ErrorCode::Unauthorized,
            "this link is invalid or has expired",
        ));
    }
    if let Some(token) = bearer(req.headers()) {
        return super::request::verify_token(st, token).map(|i| i.user_id);
    }
    if let Some(value) = cookie(req.headers(), COOKIE) {
        return st
            .hub
            .files()
            .check_cookie(value)
            .map(UserId::from)
            .ok_or_else(|| {
                WireError::new(
                    ErrorCode::Unauthorized,
                    "the file cookie is invalid or has expired; POST /api/files/cookie",
                )
            });
    }
    Err(WireError::new(
        ErrorCode::Unauthorized,
        "downloads need a Bearer token, the file cookie or a signed URL",
    ))
}

fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// `GET|HEAD /files/{id}` and `/files/{id}/thumb`.
pub async fn download(
    st: &AppState,
    req: Request<Incoming>,
    id: &str,
    thumb: bool,
) -> Result<Resp, WireError> {
    let hub = &st.hub;
    let id = file_id(id)?;
    let user = downloader(st, &req, id, thumb)?;
    let (upload, mut blob) = hub
        .downloadable(&user, id)
        .await
        .map_err(|e| hub.wire_error(&e))?;
    let no_thumb = || hub.wire_error(&ChatError::NotFound("thumbnail"));
    if thumb && blob.thumb_state == ThumbState::Pending {
        let wait = std::time::Duration::from_millis(hub.files().config().thumbnail_wait_ms);
        hub.files().wait_thumbnail(&blob.sha256, wait).await;
        blob = hub
            .downloadable(&user, id)
            .await
            .map_err(|e| hub.wire_error(&e))?
            .1;
    }
    if thumb && blob.thumb_state != ThumbState::Ready {
        return Err(no_thumb());
    }
    let file = if thumb {
        hub.files().open_thumbnail(&blob).await
    } else {
        hub.files().open_original(&blob).await
    };
    let file = file.map_err(|e| match e {
        FileError::NotFound => {
            tracing::error!(file = %id, sha = %blob.sha256, thumb, "upload bytes missing on disk");
            no_thumb()
        }
        other => file_error(other),
    })?;
    let size = file
        .metadata()
        .await
        .map_err(|e| file_error(e.into()))?
        .len();
    serve(
        req.method(),
        req.headers(),
        file,
        size,
        &upload,
        &blob,
        thumb,
    )
    .await
}

enum Wanted {
    All,
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range (inclusive ends), clamped to `size`. Several ranges, or a range we
/// cannot read, get the whole file, as RFC 9110 allows.
fn wanted_range(h: &HeaderMap, size: u64, etag: &str) -> Wanted {
    let Some(spec) = h.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Wanted::All;
    };
    if let Some(if_range) = h.get(header::IF_RANGE).and_then(|v| v.to_str().ok())
        && if_range.trim() != etag
    {
        return Wanted::All;
    }
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return Wanted::All;
    };
    if set.contains(',') {
        return Wanted::All;
    }
    let Some((a, b)) = set.trim().split_once('-') else {
        return Wanted::All;
    };
    let (a, b) = (a.trim(), b.trim());
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(start), Ok(end)) if start <= end => {
            if start >= size {
                Wanted::Unsatisfiable
            } else {
                Wanted::Part(start, end.min(size - 1))
            }
        }
        (Ok(start), Err(_)) if b.is_empty() => {
            if start >= size {
                Wanted::Unsatisfiable
            } else {
                Wanted::Part(start, size - 1)
            }
        }
        (Err(_), Ok(n)) if a.is_empty() => {
            if n == 0 || size == 0 {
                Wanted::Unsatisfiable
            } else {
                Wanted::Part(size - n.min(size), size - 1)
            }
        }
        _ => Wanted::All,
    }
}

/// `filename` (ASCII, quotes and backslashes replaced) plus `filename*` (UTF-8).
fn disposition(kind: &str, name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let utf8 = utf8_percent_encode(name, ATTR_CHARS);
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{utf8}")
}

async fn serve(
    method: &Method,
    req_headers: &HeaderMap,
    mut file: tokio::fs::File,
    size: u64,
    upload: &Upload,
    blob: &Blob,
    thumb: bool,
) -> Result<Resp, WireError> {
    let etag = if thumb {
        format!("\"{}-thumb\"", blob.sha256)
    } else {
        format!("\"{}\"", blob.sha256)
    };
    let (content_type, inline) = if thumb {
        (blob.thumb_mime.as_deref().unwrap_or("image/jpeg"), true)
    } else if sniff::served_inline(&blob.mime) {
        (blob.mime.as_str(), true)
    } else {
        ("application/octet-stream", false)
    };
    let not_modified = super::reply::none_match(req_headers, &etag);
    let (status, start, len) = if not_modified {
        (StatusCode::NOT_MODIFIED, 0, 0)
    } else {
        match wanted_range(req_headers, size, &etag) {
            Wanted::All => (StatusCode::OK, 0, size),
            Wanted::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
            Wanted::Unsatisfiable => (StatusCode::RANGE_NOT_SATISFIABLE, 0, 0),
        }
    };
    let body: Body = if *method == Method::HEAD || len == 0 {
        full(Bytes::new())
    } else {
        if start > 0 {
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| file_error(e.into()))?;
        }
        FileBody {
            file,
            remaining: len,
            buf: Vec::new(),
        }
        .boxed_unsync()
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    let mut set = |k: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set(header::ETAG, &etag);
    set(header::ACCEPT_RANGES, "bytes");
    set(header::CACHE_CONTROL, "private, no-cache");
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; sandbox",
    );
    set(header::REFERRER_POLICY, "no-referrer");
    match status {
        StatusCode::NOT_MODIFIED => {}
        StatusCode::RANGE_NOT_SATISFIABLE => {
            set(header::CONTENT_RANGE, &format!("bytes */{size}"));
        }
        _ => {
            set(header::CONTENT_TYPE, content_type);
            set(header::CONTENT_LENGTH, &len.to_string());
            set(
                header::CONTENT_DISPOSITION,
                &disposition(if inline { "inline" } else { "attachment" }, &upload.name),
            );
            if status == StatusCode::PARTIAL_CONTENT {
                set(
                    header::CONTENT_RANGE,
                    &format!("bytes {start}-{}/{size}", start + len - 1),
                );
            }
        }
    }
    Ok(r)
}

/// A body read from a file in chunks, ending after `remaining` bytes.
struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
    buf: Vec<u8>,
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(this.remaining).unwrap_or(CHUNK).min(CHUNK);
        if this.buf.len() < want {
            this.buf.resize(want, 0);
        }
        let mut rb = ReadBuf::new(&mut this.buf[..want]);
        match Pin::new(&mut this.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    // The file shrank under us: end with an error, never with short data.
                    this.remaining = 0;
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "file ended early",
                    ))));
                }
                this.remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(rb.filled())))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
