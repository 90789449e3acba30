//! Migrations that run after the write-ahead log has replayed: schema 2 → 3 (`room_heads`)
//! and 3 → 4 (users bound to their source, `id_spaces.rs`). `tables::init` makes the ones
//! that must come before the replay.

use super::StoreError;
use super::tables::{MESSAGES, META, META_SCHEMA, ROOM_HEADS, ROOMS, SCHEMA_VERSION};
use redb::{Database, ReadableDatabase, ReadableTable};

/// The migrations that need what the log holds (a log written by the older build is
/// replayed first, so they see its writes). Schema 2 → 3 fills `room_heads` from `messages`;
/// 3 → 4 separates the id spaces of built-in accounts and host applications (issue 24,
/// point 1): with `host_namespace` set (a host application's keys are configured), every user
/// that is not a built-in account came from its tokens and becomes `<namespace>:<id>`; then
/// every member and uploader is recorded as a known user, so that no registration can take
/// their name. Returns how many users were renamed.
pub fn migrate_after_replay(
    db: &Database,
    host_namespace: Option<&str>,
) -> Result<u64, StoreError> {
    let schema = |db: &Database| -> Result<Option<u64>, StoreError> {
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(META_SCHEMA)?.map(|v| v.value()))
    };
    if schema(db)? == Some(2) {
        let txn = db.begin_write()?;
        let rooms = fill_room_heads(&txn)?;
        txn.open_table(META)?.insert(META_SCHEMA, 3)?;
        txn.commit()?;
        tracing::info!(
            rooms,
            "storage schema 2 -> 3: newest message of each room noted"
        );
    }
    let mut renamed = 0;
    if schema(db)? == Some(3) {
        let txn = db.begin_write()?;
        if let Some(ns) = host_namespace {
            renamed = super::id_spaces::rename_host_users(&txn, ns)?;
        }
        let reserved = super::id_spaces::reserve_known_users(&txn)?;
        txn.open_table(META)?.insert(META_SCHEMA, SCHEMA_VERSION)?;
        txn.commit()?;
        tracing::info!(
            renamed,
            reserved,
            namespace = host_namespace.unwrap_or(""),
            "storage schema 3 -> 4: host application users namespaced, members recorded as users"
        );
    }
    Ok(renamed)
}

/// Notes every room's newest message in `room_heads`, in the caller's transaction. Returns
/// how many rooms have messages.
fn fill_room_heads(txn: &redb::WriteTransaction) -> Result<u64, StoreError> {
    let rooms = txn.open_table(ROOMS)?;
    let messages = txn.open_table(MESSAGES)?;
    let mut heads = txn.open_table(ROOM_HEADS)?;
    let mut filled = 0u64;
    for row in rooms.iter()? {
        let room = row?.0.value();
        let newest = messages
            .range((room, 0)..=(room, u64::MAX))?
            .next_back()
            .transpose()?;
        if let Some((k, _)) = newest {
            heads.insert(room, k.value().1)?;
            filled += 1;
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tables::{DEDUP, DEDUP_V1, META, META_SCHEMA, SCHEMA_VERSION, init};
    use redb::Database;
    use redb::{ReadableDatabase, ReadableTableMetadata};

    #[test]
    fn schema_1_send_ids_are_rekeyed_client_id_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Database::create(dir.path().join("v1.redb")).expect("db");
        {
            let txn = db.begin_write().expect("txn");
            {
                let mut meta = txn.open_table(META).expect("meta");
                meta.insert(META_SCHEMA, 1).expect("schema 1");
                let mut old = txn.open_table(DEDUP_V1).expect("old dedup");
                old.insert(("alice", "c-1"), (7, 70)).expect("entry");
                old.insert(("bob", "c-1"), (8, 80)).expect("entry");
            }
            txn.commit().expect("commit");
        }
        init(&db, Some(1)).expect("init migrates");
        migrate_after_replay(&db, None).expect("then to the current schema");
        let txn = db.begin_read().expect("read");
        let meta = txn.open_table(META).expect("meta");
        assert_eq!(
            meta.get(META_SCHEMA).expect("get").map(|v| v.value()),
            Some(SCHEMA_VERSION)
        );
        let new = txn.open_table(DEDUP).expect("new dedup");
        assert_eq!(
            new.get(("c-1", "alice")).expect("get").map(|v| v.value()),
            Some((7, 70))
        );
        assert_eq!(
            new.get(("c-1", "bob")).expect("get").map(|v| v.value()),
            Some((8, 80))
        );
        assert_eq!(new.len().expect("len"), 2);
        assert!(
            txn.open_table(DEDUP_V1).is_err(),
            "the schema 1 table is gone"
        );
        drop((meta, new, txn));
        // A second open finds the current schema and changes nothing.
        init(&db, Some(1)).expect("init again");
        migrate_after_replay(&db, None).expect("nothing to migrate");
    }
}
