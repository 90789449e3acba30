//! Full-text search over messages: a tantivy index under `<data_dir>/search/`, fed off the send
//! path by the store's completions, committed in batches, and replayed from storage on start.
//!
//! The index holds no message text (only postings and fast fields: id, room, sender, has-file);
//! hits are read back from the store, which also decides that a message still exists. Scoping
//! to the rooms a user may read is the caller's job: it passes the room set with every query.

mod indexer;
mod query;

pub use query::{Cursor, Page, SearchQuery, Sort, Terms};

use crate::config::SearchConfig;
use crate::metrics::Metrics;
use crate::model::{Id, Message};
use crate::store::{Store, StoreError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer,
};
use tantivy::{Index, IndexReader, ReloadPolicy};

/// Why the index could not be opened or queried.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("search index directory: {0}")]
    Dir(#[from] tantivy::directory::error::OpenDirectoryError),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    BadQuery(String),
}

/// Bump when the schema or the analyzer changes: an index of another version is rebuilt.
const INDEX_VERSION: u64 = 2;
const TOKENIZER: &str = "confab";
/// Changes waiting for the indexer; past this they are dropped and replayed from storage.
const QUEUE: usize = 65_536;

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    room: Field,
    sender: Field,
    has_file: Field,
    body: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    // Fast only: ranges, ordering and deletes by id all read the column. Indexed, every
    // message added a term of its own to the dictionary, to build and merge for nothing.
    let id = b.add_u64_field("id", FAST);
    let room = b.add_u64_field("room", INDEXED | FAST);
    let sender = b.add_text_field("sender", STRING);
    let has_file = b.add_u64_field("has_file", INDEXED);
    let body = b.add_text_field(
        "body",
        TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(TOKENIZER)
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        ),
    );
    (
        b.build(),
        Fields {
            id,
            room,
            sender,
            has_file,
            body,
        },
    )
}

/// Words split on non-alphanumerics, lowercased, accents folded; absurdly long tokens dropped.
fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(64))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// The text a message is found by: its content and its file's name.
fn body_of(m: &Message) -> String {
    match &m.file {
        Some(f) if m.content.is_empty() => f.name.clone(),
        Some(f) => format!("{}\n{}", m.content, f.name),
        None => m.content.clone(),
    }
}

/// A change for the index, in commit order.
pub(crate) enum IndexOp {
    /// `replace`: the message may be in the index already (an edit), so its old document is
    /// deleted first. New messages skip that: every delete is checked against every segment
    /// at the next commit, which under load cost more than the indexing itself.
    Upsert {
        seq: u64,
        message: Box<Message>,
        replace: bool,
    },
    Delete {
        seq: u64,
        id: Id,
    },
}

impl IndexOp {
    fn seq(&self) -> u64 {
        match self {
            IndexOp::Upsert { seq, .. } | IndexOp::Delete { seq, .. } => *seq,
        }
    }
}

/// What the indexer thread takes from its queue: a noted change (with its note number), or
/// the word to commit what it holds and stop (the thread holds a handle, and with it a
/// sender, so the queue never disconnects by itself).
pub(crate) enum Queued {
    Change(u64, IndexOp),
    Stop,
}

/// The search service. Cheap to clone.
#[derive(Clone)]
pub struct Search {
    inner: Arc<Inner>,
}

struct Inner {
    reader: IndexReader,
    fields: Fields,
    dir: PathBuf,
    queue: std::sync::mpsc::Sender<Queued>,
    /// The indexer thread, until `close` joins it.
    indexer: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Changes in `queue`, at most `QUEUE`.
    queued: AtomicUsize,
    /// Set when the queue overflowed: nothing more is queued until the indexer has replayed
    /// from storage.
    lost: AtomicBool,
    /// Changes noted so far, and how many of them are searchable: their difference is the lag.
    noted: AtomicU64,
    searchable: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Search {
    /// Opens (or creates) the index under `<data_dir>/search` and starts the indexer thread,
    /// which first indexes what storage holds beyond the index's last commit. An index of
    /// another version, or one that cannot be opened, is rebuilt from storage.
    pub fn open(
        data_dir: &Path,
        cfg: &SearchConfig,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SearchError> {
        let dir = data_dir.join("search");
        let (index, fields) = match open_index(&dir) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "search index unusable; rebuilding it from storage");
                let _ = std::fs::remove_dir_all(&dir);
                open_index(&dir)?
            }
        };
        let watermark = committed_watermark(&index);
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let writer = indexer::LazyWriter::new(
            index,
            cfg.writer_memory_bytes,
            std::time::Duration::from_secs(cfg.writer_idle_close_secs),
        );
        // Unbounded channel, bounded by the `queued` count: a bounded std channel allocates
        // and touches all its slots up front (2.6 MB at 65,536).
        let (tx, rx) = std::sync::mpsc::channel();
        let search = Self {
            inner: Arc::new(Inner {
                reader,
                fields,
                dir,
                queue: tx,
                indexer: parking_lot::Mutex::new(None),
                queued: AtomicUsize::new(0),
                lost: AtomicBool::new(false),
                noted: AtomicU64::new(0),
                searchable: AtomicU64::new(0),
                metrics,
            }),
        };
        search.publish_size();
        let worker = search.clone();
        let interval = std::time::Duration::from_millis(cfg.commit_interval_ms);
        let nice = cfg.indexer_nice;
        let handle = std::thread::Builder::new()
            .name("confab-indexer".into())
            .spawn(move || {
                // Before the writer exists: tantivy's threads inherit it from this one.
                lower_thread_priority(nice);
                indexer::run(worker, store, writer, rx, watermark, interval)
            })?;
        *search.inner.indexer.lock() = Some(handle);
        Ok(search)
    }

    /// Stops the indexer: it commits what it holds (changes noted before this call become
    /// searchable at the next start without a replay), closes the index writer with its
    /// threads, and is joined. Changes noted after this are left to the next start's replay.
    pub fn close(&self) {
        let Some(handle) = self.inner.indexer.lock().take() else {
            return;
        };
        let _ = self.inner.queue.send(Queued::Stop);
        if handle.join().is_err() {
            tracing::error!("the search indexer thread panicked");
        }
    }

    /// Removes the index, so the next `open` rebuilds it from storage.
    pub fn discard(data_dir: &Path) -> Result<(), SearchError> {
        match std::fs::remove_dir_all(data_dir.join("search")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Rebuilds the index from storage into a fresh directory and swaps it in. For
    /// `confab reindex`, with the server stopped. Returns how many messages were indexed.
    pub fn rebuild(data_dir: &Path, cfg: &SearchConfig, store: &Store) -> Result<u64, SearchError> {
        let fresh = data_dir.join("search.rebuild");
        let _ = std::fs::remove_dir_all(&fresh);
        let (index, fields) = open_index(&fresh)?;
        let mut writer = new_writer(&index, cfg.writer_memory_bytes)?;
        let upto = store.last_id_blocking()?;
        let n = indexer::index_all(&mut writer, fields, store, upto)?;
        indexer::commit(&mut writer, upto.0)?;
        drop(writer);
        drop(index);
        let live = data_dir.join("search");
        let old = data_dir.join("search.old");
        let _ = std::fs::remove_dir_all(&old);
        if live.exists() {
            std::fs::rename(&live, &old)?;
        }
        std::fs::rename(&fresh, &live)?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(n)
    }

    /// Notes a new message for indexing. Called from store completions (one thread, in
    /// commit order); never blocks: a full queue drops the change and the indexer replays
    /// from storage instead.
    pub fn note_new_message(&self, message: Message) {
        self.note(IndexOp::Upsert {
            seq: message.id.0,
            message: Box::new(message),
            replace: false,
        });
    }

    /// Notes an edit or a deletion (change number `seq`), like `note_new_message`.
    pub fn note_changed_message(&self, seq: Id, message: &Message) {
        self.note(if message.deleted_at.is_some() {
            IndexOp::Delete {
                seq: seq.0,
                id: message.id,
            }
        } else {
            IndexOp::Upsert {
                seq: seq.0,
                message: Box::new(message.clone()),
                replace: true,
            }
        });
    }

    fn note(&self, op: IndexOp) {
        let i = &self.inner;
        let n = i.noted.fetch_add(1, Ordering::Relaxed) + 1;
        i.metrics.search_lag.set(self.lag());
        if i.lost.load(Ordering::Acquire) {
            return;
        }
        if i.queued.fetch_add(1, Ordering::AcqRel) >= QUEUE {
            i.queued.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("search queue full; the indexer will catch up from storage");
            i.lost.store(true, Ordering::Release);
        } else if i.queue.send(Queued::Change(n, op)).is_err() {
            // The indexer has stopped (shutdown): nothing to do.
            i.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Changes committed but not yet searchable.
    pub fn lag(&self) -> u64 {
        let i = &self.inner;
        i.noted
            .load(Ordering::Relaxed)
            .saturating_sub(i.searchable.load(Ordering::Relaxed))
    }

    fn publish_size(&self) {
        let bytes = dir_bytes(&self.inner.dir);
        self.inner.metrics.search_index_bytes.set(bytes);
    }

    /// Runs a query (blocking: call it on the blocking pool).
    pub fn query(&self, q: &SearchQuery) -> Result<query::Page, SearchError> {
        query::run(&self.inner.reader.searcher(), self.inner.fields, q)
    }

    /// The snippet of `message` for a query's terms: plain text and highlighted ranges in
    /// UTF-16 code units.
    pub fn snippet(&self, terms: &query::Terms, message: &Message) -> (String, Vec<[usize; 2]>) {
        query::snippet(terms, self.inner.fields.body, &body_of(message))
    }
}

/// Gives the calling thread (and the threads it starts later) the nice value `nice`, so that
/// under CPU contention indexing yields to chat traffic. Raising one's own nice value needs no
/// privilege; on failure indexing just keeps the normal priority.
fn lower_thread_priority(nice: i32) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // On Linux a thread id names one thread here, not the whole process.
        let tid = rustix::thread::gettid();
        if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
            tracing::warn!(nice, error = %e, "could not lower the indexer's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// One indexing thread and one merge thread: an appliance's index is small, and the cores
/// belong to the chat traffic.
fn new_writer(
    index: &Index,
    memory_budget: usize,
) -> Result<tantivy::IndexWriter<tantivy::TantivyDocument>, SearchError> {
    let options = tantivy::indexer::IndexWriterOptions::builder()
        .memory_budget_per_thread(memory_budget)
        .num_worker_threads(1)
        .num_merge_threads(1)
        .build();
    Ok(index.writer_with_options(options)?)
}

fn open_index(dir: &Path) -> Result<(Index, Fields), SearchError> {
    std::fs::create_dir_all(dir)?;
    let (schema, fields) = schema();
    let mmap = tantivy::directory::MmapDirectory::open(dir)?;
    let index = Index::open_or_create(mmap, schema)?;
    let version = index
        .load_metas()?
        .payload
        .as_deref()
        .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        .and_then(|v| v.get("version").and_then(serde_json::Value::as_u64));
    if version.is_some_and(|v| v != INDEX_VERSION) {
        return Err(SearchError::BadQuery(format!(
            "index version {version:?} is not {INDEX_VERSION}"
        )));
    }
    index.tokenizers().register(TOKENIZER, analyzer());
    Ok((index, fields))
}

/// The last change the index's newest commit holds (0 for a new index).
fn committed_watermark(index: &Index) -> u64 {
    committed_seq(index).unwrap_or(0)
}

/// The last change the index's newest commit on disk holds: 0 for a new index, `None` when
/// its metadata cannot be read now.
fn committed_seq(index: &Index) -> Option<u64> {
    let metas = index.load_metas().ok()?;
    Some(
        metas
            .payload
            .and_then(|p| serde_json::from_str::<serde_json::Value>(&p).ok())
            .and_then(|v| v.get("last_seq").and_then(serde_json::Value::as_u64))
            .unwrap_or(0),
    )
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
