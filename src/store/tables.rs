//! Table definitions, the schema version, and first-open initialisation.

use super::StoreError;
use crate::model::Id;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

/// Bump when a table's layout changes, and add a migration in `init`.
pub const SCHEMA_VERSION: u64 = 4;

/// Small named values: schema version, node id, last issued id.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (room, message id) → Message JSON. The key order is the history order.
pub const MESSAGES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("messages");
/// (room, seq) → (message id, ChangeKind code): edits and deletes, for catch-up. New messages
/// need no row: their seq is their id, found in MESSAGES.
pub const CHANGES: TableDefinition<(u64, u64), (u64, u8)> = TableDefinition::new("changes");
/// (client_msg_id, sender) → (room, message id): idempotent sends. The client's id leads so
/// that time-ordered ids (UUIDv7, as the SDK makes) append at the end of the tree: keyed by
/// sender first, every message dirtied a leaf of its own somewhere in the table (schema 2).
pub const DEDUP: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("client_ids");
/// Schema 1's (sender, client_msg_id) → (room, message id), migrated into `DEDUP`.
pub(super) const DEDUP_V1: TableDefinition<(&str, &str), (u64, u64)> =
    TableDefinition::new("dedup");
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
/// room → its newest message id, moved once per batch. The hub starts from it: finding each
/// room's newest message in `messages` instead reads that room's last leaf, which for 1,000
/// rooms was 8 MiB of pages left in redb's cache of an idle server.
pub const ROOM_HEADS: TableDefinition<u64, u64> = TableDefinition::new("room_heads");

pub const META_SCHEMA: &str = "schema_version";
pub const META_NODE: &str = "node_id";
pub const META_LAST_ID: &str = "last_id";
/// Sequence number and offset of the next write-ahead log record (see `wal.rs`).
pub const META_WAL_SEQ: &str = "wal_next_seq";
pub const META_WAL_POS: &str = "wal_next_pos";

/// Table numbers in write-ahead log records. Never renumber one: a log written by one build
/// is replayed by the next. A schema change must replay the log before it migrates.
pub mod wal_table {
    pub const META: u8 = 1;
    pub const MESSAGES: u8 = 2;
    pub const DEDUP: u8 = 3;
    pub const CHANGES: u8 = 4;
    pub const ROOMS: u8 = 5;
    pub const MEMBERS: u8 = 6;
    pub const DMS: u8 = 7;
    pub const ACCOUNTS: u8 = 8;
    pub const USERS: u8 = 9;
    pub const UPLOADS: u8 = 10;
    pub const SETTINGS: u8 = 11;
    pub const INVITES: u8 = 12;
    pub const BLOBS: u8 = 13;
    pub const SHARES: u8 = 14;
    pub const ROOM_HEADS: u8 = 15;
}

/// Creates missing tables, checks the schema version, settles the node id, and returns it.
pub fn init(db: &Database, configured_node: Option<u16>) -> Result<u16, StoreError> {
    let txn = db.begin_write()?;
    let node = {
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
        txn.open_table(ROOM_HEADS)?;
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
            Some(1) => {
                let moved = migrate_dedup_v1(&txn)?;
                // Schema 2 → 3 comes after the log's replay: see `migrate::migrate_after_replay`.
                meta.insert(META_SCHEMA, 2)?;
                tracing::info!(entries = moved, "storage schema 1 -> 2: send ids re-keyed");
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
        if meta.get(META_WAL_SEQ)?.is_none() {
            // A random start, so that a log left by some other database never lines up
            // with this one's.
            meta.insert(META_WAL_SEQ, rand::random::<u64>() >> 1 | 1)?;
            meta.insert(META_WAL_POS, 0)?;
        }
        node
    };
    txn.commit()?;
    Ok(node)
}

/// Stores where the write-ahead log's next record goes, in `txn`.
pub fn set_log_position(
    txn: &redb::WriteTransaction,
    seq: u64,
    pos: u64,
) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META)?;
    meta.insert(META_WAL_SEQ, seq)?;
    meta.insert(META_WAL_POS, pos)?;
    Ok(())
}

/// The last issued id and where the write-ahead log's next record goes: (seq, offset).
pub fn positions(db: &Database) -> Result<(Id, u64, u64), StoreError> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let get = |key| -> Result<u64, StoreError> { Ok(meta.get(key)?.map_or(0, |v| v.value())) };
    Ok((
        Id(get(META_LAST_ID)?),
        get(META_WAL_SEQ)?,
        get(META_WAL_POS)?,
    ))
}

/// Applies one replayed change in `txn`. Keys and values are redb's own encodings, as the
/// writer logged them.
pub fn apply_logged(
    txn: &redb::WriteTransaction,
    change: &super::wal::Change<'_>,
) -> Result<(), StoreError> {
    use super::wal::Change;
    fn apply<K: redb::Key + 'static, V: redb::Value + 'static>(
        txn: &redb::WriteTransaction,
        def: TableDefinition<K, V>,
        change: &Change<'_>,
    ) -> Result<(), StoreError> {
        let (key, value) = match *change {
            Change::Insert { key, value, .. } => (key, Some(value)),
            Change::Remove { key, .. } => (key, None),
        };
        // redb's `from_bytes` assumes bytes it wrote itself and panics on others (a short
        // fixed-width key, a string that is not UTF-8). The crc rules out a torn write, so
        // such a record means a bug or an unmigrated layout: refuse it with an error.
        let fits = |width: Option<usize>, bytes: &[u8]| width.is_none_or(|w| w == bytes.len());
        if !fits(K::fixed_width(), key) || !value.is_none_or(|v| fits(V::fixed_width(), v)) {
            return Err(misfit(def.name()));
        }
        let mut t = txn.open_table(def)?;
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (K::from_bytes(key), value.map(|v| V::from_bytes(v)))
        }));
        let Ok((key, value)) = decoded else {
            return Err(misfit(def.name()));
        };
        match value {
            Some(value) => {
                t.insert(key, value)?;
            }
            None => {
                t.remove(key)?;
            }
        }
        Ok(())
    }
    fn misfit(table: &str) -> StoreError {
        StoreError::Corrupt {
            table: "write-ahead log",
            message: format!("a record's key or value does not fit table {table}"),
        }
    }
    let table = match *change {
        Change::Insert { table, .. } | Change::Remove { table, .. } => table,
    };
    match table {
        wal_table::META => apply(txn, META, change),
        wal_table::MESSAGES => apply(txn, MESSAGES, change),
        wal_table::DEDUP => apply(txn, DEDUP, change),
        wal_table::CHANGES => apply(txn, CHANGES, change),
        wal_table::ROOMS => apply(txn, ROOMS, change),
        wal_table::MEMBERS => apply(txn, MEMBERS, change),
        wal_table::DMS => apply(txn, DMS, change),
        wal_table::ACCOUNTS => apply(txn, ACCOUNTS, change),
        wal_table::USERS => apply(txn, USERS, change),
        wal_table::UPLOADS => apply(txn, UPLOADS, change),
        wal_table::SETTINGS => apply(txn, SETTINGS, change),
        wal_table::INVITES => apply(txn, INVITES, change),
        wal_table::BLOBS => apply(txn, BLOBS, change),
        wal_table::SHARES => apply(txn, SHARES, change),
        wal_table::ROOM_HEADS => apply(txn, ROOM_HEADS, change),
        other => Err(StoreError::Corrupt {
            table: "write-ahead log",
            message: format!("unknown table number {other}"),
        }),
    }
}

/// Schema 1 → 2: moves every idempotency entry from (sender, client_msg_id) to
/// (client_msg_id, sender), in the caller's transaction. Returns how many moved.
fn migrate_dedup_v1(txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
    let mut moved = 0u64;
    {
        let old = txn.open_table(DEDUP_V1)?;
        let mut new = txn.open_table(DEDUP)?;
        for entry in old.iter()? {
            let (k, v) = entry?;
            let (sender, client_msg_id) = k.value();
            new.insert((client_msg_id, sender), v.value())?;
            moved += 1;
        }
    }
    txn.delete_table(DEDUP_V1)?;
    Ok(moved)
}
