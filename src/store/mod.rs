//! Durable storage on redb: tables, schema version, reads, and the group-commit writer.
//!
//! Every write goes through one writer thread that drains its queue into one transaction per
//! batch, logs it (`wal`), and runs each write's completion in submission order once the
//! batch is durable. Reads run on tokio's blocking pool, on the snapshot published with the
//! last completed batch. Nothing outside this module knows redb.

mod disk;
mod id_spaces;
mod migrate;
mod tables;
pub use tables::SCHEMA_VERSION;
mod wal;
mod writer;

pub use writer::{AfterBatch, Collected, ReceiptUpdate, WriteOp, WriteOutput};

use crate::metrics::Metrics;
use crate::model::{
    Account, Blob, Change, ChangeKind, Id, Invite, Member, Message, Room, ServerSettings, Upload,
    User, UserId,
};
use redb::{Database, ReadTransaction, ReadableTable};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tables::*;

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("not allowed")]
    Forbidden,
    #[error("already exists")]
    Conflict,
    #[error("storage is overloaded")]
    Overloaded,
    #[error("storage is closed")]
    Closed,
    #[error("the disk is too full to store this (storage.min_free_disk_bytes)")]
    DiskFull,
    #[error("{0} is in use by another Confab process (stop the server first)")]
    InUse(PathBuf),
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    #[error("corrupt record in {table}: {message}")]
    Corrupt {
        table: &'static str,
        message: String,
    },
    #[error("database schema version {found} is newer than this binary's {supported}")]
    SchemaTooNew { found: u64, supported: u64 },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.into()) }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// A completion run on the writer thread, in submission order, once the batch holding the
/// write is durable (or failed). It must not block.
pub type Completion = Box<dyn FnOnce(Result<WriteOutput, StoreError>) + Send>;

/// Handle to the database and its writer. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// Taken and dropped by `close`: redb records a clean shutdown only when the `Database` is
    /// dropped. Left open at exit, every start repaired the whole file (1M messages: 0.9 s
    /// and 600 MiB of pages read in).
    db: parking_lot::RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    node_id: u16,
    queue: std::sync::mpsc::Sender<writer::Job>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    closed: AtomicBool,
    writer: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    metrics: Arc<Metrics>,
    after_batch: Arc<std::sync::OnceLock<writer::AfterBatch>>,
    /// Published by the writer as each batch's completions run; taken by `close`.
    view: Arc<writer::ViewCell>,
    /// Set by the writer when it stops after a failed log write and checkpoint.
    stopped: Arc<AtomicBool>,
    disk: Arc<disk::DiskGuard>,
    renamed_users: u64,
    #[cfg(test)]
    log: Arc<wal::LogFile>,
}

impl Drop for Inner {
    /// The log threads keep the writer's queue open, so the writer learns of the last handle
    /// going only from this.
    fn drop(&mut self) {
        let _ = self.queue.send(writer::Job::Stop);
    }
}

/// Most writes waiting for the writer; past this, writes fail fast with `Overloaded`. Counted
/// rather than a `sync_channel`, which would allocate every slot up front (~8 MB).
const QUEUE_CAPACITY: usize = 65_536;

/// How to open the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The configured node id (`None`: the stored one, or one picked at random once).
    pub node: Option<u16>,
    /// Most writes in one batch.
    pub max_batch: usize,
    /// Where a database older than schema 4 moves the users that are not built-in accounts:
    /// the namespace of the configured host application's keys (`None` when none is
    /// configured: such users were minted with the server's own key).
    pub host_namespace: Option<String>,
    /// Writes are refused with `DiskFull` while less than this is free (0: never).
    pub min_free_disk_bytes: u64,
    /// redb's page cache, in bytes (`storage.cache_bytes`).
    pub cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            node: None,
            max_batch: 2048,
            host_namespace: None,
            min_free_disk_bytes: 0,
            cache_bytes: crate::config::DEFAULT_CACHE_BYTES,
        }
    }
}

/// What `Store::open` found on disk: every room with its members, and every known user.
pub struct Snapshot {
    /// Each room, its members, and its newest message id (0 if it has none).
    pub rooms: Vec<(Room, Vec<Member>, Id)>,
    pub users: Vec<User>,
}

impl Store {
    /// Opens (or creates) `<data_dir>/confab.redb`, checks the schema version, settles the node
    /// id (configured, stored, or picked at random once) and starts the writer.
    pub fn open(
        data_dir: &Path,
        configured_node: Option<u16>,
        max_batch: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let options = StoreOptions {
            node: configured_node,
            max_batch,
            ..StoreOptions::default()
        };
        Self::open_with(data_dir, metrics, wal::CHECKPOINT_AGE, &options)
    }

    /// `open` with every option (see `StoreOptions`).
    pub fn open_with_options(
        data_dir: &Path,
        metrics: Arc<Metrics>,
        options: &StoreOptions,
    ) -> Result<Self, StoreError> {
        Self::open_with(data_dir, metrics, wal::CHECKPOINT_AGE, options)
    }

    fn open_with(
        data_dir: &Path,
        metrics: Arc<Metrics>,
        checkpoint_age: std::time::Duration,
        options: &StoreOptions,
    ) -> Result<Self, StoreError> {
        let configured_node = options.node;
        let max_batch = options.max_batch;
        let host_namespace = options.host_namespace.as_deref();
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join("confab.redb");
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(path.clone()),
                other => other.into(),
            })?;
        let node_id = tables::init(&db, configured_node)?;
        let (_, wal_seq, wal_pos) = tables::positions(&db)?;
        let mut wal = wal::Wal::open(
            &data_dir.join("confab.wal"),
            wal_seq,
            wal_pos,
            checkpoint_age,
        )?;
        let replayed = writer::replay(&db, &mut wal)?;
        if replayed > 0 {
            tracing::warn!(
                batches = replayed,
                "storage recovered the writes after its last checkpoint from the write-ahead log"
            );
        }
        let renamed_users = migrate::migrate_after_replay(&db, host_namespace)?;
        let (last_id, _, _) = tables::positions(&db)?;
        let db = Arc::new(db);
        let (tx, rx) = std::sync::mpsc::channel();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let after_batch = Arc::new(std::sync::OnceLock::new());
        let stopped = Arc::new(AtomicBool::new(false));
        let disk = Arc::new(disk::DiskGuard::new(
            data_dir.to_path_buf(),
            options.min_free_disk_bytes,
        ));
        #[cfg(test)]
        let log = wal.file();
        let view = Arc::new(parking_lot::RwLock::new(Some(Arc::new(writer::View::new(
            &db,
        )?))));
        let handle = writer::spawn(writer::Writer {
            db: db.clone(),
            rx,
            loopback: tx.clone(),
            queued: queued.clone(),
            ids: crate::model::IdGenerator::new(node_id, last_id),
            max_batch,
            metrics: metrics.clone(),
            after_batch: after_batch.clone(),
            view: view.clone(),
            wal,
            stopped: stopped.clone(),
            disk: disk.clone(),
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                db: parking_lot::RwLock::new(Some(db)),
                path,
                node_id,
                queue: tx,
                queued,
                closed: AtomicBool::new(false),
                writer: parking_lot::Mutex::new(Some(handle)),
                metrics,
                after_batch,
                view,
                stopped,
                disk,
                renamed_users,
                #[cfg(test)]
                log,
            }),
        })
    }

    /// How many users this open moved into a host application's namespace (see
    /// `StoreOptions::host_namespace`); their messages' sender changed, so the search index
    /// is stale.
    pub fn renamed_users(&self) -> u64 {
        self.inner.renamed_users
    }

    /// Sets what the writer thread runs after the completions of each committed batch (the
    /// hub's fan-out of the batch's messages). Once: later calls are ignored.
    pub fn set_after_batch(&self, hook: writer::AfterBatch) {
        let _ = self.inner.after_batch.set(hook);
    }

    /// This node's id, part of every id it makes.
    pub fn node_id(&self) -> u16 {
        self.inner.node_id
    }

    /// The database file, for disk-use metrics.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Queues a write; `done` runs on the writer thread once the write is durable or failed.
    /// Fails at once (without calling `done`) when the queue is full or the store is closed.
    pub fn submit(&self, op: WriteOp, done: Completion) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        if self.inner.queued.fetch_add(1, Ordering::AcqRel) >= QUEUE_CAPACITY {
            self.inner.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(StoreError::Overloaded);
        }
        self.inner.metrics.write_queue_depth.inc();
        match self.inner.queue.send(writer::Job::Write(op, done)) {
            Ok(()) => Ok(()),
            Err(_) => {
                self.inner.queued.fetch_sub(1, Ordering::AcqRel);
                self.inner.metrics.write_queue_depth.dec();
                Err(StoreError::Closed)
            }
        }
    }

    /// Queues a write and waits for its outcome.
    pub async fn write(&self, op: WriteOp) -> Result<WriteOutput, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(
            op,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )?;
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Whether the writer has stopped: a log write and the durable commit after it both
    /// failed, so every write fails until Confab restarts (and recovers what is on disk).
    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::Acquire)
    }

    /// Whether writes are refused now because free disk space is below the floor (they
    /// resume by themselves once it is back).
    pub fn is_disk_full(&self) -> bool {
        self.inner.disk.full().0
    }

    /// Stops taking writes, lets the writer commit everything already queued, and waits for it.
    pub fn close(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.inner.queue.send(writer::Job::Stop);
        if let Some(h) = self.inner.writer.lock().take() {
            let _ = h.join();
        }
        // Reads still running hold their own snapshot, and with it the database.
        self.inner.view.write().take();
        let Some(mut db) = self.inner.db.write().take() else {
            return;
        };
        if self.is_stopped() {
            // The writer keeps the database open for good (see `writer::run`): waiting for
            // it to close would be in vain.
            tracing::warn!(
                "storage stopped earlier after a failed disk write; the next start recovers it as after a crash"
            );
            return;
        }
        // Reads still running hold their own reference: give them a moment to finish.
        for _ in 0..200 {
            match Arc::try_unwrap(db) {
                Ok(db) => {
                    drop(db);
                    tracing::debug!("storage closed cleanly");
                    return;
                }
                Err(still_shared) => {
                    db = still_shared;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        }
        tracing::warn!("storage closed with reads still running; the next start repairs it");
    }

    /// What reads see: the state after the last batch whose completions ran (`writer::View`).
    fn view(&self) -> Result<Arc<writer::View>, StoreError> {
        self.inner.view.read().clone().ok_or(StoreError::Closed)
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let view = self.view()?;
        tokio::task::spawn_blocking(move || f(&view))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?
    }

    /// Queues a write and waits for it from a plain thread (never the writer's own).
    pub fn write_blocking(&self, op: WriteOp) -> Result<WriteOutput, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(
            op,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )?;
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    /// The last id issued by writes committed so far.
    pub fn last_id_blocking(&self) -> Result<Id, StoreError> {
        match self.write_blocking(WriteOp::Barrier)? {
            WriteOutput::Barrier { last_id } => Ok(last_id),
            _ => Err(StoreError::Closed),
        }
    }

    /// The server settings (administrators, registration mode).
    pub fn server_settings_blocking(&self) -> Result<ServerSettings, StoreError> {
        let txn = self.view()?;
        let t = txn.open_table(SETTINGS)?;
        match t.get(SETTINGS_KEY)? {
            Some(v) => decode("settings", v.value()),
            None => Ok(ServerSettings::default()),
        }
    }

    /// Unexpired invites, newest first.
    pub async fn invites(&self) -> Result<Vec<Invite>, StoreError> {
        self.read(|txn| {
            let t = txn.open_table(INVITES)?;
            let now = crate::model::now_ms();
            let mut out = Vec::new();
            for row in t.iter()? {
                let (_, v) = row?;
                let inv: Invite = decode("invites", v.value())?;
                if inv.expires_at > now {
                    out.push(inv);
                }
            }
            out.sort_by_key(|i| std::cmp::Reverse(i.created_at));
            Ok(out)
        })
        .await
    }

    /// Every room id.
    pub fn room_ids_blocking(&self) -> Result<Vec<Id>, StoreError> {
        let txn = self.view()?;
        let t = txn.open_table(ROOMS)?;
        t.iter()?
            .map(|row| row.map(|(k, _)| Id(k.value())).map_err(StoreError::from))
            .collect()
    }

    /// Up to `limit` messages of a room with ids above `after`, oldest first (deleted ones
    /// included).
    pub fn messages_after_blocking(
        &self,
        room: Id,
        after: Id,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let txn = self.view()?;
        let t = txn.open_table(MESSAGES)?;
        let mut out = Vec::with_capacity(limit.min(4096));
        for row in t.range((room.0, after.0.saturating_add(1))..=(room.0, u64::MAX))? {
            let (_, v) = row?;
            out.push(decode("messages", v.value())?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Messages by (room, id), in the order asked; `None` where there is none.
    pub async fn messages(&self, keys: Vec<(Id, Id)>) -> Result<Vec<Option<Message>>, StoreError> {
        self.read(move |txn| {
            let t = txn.open_table(MESSAGES)?;
            keys.iter()
                .map(|(room, id)| match t.get((room.0, id.0))? {
                    Some(v) => Ok(Some(decode("messages", v.value())?)),
                    None => Ok(None),
                })
                .collect()
        })
        .await
    }

    /// Loads what the chat hub keeps in memory: rooms, their members, and users.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let txn = self.view()?;
        let rooms_t = txn.open_table(ROOMS)?;
        let members_t = txn.open_table(MEMBERS)?;
        let heads_t = txn.open_table(ROOM_HEADS)?;
        let mut rooms = Vec::new();
        for row in rooms_t.iter()? {
            let (k, v) = row?;
            let room: Room = decode("rooms", v.value())?;
            let id = k.value();
            let mut members = Vec::new();
            for m in members_t.range((id, "")..(id.saturating_add(1), ""))? {
                let (_, v) = m?;
                members.push(decode::<Member>("members", v.value())?);
            }
            let newest = heads_t.get(id)?.map_or(0, |v| v.value());
            rooms.push((room, members, Id(newest)));
        }
        let users_t = txn.open_table(USERS)?;
        let mut users = Vec::new();
        for row in users_t.iter()? {
            let (_, v) = row?;
            users.push(decode::<User>("users", v.value())?);
        }
        Ok(Snapshot { rooms, users })
    }

    /// A page of a room's messages, newest first, with whether more lie in that direction.
    /// `before`: ids below it; `after`: the oldest `limit` ids above it; neither: the newest.
    /// The page also stops before its records pass `max_bytes` (at least one message), so an
    /// answer always fits a connection's outbound queue.
    pub async fn history(
        &self,
        room: Id,
        before: Option<Id>,
        after: Option<Id>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Message>, bool), StoreError> {
        self.read(move |txn| {
            let t = txn.open_table(MESSAGES)?;
            let mut out = Vec::with_capacity(limit + 1);
            let mut bytes = 0;
            let mut full = false;
            match after {
                Some(after) => {
                    for row in t.range((room.0, after.0.saturating_add(1))..=(room.0, u64::MAX))? {
                        let (_, v) = row?;
                        bytes += v.value().len();
                        if !out.is_empty() && bytes > max_bytes {
                            full = true;
                            break;
                        }
                        out.push(decode::<Message>("messages", v.value())?);
                        if out.len() > limit {
                            break;
                        }
                    }
                    let more = full || out.len() > limit;
                    out.truncate(limit);
                    out.reverse();
                    Ok((out, more))
                }
                None => {
                    let upper = before.map_or(u64::MAX, |b| b.0);
                    let range = if before.is_some() {
                        t.range((room.0, 0)..(room.0, upper))?
                    } else {
                        t.range((room.0, 0)..=(room.0, upper))?
                    };
                    for row in range.rev() {
                        let (_, v) = row?;
                        bytes += v.value().len();
                        if !out.is_empty() && bytes > max_bytes {
                            full = true;
                            break;
                        }
                        out.push(decode::<Message>("messages", v.value())?);
                        if out.len() > limit {
                            break;
                        }
                    }
                    let more = full || out.len() > limit;
                    out.truncate(limit);
                    Ok((out, more))
                }
            }
        })
        .await
    }

    /// A room's changes after `since`, oldest first, at most `limit`, none past `upto`: new
    /// messages (from MESSAGES, where seq = id) merged with edits and deletes (CHANGES). Each
    /// change's record size is taken from `budget`; the page stops (with more to come) when the
    /// next one does not fit. Blocking: for the writer thread's completions or the blocking pool.
    pub fn changes_since_blocking(
        &self,
        room: Id,
        since: Id,
        upto: Id,
        limit: usize,
        budget: &mut usize,
    ) -> Result<(Vec<Change>, bool), StoreError> {
        let txn = self.view()?;
        let messages = txn.open_table(MESSAGES)?;
        let changes = txn.open_table(CHANGES)?;
        if since >= upto {
            return Ok((Vec::new(), false));
        }
        let lo = since.0.saturating_add(1);
        let mut new_msgs = messages.range((room.0, lo)..=(room.0, upto.0))?;
        let mut edits = changes.range((room.0, lo)..=(room.0, upto.0))?;
        let mut next_msg = new_msgs.next().transpose()?;
        let mut next_edit = edits.next().transpose()?;
        let mut out = Vec::with_capacity(limit.min(1024));
        loop {
            let take_msg = match (&next_msg, &next_edit) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((mk, _)), Some((ek, _))) => mk.value().1 < ek.value().1,
            };
            if out.len() == limit {
                return Ok((out, true));
            }
            let size = match (&next_msg, &next_edit, take_msg) {
                (Some((_, v)), _, true) => v.value().len(),
                // An edit's record is read below; count it as the largest a message can be
                // stored as, roughly its current length, by reading it once here.
                (_, Some((_, v)), false) => messages
                    .get((room.0, v.value().0))?
                    .map_or(0, |m| m.value().len()),
                _ => 0,
            };
            if size > *budget {
                return Ok((out, true));
            }
            *budget -= size;
            if take_msg {
                if let Some((k, v)) = next_msg.take() {
                    let message: Message = decode("messages", v.value())?;
                    out.push(Change {
                        seq: Id(k.value().1),
                        kind: ChangeKind::Message,
                        message,
                    });
                }
                next_msg = new_msgs.next().transpose()?;
            } else {
                if let Some((k, v)) = next_edit.take() {
                    let (mid, kind) = v.value();
                    if let Some(m) = messages.get((room.0, mid))? {
                        out.push(Change {
                            seq: Id(k.value().1),
                            kind: ChangeKind::from_code(kind),
                            message: decode("messages", m.value())?,
                        });
                    }
                }
                next_edit = edits.next().transpose()?;
            }
        }
        Ok((out, false))
    }

    /// Messages from others after `after` in a room, deleted ones excluded, counted up to `cap`.
    pub async fn unread_count(
        &self,
        room: Id,
        user: UserId,
        after: Id,
        cap: usize,
    ) -> Result<usize, StoreError> {
        self.read(move |txn| {
            let t = txn.open_table(MESSAGES)?;
            let mut n = 0;
            for row in t.range((room.0, after.0.saturating_add(1))..=(room.0, u64::MAX))? {
                let (_, v) = row?;
                let m: Message = decode("messages", v.value())?;
                if m.sender_id != user && m.deleted_at.is_none() {
                    n += 1;
                    if n >= cap {
                        break;
                    }
                }
            }
            Ok(n)
        })
        .await
    }

    /// One message, if it exists in that room.
    pub async fn message(&self, room: Id, id: Id) -> Result<Option<Message>, StoreError> {
        self.read(move |txn| {
            let t = txn.open_table(MESSAGES)?;
            match t.get((room.0, id.0))? {
                Some(v) => Ok(Some(decode("messages", v.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    /// A built-in account by (lowercased) username.
    pub async fn account(&self, username: String) -> Result<Option<Account>, StoreError> {
        self.read(move |txn| {
            let t = txn.open_table(ACCOUNTS)?;
            match t.get(username.as_str())? {
                Some(v) => Ok(Some(decode("accounts", v.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    /// An upload and its blob, hidden or not.
    pub async fn upload(&self, id: Id) -> Result<Option<(Upload, Blob)>, StoreError> {
        self.read(move |txn| {
            let uploads = txn.open_table(UPLOADS)?;
            let blobs = txn.open_table(BLOBS)?;
            let Some(v) = uploads.get(id.0)? else {
                return Ok(None);
            };
            let upload: Upload = decode("uploads", v.value())?;
            match blobs.get(upload.sha256.as_str())? {
                Some(b) => Ok(Some((upload, decode("blobs", b.value())?))),
                None => Ok(None),
            }
        })
        .await
    }

    /// The rooms where live messages share an upload (each room once, at most `cap`).
    pub async fn rooms_sharing(&self, file: Id, cap: usize) -> Result<Vec<Id>, StoreError> {
        self.read(move |txn| {
            let t = txn.open_table(SHARES)?;
            let mut rooms: Vec<Id> = Vec::new();
            for row in t.range((file.0, 0, 0)..=(file.0, u64::MAX, u64::MAX))? {
                let (k, _) = row?;
                let room = Id(k.value().1);
                if rooms.last() != Some(&room) {
                    rooms.push(room);
                    if rooms.len() >= cap {
                        break;
                    }
                }
            }
            Ok(rooms)
        })
        .await
    }

    /// Every upload and blob, for the file service's counters at start. Blocking.
    pub fn files_snapshot_blocking(&self) -> Result<(Vec<Upload>, Vec<Blob>), StoreError> {
        let txn = self.view()?;
        let uploads = txn
            .open_table(UPLOADS)?
            .iter()?
            .map(|row| {
                let (_, v) = row?;
                decode::<Upload>("uploads", v.value())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let blobs = txn
            .open_table(BLOBS)?
            .iter()?
            .map(|row| {
                let (_, v) = row?;
                decode::<Blob>("blobs", v.value())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((uploads, blobs))
    }

    /// Uploads no live message shares that are hidden or were created before
    /// `created_before`, at most `limit` of them.
    pub async fn unshared_uploads(
        &self,
        created_before: u64,
        limit: usize,
    ) -> Result<Vec<Id>, StoreError> {
        self.read(move |txn| {
            let uploads = txn.open_table(UPLOADS)?;
            let shares = txn.open_table(SHARES)?;
            let mut out = Vec::new();
            for row in uploads.iter()? {
                let (k, v) = row?;
                let u: Upload = decode("uploads", v.value())?;
                if u.hidden_at.is_none() && u.created_at >= created_before {
                    continue;
                }
                let id = k.value();
                let shared = shares
                    .range((id, 0, 0)..=(id, u64::MAX, u64::MAX))?
                    .next()
                    .is_some();
                if !shared {
                    out.push(Id(id));
                    if out.len() >= limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// Whether a user id is known (has connected, registered or been a member).
    pub async fn user_exists(&self, user: UserId) -> Result<bool, StoreError> {
        self.read(move |txn| {
            let t = txn.open_table(USERS)?;
            Ok(t.get(&*user)?.is_some())
        })
        .await
    }
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    table: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table,
        message: e.to_string(),
    })
}

/// Like `encode`, as a JSON value that can be embedded in other JSON without serializing the
/// record again.
pub(crate) fn encode_raw<T: serde::Serialize>(
    value: &T,
) -> Result<Box<serde_json::value::RawValue>, StoreError> {
    serde_json::value::to_raw_value(value).map_err(|e| StoreError::Io(std::io::Error::other(e)))
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Our records have only string keys: serializing them cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn room_and_messages(store: &Store, count: usize) -> Id {
        let room = match store
            .write_blocking(WriteOp::CreateRoom {
                name: "r".into(),
                topic: String::new(),
                visibility: crate::model::Visibility::Public,
                owner: crate::model::UserId::from("alice"),
            })
            .expect("create room")
        {
            WriteOutput::RoomCreated { room, .. } => room.id,
            other => panic!("unexpected {other:?}"),
        };
        for i in 0..count {
            // One write per batch: each its own log record.
            append(store, room, &format!("c-{i}"), &format!("message {i}"));
        }
        room
    }

    /// Idle writers in these tests checkpoint only when a test says so.
    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

    /// The store in `dir` (node 1, batches of 64), whose idle writer checkpoints after `age`.
    fn open_at(dir: &Path, age: std::time::Duration) -> Store {
        let options = StoreOptions {
            node: Some(1),
            max_batch: 64,
            ..StoreOptions::default()
        };
        Store::open_with(dir, Arc::new(Metrics::new()), age, &options).expect("open")
    }

    /// The contents of `room`'s messages, oldest first.
    fn contents(store: &Store, room: Id) -> Vec<String> {
        store
            .messages_after_blocking(room, Id(0), 1000)
            .expect("history")
            .into_iter()
            .map(|m| m.content)
            .collect()
    }

    /// The ids of `room`'s messages, oldest first.
    fn contents_ids(store: &Store, room: Id) -> Vec<Id> {
        store
            .messages_after_blocking(room, Id(0), 1000)
            .expect("history")
            .into_iter()
            .map(|m| m.id)
            .collect()
    }

    /// Alice's send of `content` with `client_msg_id` to `room`.
    fn alice_sends(room: Id, client_msg_id: &str, content: &str) -> WriteOp {
        WriteOp::AppendMessage {
            room,
            sender: crate::model::UserId::from("alice"),
            client_msg_id: client_msg_id.into(),
            kind: crate::model::MessageType::Text,
            content: content.into(),
            file: None,
        }
    }

    /// Alice sends `content` with `client_msg_id` to `room`.
    fn try_append(
        store: &Store,
        room: Id,
        client_msg_id: &str,
        content: &str,
    ) -> Result<WriteOutput, StoreError> {
        store.write_blocking(alice_sends(room, client_msg_id, content))
    }

    /// Submits Alice's send without waiting; its result goes to `results`.
    fn submit_append(
        store: &Store,
        room: Id,
        client_msg_id: &str,
        content: &str,
        results: &std::sync::mpsc::Sender<Result<WriteOutput, StoreError>>,
    ) {
        let results = results.clone();
        store
            .submit(
                alice_sends(room, client_msg_id, content),
                Box::new(move |r| {
                    let _ = results.send(r);
                }),
            )
            .expect("submit");
    }

    /// Submits Alice's sends (`client_msg_id` as content too), each a batch of its own: the
    /// next goes only once the writer has taken the one before. With the log paused, two such
    /// batches hold both log threads, and later sends wait to go out together as one batch.
    fn submit_own_batches(
        store: &Store,
        room: Id,
        client_msg_ids: &[&str],
        results: &std::sync::mpsc::Sender<Result<WriteOutput, StoreError>>,
    ) {
        for cid in client_msg_ids {
            submit_append(store, room, cid, cid, results);
            wait_until("the writer takes the write", || {
                store.inner.queued.load(Ordering::Acquire) == 0
            });
        }
    }

    /// The next completed send from `results` (five seconds at most): its message, and whether
    /// it was a duplicate.
    fn next_appended(
        results: &std::sync::mpsc::Receiver<Result<WriteOutput, StoreError>>,
    ) -> (Message, bool) {
        match results
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("completion")
            .expect("write")
        {
            WriteOutput::Appended {
                message, duplicate, ..
            } => (message, duplicate),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn append(store: &Store, room: Id, client_msg_id: &str, content: &str) -> WriteOutput {
        try_append(store, room, client_msg_id, content).expect("append")
    }

    /// What a crash leaves: the files as they are on disk while the store runs.
    fn crash_image(from: &Path, with_log: bool) -> tempfile::TempDir {
        let to = tempfile::tempdir().expect("temp dir");
        std::fs::copy(from.join("confab.redb"), to.path().join("confab.redb")).expect("copy db");
        if with_log {
            std::fs::copy(from.join("confab.wal"), to.path().join("confab.wal")).expect("copy log");
        }
        to
    }

    /// Polls `done` every millisecond, for at most five seconds.
    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !done() {
            assert!(
                std::time::Instant::now() < until,
                "timed out waiting: {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// redb shows a commit to new readers at once and the writer commits while the log write
    /// runs: until the record is on disk, no read sees the write and its completion waits.
    /// A second batch commits and starts its own log write meanwhile; completions still run
    /// in batch order.
    #[test]
    fn a_write_is_read_and_completed_only_once_its_record_is_on_disk() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_at(dir.path(), HOUR);
        let room = room_and_messages(&store, 0);
        let paused = store.inner.log.pause.write();
        let (tx, rx) = std::sync::mpsc::channel();
        submit_own_batches(&store, room, &["first", "second"], &tx);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            rx.try_recv().is_err(),
            "no completion before the record is on disk"
        );
        assert!(
            store
                .messages_after_blocking(room, Id(0), 10)
                .expect("read")
                .is_empty(),
            "no read sees a write whose record is not on disk"
        );
        drop(paused);
        let contents: Vec<_> = (0..2).map(|_| next_appended(&rx).0.content).collect();
        assert_eq!(contents, ["first", "second"], "completions in batch order");
        assert_eq!(
            store
                .messages_after_blocking(room, Id(0), 10)
                .expect("read")
                .len(),
            2
        );
        store.close();
    }

    /// A batch's inserts reach redb only after its log write starts, so a later write of the
    /// same batch that reads what an earlier one wrote must still see it: the same
    /// `client_msg_id` twice in one batch is one message, the second send answered as a
    /// duplicate. After a crash the log brings the batch back the same.
    #[test]
    fn a_batch_reads_its_own_earlier_writes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_at(dir.path(), HOUR);
        let room = room_and_messages(&store, 0);
        let paused = store.inner.log.pause.write();
        let (tx, rx) = std::sync::mpsc::channel();
        // Two batches of one write each occupy both log threads...
        submit_own_batches(&store, room, &["first", "second"], &tx);
        // ...so these two wait (no batch starts while both log writes run), and go out
        // together as the next batch once the log writes end.
        submit_append(&store, room, "twice", "once", &tx);
        submit_append(&store, room, "twice", "once again", &tx);
        drop(paused);
        let outputs: Vec<_> = (0..4)
            .map(|_| {
                let (message, duplicate) = next_appended(&rx);
                (message.id, message.content, duplicate)
            })
            .collect();
        assert!(!outputs[2].2, "the first send is new");
        assert_eq!(
            outputs[3],
            (outputs[2].0, "once".to_string(), true),
            "the second send, in the same batch, finds the first"
        );
        let crashed = crash_image(dir.path(), true);
        assert_eq!(contents(&store, room), ["first", "second", "once"]);
        store.close();

        let reopened = open_at(crashed.path(), HOUR);
        assert_eq!(contents(&reopened, room), ["first", "second", "once"]);
        // The idempotency index came back too: a third send is still the same message.
        match try_append(&reopened, room, "twice", "a third time").expect("append") {
            WriteOutput::Appended {
                message, duplicate, ..
            } => assert_eq!((message.id, duplicate), (outputs[2].0, true)),
            other => panic!("unexpected {other:?}"),
        }
        reopened.close();
    }

    /// A log write that fails is made good by a durable commit of redb's own, which covers
    /// it and every batch before it: the write succeeds, and is on disk even without the log.
    #[test]
    fn a_failed_log_write_is_made_good_by_a_durable_commit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_at(dir.path(), HOUR);
        let room = room_and_messages(&store, 3);
        store.inner.log.fail_next.store(1, Ordering::Release);
        append(&store, room, "x", "after a failed log write");
        assert_eq!(store.inner.log.fail_next.load(Ordering::Acquire), 0);
        let without_log = crash_image(dir.path(), false);
        // The log starts over after the durable commit, and later writes use it again.
        append(&store, room, "y", "after that");
        let crashed = crash_image(dir.path(), true);
        store.close();

        let reopened = |image: &Path| {
            let s = open_at(image, HOUR);
            let all = contents(&s, room);
            s.close();
            all
        };
        assert_eq!(
            reopened(without_log.path()),
            [
                "message 0",
                "message 1",
                "message 2",
                "after a failed log write"
            ]
        );
        assert_eq!(reopened(crashed.path()).len(), 5);
    }

    /// A log write fails and so does the checkpoint that would cover it: that write fails, the
    /// store says it has stopped and refuses every later write, and what the next start
    /// recovers has everything written before and nothing of the failed write, although redb
    /// had committed it in memory (and would make it durable if the store closed it).
    #[test]
    fn when_a_log_write_and_its_checkpoint_fail_the_store_stops_and_the_write_stays_undone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_at(dir.path(), HOUR);
        let room = room_and_messages(&store, 3);
        assert!(!store.is_stopped());
        store.inner.log.fail_next.store(1, Ordering::Release);
        store.inner.log.fail_checkpoints.store(1, Ordering::Release);
        let failed = try_append(&store, room, "x", "lost");
        assert!(matches!(failed, Err(StoreError::Io(_))), "{failed:?}");
        assert!(store.is_stopped());
        assert_eq!(store.inner.metrics.storage_stopped.get(), 1);
        let refused = try_append(&store, room, "y", "refused");
        assert!(matches!(refused, Err(StoreError::Io(_))), "{refused:?}");
        assert_eq!(
            contents(&store, room).len(),
            3,
            "a read sees the failed write"
        );
        // Closing must not make redb's in-memory commit of the failed write durable.
        store.close();
        let image = crash_image(dir.path(), true);

        let s = open_at(image.path(), HOUR);
        assert!(!s.is_stopped());
        assert_eq!(contents(&s, room), ["message 0", "message 1", "message 2"]);
        append(&s, room, "z", "after the restart");
        assert_eq!(contents(&s, room).len(), 4);
        s.close();
    }

    /// redb refuses a batch's commit after its record's write has started. The record decides:
    /// it reaches the disk, so the write succeeds and the next start replays it. Nothing may
    /// commit after it, so the store stops; reads lack the write until that restart.
    #[test]
    fn a_commit_that_fails_while_its_record_is_written_stands_with_the_record_and_stops_the_store()
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_at(dir.path(), HOUR);
        let room = room_and_messages(&store, 3);
        store.inner.log.fail_commits.store(1, Ordering::Release);
        append(&store, room, "x", "logged, not committed");
        assert!(store.is_stopped());
        assert_eq!(store.inner.metrics.storage_stopped.get(), 1);
        let refused = try_append(&store, room, "y", "refused");
        assert!(matches!(refused, Err(StoreError::Io(_))), "{refused:?}");
        assert_eq!(contents(&store, room).len(), 3);
        store.close();
        let image = crash_image(dir.path(), true);

        let s = open_at(image.path(), HOUR);
        assert!(!s.is_stopped());
        assert_eq!(
            contents(&s, room),
            [
                "message 0",
                "message 1",
                "message 2",
                "logged, not committed"
            ]
        );
        append(&s, room, "z", "after the restart");
        assert_eq!(contents(&s, room).len(), 5);
        s.close();
    }

    /// A batch whose commit fails and whose record's write fails too is nowhere: the write
    /// fails, the store stops, and the next start has everything before it and nothing of it.
    #[test]
    fn a_write_whose_commit_and_record_both_fail_fails_and_stays_undone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_at(dir.path(), HOUR);
        let room = room_and_messages(&store, 3);
        store.inner.log.fail_commits.store(1, Ordering::Release);
        store.inner.log.fail_next.store(1, Ordering::Release);
        let failed = try_append(&store, room, "x", "lost");
        assert!(matches!(failed, Err(StoreError::Io(_))), "{failed:?}");
        assert!(store.is_stopped());
        store.close();
        let image = crash_image(dir.path(), true);

        let s = open_at(image.path(), HOUR);
        assert_eq!(contents(&s, room), ["message 0", "message 1", "message 2"]);
        append(&s, room, "z", "after the restart");
        assert_eq!(contents(&s, room).len(), 4);
        s.close();
    }

    /// A record whose crc passes but whose bytes do not fit its table (a writer bug, or a
    /// layout changed without replaying first) stops the open with `Corrupt`, not a panic.
    #[test]
    fn a_logged_change_that_does_not_fit_its_table_is_refused_at_replay() {
        let bad: [(u8, &[u8], &[u8]); 2] = [
            // messages: the key is (u64, u64), 16 bytes.
            (wal_table::MESSAGES, b"short", b"{}"),
            // accounts: the key is a string.
            (wal_table::ACCOUNTS, &[0xff, 0xfe], b"{}"),
        ];
        for (table, key, value) in bad {
            let dir = tempfile::tempdir().expect("temp dir");
            let metrics = Arc::new(Metrics::new());
            Store::open(dir.path(), Some(1), 64, metrics.clone())
                .expect("open")
                .close();
            let (_, seq, pos) = {
                let db = Database::open(dir.path().join("confab.redb")).expect("db");
                tables::positions(&db).expect("positions")
            };
            let mut log = wal::Wal::open(
                &dir.path().join("confab.wal"),
                seq,
                pos,
                wal::CHECKPOINT_AGE,
            )
            .expect("log");
            let mut record = wal::Record::new();
            record.insert(table, key, value);
            log.append(&mut record).expect("append");
            drop(log);
            match Store::open(dir.path(), Some(1), 64, metrics) {
                Err(StoreError::Corrupt { message, .. }) => {
                    assert!(message.contains("does not fit"), "{message}")
                }
                Err(other) => panic!("table {table}: unexpected error {other}"),
                Ok(_) => panic!("table {table}: a misfit record was replayed"),
            }
        }
    }

    /// The writes since the last checkpoint live only in the log (redb keeps non-durable
    /// commits in memory); after a crash, opening the data dir replays them, exactly once.
    #[test]
    fn writes_after_the_last_checkpoint_come_back_from_the_log_after_a_crash() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_at(dir.path(), HOUR);
        let room = room_and_messages(&store, 40);
        let last = store.last_id_blocking().expect("last id");

        let without_log = crash_image(dir.path(), false);
        let crashed = crash_image(dir.path(), true);
        store.close();

        let lost = open_at(without_log.path(), HOUR);
        assert!(
            lost.room_ids_blocking().expect("rooms").is_empty(),
            "without the log, the writes since the last checkpoint are not on disk"
        );
        lost.close();

        let back = open_at(crashed.path(), HOUR);
        assert_eq!(back.room_ids_blocking().expect("rooms"), vec![room]);
        let expected: Vec<_> = (0..40).map(|i| format!("message {i}")).collect();
        assert_eq!(
            contents(&back, room),
            expected,
            "every write once, in order"
        );
        assert_eq!(back.last_id_blocking().expect("last id"), last, "ids go on");
        // New writes after the replay get new ids and survive a second crash too.
        let more = append(&back, room, "after", "after");
        let WriteOutput::Appended {
            message, duplicate, ..
        } = more
        else {
            panic!("unexpected {more:?}")
        };
        assert!(!duplicate && message.id > last);
        let again = crash_image(crashed.path(), true);
        back.close();
        let back2 = open_at(again.path(), HOUR);
        assert_eq!(contents(&back2, room).len(), 41);
        // A resend of a replayed message is still recognised.
        let resent = append(&back2, room, "c-7", "message 7");
        assert!(matches!(
            resent,
            WriteOutput::Appended {
                duplicate: true,
                ..
            }
        ));
        back2.close();
    }

    /// Each room's newest message id, as the hub's snapshot reads it.
    fn heads(store: &Store) -> Vec<(Id, Id)> {
        let mut heads: Vec<_> = store
            .snapshot()
            .expect("snapshot")
            .rooms
            .into_iter()
            .map(|(room, _, newest)| (room.id, newest))
            .collect();
        heads.sort();
        heads
    }

    /// The newest message of each room is noted as batches commit, several rooms and several
    /// messages per batch among them (a duplicate moves nothing), and comes back after a crash.
    #[test]
    fn each_rooms_newest_message_is_noted_per_batch_and_survives_a_crash() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_at(dir.path(), HOUR);
        let a = room_and_messages(&store, 2);
        let b = room_and_messages(&store, 0);
        let empty = room_and_messages(&store, 0);
        let a_newest = contents_ids(&store, a);
        assert_eq!(
            heads(&store),
            vec![
                (a, *a_newest.last().expect("a message")),
                (b, Id(0)),
                (empty, Id(0))
            ]
        );

        // One batch: both log threads are held, so these four writes wait and go together.
        let paused = store.inner.log.pause.write();
        let (tx, rx) = std::sync::mpsc::channel();
        submit_own_batches(&store, a, &["hold-1", "hold-2"], &tx);
        submit_append(&store, b, "b-1", "to b", &tx);
        submit_append(&store, a, "a-last", "to a", &tx);
        submit_append(&store, b, "b-2", "to b again", &tx);
        submit_append(&store, a, "c-0", "a resend", &tx);
        drop(paused);
        let ids: Vec<Id> = (0..6).map(|_| next_appended(&rx).0.id).collect();
        let (a_last, b_last) = (ids[3], ids[4]);
        assert!(ids[5] < a_last, "the resend is the older message");
        let expected = vec![(a, a_last), (b, b_last), (empty, Id(0))];
        assert_eq!(heads(&store), expected);

        let crashed = crash_image(dir.path(), true);
        store.close();
        let back = open_at(crashed.path(), HOUR);
        assert_eq!(heads(&back), expected, "replayed from the log");
        back.close();
        let reopened = open_at(dir.path(), HOUR);
        assert_eq!(heads(&reopened), expected, "after a clean close");
        reopened.close();
    }

    /// A schema 2 database (no `room_heads`) gets every room's newest message noted when it
    /// is opened, and is schema 3 from then on.
    #[test]
    fn a_schema_2_database_has_its_rooms_newest_messages_noted_at_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_at(dir.path(), HOUR);
        let a = room_and_messages(&store, 3);
        let b = room_and_messages(&store, 0);
        append(&store, b, "b-0", "in b");
        let empty = room_and_messages(&store, 0);
        let expected = heads(&store);
        assert_eq!(expected.len(), 3);
        assert!(
            expected
                .iter()
                .all(|&(room, newest)| (room == empty) == (newest == Id(0)))
        );
        assert_eq!(
            expected[0],
            (a, *contents_ids(&store, a).last().expect("a"))
        );
        assert_eq!(
            expected[1],
            (b, *contents_ids(&store, b).last().expect("b"))
        );
        store.close();
        {
            // What schema 2 left: no heads table.
            let db = Database::create(dir.path().join("confab.redb")).expect("db");
            let txn = db.begin_write().expect("txn");
            txn.delete_table(ROOM_HEADS).expect("drop heads");
            txn.open_table(META)
                .expect("meta")
                .insert(META_SCHEMA, 2)
                .expect("schema 2");
            txn.commit().expect("commit");
        }
        let reopened = open_at(dir.path(), HOUR);
        assert_eq!(heads(&reopened), expected);
        let schema = reopened
            .view()
            .expect("view")
            .open_table(META)
            .expect("meta")
            .get(META_SCHEMA)
            .expect("get")
            .map(|v| v.value());
        assert_eq!(schema, Some(SCHEMA_VERSION));
        reopened.close();
    }

    /// An idle writer checkpoints once the log is old enough: after a pause, the database
    /// file alone holds every write.
    #[test]
    fn an_idle_writer_checkpoints() {
        let dir = tempfile::tempdir().expect("temp dir");
        let age = std::time::Duration::from_millis(50);
        let store = open_at(dir.path(), age);
        let room = room_and_messages(&store, 10);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let image = loop {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let image = crash_image(dir.path(), false);
            let probe = open_at(image.path(), age);
            let found = contents(&probe, room).len();
            probe.close();
            if found == 10 {
                break image;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint in 10 s of idling ({found} of 10 on disk)"
            );
        };
        drop(image);
        store.close();
    }

    /// A store that was closed left nothing in the log to replay.
    #[test]
    fn a_closed_store_checkpoints_so_its_log_is_not_needed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = open_at(dir.path(), HOUR);
        let room = room_and_messages(&store, 5);
        store.close();
        std::fs::remove_file(dir.path().join("confab.wal")).expect("remove log");
        let back = Store::open(dir.path(), Some(1), 64, Arc::new(Metrics::new())).expect("open");
        assert_eq!(
            back.messages_after_blocking(room, Id(0), 100)
                .expect("history")
                .len(),
            5
        );
        back.close();
    }

    /// `close` drops the database, so redb records a clean shutdown: the next open repairs
    /// nothing (a repair reads the whole file: 0.9 s and 600 MiB at 1M messages).
    #[test]
    fn a_closed_store_needs_no_repair_at_the_next_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), Some(1), 64, Arc::new(Metrics::new())).expect("open");
        let reader = store.clone();
        store
            .write_blocking(WriteOp::CreateRoom {
                name: "r".into(),
                topic: String::new(),
                visibility: crate::model::Visibility::Public,
                owner: crate::model::UserId::from("alice"),
            })
            .expect("a write");
        store.close();
        assert!(
            matches!(reader.room_ids_blocking(), Err(StoreError::Closed)),
            "reads after close say Closed"
        );
        drop((store, reader));
        let repaired = Arc::new(AtomicBool::new(false));
        let flag = repaired.clone();
        let db = Database::builder()
            .set_repair_callback(move |_| flag.store(true, Ordering::Relaxed))
            .create(dir.path().join("confab.redb"))
            .expect("reopen");
        drop(db);
        assert!(!repaired.load(Ordering::Relaxed), "the reopen ran a repair");
    }
}
