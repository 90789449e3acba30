//! The group-commit writer: one thread, one redb transaction per drained batch of writes.

use super::tables::*;
use super::wal::{self, LogWrite, Record, Wal};
use super::{Completion, StoreError, decode, encode, encode_raw};
use crate::metrics::Metrics;
use crate::model::{
    Account, Blob, ChangeKind, Dimensions, FileRef, Id, IdGenerator, Invite, Member, Message,
    MessageStatus, MessageType, Role, Room, RoomKind, ServerSettings, ThumbState, Upload, User,
    UserId, Visibility, now_ms,
};
use redb::{
    AccessGuard, Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable,
    Table, TableDefinition, Value, WriteTransaction,
};
use serde_json::value::RawValue;
use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
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
    /// A log write ended: sent back by the log thread that ran it, with its buffer.
    Logged {
        thread: usize,
        slot: u64,
        result: std::io::Result<()>,
        buf: Vec<u8>,
    },
    Stop,
}

/// What reads see: the database as it was after the last batch whose completions ran. redb
/// shows a commit to new readers at once, and the writer commits a batch before its record is
/// on disk, so reads take this snapshot rather than the newest state: nobody reads what a
/// crash could still take back, and catch-up on the writer thread meets live fan-out exactly.
pub(super) struct View {
    // Declared first, so dropped before the database it reads.
    txn: ReadTransaction,
    _db: Arc<Database>,
}

impl std::ops::Deref for View {
    type Target = ReadTransaction;
    fn deref(&self) -> &ReadTransaction {
        &self.txn
    }
}

impl View {
    pub(super) fn new(db: &Arc<Database>) -> Result<Self, StoreError> {
        Ok(Self {
            txn: db.begin_read()?,
            _db: db.clone(),
        })
    }
}

pub(super) type ViewCell = parking_lot::RwLock<Option<Arc<View>>>;

/// Log writes that may run at once. A batch that arrives while the last one's record is on
/// its way to the disk is committed and written at once, instead of waiting for that write and
/// then its own: on this VM's disk two concurrent `O_DSYNC` writes each took 1.15× as long as
/// one alone. Completions still run in batch order.
const LOG_WRITES_IN_FLIGHT: usize = 2;

/// A second log write starts only while the batch already being written holds at most this
/// many writes. Under light load that spares a message the wait for another's write; under
/// heavy load batches are large, and waiting lets the next batch grow (one commit, one log
/// write and one push per recipient and room for all of it) instead of splitting it in two.
const OVERLAP_MAX_WRITES: usize = 4;

/// Everything the writer thread owns.
pub(super) struct Writer {
    pub db: Arc<Database>,
    pub rx: Receiver<Job>,
    /// Where the log threads send `Job::Logged`: the writer's own queue.
    pub loopback: Sender<Job>,
    pub queued: Arc<AtomicUsize>,
    pub ids: IdGenerator,
    pub max_batch: usize,
    pub metrics: Arc<Metrics>,
    pub after_batch: Arc<OnceLock<AfterBatch>>,
    pub view: Arc<ViewCell>,
    pub wal: Wal,
    /// Set once the writer has stopped (`Pipeline::stopped`), for readiness checks.
    pub stopped: Arc<AtomicBool>,
    /// Refuses batches while the disk is nearly full.
    pub disk: Arc<super::disk::DiskGuard>,
}

pub(super) fn spawn(writer: Writer) -> Result<std::thread::JoinHandle<()>, StoreError> {
    let log = LogThreads::spawn(LOG_WRITES_IN_FLIGHT, &writer.loopback, &writer.metrics)?;
    let handle = std::thread::Builder::new()
        .name("confab-store-writer".into())
        .spawn(move || run(writer, log))?;
    Ok(handle)
}

/// The threads that write log records, each blocked in its own `O_DSYNC` write. Each has
/// its own queue, and the writer hands a record only to an idle one: a shared queue would
/// wake a second thread at every hand-off (measured: seven scheduler slices per write).
struct LogThreads {
    queues: Vec<Sender<(u64, LogWrite)>>,
    busy: Vec<bool>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl LogThreads {
    fn spawn(n: usize, back: &Sender<Job>, metrics: &Arc<Metrics>) -> std::io::Result<Self> {
        let mut queues = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for thread in 0..n {
            let (tx, rx) = std::sync::mpsc::channel::<(u64, LogWrite)>();
            let back = back.clone();
            let metrics = Arc::clone(metrics);
            let handle = std::thread::Builder::new()
                .name(format!("confab-store-log{thread}"))
                .spawn(move || {
                    while let Ok((slot, write)) = rx.recv() {
                        let started = Instant::now();
                        let result = write.run();
                        metrics
                            .log_write_seconds
                            .observe(started.elapsed().as_secs_f64());
                        let buf = write.into_buf();
                        let done = Job::Logged {
                            thread,
                            slot,
                            result,
                            buf,
                        };
                        if back.send(done).is_err() {
                            break;
                        }
                    }
                })?;
            queues.push(tx);
            handles.push(handle);
        }
        Ok(Self {
            busy: vec![false; n],
            queues,
            handles,
        })
    }

    /// Log writes running now.
    fn running(&self) -> usize {
        self.busy.iter().filter(|b| **b).count()
    }

    /// Hands a write to an idle log thread; `false` if none is idle or they are gone.
    fn submit(&mut self, slot: u64, write: LogWrite) -> bool {
        let Some(thread) = self.busy.iter().position(|b| !*b) else {
            return false;
        };
        let sent = self.queues[thread].send((slot, write)).is_ok();
        self.busy[thread] = sent;
        sent
    }

    fn done(&mut self, thread: usize) {
        if let Some(b) = self.busy.get_mut(thread) {
            *b = false;
        }
    }

    fn stop(&mut self) {
        self.queues.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// A batch waiting for its record to reach the disk (and for redb's inserts and commit, which
/// run while the record is written).
struct Slot {
    id: u64,
    state: SlotState,
    /// redb refused the commit after the record's write had started: the batch's fate is the
    /// write's (a restart replays the record if it is on disk), and the writer has stopped.
    uncommitted: bool,
    publish: Publish,
    dones: Vec<Completion>,
    results: Vec<Result<WriteOutput, StoreError>>,
    started: Instant,
}

#[derive(PartialEq, Eq)]
enum SlotState {
    /// Its record is being written.
    Writing,
    /// Durable (or failed, or changed nothing): its completions may run once every batch
    /// before it has had theirs.
    Ready,
    /// Its record's write failed: redb has the batch, the disk may not.
    LogFailed,
}

/// What reads see once the batch's completions run.
enum Publish {
    /// The batch changed nothing.
    Keep,
    /// The snapshot taken right after its commit.
    View(View),
    /// Taking the snapshot failed at commit: take it at release instead, when nothing has
    /// committed after the batch (`Pipeline::hold`).
    Fresh,
}

/// The batches between their commit and their completions, in commit order.
struct Pipeline {
    slots: VecDeque<Slot>,
    next_slot: u64,
    /// No new batch until every slot is released: a checkpoint moved the log back to offset 0
    /// while older records were still being written (a late one must not land on a new
    /// record), or a batch's snapshot must be taken at its release.
    hold: bool,
    /// A log write failed and the durable commit that would have covered it failed too: the
    /// batches from that write on exist only in redb's memory, so the writer refuses every
    /// write and never commits again. A restart recovers what is on disk.
    stopped: bool,
    spare: Vec<Vec<u8>>,
    log: LogThreads,
}

impl Pipeline {
    fn can_start(&self) -> bool {
        let small = |s: &Slot| s.state != SlotState::Writing || s.dones.len() <= OVERLAP_MAX_WRITES;
        let running = self.log.running();
        (running == 0 || (running < LOG_WRITES_IN_FLIGHT && self.slots.iter().all(small)))
            && (!self.hold || self.idle())
            && !self.slots.iter().any(|s| s.state == SlotState::LogFailed)
    }

    fn idle(&self) -> bool {
        self.slots.is_empty() && self.log.running() == 0
    }

    fn push(
        &mut self,
        state: SlotState,
        publish: Publish,
        dones: Vec<Completion>,
        results: Vec<Result<WriteOutput, StoreError>>,
        started: Instant,
    ) -> u64 {
        let id = self.next_slot;
        self.next_slot += 1;
        self.slots.push_back(Slot {
            id,
            state,
            uncommitted: false,
            publish,
            dones,
            results,
            started,
        });
        id
    }

    fn logged(
        &mut self,
        thread: usize,
        slot: u64,
        result: std::io::Result<()>,
        buf: Vec<u8>,
        wal: &mut Wal,
    ) {
        self.log.done(thread);
        if self.spare.len() < LOG_WRITES_IN_FLIGHT {
            self.spare.push(buf);
        }
        if self.idle() {
            self.hold = false;
        }
        // A slot already made durable by a checkpoint (or released) ignores its write.
        let Some(s) = self
            .slots
            .iter_mut()
            .find(|s| s.id == slot && s.state == SlotState::Writing)
        else {
            return;
        };
        match result {
            Ok(()) => s.state = SlotState::Ready,
            Err(e) if s.uncommitted => {
                // Neither in redb nor on disk: the batch fails, with the rest of the stop.
                tracing::error!(error = %e, "write-ahead log write failed after a failed commit");
                s.state = SlotState::Ready;
                s.results = stopped_results(s.results.len());
            }
            Err(e) => {
                tracing::error!(error = %e, "write-ahead log write failed");
                wal.write_failed();
                s.state = SlotState::LogFailed;
            }
        }
    }

    /// A durable commit made every batch committed before it durable, whatever their
    /// records' writes do.
    fn covered(&mut self) {
        for s in &mut self.slots {
            if s.state == SlotState::Writing {
                s.state = SlotState::Ready;
            }
        }
        if self.log.running() > 0 {
            self.hold = true;
        }
    }

    /// Once every write is back after one failed: a checkpoint makes all committed batches
    /// durable, failed write included; if that fails too, the batches from the failed write
    /// on fail, and the writer stops.
    fn recover(&mut self, db: &Database, wal: &mut Wal, metrics: &Metrics) {
        if self.log.running() > 0 || !self.slots.iter().any(|s| s.state == SlotState::LogFailed) {
            return;
        }
        // Once stopped (a failed commit), a checkpoint would drop records still to replay.
        if !self.stopped && checkpoint(db, wal, metrics) {
            tracing::warn!("storage committed durably in place of a failed log write");
            for s in &mut self.slots {
                s.state = SlotState::Ready;
            }
            return;
        }
        if self.stopped {
            // Stopped by a failed commit: replay ends at this hole, so nothing after it stands.
            tracing::error!("a log write failed after storage stopped; the writes from it on fail");
        } else {
            tracing::error!(
                "storage stopped: a log write and the checkpoint after it failed; every write fails until Confab restarts"
            );
        }
        self.stopped = true;
        let mut from_hole = false;
        for s in &mut self.slots {
            from_hole |= s.state == SlotState::LogFailed;
            if from_hole {
                s.state = SlotState::Ready;
                s.publish = Publish::Keep;
                let n = s.results.len();
                s.results = stopped_results(n);
            }
        }
    }
}

fn stopped_results(n: usize) -> Vec<Result<WriteOutput, StoreError>> {
    (0..n)
        .map(|_| {
            Err(StoreError::Io(std::io::Error::other(
                "storage stopped after a failed disk write; restart Confab",
            )))
        })
        .collect()
}

/// What the writer thread holds while it runs.
struct Ctx<'a> {
    db: &'a Arc<Database>,
    ids: IdGenerator,
    wal: Wal,
    record: RefCell<Record>,
    metrics: &'a Metrics,
    after_batch: &'a OnceLock<AfterBatch>,
    view: &'a ViewCell,
    disk: &'a super::disk::DiskGuard,
}

impl Ctx<'_> {
    /// Runs the completions of the batches at the front whose records are on disk.
    fn release(&self, pipe: &mut Pipeline) {
        while pipe
            .slots
            .front()
            .is_some_and(|s| s.state == SlotState::Ready)
        {
            let Some(slot) = pipe.slots.pop_front() else {
                break;
            };
            let view = match slot.publish {
                Publish::Keep => None,
                Publish::View(v) => Some(v),
                Publish::Fresh => match View::new(self.db) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        tracing::error!(error = %e, "storage could not take a read snapshot; reads lag until the next batch");
                        None
                    }
                },
            };
            if let Some(v) = view {
                *self.view.write() = Some(Arc::new(v));
            }
            self.metrics
                .commit_batch_size
                .observe(slot.dones.len() as f64);
            self.metrics
                .commit_seconds
                .observe(slot.started.elapsed().as_secs_f64());
            for (done, result) in slot.dones.into_iter().zip(slot.results) {
                done(result);
            }
            if let Some(hook) = self.after_batch.get() {
                hook();
            }
        }
        if pipe.idle() {
            pipe.hold = false;
        }
    }
}

fn run(writer: Writer, log: LogThreads) {
    let Writer {
        db,
        rx,
        loopback,
        queued,
        ids,
        max_batch,
        metrics,
        after_batch,
        view,
        wal,
        stopped,
        disk,
    } = writer;
    // The log threads hold their own senders; the store's handle sends `Stop` when dropped.
    drop(loopback);
    let mut cx = Ctx {
        db: &db,
        ids,
        wal,
        record: RefCell::new(Record::new()),
        metrics: &metrics,
        after_batch: &after_batch,
        view: &view,
        disk: &disk,
    };
    let mut pipe = Pipeline {
        slots: VecDeque::new(),
        next_slot: 0,
        hold: false,
        stopped: false,
        spare: Vec::new(),
        log,
    };
    let mut backlog: VecDeque<(WriteOp, Completion)> = VecDeque::new();
    let mut stopping = false;
    let mut wait = false;
    loop {
        // Nothing to do until a write comes or a log write ends. Only an idle writer
        // checkpoints (and never a stopped one: that would make its failed batches durable).
        let first = match wait {
            false => None,
            true if pipe.idle() && !stopping && !pipe.stopped => {
                next_job(&db, &rx, &mut cx.wal, &metrics)
            }
            true => rx.recv().ok(),
        };
        if wait && first.is_none() {
            // Every sender is gone, the log threads' too: nothing more can arrive.
            break;
        }
        // That, and everything else queued so far.
        let queued_now = first
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()));
        for job in queued_now {
            take(
                job,
                &mut backlog,
                &mut pipe,
                &mut cx,
                &mut stopping,
                &queued,
                &metrics,
            );
        }
        pipe.recover(&db, &mut cx.wal, &metrics);
        if pipe.stopped && !stopped.swap(true, Ordering::AcqRel) {
            // redb makes its pending non-durable commits durable when the last handle to the
            // database closes, which would bring back the batches just reported failed. This
            // handle is never dropped, so redb never closes: the next start recovers the
            // file as after a crash (the last checkpoint, then the log up to the failed
            // record).
            std::mem::forget(Arc::clone(&db));
            metrics.storage_stopped.set(1);
        }
        cx.release(&mut pipe);
        wait = false;
        if !backlog.is_empty() && (pipe.can_start() || pipe.stopped) {
            let n = backlog.len().min(max_batch);
            queued.fetch_sub(n, Ordering::AcqRel);
            metrics.write_queue_depth.dec_by(n as i64);
            let (ops, dones): (Vec<_>, Vec<_>) = backlog.drain(..n).unzip();
            commit_batch(&mut cx, &mut pipe, ops, dones);
            cx.release(&mut pipe);
            continue;
        }
        if stopping && backlog.is_empty() && pipe.idle() {
            break;
        }
        wait = true;
    }
    pipe.log.stop();
    // A clean stop leaves nothing for the next start to replay.
    if cx.wal.has_pending() && !pipe.stopped {
        checkpoint(&db, &mut cx.wal, &metrics);
    }
}

/// Files one job from the queue: a write joins the backlog (or is refused once stopping),
/// a log write's end marks its batch.
fn take(
    job: Job,
    backlog: &mut VecDeque<(WriteOp, Completion)>,
    pipe: &mut Pipeline,
    cx: &mut Ctx<'_>,
    stopping: &mut bool,
    queued: &AtomicUsize,
    metrics: &Metrics,
) {
    match job {
        Job::Write(op, done) if !*stopping => backlog.push_back((op, done)),
        Job::Write(_, done) => {
            // It raced with the stop: refuse it rather than leave its caller waiting.
            queued.fetch_sub(1, Ordering::AcqRel);
            metrics.write_queue_depth.dec();
            done(Err(StoreError::Closed));
        }
        Job::Logged {
            thread,
            slot,
            result,
            buf,
        } => pipe.logged(thread, slot, result, buf, &mut cx.wal),
        Job::Stop => *stopping = true,
    }
}

/// Waits for the next job. While the log covers commits that redb has not made durable, the
/// wait ends when a checkpoint falls due, and an idle writer checkpoints then, so no write
/// waits for it. `None` when every sender is gone.
fn next_job(db: &Database, rx: &Receiver<Job>, wal: &mut Wal, metrics: &Metrics) -> Option<Job> {
    loop {
        if wal.checkpoint_due() {
            match rx.try_recv() {
                Ok(job) => return Some(job),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {
                    checkpoint(db, wal, metrics);
                }
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
/// Only with no log write running: a late one could land on the log's new start.
fn checkpoint(db: &Database, wal: &mut Wal, metrics: &Metrics) -> bool {
    let started = Instant::now();
    let done = (|| -> Result<(), StoreError> {
        #[cfg(test)]
        if wal.checkpoint_fails() {
            return Err(StoreError::Io(std::io::Error::other(
                "injected checkpoint failure",
            )));
        }
        let txn = db.begin_write()?;
        set_log_position(&txn, wal.next().0, 0)?;
        txn.commit()?;
        Ok(())
    })();
    metrics
        .checkpoint_seconds
        .observe(started.elapsed().as_secs_f64());
    match done {
        Ok(()) => {
            wal.checkpointed();
            true
        }
        Err(e) => {
            wal.checkpoint_failed();
            tracing::error!(error = %e, "storage checkpoint failed; retrying in a second");
            false
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

/// Applies every op of a batch in one transaction (its inserts encoded into the log record and
/// kept aside, see `Logged`), hands the record to a log thread, then makes the inserts and
/// commits the transaction without an fsync while the record is written; the batch's
/// completions run once both are done. A storage failure before the hand-off fails the whole
/// batch (nothing of it is committed); one after it stops the store (see the end); a logical
/// refusal (not found, forbidden, conflict) fails only its op, which checks before it
/// writes, so it leaves nothing behind. When the log is full (or in doubt after a failure)
/// the transaction commits durably instead: a checkpoint, which also makes every batch
/// still waiting for its record durable.
fn commit_batch(cx: &mut Ctx<'_>, pipe: &mut Pipeline, ops: Vec<WriteOp>, dones: Vec<Completion>) {
    let started = Instant::now();
    let n = ops.len();
    if pipe.stopped {
        pipe.push(
            SlotState::Ready,
            Publish::Keep,
            dones,
            stopped_results(n),
            started,
        );
        return;
    }
    // Below the free-space floor nothing is written (a barrier writes nothing, so catch-up
    // still works): the writes fail as `DiskFull`, and the next batch after space comes
    // back commits as usual.
    if !ops.iter().all(|op| matches!(op, WriteOp::Barrier)) {
        let (full, changed) = cx.disk.full();
        if changed {
            cx.metrics.storage_disk_full.set(i64::from(full));
            if full {
                tracing::error!(
                    "the disk is nearly full (storage.min_free_disk_bytes): writes are refused until space is freed"
                );
            } else {
                tracing::warn!(
                    "disk space is back above storage.min_free_disk_bytes: writes resume"
                );
            }
        }
        if full {
            let results = (0..n).map(|_| Err(StoreError::DiskFull)).collect();
            pipe.push(SlotState::Ready, Publish::Keep, dones, results, started);
            return;
        }
    }
    let fail_all = |pipe: &mut Pipeline, dones, e: StoreError| {
        tracing::error!(error = %e, writes = n, "storage commit failed");
        let msg = e.to_string();
        let results = (0..n)
            .map(|_| Err(StoreError::Io(std::io::Error::other(msg.clone()))))
            .collect();
        pipe.push(SlotState::Ready, Publish::Keep, dones, results, started);
    };
    cx.record.borrow_mut().clear();
    let txn = match cx.db.begin_write() {
        Ok(t) => t,
        Err(e) => return fail_all(pipe, dones, e.into()),
    };
    let (results, mut tables) = match apply_all(&txn, &mut cx.ids, ops, &cx.record) {
        Ok(r) => r,
        // The transaction aborts as it is dropped (its tables borrow it until then). Ids
        // handed out to the aborted writes are skipped: gaps are harmless.
        Err(e) => return fail_all(pipe, dones, e),
    };
    if cx.record.borrow().is_empty() {
        // Nothing changed (reads, refusals, barriers): nothing to make durable, but the
        // completions still wait for every earlier batch's.
        drop(tables);
        let _ = txn.abort();
        pipe.push(SlotState::Ready, Publish::Keep, dones, results, started);
        return;
    }
    let Some(next) = cx.wal.after(&cx.record.borrow()) else {
        // The log is full: a durable commit, which starts it over.
        let applied = tables.apply_deferred();
        drop(tables);
        if let Err(e) = applied.and_then(|()| set_log_position(&txn, cx.wal.next().0, 0)) {
            let _ = txn.abort();
            return fail_all(pipe, dones, e);
        }
        if let Err(e) = txn.commit() {
            return fail_all(pipe, dones, e.into());
        }
        let publish = snapshot(cx.db, pipe);
        cx.wal.checkpointed();
        pipe.covered();
        pipe.push(SlotState::Ready, publish, dones, results, started);
        return;
    };
    // The record's write starts before redb's inserts and commit (and before the commit notes
    // where the next record goes), which then run while the disk works: they are most of the
    // writer's time per batch. No completion runs before both.
    let buf = pipe.spare.pop().unwrap_or_default();
    let write = cx.wal.stage(&mut cx.record.borrow_mut(), buf);
    let slot = pipe.push(SlotState::Writing, Publish::Keep, dones, results, started);
    if pipe.log.submit(slot, write) {
        // On one core the log thread would otherwise start its write only once this thread
        // waits, after the commit; elsewhere this returns at once.
        std::thread::yield_now();
    } else {
        tracing::error!("write-ahead log threads are gone");
        cx.wal.write_failed();
        if let Some(s) = pipe.slots.back_mut() {
            s.state = SlotState::LogFailed;
        }
    }
    let applied = tables.apply_deferred();
    drop(tables);
    match applied.and_then(|()| commit(txn, &cx.wal, next)) {
        Ok(()) => {
            cx.wal.committed();
            let publish = snapshot(cx.db, pipe);
            if let Some(s) = pipe.slots.back_mut() {
                s.publish = publish;
            }
        }
        Err(e) => {
            // The record may reach the disk, and a restart would replay it onto a state
            // without this batch's inserts or commit: nothing may commit after it. Its writes
            // stand or fall with the record; every later write fails until a restart.
            tracing::error!(error = %e, writes = n, "storage commit failed while its log record was written; storage stopped");
            pipe.stopped = true;
            if let Some(s) = pipe.slots.back_mut() {
                s.uncommitted = true;
                if s.state == SlotState::LogFailed {
                    s.state = SlotState::Ready;
                    s.results = stopped_results(n);
                }
            }
        }
    }
}

/// Commits a batch's transaction without an fsync, noting `next`, where the record after the
/// batch's goes. Tests can make it fail, as redb would on an I/O error.
fn commit(
    mut txn: WriteTransaction,
    #[cfg_attr(not(test), allow(unused_variables))] wal: &Wal,
    (next_seq, next_pos): (u64, u64),
) -> Result<(), StoreError> {
    #[cfg(test)]
    if wal.commit_fails() {
        let _ = txn.abort();
        return Err(StoreError::Io(std::io::Error::other(
            "injected commit failure",
        )));
    }
    txn.set_durability(Durability::None)?;
    set_log_position(&txn, next_seq, next_pos)?;
    txn.commit().map_err(StoreError::from)
}

/// What reads see once a batch just committed is released: its own snapshot, or, when that
/// cannot be taken now, one taken at its release with nothing committed after it.
fn snapshot(db: &Arc<Database>, pipe: &mut Pipeline) -> Publish {
    match View::new(db) {
        Ok(v) => Publish::View(v),
        Err(e) => {
            tracing::warn!(error = %e, "storage could not take a read snapshot after a commit; retrying at its release");
            pipe.hold = true;
            Publish::Fresh
        }
    }
}

/// A table whose every change is also encoded into the batch's log record, opened on first
/// use: a batch of messages touches four of the fifteen tables, and redb charges every open
/// table a lookup at open and a root check at commit (a fifth of the writer's time per batch).
/// Reads go through `get` and `range`; writes only through `insert` and `remove` here.
///
/// Inserts reach redb late: `insert` encodes the change into the log record at once but only
/// keeps it here, and `apply_deferred` makes it in redb once the batch's log write has started
/// (`commit_batch`). redb's part of an insert (copying the leaf and branch pages it changes)
/// was over half of the writer's work before the write; now it runs while the disk works.
/// Changes to different keys commute, so only a read or removal of a key with a deferred
/// insert, or a range read, applies the table's deferred inserts first.
struct Logged<'t, 'r, K: Key + 'static, V: Value + 'static> {
    txn: &'t WriteTransaction,
    def: TableDefinition<'static, K, V>,
    table: Option<Table<'t, K, V>>,
    number: u8,
    log: &'r RefCell<Record>,
    /// Inserts not yet made in redb, in order: `[key len: u32][value len: u32][key][value]`.
    deferred: Vec<u8>,
    /// Hashes of their keys (`key_hash`). A collision only applies them sooner than needed.
    deferred_keys: HashSet<u64, BuildHasherDefault<Prehashed>>,
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
            deferred: Vec::new(),
            deferred_keys: HashSet::default(),
        }
    }

    /// Applies the deferred inserts when one of them is for `key`.
    fn settle(&mut self, key: &[u8]) -> Result<(), StoreError> {
        if !self.deferred.is_empty() && self.deferred_keys.contains(&key_hash(key)) {
            self.apply_deferred()?;
        }
        Ok(())
    }

    /// Makes the deferred inserts in redb, in the order they were made.
    fn apply_deferred(&mut self) -> Result<(), StoreError> {
        if self.deferred.is_empty() {
            return Ok(());
        }
        let deferred = std::mem::take(&mut self.deferred);
        self.deferred_keys.clear();
        let table = self.table()?;
        let mut rest = &deferred[..];
        while let Some((lens, tail)) = rest.split_first_chunk::<8>() {
            let [k0, k1, k2, k3, v0, v1, v2, v3] = *lens;
            let klen = u32::from_le_bytes([k0, k1, k2, k3]) as usize;
            let vlen = u32::from_le_bytes([v0, v1, v2, v3]) as usize;
            let (key, tail) = tail.split_at(klen);
            let (value, tail) = tail.split_at(vlen);
            table.insert(K::from_bytes(key), V::from_bytes(value))?;
            rest = tail;
        }
        // Keep the buffer's capacity for the next inserts of this batch.
        self.deferred = deferred;
        self.deferred.clear();
        Ok(())
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
        let key = key.borrow();
        self.settle(K::as_bytes(key).as_ref())?;
        Ok(self.table()?.get(key)?)
    }

    fn range<'k, KR>(
        &mut self,
        range: impl RangeBounds<KR> + 'k,
    ) -> Result<redb::Range<'_, K, V>, StoreError>
    where
        KR: Borrow<K::SelfType<'k>> + 'k,
    {
        self.apply_deferred()?;
        Ok(self.table()?.range(range)?)
    }

    fn insert<'k, 'v>(
        &mut self,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<(), StoreError> {
        let (key, value) = (K::as_bytes(key.borrow()), V::as_bytes(value.borrow()));
        let (key, value) = (key.as_ref(), value.as_ref());
        let (Ok(klen), Ok(vlen)) = (u32::try_from(key.len()), u32::try_from(value.len())) else {
            return Err(StoreError::Io(std::io::Error::other(
                "a key or value of 4 GiB or more",
            )));
        };
        self.log.borrow_mut().insert(self.number, key, value);
        self.deferred.extend_from_slice(&klen.to_le_bytes());
        self.deferred.extend_from_slice(&vlen.to_le_bytes());
        self.deferred.extend_from_slice(key);
        self.deferred.extend_from_slice(value);
        self.deferred_keys.insert(key_hash(key));
        Ok(())
    }

    /// Whether the key was there.
    fn remove<'k>(&mut self, key: impl Borrow<K::SelfType<'k>>) -> Result<bool, StoreError> {
        let key = key.borrow();
        self.settle(K::as_bytes(key).as_ref())?;
        let removed = self.table()?.remove(key)?.is_some();
        if removed {
            self.log
                .borrow_mut()
                .remove(self.number, K::as_bytes(key).as_ref());
        }
        Ok(removed)
    }
}

/// A cheap multiply-rotate hash of a key's bytes: it needs no resistance to chosen keys, as a
/// collision costs a few early inserts, never a wrong read.
fn key_hash(key: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = key.len() as u64;
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let word = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h.rotate_left(5) ^ word).wrapping_mul(K);
    }
    for &b in chunks.remainder() {
        h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
    }
    h
}

/// The hasher of a set of `key_hash` values, which are hashes already.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; anything else is hashed all the same.
        self.0 ^= key_hash(bytes);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
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
    room_heads: Logged<'t, 'r, u64, u64>,
}

impl Tables<'_, '_> {
    /// Makes every table's deferred inserts in redb.
    fn apply_deferred(&mut self) -> Result<(), StoreError> {
        self.meta.apply_deferred()?;
        self.messages.apply_deferred()?;
        self.dedup.apply_deferred()?;
        self.changes.apply_deferred()?;
        self.rooms.apply_deferred()?;
        self.members.apply_deferred()?;
        self.dms.apply_deferred()?;
        self.accounts.apply_deferred()?;
        self.users.apply_deferred()?;
        self.uploads.apply_deferred()?;
        self.settings.apply_deferred()?;
        self.invites.apply_deferred()?;
        self.blobs.apply_deferred()?;
        self.shares.apply_deferred()?;
        self.room_heads.apply_deferred()
    }
}

/// A batch's results, and its tables, whose inserts are still to be made in redb.
type Applied<'t, 'r> = (Vec<Result<WriteOutput, StoreError>>, Tables<'t, 'r>);

fn apply_all<'t, 'r>(
    txn: &'t WriteTransaction,
    ids: &mut IdGenerator,
    ops: Vec<WriteOp>,
    log: &'r RefCell<Record>,
) -> Result<Applied<'t, 'r>, StoreError> {
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
        room_heads: Logged::new(txn, ROOM_HEADS, n::ROOM_HEADS, log),
    };
    let last_before = ids.last();
    let mut results = Vec::with_capacity(ops.len());
    // (room, id) of each new message: the rooms' heads move once per batch, not per message.
    let mut appended = Vec::new();
    for op in ops {
        match apply(&mut t, ids, op) {
            Ok(out) => {
                if let WriteOutput::Appended {
                    message,
                    duplicate: false,
                    ..
                } = &out
                {
                    appended.push((message.room_id.0, message.id.0));
                }
                results.push(Ok(out))
            }
            Err(e @ (StoreError::NotFound | StoreError::Forbidden | StoreError::Conflict)) => {
                results.push(Err(e))
            }
            Err(e) => return Err(e),
        }
    }
    if ids.last() != last_before {
        t.meta.insert(META_LAST_ID, ids.last().0)?;
    }
    appended.sort_unstable();
    for (i, &(room, id)) in appended.iter().enumerate() {
        // Sorted by room, then id: the last of each room's run is its newest.
        if appended.get(i + 1).is_none_or(|next| next.0 != room) {
            t.room_heads.insert(room, id)?;
        }
    }
    Ok((results, t))
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

/// Records `user` as known if it is not yet, so that no account can be registered under a
/// name that already holds rooms (issue 24, point 1): a member is always a known user.
fn reserve_user(t: &mut Tables<'_, '_>, user: &UserId) -> Result<(), StoreError> {
    if t.users.get(&**user)?.is_none() {
        let u = User::new(user.clone(), user.to_string());
        t.users.insert(&**user, encode(&u).as_slice())?;
    }
    Ok(())
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
            // `created_at` is the clock, not the id's time: after the clock is set back the id
            // keeps rising from the last one issued, and its time part stands still.
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
                created_at: now,
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
                created_at: now,
            };
            reserve_user(t, &owner)?;
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
            reserve_user(t, &user)?;
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
                    let now = now_ms();
                    let id = ids.next(now);
                    let room = Room {
                        id,
                        name: String::new(),
                        topic: String::new(),
                        visibility: Visibility::Private,
                        kind: RoomKind::Dm,
                        created_by: a.clone(),
                        created_at: now,
                    };
                    t.rooms.insert(id.0, encode(&room).as_slice())?;
                    t.dms.insert((&*lo, &*hi), id.0)?;
                    room
                }
            };
            let mut added = Vec::new();
            for user in [lo, hi] {
                if t.members.get((room.id.0, &*user))?.is_none() {
                    reserve_user(t, &user)?;
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
