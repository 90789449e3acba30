//! Plain data shared by every layer: ids, users, rooms, members, messages. No I/O here.

mod ids;

pub use ids::{ID_EPOCH_MS, Id, IdGenerator, MAX_NODE_ID};

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A user id. Built-in accounts (and names the server's own key vouches for) are bare:
/// `alice`. A host application's users are `<namespace>:<sub>`, the namespace being the
/// one of the key that verified the token (`app:42`). Usernames never contain `:`, so no
/// source can name a user of another. Shared, cheap to clone.
pub type UserId = Arc<str>;

/// Separates a host application's namespace from its `sub` in a user id.
pub const NAMESPACE_SEPARATOR: char = ':';

/// A key namespace: 1–32 characters of `a-z 0-9 _ . -`.
pub fn valid_namespace(ns: &str) -> bool {
    (1..=32).contains(&ns.len())
        && ns
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// The id of `sub` as vouched for by a key of namespace `ns`.
pub fn namespaced_user(ns: &str, sub: &str) -> UserId {
    UserId::from(format!("{ns}{NAMESPACE_SEPARATOR}{sub}"))
}

/// Whether `id` is in the built-in namespace (an account or a name the server's key minted).
pub fn is_builtin_user(id: &str) -> bool {
    !id.contains(NAMESPACE_SEPARATOR)
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What a message is: user text, a shared file, an image, or a server notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    Text,
    File,
    Image,
    System,
}

impl MessageType {
    /// Parses a client-supplied type; `system` is reserved to the server.
    pub fn from_client(s: &str) -> Option<Self> {
        match s {
            "text" => Some(Self::Text),
            "file" => Some(Self::File),
            "image" => Some(Self::Image),
            _ => None,
        }
    }
}

/// Lifecycle of a message as seen by its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    Sent,
    Delivered,
    Read,
}

/// One chat message, as stored and as sent on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: Id,
    pub room_id: Id,
    pub sender_id: UserId,
    pub client_msg_id: String,
    #[serde(rename = "type")]
    pub kind: MessageType,
    pub content: String,
    pub status: MessageStatus,
    pub created_at: u64,
    pub edited_at: Option<u64>,
    pub deleted_at: Option<u64>,
    /// The shared upload, on `file` and `image` messages (removed when the message is deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileRef>,
}

/// The types served inline and thumbnailed: decoders we trust, formats browsers render safely.
pub const THUMBNAIL_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

/// What a message says about the upload it shares: enough to render it without another call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRef {
    pub id: Id,
    pub name: String,
    pub size: u64,
    pub mime: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub thumbnail: Option<Dimensions>,
    pub url: String,
    pub thumbnail_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dimensions {
    pub width: u32,
    pub height: u32,
}

/// Where a blob's thumbnail stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThumbState {
    /// Queued or being made.
    Pending,
    Ready,
    /// Decoding failed or passed the decoder limits.
    Failed,
    /// Not an image type we thumbnail.
    None,
}

/// Stored bytes, shared by every upload of the same content (named by their SHA-256).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Blob {
    pub sha256: String,
    pub size: u64,
    pub mime: String,
    /// Uploads referring to these bytes; at zero the bytes leave the disk.
    pub refs: u64,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub thumb_state: ThumbState,
    pub thumb: Option<Dimensions>,
    /// Bytes of the thumbnail file on disk, if any.
    #[serde(default)]
    pub thumb_bytes: u64,
    /// `image/jpeg` or `image/png`.
    #[serde(default)]
    pub thumb_mime: Option<String>,
}

/// One upload: a user's named reference to a blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upload {
    pub id: Id,
    pub sha256: String,
    pub name: String,
    pub uploader_id: UserId,
    pub created_at: u64,
    /// Set when the last message sharing it was deleted: hidden from everyone from then on.
    #[serde(default)]
    pub hidden_at: Option<u64>,
}

/// An upload as clients see it (`POST /api/files`, `GET /api/files/{id}`).
#[derive(Debug, Clone, Serialize)]
pub struct UploadView {
    pub id: Id,
    pub name: String,
    pub size: u64,
    pub mime: String,
    pub sha256: String,
    pub uploader_id: UserId,
    pub created_at: u64,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub thumbnail: ThumbState,
    pub url: String,
    pub thumbnail_url: Option<String>,
}

impl UploadView {
    pub fn new(u: &Upload, b: &Blob) -> Self {
        let url = format!("/files/{}", u.id);
        let thumbnail_url = matches!(b.thumb_state, ThumbState::Ready | ThumbState::Pending)
            .then(|| format!("{url}/thumb"));
        Self {
            id: u.id,
            name: u.name.clone(),
            size: b.size,
            mime: b.mime.clone(),
            sha256: b.sha256.clone(),
            uploader_id: u.uploader_id.clone(),
            created_at: u.created_at,
            width: b.width,
            height: b.height,
            thumbnail: b.thumb_state,
            url,
            thumbnail_url,
        }
    }
}

impl FileRef {
    /// The reference a message stores: the thumbnail only if it is made.
    pub fn new(u: &Upload, b: &Blob) -> Self {
        let url = format!("/files/{}", u.id);
        let thumb = if b.thumb_state == ThumbState::Ready {
            b.thumb
        } else {
            None
        };
        Self {
            id: u.id,
            name: u.name.clone(),
            size: b.size,
            mime: b.mime.clone(),
            width: b.width,
            height: b.height,
            thumbnail: thumb,
            thumbnail_url: thumb.map(|_| format!("{url}/thumb")),
            url,
        }
    }
}

/// Whether anyone may find and join a room, or only invitees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    Public,
    #[default]
    Private,
}

/// A group room or a direct-message room between two users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    Group,
    Dm,
}

/// A room's own record (membership is kept apart, in `Member`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Room {
    pub id: Id,
    pub name: String,
    pub topic: String,
    pub visibility: Visibility,
    pub kind: RoomKind,
    pub created_by: UserId,
    pub created_at: u64,
}

/// A member's standing in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    /// Owners and admins may moderate (edit or delete others' messages).
    pub fn moderates(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

/// One user's membership of one room, with their receipt watermarks in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub user_id: UserId,
    pub role: Role,
    pub joined_at: u64,
    /// Newest message id one of the user's devices acknowledged receiving.
    #[serde(default)]
    pub delivered_up_to: Id,
    /// Newest message id the user has read.
    #[serde(default)]
    pub read_up_to: Id,
    /// When `read_up_to` last moved.
    #[serde(default)]
    pub read_at: Option<u64>,
}

impl Member {
    pub fn new(user_id: UserId, role: Role, joined_at: u64) -> Self {
        Self {
            user_id,
            role,
            joined_at,
            delivered_up_to: Id(0),
            read_up_to: Id(0),
            read_at: None,
        }
    }
}

/// A user as known to this server: from a token's `sub`/`name` or a built-in account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub name: String,
    /// Never show this user's read position to anyone.
    #[serde(default)]
    pub private_receipts: bool,
    /// When the user's last connection closed (ms), if ever.
    #[serde(default)]
    pub last_seen: Option<u64>,
}

impl User {
    pub fn new(id: UserId, name: String) -> Self {
        Self {
            id,
            name,
            private_receipts: false,
            last_seen: None,
        }
    }
}

/// What changed in a room at a `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Message,
    Updated,
    Deleted,
}

impl ChangeKind {
    pub fn code(self) -> u8 {
        match self {
            ChangeKind::Message => 0,
            ChangeKind::Updated => 1,
            ChangeKind::Deleted => 2,
        }
    }

    pub fn from_code(c: u8) -> Self {
        match c {
            1 => ChangeKind::Updated,
            2 => ChangeKind::Deleted,
            _ => ChangeKind::Message,
        }
    }
}

/// One entry of a room's change log, as catch-up returns it: the message as it is now.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub seq: Id,
    pub kind: ChangeKind,
    pub message: Message,
}

/// Who may register a built-in account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Registration {
    Open,
    Invite,
    Closed,
}

/// Server-wide settings kept in the database: the administrators and, once the administrator
/// chose it, the registration mode.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerSettings {
    #[serde(default)]
    pub admins: Vec<UserId>,
    #[serde(default)]
    pub registration: Option<Registration>,
}

/// An invitation to register while registration is invite-only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invite {
    pub code: String,
    pub created_by: UserId,
    pub created_at: u64,
    pub expires_at: u64,
    pub max_uses: u32,
    pub uses: u32,
}

/// A built-in account: a username with an argon2id password hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    pub user_id: UserId,
    pub display_name: String,
    pub password_hash: String,
    pub created_at: u64,
}
