//! The web UI, embedded in the binary by rust-embed (read from disk in debug builds).

use super::reply::{Resp, full, text};
use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, Response, StatusCode};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "web/"]
#[exclude = "sdk/test/*"]
struct Assets;

/// Serves `path` from `web/` (`/` is `index.html`) with a content-hash ETag.
pub fn serve(path: &str, req_headers: &HeaderMap) -> Resp {
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "index.html" } else { rel };
    let Some(file) = Assets::get(rel) else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let hash: String = file
        .metadata
        .sha256_hash()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    let etag = format!("\"{hash}\"");
    let not_modified = super::reply::none_match(req_headers, &etag);
    let mut r = if not_modified {
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(full(file.data.into_owned()))
    };
    let mime = mime_guess::from_path(rel).first_or_octet_stream();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(mime.as_ref()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; object-src 'none'; frame-ancestors 'none'",
        ),
    );
    // Setup and invite secrets ride in the UI's URLs: never send them on as a Referer, and
    // never let another site frame the page (older browsers ignore frame-ancestors).
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

/// Whether `path` names an embedded file (for `405` on a wrong method).
pub fn exists(path: &str) -> bool {
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "index.html" } else { rel };
    Assets::get(rel).is_some()
}
