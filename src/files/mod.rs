//! Uploads stored by the binary: bytes on disk named by their SHA-256 (stored once however
//! often uploaded), streamed in with size, quota and disk-space checks, typed by sniffing,
//! thumbnailed in the background, and collected once no message shares them.
//!
//! Layout under `<data_dir>/files/`: `blobs/ab/abcdef…` (originals), `thumbs/abcdef…`,
//! `tmp/` (uploads in flight; emptied at start), `signing-key`. Records (uploads, blobs,
//! shares) live in the store; this module owns the files on disk and the counters.

mod signing;
pub mod sniff;
mod thumbs;

use crate::config::FilesConfig;
use crate::metrics::Metrics;
use crate::model::{Blob, Id, ThumbState, Upload, UploadView, UserId, now_ms};
use crate::store::{Collected, Store, StoreError, WriteOp, WriteOutput};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Why an upload or a file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("the file is larger than the {limit}-byte limit (files.max_file_bytes)")]
    TooLarge { limit: u64 },
    #[error(
        "this upload would take you past your storage quota of {quota} bytes \
         ({used} in use); delete old files or ask an admin"
    )]
    QuotaExceeded { quota: u64, used: u64 },
    #[error("the server is low on disk space and takes no uploads right now")]
    InsufficientStorage,
    #[error("the file is empty")]
    Empty,
    #[error("file not found")]
    NotFound,
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Re-check free disk space after this many bytes of one upload.
const DISK_CHECK_EVERY: u64 = 8 * 1024 * 1024;
/// Longest stored display name, in bytes.
const MAX_NAME_BYTES: usize = 255;

/// Per-user bytes: stored uploads, plus uploads in flight (reserved before they land).
#[derive(Default)]
struct Usage {
    stored: u64,
    reserved: u64,
}

/// The file service. Cheap to clone.
#[derive(Clone)]
pub struct Files {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    cfg: FilesConfig,
    store: Store,
    metrics: Arc<Metrics>,
    signer: signing::Signer,
    usage: Mutex<HashMap<UserId, Usage>>,
    /// Blobs an upload in flight is about to reference: collection leaves their bytes alone.
    /// The lock also orders "is the blob on disk" checks against collection's deletes.
    pins: Mutex<HashMap<String, usize>>,
    /// Thumbnails being made: senders wait on these (bounded) so messages carry them.
    pending: Mutex<HashMap<String, tokio::sync::watch::Receiver<bool>>>,
    /// Jobs for the thumbnail thread; `None` stops it (the thread holds a handle, and with it
    /// a sender, so the channel never disconnects by itself).
    thumb_jobs: std::sync::mpsc::Sender<Option<ThumbJob>>,
    /// The thumbnail thread, until `close` joins it.
    thumb_worker: Mutex<Option<std::thread::JoinHandle<()>>>,
    disk_bytes: AtomicU64,
    uploads: AtomicU64,
    blobs: AtomicU64,
}

struct ThumbJob {
    sha256: String,
    mime: String,
    done: tokio::sync::watch::Sender<bool>,
}

impl Files {
    /// Opens `<data_dir>/files`: creates the layout, empties `tmp/`, loads counters and usage,
    /// removes bytes no record refers to (a crash between writing and recording), and queues
    /// the thumbnails a crash left unmade. Blocking; call at start.
    pub fn open(
        data_dir: &Path,
        cfg: FilesConfig,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Self, FileError> {
        let root = data_dir.join("files");
        for d in ["blobs", "thumbs", "tmp"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        if let Ok(entries) = std::fs::read_dir(root.join("tmp")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let signer = signing::Signer::open(&root.join("signing-key"))?;
        let (uploads, blobs) = store.files_snapshot_blocking()?;
        let by_sha: HashMap<&str, &Blob> = blobs.iter().map(|b| (b.sha256.as_str(), b)).collect();
        let mut usage: HashMap<UserId, Usage> = HashMap::new();
        for u in &uploads {
            let size = by_sha.get(u.sha256.as_str()).map_or(0, |b| b.size);
            usage.entry(u.uploader_id.clone()).or_default().stored += size;
        }
        let disk: u64 = blobs.iter().map(|b| b.size + b.thumb_bytes).sum();
        sweep_orphans(&root, &by_sha);
        let (tx, rx) = std::sync::mpsc::channel::<Option<ThumbJob>>();
        let files = Self {
            inner: Arc::new(Inner {
                root,
                cfg,
                store,
                metrics,
                signer,
                usage: Mutex::new(usage),
                pins: Mutex::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
                thumb_jobs: tx,
                thumb_worker: Mutex::new(None),
                disk_bytes: AtomicU64::new(disk),
                uploads: AtomicU64::new(uploads.len() as u64),
                blobs: AtomicU64::new(blobs.len() as u64),
            }),
        };
        files.publish_gauges();
        let worker = files.clone();
        let handle = std::thread::Builder::new()
            .name("confab-thumbnails".into())
            .spawn(move || worker.thumbnail_worker(rx))?;
        *files.inner.thumb_worker.lock() = Some(handle);
        for b in blobs
            .iter()
            .filter(|b| b.thumb_state == ThumbState::Pending)
        {
            files.queue_thumbnail(&b.sha256, &b.mime);
        }
        Ok(files)
    }

    pub fn config(&self) -> &FilesConfig {
        &self.inner.cfg
    }

    fn publish_gauges(&self) {
        let i = &self.inner;
        i.metrics
            .files_disk_bytes
            .set(i.disk_bytes.load(Ordering::Relaxed));
        i.metrics
            .files_uploads
            .set(i.uploads.load(Ordering::Relaxed));
        i.metrics.files_blobs.set(i.blobs.load(Ordering::Relaxed));
    }

    fn blob_path(&self, sha: &str) -> PathBuf {
        let shard = sha.get(..2).unwrap_or("00");
        self.inner.root.join("blobs").join(shard).join(sha)
    }

    fn thumb_path(&self, sha: &str) -> PathBuf {
        self.inner.root.join("thumbs").join(sha)
    }

    /// Opens an upload's original for reading.
    pub async fn open_original(&self, blob: &Blob) -> Result<tokio::fs::File, FileError> {
        open_existing(&self.blob_path(&blob.sha256)).await
    }

    /// Opens a blob's thumbnail for reading.
    pub async fn open_thumbnail(&self, blob: &Blob) -> Result<tokio::fs::File, FileError> {
        open_existing(&self.thumb_path(&blob.sha256)).await
    }

    // ---- uploads ----

    /// Starts an upload of `declared` bytes (the Content-Length, if any) by `user`: checks the
    /// size limit, the quota and the disk floor before a byte of the body is read, reserves
    /// the bytes against the quota, and opens a temporary file.
    pub async fn begin_upload(
        &self,
        user: &UserId,
        declared: Option<u64>,
    ) -> Result<UploadSink, FileError> {
        let cfg = &self.inner.cfg;
        if let Some(n) = declared {
            if n > cfg.max_file_bytes {
                return Err(FileError::TooLarge {
                    limit: cfg.max_file_bytes,
                });
            }
            if n == 0 {
                return Err(FileError::Empty);
            }
        }
        let reserve = declared.unwrap_or(0);
        self.check_disk(reserve)?;
        self.reserve(user, reserve)?;
        let tmp = self
            .inner
            .root
            .join("tmp")
            .join(format!("{:016x}", rand::random::<u64>()));
        let mut sink = UploadSink {
            files: self.clone(),
            user: user.clone(),
            reserved: reserve,
            path: tmp.clone(),
            file: None,
            hasher: Sha256::new(),
            head: Vec::with_capacity(sniff::SNIFF_BYTES),
            size: 0,
            next_disk_check: DISK_CHECK_EVERY,
        };
        // Created after the sink exists, so a failure still gives the reservation back.
        sink.file = Some(tokio::fs::File::create(&tmp).await?);
        Ok(sink)
    }

    fn check_disk(&self, incoming: u64) -> Result<(), FileError> {
        let free = fs4::available_space(&self.inner.root)?;
        if free.saturating_sub(incoming) < self.inner.cfg.min_free_disk_bytes {
            tracing::warn!(
                free,
                floor = self.inner.cfg.min_free_disk_bytes,
                "upload refused: disk below files.min_free_disk_bytes"
            );
            return Err(FileError::InsufficientStorage);
        }
        Ok(())
    }

    fn reserve(&self, user: &UserId, bytes: u64) -> Result<(), FileError> {
        let quota = self.inner.cfg.user_quota_bytes;
        let mut usage = self.inner.usage.lock();
        let u = usage.entry(user.clone()).or_default();
        let used = u.stored + u.reserved;
        if used.saturating_add(bytes) > quota {
            return Err(FileError::QuotaExceeded {
                quota,
                used: u.stored,
            });
        }
        u.reserved += bytes;
        Ok(())
    }

    fn release(&self, user: &UserId, reserved: u64, stored: u64) {
        let mut usage = self.inner.usage.lock();
        let u = usage.entry(user.clone()).or_default();
        u.reserved = u.reserved.saturating_sub(reserved);
        u.stored += stored;
    }

    /// Bytes of stored uploads `user` has, for tests and the API.
    pub fn usage_of(&self, user: &UserId) -> u64 {
        self.inner.usage.lock().get(user).map_or(0, |u| u.stored)
    }

    // ---- thumbnails ----

    fn queue_thumbnail(&self, sha: &str, mime: &str) {
        let mut pending = self.inner.pending.lock();
        if pending.contains_key(sha) {
            return;
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        pending.insert(sha.to_owned(), rx);
        let job = ThumbJob {
            sha256: sha.to_owned(),
            mime: mime.to_owned(),
            done: tx,
        };
        if self.inner.thumb_jobs.send(Some(job)).is_err() {
            pending.remove(sha);
        }
    }

    /// Waits (at most `within`) for a blob's thumbnail if it is being made.
    pub async fn wait_thumbnail(&self, sha: &str, within: Duration) {
        let rx = self.inner.pending.lock().get(sha).cloned();
        if let Some(mut rx) = rx {
            let _ = tokio::time::timeout(within, rx.wait_for(|done| *done)).await;
        }
    }

    /// Stops the thumbnail thread after the thumbnail it is making, and joins it. Blobs still
    /// waiting stay `pending` in the store, and the next start queues them again.
    pub fn close(&self) {
        let Some(handle) = self.inner.thumb_worker.lock().take() else {
            return;
        };
        let _ = self.inner.thumb_jobs.send(None);
        if handle.join().is_err() {
            tracing::error!("the thumbnail thread panicked");
        }
    }

    fn thumbnail_worker(&self, jobs: std::sync::mpsc::Receiver<Option<ThumbJob>>) {
        while let Ok(Some(job)) = jobs.recv() {
            let path = self.blob_path(&job.sha256);
            let started = std::time::Instant::now();
            let op = match thumbs::make(&path, &job.mime, &self.inner.cfg) {
                Ok(t) => match write_file_synced(&self.thumb_path(&job.sha256), &t.bytes) {
                    Ok(()) => {
                        self.inner.metrics.thumbnail("ready");
                        tracing::debug!(sha = %job.sha256, ms = started.elapsed().as_millis() as u64, "thumbnail made");
                        WriteOp::SetThumbnail {
                            sha256: job.sha256.clone(),
                            width: Some(t.original.width),
                            height: Some(t.original.height),
                            state: ThumbState::Ready,
                            thumb: Some(t.size),
                            thumb_bytes: t.bytes.len() as u64,
                            thumb_mime: Some(t.mime.to_owned()),
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "could not write a thumbnail");
                        self.failed_thumbnail(&job.sha256, None)
                    }
                },
                Err(no) => {
                    tracing::info!(sha = %job.sha256, reason = %no.reason, "no thumbnail");
                    self.failed_thumbnail(&job.sha256, no.original)
                }
            };
            let thumb_bytes = match &op {
                WriteOp::SetThumbnail { thumb_bytes, .. } => *thumb_bytes,
                _ => 0,
            };
            let files = self.clone();
            let sha = job.sha256.clone();
            let done = job.done;
            let res = self.inner.store.submit(
                op,
                Box::new(move |r| {
                    match r {
                        Ok(_) => {
                            files
                                .inner
                                .disk_bytes
                                .fetch_add(thumb_bytes, Ordering::Relaxed);
                            files.publish_gauges();
                        }
                        Err(e) => {
                            // The blob was collected meanwhile, or storage failed.
                            tracing::debug!(error = %e, "thumbnail not recorded");
                            let _ = std::fs::remove_file(files.thumb_path(&sha));
                        }
                    }
                    files.inner.pending.lock().remove(&sha);
                    let _ = done.send(true);
                }),
            );
            if let Err(e) = res {
                tracing::warn!(error = %e, "thumbnail result not queued");
                self.inner.pending.lock().remove(&job.sha256);
            }
        }
    }

    fn failed_thumbnail(&self, sha: &str, original: Option<crate::model::Dimensions>) -> WriteOp {
        self.inner.metrics.thumbnail("failed");
        WriteOp::SetThumbnail {
            sha256: sha.to_owned(),
            width: original.map(|d| d.width),
            height: original.map(|d| d.height),
            state: ThumbState::Failed,
            thumb: None,
            thumb_bytes: 0,
            thumb_mime: None,
        }
    }

    // ---- signed credentials ----

    /// A signed URL path (`/files/{id}[/thumb]?u=&exp=&sig=`) for `user`, and when it expires.
    pub fn signed_url(&self, file: Id, user: &str, thumb: bool) -> (String, u64) {
        let exp = now_ms() / 1000 + self.inner.cfg.signed_url_ttl_secs;
        let sig = self.inner.signer.url_signature(file.0, thumb, user, exp);
        let user_q =
            percent_encoding::utf8_percent_encode(user, percent_encoding::NON_ALPHANUMERIC);
        let suffix = if thumb { "/thumb" } else { "" };
        (
            format!("/files/{file}{suffix}?u={user_q}&exp={exp}&sig={sig}"),
            exp * 1000,
        )
    }

    /// Whether a signed URL's parts hold for `file` (its thumbnail when `thumb`).
    pub fn check_signed_url(&self, file: Id, thumb: bool, user: &str, exp: u64, sig: &str) -> bool {
        self.inner
            .signer
            .check_url(file.0, thumb, user, exp, sig, now_ms() / 1000)
    }

    /// A fresh cookie value for `user`, and its lifetime in seconds.
    pub fn cookie_for(&self, user: &str) -> (String, u64) {
        let ttl = self.inner.cfg.cookie_ttl_secs;
        let exp = now_ms() / 1000 + ttl;
        (self.inner.signer.cookie(user, exp), ttl)
    }

    /// The user a cookie value names, if valid.
    pub fn check_cookie(&self, value: &str) -> Option<String> {
        self.inner.signer.check_cookie(value, now_ms() / 1000)
    }

    // ---- collection ----

    /// Runs collection passes every `files.gc_interval_secs` until the task is aborted.
    pub fn start_collector(&self) -> tokio::task::JoinHandle<()> {
        let files = self.clone();
        tokio::spawn(async move {
            let every = Duration::from_secs(files.inner.cfg.gc_interval_secs);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = files.collect_once().await {
                    tracing::warn!(error = %e, "file collection pass failed");
                }
            }
        })
    }

    /// One collection pass: uploads hidden, or unshared for longer than the grace, are
    /// removed; bytes no upload refers to leave the disk. Returns how many were removed.
    pub async fn collect_once(&self) -> Result<usize, FileError> {
        let grace_ms = self.inner.cfg.unreferenced_grace_secs.saturating_mul(1000);
        let created_before = now_ms().saturating_sub(grace_ms);
        let mut removed = 0;
        loop {
            let ids = self
                .inner
                .store
                .unshared_uploads(created_before, 512)
                .await?;
            if ids.is_empty() {
                return Ok(removed);
            }
            let n = ids.len();
            let files = self.clone();
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.inner.store.submit(
                WriteOp::CollectUploads {
                    ids,
                    created_before,
                },
                Box::new(move |r| {
                    // On the writer thread, in commit order: before any later upload's record.
                    let count = match r {
                        Ok(WriteOutput::UploadsCollected(list)) => {
                            let c = list.len();
                            files.forget(list);
                            Ok(c)
                        }
                        Ok(_) => Ok(0),
                        Err(e) => Err(e),
                    };
                    let _ = tx.send(count);
                }),
            )?;
            let count = rx.await.unwrap_or(Err(StoreError::Closed))?;
            removed += count;
            if n < 512 || count == 0 {
                return Ok(removed);
            }
        }
    }

    fn forget(&self, list: Vec<Collected>) {
        let i = &self.inner;
        for c in list {
            i.uploads.fetch_sub(1, Ordering::Relaxed);
            i.metrics.files_collected.inc();
            {
                let mut usage = i.usage.lock();
                if let Some(u) = usage.get_mut(&c.upload.uploader_id) {
                    u.stored = u.stored.saturating_sub(c.size);
                }
            }
            let Some(blob) = c.blob_removed else {
                continue;
            };
            i.blobs.fetch_sub(1, Ordering::Relaxed);
            i.disk_bytes
                .fetch_sub(blob.size + blob.thumb_bytes, Ordering::Relaxed);
            let _ = std::fs::remove_file(self.thumb_path(&blob.sha256));
            let pins = i.pins.lock();
            // An upload of the same bytes in flight keeps them; it records a new blob.
            if !pins.contains_key(&blob.sha256) {
                let _ = std::fs::remove_file(self.blob_path(&blob.sha256));
            }
        }
        self.publish_gauges();
    }
}

/// An upload being received: bytes go to a temporary file and the hash as they arrive. Dropped
/// unfinished, it removes its file and gives back its quota reservation.
pub struct UploadSink {
    files: Files,
    user: UserId,
    reserved: u64,
    path: PathBuf,
    file: Option<tokio::fs::File>,
    hasher: Sha256,
    head: Vec<u8>,
    size: u64,
    next_disk_check: u64,
}

impl UploadSink {
    /// Appends a chunk of the body, enforcing the size limit, quota and disk floor as it grows.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), FileError> {
        let cfg = &self.files.inner.cfg;
        let size = self.size + chunk.len() as u64;
        if size > cfg.max_file_bytes {
            return Err(FileError::TooLarge {
                limit: cfg.max_file_bytes,
            });
        }
        if size > self.reserved {
            // A body longer than declared, or chunked: reserve as it comes.
            let more = size - self.reserved;
            self.files.reserve(&self.user, more)?;
            self.reserved = size;
        }
        if size >= self.next_disk_check {
            self.files.check_disk(DISK_CHECK_EVERY)?;
            self.next_disk_check = size + DISK_CHECK_EVERY;
        }
        if self.head.len() < sniff::SNIFF_BYTES {
            let take = (sniff::SNIFF_BYTES - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        self.hasher.update(chunk);
        if let Some(f) = self.file.as_mut() {
            f.write_all(chunk).await?;
        }
        self.size = size;
        Ok(())
    }

    /// Completes the upload: makes the bytes durable under their hash (unless already stored),
    /// records the upload, and queues its thumbnail.
    pub async fn finish(mut self, name: &str) -> Result<(Upload, Blob), FileError> {
        if self.size == 0 {
            return Err(FileError::Empty);
        }
        let Some(mut file) = self.file.take() else {
            return Err(FileError::Io(std::io::Error::other("upload file closed")));
        };
        file.flush().await?;
        file.sync_all().await?;
        drop(file);
        let sha = hex(&std::mem::take(&mut self.hasher).finalize());
        let mime = sniff::mime_of(&self.head);
        let files = self.files.clone();
        let thumbnailable = crate::model::THUMBNAIL_TYPES.contains(&mime.as_str());
        // Pin the hash and put the bytes in place, under the pins lock (see `forget`).
        {
            let files = files.clone();
            let sha = sha.clone();
            let tmp = self.path.clone();
            tokio::task::spawn_blocking(move || files.place_blob(&sha, &tmp))
                .await
                .map_err(|e| FileError::Io(std::io::Error::other(e.to_string())))??;
        }
        let blob = Blob {
            sha256: sha.clone(),
            size: self.size,
            mime: mime.clone(),
            refs: 1,
            width: None,
            height: None,
            thumb_state: if thumbnailable {
                ThumbState::Pending
            } else {
                ThumbState::None
            },
            thumb: None,
            thumb_bytes: 0,
            thumb_mime: None,
        };
        let op = WriteOp::AddUpload {
            sha256: sha.clone(),
            name: clean_name(name),
            uploader: self.user.clone(),
            blob: Box::new(blob),
        };
        let res = files.inner.store.write(op).await;
        files.unpin(&sha);
        let (upload, blob, new_blob) = match res {
            Ok(WriteOutput::UploadAdded {
                upload,
                blob,
                new_blob,
            }) => (upload, blob, new_blob),
            Ok(_) => return Err(FileError::Store(StoreError::NotFound)),
            Err(e) => return Err(e.into()),
        };
        let i = &files.inner;
        files.release(&self.user, self.reserved, self.size);
        self.reserved = 0;
        i.uploads.fetch_add(1, Ordering::Relaxed);
        i.metrics.files_uploaded.inc();
        if new_blob {
            i.blobs.fetch_add(1, Ordering::Relaxed);
            i.disk_bytes.fetch_add(blob.size, Ordering::Relaxed);
        }
        files.publish_gauges();
        if blob.thumb_state == ThumbState::Pending {
            files.queue_thumbnail(&blob.sha256, &blob.mime);
        }
        tracing::info!(user = %self.user, file = %upload.id, size = blob.size, mime = %blob.mime, new_blob, "upload stored");
        Ok((upload, blob))
    }
}

impl Drop for UploadSink {
    fn drop(&mut self) {
        if self.reserved > 0 {
            self.files.release(&self.user, self.reserved, 0);
        }
        // Gone already when the bytes were moved into place.
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Files {
    /// Moves an upload's temporary file into place as blob `sha` (or drops it when those
    /// bytes are stored already), with the blob pinned against collection.
    fn place_blob(&self, sha: &str, tmp: &Path) -> Result<(), FileError> {
        let mut pins = self.inner.pins.lock();
        *pins.entry(sha.to_owned()).or_default() += 1;
        let dest = self.blob_path(sha);
        let placed = (|| -> std::io::Result<()> {
            if dest.exists() {
                std::fs::remove_file(tmp)?;
                return Ok(());
            }
            let dir = dest.parent().unwrap_or(&self.inner.root);
            std::fs::create_dir_all(dir)?;
            std::fs::rename(tmp, &dest)?;
            // The rename is durable before the record that points at it.
            std::fs::File::open(dir)?.sync_all()
        })();
        if let Err(e) = placed {
            if let Some(n) = pins.get_mut(sha) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(sha);
                }
            }
            return Err(e.into());
        }
        Ok(())
    }

    fn unpin(&self, sha: &str) {
        let mut pins = self.inner.pins.lock();
        if let Some(n) = pins.get_mut(sha) {
            *n -= 1;
            if *n == 0 {
                pins.remove(sha);
            }
        }
    }

    /// Upload view for an upload and its blob.
    pub fn view(upload: &Upload, blob: &Blob) -> UploadView {
        UploadView::new(upload, blob)
    }
}

async fn open_existing(path: &Path) -> Result<tokio::fs::File, FileError> {
    match tokio::fs::File::open(path).await {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(FileError::NotFound),
        Err(e) => Err(e.into()),
    }
}

fn write_file_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Removes blob and thumbnail files that no blob record names.
fn sweep_orphans(root: &Path, known: &HashMap<&str, &Blob>) {
    let mut removed = 0usize;
    if let Ok(shards) = std::fs::read_dir(root.join("blobs")) {
        for shard in shards.flatten() {
            let Ok(entries) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                if !known.contains_key(name.to_string_lossy().as_ref())
                    && std::fs::remove_file(e.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(root.join("thumbs")) {
        for e in entries.flatten() {
            let name = e.file_name();
            let keep = known
                .get(name.to_string_lossy().as_ref())
                .is_some_and(|b| b.thumb_state == ThumbState::Ready);
            if !keep && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, "removed upload files no record refers to");
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A display name from whatever the client sent: the last path component, no control
/// characters, trimmed, at most 255 bytes (cut on a character boundary), never empty. It is
/// only ever shown, never used as a path.
pub fn clean_name(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .filter(|c| {
            !c.is_control() && !matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect();
    let trimmed = cleaned.trim().trim_start_matches('.').trim();
    let mut out = String::with_capacity(trimmed.len().min(MAX_NAME_BYTES));
    for c in trimmed.chars() {
        if out.len() + c.len_utf8() > MAX_NAME_BYTES {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        "file".to_owned()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::clean_name;

    #[test]
    fn names_are_harmless() {
        assert_eq!(clean_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_name("..\\..\\win.ini"), "win.ini");
        assert_eq!(clean_name("a\0b.txt"), "ab.txt");
        assert_eq!(clean_name("..."), "file");
        assert_eq!(clean_name(""), "file");
        assert_eq!(clean_name("dir/"), "file");
        assert_eq!(clean_name("evil\u{202e}gnp.exe"), "evilgnp.exe");
        let long = "é".repeat(1000);
        let c = clean_name(&long);
        assert!(c.len() <= 255 && c.len() >= 254, "{}", c.len());
        assert_eq!(clean_name("holiday photo.jpg"), "holiday photo.jpg");
    }
}
