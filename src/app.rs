//! Composition root: opens storage, builds the hub and the authenticator, serves, and shuts
//! down in order (stop accepting → close sockets → commit what is queued → close storage).

use crate::auth::Authenticator;
use crate::chat::Hub;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{Store, StoreOptions};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("auth: {0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error("chat: {0}")]
    Chat(#[from] crate::chat::ChatError),
    #[error("search: {0}")]
    Search(#[from] crate::search::SearchError),
    #[error("files: {0}")]
    Files(#[from] crate::files::FileError),
}

/// Rebuilds the search index from storage. The server must be stopped: the database is
/// opened exclusively.
pub fn reindex(config: &Config) -> Result<u64, StartError> {
    let metrics = Arc::new(Metrics::new());
    let store =
        Store::open_with_options(&config.storage.data_dir, metrics, &store_options(config))?;
    let n = crate::search::Search::rebuild(&config.storage.data_dir, &config.search, &store);
    store.close();
    Ok(n?)
}

/// The store's options from the configuration. Users of an older database who are not
/// built-in accounts move to the namespace of the first configured host application key.
fn store_options(config: &Config) -> StoreOptions {
    StoreOptions {
        node: config.node.id,
        max_batch: config.storage.max_batch,
        host_namespace: config.auth.public_keys.first().map(|k| k.namespace.clone()),
        min_free_disk_bytes: config.storage.min_free_disk_bytes,
        cache_bytes: config.storage.cache_bytes,
    }
}

/// The opened parts, ready to serve.
pub struct App {
    config: Arc<Config>,
    store: Store,
    files: crate::files::Files,
    search: crate::search::Search,
    hub: Arc<Hub>,
    auth: Authenticator,
    metrics: Arc<Metrics>,
}

impl App {
    /// Opens the data directory: database, signing secret, in-memory room state.
    pub fn open(config: Config) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new());
        let data = &config.storage.data_dir;
        let auth = Authenticator::new(&config.auth, data)?;
        let store = Store::open_with_options(data, metrics.clone(), &store_options(&config))?;
        if store.renamed_users() > 0 {
            // Their messages' sender changed: rebuild the index so sender filters find them.
            crate::search::Search::discard(data)?;
        }
        let files =
            crate::files::Files::open(data, config.files.clone(), store.clone(), metrics.clone())?;
        let search =
            crate::search::Search::open(data, &config.search, store.clone(), metrics.clone())?;
        let hub = Hub::new(
            store.clone(),
            files.clone(),
            search.clone(),
            &config,
            metrics.clone(),
        )?;
        Ok(Self {
            config: Arc::new(config),
            store,
            files,
            search,
            hub,
            auth,
            metrics,
        })
    }

    pub fn node_id(&self) -> u16 {
        self.store.node_id()
    }

    /// The one-time setup token while the server has no administrator (print it at start).
    pub fn setup_token(&self) -> Option<String> {
        self.hub.setup_token()
    }

    /// Serves until `shutdown` resolves, then closes everything in order.
    pub async fn run(self, listener: TcpListener, shutdown: impl std::future::Future<Output = ()>) {
        let ticker = self.hub.start_ticker();
        let collector = self.hub.files().start_collector();
        let trimmer = crate::memory::start_trimmer(
            self.metrics.clone(),
            Duration::from_secs(self.config.search.writer_idle_close_secs),
        );
        crate::server::serve(
            listener,
            self.hub.clone(),
            self.auth.clone(),
            self.metrics.clone(),
            self.config.clone(),
            shutdown,
        )
        .await;
        ticker.abort();
        collector.abort();
        trimmer.abort();
        // The background threads stop in this order, each joined before the next: the
        // thumbnail thread (its results are writes), the store writer with its log threads
        // (after committing everything queued), then the search indexer with tantivy's
        // threads (after indexing and committing what the store's last batches noted).
        let (files, store, search) = (self.files, self.store, self.search);
        let _ = tokio::task::spawn_blocking(move || {
            files.close();
            store.close();
            search.close();
        })
        .await;
        tracing::info!("storage closed; bye");
    }
}
