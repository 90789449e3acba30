//! The indexer thread: applies noted changes to the index writer, commits at most every
//! `search.commit_interval_ms` (recording the last change held), and replays from storage
//! whatever the index missed: at start, and after the queue overflowed.

use super::{Fields, IndexOp, Queued, Search, SearchError, body_of};
use crate::model::{ChangeKind, Id, Message};
use crate::store::Store;
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};
use tantivy::{IndexWriter, TantivyDocument, Term};

type Writer = IndexWriter<TantivyDocument>;

/// The first change after a quiet spell waits this long before it is applied, so that the
/// changes of a burst are applied together: this thread and tantivy's indexing thread then wake
/// once per burst instead of once per message. Each wakeup lands on a core that the chat
/// threads share: at 200 messages/s on one core the indexer went from 2,121 to about 490
/// wakeups in 5 s, and the store writer's wait for the CPU from 69 to 27 µs per message
/// (schedstat). Searchability already lags by up to `search.commit_interval_ms`, so 20 ms
/// more is not noticed.
const GATHER: Duration = Duration::from_millis(20);

/// A writer that is opened only when there is something to index and closed again after
/// `search.writer_idle_close_secs` without changes: an open tantivy writer holds its document
/// pipeline (about 2.5 MB) and two threads, which an idle appliance should not pay for.
pub(super) struct LazyWriter {
    index: tantivy::Index,
    memory_budget: usize,
    writer: Option<Writer>,
    /// How long the writer stays open after its last commit.
    idle_close: Duration,
}

impl LazyWriter {
    pub(super) fn new(index: tantivy::Index, memory_budget: usize, idle_close: Duration) -> Self {
        Self {
            index,
            memory_budget,
            writer: None,
            idle_close,
        }
    }

    fn get(&mut self) -> Result<&mut Writer, SearchError> {
        let w = match self.writer.take() {
            Some(w) => w,
            None => super::new_writer(&self.index, self.memory_budget)?,
        };
        Ok(self.writer.insert(w))
    }

    /// Drops the writer and whatever it holds uncommitted (after a failure: tantivy kills a
    /// writer whose worker hit an I/O error, and a failed replay may have added part of its
    /// changes). The next `get` opens a fresh one on the last commit.
    fn discard(&mut self) {
        self.writer = None;
    }

    /// Closes the writer (after its merges finish). Only with nothing uncommitted.
    fn close(&mut self) {
        if let Some(w) = self.writer.take()
            && let Err(e) = w.wait_merging_threads()
        {
            tracing::warn!(error = %e, "closing the search index writer");
        }
    }
}

pub(super) fn run(
    search: Search,
    store: Store,
    mut writer: LazyWriter,
    rx: Receiver<Queued>,
    mut watermark: u64,
    interval: Duration,
) {
    let fields = search.inner.fields;
    // Changes at or below `watermark` are in the index (or in a replay that covered them).
    // Until the start-up replay succeeds nothing is committed past it, or a gap would be
    // recorded as indexed; queued changes wait (or overflow into a later replay).
    loop {
        match catch_up(&search, &store, &mut writer, watermark) {
            Ok(w) => {
                watermark = w;
                break;
            }
            Err(SearchError::Store(crate::store::StoreError::Closed)) => return,
            Err(e) => {
                tracing::error!(error = %e, "search replay at start failed; retrying in 1 s");
                writer.discard();
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    let mut applied_seq = watermark;
    let mut applied_note = 0u64;
    let mut dirty = false;
    let mut deadline: Option<Instant> = None;
    let mut last_commit = Instant::now();
    // The last change in the index's newest commit.
    let mut committed = watermark;
    // Where a failed replay must start again: changes queued after it lie past the gap.
    let mut replay_from: Option<u64> = None;
    // Set when an index write failed: what the writer held is gone, so the index must be
    // replayed from its last commit (never from what was applied since, or a change that
    // failed would be skipped for good).
    let mut resync = false;
    // After a failed replay, the next try waits until then (the disk may still be full).
    let mut retry_at: Option<Instant> = None;
    loop {
        let wait = if search.inner.lost.load(Ordering::Acquire) {
            retry_at.map_or(Duration::from_secs(1), |t| {
                t.saturating_duration_since(Instant::now())
            })
        } else if let Some(d) = deadline {
            d.saturating_duration_since(Instant::now())
        } else if writer.writer.is_some() {
            (last_commit + writer.idle_close).saturating_duration_since(Instant::now())
        } else {
            Duration::from_secs(3600)
        };
        let received = match rx.try_recv() {
            Ok(change) => Ok(change),
            Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) => {
                let received = rx.recv_timeout(wait);
                if matches!(received, Ok(Queued::Change(..))) {
                    std::thread::sleep(GATHER);
                }
                received
            }
        };
        if matches!(received, Ok(Queued::Change(..))) {
            search.inner.queued.fetch_sub(1, Ordering::AcqRel);
        }
        match received {
            Ok(Queued::Change(note, op)) => {
                applied_note = note;
                if op.seq() > watermark {
                    if let Err(e) = writer.get().and_then(|w| apply(w, fields, &op)) {
                        tracing::error!(
                            error = %e,
                            "could not index a change; replaying from the last commit"
                        );
                        resync = true;
                        search.inner.lost.store(true, Ordering::Release);
                    }
                    search.inner.metrics.search_indexed.inc();
                    applied_seq = applied_seq.max(op.seq());
                    dirty = true;
                    deadline.get_or_insert_with(|| Instant::now() + interval);
                } else {
                    search.inner.searchable.fetch_max(note, Ordering::Relaxed);
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if !dirty && last_commit.elapsed() >= writer.idle_close && writer.writer.is_some() {
                    writer.close();
                }
            }
            Ok(Queued::Stop) | Err(RecvTimeoutError::Disconnected) => {
                if search.inner.lost.load(Ordering::Acquire) {
                    // Past a failure or an overflow: what the writer holds has a gap; the
                    // next start replays from the last commit.
                    writer.discard();
                } else if dirty && let Err(e) = writer.get().and_then(|w| commit(w, applied_seq)) {
                    tracing::error!(error = %e, "search commit at shutdown failed; the next start replays");
                }
                writer.close();
                return;
            }
        }
        if search.inner.lost.load(Ordering::Acquire) {
            // Apply what was queued before the overflow, then replay the rest from storage.
            // After a failure the queue is only drained: the replay covers it.
            while let Ok(queued) = rx.try_recv() {
                let Queued::Change(note, op) = queued else {
                    // Stopping mid-recovery: the next start replays from the last commit.
                    writer.discard();
                    return;
                };
                search.inner.queued.fetch_sub(1, Ordering::AcqRel);
                if !resync && op.seq() > watermark {
                    if let Err(e) = writer.get().and_then(|w| apply(w, fields, &op)) {
                        tracing::error!(error = %e, "could not index a change");
                        resync = true;
                    }
                    applied_seq = applied_seq.max(op.seq());
                }
                applied_note = note;
            }
            if retry_at.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            let from = if resync {
                writer.discard();
                // The commit on disk, in case a failed commit got as far as writing it.
                let from = super::committed_seq(&writer.index).unwrap_or(committed);
                replay_from = Some(from);
                from
            } else {
                *replay_from.get_or_insert(applied_seq)
            };
            search.inner.lost.store(false, Ordering::Release);
            let noted = search.inner.noted.load(Ordering::Relaxed);
            match catch_up(&search, &store, &mut writer, from) {
                Ok(w) => {
                    replay_from = None;
                    resync = false;
                    retry_at = None;
                    watermark = w;
                    committed = w;
                    applied_seq = w;
                    applied_note = applied_note.max(noted);
                    search
                        .inner
                        .searchable
                        .fetch_max(applied_note, Ordering::Relaxed);
                    dirty = false;
                    deadline = None;
                }
                Err(e) => {
                    // Nothing past the gap may be committed: try again shortly, from the
                    // last commit (the writer may hold part of this replay).
                    tracing::error!(error = %e, "search replay from storage failed; retrying in 1 s");
                    resync = true;
                    retry_at = Some(Instant::now() + Duration::from_secs(1));
                    search.inner.lost.store(true, Ordering::Release);
                }
            }
            continue;
        }
        if dirty && deadline.is_some_and(|d| Instant::now() >= d) {
            let started = Instant::now();
            last_commit = started;
            match writer.get().and_then(|w| commit(w, applied_seq)) {
                Ok(()) => {
                    committed = applied_seq;
                    if let Err(e) = search.inner.reader.reload() {
                        tracing::error!(error = %e, "search reader reload failed");
                    }
                    search
                        .inner
                        .searchable
                        .fetch_max(applied_note, Ordering::Relaxed);
                    search.inner.metrics.search_lag.set(search.lag());
                    search.publish_size();
                    tracing::debug!(
                        ms = started.elapsed().as_millis() as u64,
                        seq = applied_seq,
                        "search index committed"
                    );
                }
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        "search index commit failed; replaying from the last commit"
                    );
                    resync = true;
                    search.inner.lost.store(true, Ordering::Release);
                }
            }
            dirty = false;
            deadline = None;
        }
    }
}

/// Indexes every change in storage after `since` up to the last id issued now, commits, and
/// returns that id (the new watermark).
fn catch_up(
    search: &Search,
    store: &Store,
    writer: &mut LazyWriter,
    since: u64,
) -> Result<u64, SearchError> {
    let upto = store.last_id_blocking()?;
    if upto.0 <= since {
        return Ok(since);
    }
    let writer = writer.get()?;
    let started = Instant::now();
    let mut n = 0u64;
    for room in store.room_ids_blocking()? {
        let mut cursor = Id(since);
        loop {
            let mut budget = usize::MAX;
            let (changes, more) =
                store.changes_since_blocking(room, cursor, upto, 4096, &mut budget)?;
            for c in &changes {
                let op = match c.kind {
                    ChangeKind::Deleted => IndexOp::Delete {
                        seq: c.seq.0,
                        id: c.message.id,
                    },
                    _ if c.message.deleted_at.is_some() => IndexOp::Delete {
                        seq: c.seq.0,
                        id: c.message.id,
                    },
                    kind => IndexOp::Upsert {
                        seq: c.seq.0,
                        message: Box::new(c.message.clone()),
                        replace: kind != ChangeKind::Message,
                    },
                };
                apply(writer, search.inner.fields, &op)?;
                search.inner.metrics.search_indexed.inc();
                n += 1;
            }
            match changes.last() {
                Some(last) if more => cursor = last.seq,
                _ => break,
            }
        }
    }
    commit(writer, upto.0)?;
    search.inner.reader.reload()?;
    search.publish_size();
    if n > 0 {
        tracing::info!(
            changes = n,
            ms = started.elapsed().as_millis() as u64,
            "search index caught up from storage"
        );
    }
    Ok(upto.0)
}

/// Indexes every live message in storage (for a rebuild into an empty index).
pub(super) fn index_all(
    writer: &mut Writer,
    fields: Fields,
    store: &Store,
    upto: Id,
) -> Result<u64, SearchError> {
    let mut n = 0u64;
    for room in store.room_ids_blocking()? {
        let mut after = Id(0);
        loop {
            let page = store.messages_after_blocking(room, after, 4096)?;
            for m in &page {
                if m.id > upto {
                    break;
                }
                if m.deleted_at.is_none() {
                    writer.add_document(document(fields, m))?;
                    n += 1;
                }
            }
            match page.last() {
                Some(last) if page.len() == 4096 && last.id <= upto => after = last.id,
                _ => break,
            }
        }
    }
    Ok(n)
}

fn document(f: Fields, m: &Message) -> TantivyDocument {
    let mut d = TantivyDocument::default();
    d.add_u64(f.id, m.id.0);
    d.add_u64(f.room, m.room_id.0);
    d.add_text(f.sender, &m.sender_id);
    d.add_u64(f.has_file, u64::from(m.file.is_some()));
    d.add_text(f.body, body_of(m));
    d
}

fn apply(writer: &Writer, f: Fields, op: &IndexOp) -> Result<(), SearchError> {
    match op {
        IndexOp::Upsert {
            message, replace, ..
        } => {
            if *replace {
                delete_id(writer, f, message.id)?;
            }
            writer.add_document(document(f, message))?;
        }
        IndexOp::Delete { id, .. } => delete_id(writer, f, *id)?,
    }
    Ok(())
}

/// Deletes a message's document: a range of one on the id column (segments whose ids lie
/// elsewhere are skipped by their column's bounds).
fn delete_id(writer: &Writer, f: Fields, id: Id) -> Result<(), SearchError> {
    let term = Term::from_field_u64(f.id, id.0);
    let one = tantivy::query::RangeQuery::new(Bound::Included(term.clone()), Bound::Included(term));
    writer.delete_query(Box::new(one))?;
    Ok(())
}

/// Commits with the last change held recorded in the commit's payload.
pub(super) fn commit(writer: &mut Writer, last_seq: u64) -> Result<(), SearchError> {
    let mut prepared = writer.prepare_commit()?;
    prepared.set_payload(
        &serde_json::json!({ "version": super::INDEX_VERSION, "last_seq": last_seq }).to_string(),
    );
    prepared.commit()?;
    Ok(())
}
