//! The chat core's errors, and their one mapping to wire error codes.

use crate::protocol::{ErrorCode, WireError};
use crate::store::StoreError;

/// Why a chat operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// Missing, or not visible to this user: the two are deliberately indistinguishable.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Conflict(&'static str),
    #[error("{0}")]
    Unavailable(&'static str),
    /// Over a rate limit; retry after this many milliseconds.
    #[error("rate limited; retry in {0} ms")]
    RateLimited(u64),
    /// Over a count limit (rooms, connections per user).
    #[error("{0}")]
    LimitReached(&'static str),
    /// The disk is too full to store anything: refused, nothing written.
    #[error("the server's disk is full; nothing was saved")]
    DiskFull,
    #[error("storage failure")]
    Storage(#[source] StoreError),
}

impl From<StoreError> for ChatError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ChatError::NotFound("item"),
            StoreError::Forbidden => ChatError::Forbidden("not allowed"),
            StoreError::Conflict => ChatError::Conflict("already exists"),
            StoreError::Overloaded => ChatError::Unavailable("server is overloaded, retry shortly"),
            StoreError::Closed => ChatError::Unavailable("server is shutting down"),
            StoreError::DiskFull => ChatError::DiskFull,
            other => ChatError::Storage(other),
        }
    }
}

impl ChatError {
    /// The wire form. Storage details stay in the log, not on the wire.
    pub fn to_wire(&self) -> WireError {
        let code = match self {
            ChatError::NotFound(_) => ErrorCode::NotFound,
            ChatError::Forbidden(_) => ErrorCode::Forbidden,
            ChatError::Invalid(_) => ErrorCode::InvalidPayload,
            ChatError::TooLarge(_) => ErrorCode::TooLarge,
            ChatError::Conflict(_) => ErrorCode::Conflict,
            ChatError::Unavailable(_) => ErrorCode::Unavailable,
            ChatError::RateLimited(ms) => {
                let mut w = WireError::new(ErrorCode::RateLimited, self.to_string());
                w.retry_after_ms = Some(*ms);
                return w;
            }
            ChatError::LimitReached(_) => ErrorCode::RateLimited,
            ChatError::DiskFull => ErrorCode::InsufficientStorage,
            ChatError::Storage(e) => {
                tracing::error!(error = %e, "storage failure answered as internal");
                return WireError::new(ErrorCode::Internal, "internal error; nothing was saved");
            }
        };
        WireError::new(code, self.to_string())
    }
}
