//! Schema 3 → 4: host applications' users move into their own id space, and every member
//! becomes a known user (issue 24, point 1).
//!
//! Before schema 4 a host application's `sub` and a built-in username shared one id space,
//! so registering an account could take over a token user. Since then a host application's
//! users are `<namespace>:<sub>`; these functions bring an older database along, inside the
//! caller's transaction.

use super::tables::{
    ACCOUNTS, DEDUP, DMS, INVITES, MEMBERS, MESSAGES, ROOMS, SETTINGS, SETTINGS_KEY, UPLOADS, USERS,
};
use super::{StoreError, decode, encode};
use crate::model::{
    Invite, Member, Message, Room, ServerSettings, Upload, User, UserId, is_builtin_user,
    namespaced_user,
};
use redb::{ReadableTable, WriteTransaction};
use std::collections::HashSet;
use std::ops::Bound;

/// Rows read per step when a table is rewritten while it is walked.
const CHUNK: usize = 4096;

/// Renames every user that is not a built-in account (they came from a host application's
/// tokens) to `<ns>:<id>`, in every table that names users. Returns how many users moved.
pub fn rename_host_users(txn: &WriteTransaction, ns: &str) -> Result<u64, StoreError> {
    let accounts: HashSet<String> = {
        let t = txn.open_table(ACCOUNTS)?;
        let mut set = HashSet::new();
        for row in t.iter()? {
            set.insert(row?.0.value().to_owned());
        }
        set
    };
    let moves = |id: &str| is_builtin_user(id) && !accounts.contains(id);
    let rename = |id: &UserId| -> UserId {
        if moves(id) {
            namespaced_user(ns, id)
        } else {
            id.clone()
        }
    };
    let mut renamed: HashSet<String> = HashSet::new();

    {
        let mut t = txn.open_table(USERS)?;
        let mut rows = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            if moves(k.value()) {
                rows.push((k.value().to_owned(), decode::<User>("users", v.value())?));
            }
        }
        for (old, mut user) in rows {
            t.remove(old.as_str())?;
            user.id = rename(&user.id);
            t.insert(&*user.id, encode(&user).as_slice())?;
            renamed.insert(old);
        }
    }
    {
        let mut t = txn.open_table(MEMBERS)?;
        let mut rows = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let (room, user) = k.value();
            if moves(user) {
                rows.push((
                    room,
                    user.to_owned(),
                    decode::<Member>("members", v.value())?,
                ));
            }
        }
        for (room, old, mut m) in rows {
            t.remove((room, old.as_str()))?;
            m.user_id = rename(&m.user_id);
            t.insert((room, &*m.user_id), encode(&m).as_slice())?;
            renamed.insert(old);
        }
    }
    {
        let mut t = txn.open_table(DMS)?;
        let mut rows = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let (a, b) = k.value();
            if moves(a) || moves(b) {
                rows.push((a.to_owned(), b.to_owned(), v.value()));
            }
        }
        for (a, b, room) in rows {
            t.remove((a.as_str(), b.as_str()))?;
            let (a2, b2) = (rename(&UserId::from(a)), rename(&UserId::from(b)));
            let (lo, hi) = if a2 <= b2 { (a2, b2) } else { (b2, a2) };
            t.insert((&*lo, &*hi), room)?;
        }
    }
    rename_in_records::<Room>(txn, ROOMS, "rooms", &moves, &rename, |r| &mut r.created_by)?;
    for uploader in rename_in_records::<Upload>(txn, UPLOADS, "uploads", &moves, &rename, |u| {
        &mut u.uploader_id
    })? {
        renamed.insert(uploader);
    }
    {
        let mut t = txn.open_table(INVITES)?;
        let mut rows = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let invite: Invite = decode("invites", v.value())?;
            if moves(&invite.created_by) {
                rows.push((k.value().to_owned(), invite));
            }
        }
        for (code, mut invite) in rows {
            invite.created_by = rename(&invite.created_by);
            t.insert(code.as_str(), encode(&invite).as_slice())?;
        }
    }
    {
        let mut t = txn.open_table(SETTINGS)?;
        let settings: Option<ServerSettings> = match t.get(SETTINGS_KEY)? {
            Some(v) => Some(decode("settings", v.value())?),
            None => None,
        };
        if let Some(mut s) = settings
            && s.admins.iter().any(|a| moves(a))
        {
            s.admins = s.admins.iter().map(rename).collect();
            t.insert(SETTINGS_KEY, encode(&s).as_slice())?;
        }
    }
    // The two big tables are rewritten a chunk at a time: a walk cannot write the table it
    // walks, and collecting every row first would hold the whole history in memory.
    {
        let mut t = txn.open_table(MESSAGES)?;
        let mut after: Option<(u64, u64)> = None;
        loop {
            let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
            let mut rows = Vec::new();
            let mut read = 0;
            for row in t.range::<(u64, u64)>((lower, Bound::Unbounded))? {
                let (k, v) = row?;
                read += 1;
                after = Some(k.value());
                let m: Message = decode("messages", v.value())?;
                if moves(&m.sender_id) {
                    rows.push((k.value(), m));
                }
                if read == CHUNK {
                    break;
                }
            }
            for (key, mut m) in rows {
                renamed.insert(m.sender_id.to_string());
                m.sender_id = rename(&m.sender_id);
                t.insert(key, encode(&m).as_slice())?;
            }
            if read < CHUNK {
                break;
            }
        }
    }
    {
        let mut t = txn.open_table(DEDUP)?;
        let mut after: Option<(String, String)> = None;
        loop {
            let mut rows = Vec::new();
            let mut read = 0;
            {
                let lower = match &after {
                    Some((c, s)) => Bound::Excluded((c.as_str(), s.as_str())),
                    None => Bound::Unbounded,
                };
                for row in t.range::<(&str, &str)>((lower, Bound::Unbounded))? {
                    let (k, v) = row?;
                    read += 1;
                    let (client_id, sender) = k.value();
                    after = Some((client_id.to_owned(), sender.to_owned()));
                    if moves(sender) {
                        rows.push((client_id.to_owned(), sender.to_owned(), v.value()));
                    }
                    if read == CHUNK {
                        break;
                    }
                }
            }
            for (client_id, sender, v) in rows {
                t.remove((client_id.as_str(), sender.as_str()))?;
                let new = namespaced_user(ns, &sender);
                t.insert((client_id.as_str(), &*new), v)?;
            }
            if read < CHUNK {
                break;
            }
        }
    }
    Ok(renamed.len() as u64)
}

/// Renames the one user field `field` picks in each record of a table of JSON records keyed by
/// id; returns the old ids it renamed.
fn rename_in_records<T: serde::Serialize + serde::de::DeserializeOwned>(
    txn: &WriteTransaction,
    def: redb::TableDefinition<u64, &[u8]>,
    name: &'static str,
    moves: &dyn Fn(&str) -> bool,
    rename: &dyn Fn(&UserId) -> UserId,
    field: fn(&mut T) -> &mut UserId,
) -> Result<Vec<String>, StoreError> {
    let mut t = txn.open_table(def)?;
    let mut rows = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        let mut record: T = decode(name, v.value())?;
        if moves(field(&mut record)) {
            rows.push((k.value(), record));
        }
    }
    let mut old = Vec::with_capacity(rows.len());
    for (id, mut record) in rows {
        let user = field(&mut record);
        old.push(user.to_string());
        *user = rename(user);
        t.insert(id, encode(&record).as_slice())?;
    }
    Ok(old)
}

/// Records every room member and uploader without a user record as a known user (named by
/// their id until they connect), so registration refuses their name. Returns how many.
pub fn reserve_known_users(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let mut seen: HashSet<String> = HashSet::new();
    {
        let t = txn.open_table(MEMBERS)?;
        for row in t.iter()? {
            seen.insert(row?.0.value().1.to_owned());
        }
        let t = txn.open_table(UPLOADS)?;
        for row in t.iter()? {
            let upload: Upload = decode("uploads", row?.1.value())?;
            seen.insert(upload.uploader_id.to_string());
        }
    }
    let mut users = txn.open_table(USERS)?;
    let mut reserved = 0;
    for id in seen {
        if users.get(id.as_str())?.is_none() {
            let user = User::new(UserId::from(id.as_str()), id.clone());
            users.insert(id.as_str(), encode(&user).as_slice())?;
            reserved += 1;
        }
    }
    Ok(reserved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Account, Id, MessageStatus, MessageType, Role, RoomKind, Visibility};
    use crate::store::migrate::migrate_after_replay;
    use crate::store::tables::{META, META_SCHEMA, init};
    use redb::{Database, ReadableDatabase, ReadableTableMetadata};

    fn message(room: u64, id: u64, sender: &str) -> Message {
        Message {
            id: Id(id),
            room_id: Id(room),
            sender_id: UserId::from(sender),
            client_msg_id: format!("c{id}"),
            kind: MessageType::Text,
            content: "hi".into(),
            status: MessageStatus::Sent,
            created_at: 1,
            edited_at: None,
            deleted_at: None,
            file: None,
        }
    }

    /// A schema 3 database where `ana` is a built-in account and `42` and `bob` came from a
    /// host application's tokens (`bob` only invited, `42` in a DM with ana).
    fn schema_3(db: &Database, messages: u64) {
        init(db, Some(1)).expect("init");
        let txn = db.begin_write().expect("txn");
        {
            txn.open_table(META)
                .expect("meta")
                .insert(META_SCHEMA, 3)
                .expect("schema 3");
            let account = Account {
                user_id: UserId::from("ana"),
                display_name: "Ana".into(),
                password_hash: "x".into(),
                created_at: 1,
            };
            let mut accounts = txn.open_table(ACCOUNTS).expect("accounts");
            accounts
                .insert("ana", encode(&account).as_slice())
                .expect("ana");
            let mut users = txn.open_table(USERS).expect("users");
            for id in ["ana", "42"] {
                let u = User::new(UserId::from(id), id.to_uppercase());
                users.insert(id, encode(&u).as_slice()).expect("user");
            }
            let mut rooms = txn.open_table(ROOMS).expect("rooms");
            let room = Room {
                id: Id(10),
                name: "general".into(),
                topic: String::new(),
                visibility: Visibility::Private,
                kind: RoomKind::Group,
                created_by: UserId::from("42"),
                created_at: 1,
            };
            rooms.insert(10, encode(&room).as_slice()).expect("room");
            let mut members = txn.open_table(MEMBERS).expect("members");
            for id in ["ana", "42", "bob"] {
                let m = Member::new(UserId::from(id), Role::Member, 1);
                members
                    .insert((10, id), encode(&m).as_slice())
                    .expect("member");
                members
                    .insert((11, id), encode(&m).as_slice())
                    .expect("member");
            }
            txn.open_table(DMS)
                .expect("dms")
                .insert(("42", "ana"), 11)
                .expect("dm");
            let mut msgs = txn.open_table(MESSAGES).expect("messages");
            let mut dedup = txn.open_table(DEDUP).expect("dedup");
            for i in 1..=messages {
                let sender = if i % 2 == 0 { "ana" } else { "42" };
                let m = message(10, i, sender);
                msgs.insert((10, i), encode(&m).as_slice())
                    .expect("message");
                dedup
                    .insert((m.client_msg_id.as_str(), sender), (10, i))
                    .expect("dedup");
            }
        }
        txn.commit().expect("commit");
    }

    /// Issue 24, point 1: an older database's host users move into the host namespace in
    /// every table (across more rows than one rewrite chunk), accounts stay, and every member
    /// becomes a known user.
    #[test]
    fn host_users_of_an_older_database_move_into_their_namespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::create(dir.path().join("v3.redb")).expect("db");
        let n = 2 * CHUNK as u64 + 7;
        schema_3(&db, n);
        assert_eq!(migrate_after_replay(&db, Some("app")).expect("migrate"), 2);

        let txn = db.begin_read().expect("read");
        let users = txn.open_table(USERS).expect("users");
        let user = |id: &str| -> Option<User> {
            users
                .get(id)
                .expect("get")
                .map(|v| decode("users", v.value()).expect("user"))
        };
        assert_eq!(user("app:42").expect("renamed").name, "42", "name kept");
        assert_eq!(&*user("app:42").expect("renamed").id, "app:42");
        assert!(user("42").is_none());
        assert!(user("ana").is_some(), "accounts keep their id");
        assert!(user("app:bob").is_some(), "an invited member is now known");
        let members = txn.open_table(MEMBERS).expect("members");
        for room in [10, 11] {
            for id in ["ana", "app:42", "app:bob"] {
                let m: Member = decode(
                    "members",
                    members
                        .get((room, id))
                        .expect("get")
                        .expect("member")
                        .value(),
                )
                .expect("member");
                assert_eq!(&*m.user_id, id);
            }
            assert!(members.get((room, "42")).expect("get").is_none());
        }
        let dms = txn.open_table(DMS).expect("dms");
        assert_eq!(
            dms.get(("ana", "app:42")).expect("get").map(|v| v.value()),
            Some(11)
        );
        assert_eq!(dms.len().expect("len"), 1);
        let rooms = txn.open_table(ROOMS).expect("rooms");
        let room: Room =
            decode("rooms", rooms.get(10).expect("get").expect("room").value()).expect("room");
        assert_eq!(&*room.created_by, "app:42");
        let msgs = txn.open_table(MESSAGES).expect("messages");
        let dedup = txn.open_table(DEDUP).expect("dedup");
        for i in 1..=n {
            let m: Message = decode(
                "messages",
                msgs.get((10, i)).expect("get").expect("m").value(),
            )
            .expect("message");
            let want = if i % 2 == 0 { "ana" } else { "app:42" };
            assert_eq!(&*m.sender_id, want, "message {i}");
            assert_eq!(
                dedup
                    .get((m.client_msg_id.as_str(), want))
                    .expect("get")
                    .map(|v| v.value()),
                Some((10, i)),
                "idempotency entry of message {i}"
            );
        }
        assert_eq!(dedup.len().expect("len"), n);
        drop((users, members, dms, rooms, msgs, dedup, txn));
        assert_eq!(
            migrate_after_replay(&db, Some("app")).expect("again"),
            0,
            "a second open moves nothing"
        );
    }

    /// Without a host key configured, nobody is renamed (such users were minted with the
    /// server's own key), but members still become known users.
    #[test]
    fn without_a_host_key_users_keep_their_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::create(dir.path().join("v3.redb")).expect("db");
        schema_3(&db, 3);
        assert_eq!(migrate_after_replay(&db, None).expect("migrate"), 0);
        let txn = db.begin_read().expect("read");
        let users = txn.open_table(USERS).expect("users");
        for id in ["ana", "42", "bob"] {
            assert!(users.get(id).expect("get").is_some(), "{id} is known");
        }
        let msgs = txn.open_table(MESSAGES).expect("messages");
        let m: Message = decode(
            "messages",
            msgs.get((10, 1)).expect("get").expect("m").value(),
        )
        .expect("message");
        assert_eq!(&*m.sender_id, "42");
    }
}
