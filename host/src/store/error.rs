//! Typed errors of the store. Every message is one line that says what went
//! wrong and, where the operator can act, how to fix it.

use crate::store::codec::ParseEnumError;
use crate::store::models::JobStatus;

/// Which database engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Embedded SQLite (one host process).
    Sqlite,
    /// PostgreSQL (several host replicas).
    Postgres,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Sqlite => "SQLite",
            BackendKind::Postgres => "PostgreSQL",
        })
    }
}

/// Errors returned by the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL could not be parsed or names an unknown scheme.
    #[error(
        "invalid database URL {url:?}: {reason}; use sqlite://PATH?mode=rwc or postgres://USER@HOST:PORT/DATABASE"
    )]
    InvalidUrl {
        /// The URL with any password removed.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The database could not be reached or opened.
    #[error("cannot open {backend} database {url} ({hint})")]
    Connect {
        /// Backend.
        backend: BackendKind,
        /// The URL with any password removed.
        url: String,
        /// What to check.
        hint: &'static str,
        /// Driver error.
        #[source]
        source: sqlx::Error,
    },

    /// The database holds a migration this binary does not know.
    #[error(
        "database schema is newer than this binary: migration {version} is applied but unknown to certplane {binary}; run a certplane release that includes it (or point --database-url at the right database)"
    )]
    SchemaTooNew {
        /// The unknown applied version.
        version: i64,
        /// This binary's version.
        binary: &'static str,
    },

    /// An applied migration differs from the embedded one.
    #[error(
        "migration {version} was modified after it was applied (checksum mismatch); restore the released migrations/ file (check CRLF line endings) instead of editing applied migrations"
    )]
    ChecksumMismatch {
        /// The version whose checksum differs.
        version: i64,
    },

    /// The ledger records a failed (dirty) migration.
    #[error(
        "migration {version} is recorded as failed in _sqlx_migrations; repair the schema by hand and delete that ledger row, then run `certplane migrate apply` again"
    )]
    DirtyMigration {
        /// The dirty version.
        version: i64,
    },

    /// A migration failed; it was rolled back and not recorded.
    #[error("migration {version} failed and was rolled back (not recorded)")]
    MigrationFailed {
        /// The failing version.
        version: i64,
        /// Database error.
        #[source]
        source: sqlx::Error,
    },

    /// Migrations are pending (when checking without applying).
    #[error(
        "database schema is out of date: {pending} migration(s) pending; run `certplane migrate apply --database-url URL`"
    )]
    SchemaOutdated {
        /// How many embedded migrations are not applied.
        pending: usize,
    },

    /// Another migrator error.
    #[error(transparent)]
    Migrate(sqlx::migrate::MigrateError),

    /// A database error.
    #[error(transparent)]
    Database(#[from] sqlx::Error),

    /// A row the operation needs does not exist.
    #[error("{entity} {id:?} not found")]
    NotFound {
        /// Kind of row.
        entity: &'static str,
        /// Its id.
        id: String,
    },

    /// A unique constraint was violated (e.g. a duplicate name).
    #[error("{0} already exists")]
    AlreadyExists(String),

    /// The one open job a certificate may have at a time already exists.
    #[error("{0} already exists")]
    OpenJobExists(String),

    /// A transition the state machine forbids.
    #[error("illegal job transition {from} -> {to}")]
    IllegalTransition {
        /// From.
        from: JobStatus,
        /// To.
        to: JobStatus,
    },

    /// The caller passed an invalid argument.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A stored value could not be decoded.
    #[error("invalid stored value")]
    InvalidValue(#[from] ParseEnumError),
}

impl StoreError {
    /// Maps a unique-constraint violation to [`StoreError::AlreadyExists`].
    pub(crate) fn from_insert(what: impl Into<String>, err: sqlx::Error) -> StoreError {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::AlreadyExists(what.into())
            }
            _ => StoreError::Database(err),
        }
    }

    /// Maps the one-open-job-per-certificate index's violation to
    /// [`StoreError::OpenJobExists`]: a state conflict, not a taken name.
    pub(crate) fn from_job_insert(what: impl Into<String>, err: sqlx::Error) -> StoreError {
        match StoreError::from_insert(what, err) {
            StoreError::AlreadyExists(what) => StoreError::OpenJobExists(what),
            other => other,
        }
    }
}

/// Removes the password from a database URL for messages and logs.
pub(crate) fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // set_password only fails for URLs that cannot have one.
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        // Unparsable: blank out anything between "user:" and "@".
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                let userinfo = &url[scheme_end + 3..at];
                match userinfo.find(':') {
                    Some(colon) => format!(
                        "{}{}:***{}",
                        &url[..scheme_end + 3],
                        &userinfo[..colon],
                        &url[at..]
                    ),
                    None => url.to_owned(),
                }
            }
            _ => url.to_owned(),
        },
    }
}

/// What to check when a backend cannot be opened.
pub(crate) fn connect_hint(backend: BackendKind) -> &'static str {
    match backend {
        BackendKind::Sqlite => {
            "check that the directory exists and is writable; add ?mode=rwc to create a new file"
        }
        BackendKind::Postgres => {
            "check that the server is running and reachable, the database exists and the credentials are right"
        }
    }
}
