//! Typed payloads of client requests, shared by the WebSocket and REST transports.

use crate::model::{Id, Registration, Visibility};
use serde::Deserialize;

/// Every request event a client may send.
pub const REQUEST_EVENTS: [&str; 20] = [
    "send_message",
    "edit_message",
    "delete_message",
    "history",
    "create_room",
    "list_rooms",
    "list_public_rooms",
    "join_room",
    "invite",
    "leave_room",
    "list_members",
    "open_dm",
    "ping",
    "sync",
    "mark_delivered",
    "mark_read",
    "message_receipts",
    "typing",
    "set_settings",
    "search",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    pub room_id: Id,
    pub client_msg_id: String,
    #[serde(rename = "type", default = "default_type")]
    pub kind: String,
    #[serde(default)]
    pub content: String,
    /// An upload to share (types `file` and `image`).
    #[serde(default)]
    pub file_id: Option<Id>,
}

fn default_type() -> String {
    "text".to_owned()
}

/// The REST form of `send_message`: the room comes from the path.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    pub client_msg_id: String,
    #[serde(rename = "type", default = "default_type")]
    pub kind: String,
    #[serde(default)]
    pub content: String,
    /// An upload to share (types `file` and `image`).
    #[serde(default)]
    pub file_id: Option<Id>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditMessage {
    pub room_id: Id,
    pub message_id: Id,
    pub content: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditBody {
    pub content: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageRef {
    pub room_id: Id,
    pub message_id: Id,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct History {
    pub room_id: Id,
    #[serde(default)]
    pub before: Option<Id>,
    #[serde(default)]
    pub after: Option<Id>,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRoom {
    pub name: String,
    #[serde(default)]
    pub topic: String,
    #[serde(default)]
    pub visibility: Visibility,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomRef {
    pub room_id: Id,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invite {
    pub room_id: Id,
    pub user_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRef {
    pub user_id: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// An invite code, needed while registration is invite-only.
    #[serde(default)]
    pub invite: Option<String>,
}

/// First-run setup: the administrator's account and the first room.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setup {
    pub setup_token: String,
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub room_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettingsBody {
    pub registration: Registration,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NewInvite {
    #[serde(default)]
    pub max_uses: Option<u32>,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sync {
    /// Room id → the last `seq` seen in it.
    pub rooms: std::collections::BTreeMap<Id, Id>,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Typing {
    pub room_id: Id,
    pub state: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub private_receipts: Option<bool>,
}

/// A search: the WebSocket `search` data, and `GET /api/search` (whose query parameters
/// `room` and `sender` fill `room_id` and `sender_id`).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    pub q: String,
    #[serde(default)]
    pub room_id: Option<Id>,
    #[serde(default)]
    pub sender_id: Option<String>,
    #[serde(default)]
    pub from: Option<u64>,
    #[serde(default)]
    pub to: Option<u64>,
    #[serde(default)]
    pub has_file: Option<bool>,
    #[serde(default)]
    pub sort: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
    #[serde(default)]
    pub cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadBody {
    pub message_id: Id,
}
