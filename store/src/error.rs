//! What can go wrong: the backend itself ([`StoreError`]), or a registration the rules refuse
//! ([`RegisterError`]).

/// Errors of the storage backend itself (not business refusals).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[cfg(feature = "sqlite")]
    #[error("sqlite: {0}")]
    /// The SQLite backend failed (I/O, a full disk, a locked or damaged file).
    Sqlite(#[from] rusqlite::Error),
    #[error("the API server: {what}: {source}")]
    /// A request to the control plane's API server failed or was refused (the kube store).
    Api {
        /// What the store was doing.
        what: String,
        /// The client's or the server's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("this coordinator no longer leads, so it writes nothing more: {0}")]
    /// The kube store's fence closed: another replica may lead now (design §5.3).
    Fenced(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the store's worker thread failed: {0}")]
    /// The backend's blocking worker panicked or went away.
    Worker(String),
    #[error("the store holds data this coordinator cannot read: {0}")]
    /// A record could not be decoded: written by something else, or damaged.
    Corrupt(String),
    #[error("the target store is not empty ({0}); migrate only into an empty store")]
    /// [`Migrate::import`](crate::Migrate::import) into a store that holds records.
    NotEmpty(String),
    #[error("a migration into this store began and never committed: {0}")]
    /// The store holds a [`Migrate::import`](crate::Migrate::import) that failed part-way:
    /// some of a fleet's records without its commit point. Serving it would show a fleet with
    /// pieces missing, and a plan applied there would commit it as if whole.
    Unfinished(String),
    #[error("the records read back differ from those written: {0}")]
    /// [`Migrate::import`](crate::Migrate::import) read back other records than it wrote;
    /// it did not commit.
    Unverified(String),
    #[error(
        "the store's schema version {found} is newer than this coordinator supports ({supported}); upgrade the coordinator"
    )]
    /// Written by a newer coordinator: reading on could lose what it added.
    TooNew {
        /// The schema version the store was written with.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("the join token is not valid")]
    /// No token has this id and secret.
    UnknownToken,
    #[error("join token {0} has expired")]
    /// The token's expiry has passed.
    Expired(String),
    #[error("join token {0} has no uses left")]
    /// Every use of the token has been spent.
    UsedUp(String),
    #[error("join token {0} has been revoked")]
    /// An operator revoked the token.
    Revoked(String),
    #[error("cluster {0} has been revoked; it cannot register again")]
    /// An operator revoked the cluster: it stays out whatever token it shows.
    ClusterRevoked(String),
    #[error(
        "cluster {0} is already registered and its certificate is live: registering it again needs its current client certificate, or an operator's `skoalactl cluster rejoin`"
    )]
    /// The cluster's certificate is live and the caller proved neither its key nor an operator's
    /// consent.
    Takeover(String),
    #[error("cluster name {name:?} is taken by cluster {other}; choose another --cluster-name")]
    /// Another cluster has the name.
    NameTaken {
        /// The name asked for.
        name: String,
        /// The cluster that has it.
        other: String,
    },
    #[error(transparent)]
    /// The store could not answer.
    Store(#[from] StoreError),
}

impl RegisterError {
    /// Short machine-readable kind for the audit log.
    pub fn audit_kind(&self) -> &'static str {
        match self {
            RegisterError::UnknownToken => "register.unknown_token",
            RegisterError::Expired(_) => "register.token_expired",
            RegisterError::UsedUp(_) => "register.token_used_up",
            RegisterError::Revoked(_) => "register.token_revoked",
            RegisterError::ClusterRevoked(_) => "register.cluster_revoked",
            RegisterError::Takeover(_) => "register.takeover_refused",
            RegisterError::NameTaken { .. } => "register.name_taken",
            RegisterError::Store(_) => "register.store_error",
        }
    }
}
