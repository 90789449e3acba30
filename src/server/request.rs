//! Reading requests: the bearer token and its verification, query-string values, and the
//! clock that cuts off a body trickled in too slowly. Shared by every route.

use super::AppState;
use crate::auth::{AuthError, Identity};
use crate::protocol::{self, ErrorCode, WireError};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::Incoming;
use hyper::header;
use std::time::Duration;

/// Verifies a token from a header, refusing one over `MAX_TOKEN_BYTES` before decoding it.
pub(super) fn verify_token(st: &AppState, token: &str) -> Result<Identity, WireError> {
    if token.len() > protocol::MAX_TOKEN_BYTES {
        return Err(WireError::new(
            ErrorCode::Unauthorized,
            format!("token over {} bytes", protocol::MAX_TOKEN_BYTES),
        ));
    }
    st.auth.verify(token).map_err(auth_error)
}

pub fn bearer(h: &hyper::HeaderMap) -> Option<&str> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

pub fn auth_error(e: AuthError) -> WireError {
    match e {
        AuthError::BadInput(m) => WireError::new(ErrorCode::InvalidPayload, m),
        AuthError::Key(_) | AuthError::Hash(_) => {
            tracing::error!(error = %e, "auth failure");
            WireError::new(ErrorCode::Internal, "internal error")
        }
        other => WireError::new(ErrorCode::Unauthorized, other.to_string()),
    }
}

/// A query-string value: `+` is a space, `%XX` escapes, and the result must be UTF-8.
pub(super) fn decode_query_value(v: &str) -> Option<String> {
    percent_encoding::percent_decode_str(&v.replace('+', " "))
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// How long a request body may take: see `BodyClock`. Put into each request's extensions by
/// `route`, so that every handler reading a body finds it.
#[derive(Clone, Copy)]
pub(super) struct BodyTimeout(pub Duration);

/// Cuts off a request body trickled in too slowly: each `server.body_timeout_secs` window must
/// bring at least `BodyClock::WINDOW_BYTES` of it, or its end. A JSON body (at most 64 KiB)
/// must therefore arrive whole within one window; an upload keeps going at any rate above
/// 64 KiB per window. Without it a client could hold a connection and its handler forever.
pub(super) struct BodyClock {
    window: Duration,
    deadline: tokio::time::Instant,
    bytes: usize,
}

impl BodyClock {
    const WINDOW_BYTES: usize = 64 * 1024;

    pub(super) fn new<B>(req: &Request<B>) -> Self {
        let window = req
            .extensions()
            .get::<BodyTimeout>()
            .map_or(Duration::from_secs(30), |t| t.0);
        Self {
            window,
            deadline: tokio::time::Instant::now() + window,
            bytes: 0,
        }
    }

    /// The next data of the body (`None` at its end); `request_timeout` once a window passed
    /// without enough of it, `invalid_payload` if the body broke off.
    pub(super) async fn next(&mut self, body: &mut Incoming) -> Result<Option<Bytes>, WireError> {
        loop {
            let frame = match tokio::time::timeout_at(self.deadline, body.frame()).await {
                Ok(Some(Ok(f))) => f,
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => {
                    return Err(WireError::new(
                        ErrorCode::InvalidPayload,
                        format!("the request body ended early: {e}"),
                    ));
                }
                Err(_) => {
                    tracing::info!(
                        window_secs = self.window.as_secs(),
                        "request body cut off: it arrived too slowly"
                    );
                    return Err(WireError::new(
                        ErrorCode::RequestTimeout,
                        format!(
                            "the request body arrived too slowly (under {} KiB in {} s)",
                            Self::WINDOW_BYTES / 1024,
                            self.window.as_secs()
                        ),
                    ));
                }
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            self.bytes += data.len();
            if self.bytes >= Self::WINDOW_BYTES {
                self.bytes = 0;
                self.deadline = tokio::time::Instant::now() + self.window;
            }
            return Ok(Some(data));
        }
    }
}
