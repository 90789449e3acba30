//! Table definitions, the schema version, and first-open initialisation.

use super::StoreError;
use crate::model::Id;
use redb::{Database, ReadableTable, TableDefinition};

/// Bump when a table's layout changes, and add a migration in `init`.
pub const SCHEMA_VERSION: u64 = 1;

/// Small named values: schema version, node id, last issued id.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (room, message id) → Message JSON. The key order is the history order.
pub const MESSAGES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("messages");
/// (room, seq) → (message id, ChangeKind code): edits and deletes, for catch-up. New messages
/// need no row: their seq is their id, found in MESSAGES.
pub const CHANGES: TableDefinition<(u64, u64), (u64, u8)> = TableDefinition::new("changes");
/// (sender, client_msg_id) → (room, message id): idempotent sends.
pub const DEDUP: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("dedup");
/// room id → Room JSON.
pub const ROOMS: TableDefinition<u64, &[u8]> = TableDefinition::new("rooms");
/// (room, user) → Member JSON.
pub const MEMBERS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("members");
/// (lower user, higher user) → DM room id.
pub const DMS: TableDefinition<(&str, &str), u64> = TableDefinition::new("dms");
/// username → Account JSON.
pub const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
/// user id → User JSON (display name).
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// "server" → ServerSettings JSON.
pub const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");
/// invite code → Invite JSON.
pub const INVITES: TableDefinition<&str, &[u8]> = TableDefinition::new("invites");
pub const SETTINGS_KEY: &str = "server";
/// upload id → Upload JSON.
pub const UPLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("uploads");
/// SHA-256 (hex) → Blob JSON: the stored bytes, their reference count and thumbnail.
pub const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
/// (upload, room, message) → (): which live messages share an upload.
pub const SHARES: TableDefinition<(u64, u64, u64), ()> = TableDefinition::new("shares");

pub const META_SCHEMA: &str = "schema_version";
pub const META_NODE: &str = "node_id";
pub const META_LAST_ID: &str = "last_id";

/// Creates missing tables, checks the schema version, and returns (node id, last issued id).
pub fn init(db: &Database, configured_node: Option<u16>) -> Result<(u16, Id), StoreError> {
    let txn = db.begin_write()?;
    let (node, last) = {
        let mut meta = txn.open_table(META)?;
        txn.open_table(MESSAGES)?;
        txn.open_table(DEDUP)?;
        txn.open_table(CHANGES)?;
        txn.open_table(ROOMS)?;
        txn.open_table(MEMBERS)?;
        txn.open_table(DMS)?;
        txn.open_table(ACCOUNTS)?;
        txn.open_table(USERS)?;
        txn.open_table(UPLOADS)?;
        txn.open_table(SETTINGS)?;
        txn.open_table(INVITES)?;
        txn.open_table(BLOBS)?;
        txn.open_table(SHARES)?;
        let found = meta.get(META_SCHEMA)?.map(|v| v.value());
        match found {
            None => {
                meta.insert(META_SCHEMA, SCHEMA_VERSION)?;
            }
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::SchemaTooNew {
                    found: v,
                    supported: SCHEMA_VERSION,
                });
            }
            Some(_) => {}
        }
        let stored_node = meta.get(META_NODE)?.map(|v| v.value() as u16);
        let node = match (configured_node, stored_node) {
            (Some(n), _) => n,
            (None, Some(n)) => n,
            (None, None) => rand::random::<u16>() & crate::model::MAX_NODE_ID,
        };
        meta.insert(META_NODE, u64::from(node))?;
        let last = Id(meta.get(META_LAST_ID)?.map(|v| v.value()).unwrap_or(0));
        (node, last)
    };
    txn.commit()?;
    Ok((node, last))
}
