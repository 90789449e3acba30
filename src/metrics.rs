//! Process-wide counters and histograms, rendered as Prometheus text at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type CodeLabels = Vec<(&'static str, &'static str)>;

/// Every metric Confab exports. Cheap to update from any thread (atomics inside).
pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub connections_total: Counter,
    pub connections_refused: Family<CodeLabels, Counter>,
    pub messages_in: Counter,
    pub deliveries: Counter,
    pub frames_out: Counter,
    pub errors: Family<CodeLabels, Counter>,
    pub slow_consumer_closes: Counter,
    pub commit_batch_size: Histogram,
    pub commit_seconds: Histogram,
    pub checkpoint_seconds: Histogram,
    pub log_write_seconds: Histogram,
    pub write_queue_depth: Gauge,
    pub storage_stopped: Gauge,
    pub storage_disk_full: Gauge,
    resident_bytes: Gauge<u64, AtomicU64>,
    storage_bytes: Gauge<u64, AtomicU64>,
    pub files_disk_bytes: Gauge<u64, AtomicU64>,
    pub files_uploads: Gauge<u64, AtomicU64>,
    pub files_blobs: Gauge<u64, AtomicU64>,
    pub files_uploaded: Counter,
    pub files_collected: Counter,
    pub thumbnails: Family<CodeLabels, Counter>,
    pub search_index_bytes: Gauge<u64, AtomicU64>,
    pub search_lag: Gauge<u64, AtomicU64>,
    pub search_indexed: Counter,
    pub memory_released_bytes: Counter,
    pub http_requests: Counter,
    pub auth_failures: Family<CodeLabels, Counter>,
    pub auth_throttled: Family<CodeLabels, Counter>,
    limiter_keys: Family<CodeLabels, Gauge<u64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            connections: Gauge::default(),
            connections_total: Counter::default(),
            connections_refused: Family::default(),
            messages_in: Counter::default(),
            deliveries: Counter::default(),
            frames_out: Counter::default(),
            errors: Family::default(),
            slow_consumer_closes: Counter::default(),
            commit_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            commit_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 14)),
            checkpoint_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 14)),
            log_write_seconds: Histogram::new(exponential_buckets(0.000_125, 2.0, 15)),
            write_queue_depth: Gauge::default(),
            storage_stopped: Gauge::default(),
            storage_disk_full: Gauge::default(),
            resident_bytes: Gauge::default(),
            storage_bytes: Gauge::default(),
            files_disk_bytes: Gauge::default(),
            files_uploads: Gauge::default(),
            files_blobs: Gauge::default(),
            files_uploaded: Counter::default(),
            files_collected: Counter::default(),
            thumbnails: Family::default(),
            search_index_bytes: Gauge::default(),
            search_lag: Gauge::default(),
            search_indexed: Counter::default(),
            memory_released_bytes: Counter::default(),
            http_requests: Counter::default(),
            auth_failures: Family::default(),
            auth_throttled: Family::default(),
            limiter_keys: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "confab_connections",
            "Open WebSocket connections",
            m.connections.clone(),
        );
        r.register(
            "confab_connections_accepted",
            "WebSocket connections accepted",
            m.connections_total.clone(),
        );
        r.register(
            "confab_connections_refused",
            "WebSocket upgrades refused, by reason",
            m.connections_refused.clone(),
        );
        r.register(
            "confab_messages_in",
            "Messages stored (acked)",
            m.messages_in.clone(),
        );
        r.register(
            "confab_deliveries",
            "Messages queued to recipient connections",
            m.deliveries.clone(),
        );
        r.register(
            "confab_frames_out",
            "Frames written to WebSocket connections",
            m.frames_out.clone(),
        );
        r.register(
            "confab_errors",
            "Errors answered to clients, by code",
            m.errors.clone(),
        );
        r.register(
            "confab_slow_consumer_closes",
            "Connections closed because their outbound queue overflowed",
            m.slow_consumer_closes.clone(),
        );
        r.register(
            "confab_commit_batch_size",
            "Writes per storage commit (group commit)",
            m.commit_batch_size.clone(),
        );
        r.register(
            "confab_commit_seconds",
            "Time from the start of a storage commit (group commit) until its writes complete, durable",
            m.commit_seconds.clone(),
        );
        r.register(
            "confab_checkpoint_seconds",
            "Time a storage checkpoint (a durable commit that starts the write-ahead log over) holds the writer",
            m.checkpoint_seconds.clone(),
        );
        r.register(
            "confab_log_write_seconds",
            "Time from a log thread starting a write-ahead log record's write until it runs again with the record on disk (the write, its flush, and the wait for the CPU)",
            m.log_write_seconds.clone(),
        );
        r.register(
            "confab_write_queue_depth",
            "Writes waiting for the storage writer",
            m.write_queue_depth.clone(),
        );
        r.register(
            "confab_storage_stopped",
            "1 once storage has stopped after a failed disk write (every write fails until a restart)",
            m.storage_stopped.clone(),
        );
        r.register(
            "confab_storage_disk_full",
            "1 while writes are refused because free disk space is below storage.min_free_disk_bytes",
            m.storage_disk_full.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident set size of the process",
            m.resident_bytes.clone(),
        );
        r.register(
            "confab_storage_bytes",
            "Size of the database file",
            m.storage_bytes.clone(),
        );
        r.register(
            "confab_files_disk_bytes",
            "Bytes of uploads and thumbnails on disk",
            m.files_disk_bytes.clone(),
        );
        r.register(
            "confab_files_uploads",
            "Stored uploads",
            m.files_uploads.clone(),
        );
        r.register(
            "confab_files_blobs",
            "Distinct stored contents (uploads of the same bytes share one)",
            m.files_blobs.clone(),
        );
        r.register(
            "confab_files_uploaded",
            "Uploads accepted",
            m.files_uploaded.clone(),
        );
        r.register(
            "confab_files_collected",
            "Unshared uploads removed by garbage collection",
            m.files_collected.clone(),
        );
        r.register(
            "confab_thumbnails",
            "Thumbnails attempted, by result",
            m.thumbnails.clone(),
        );
        r.register(
            "confab_search_index_bytes",
            "Size of the search index on disk",
            m.search_index_bytes.clone(),
        );
        r.register(
            "confab_limiter_keys",
            "Keys (users, client addresses) a rate limiter remembers, by limiter",
            m.limiter_keys.clone(),
        );
        r.register(
            "confab_search_lag",
            "Message changes committed but not yet searchable",
            m.search_lag.clone(),
        );
        r.register(
            "confab_search_indexed",
            "Message changes applied to the search index",
            m.search_indexed.clone(),
        );
        r.register(
            "confab_http_requests",
            "HTTP requests received (REST, files, the UI, WebSocket upgrades)",
            m.http_requests.clone(),
        );
        r.register(
            "confab_memory_released_bytes",
            "Bytes the resident size fell by when free allocator memory was returned to the \
             system after a quiet spell",
            m.memory_released_bytes.clone(),
        );
        r.register(
            "confab_auth_failures",
            "Refused logins, registrations and setups (wrong password, taken name, bad token, ...), by kind",
            m.auth_failures.clone(),
        );
        r.register(
            "confab_auth_throttled",
            "Logins, registrations and setups refused with 429 before being checked, by kind",
            m.auth_throttled.clone(),
        );
        // Present at 0 from the start, so a dashboard's rate has a baseline.
        for kind in ["login", "register", "setup"] {
            m.auth_failures
                .get_or_create(&vec![("kind", kind)])
                .inc_by(0);
            m.auth_throttled
                .get_or_create(&vec![("kind", kind)])
                .inc_by(0);
        }
        Self { registry, ..m }
    }

    /// Counts an error answered to a client.
    pub fn error(&self, code: crate::protocol::ErrorCode) {
        self.errors
            .get_or_create(&vec![("code", code.as_str())])
            .inc();
    }

    /// Counts a thumbnail attempt (`ready` or `failed`).
    pub fn thumbnail(&self, result: &'static str) {
        self.thumbnails
            .get_or_create(&vec![("result", result)])
            .inc();
    }

    /// Counts a refused login, registration or setup (`kind`: login, register, setup).
    pub fn auth_failure(&self, kind: &'static str) {
        self.auth_failures
            .get_or_create(&vec![("kind", kind)])
            .inc();
    }

    /// Counts a login, registration or setup held back by its rate limit.
    pub fn auth_throttled(&self, kind: &'static str) {
        self.auth_throttled
            .get_or_create(&vec![("kind", kind)])
            .inc();
    }

    /// Sets how many keys the rate limiter `name` remembers.
    pub fn limiter_keys(&self, name: &'static str, keys: usize) {
        self.limiter_keys
            .get_or_create(&vec![("limiter", name)])
            .set(keys as u64);
    }

    /// Counts a refused upgrade.
    pub fn refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// Prometheus text exposition, sampling process gauges first.
    pub fn render(&self, storage_file: &std::path::Path) -> String {
        if let Some(rss) = resident_bytes() {
            self.resident_bytes.set(rss);
        }
        if let Ok(meta) = std::fs::metadata(storage_file) {
            self.storage_bytes.set(meta.len());
        }
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Resident set size from /proc (Linux); `None` elsewhere.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
