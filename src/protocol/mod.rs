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
    RequestTimeout,
    MethodNotAllowed,
}

impl ErrorCode {
    /// Every code, for metrics and the protocol-doc check.
    pub const ALL: [ErrorCode; 15] = [
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
        ErrorCode::RequestTimeout,
        ErrorCode::MethodNotAllowed,
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
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
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
            ErrorCode::RequestTimeout => 408,
            ErrorCode::MethodNotAllowed => 405,
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

    /// Whether a peer may send `code` in a Close frame (RFC 6455 §7.4): the assigned codes
    /// 1000-1003 and 1007-1014, and 3000-4999 (registered and private use). 1004-1006 and
    /// 1015 are reserved for reporting, never sent; the rest is unassigned.
    pub fn may_be_sent(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }

    /// The code and reason to answer a client's Close frame with: 1000 for an empty one or a
    /// well-formed one; 1002 for a 1-byte payload or a code that must not be sent; 1007 for a
    /// reason that is not UTF-8 (RFC 6455 §5.5.1, §7.4).
    pub fn answer(payload: &[u8]) -> (u16, &'static str) {
        match payload {
            [] => (NORMAL, ""),
            [_] => (PROTOCOL_ERROR, "a close payload of one byte"),
            [hi, lo, reason @ ..] => {
                if !may_be_sent(u16::from_be_bytes([*hi, *lo])) {
                    (PROTOCOL_ERROR, "a close code that must not be sent")
                } else if std::str::from_utf8(reason).is_err() {
                    (INVALID_DATA, "a close reason that is not UTF-8")
                } else {
                    (NORMAL, "")
                }
            }
        }
    }
}

/// Longest token accepted from a client, wherever it travels (`?token=`, `Authorization`,
/// `Sec-WebSocket-Protocol`): tokens of host applications with RSA keys are about 1 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Whether a text message whose first `checked` bytes already passed this check is still
/// UTF-8 after more bytes were appended to `buf`: true while it is, or may still become so
/// (a code point cut at the end, to be completed by the next fragment, unless `fin`); false
/// as soon as a byte sequence is definitely invalid. Only the new bytes and the code point
/// in progress are looked at, so checking each fragment costs its own length.
pub fn utf8_fragment_ok(buf: &[u8], checked: usize, fin: bool) -> bool {
    // Start at the last code point that began within 3 bytes of the end of what was checked
    // (it may be the one in progress); every byte before it is known good.
    let checked = checked.min(buf.len());
    let start = (checked.saturating_sub(3)..checked)
        .rev()
        .find(|&i| buf.get(i).is_some_and(|b| b & 0xC0 != 0x80))
        .unwrap_or(checked);
    let tail = buf.get(start..).unwrap_or_default();
    match std::str::from_utf8(tail) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && !fin,
    }
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

    /// Issue 24, point 6: a Close frame's payload decides the answer (RFC 6455 §5.5.1, §7.4).
    #[test]
    fn close_frames_are_answered_by_their_payload() {
        let with = |code: u16, reason: &[u8]| {
            let mut p = code.to_be_bytes().to_vec();
            p.extend_from_slice(reason);
            close::answer(&p).0
        };
        assert_eq!(close::answer(b"").0, 1000);
        assert_eq!(close::answer(&[3]).0, 1002);
        for ok in [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4000, 4999] {
            assert_eq!(with(ok, b"bye"), 1000, "{ok}");
        }
        for bad in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            assert_eq!(with(bad, b""), 1002, "{bad}");
        }
        assert_eq!(with(1000, b"\xff\xfe"), 1007);
        assert_eq!(with(1000, "caf\u{e9}".as_bytes()), 1000);
    }

    /// Issue 24, point 6: fragmented text fails at the first fragment that cannot be UTF-8.
    #[test]
    fn fragments_fail_at_the_first_bad_byte() {
        let euro = "\u{20ac}".as_bytes(); // e2 82 ac
        // A code point split across fragments is fine.
        let mut buf = b"a".to_vec();
        buf.extend_from_slice(&euro[..1]);
        assert!(utf8_fragment_ok(&buf, 0, false));
        let checked = buf.len();
        buf.extend_from_slice(&euro[1..]);
        assert!(utf8_fragment_ok(&buf, checked, true));
        // A lead byte followed by a non-continuation is invalid at once.
        assert!(!utf8_fragment_ok(&[0xe2, b'a'], 0, false));
        assert!(!utf8_fragment_ok(b"\xe2a", 1, false));
        // Bytes that never start UTF-8 are invalid at once.
        assert!(!utf8_fragment_ok(b"ok\xff", 0, false));
        // An unfinished code point at the end of the message is invalid.
        assert!(!utf8_fragment_ok(&euro[..2], 2, true));
        assert!(utf8_fragment_ok(&euro[..2], 0, false));
    }

    /// Issue 24, point 7: ids are strings on the wire; a JSON number is `invalid_payload`.
    #[test]
    fn ids_sent_as_numbers_are_refused() {
        let frame = parse_client_frame(br#"{"event":"history","data":{"room_id":7263100000000}}"#)
            .expect("the frame itself parses");
        let e = parse_data::<History>(frame.data).expect_err("a number is not an id");
        assert_eq!(e.code, ErrorCode::InvalidPayload);
        let raw = serde_json::value::RawValue::from_string(r#"{"rooms":{"1":2}}"#.into());
        let raw = raw.expect("raw");
        let e = parse_data::<Sync>(Some(&*raw)).expect_err("a number is not a seq");
        assert_eq!(e.code, ErrorCode::InvalidPayload);
        let raw = serde_json::value::RawValue::from_string(r#"{"room_id":"12"}"#.into());
        let raw = raw.expect("raw");
        let ok: RoomRef = parse_data(Some(&*raw)).expect("a string is");
        assert_eq!(ok.room_id.0, 12);
    }

    /// Issue 24, point 11: the client frame decoder and every request payload type give a
    /// value or a typed error for any input, never a panic. Bounded to a few hundred cases.
    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn config() -> ProptestConfig {
            ProptestConfig {
                cases: 256,
                failure_persistence: None,
                ..ProptestConfig::default()
            }
        }

        /// Arbitrary JSON values, a few levels deep, with id-like strings and numbers.
        fn json() -> impl Strategy<Value = serde_json::Value> {
            use serde_json::Value;
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                "[0-9]{0,22}".prop_map(Value::String),
                ".{0,40}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 32, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    proptest::collection::btree_map(
                        prop_oneof![
                            Just("room_id".to_owned()),
                            Just("message_id".to_owned()),
                            Just("rooms".to_owned()),
                            Just("content".to_owned()),
                            Just("q".to_owned()),
                            "[a-z_]{1,12}",
                        ],
                        inner,
                        0..6
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Runs `parse_data` for every request payload type on `data`.
        fn every_payload(data: Option<&serde_json::value::RawValue>) -> Result<(), TestCaseError> {
            fn one<'a, T: serde::Deserialize<'a>>(
                data: Option<&'a serde_json::value::RawValue>,
            ) -> Result<(), TestCaseError> {
                match parse_data::<T>(data) {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        prop_assert_eq!(e.code, ErrorCode::InvalidPayload);
                        Ok(())
                    }
                }
            }
            one::<SendMessage>(data)?;
            one::<PostMessage>(data)?;
            one::<EditMessage>(data)?;
            one::<EditBody>(data)?;
            one::<MessageRef>(data)?;
            one::<History>(data)?;
            one::<CreateRoom>(data)?;
            one::<RoomRef>(data)?;
            one::<Invite>(data)?;
            one::<UserRef>(data)?;
            one::<Empty>(data)?;
            one::<Register>(data)?;
            one::<Setup>(data)?;
            one::<AdminSettingsBody>(data)?;
            one::<NewInvite>(data)?;
            one::<Login>(data)?;
            one::<Sync>(data)?;
            one::<Typing>(data)?;
            one::<Settings>(data)?;
            one::<SearchRequest>(data)?;
            one::<ReadBody>(data)
        }

        #[test]
        fn any_bytes_decode_or_get_a_typed_error() {
            let bytes = prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..512),
                ".{0,200}".prop_map(String::into_bytes),
            ];
            proptest!(config(), |(text in bytes)| {
                match parse_client_frame(&text) {
                    Ok(f) => {
                        prop_assert!(f.reference.as_ref().is_none_or(|r| r.len() <= MAX_REF_BYTES));
                        every_payload(f.data)?;
                    }
                    Err(e) => prop_assert!(
                        matches!(e.code, ErrorCode::InvalidJson | ErrorCode::InvalidPayload),
                        "{:?}", e.code
                    ),
                }
            });
        }

        #[test]
        fn any_json_frame_decodes_or_gets_a_typed_error() {
            let frame = (
                prop_oneof![
                    Just(serde_json::Value::Null),
                    ".{0,20}".prop_map(serde_json::Value::from)
                ],
                json(),
                json(),
            );
            proptest!(config(), |((reference, event, data) in frame)| {
                let mut v = serde_json::json!({"event": event, "data": data});
                if !reference.is_null() {
                    v["ref"] = reference;
                }
                let text = serde_json::to_vec(&v).expect("serialize");
                match parse_client_frame(&text) {
                    Ok(f) => every_payload(f.data)?,
                    Err(e) => prop_assert!(
                        matches!(e.code, ErrorCode::InvalidJson | ErrorCode::InvalidPayload),
                        "{:?}", e.code
                    ),
                }
            });
        }

        #[test]
        fn any_close_payload_gets_an_allowed_answer() {
            proptest!(config(), |(payload in proptest::collection::vec(any::<u8>(), 0..130))| {
                let (code, _) = close::answer(&payload);
                let well_formed = payload.is_empty()
                    || (payload.len() >= 2
                        && close::may_be_sent(u16::from_be_bytes([payload[0], payload[1]]))
                        && std::str::from_utf8(&payload[2..]).is_ok());
                prop_assert_eq!(code == close::NORMAL, well_formed);
                prop_assert!(matches!(code, 1000 | 1002 | 1007));
            });
        }

        /// Any message, cut into any fragments: the check passes every fragment while the
        /// bytes so far can still be UTF-8, fails at the first that cannot, and at the end
        /// agrees with checking the whole message.
        #[test]
        fn fragment_checks_agree_with_checking_the_whole() {
            let message = prop_oneof![
                ".{0,60}".prop_map(String::into_bytes),
                proptest::collection::vec(any::<u8>(), 0..60),
                (".{0,30}", any::<u8>(), 0usize..30).prop_map(|(s, b, at)| {
                    let mut v = s.into_bytes();
                    let at = at.min(v.len());
                    v.insert(at, b);
                    v
                }),
            ];
            let case = (message, proptest::collection::vec(0usize..8, 0..12));
            proptest!(config(), |((bytes, cuts) in case)| {
                let mut pieces = Vec::new();
                let mut rest = bytes.as_slice();
                for c in cuts {
                    let (a, b) = rest.split_at(c.min(rest.len()));
                    pieces.push(a);
                    rest = b;
                }
                pieces.push(rest);
                let mut buf = Vec::new();
                for (i, piece) in pieces.iter().enumerate() {
                    let fin = i + 1 == pieces.len();
                    let checked = buf.len();
                    buf.extend_from_slice(piece);
                    let expected = match std::str::from_utf8(&buf) {
                        Ok(_) => true,
                        Err(e) => e.error_len().is_none() && !fin,
                    };
                    prop_assert_eq!(utf8_fragment_ok(&buf, checked, fin), expected);
                    if !expected {
                        break;
                    }
                }
            });
        }
    }
}
