//! The group-commit writer: one thread, one redb transaction per drained batch of writes.

use super::tables::*;
use super::wal::{self, Record, Wal};
use super::{Completion, StoreError, decode, encode, encode_raw};
use crate::metrics::Metrics;
use crate::model::{
    Account, Blob, ChangeKind, Dimensions, FileRef, Id, IdGenerator, Invite, Member, Message,
    MessageStatus, MessageType, Role, Room, RoomKind, ServerSettings, ThumbState, Upload, User,
    UserId, Visibility, now_ms,
};
use redb::{
    AccessGuard, Database, Durability, Key, ReadableTable, Table, TableDefinition, Value,
    WriteTransaction,
};
use serde_json::value::RawValue;
use std::borrow::Borrow;
use std::cell::RefCell;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// A change to durable state. Ids and timestamps are assigned by the writer, so that id order
/// is commit order.
#[derive(Debug)]
pub enum WriteOp {
    /// Stores a message unless (sender, client_msg_id) was seen, in which case the original is
    /// returned as a duplicate.
    AppendMessage {
        room: Id,
        sender: UserId,
        client_msg_id: String,
        kind: MessageType,
        content: String,
        /// An upload to share: it must exist, be visible and belong to the sender.
        file: Option<Id>,
    },
    /// Replaces a live message's content. `moderator` lets someone other than the sender do it.
    EditMessage {
        room: Id,
        id: Id,
        by: UserId,
        moderator: bool,
        content: String,
    },
    /// Empties a live message and stamps `deleted_at`.
    DeleteMessage {
        room: Id,
        id: Id,
        by: UserId,
        moderator: bool,
    },
    CreateRoom {
        name: String,
        topic: String,
        visibility: Visibility,
        owner: UserId,
    },
    AddMember {
        room: Id,
        user: UserId,
        role: Role,
    },
    RemoveMember {
        room: Id,
        user: UserId,
    },
    /// Finds or creates the DM room of two users and makes sure both are members.
    OpenDm {
        a: UserId,
        b: UserId,
    },
    /// Creates an account; with `invite`, only if that invite is valid, using it up by one.
    CreateAccount {
        username: String,
        account: Account,
        invite: Option<String>,
    },
    /// Creates the first administrator's account, unless an administrator exists.
    ClaimAdmin {
        username: String,
        account: Account,
    },
    SaveSettings(ServerSettings),
    SaveInvite(Invite),
    DeleteInvite(String),
    SaveUser(User),
    /// Moves receipt watermarks forward (never back) for members that still exist.
    SaveReceipts(Vec<ReceiptUpdate>),
    /// Writes nothing; completes once every write queued before it has completed, and says
    /// the last id issued before it.
    Barrier,
    /// Records an upload whose bytes are on disk under `blob.sha256`: a new blob (refs 1) or
    /// one more reference to a known one (whose thumbnail state is kept).
    AddUpload {
        sha256: String,
        name: String,
        uploader: UserId,
        /// Boxed: rare, and it would double the size of every queued write.
        blob: Box<Blob>,
    },
    /// Stores the outcome of making a blob's thumbnail.
    SetThumbnail {
        sha256: String,
        width: Option<u32>,
        height: Option<u32>,
        state: ThumbState,
        thumb: Option<Dimensions>,
        thumb_bytes: u64,
        thumb_mime: Option<String>,
    },
    /// Removes the uploads in `ids` that still have no sharing message and are hidden or
    /// created before `created_before`; drops blobs nobody refers to any more.
    CollectUploads {
        ids: Vec<Id>,
        created_before: u64,
    },
}

/// An upload removed by `CollectUploads`, and its blob if that was the last reference.
#[derive(Debug)]
pub struct Collected {
    pub upload: Upload,
    pub size: u64,
    pub blob_removed: Option<Blob>,
}

/// New receipt watermarks for one member of one room.
#[derive(Debug, Clone)]
pub struct ReceiptUpdate {
    pub room: Id,
    pub user: UserId,
    pub delivered_up_to: Id,
    pub read_up_to: Id,
    pub read_at: Option<u64>,
}

/// What a write did.
#[derive(Debug)]
pub enum WriteOutput {
    Appended {
        message: Message,
        /// The message's JSON exactly as stored, which is also its wire form: serialized once,
        /// then copied into the ack and the broadcast as is.
        json: Box<RawValue>,
        duplicate: bool,
    },
    /// An edit or delete, with the `seq` it got in the room's change log.
    MessageChanged {
        message: Message,
        seq: Id,
    },
    RoomCreated {
        room: Room,
        owner: Member,
    },
    /// `added` is false when the user was already a member.
    MemberAdded {
        member: Member,
        added: bool,
    },
    /// `removed` is false when the user was not a member.
    MemberRemoved {
        removed: bool,
    },
    Dm {
        room: Room,
        /// Members that were (re)added by this call.
        added: Vec<Member>,
    },
    AccountCreated,
    /// The settings as they are after the write.
    SettingsSaved(ServerSettings),
    InviteSaved,
    InviteDeleted {
        removed: bool,
    },
    UserSaved,
    ReceiptsSaved,
    /// Every id at or below this was issued by writes that completed before the barrier.
    Barrier {
        last_id: Id,
    },
    UploadAdded {
        upload: Upload,
        blob: Blob,
        /// True when these bytes were not stored before.
        new_blob: bool,
    },
    ThumbnailSaved,
    UploadsCollected(Vec<Collected>),
}

/// Runs on the writer thread after the completions of every batch.
pub type AfterBatch = Box<dyn Fn() + Send + Sync>;

pub(super) enum Job {
    Write(WriteOp, Completion),
    Stop,
}

/// Everything the writer thread owns.
pub(super) struct Writer {
    pub db: Arc<Database>,
    pub rx: Receiver<Job>,
    pub queued: Arc<AtomicUsize>,
    pub ids: IdGenerator,
    pub max_batch: usize,
    pub metrics: Arc<Metrics>,
    pub after_batch: Arc<OnceLock<AfterBatch>>,
    pub wal: Wal,
}

pub(super) fn spawn(writer: Writer) -> Result<std::thread::JoinHandle<()>, StoreError> {
    let handle = std::thread::Builder::new()
        .name("confab-store-writer".into())
        .spawn(move || run(writer))?;
    Ok(handle)
}

fn run(writer: Writer) {
    let Writer {
        db,
        rx,
        queued,
        mut ids,
        max_batch,
        metrics,
        after_batch,
        mut wal,
    } = writer;
    let (db, rx, queued, metrics, after_batch) = (&*db, &rx, &*queued, &*metrics, &*after_batch);
    let mut batch: Vec<(WriteOp, Completion)> = Vec::with_capacity(max_batch);
    let record = RefCell::new(Record::new());
    let mut stopping = false;
    while !stopping {
        let first = next_job(db, rx, &mut wal);
        match first {
            Some(Job::Write(op, done)) => batch.push((op, done)),
            Some(Job::Stop) | None => break,
        }
        // Everything that queued up while the last commit ran joins this one.
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(Job::Write(op, done)) => batch.push((op, done)),
                Ok(Job::Stop) => {
                    stopping = true;
                    break;
                }
                Err(_) => break,
            }
        }
        queued.fetch_sub(batch.len(), Ordering::AcqRel);
        metrics.write_queue_depth.dec_by(batch.len() as i64);
        let started = Instant::now();
        let n = batch.len();
        let (ops, dones): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
        record.borrow_mut().clear();
        let results = commit_batch(db, &mut ids, &mut wal, &record, ops);
        metrics.commit_batch_size.observe(n as f64);
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        for (done, result) in dones.into_iter().zip(results) {
            done(result);
        }
        if let Some(hook) = after_batch.get() {
            hook();
        }
    }
    // Drain what raced with the stop: refuse it rather than leave callers waiting.
    while let Ok(job) = rx.try_recv() {
        if let Job::Write(_, done) = job {
            queued.fetch_sub(1, Ordering::AcqRel);
            metrics.write_queue_depth.dec();
            done(Err(StoreError::Closed));
        }
    }
    // A clean stop leaves nothing for the next start to replay.
    if wal.has_pending() {
        checkpoint(db, &mut wal);
    }
}

/// Waits for the next job. While the log covers commits that redb has not made durable, the
/// wait ends when a checkpoint falls due, and an idle writer checkpoints then, so no write
/// waits for it. `None` when every sender is gone.
fn next_job(db: &Database, rx: &Receiver<Job>, wal: &mut Wal) -> Option<Job> {
    loop {
        if wal.checkpoint_due() {
            match rx.try_recv() {
                Ok(job) => return Some(job),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => checkpoint(db, wal),
            }
        }
        match wal.checkpoint_in() {
            None => return rx.recv().ok(),
            Some(wait) => match rx.recv_timeout(wait) {
                Ok(job) => return Some(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return None,
            },
        }
    }
}

/// Commits everything so far durably and starts the log over. A failure is logged and
/// retried at the next idle moment; until one succeeds the log keeps covering the commits.
fn checkpoint(db: &Database, wal: &mut Wal) {
    let done = (|| -> Result<(), StoreError> {
        let txn = db.begin_write()?;
        set_log_position(&txn, wal.next().0, 0)?;
        txn.commit()?;
        Ok(())
    })();
    match done {
        Ok(()) => wal.checkpointed(),
        Err(e) => {
            wal.checkpoint_failed();
            tracing::error!(error = %e, "storage checkpoint failed; retrying in a second");
        }
    }
}

/// Replays the log's records after the database's last durable commit (what a crash left
/// only in the log) in one durable transaction, and starts the log over. Returns how many
/// batches it replayed.
pub(super) fn replay(db: &Database, wal: &mut Wal) -> Result<u64, StoreError> {
    let (mut seq, mut pos) = wal.next();
    let txn = db.begin_write()?;
    let mut batches = 0u64;
    while let Some((payload, next)) = wal.read(seq, pos)? {
        let changes = wal::changes(&payload).ok_or_else(|| StoreError::Corrupt {
            table: "write-ahead log",
            message: format!("record {seq} passes its checksum but does not parse"),
        })?;
        for change in &changes {
            apply_logged(&txn, change)?;
        }
        seq += 1;
        pos = next;
        batches += 1;
    }
    if pos == 0 {
        // Nothing to replay and the log already starts over: no commit needed.
        txn.abort()?;
        return Ok(0);
    }
    set_log_position(&txn, seq, 0)?;
    txn.commit()?;
    wal.resume(seq);
    Ok(batches)
}

/// Applies every op in one transaction. A storage failure fails the whole batch (nothing of
/// it is durable); a logical refusal (not found, forbidden, conflict) fails only its op, which
/// checks before it writes, so it leaves nothing behind.
///
/// The batch's changes are logged as they are made; the record is written to the log and
/// on disk before the transaction commits without an fsync of its own. When the log is full
/// (or in doubt after a failure) the transaction commits durably instead: a checkpoint.
fn commit_batch(
    db: &Database,
    ids: &mut IdGenerator,
    wal: &mut Wal,
    log: &RefCell<Record>,
    ops: Vec<WriteOp>,
) -> Vec<Result<WriteOutput, StoreError>> {
    let n = ops.len();
    let fail_all = |e: StoreError| -> Vec<Result<WriteOutput, StoreError>> {
        tracing::error!(error = %e, writes = n, "storage commit failed");
        let msg = e.to_string();
        (0..n)
            .map(|_| Err(StoreError::Io(std::io::Error::other(msg.clone()))))
            .collect()
    };
    let mut txn = match db.begin_write() {
        Ok(t) => t,
        Err(e) => return fail_all(e.into()),
    };
    let results = match apply_all(&txn, ids, ops, log) {
        Ok(r) => r,
        Err(e) => {
            // Ids handed out to the aborted writes are skipped: gaps are harmless.
            let _ = txn.abort();
            return fail_all(e);
        }
    };
    let mut record = log.borrow_mut();
    if record.is_empty() {
        // Nothing changed (reads, refusals, barriers): nothing to make durable.
        let _ = txn.abort();
        return results;
    }
    let logged = match wal.after(&record) {
        Some((next_seq, next_pos)) => {
            let noted = txn
                .set_durability(Durability::None)
                .map_err(StoreError::from)
                .and_then(|()| set_log_position(&txn, next_seq, next_pos));
            if let Err(e) = noted {
                let _ = txn.abort();
                return fail_all(e);
            }
            if let Err(e) = wal.append(&mut record) {
                let _ = txn.abort();
                drop(record);
                // The record may have reached the disk anyway: a checkpoint now moves the log
                // past it, so a crash cannot replay a batch whose writers were told it failed.
                checkpoint(db, wal);
                return fail_all(e.into());
            }
            true
        }
        None => {
            if let Err(e) = set_log_position(&txn, wal.next().0, 0) {
                let _ = txn.abort();
                return fail_all(e);
            }
            false
        }
    };
    drop(record);
    if let Err(e) = txn.commit() {
        if logged {
            // As above: the record is on disk but its batch failed.
            wal.commit_failed();
            checkpoint(db, wal);
        }
        return fail_all(e.into());
    }
    if logged {
        wal.committed();
    } else {
        wal.checkpointed();
    }
    results
}

/// A table whose every change is also encoded into the batch's log record, opened on first
/// use: a batch of messages touches three of the fourteen tables, and redb charges every open
/// table a lookup at open and a root check at commit (a fifth of the writer's time per batch).
/// Reads go through `get` and `range`; writes only through `insert` and `remove` here.
struct Logged<'t, 'r, K: Key + 'static, V: Value + 'static> {
    txn: &'t WriteTransaction,
    def: TableDefinition<'static, K, V>,
    table: Option<Table<'t, K, V>>,
    number: u8,
    log: &'r RefCell<Record>,
}

impl<'t, 'r, K: Key + 'static, V: Value + 'static> Logged<'t, 'r, K, V> {
    fn new(
        txn: &'t WriteTransaction,
        def: TableDefinition<'static, K, V>,
        number: u8,
        log: &'r RefCell<Record>,
    ) -> Self {
        Self {
            txn,
            def,
            table: None,
            number,
            log,
        }
    }

    fn table(&mut self) -> Result<&mut Table<'t, K, V>, StoreError> {
        let table = match self.table.take() {
            Some(table) => table,
            None => self.txn.open_table(self.def)?,
        };
        Ok(self.table.insert(table))
    }

    fn get<'k>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
    ) -> Result<Option<AccessGuard<'_, V>>, StoreError> {
        Ok(self.table()?.get(key)?)
    }

    fn range<'k, KR>(
        &mut self,
        range: impl RangeBounds<KR> + 'k,
    ) -> Result<redb::Range<'_, K, V>, StoreError>
    where
        KR: Borrow<K::SelfType<'k>> + 'k,
    {
        Ok(self.table()?.range(range)?)
    }

    fn insert<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<(), StoreError> {
        let (key, value) = (key.borrow(), value.borrow());
        self.log.borrow_mut().insert(
            self.number,
            K::as_bytes(key).as_ref(),
            V::as_bytes(value).as_ref(),
        );
        self.table()?.insert(key, value)?;
        Ok(())
    }

    /// Whether the key was there.
    fn remove<'k>(&mut self, key: impl Borrow<K::SelfType<'k>>) -> Result<bool, StoreError> {
        let key = key.borrow();
        let removed = self.table()?.remove(key)?.is_some();
        if removed {
            self.log
                .borrow_mut()
                .remove(self.number, K::as_bytes(key).as_ref());
        }
        Ok(removed)
    }
}

struct Tables<'t, 'r> {
    meta: Logged<'t, 'r, &'static str, u64>,
    messages: Logged<'t, 'r, (u64, u64), &'static [u8]>,
    dedup: Logged<'t, 'r, (&'static str, &'static str), (u64, u64)>,
    changes: Logged<'t, 'r, (u64, u64), (u64, u8)>,
    rooms: Logged<'t, 'r, u64, &'static [u8]>,
    members: Logged<'t, 'r, (u64, &'static str), &'static [u8]>,
    dms: Logged<'t, 'r, (&'static str, &'static str), u64>,
    accounts: Logged<'t, 'r, &'static str, &'static [u8]>,
    users: Logged<'t, 'r, &'static str, &'static [u8]>,
    uploads: Logged<'t, 'r, u64, &'static [u8]>,
    settings: Logged<'t, 'r, &'static str, &'static [u8]>,
    invites: Logged<'t, 'r, &'static str, &'static [u8]>,
    blobs: Logged<'t, 'r, &'static str, &'static [u8]>,
    shares: Logged<'t, 'r, (u64, u64, u64), ()>,
}

fn apply_all(
    txn: &WriteTransaction,
    ids: &mut IdGenerator,
    ops: Vec<WriteOp>,
    log: &RefCell<Record>,
) -> Result<Vec<Result<WriteOutput, StoreError>>, StoreError> {
    use wal_table as n;
    let mut t = Tables {
        meta: Logged::new(txn, META, n::META, log),
        messages: Logged::new(txn, MESSAGES, n::MESSAGES, log),
        dedup: Logged::new(txn, DEDUP, n::DEDUP, log),
        changes: Logged::new(txn, CHANGES, n::CHANGES, log),
        rooms: Logged::new(txn, ROOMS, n::ROOMS, log),
        members: Logged::new(txn, MEMBERS, n::MEMBERS, log),
        dms: Logged::new(txn, DMS, n::DMS, log),
        accounts: Logged::new(txn, ACCOUNTS, n::ACCOUNTS, log),
        users: Logged::new(txn, USERS, n::USERS, log),
        uploads: Logged::new(txn, UPLOADS, n::UPLOADS, log),
        settings: Logged::new(txn, SETTINGS, n::SETTINGS, log),
        invites: Logged::new(txn, INVITES, n::INVITES, log),
        blobs: Logged::new(txn, BLOBS, n::BLOBS, log),
        shares: Logged::new(txn, SHARES, n::SHARES, log),
    };
    let last_before = ids.last();
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        match apply(&mut t, ids, op) {
            Ok(out) => results.push(Ok(out)),
            Err(e @ (StoreError::NotFound | StoreError::Forbidden | StoreError::Conflict)) => {
                results.push(Err(e))
            }
            Err(e) => return Err(e),
        }
    }
    if ids.last() != last_before {
        t.meta.insert(META_LAST_ID, ids.last().0)?;
    }
    Ok(results)
}

fn live_message(t: &mut Tables<'_, '_>, room: Id, id: Id) -> Result<Message, StoreError> {
    let msg: Message = match t.messages.get((room.0, id.0))? {
        Some(v) => decode("messages", v.value())?,
        None => return Err(StoreError::NotFound),
    };
    if msg.deleted_at.is_some() {
        return Err(StoreError::NotFound);
    }
    Ok(msg)
}

fn upload_and_blob(t: &mut Tables<'_, '_>, id: Id) -> Result<(Upload, Blob), StoreError> {
    let upload: Upload = match t.uploads.get(id.0)? {
        Some(v) => decode("uploads", v.value())?,
        None => return Err(StoreError::NotFound),
    };
    let blob: Blob = match t.blobs.get(upload.sha256.as_str())? {
        Some(v) => decode("blobs", v.value())?,
        None => return Err(StoreError::NotFound),
    };
    Ok((upload, blob))
}

fn read_settings(t: &mut Tables<'_, '_>) -> Result<ServerSettings, StoreError> {
    match t.settings.get(SETTINGS_KEY)? {
        Some(v) => decode("settings", v.value()),
        None => Ok(ServerSettings::default()),
    }
}

fn has_shares(t: &mut Tables<'_, '_>, file: u64) -> Result<bool, StoreError> {
    Ok(t.shares
        .range((file, 0, 0)..=(file, u64::MAX, u64::MAX))?
        .next()
        .is_some())
}

fn new_member(user: UserId, role: Role) -> Member {
    Member::new(user, role, now_ms())
}

fn apply(
    t: &mut Tables<'_, '_>,
    ids: &mut IdGenerator,
    op: WriteOp,
) -> Result<WriteOutput, StoreError> {
    match op {
        WriteOp::AppendMessage {
            room,
            sender,
            client_msg_id,
            kind,
            content,
            file,
        } => {
            if let Some(v) = t.dedup.get((client_msg_id.as_str(), &*sender))? {
                let (r, id) = v.value();
                let original: Message = match t.messages.get((r, id))? {
                    Some(m) => decode("messages", m.value())?,
                    None => return Err(StoreError::NotFound),
                };
                return Ok(WriteOutput::Appended {
                    json: encode_raw(&original)?,
                    message: original,
                    duplicate: true,
                });
            }
            let file = match file {
                Some(fid) => {
                    let (upload, blob) = upload_and_blob(t, fid)?;
                    // Someone else's upload is as unknown as a missing one.
                    if upload.uploader_id != sender || upload.hidden_at.is_some() {
                        return Err(StoreError::NotFound);
                    }
                    Some(FileRef::new(&upload, &blob))
                }
                None => None,
            };
            let now = now_ms();
            let id = ids.next(now);
            if let Some(f) = &file {
                t.shares.insert((f.id.0, room.0, id.0), ())?;
            }
            let message = Message {
                id,
                room_id: room,
                sender_id: sender,
                client_msg_id,
                kind,
                content,
                status: MessageStatus::Sent,
                created_at: id.timestamp_ms(),
                edited_at: None,
                deleted_at: None,
                file,
            };
            let json = encode_raw(&message)?;
            t.messages.insert((room.0, id.0), json.get().as_bytes())?;
            t.dedup.insert(
                (message.client_msg_id.as_str(), &*message.sender_id),
                (room.0, id.0),
            )?;
            Ok(WriteOutput::Appended {
                message,
                json,
                duplicate: false,
            })
        }
        WriteOp::EditMessage {
            room,
            id,
            by,
            moderator,
            content,
        } => {
            let mut msg = live_message(t, room, id)?;
            if msg.sender_id != by && !moderator {
                return Err(StoreError::Forbidden);
            }
            msg.content = content;
            msg.edited_at = Some(now_ms());
            t.messages.insert((room.0, id.0), encode(&msg).as_slice())?;
            let seq = ids.next(now_ms());
            t.changes
                .insert((room.0, seq.0), (id.0, ChangeKind::Updated.code()))?;
            Ok(WriteOutput::MessageChanged { message: msg, seq })
        }
        WriteOp::DeleteMessage {
            room,
            id,
            by,
            moderator,
        } => {
            let mut msg = live_message(t, room, id)?;
            if msg.sender_id != by && !moderator {
                return Err(StoreError::Forbidden);
            }
            msg.content = String::new();
            msg.deleted_at = Some(now_ms());
            if let Some(f) = msg.file.take() {
                t.shares.remove((f.id.0, room.0, id.0))?;
                // The last sharing message gone: the upload is hidden from everyone.
                if !has_shares(t, f.id.0)?
                    && let Ok((mut upload, _)) = upload_and_blob(t, f.id)
                    && upload.hidden_at.is_none()
                {
                    upload.hidden_at = msg.deleted_at;
                    t.uploads.insert(f.id.0, encode(&upload).as_slice())?;
                }
            }
            t.messages.insert((room.0, id.0), encode(&msg).as_slice())?;
            let seq = ids.next(now_ms());
            t.changes
                .insert((room.0, seq.0), (id.0, ChangeKind::Deleted.code()))?;
            Ok(WriteOutput::MessageChanged { message: msg, seq })
        }
        WriteOp::CreateRoom {
            name,
            topic,
            visibility,
            owner,
        } => {
            let now = now_ms();
            let id = ids.next(now);
            let room = Room {
                id,
                name,
                topic,
                visibility,
                kind: RoomKind::Group,
                created_by: owner.clone(),
                created_at: id.timestamp_ms(),
            };
            let member = new_member(owner, Role::Owner);
            t.rooms.insert(id.0, encode(&room).as_slice())?;
            t.members
                .insert((id.0, &*member.user_id), encode(&member).as_slice())?;
            Ok(WriteOutput::RoomCreated {
                room,
                owner: member,
            })
        }
        WriteOp::AddMember { room, user, role } => {
            if t.rooms.get(room.0)?.is_none() {
                return Err(StoreError::NotFound);
            }
            if let Some(v) = t.members.get((room.0, &*user))? {
                return Ok(WriteOutput::MemberAdded {
                    member: decode("members", v.value())?,
                    added: false,
                });
            }
            let member = new_member(user, role);
            t.members
                .insert((room.0, &*member.user_id), encode(&member).as_slice())?;
            Ok(WriteOutput::MemberAdded {
                member,
                added: true,
            })
        }
        WriteOp::RemoveMember { room, user } => {
            let removed = t.members.remove((room.0, &*user))?;
            Ok(WriteOutput::MemberRemoved { removed })
        }
        WriteOp::OpenDm { a, b } => {
            let (lo, hi) = if a <= b {
                (a.clone(), b)
            } else {
                (b, a.clone())
            };
            let existing = t.dms.get((&*lo, &*hi))?.map(|v| v.value());
            let room: Room = match existing {
                Some(id) => match t.rooms.get(id)? {
                    Some(v) => decode("rooms", v.value())?,
                    None => return Err(StoreError::NotFound),
                },
                None => {
                    let id = ids.next(now_ms());
                    let room = Room {
                        id,
                        name: String::new(),
                        topic: String::new(),
                        visibility: Visibility::Private,
                        kind: RoomKind::Dm,
                        created_by: a.clone(),
                        created_at: id.timestamp_ms(),
                    };
                    t.rooms.insert(id.0, encode(&room).as_slice())?;
                    t.dms.insert((&*lo, &*hi), id.0)?;
                    room
                }
            };
            let mut added = Vec::new();
            for user in [lo, hi] {
                if t.members.get((room.id.0, &*user))?.is_none() {
                    let m = new_member(user, Role::Member);
                    t.members
                        .insert((room.id.0, &*m.user_id), encode(&m).as_slice())?;
                    added.push(m);
                }
            }
            Ok(WriteOutput::Dm { room, added })
        }
        WriteOp::CreateAccount {
            username,
            account,
            invite,
        } => {
            if t.accounts.get(username.as_str())?.is_some()
                || t.users.get(username.as_str())?.is_some()
            {
                return Err(StoreError::Conflict);
            }
            if let Some(code) = invite {
                let mut inv: Invite = match t.invites.get(code.as_str())? {
                    Some(v) => decode("invites", v.value())?,
                    None => return Err(StoreError::Forbidden),
                };
                if inv.expires_at <= now_ms() || inv.uses >= inv.max_uses {
                    return Err(StoreError::Forbidden);
                }
                inv.uses += 1;
                t.invites.insert(code.as_str(), encode(&inv).as_slice())?;
            }
            t.accounts
                .insert(username.as_str(), encode(&account).as_slice())?;
            let user = User::new(account.user_id.clone(), account.display_name.clone());
            t.users.insert(&*user.id, encode(&user).as_slice())?;
            Ok(WriteOutput::AccountCreated)
        }
        WriteOp::ClaimAdmin { username, account } => {
            let mut settings = read_settings(t)?;
            if !settings.admins.is_empty()
                || t.accounts.get(username.as_str())?.is_some()
                || t.users.get(username.as_str())?.is_some()
            {
                return Err(StoreError::Conflict);
            }
            t.accounts
                .insert(username.as_str(), encode(&account).as_slice())?;
            let user = User::new(account.user_id.clone(), account.display_name.clone());
            t.users.insert(&*user.id, encode(&user).as_slice())?;
            settings.admins.push(account.user_id);
            t.settings
                .insert(SETTINGS_KEY, encode(&settings).as_slice())?;
            Ok(WriteOutput::SettingsSaved(settings))
        }
        WriteOp::SaveSettings(settings) => {
            t.settings
                .insert(SETTINGS_KEY, encode(&settings).as_slice())?;
            Ok(WriteOutput::SettingsSaved(settings))
        }
        WriteOp::SaveInvite(invite) => {
            t.invites
                .insert(invite.code.as_str(), encode(&invite).as_slice())?;
            Ok(WriteOutput::InviteSaved)
        }
        WriteOp::DeleteInvite(code) => {
            let removed = t.invites.remove(code.as_str())?;
            Ok(WriteOutput::InviteDeleted { removed })
        }
        WriteOp::Barrier => Ok(WriteOutput::Barrier {
            last_id: ids.last(),
        }),
        WriteOp::SaveReceipts(updates) => {
            for u in updates {
                let key = (u.room.0, &*u.user);
                let mut m: Member = match t.members.get(key)? {
                    Some(v) => decode("members", v.value())?,
                    None => continue,
                };
                m.delivered_up_to = m.delivered_up_to.max(u.delivered_up_to);
                if u.read_up_to > m.read_up_to {
                    m.read_up_to = u.read_up_to;
                    m.read_at = u.read_at;
                }
                t.members.insert(key, encode(&m).as_slice())?;
            }
            Ok(WriteOutput::ReceiptsSaved)
        }
        WriteOp::SaveUser(user) => {
            t.users.insert(&*user.id, encode(&user).as_slice())?;
            Ok(WriteOutput::UserSaved)
        }
        WriteOp::AddUpload {
            sha256,
            name,
            uploader,
            blob,
        } => {
            let known: Option<Blob> = match t.blobs.get(sha256.as_str())? {
                Some(v) => Some(decode("blobs", v.value())?),
                None => None,
            };
            let new_blob = known.is_none();
            let mut blob = known.unwrap_or(Blob { refs: 0, ..*blob });
            blob.refs += 1;
            t.blobs.insert(sha256.as_str(), encode(&blob).as_slice())?;
            let id = ids.next(now_ms());
            let upload = Upload {
                id,
                sha256,
                name,
                uploader_id: uploader,
                created_at: id.timestamp_ms(),
                hidden_at: None,
            };
            t.uploads.insert(id.0, encode(&upload).as_slice())?;
            Ok(WriteOutput::UploadAdded {
                upload,
                blob,
                new_blob,
            })
        }
        WriteOp::SetThumbnail {
            sha256,
            width,
            height,
            state,
            thumb,
            thumb_bytes,
            thumb_mime,
        } => {
            let mut blob: Blob = match t.blobs.get(sha256.as_str())? {
                Some(v) => decode("blobs", v.value())?,
                None => return Err(StoreError::NotFound),
            };
            blob.width = width.or(blob.width);
            blob.height = height.or(blob.height);
            blob.thumb_state = state;
            blob.thumb = thumb;
            blob.thumb_bytes = thumb_bytes;
            blob.thumb_mime = thumb_mime;
            t.blobs.insert(sha256.as_str(), encode(&blob).as_slice())?;
            Ok(WriteOutput::ThumbnailSaved)
        }
        WriteOp::CollectUploads {
            ids: candidates,
            created_before,
        } => {
            let mut out = Vec::new();
            for fid in candidates {
                let Ok((upload, mut blob)) = upload_and_blob(t, fid) else {
                    continue;
                };
                let expired = upload.hidden_at.is_some() || upload.created_at < created_before;
                if !expired || has_shares(t, fid.0)? {
                    continue;
                }
                t.uploads.remove(fid.0)?;
                blob.refs = blob.refs.saturating_sub(1);
                let size = blob.size;
                let blob_removed = if blob.refs == 0 {
                    t.blobs.remove(upload.sha256.as_str())?;
                    Some(blob)
                } else {
                    t.blobs
                        .insert(upload.sha256.as_str(), encode(&blob).as_slice())?;
                    None
                };
                out.push(Collected {
                    upload,
                    size,
                    blob_removed,
                });
            }
            Ok(WriteOutput::UploadsCollected(out))
        }
    }
}
