//! The write-ahead log: each batch's table changes, appended to `<data>/confab.wal` while the
//! batch's redb transaction commits without an fsync of its own; the batch's writes complete
//! once the record (and every earlier one) is on disk and the commit is done. Records are
//! written by log threads, two at a time at most, so a later record can reach the disk before
//! an earlier one: replay stops at the first missing record, and no write past it was ever
//! reported done.
//!
//! Why: a durable redb commit writes the header and ~10 scattered pages (two tables' leaves
//! and branches, the table tree, the freed-page list) before its `fdatasync`; in a probe on
//! this VM's virtio disk, one sequential append took a third of that wait (p50 0.3 ms against
//! 1.1 ms for 10 random pages). redb keeps
//! the non-durable commits' pages in memory, so a crash returns the database to its last
//! durable commit (a checkpoint) and the log holds everything after it.
//!
//! Records are blind writes (this key now holds these bytes, or nothing), so replaying them
//! over any state that already has some of them gives the same result. Layout of a record:
//! `[payload len: u32][crc32 of seq and payload: u32][seq: u64][payload]`, all little-endian;
//! the payload is a run of `[table: u8][kind: u8][key len: u32]([value len: u32])[key]([value])`.
//! Every transaction stores in `meta` the sequence number and offset of the next record, so
//! replay starts exactly there and stops at the first record that is missing, torn (bad crc)
//! or from an older pass over the file (wrong seq). After a checkpoint the next record goes
//! to offset 0 again; a batch that would end past `CAPACITY` commits durably instead, so the
//! file never grows past `CAPACITY`.
//!
//! Records start on 4 KiB boundaries and are written with `O_DIRECT | O_DSYNC`: one write
//! that returns once the device has the bytes, with no page-cache copy and no separate
//! `fdatasync` call (p50 0.35 against 0.47 ms, p99 0.97 against 1.38 ms on this VM's disk).
//! Where the file system refuses `O_DIRECT` (at open, like older tmpfs, or at the first write,
//! for coarser alignment), the log falls back to a buffered write and `fdatasync`, with the
//! same layout.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Past this many bytes of log, the next batch commits durably instead (a checkpoint).
///
/// Why this small: redb keeps the pages of non-durable commits in its write buffer and writes
/// them all out in the next durable commit, which holds the writer meanwhile. With 16 MiB, a
/// checkpoint under fan-out load (taken at half full) held it about 40 ms every 0.6 s: 18 ms
/// of CPU writing the buffered pages, the fsync, and the wait for the core. Those stalls made
/// the tail: at in-flight 128, receive p99 median 90.6 ms (max 129.6) in four runs, against
/// 74.7 (max 77.1) with 4 MiB, and 3 % more deliveries. Crash recovery replays less, too.
pub(super) const CAPACITY: u64 = 4 << 20;
/// An idle writer checkpoints once the log is this old or half full: crash recovery then
/// replays little, and redb can reuse the pages freed since the last checkpoint.
pub(super) const CHECKPOINT_AGE: Duration = Duration::from_secs(2);
/// After a failed checkpoint, the idle writer waits this long before it tries again.
const CHECKPOINT_RETRY: Duration = Duration::from_secs(1);
const HEADER: usize = 16;
/// Records start at multiples of this: `O_DIRECT` needs block-aligned offsets, lengths and
/// buffers (4096 covers 512- and 4096-byte sectors).
const BLOCK: usize = 4096;
const INSERT: u8 = 1;
const REMOVE: u8 = 2;
/// A record bigger than this cannot be ours: stop reading rather than allocate it.
const MAX_RECORD: u32 = 1 << 30;

/// One batch's changes, encoded as they are made. Starts with room for the header.
pub(super) struct Record {
    buf: Vec<u8>,
}

impl Record {
    pub(super) fn new() -> Self {
        Self {
            buf: vec![0; HEADER],
        }
    }

    pub(super) fn clear(&mut self) {
        self.buf.truncate(HEADER);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.buf.len() == HEADER
    }

    /// Bytes the record takes in the log, padded to the next block.
    pub(super) fn len(&self) -> u64 {
        self.buf.len().next_multiple_of(BLOCK) as u64
    }

    pub(super) fn insert(&mut self, table: u8, key: &[u8], value: &[u8]) {
        self.buf.extend_from_slice(&[table, INSERT]);
        self.buf.extend_from_slice(&len32(key).to_le_bytes());
        self.buf.extend_from_slice(&len32(value).to_le_bytes());
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(value);
    }

    pub(super) fn remove(&mut self, table: u8, key: &[u8]) {
        self.buf.extend_from_slice(&[table, REMOVE]);
        self.buf.extend_from_slice(&len32(key).to_le_bytes());
        self.buf.extend_from_slice(key);
    }

    fn seal(&mut self, seq: u64) {
        let payload_len = len32(&self.buf[HEADER..]);
        self.buf[8..16].copy_from_slice(&seq.to_le_bytes());
        let crc = checksum(&self.buf[8..16], &self.buf[HEADER..]);
        self.buf[0..4].copy_from_slice(&payload_len.to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// redb caps keys and values far below 4 GiB, and the writer's batches are bounded.
fn len32(bytes: &[u8]) -> u32 {
    u32::try_from(bytes.len()).unwrap_or(u32::MAX)
}

fn checksum(seq: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(seq);
    h.update(payload);
    h.finalize()
}

/// One change read back from a record.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Change<'a> {
    Insert {
        table: u8,
        key: &'a [u8],
        value: &'a [u8],
    },
    Remove {
        table: u8,
        key: &'a [u8],
    },
}

/// The changes of a payload whose crc matched; `None` if it does not parse (which a matching
/// crc makes a bug, not a torn write).
pub(super) fn changes(mut payload: &[u8]) -> Option<Vec<Change<'_>>> {
    fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if buf.len() < n {
            return None;
        }
        let (head, tail) = buf.split_at(n);
        *buf = tail;
        Some(head)
    }
    fn u32_at(buf: &mut &[u8]) -> Option<usize> {
        let b = take(buf, 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let mut out = Vec::new();
    while !payload.is_empty() {
        let tk = take(&mut payload, 2)?;
        let (table, kind) = (tk[0], tk[1]);
        let klen = u32_at(&mut payload)?;
        match kind {
            INSERT => {
                let vlen = u32_at(&mut payload)?;
                let key = take(&mut payload, klen)?;
                let value = take(&mut payload, vlen)?;
                out.push(Change::Insert { table, key, value });
            }
            REMOVE => {
                let key = take(&mut payload, klen)?;
                out.push(Change::Remove { table, key });
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The log file, shared by the threads that write records at once (each at its own offset).
pub(super) struct LogFile {
    path: PathBuf,
    /// Opened with `O_DIRECT | O_DSYNC` when the file system takes it: a write needs no
    /// `fdatasync`, but an aligned buffer.
    direct_file: Option<File>,
    /// Opened without flags: buffered writes (with `fdatasync`) and replay's reads, which
    /// would need aligned buffers too if direct.
    plain: File,
    /// Cleared for good by the first direct write the file system refuses.
    direct: AtomicBool,
    /// Tests hold this to keep log writes from starting.
    #[cfg(test)]
    pub(super) pause: parking_lot::RwLock<()>,
    /// Tests set this to fail that many log writes.
    #[cfg(test)]
    pub(super) fail_next: std::sync::atomic::AtomicUsize,
    /// Tests set this to fail that many checkpoints (before they write anything).
    #[cfg(test)]
    pub(super) fail_checkpoints: std::sync::atomic::AtomicUsize,
    /// Tests set this to fail that many batch commits (redb's, after the log write starts).
    #[cfg(test)]
    pub(super) fail_commits: std::sync::atomic::AtomicUsize,
}

impl LogFile {
    /// Writes one record (`block`: the record padded to whole blocks, aligned in memory; the
    /// record itself is its first `len` bytes) at `pos`, and returns once it is on disk.
    fn write(&self, block: &[u8], len: usize, pos: u64) -> io::Result<()> {
        if let Some(direct) = self.direct_file.as_ref().filter(|_| self.is_direct()) {
            match direct.write_all_at(block, pos) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // Some file systems take O_DIRECT at open and refuse it at write time
                    // (coarser alignment than ours): write through the page cache from now
                    // on. The refused write wrote nothing, so the record goes to the same place.
                    if self.direct.swap(false, Ordering::AcqRel) {
                        tracing::warn!(error = %e, path = %self.path.display(), "O_DIRECT write refused; the write-ahead log uses fdatasync from now on");
                    }
                }
                other => return other,
            }
        }
        self.plain
            .write_all_at(&block[..len], pos)
            .and_then(|()| self.plain.sync_data())
    }

    fn is_direct(&self) -> bool {
        self.direct.load(Ordering::Acquire)
    }
}

/// One record on its way to the log: sealed, padded and placed. `run` may be called on any
/// thread; several may run at once.
pub(super) struct LogWrite {
    file: Arc<LogFile>,
    buf: Vec<u8>,
    start: usize,
    padded: usize,
    len: usize,
    pos: u64,
}

impl LogWrite {
    /// Writes the record and returns once it is on disk.
    pub(super) fn run(&self) -> io::Result<()> {
        #[cfg(test)]
        {
            drop(self.file.pause.read());
            if take_one(&self.file.fail_next) {
                return Err(io::Error::other("injected log write failure"));
            }
        }
        let block = &self.buf[self.start..self.start + self.padded];
        self.file.write(block, self.len, self.pos)
    }

    /// The buffer, for the next record.
    pub(super) fn into_buf(self) -> Vec<u8> {
        self.buf
    }
}

/// The log's bookkeeping, owned by the writer thread: where the next record goes and when to
/// checkpoint.
pub(super) struct Wal {
    file: Arc<LogFile>,
    /// Offset of the next record.
    pos: u64,
    /// Sequence number of the next record.
    next_seq: u64,
    last_checkpoint: Instant,
    checkpoint_age: Duration,
    /// No idle checkpoint before this: a failing disk must not make the writer spin.
    retry_at: Instant,
    /// Set by a log write or checkpoint that failed: the next batch must commit durably,
    /// which moves the log back to offset 0 past whatever was left there.
    must_checkpoint: bool,
    /// Batches committed without an fsync of redb's since the last checkpoint.
    pending: u64,
}

impl Wal {
    /// Opens (or creates) the log; the next record is `next_seq`, at `pos`.
    pub(super) fn open(
        path: &Path,
        next_seq: u64,
        pos: u64,
        checkpoint_age: Duration,
    ) -> io::Result<Self> {
        Self::open_flags(path, next_seq, pos, checkpoint_age, true)
    }

    fn open_flags(
        path: &Path,
        next_seq: u64,
        pos: u64,
        checkpoint_age: Duration,
        try_direct: bool,
    ) -> io::Result<Self> {
        let direct_flags = if try_direct {
            libc::O_DIRECT | libc::O_DSYNC
        } else {
            0
        };
        let (file, direct) = match open_log(path, direct_flags) {
            Ok(f) => (f, try_direct),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::info!(path = %path.display(), "O_DIRECT refused; the write-ahead log uses fdatasync");
                (open_log(path, 0)?, false)
            }
            Err(e) => return Err(e),
        };
        let (direct_file, plain) = if direct {
            (Some(file), open_log(path, 0)?)
        } else {
            (None, file)
        };
        Ok(Self {
            file: Arc::new(LogFile {
                path: path.to_path_buf(),
                direct_file,
                plain,
                direct: AtomicBool::new(direct),
                #[cfg(test)]
                pause: parking_lot::RwLock::new(()),
                #[cfg(test)]
                fail_next: std::sync::atomic::AtomicUsize::new(0),
                #[cfg(test)]
                fail_checkpoints: std::sync::atomic::AtomicUsize::new(0),
                #[cfg(test)]
                fail_commits: std::sync::atomic::AtomicUsize::new(0),
            }),
            pos,
            next_seq,
            last_checkpoint: Instant::now(),
            checkpoint_age,
            retry_at: Instant::now(),
            must_checkpoint: false,
            pending: 0,
        })
    }

    /// Sequence number and offset of the next record.
    pub(super) fn next(&self) -> (u64, u64) {
        (self.next_seq, self.pos)
    }

    /// Where the log stands once `record` is appended, or `None` when this batch must commit
    /// durably instead (the log is full, or an earlier failure left it in doubt).
    pub(super) fn after(&self, record: &Record) -> Option<(u64, u64)> {
        let end = self.pos + record.len();
        (!self.must_checkpoint && end <= CAPACITY).then_some((self.next_seq + 1, end))
    }

    /// Seals `record` as the next one and places it after the last, in `buf` (a spare from an
    /// earlier write, or empty): the write itself is the caller's, on any thread. The seq and
    /// the place are used up either way: a half-written record must never match a later one.
    pub(super) fn stage(&mut self, record: &mut Record, mut buf: Vec<u8>) -> LogWrite {
        record.seal(self.next_seq);
        self.next_seq += 1;
        let padded = record.len() as usize;
        if buf.len() < padded + BLOCK {
            buf = vec![0; padded + BLOCK];
        }
        let start = buf.as_ptr().align_offset(BLOCK);
        let block = &mut buf[start..start + padded];
        block[..record.buf.len()].copy_from_slice(&record.buf);
        block[record.buf.len()..].fill(0);
        let pos = self.pos;
        self.pos += record.len();
        LogWrite {
            file: self.file.clone(),
            buf,
            start,
            padded,
            len: record.buf.len(),
            pos,
        }
    }

    /// A staged record's write failed: whether or not it reached the disk, the log is in
    /// doubt from there on, so the next commit is durable and the log starts over.
    pub(super) fn write_failed(&mut self) {
        self.must_checkpoint = true;
    }

    /// Stages and writes the record, for tests.
    #[cfg(test)]
    pub(super) fn append(&mut self, record: &mut Record) -> io::Result<()> {
        let write = self.stage(record, Vec::new());
        write.run().inspect_err(|_| self.write_failed())
    }

    #[cfg(test)]
    fn is_direct(&self) -> bool {
        self.file.is_direct()
    }

    /// The file, for tests that pause or fail its writes.
    #[cfg(test)]
    pub(super) fn file(&self) -> Arc<LogFile> {
        self.file.clone()
    }

    /// Whether a test asked for this checkpoint to fail.
    #[cfg(test)]
    pub(super) fn checkpoint_fails(&self) -> bool {
        take_one(&self.file.fail_checkpoints)
    }

    /// Whether a test asked for this batch's commit to fail.
    #[cfg(test)]
    pub(super) fn commit_fails(&self) -> bool {
        take_one(&self.file.fail_commits)
    }

    /// A checkpoint failed: the next batch commits durably, and the idle writer tries again
    /// after `CHECKPOINT_RETRY`.
    pub(super) fn checkpoint_failed(&mut self) {
        self.must_checkpoint = true;
        self.retry_at = Instant::now() + CHECKPOINT_RETRY;
    }

    /// A batch committed without redb's fsync, covered by the record just appended.
    pub(super) fn committed(&mut self) {
        self.pending += 1;
    }

    /// A durable commit stored `(next_seq, 0)`: the log starts over.
    pub(super) fn checkpointed(&mut self) {
        self.pos = 0;
        self.pending = 0;
        self.must_checkpoint = false;
        self.last_checkpoint = Instant::now();
    }

    /// Replay committed the log up to `seq` durably: the log starts over there.
    pub(super) fn resume(&mut self, seq: u64) {
        self.next_seq = seq;
        self.checkpointed();
    }

    /// Whether an idle writer should checkpoint now.
    pub(super) fn checkpoint_due(&self) -> bool {
        self.checkpoint_in() == Some(Duration::ZERO)
    }

    /// How long until an idle writer should checkpoint; `None` when nothing waits for one.
    pub(super) fn checkpoint_in(&self) -> Option<Duration> {
        if self.pending == 0 {
            return None;
        }
        let now = Instant::now();
        let due = if self.must_checkpoint || self.pos >= CAPACITY / 2 {
            now
        } else {
            self.last_checkpoint + self.checkpoint_age
        };
        Some(due.max(self.retry_at).saturating_duration_since(now))
    }

    /// Whether anything is committed that only the log makes durable.
    pub(super) fn has_pending(&self) -> bool {
        self.pending > 0
    }

    /// Reads the record numbered `seq` at `pos`: its payload and the offset after it, or
    /// `None` when there is no such record there (end of the log).
    pub(super) fn read(&self, seq: u64, pos: u64) -> io::Result<Option<(Vec<u8>, u64)>> {
        let mut header = [0u8; HEADER];
        if !read_full(&self.file.plain, &mut header, pos)? {
            return Ok(None);
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let found_seq = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        if found_seq != seq || len > MAX_RECORD {
            return Ok(None);
        }
        let mut payload = vec![0u8; len as usize];
        if !read_full(&self.file.plain, &mut payload, pos + HEADER as u64)? {
            return Ok(None);
        }
        if checksum(&header[8..16], &payload) != crc {
            return Ok(None);
        }
        let end = (HEADER + len as usize).next_multiple_of(BLOCK) as u64;
        Ok(Some((payload, pos + end)))
    }
}

/// Takes one from a test's failure count; `true` if there was one to take.
#[cfg(test)]
fn take_one(count: &std::sync::atomic::AtomicUsize) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
}

/// Opens (or creates) the log file for writing, with extra open flags.
fn open_log(path: &Path, flags: i32) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(flags)
        .open(path)
}

/// Fills `buf` from `pos`; false if the file ends first.
fn read_full(file: &File, buf: &mut [u8], pos: u64) -> io::Result<bool> {
    match file.read_exact_at(buf, pos) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(entries: &[(&[u8], Option<&[u8]>)]) -> Record {
        let mut r = Record::new();
        for (k, v) in entries {
            match v {
                Some(v) => r.insert(3, k, v),
                None => r.remove(4, k),
            }
        }
        r
    }

    #[test]
    fn records_read_back_in_order_and_stop_at_the_end() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("w");
        let mut wal = Wal::open(&path, 7, 0, CHECKPOINT_AGE).expect("open");
        wal.append(&mut record(&[(b"k1", Some(b"v1")), (b"k2", None)]))
            .expect("append");
        wal.append(&mut record(&[(b"k3", Some(b""))]))
            .expect("append");
        // Each record fills one block.
        assert_eq!(wal.next(), (9, 2 * 4096));

        let (p1, next) = wal.read(7, 0).expect("read").expect("first record");
        assert_eq!(
            changes(&p1).expect("parses"),
            vec![
                Change::Insert {
                    table: 3,
                    key: b"k1",
                    value: b"v1"
                },
                Change::Remove {
                    table: 4,
                    key: b"k2"
                }
            ]
        );
        let (p2, end) = wal.read(8, next).expect("read").expect("second record");
        assert_eq!(changes(&p2).expect("parses").len(), 1);
        assert_eq!(end, wal.next().1);
        assert!(wal.read(9, end).expect("read").is_none(), "nothing after");
        assert!(
            wal.read(8, 0).expect("read").is_none(),
            "wrong seq is no record"
        );
    }

    /// Where O_DIRECT is refused (older tmpfs), the log writes through the page cache and
    /// fdatasyncs, with the same layout.
    #[test]
    fn without_o_direct_the_log_still_works() {
        let dir = tempfile::tempdir().expect("dir");
        let mut wal =
            Wal::open_flags(&dir.path().join("w"), 1, 0, CHECKPOINT_AGE, false).expect("open");
        assert!(!wal.is_direct());
        wal.append(&mut record(&[(b"k", Some(b"v"))]))
            .expect("append");
        let (p, end) = wal.read(1, 0).expect("read").expect("record 1");
        assert_eq!(changes(&p).expect("parses").len(), 1);
        assert_eq!(end, 4096);
    }

    /// A direct write the file system refuses (here: an offset off the block grid) moves the
    /// log to buffered writes for good, and the record still lands.
    #[test]
    fn a_refused_direct_write_falls_back_to_buffered() {
        let dir = tempfile::tempdir().expect("dir");
        let mut wal = Wal::open(&dir.path().join("w"), 1, 100, CHECKPOINT_AGE).expect("open");
        if !wal.is_direct() {
            eprintln!("this file system refuses O_DIRECT at open; nothing to fall back from");
            return;
        }
        wal.append(&mut record(&[(b"k", Some(b"v"))]))
            .expect("append falls back");
        assert!(!wal.is_direct());
        let (p, _) = wal.read(1, 100).expect("read").expect("record 1");
        assert_eq!(changes(&p).expect("parses").len(), 1);
        wal.append(&mut record(&[(b"k2", Some(b"v2"))]))
            .expect("the next append is buffered");
        assert!(wal.read(2, 100 + 4096).expect("read").is_some());
    }

    #[test]
    fn a_torn_or_corrupt_record_ends_the_log() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("w");
        let mut wal = Wal::open(&path, 1, 0, CHECKPOINT_AGE).expect("open");
        wal.append(&mut record(&[(b"a", Some(b"1"))]))
            .expect("append");
        let second = wal.next().1;
        wal.append(&mut record(&[(b"b", Some(b"22222222"))]))
            .expect("append");
        let full = std::fs::metadata(&path).expect("meta").len();

        // Torn: the file ends inside the second record.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        f.set_len(second + 20).expect("truncate");
        assert!(wal.read(1, 0).expect("read").is_some());
        assert!(wal.read(2, second).expect("read").is_none());

        // Corrupt: a flipped payload byte fails the crc.
        f.set_len(full).expect("extend");
        let at = second + HEADER as u64 + 3;
        let mut byte = [0u8; 1];
        f.read_exact_at(&mut byte, at).expect("read");
        f.write_all_at(&[byte[0] ^ 0x40], at).expect("flip");
        assert!(wal.read(2, second).expect("read").is_none());
    }

    #[test]
    fn after_a_checkpoint_old_records_are_not_mistaken_for_new_ones() {
        let dir = tempfile::tempdir().expect("dir");
        let mut wal = Wal::open(&dir.path().join("w"), 1, 0, CHECKPOINT_AGE).expect("open");
        for _ in 0..3 {
            wal.append(&mut record(&[(b"old", Some(b"x"))]))
                .expect("append");
            wal.committed();
        }
        assert!(wal.has_pending());
        wal.checkpointed();
        assert_eq!(wal.next(), (4, 0));
        // The old first record still sits at 0 with seq 1: it is not record 4.
        assert!(wal.read(4, 0).expect("read").is_none());
        wal.append(&mut record(&[(b"new", Some(b"y"))]))
            .expect("append");
        let (p, end) = wal.read(4, 0).expect("read").expect("record 4");
        assert_eq!(
            changes(&p).expect("parses"),
            vec![Change::Insert {
                table: 3,
                key: b"new",
                value: b"y"
            }]
        );
        // What follows is the old record 2 or 3 (torn by the overwrite or not): never 5.
        assert!(wal.read(5, end).expect("read").is_none());
    }

    /// A failing checkpoint is retried by the idle writer a second later, not in a loop.
    #[test]
    fn a_failed_checkpoint_waits_before_the_next_try() {
        let dir = tempfile::tempdir().expect("dir");
        let mut wal = Wal::open(&dir.path().join("w"), 1, 0, CHECKPOINT_AGE).expect("open");
        assert_eq!(wal.checkpoint_in(), None, "nothing pending");
        wal.append(&mut record(&[(b"k", Some(b"v"))]))
            .expect("append");
        wal.committed();
        let wait = wal.checkpoint_in().expect("pending");
        assert!(wait > Duration::ZERO && wait <= CHECKPOINT_AGE);
        wal.checkpoint_failed();
        assert!(
            wal.after(&record(&[(b"k", Some(b"v"))])).is_none(),
            "next batch durable"
        );
        let wait = wal.checkpoint_in().expect("still pending");
        assert!(
            wait > CHECKPOINT_RETRY / 2 && wait <= CHECKPOINT_RETRY,
            "retry in {wait:?}"
        );
        assert!(!wal.checkpoint_due());
        wal.checkpointed();
        assert_eq!(wal.checkpoint_in(), None);
    }

    #[test]
    fn a_full_log_or_a_failure_asks_for_a_durable_commit() {
        let dir = tempfile::tempdir().expect("dir");
        let mut wal =
            Wal::open(&dir.path().join("w"), 1, CAPACITY - 4096, CHECKPOINT_AGE).expect("open");
        assert!(wal.after(&record(&[(b"k", Some(b"v"))])).is_some());
        assert!(
            wal.after(&record(&[(b"k", Some(&[0u8; 4096]))])).is_none(),
            "does not fit"
        );
        wal.write_failed();
        assert!(wal.after(&record(&[(b"k", Some(b"v"))])).is_none());
        wal.checkpointed();
        assert_eq!(wal.next(), (1, 0));
        assert!(wal.after(&record(&[(b"k", Some(b"v"))])).is_some());
    }
}
