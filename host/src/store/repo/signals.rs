//! Wake-up signals between replicas: PostgreSQL `NOTIFY` on one channel,
//! `LISTEN` on a dedicated connection. On SQLite there is one host process
//! and nothing to signal, so publishing is a no-op and there is no
//! listener.
//!
//! A signal is a hint: PostgreSQL drops notifications while a listener is
//! disconnected, so whoever acts on them must keep polling as well.

use sqlx::postgres::{PgListener, PgPoolOptions};

use crate::store::{Backend, Store, StoreResult};

/// The notification channel of wake-up signals.
pub const WAKE_CHANNEL: &str = "certplane_wake";

/// A `LISTEN` on [`WAKE_CHANNEL`] over its own connection (not one of the
/// store's pool, which stays the configured size).
pub struct SignalListener {
    listener: PgListener,
}

impl std::fmt::Debug for SignalListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalListener").finish_non_exhaustive()
    }
}

/// One receive of a [`SignalListener`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A payload published with [`Store::publish_signals`].
    Payload(String),
    /// The connection was lost and has been re-established: signals sent in
    /// between were missed.
    Reconnected,
}

impl SignalListener {
    /// The next signal. An error means the connection is down and could not
    /// be re-established; calling again retries.
    pub async fn recv(&mut self) -> StoreResult<Received> {
        Ok(match self.listener.try_recv().await? {
            Some(n) => Received::Payload(n.payload().to_owned()),
            None => Received::Reconnected,
        })
    }
}

impl Store {
    /// True when other host processes may share this database (PostgreSQL),
    /// so wake-ups are worth publishing.
    pub fn has_replica_signals(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Publishes each payload on [`WAKE_CHANNEL`] (one round trip for all).
    /// PostgreSQL delivers them to every listening session, this one's
    /// included. A no-op on SQLite.
    pub async fn publish_signals(&self, payloads: &[String]) -> StoreResult<()> {
        let Backend::Postgres(b) = &self.backend else {
            return Ok(());
        };
        if payloads.is_empty() {
            return Ok(());
        }
        sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
            .bind(WAKE_CHANNEL)
            .bind(payloads)
            .execute(&b.pool)
            .await?;
        Ok(())
    }

    /// Starts listening on [`WAKE_CHANNEL`]; `None` on SQLite. The listener
    /// holds one connection of its own, opened with the store's connection
    /// settings, and reconnects (re-subscribing) by itself when it drops.
    pub async fn listen_signals(&self) -> StoreResult<Option<SignalListener>> {
        let Backend::Postgres(b) = &self.backend else {
            return Ok(None);
        };
        // A pool of one so that PgListener can replace a dead connection;
        // no idle timeout or lifetime, which would only cut a healthy LISTEN.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.options.acquire_timeout)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with((*b.connect_options).clone());
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(WAKE_CHANNEL).await?;
        Ok(Some(SignalListener { listener }))
    }
}
