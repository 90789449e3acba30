//! Configuration: figment layers (defaults < file < CONFAB_* env < flags) into a validated `Config`.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Value};
use serde::{Deserialize, Deserializer, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Figment(#[from] Box<figment::Error>),
    #[error("configuration key {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    #[serde(deserialize_with = "stringish")]
    pub listen: String,
    pub allowed_origins: Vec<String>,
    pub max_connections: usize,
    pub header_read_timeout_secs: u64,
    /// Seconds within which each 64 KiB of a request body (or its end) must arrive; a body
    /// trickled in more slowly is cut off with 408 (JSON bodies: the whole body, at most
    /// 64 KiB, within this time; uploads: at least 64 KiB per this many seconds).
    pub body_timeout_secs: u64,
    pub heartbeat_interval_secs: u64,
    pub idle_timeout_secs: u64,
    pub shutdown_grace_secs: u64,
    /// Reverse proxies (CIDRs, e.g. "127.0.0.1/32", "10.0.0.0/8", "::1/128") whose
    /// `Forwarded` / `X-Forwarded-For` headers name the client. Empty: the peer address is the
    /// client, and those headers are ignored.
    pub trusted_proxies: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            allowed_origins: Vec::new(),
            max_connections: 20_000,
            header_read_timeout_secs: 10,
            body_timeout_secs: 30,
            heartbeat_interval_secs: 30,
            idle_timeout_secs: 75,
            shutdown_grace_secs: 5,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub max_batch: usize,
    /// Writes are refused with `insufficient_storage` while the data directory's filesystem
    /// has less than this free, and resume by themselves once it has more (0: never refuse).
    pub min_free_disk_bytes: u64,
    /// Bytes of redb's page cache (read cache plus the write buffer of pages not yet on
    /// disk). redb's own default is 1 GiB, which a server that serves history keeps filling.
    pub cache_bytes: usize,
}

/// redb's cache when none is configured. History pages are read once per request and the
/// newest pages of busy rooms stay hot, so a small cache keeps reads fast while the resident
/// size of a server holding a large history stays that of a small device (see README,
/// "Performance": RSS with 1M messages).
pub const DEFAULT_CACHE_BYTES: usize = 16 * 1024 * 1024;

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            max_batch: 2048,
            // Room for the write-ahead log (4 MiB) and the pages a checkpoint writes out.
            min_free_disk_bytes: 32 * 1024 * 1024,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// A host application's public key for verifying the tokens it mints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    pub alg: String,
    pub path: PathBuf,
    #[serde(default)]
    pub kid: Option<String>,
    /// The prefix of the user ids this key vouches for: a token with `sub` "42" verified by
    /// this key is user `<namespace>:42`, never a built-in account (default `app`). Keys of
    /// one host application share a namespace; two applications need two.
    #[serde(default = "default_namespace")]
    pub namespace: String,
}

fn default_namespace() -> String {
    DEFAULT_KEY_NAMESPACE.to_owned()
}

/// The namespace of a public key that names none.
pub const DEFAULT_KEY_NAMESPACE: &str = "app";

pub use crate::model::Registration;

#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    #[serde(
        deserialize_with = "opt_stringish",
        skip_serializing_if = "Option::is_none"
    )]
    pub jwt_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret_file: Option<PathBuf>,
    pub public_keys: Vec<PublicKeyConfig>,
    #[serde(
        deserialize_with = "opt_stringish",
        skip_serializing_if = "Option::is_none"
    )]
    pub issuer: Option<String>,
    #[serde(
        deserialize_with = "opt_stringish",
        skip_serializing_if = "Option::is_none"
    )]
    pub audience: Option<String>,
    pub leeway_secs: u64,
    pub token_ttl_secs: u64,
    /// Self-registration of built-in accounts. Unset: `open`, or `closed` once
    /// `public_keys` holds a host application's key (see `registration`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registration: Option<Registration>,
}

impl AuthConfig {
    /// The registration mode in force: as configured, else closed when a host application's
    /// keys are configured (its users never register) and open otherwise.
    pub fn registration(&self) -> Registration {
        self.registration
            .unwrap_or(if !self.public_keys.is_empty() {
                Registration::Closed
            } else {
                Registration::Open
            })
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwt_secret_file", &self.jwt_secret_file)
            .field("public_keys", &self.public_keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwt_secret_file: None,
            public_keys: Vec::new(),
            issuer: None,
            audience: None,
            leeway_secs: 30,
            token_ttl_secs: 86_400,
            registration: None,
        }
    }
}

/// Sizes and bounds that protect the server from its clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_message_bytes: usize,
    pub outbound_queue_bytes: usize,
    pub history_max_page: u32,
    pub max_room_name_chars: usize,
    pub max_room_topic_chars: usize,
    pub max_rooms_per_user: usize,
    pub max_connections_per_user: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            max_message_bytes: 16 * 1024,
            outbound_queue_bytes: 1024 * 1024,
            history_max_page: 200,
            max_room_name_chars: 80,
            max_room_topic_chars: 500,
            max_rooms_per_user: 1000,
            max_connections_per_user: 32,
        }
    }
}

/// Token buckets: a steady rate per second and a burst.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimits {
    pub messages_per_sec: u32,
    pub messages_burst: u32,
    pub user_messages_per_sec: u32,
    pub user_messages_burst: u32,
    pub typing_per_sec: u32,
    pub typing_burst: u32,
    pub joins_per_sec: u32,
    pub joins_burst: u32,
    pub connects_per_sec_per_ip: u32,
    pub connects_burst_per_ip: u32,
    pub uploads_per_sec: u32,
    pub uploads_burst: u32,
    pub abuse_strikes: u32,
    /// Failed logins allowed per account and client address before waits start.
    pub login_free_failures: u32,
    /// Failed logins allowed per client address, across all accounts, before its waits start.
    pub login_address_free_failures: u32,
    /// Failed logins allowed per account, across all addresses, before account-wide waits
    /// start (counted apart for addresses still within their own free failures and the rest).
    pub login_account_free_failures: u32,
    /// The first wait after the free failures, in milliseconds; it doubles per further failure.
    pub login_backoff_base_ms: u64,
    /// The longest wait, in milliseconds: how long at most an attacker can hold a login back.
    pub login_backoff_max_ms: u64,
    /// Seconds without a failure after which a key's failures are forgotten.
    pub login_forget_secs: u64,
    /// Registration and setup attempts per client address: the steady rate per minute.
    pub registrations_per_min_per_ip: u32,
    /// Registration and setup attempts per client address that may come at once.
    pub registrations_burst_per_ip: u32,
    /// Seconds between sweeps that forget the buckets (per user, per client address) that
    /// are full again, so the maps stay as large as the recent traffic, not all traffic ever.
    pub forget_idle_secs: u64,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            messages_per_sec: 10,
            messages_burst: 30,
            user_messages_per_sec: 20,
            user_messages_burst: 60,
            typing_per_sec: 2,
            typing_burst: 6,
            joins_per_sec: 1,
            joins_burst: 20,
            connects_per_sec_per_ip: 10,
            connects_burst_per_ip: 50,
            uploads_per_sec: 2,
            uploads_burst: 20,
            abuse_strikes: 50,
            login_free_failures: 5,
            login_address_free_failures: 20,
            login_account_free_failures: 100,
            login_backoff_base_ms: 1000,
            login_backoff_max_ms: 60_000,
            login_forget_secs: 900,
            registrations_per_min_per_ip: 2,
            registrations_burst_per_ip: 10,
            forget_idle_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PresenceConfig {
    pub offline_grace_secs: u64,
    pub push_max_room_members: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            offline_grace_secs: 5,
            push_max_room_members: 1000,
        }
    }
}

/// Uploads: sizes, quota, disk floor, thumbnails, collection, download credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct FilesConfig {
    pub max_file_bytes: u64,
    pub user_quota_bytes: u64,
    pub min_free_disk_bytes: u64,
    pub thumbnail_max_px: u32,
    pub max_image_pixels: u64,
    pub max_decode_bytes: u64,
    pub thumbnail_wait_ms: u64,
    pub unreferenced_grace_secs: u64,
    pub gc_interval_secs: u64,
    pub signed_url_ttl_secs: u64,
    pub cookie_ttl_secs: u64,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            max_file_bytes: 100 * 1024 * 1024,
            user_quota_bytes: 1024 * 1024 * 1024,
            min_free_disk_bytes: 512 * 1024 * 1024,
            thumbnail_max_px: 320,
            max_image_pixels: 50_000_000,
            max_decode_bytes: 256 * 1024 * 1024,
            thumbnail_wait_ms: 5000,
            unreferenced_grace_secs: 86_400,
            gc_interval_secs: 600,
            signed_url_ttl_secs: 600,
            cookie_ttl_secs: 43_200,
        }
    }
}

/// The search index: how often it commits and how much it buffers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SearchConfig {
    pub commit_interval_ms: u64,
    pub writer_memory_bytes: usize,
    pub writer_idle_close_secs: u64,
    /// Nice value (0–19) of the indexer and the tantivy threads it starts.
    pub indexer_nice: i32,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            commit_interval_ms: 500,
            writer_memory_bytes: 32 * 1024 * 1024,
            writer_idle_close_secs: 30,
            indexer_nice: 10,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    #[serde(deserialize_with = "stringish")]
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// The whole configuration, as layered; `resolve` checks it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RawConfig {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub limits: Limits,
    pub rate_limits: RateLimits,
    pub presence: PresenceConfig,
    pub files: FilesConfig,
    pub search: SearchConfig,
    pub node: NodeConfig,
    pub log: LogConfig,
}

/// A checked configuration: what the server runs on.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `server.trusted_proxies`, parsed.
    pub trusted_proxies: Vec<Cidr>,
    /// The process's soft open-file limit, when the binary read it at start: the connection
    /// cap is fitted below it (`server::Caps`). `None` (tests, embedding): not fitted.
    pub open_file_limit: Option<u64>,
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub auth: AuthConfig,
    pub limits: Limits,
    pub rate_limits: RateLimits,
    pub presence: PresenceConfig,
    pub files: FilesConfig,
    pub search: SearchConfig,
    pub node: NodeConfig,
    pub log: LogConfig,
}

/// The layered sources, kept to report where each value came from.
pub struct Loaded {
    pub config: Config,
    /// Keys present in a source that no setting reads (typos, removed settings).
    pub unknown_keys: Vec<String>,
    /// `key = value   (source)` for every leaf setting, secrets masked.
    pub provenance: Vec<(String, String, String)>,
}

/// Command-line values that override every other layer (`None` = not given).
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
}

/// Loads defaults < `config.toml` (or `file`) < CONFAB_* env < `overrides`, then validates.
/// A missing default `config.toml` is fine; a missing explicit `--config` file is an error.
pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Loaded, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(RawConfig::default()));
    match file {
        Some(path) => {
            if !path.exists() {
                return Err(invalid(
                    "--config",
                    format!("{} does not exist", path.display()),
                ));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        None if Path::new("config.toml").is_file() => {
            figment = figment.merge(Toml::file_exact("config.toml"));
        }
        None => {}
    }
    figment = figment.merge(Env::prefixed("CONFAB_").split("__"));
    let mut flags = Dict::new();
    let mut flag = |key: &str, v: String| {
        if let Value::Dict(_, d) = figment::util::nest(key, Value::from(v)) {
            merge_dict(&mut flags, d);
        }
    };
    if let Some(l) = &overrides.listen {
        flag("server.listen", l.clone());
    }
    if let Some(d) = &overrides.data_dir {
        flag("storage.data_dir", d.to_string_lossy().into_owned());
    }
    if let Some(l) = &overrides.log_level {
        flag("log.level", l.clone());
    }
    figment = figment.merge(Flags(flags));

    let raw: RawConfig = figment.extract().map_err(Box::new)?;
    let merged: Value = figment.extract().map_err(Box::new)?;
    let mut unknown_keys = Vec::new();
    let _: Result<RawConfig, _> = serde_ignored::deserialize(&merged, |path| {
        unknown_keys.push(path.to_string());
    });

    let mut provenance = Vec::new();
    collect_leaves(&figment, &merged, String::new(), &mut provenance);

    Ok(Loaded {
        config: resolve(raw)?,
        unknown_keys,
        provenance,
    })
}

fn collect_leaves(
    figment: &Figment,
    value: &Value,
    prefix: String,
    out: &mut Vec<(String, String, String)>,
) {
    if let Value::Dict(_, dict) = value {
        for (k, v) in dict {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            collect_leaves(figment, v, key, out);
        }
        return;
    }
    let shown = if prefix.contains("secret") {
        "<redacted>".to_owned()
    } else {
        show_value(value)
    };
    let source = match figment.find_metadata(&prefix) {
        Some(m) if m.name.contains("TOML") => match &m.source {
            Some(src) => format!("file {src}"),
            None => "file".to_owned(),
        },
        Some(m) if m.name.contains("environment") => {
            format!("env CONFAB_{}", prefix.replace('.', "__").to_uppercase())
        }
        Some(m) if m.name == FLAGS_NAME => "command line".to_owned(),
        _ => "default".to_owned(),
    };
    out.push((prefix, shown, source));
}

const FLAGS_NAME: &str = "command-line flags";

/// The top layer: values given as command-line flags.
struct Flags(Dict);

impl figment::Provider for Flags {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(FLAGS_NAME)
    }
    fn data(&self) -> Result<figment::value::Map<figment::Profile, Dict>, figment::Error> {
        Ok(figment::Profile::Default.collect(self.0.clone()))
    }
}

fn merge_dict(into: &mut Dict, from: Dict) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Dict(_, a)), Value::Dict(_, b)) => merge_dict(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn show_value(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "?".to_owned())
}

/// Checks a layered configuration and turns it into what the server runs on.
pub fn resolve(raw: RawConfig) -> Result<Config, ConfigError> {
    let listen: SocketAddr = raw.server.listen.parse().map_err(|_| {
        invalid(
            "server.listen",
            format!(
                "{:?} is not an address like 127.0.0.1:8080",
                raw.server.listen
            ),
        )
    })?;
    if raw.server.max_connections == 0 {
        return Err(invalid("server.max_connections", "must be at least 1"));
    }
    if raw.server.body_timeout_secs == 0 {
        return Err(invalid("server.body_timeout_secs", "must be at least 1"));
    }
    if raw.server.heartbeat_interval_secs == 0 {
        return Err(invalid(
            "server.heartbeat_interval_secs",
            "must be at least 1",
        ));
    }
    if raw.server.idle_timeout_secs <= raw.server.heartbeat_interval_secs {
        return Err(invalid(
            "server.idle_timeout_secs",
            "must be longer than server.heartbeat_interval_secs",
        ));
    }
    if raw.storage.max_batch == 0 {
        return Err(invalid("storage.max_batch", "must be at least 1"));
    }
    let l = &raw.limits;
    if l.max_message_bytes == 0 || l.max_message_bytes + 1024 > l.max_frame_bytes {
        return Err(invalid(
            "limits.max_message_bytes",
            "must be at least 1 and at least 1 KiB below limits.max_frame_bytes",
        ));
    }
    if l.max_frame_bytes > 16 * 1024 * 1024 {
        return Err(invalid("limits.max_frame_bytes", "must be at most 16 MiB"));
    }
    if l.outbound_queue_bytes < l.max_frame_bytes {
        return Err(invalid(
            "limits.outbound_queue_bytes",
            "must be at least limits.max_frame_bytes",
        ));
    }
    if l.history_max_page == 0 {
        return Err(invalid("limits.history_max_page", "must be at least 1"));
    }
    if let Some(id) = raw.node.id
        && id > crate::model::MAX_NODE_ID
    {
        return Err(invalid("node.id", "must be between 0 and 1023"));
    }
    for k in &raw.auth.public_keys {
        if !matches!(k.alg.as_str(), "RS256" | "ES256" | "EdDSA") {
            return Err(invalid(
                "auth.public_keys",
                format!("alg {:?} is not one of RS256, ES256, EdDSA", k.alg),
            ));
        }
        if !crate::model::valid_namespace(&k.namespace) {
            return Err(invalid(
                "auth.public_keys",
                format!(
                    "namespace {:?} must be 1-32 characters of a-z 0-9 _ . -",
                    k.namespace
                ),
            ));
        }
    }
    let r = &raw.rate_limits;
    for (key, v) in [
        ("rate_limits.messages_per_sec", r.messages_per_sec),
        ("rate_limits.messages_burst", r.messages_burst),
        ("rate_limits.user_messages_per_sec", r.user_messages_per_sec),
        ("rate_limits.user_messages_burst", r.user_messages_burst),
        ("rate_limits.typing_per_sec", r.typing_per_sec),
        ("rate_limits.typing_burst", r.typing_burst),
        ("rate_limits.joins_per_sec", r.joins_per_sec),
        ("rate_limits.joins_burst", r.joins_burst),
        (
            "rate_limits.connects_per_sec_per_ip",
            r.connects_per_sec_per_ip,
        ),
        ("rate_limits.connects_burst_per_ip", r.connects_burst_per_ip),
        ("rate_limits.uploads_per_sec", r.uploads_per_sec),
        ("rate_limits.uploads_burst", r.uploads_burst),
        ("rate_limits.abuse_strikes", r.abuse_strikes),
        ("rate_limits.login_free_failures", r.login_free_failures),
        (
            "rate_limits.login_address_free_failures",
            r.login_address_free_failures,
        ),
        (
            "rate_limits.login_account_free_failures",
            r.login_account_free_failures,
        ),
        (
            "rate_limits.registrations_per_min_per_ip",
            r.registrations_per_min_per_ip,
        ),
        (
            "rate_limits.registrations_burst_per_ip",
            r.registrations_burst_per_ip,
        ),
    ] {
        if v == 0 {
            return Err(invalid(key, "must be at least 1"));
        }
    }
    if r.login_backoff_base_ms == 0 || r.login_backoff_max_ms < r.login_backoff_base_ms {
        return Err(invalid(
            "rate_limits.login_backoff_max_ms",
            "login_backoff_base_ms must be at least 1 and login_backoff_max_ms at least that",
        ));
    }
    if r.login_forget_secs.saturating_mul(1000) < r.login_backoff_max_ms {
        return Err(invalid(
            "rate_limits.login_forget_secs",
            "must be at least as long as rate_limits.login_backoff_max_ms",
        ));
    }
    if raw.limits.max_rooms_per_user == 0 || raw.limits.max_connections_per_user == 0 {
        return Err(invalid(
            "limits.max_rooms_per_user",
            "room and connection caps must be at least 1",
        ));
    }
    if raw.auth.token_ttl_secs == 0 {
        return Err(invalid("auth.token_ttl_secs", "must be at least 1"));
    }
    let f = &raw.files;
    for (key, v) in [
        ("files.max_file_bytes", f.max_file_bytes),
        ("files.thumbnail_max_px", u64::from(f.thumbnail_max_px)),
        ("files.max_image_pixels", f.max_image_pixels),
        ("files.max_decode_bytes", f.max_decode_bytes),
        ("files.gc_interval_secs", f.gc_interval_secs),
        ("files.signed_url_ttl_secs", f.signed_url_ttl_secs),
        ("files.cookie_ttl_secs", f.cookie_ttl_secs),
    ] {
        if v == 0 {
            return Err(invalid(key, "must be at least 1"));
        }
    }
    if raw.search.commit_interval_ms == 0 {
        return Err(invalid("search.commit_interval_ms", "must be at least 1"));
    }
    if raw.presence.push_max_room_members < 2 {
        return Err(invalid(
            "presence.push_max_room_members",
            "must be at least 2 (a DM has two members)",
        ));
    }
    if !(0..=19).contains(&raw.search.indexer_nice) {
        return Err(invalid("search.indexer_nice", "must be from 0 to 19"));
    }
    if raw.search.writer_idle_close_secs == 0 {
        return Err(invalid(
            "search.writer_idle_close_secs",
            "must be at least 1",
        ));
    }
    if raw.search.writer_memory_bytes < 15_000_000 {
        return Err(invalid(
            "search.writer_memory_bytes",
            "must be at least 15000000 (the index writer's minimum)",
        ));
    }
    if f.thumbnail_max_px > 4096 {
        return Err(invalid("files.thumbnail_max_px", "must be at most 4096"));
    }
    if raw.rate_limits.forget_idle_secs == 0 {
        return Err(invalid(
            "rate_limits.forget_idle_secs",
            "must be at least 1",
        ));
    }
    if raw.storage.cache_bytes < 1024 * 1024 {
        return Err(invalid(
            "storage.cache_bytes",
            "must be at least 1048576 (1 MiB)",
        ));
    }
    let trusted_proxies = raw
        .server
        .trusted_proxies
        .iter()
        .map(|c| {
            c.parse::<Cidr>().map_err(|()| {
                invalid(
                    "server.trusted_proxies",
                    format!("{c:?} is not an address or CIDR like 10.0.0.0/8 or ::1/128"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Config {
        listen,
        trusted_proxies,
        open_file_limit: None,
        server: raw.server,
        storage: raw.storage,
        auth: raw.auth,
        limits: raw.limits,
        rate_limits: raw.rate_limits,
        presence: raw.presence,
        files: raw.files,
        search: raw.search,
        node: raw.node,
        log: raw.log,
    })
}

/// An address range: an address and how many leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Whether `ip` is in the range. An IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`, as a
    /// dual-stack listener reports it) matches as the IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u32::from(net).into(), u32::from(ip).into(), 32, self.bits)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), 128, self.bits)
            }
            _ => false,
        }
    }
}

/// Whether the top `bits` of two `width`-bit numbers agree.
fn prefix_eq(a: u128, b: u128, width: u8, bits: u8) -> bool {
    let shift = u32::from(width - bits);
    shift >= 128 || (a >> shift) == (b >> shift)
}

impl std::str::FromStr for Cidr {
    type Err = ();

    /// "10.0.0.0/8", "::1/128", or a bare address (a range of one).
    fn from_str(s: &str) -> Result<Self, ()> {
        let (addr, bits) = match s.trim().split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| ())?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b.parse::<u8>().map_err(|_| ())?,
            None => width,
        };
        if bits > width {
            return Err(());
        }
        Ok(Self { addr, bits })
    }
}

/// Accepts a string, or a number/bool that an env variable turned into one ("8080" → 8080).
fn stringish<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        Str(String),
        U(u64),
        I(i64),
        F(f64),
        B(bool),
    }
    Ok(match S::deserialize(d)? {
        S::Str(s) => s,
        S::U(n) => n.to_string(),
        S::I(n) => n.to_string(),
        S::F(n) => n.to_string(),
        S::B(b) => b.to_string(),
    })
}

fn opt_stringish<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    stringish(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve() {
        let c = resolve(RawConfig::default()).expect("defaults are valid");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.storage.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn indexer_nice_is_a_nice_value_we_may_set_ourselves() {
        for (nice, ok) in [(0, true), (19, true), (20, false), (-1, false)] {
            let mut raw = RawConfig::default();
            raw.search.indexer_nice = nice;
            match resolve(raw) {
                Ok(_) => assert!(ok, "nice {nice} accepted"),
                Err(e) => {
                    assert!(!ok, "nice {nice} refused: {e}");
                    assert!(e.to_string().contains("search.indexer_nice"), "{e}");
                }
            }
        }
    }

    /// Guards issue 24, point 9: the trusted-proxy ranges match what they say.
    #[test]
    fn cidrs_match_their_ranges() {
        let c = |s: &str| s.parse::<Cidr>().expect(s);
        let ip = |s: &str| s.parse::<IpAddr>().expect(s);
        assert!(c("127.0.0.1/32").contains(ip("127.0.0.1")));
        assert!(!c("127.0.0.1/32").contains(ip("127.0.0.2")));
        assert!(c("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(c("10.0.0.0/8").contains(ip("10.200.3.4")));
        assert!(!c("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(c("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(c("::/0").contains(ip("2001:db8::1")));
        assert!(c("::1/128").contains(ip("::1")));
        assert!(c("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!c("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(c("127.0.0.0/8").contains(ip("::ffff:127.0.0.5")));
        assert!(!c("10.0.0.0/8").contains(ip("::1")));
        for bad in ["10.0.0.0/33", "::/129", "nope", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let mut raw = RawConfig::default();
        raw.server.trusted_proxies = vec!["10.0.0.0/99".into()];
        let e = resolve(raw).expect_err("a bad CIDR is refused");
        assert!(e.to_string().contains("server.trusted_proxies"), "{e}");
    }

    #[test]
    fn shipped_config_toml_equals_the_defaults_and_has_no_unknown_keys() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
        let loaded = load(Some(&path), &Overrides::default()).expect("config.toml loads");
        assert!(loaded.unknown_keys.is_empty(), "{:?}", loaded.unknown_keys);
        let shipped = serde_json::to_value(RawConfig::default()).expect("json");
        let from_file = serde_json::to_value(RawConfig {
            server: loaded.config.server,
            storage: loaded.config.storage,
            auth: loaded.config.auth,
            limits: loaded.config.limits,
            rate_limits: loaded.config.rate_limits,
            presence: loaded.config.presence,
            files: loaded.config.files,
            search: loaded.config.search,
            node: loaded.config.node,
            log: loaded.config.log,
        })
        .expect("json");
        assert_eq!(shipped, from_file);
    }
}
