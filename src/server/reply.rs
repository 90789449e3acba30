//! Building responses: bodies, JSON answers, the error shape with its HTTP status, and the
//! conditional-request check. Shared by every route (REST, files, assets, the upgrade).

use crate::chat::ChatError;
use crate::protocol::WireError;
use crate::store::StoreError;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::Response;
use hyper::StatusCode;
use hyper::header::{self, HeaderValue};
use serde::Serialize;

/// Response bodies: whole buffers, or files streamed from disk.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

pub type Resp = Response<Body>;

/// A body of one buffer.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub type ApiResult = Result<Resp, WireError>;

pub(super) fn store_error(e: StoreError) -> WireError {
    ChatError::from(e).to_wire()
}

fn json_response<T: Serialize>(status: StatusCode, v: &T) -> Resp {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(super) fn ok<T: Serialize>(v: &T) -> ApiResult {
    Ok(json_response(StatusCode::OK, v))
}

pub(super) fn ok_json<T: Serialize>(v: &T) -> ApiResult {
    ok(v)
}

pub(super) fn created<T: Serialize>(v: &T) -> ApiResult {
    Ok(json_response(StatusCode::CREATED, v))
}

pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Whether `If-None-Match` names `etag` (or is `*`), by RFC 9110's weak comparison: `W/"x"`
/// matches `"x"` and the other way round. Every header line and list item counts.
pub(super) fn none_match(h: &hyper::HeaderMap, etag: &str) -> bool {
    let opaque = |t: &str| t.strip_prefix("W/").unwrap_or(t).to_owned();
    let want = opaque(etag);
    h.get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| entity_tags(v).any(|t| t == "*" || opaque(t) == want))
}

/// The items of an entity-tag list: `*`, or `"x"` / `W/"x"` (the quotes kept). A comma
/// inside quotes belongs to the tag.
fn entity_tags(v: &str) -> impl Iterator<Item = &str> {
    let mut rest = v;
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_ascii_whitespace());
        if rest.is_empty() {
            return None;
        }
        let open = rest.find('"');
        let end = match open {
            // `W/"..."` or `"..."`: up to the closing quote.
            Some(i) if i <= 2 && rest[..i].chars().all(|c| c == 'W' || c == '/') => rest[i + 1..]
                .find('"')
                .map_or(rest.len(), |j| i + 1 + j + 1),
            // `*` or something malformed: up to the next comma.
            _ => rest.find(',').unwrap_or(rest.len()),
        };
        let (item, after) = rest.split_at(end);
        rest = after;
        Some(item.trim())
    })
}

/// `{"error":{"code":..,"message":..}}` with the code's HTTP status.
pub fn error_response(e: &WireError) -> Resp {
    #[derive(Serialize)]
    struct Body<'a> {
        error: &'a WireError,
    }
    let status =
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(status, &Body { error: e });
    if let Some(ms) = e.retry_after_ms {
        // Retry-After counts whole seconds (RFC 9110 10.2.3): round up, never early.
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000)));
    }
    r
}
