//! The wire format: client frames, server frames, request payloads and stable error codes.
//!
//! This is the only module that knows how frames look on the wire (see docs/protocol.md).
//! Domain records (`model::Message`, `model::Room`, ...) serialize to their wire shape as is;
//! renaming one of their fields is a protocol change.

mod requests;

pub use requests::*;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Longest `ref` a client may attach to a request.
pub const MAX_REF_BYTES: usize = 64;

/// Stable error codes: clients branch on these, humans read the message beside them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    InvalidPayload,
    UnknownEvent,
    TooLarge,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    RateLimited,
    Unavailable,
    Internal,
    QuotaExceeded,
    InsufficientStorage,
}

impl ErrorCode {
    /// Every code, for metrics and the protocol-doc check.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidPayload,
        ErrorCode::UnknownEvent,
        ErrorCode::TooLarge,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::QuotaExceeded,
        ErrorCode::InsufficientStorage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::UnknownEvent => "unknown_event",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::InsufficientStorage => "insufficient_storage",
        }
    }

    /// The HTTP status a REST answer with this code carries.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidJson | ErrorCode::InvalidPayload | ErrorCode::UnknownEvent => 400,
            ErrorCode::TooLarge => 413,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
            ErrorCode::QuotaExceeded => 413,
            ErrorCode::InsufficientStorage => 507,
        }
    }
}

/// An error as it travels: a code and a human message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

/// Close codes the server uses beyond RFC 6455's own.
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const TOKEN_EXPIRED: u16 = 4001;
    pub const IDLE_TIMEOUT: u16 = 4002;
    pub const SLOW_CONSUMER: u16 = 4003;
}

/// A frame from a client, with `data` left raw until the event says what it holds.
#[derive(Debug, Deserialize)]
pub struct ClientFrame<'a> {
    #[serde(borrow)]
    pub event: std::borrow::Cow<'a, str>,
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
}

/// Parses a text frame. Failing here is `invalid_json`, or `invalid_payload` for a bad `ref`.
pub fn parse_client_frame(text: &[u8]) -> Result<ClientFrame<'_>, WireError> {
    let frame: ClientFrame<'_> = serde_json::from_slice(text).map_err(|e| {
        if e.is_data() {
            WireError::new(ErrorCode::InvalidPayload, format!("bad frame: {e}"))
        } else {
            WireError::new(ErrorCode::InvalidJson, format!("not valid JSON: {e}"))
        }
    })?;
    if let Some(r) = &frame.reference
        && r.len() > MAX_REF_BYTES
    {
        return Err(WireError::new(
            ErrorCode::InvalidPayload,
            format!("ref is longer than {MAX_REF_BYTES} bytes"),
        ));
    }
    Ok(frame)
}

/// Decodes a request's `data` into its typed payload (missing data reads as `{}`).
pub fn parse_data<'a, T: Deserialize<'a>>(data: Option<&'a RawValue>) -> Result<T, WireError> {
    let raw = data.map(RawValue::get).unwrap_or("{}");
    serde_json::from_str(raw)
        .map_err(|e| WireError::new(ErrorCode::InvalidPayload, format!("bad data: {e}")))
}

#[derive(Serialize)]
struct ServerFrame<'a, T: Serialize> {
    event: &'a str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
    data: &'a T,
}

fn encode<T: Serialize>(event: &str, reference: Option<&str>, data: &T) -> Bytes {
    let frame = ServerFrame {
        event,
        reference,
        data,
    };
    // Serialized into a per-thread scratch buffer, then copied once into a frame of exactly its
    // size: one allocation per frame instead of a Vec regrown from 128 bytes as it fills.
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|cell| {
        let Ok(mut buf) = cell.try_borrow_mut() else {
            // Only if a Serialize impl ever encoded a frame itself: no scratch then.
            return Bytes::from(serde_json::to_vec(&frame).unwrap_or_default());
        };
        buf.clear();
        // Serializing our own types cannot fail (no maps with non-string keys).
        if serde_json::to_writer(&mut *buf, &frame).is_err() {
            buf.clear();
        }
        let out = Bytes::copy_from_slice(&buf);
        if buf.capacity() > 64 * 1024 {
            // A large page of history: don't keep its buffer for every later small frame.
            *buf = Vec::new();
        }
        out
    })
}

/// WebSocket framing of what the server sends (RFC 6455 §5.2): final, unmasked frames.
/// Encoded here so that the hub can join a run of frames into one shared buffer of wire
/// bytes without knowing the transport's types.
pub mod ws_frame {
    use bytes::{BufMut, Bytes, BytesMut};

    /// The longest server frame header: no mask, 8-byte length.
    pub const MAX_HEADER: usize = 10;
    pub const TEXT: u8 = 0x1;

    /// Encodes a final, unmasked frame header into `out`; returns its length.
    pub fn header(out: &mut [u8; MAX_HEADER], opcode: u8, len: usize) -> usize {
        out[0] = 0x80 | opcode;
        if len < 126 {
            out[1] = len as u8;
            2
        } else if let Ok(len) = u16::try_from(len) {
            out[1] = 126;
            out[2..4].copy_from_slice(&len.to_be_bytes());
            4
        } else {
            out[1] = 127;
            out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    }

    /// Text payloads as complete frames, back to back in one buffer.
    pub fn text_frames<'a>(payloads: impl Iterator<Item = &'a [u8]> + Clone) -> Bytes {
        let total: usize = payloads.clone().map(|p| MAX_HEADER + p.len()).sum();
        let mut out = BytesMut::with_capacity(total);
        let mut head = [0u8; MAX_HEADER];
        for p in payloads {
            let n = header(&mut head, TEXT, p.len());
            out.put_slice(&head[..n]);
            out.put_slice(p);
        }
        out.freeze()
    }
}

/// A pushed event (`receive_message`, `member_joined`, ...), serialized once for all recipients.
pub fn event<T: Serialize>(name: &str, data: &T) -> Bytes {
    encode(name, None, data)
}

/// The success answer to a request.
pub fn ack<T: Serialize>(reference: Option<&str>, data: &T) -> Bytes {
    encode("ack", reference, data)
}

/// The failure answer to a request (or a connection-level error when `reference` is `None`).
pub fn error(reference: Option<&str>, err: &WireError) -> Bytes {
    encode("error", reference, err)
}

/// Names of every pushed event, for the protocol-doc check.
pub const PUSHED_EVENTS: [&str; 12] = [
    "hello",
    "receive_message",
    "message_updated",
    "message_deleted",
    "member_joined",
    "member_left",
    "room_added",
    "room_removed",
    "message_read",
    "message_delivered",
    "typing",
    "presence",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_with_and_without_data() {
        let f = parse_client_frame(br#"{"event":"ping","ref":"r1"}"#).expect("parses");
        assert_eq!(f.event, "ping");
        assert_eq!(f.reference.as_deref(), Some("r1"));
        assert!(f.data.is_none());
        let e = parse_client_frame(b"{nope").expect_err("bad json");
        assert_eq!(e.code, ErrorCode::InvalidJson);
        let e = parse_client_frame(br#"{"event":5}"#).expect_err("bad type");
        assert_eq!(e.code, ErrorCode::InvalidPayload);
    }

    #[test]
    fn error_frames_carry_code_and_ref() {
        let b = error(
            Some("x"),
            &WireError::new(ErrorCode::NotFound, "room not found"),
        );
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["event"], "error");
        assert_eq!(v["ref"], "x");
        assert_eq!(v["data"]["code"], "not_found");
    }
}
