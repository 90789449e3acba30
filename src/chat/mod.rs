//! The chat hub: rooms and membership rules, local connections, fan-out, the message flow.
//!
//! The hub keeps rooms, members and display names in memory (loaded from the store at start)
//! and changes them only in store completions, on the writer thread, so memory follows commit
//! order. It knows no transport: connections are `Outbox`es of encoded frames.

mod admin;
pub mod auth_limits;
mod error;
pub mod limits;
mod live;
mod outbox;
mod receipts;
mod sync;
mod validate;

pub use admin::AdminSettings;
pub use error::ChatError;
pub use outbox::{BulkWaker, CloseRequest, Frame, Outbox, Pushed};
pub use receipts::MessageReceipts;
pub use sync::SyncAnswer;

use crate::config::{Limits, PresenceConfig, RateLimits};
use crate::files::Files;
use crate::metrics::Metrics;
use crate::model::{
    Blob, Id, Member, Message, MessageType, Role, Room, RoomKind, THUMBNAIL_TYPES, Upload, User,
    UserId, Visibility,
};
use crate::protocol::{self, WireError};
use crate::search::Search;
use crate::store::{Store, WriteOp, WriteOutput};
use bytes::Bytes;
use parking_lot::RwLock;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A room as clients see it: the record plus its member count (and, in `list_rooms`, the
/// caller's unread count and read watermark).
#[derive(Debug, Clone, Serialize)]
pub struct RoomInfo {
    #[serde(flatten)]
    pub room: Room,
    pub member_count: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_up_to: Option<Id>,
}

/// A member as clients see it: with the display name.
#[derive(Debug, Clone, Serialize)]
pub struct MemberInfo {
    pub user_id: UserId,
    pub name: String,
    pub role: Role,
    pub joined_at: u64,
    pub presence: &'static str,
    pub last_seen: Option<u64>,
}

/// The answer to a send: the stored message, and whether it was a retry of an earlier send.
#[derive(Debug, Clone, Serialize)]
pub struct SendAck {
    pub message: Message,
    pub duplicate: bool,
}

/// One search result: the message as stored now, its room, and a snippet.
#[derive(Debug, Serialize)]
pub struct SearchHit {
    pub message: Message,
    pub room: SearchRoom,
    pub snippet: String,
    pub highlights: Vec<[usize; 2]>,
}

#[derive(Debug, Serialize)]
pub struct SearchRoom {
    pub id: Id,
    pub name: String,
    pub kind: RoomKind,
}

/// A page of search results.
#[derive(Debug, Serialize)]
pub struct SearchAnswer {
    pub hits: Vec<SearchHit>,
    pub next_cursor: Option<String>,
    pub took_ms: u64,
}

/// A page of history, newest first.
#[derive(Debug, Serialize)]
pub struct HistoryPage {
    pub messages: Vec<Message>,
    pub has_more: bool,
}

/// Where the answer to a send goes once it is durable.
pub enum Reply {
    /// Straight into a connection's queue, ahead of the broadcast: sends pipeline without the
    /// connection waiting for each commit. The send counts as in flight on the connection
    /// until its ack (or error) is queued, so that the connection's next other request waits
    /// for it (`Connection::settled`).
    Socket {
        send: InFlight,
        reference: Option<String>,
    },
    /// To a waiting caller (REST).
    Channel(tokio::sync::oneshot::Sender<Result<SendAck, ChatError>>),
}

/// A send request, already parsed.
pub struct NewMessage {
    pub room_id: Id,
    pub client_msg_id: String,
    pub kind: String,
    pub content: String,
    /// An upload to share (`file` and `image` messages).
    pub file_id: Option<Id>,
}

/// Unread counts stop at this (clients show "9999+").
const UNREAD_CAP: usize = 10_000;

/// Each user's open connections on this node, by connection id.
type LocalConnections = HashMap<UserId, Vec<(u64, Arc<Outbox>)>>;

struct RoomEntry {
    room: Room,
    members: HashMap<UserId, Member>,
    /// Newest message id in the room: receipts never point past it. Atomic so that the send
    /// path moves it under the state's read lock.
    last_message: AtomicU64,
    /// The outboxes of the members' live local connections, built on the first broadcast
    /// after a change, so a broadcast walks one slice instead of looking up every member.
    /// Cleared when membership changes here, or when a member's connections change.
    recipients: parking_lot::Mutex<Option<Arc<[Arc<Outbox>]>>>,
}

impl RoomEntry {
    fn last_message(&self) -> Id {
        Id(self.last_message.load(Ordering::Acquire))
    }

    fn info(&self) -> RoomInfo {
        RoomInfo {
            room: self.room.clone(),
            member_count: self.members.len(),
            unread_count: None,
            read_up_to: None,
        }
    }

    fn new(room: Room) -> Self {
        Self {
            room,
            members: HashMap::new(),
            last_message: AtomicU64::new(0),
            recipients: parking_lot::Mutex::new(None),
        }
    }

    fn forget_recipients(&self) {
        *self.recipients.lock() = None;
    }
}

#[derive(Default)]
struct State {
    rooms: HashMap<Id, RoomEntry>,
    user_rooms: HashMap<UserId, HashSet<Id>>,
    users: HashMap<UserId, User>,
}

impl State {
    fn add_member(&mut self, room: Id, m: Member) {
        if let Some(r) = self.rooms.get_mut(&room) {
            self.user_rooms
                .entry(m.user_id.clone())
                .or_default()
                .insert(room);
            r.members.insert(m.user_id.clone(), m);
            r.forget_recipients();
        }
    }

    fn remove_member(&mut self, room: Id, user: &UserId) {
        if let Some(r) = self.rooms.get_mut(&room) {
            r.members.remove(user);
            r.forget_recipients();
        }
        if let Some(set) = self.user_rooms.get_mut(user) {
            set.remove(&room);
        }
    }

    fn info(&self, room: Id) -> Option<RoomInfo> {
        self.rooms.get(&room).map(RoomEntry::info)
    }

    fn name_of(&self, user: &UserId) -> String {
        self.users
            .get(user)
            .map(|u| u.name.clone())
            .unwrap_or_else(|| user.to_string())
    }

    fn rooms_of(&self, user: &UserId) -> usize {
        self.user_rooms.get(user).map_or(0, HashSet::len)
    }
}

/// A connection registered with the hub. It receives room events once it is live: at once,
/// or (for a catching-up connection) when its `sync` completes.
pub struct Connection {
    pub id: u64,
    pub user: UserId,
    pub outbox: Arc<Outbox>,
    live: std::sync::atomic::AtomicBool,
    messages: limits::Bucket,
    typing: limits::Bucket,
    /// Sends submitted on this connection whose ack (or error) is not queued yet.
    in_flight: std::sync::atomic::AtomicU32,
    /// Signalled when `in_flight` drops to zero; only the connection's reader waits on it.
    settled: tokio::sync::Notify,
}

/// One send in flight on a connection: taken before the send is submitted, dropped once its
/// ack or error is queued (or with the send, if it never reaches storage), so the count can
/// never stay up and hold the connection's next request forever.
pub struct InFlight(Arc<Connection>);

impl InFlight {
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.0.outbox
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            // A stored permit if the reader is not waiting: its loop checks the count again.
            self.0.settled.notify_one();
        }
    }
}

impl Connection {
    /// Counts a send as in flight until the returned guard drops (see `InFlight`).
    pub fn begin_send(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Resolves once every send submitted on this connection so far has its ack or error
    /// queued, and so is durable and visible to reads: replies then leave in the order the
    /// requests arrived, and a read sees the writes sent before it. At once when none is in
    /// flight (the usual case).
    pub async fn settled(&self) {
        while self.in_flight.load(Ordering::Acquire) != 0 {
            self.settled.notified().await;
        }
    }

    /// Takes a message token from this connection's bucket (sends, edits, deletes).
    pub fn take_message_token(&self) -> Result<(), ChatError> {
        self.messages.take()
    }

    /// Takes a typing token from this connection's bucket.
    pub fn take_typing_token(&self) -> Result<(), ChatError> {
        self.typing.take()
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }
}

/// The hub. Shared as `Arc<Hub>`.
pub struct Hub {
    store: Store,
    files: Files,
    search: Search,
    admin: RwLock<admin::AdminState>,
    user_uploads: limits::UserBuckets,
    metrics: Arc<Metrics>,
    limits: Limits,
    rate: RateLimits,
    presence_cfg: PresenceConfig,
    user_messages: limits::UserBuckets,
    user_joins: limits::UserBuckets,
    live: parking_lot::Mutex<live::LiveState>,
    state: RwLock<State>,
    // Lock order: `state` before `conns`, never the other way.
    conns: RwLock<LocalConnections>,
    next_conn: AtomicU64,
    /// Connections still catching up (not in `conns` yet), so shutdown reaches them too.
    catching_up: parking_lot::Mutex<HashMap<u64, Arc<Outbox>>>,
    /// New messages' frames and acks of the batch being completed: see `Held`.
    fanout: parking_lot::Mutex<Held>,
    /// Wakes the writers of a batch's recipients together, on the runtime.
    waker: BulkWaker,
}

/// What the writer thread holds back until a batch ends (or the next effect runs).
#[derive(Default)]
struct Held {
    /// New messages' `receive_message` frames, in commit order, fanned out per room: see
    /// `flush_fanout`.
    frames: Vec<(Id, Bytes)>,
    /// Outboxes given frames (acks, the fan-out) whose writers are not woken yet: they are
    /// woken together when the held frames go out, so that the runtime writes them in one run.
    wake: Vec<Arc<Outbox>>,
    /// New messages for the search index, noted after the wake-ups: noting one can wake the
    /// indexer thread, which would otherwise run before the fan-out on a single core.
    index: Vec<Message>,
}

#[derive(Serialize)]
struct RoomEvent<'a> {
    room: &'a RoomInfo,
}

/// `receive_message`: the stored JSON of the message.
#[derive(Serialize)]
struct MessageEvent<'a> {
    message: &'a serde_json::value::RawValue,
}

/// A `SendAck` on the wire, with the stored JSON of the message.
#[derive(Serialize)]
struct SendAckFrame<'a> {
    message: &'a serde_json::value::RawValue,
    duplicate: bool,
}

impl Hub {
    /// Builds the hub over an opened store, loading rooms, members and users into memory.
    pub fn new(
        store: Store,
        files: Files,
        search: Search,
        config: &crate::config::Config,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, ChatError> {
        let registration = config.auth.registration();
        let limits = config.limits.clone();
        let rate = config.rate_limits.clone();
        let presence_cfg = config.presence.clone();
        let snap = store.snapshot()?;
        let mut state = State::default();
        for (room, members, newest) in snap.rooms {
            let id = room.id;
            let mut entry = RoomEntry::new(room);
            entry.last_message = AtomicU64::new(newest.0);
            state.rooms.insert(id, entry);
            for m in members {
                state.add_member(id, m);
            }
        }
        for u in snap.users {
            state.users.insert(u.id.clone(), u);
        }
        let settings = store.server_settings_blocking()?;
        let hub = Arc::new(Self {
            store,
            files,
            search,
            admin: RwLock::new(admin::AdminState::new(settings, registration)),
            user_uploads: limits::UserBuckets::new(rate.uploads_per_sec, rate.uploads_burst),
            metrics,
            user_messages: limits::UserBuckets::new(
                rate.user_messages_per_sec,
                rate.user_messages_burst,
            ),
            user_joins: limits::UserBuckets::new(rate.joins_per_sec, rate.joins_burst),
            rate,
            presence_cfg,
            live: parking_lot::Mutex::new(live::LiveState::default()),
            limits,
            state: RwLock::new(state),
            conns: RwLock::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            catching_up: parking_lot::Mutex::new(HashMap::new()),
            fanout: parking_lot::Mutex::new(Held::default()),
            waker: BulkWaker::start(),
        });
        hub.start_fanout();
        Ok(hub)
    }

    /// Registers the per-batch fan-out with the store's writer (by `new`: a hub without it
    /// would hold new messages until the next write effect).
    fn start_fanout(self: &Arc<Self>) {
        let hub = Arc::downgrade(self);
        self.store.set_after_batch(Box::new(move || {
            if let Some(hub) = hub.upgrade() {
                hub.flush_fanout();
            }
        }));
    }

    /// Delivers the new messages held for fan-out: each room's frames go to each of its
    /// recipients in one push (one lock, one wake-up), instead of one push per message. Runs on
    /// the writer thread at the end of every batch and before every write effect, so that
    /// everything the writer thread sends still follows commit order; the lock is held while
    /// pushing, so flushes never interleave.
    fn flush_fanout(&self) {
        self.flush_held(&mut self.fanout.lock());
    }

    fn flush_held(&self, held: &mut Held) {
        let Held {
            frames: pending,
            wake,
            index,
        } = held;
        if pending.is_empty() {
            self.waker.wake(wake);
            self.note_for_search(index);
            return;
        }
        // Stable: each room's frames stay in commit order.
        pending.sort_by_key(|(room, _)| room.0);
        let mut at = 0;
        while at < pending.len() {
            let room = pending[at].0;
            let run = pending[at..].iter().take_while(|(r, _)| *r == room).count();
            // The room's frames of this batch, back to back in one buffer: each recipient
            // then takes one reference (one atomic increment, one iovec) instead of one per
            // message. Fan-out at in-flight 64 moves about five messages per room per batch.
            let frames = match &pending[at..at + run] {
                [(_, one)] => Frame::Payload(one.clone()),
                several => Frame::Wire {
                    bytes: crate::protocol::ws_frame::text_frames(
                        several.iter().map(|(_, f)| &f[..]),
                    ),
                    frames: run,
                },
            };
            at += run;
            let recipients = {
                let state = self.state.read();
                match state.rooms.get(&room) {
                    Some(r) => self.recipients(r),
                    None => continue,
                }
            };
            // One allocation per batch for the wake-up list, not one growth step per doubling.
            wake.reserve(recipients.len());
            for ob in recipients.iter() {
                match ob.push_frame_deferred(frames.clone()) {
                    (Pushed::Overflowed, _) => {
                        self.metrics.slow_consumer_closes.inc();
                    }
                    (_, true) => wake.push(ob.clone()),
                    _ => {}
                }
            }
            self.metrics
                .deliveries
                .inc_by((recipients.len() * run) as u64);
        }
        pending.clear();
        if pending.capacity() > 4096 {
            *pending = Vec::new();
        }
        self.waker.wake(wake);
        self.note_for_search(index);
    }

    /// Hands held new messages to the indexer, in commit order (before any later effect's
    /// edit or deletion, since every effect flushes first).
    fn note_for_search(&self, index: &mut Vec<Message>) {
        for m in index.drain(..) {
            self.search.note_new_message(m);
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn files(&self) -> &Files {
        &self.files
    }

    /// Takes an upload token from the user's bucket.
    pub fn take_upload_token(&self, user: &UserId) -> Result<(), ChatError> {
        self.user_uploads.take(user)
    }

    /// An upload `user` may download: theirs (until a deletion hid it), or shared by a live
    /// message in a room they are a member of now. Anything else is `not_found`, exactly as
    /// for an id that does not exist.
    pub async fn downloadable(&self, user: &UserId, file: Id) -> Result<(Upload, Blob), ChatError> {
        let (upload, blob) = self
            .store
            .upload(file)
            .await?
            .filter(|(u, _)| u.hidden_at.is_none())
            .ok_or(ChatError::NotFound("file"))?;
        if upload.uploader_id == *user {
            return Ok((upload, blob));
        }
        let rooms = self.store.rooms_sharing(file, 10_000).await?;
        if rooms.iter().any(|r| self.is_member(*r, user).is_some()) {
            return Ok((upload, blob));
        }
        Err(ChatError::NotFound("file"))
    }

    /// How many connections `user` has open, for the per-user cap.
    /// Records in the metrics how many users each per-user rate limiter remembers.
    pub fn sample_limiters(&self) {
        self.metrics
            .limiter_keys("user_messages", self.user_messages.len());
        self.metrics
            .limiter_keys("user_joins", self.user_joins.len());
        self.metrics
            .limiter_keys("user_uploads", self.user_uploads.len());
    }

    pub fn connection_count(&self, user: &UserId) -> usize {
        self.live.lock().connections(user)
    }

    /// Registers a connection for `user`, remembers their display name and marks them online.
    /// `greeting(connection id)` is queued first, before the connection can receive any room
    /// event. A `catching_up` connection gets no room events until its `sync` completes.
    pub fn connect(
        self: &Arc<Self>,
        user: &UserId,
        name: &str,
        catching_up: bool,
        greeting: impl FnOnce(u64) -> Bytes,
    ) -> Arc<Connection> {
        self.remember_name(user, name);
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Connection {
            id,
            user: user.clone(),
            outbox: Arc::new(Outbox::new(self.limits.outbound_queue_bytes)),
            live: std::sync::atomic::AtomicBool::new(false),
            messages: limits::Bucket::new(self.rate.messages_per_sec, self.rate.messages_burst),
            typing: limits::Bucket::new(self.rate.typing_per_sec, self.rate.typing_burst),
            in_flight: std::sync::atomic::AtomicU32::new(0),
            settled: tokio::sync::Notify::new(),
        });
        conn.outbox.push(greeting(id));
        if catching_up {
            self.catching_up.lock().insert(conn.id, conn.outbox.clone());
        } else {
            self.go_live(&conn);
        }
        self.user_connected(user);
        conn
    }

    /// Starts room events for a connection (at connect, or when its catch-up completes).
    fn go_live(&self, conn: &Connection) {
        if conn.live.swap(true, Ordering::AcqRel) {
            return;
        }
        self.catching_up.lock().remove(&conn.id);
        self.conns
            .write()
            .entry(conn.user.clone())
            .or_default()
            .push((conn.id, conn.outbox.clone()));
        self.forget_recipients_of(&conn.user);
    }

    /// After `user`'s connections changed: their rooms rebuild their recipient lists. Runs
    /// after the `conns` write is released; a broadcast builds its list while holding `conns`
    /// for reading, so a list built from the old connections is always cleared here after.
    fn forget_recipients_of(&self, user: &UserId) {
        let state = self.state.read();
        if let Some(rooms) = state.user_rooms.get(user) {
            for room in rooms {
                if let Some(r) = state.rooms.get(room) {
                    r.forget_recipients();
                }
            }
        }
    }

    /// Forgets a connection; the user goes offline after the grace if it was their last.
    pub fn disconnect(&self, conn: &Connection) {
        self.catching_up.lock().remove(&conn.id);
        {
            let mut conns = self.conns.write();
            if let Some(list) = conns.get_mut(&conn.user) {
                list.retain(|(id, _)| *id != conn.id);
                if list.is_empty() {
                    conns.remove(&conn.user);
                }
            }
        }
        self.forget_recipients_of(&conn.user);
        self.user_disconnected(&conn.user);
    }

    /// For shutdown: waits until every write already queued is durable and its ack and
    /// broadcast are queued, then asks every connection to close after what it has queued.
    pub async fn drain_and_close(&self, code: u16, reason: &'static str) {
        if let Err(e) = self.store.write(WriteOp::Barrier).await {
            tracing::warn!(error = %e, "storage did not drain before shutdown");
        }
        // The barrier completed after every earlier send; `close_all` delivers what is held.
        self.close_all(code, reason);
    }

    /// Asks every connection to close after what is already queued.
    pub fn close_all(&self, code: u16, reason: &'static str) {
        // Held fan-out goes out first, and no send completes (ack and fan-out are queued under
        // this lock) while connections are being closed: no ack without its broadcast.
        self.flush_held(&mut self.fanout.lock());
        for ob in self.catching_up.lock().values() {
            ob.close(code, reason);
        }
        for list in self.conns.read().values() {
            for (_, ob) in list {
                ob.close(code, reason);
            }
        }
    }

    /// Stores a display name the first time it is seen or when it changes.
    pub fn remember_name(self: &Arc<Self>, user: &UserId, name: &str) {
        let u = {
            let st = self.state.read();
            match st.users.get(user) {
                Some(u) if u.name == name => return,
                Some(u) => User {
                    name: name.to_owned(),
                    ..u.clone()
                },
                None => User::new(user.clone(), name.to_owned()),
            }
        };
        self.save_user(u);
    }

    /// Persists a user record, then updates memory.
    fn save_user(self: &Arc<Self>, u: User) {
        let hub = self.clone();
        let saved = u.clone();
        let res = self.store.submit(
            WriteOp::SaveUser(u),
            Box::new(move |r| {
                if r.is_ok() {
                    hub.state.write().users.insert(saved.id.clone(), saved);
                }
            }),
        );
        if let Err(e) = res {
            tracing::warn!(error = %e, "could not save a user record");
        }
    }

    /// A user's settings as clients see them.
    pub fn settings(&self, user: &UserId) -> serde_json::Value {
        let private = self
            .state
            .read()
            .users
            .get(user)
            .is_some_and(|u| u.private_receipts);
        serde_json::json!({ "private_receipts": private })
    }

    /// Changes a user's settings (durably) and returns them.
    pub async fn set_settings(
        self: &Arc<Self>,
        user: &UserId,
        private_receipts: Option<bool>,
    ) -> Result<serde_json::Value, ChatError> {
        if let Some(p) = private_receipts {
            let u = {
                let st = self.state.read();
                let mut u = st
                    .users
                    .get(user)
                    .cloned()
                    .unwrap_or_else(|| User::new(user.clone(), user.to_string()));
                u.private_receipts = p;
                u
            };
            let saved = u.clone();
            self.write_then(WriteOp::SaveUser(u), move |hub, _| {
                hub.state.write().users.insert(saved.id.clone(), saved);
            })
            .await?;
        }
        Ok(self.settings(user))
    }

    fn is_member(&self, room: Id, user: &UserId) -> Option<Role> {
        self.state
            .read()
            .rooms
            .get(&room)
            .and_then(|r| r.members.get(user))
            .map(|m| m.role)
    }

    fn require_member(&self, room: Id, user: &UserId) -> Result<Role, ChatError> {
        self.is_member(room, user)
            .ok_or(ChatError::NotFound("room"))
    }

    /// Sends one frame, serialized once, to every connection of every member of `room`.
    fn broadcast(&self, room: Id, frame: &Bytes) {
        let state = self.state.read();
        let Some(r) = state.rooms.get(&room) else {
            return;
        };
        let recipients = self.recipients(r);
        drop(state);
        for ob in recipients.iter() {
            if ob.push(frame.clone()) == Pushed::Overflowed {
                self.metrics.slow_consumer_closes.inc();
            }
        }
        self.metrics.deliveries.inc_by(recipients.len() as u64);
    }

    /// The room's recipient list, built from `conns` if a change cleared it.
    fn recipients(&self, r: &RoomEntry) -> Arc<[Arc<Outbox>]> {
        let mut cached = r.recipients.lock();
        if let Some(list) = &*cached {
            return list.clone();
        }
        // Held while the list is stored: see `forget_recipients_of`.
        let conns = self.conns.read();
        let list: Arc<[Arc<Outbox>]> = r
            .members
            .keys()
            .filter_map(|u| conns.get(u))
            .flatten()
            .map(|(_, ob)| ob.clone())
            .collect();
        *cached = Some(list.clone());
        list
    }

    /// Sends one frame to every connection of one user.
    fn push_to_user(&self, user: &UserId, frame: &Bytes) {
        if let Some(list) = self.conns.read().get(user) {
            for (_, ob) in list {
                ob.push(frame.clone());
            }
        }
    }

    /// Submits a write; `effect` runs on the writer thread right after it is durable, before
    /// later writes complete, so in-memory state and fan-out follow commit order.
    async fn write_then(
        self: &Arc<Self>,
        op: WriteOp,
        effect: impl FnOnce(&Hub, &WriteOutput) + Send + 'static,
    ) -> Result<WriteOutput, ChatError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let hub = self.clone();
        self.store.submit(
            op,
            Box::new(move |res| {
                // Earlier messages of this batch reach everyone before this write's effect.
                hub.flush_fanout();
                if let Ok(out) = &res {
                    effect(&hub, out);
                }
                let _ = tx.send(res);
            }),
        )?;
        match rx.await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ChatError::Unavailable("server is shutting down")),
        }
    }

    // ---- the message flow ----

    /// `send_message` for any message: a message sharing a file first checks the upload (the
    /// sender's, of the right type) and waits, bounded, for its thumbnail so the message can
    /// carry it. The connection reads its next frame only after this returns, so sends stay
    /// in order.
    pub async fn send_any(
        self: &Arc<Self>,
        user: &UserId,
        msg: NewMessage,
        reply: Reply,
    ) -> Result<(), ChatError> {
        if let Some(fid) = msg.file_id {
            self.require_member(msg.room_id, user)?;
            let (upload, blob) = self
                .store
                .upload(fid)
                .await?
                .filter(|(u, _)| u.uploader_id == *user && u.hidden_at.is_none())
                .ok_or(ChatError::NotFound("file"))?;
            if msg.kind == "image" && !THUMBNAIL_TYPES.contains(&blob.mime.as_str()) {
                return Err(ChatError::Invalid(format!(
                    "an image message needs a JPEG, PNG, GIF or WebP upload, not {}; send it as type file",
                    blob.mime
                )));
            }
            let wait = std::time::Duration::from_millis(self.files.config().thumbnail_wait_ms);
            self.files.wait_thumbnail(&upload.sha256, wait).await;
        }
        self.send_message(user, msg, reply)
    }

    /// Validates and queues a message; the ack (to `reply`) and the broadcast to the room
    /// follow once it is durable. Errors found before storage are returned at once. A message
    /// sharing a file should come through `send_any`.
    pub fn send_message(
        self: &Arc<Self>,
        user: &UserId,
        msg: NewMessage,
        reply: Reply,
    ) -> Result<(), ChatError> {
        let kind = MessageType::from_client(&msg.kind).ok_or_else(|| {
            ChatError::Invalid(format!(
                "type must be text, file or image, not {:?}",
                msg.kind
            ))
        })?;
        validate::client_msg_id(&msg.client_msg_id)?;
        match (kind, msg.file_id) {
            (MessageType::Text, None) => {
                validate::content(&msg.content, self.limits.max_message_bytes)?
            }
            (MessageType::Text, Some(_)) => {
                return Err(ChatError::Invalid(
                    "a text message cannot carry a file_id; use type file or image".into(),
                ));
            }
            (_, None) => {
                return Err(ChatError::Invalid(
                    "a file or image message needs the file_id of an upload (POST /api/files)"
                        .into(),
                ));
            }
            (_, Some(_)) => validate::caption(&msg.content, self.limits.max_message_bytes)?,
        }
        self.require_member(msg.room_id, user)?;
        self.user_messages.take(user)?;
        let hub = self.clone();
        let op = WriteOp::AppendMessage {
            room: msg.room_id,
            sender: user.clone(),
            client_msg_id: msg.client_msg_id,
            kind,
            content: msg.content,
            file: msg.file_id,
        };
        self.store
            .submit(
                op,
                Box::new(move |res| {
                    // The only record an append looks up is the shared upload.
                    let res = res.map_err(|e| match ChatError::from(e) {
                        ChatError::NotFound(_) => ChatError::NotFound("file"),
                        other => other,
                    });
                    hub.complete_send(res, reply)
                }),
            )
            .map_err(ChatError::from)
    }

    fn complete_send(&self, res: Result<WriteOutput, ChatError>, reply: Reply) {
        let (ack, json) = match res {
            Ok(WriteOutput::Appended {
                message,
                json,
                duplicate,
            }) => (Ok(SendAck { message, duplicate }), Some(json)),
            Ok(_) => (
                Err(ChatError::Unavailable("unexpected storage answer")),
                None,
            ),
            Err(e) => (Err(e), None),
        };
        // The stored JSON is spliced into both frames: the message is serialized once.
        let fanout = match (&ack, &json) {
            (Ok(a), Some(json)) if !a.duplicate => Some((
                a.message.room_id,
                a.message.id,
                protocol::event("receive_message", &MessageEvent { message: json }),
            )),
            _ => None,
        };
        // The ack and the held fan-out are queued under one lock, so that `close_all` finds
        // a send either wholly visible or not at all. The sender hears its ack first.
        let mut held = self.fanout.lock();
        // Indexing is queued when the batch's fan-out is (see `Held::index`), never waited for.
        if let Ok(a) = &ack
            && !a.duplicate
        {
            held.index.push(a.message.clone());
        }
        match reply {
            Reply::Socket { send, reference } => {
                let outbox = send.outbox();
                let frame = match (&ack, &json) {
                    (Ok(a), Some(json)) => protocol::ack(
                        reference.as_deref(),
                        &SendAckFrame {
                            message: json,
                            duplicate: a.duplicate,
                        },
                    ),
                    (Ok(a), None) => protocol::ack(reference.as_deref(), a),
                    (Err(e), _) => protocol::error(reference.as_deref(), &self.wire_error(e)),
                };
                // Woken with the batch's fan-out: see `Held::wake`.
                match outbox.push_frame_deferred(Frame::Payload(frame)) {
                    (Pushed::Overflowed, _) => {
                        self.metrics.slow_consumer_closes.inc();
                    }
                    (_, true) => held.wake.push(outbox.clone()),
                    _ => {}
                }
                // The ack is queued: the send stops counting as in flight (`send` drops here).
            }
            Reply::Channel(tx) => {
                let _ = tx.send(ack);
            }
        }
        if let Some((room, id, frame)) = fanout {
            self.metrics.messages_in.inc();
            // A read lock and an atomic: the send path never takes the state's write lock.
            if let Some(r) = self.state.read().rooms.get(&room) {
                r.last_message.fetch_max(id.0, Ordering::AcqRel);
            }
            // Fanned out with the rest of its batch.
            held.frames.push((room, frame));
        }
    }

    /// Sends over a waiting channel (REST).
    pub async fn send_message_wait(
        self: &Arc<Self>,
        user: &UserId,
        msg: NewMessage,
    ) -> Result<SendAck, ChatError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send_any(user, msg, Reply::Channel(tx)).await?;
        rx.await
            .unwrap_or(Err(ChatError::Unavailable("server is shutting down")))
    }

    /// Edits a message's content (its sender, or a room owner/admin).
    pub async fn edit_message(
        self: &Arc<Self>,
        user: &UserId,
        room: Id,
        id: Id,
        content: String,
    ) -> Result<Message, ChatError> {
        validate::content(&content, self.limits.max_message_bytes)?;
        let role = self.require_member(room, user)?;
        self.user_messages.take(user)?;
        let op = WriteOp::EditMessage {
            room,
            id,
            by: user.clone(),
            moderator: role.moderates(),
            content,
        };
        self.change_message(op, "message_updated").await
    }

    /// Soft-deletes a message (its sender, or a room owner/admin).
    pub async fn delete_message(
        self: &Arc<Self>,
        user: &UserId,
        room: Id,
        id: Id,
    ) -> Result<Message, ChatError> {
        let role = self.require_member(room, user)?;
        self.user_messages.take(user)?;
        let op = WriteOp::DeleteMessage {
            room,
            id,
            by: user.clone(),
            moderator: role.moderates(),
        };
        self.change_message(op, "message_deleted").await
    }

    async fn change_message(
        self: &Arc<Self>,
        op: WriteOp,
        event: &'static str,
    ) -> Result<Message, ChatError> {
        let out = self
            .write_then(op, move |hub, out| {
                if let WriteOutput::MessageChanged { message, seq } = out {
                    hub.search.note_changed_message(*seq, message);
                    #[derive(Serialize)]
                    struct Changed<'a> {
                        message: &'a Message,
                        seq: Id,
                    }
                    let frame = protocol::event(event, &Changed { message, seq: *seq });
                    hub.broadcast(message.room_id, &frame);
                }
            })
            .await
            .map_err(|e| match e {
                ChatError::NotFound(_) => ChatError::NotFound("message"),
                ChatError::Forbidden(_) => {
                    ChatError::Forbidden("only the sender or a room admin may change this message")
                }
                other => other,
            })?;
        match out {
            WriteOutput::MessageChanged { message, .. } => Ok(message),
            _ => Err(ChatError::Unavailable("unexpected storage answer")),
        }
    }

    /// A page of history for a member, newest first.
    pub async fn history(
        &self,
        user: &UserId,
        room: Id,
        before: Option<Id>,
        after: Option<Id>,
        limit: Option<u32>,
    ) -> Result<HistoryPage, ChatError> {
        self.require_member(room, user)?;
        if before.is_some() && after.is_some() {
            return Err(ChatError::Invalid("give before or after, not both".into()));
        }
        let limit = match limit {
            None => 50.min(self.limits.history_max_page),
            Some(0) => return Err(ChatError::Invalid("limit must be at least 1".into())),
            Some(l) if l > self.limits.history_max_page => {
                return Err(ChatError::Invalid(format!(
                    "limit must be at most {}",
                    self.limits.history_max_page
                )));
            }
            Some(l) => l,
        };
        let (mut messages, has_more) = self
            .store
            .history(
                room,
                before,
                after,
                limit as usize,
                self.limits.outbound_queue_bytes / 2,
            )
            .await?;
        self.apply_status(room, messages.iter_mut());
        Ok(HistoryPage { messages, has_more })
    }

    // ---- rooms and membership ----

    /// Creates a group room owned by `user`.
    pub async fn create_room(
        self: &Arc<Self>,
        user: &UserId,
        name: &str,
        topic: &str,
        visibility: Visibility,
    ) -> Result<RoomInfo, ChatError> {
        let name = validate::room_name(name, self.limits.max_room_name_chars)?;
        let topic = validate::topic(topic, self.limits.max_room_topic_chars)?;
        self.user_joins.take(user)?;
        self.check_room_cap(user)?;
        let op = WriteOp::CreateRoom {
            name,
            topic,
            visibility,
            owner: user.clone(),
        };
        let out = self
            .write_then(op, |hub, out| {
                if let WriteOutput::RoomCreated { room, owner } = out {
                    let info = {
                        let mut st = hub.state.write();
                        st.rooms.insert(room.id, RoomEntry::new(room.clone()));
                        st.add_member(room.id, owner.clone());
                        st.info(room.id)
                    };
                    if let Some(info) = info {
                        let frame = protocol::event("room_added", &RoomEvent { room: &info });
                        hub.push_to_user(&owner.user_id, &frame);
                    }
                }
            })
            .await?;
        match out {
            WriteOutput::RoomCreated { room, .. } => self
                .state
                .read()
                .info(room.id)
                .ok_or(ChatError::NotFound("room")),
            _ => Err(ChatError::Unavailable("unexpected storage answer")),
        }
    }

    /// Rooms `user` is a member of, newest first, with their unread counts.
    pub async fn my_rooms(&self, user: &UserId) -> Result<Vec<RoomInfo>, ChatError> {
        let mut out: Vec<(RoomInfo, Id)> = {
            let st = self.state.read();
            st.user_rooms
                .get(user)
                .into_iter()
                .flatten()
                .filter_map(|id| {
                    let r = st.rooms.get(id)?;
                    let read = r.members.get(user).map_or(Id(0), |m| m.read_up_to);
                    let unread_possible = r.last_message() > read;
                    Some((r.info(), if unread_possible { read } else { Id(u64::MAX) }))
                })
                .collect()
        };
        out.sort_by_key(|(r, _)| std::cmp::Reverse(r.room.id));
        let mut rooms = Vec::with_capacity(out.len());
        for (mut info, read) in out {
            let unread = if read == Id(u64::MAX) {
                0
            } else {
                self.store
                    .unread_count(info.room.id, user.clone(), read, UNREAD_CAP)
                    .await?
            };
            info.unread_count = Some(unread);
            info.read_up_to = Some(if read == Id(u64::MAX) {
                self.state
                    .read()
                    .rooms
                    .get(&info.room.id)
                    .and_then(|r| r.members.get(user))
                    .map_or(Id(0), |m| m.read_up_to)
            } else {
                read
            });
            rooms.push(info);
        }
        Ok(rooms)
    }

    /// Every public room, newest first.
    pub fn public_rooms(&self) -> Vec<RoomInfo> {
        let st = self.state.read();
        let mut out: Vec<RoomInfo> = st
            .rooms
            .values()
            .filter(|r| r.room.visibility == Visibility::Public && r.room.kind == RoomKind::Group)
            .map(|r| r.info())
            .collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.room.id));
        out
    }

    /// One room, for a member (or anyone, if it is public).
    pub fn room(&self, user: &UserId, room: Id) -> Result<RoomInfo, ChatError> {
        let st = self.state.read();
        let r = st.rooms.get(&room).ok_or(ChatError::NotFound("room"))?;
        if r.members.contains_key(user)
            || r.room.visibility == Visibility::Public && r.room.kind == RoomKind::Group
        {
            Ok(r.info())
        } else {
            Err(ChatError::NotFound("room"))
        }
    }

    /// Joins a public room. A private room answers `not_found`, as if it did not exist.
    pub async fn join_room(
        self: &Arc<Self>,
        user: &UserId,
        room: Id,
    ) -> Result<RoomInfo, ChatError> {
        {
            let st = self.state.read();
            let r = st.rooms.get(&room).ok_or(ChatError::NotFound("room"))?;
            if r.room.visibility != Visibility::Public || r.room.kind != RoomKind::Group {
                if r.members.contains_key(user) {
                    return st.info(room).ok_or(ChatError::NotFound("room"));
                }
                return Err(ChatError::NotFound("room"));
            }
            if r.members.contains_key(user) {
                return Ok(r.info());
            }
        }
        self.user_joins.take(user)?;
        self.add_member(room, user.clone()).await?;
        self.state
            .read()
            .info(room)
            .ok_or(ChatError::NotFound("room"))
    }

    /// Adds `target` to a group room `user` belongs to.
    pub async fn invite(
        self: &Arc<Self>,
        user: &UserId,
        room: Id,
        target: &str,
    ) -> Result<(), ChatError> {
        validate::user_id(target)?;
        {
            let st = self.state.read();
            let r = st.rooms.get(&room).ok_or(ChatError::NotFound("room"))?;
            if !r.members.contains_key(user) {
                return Err(ChatError::NotFound("room"));
            }
            if r.room.kind == RoomKind::Dm {
                return Err(ChatError::Forbidden(
                    "nobody can be invited into a direct message",
                ));
            }
        }
        self.user_joins.take(user)?;
        self.add_member(room, UserId::from(target))
            .await
            .map(|_| ())
    }

    fn member_info(&self, st: &State, m: &Member) -> MemberInfo {
        MemberInfo {
            user_id: m.user_id.clone(),
            name: st.name_of(&m.user_id),
            role: m.role,
            joined_at: m.joined_at,
            presence: self.presence_of(&m.user_id),
            last_seen: st.users.get(&m.user_id).and_then(|u| u.last_seen),
        }
    }

    fn check_room_cap(&self, user: &UserId) -> Result<(), ChatError> {
        if self.state.read().rooms_of(user) >= self.limits.max_rooms_per_user {
            return Err(ChatError::LimitReached(
                "that user is in as many rooms as allowed (limits.max_rooms_per_user)",
            ));
        }
        Ok(())
    }

    async fn add_member(self: &Arc<Self>, room: Id, user: UserId) -> Result<(), ChatError> {
        self.check_room_cap(&user)?;
        let op = WriteOp::AddMember {
            room,
            user,
            role: Role::Member,
        };
        self.write_then(op, move |hub, out| {
            if let WriteOutput::MemberAdded {
                member,
                added: true,
            } = out
            {
                hub.on_member_added(room, member);
            }
        })
        .await
        .map(|_| ())
    }

    fn on_member_added(&self, room: Id, member: &Member) {
        let (info, m) = {
            let mut st = self.state.write();
            st.add_member(room, member.clone());
            (st.info(room), self.member_info(&st, member))
        };
        #[derive(Serialize)]
        struct Joined<'a> {
            room_id: Id,
            member: &'a MemberInfo,
        }
        // The newcomer learns of the room before any event in it.
        if let Some(info) = info {
            let frame = protocol::event("room_added", &RoomEvent { room: &info });
            self.push_to_user(&member.user_id, &frame);
        }
        let frame = protocol::event(
            "member_joined",
            &Joined {
                room_id: room,
                member: &m,
            },
        );
        self.broadcast(room, &frame);
    }

    /// Leaves a room.
    pub async fn leave_room(self: &Arc<Self>, user: &UserId, room: Id) -> Result<(), ChatError> {
        self.require_member(room, user)?;
        let op = WriteOp::RemoveMember {
            room,
            user: user.clone(),
        };
        let leaver = user.clone();
        self.write_then(op, move |hub, out| {
            if let WriteOutput::MemberRemoved { removed: true } = out {
                #[derive(Serialize)]
                struct Left<'a> {
                    room_id: Id,
                    user_id: &'a UserId,
                }
                let frame = protocol::event(
                    "member_left",
                    &Left {
                        room_id: room,
                        user_id: &leaver,
                    },
                );
                // Tell the room (the leaver included) before they stop being a member.
                hub.broadcast(room, &frame);
                hub.state.write().remove_member(room, &leaver);
                #[derive(Serialize)]
                struct Removed {
                    room_id: Id,
                }
                hub.push_to_user(
                    &leaver,
                    &protocol::event("room_removed", &Removed { room_id: room }),
                );
            }
        })
        .await
        .map(|_| ())
    }

    /// Members of a room, for a member.
    pub fn members(&self, user: &UserId, room: Id) -> Result<Vec<MemberInfo>, ChatError> {
        let st = self.state.read();
        let r = st.rooms.get(&room).ok_or(ChatError::NotFound("room"))?;
        if !r.members.contains_key(user) {
            return Err(ChatError::NotFound("room"));
        }
        let mut out: Vec<MemberInfo> = r
            .members
            .values()
            .map(|m| self.member_info(&st, m))
            .collect();
        out.sort_by(|a, b| {
            a.joined_at
                .cmp(&b.joined_at)
                .then_with(|| a.user_id.cmp(&b.user_id))
        });
        Ok(out)
    }

    /// The direct-message room of `user` and `other`, created on first use.
    pub async fn open_dm(
        self: &Arc<Self>,
        user: &UserId,
        other: &str,
    ) -> Result<RoomInfo, ChatError> {
        validate::user_id(other)?;
        if other == &**user {
            return Err(ChatError::Invalid(
                "a direct message needs another user".into(),
            ));
        }
        self.user_joins.take(user)?;
        let target = UserId::from(other);
        self.check_room_cap(user)?;
        self.check_room_cap(&target)?;
        let op = WriteOp::OpenDm {
            a: user.clone(),
            b: UserId::from(other),
        };
        let out = self
            .write_then(op, |hub, out| {
                if let WriteOutput::Dm { room, added } = out {
                    {
                        let mut st = hub.state.write();
                        st.rooms
                            .entry(room.id)
                            .or_insert_with(|| RoomEntry::new(room.clone()));
                    }
                    for m in added {
                        hub.on_member_added(room.id, m);
                    }
                }
            })
            .await?;
        match out {
            WriteOutput::Dm { room, .. } => self
                .state
                .read()
                .info(room.id)
                .ok_or(ChatError::NotFound("room")),
            _ => Err(ChatError::Unavailable("unexpected storage answer")),
        }
    }

    /// Searches the rooms `user` is a member of now (or one of them).
    pub async fn search(
        &self,
        user: &UserId,
        req: protocol::SearchRequest,
    ) -> Result<SearchAnswer, ChatError> {
        let started = std::time::Instant::now();
        let text = req.q.trim_start();
        if text.trim().is_empty() || text.chars().count() > 256 {
            return Err(ChatError::Invalid(
                "q must be 1-256 characters of search words".into(),
            ));
        }
        let limit = match req.limit {
            None => 20,
            Some(l @ 1..=100) => l as usize,
            Some(_) => return Err(ChatError::Invalid("limit must be 1-100".into())),
        };
        let sort = match req.sort.as_deref() {
            None | Some("newest") => crate::search::Sort::Newest,
            Some("relevance") => crate::search::Sort::Relevance,
            Some(_) => {
                return Err(ChatError::Invalid(
                    "sort must be newest or relevance".into(),
                ));
            }
        };
        let cursor = match req.cursor.as_deref() {
            None | Some("") => None,
            Some(c) => Some(
                crate::search::Cursor::parse(c)
                    .filter(|c| {
                        matches!(
                            (c, sort),
                            (crate::search::Cursor::Below(_), crate::search::Sort::Newest)
                                | (
                                    crate::search::Cursor::Offset(..),
                                    crate::search::Sort::Relevance
                                )
                        )
                    })
                    .ok_or_else(|| ChatError::Invalid("bad cursor".into()))?,
            ),
        };
        if let Some(s) = &req.sender_id {
            validate::user_id(s)?;
        }
        let rooms: Vec<Id> = match req.room_id {
            Some(r) => {
                self.require_member(r, user)?;
                vec![r]
            }
            None => self
                .state
                .read()
                .user_rooms
                .get(user)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
        };
        let query = crate::search::SearchQuery {
            text: text.to_owned(),
            rooms,
            sender: req.sender_id,
            min_id: req.from.map(|ms| Id::first_at(ms).0),
            max_id: req.to.map(|ms| Id::first_at(ms).0),
            has_file: req.has_file,
            sort,
            limit,
            cursor,
        };
        let search = self.search.clone();
        let page = tokio::task::spawn_blocking(move || search.query(&query))
            .await
            .map_err(|_| ChatError::Unavailable("search failed"))?
            .map_err(|e| match e {
                crate::search::SearchError::BadQuery(m) => ChatError::Invalid(m),
                other => {
                    tracing::error!(error = %other, "search failed");
                    ChatError::Unavailable("search is unavailable right now")
                }
            })?;
        let mut messages = self.store.messages(page.hits.clone()).await?;
        let mut hits = Vec::with_capacity(messages.len());
        for m in messages.iter_mut().flatten() {
            // The index may lag a delete, or the user may have left since the query ran.
            if m.deleted_at.is_some() || self.is_member(m.room_id, user).is_none() {
                continue;
            }
            self.apply_status(m.room_id, std::iter::once(&mut *m));
            let (snippet, highlights) = self.search.snippet(&page.terms, m);
            let room = {
                let st = self.state.read();
                st.rooms.get(&m.room_id).map(|r| SearchRoom {
                    id: r.room.id,
                    name: r.room.name.clone(),
                    kind: r.room.kind,
                })
            };
            let Some(room) = room else { continue };
            hits.push(SearchHit {
                message: m.clone(),
                room,
                snippet,
                highlights,
            });
        }
        Ok(SearchAnswer {
            hits,
            next_cursor: page.next.map(|c| c.encode()),
            took_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Turns an error into its wire form, counting it.
    pub fn wire_error(&self, e: &ChatError) -> WireError {
        let w = e.to_wire();
        self.metrics.error(w.code);
        w
    }
}
