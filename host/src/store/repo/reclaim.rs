//! Start-up reclaim: what a previous run of this host instance still held.
//!
//! A host that stops without finishing its work (killed, crashed, power
//! lost) leaves jobs `running` and notifications `sending` under leases
//! owned by its instance id. The lease reaper would take them back once
//! the leases lapse (`jobs.lease_secs`, five minutes by default); a host
//! restarting under the same instance id knows at once that nothing of its
//! own is running any more, so it reclaims them at start instead. The SQL
//! is in `sqlite/claims.rs` and `postgres/claims.rs` next to the reaper's.

use crate::store::codec::{now, ts};
use crate::store::postgres::claims as pg;
use crate::store::sqlite::claims as lite;
use crate::store::{Job, Store, StoreResult, on_write};

/// What [`Store::reap_own_leases`] took back.
#[derive(Debug, Default)]
pub struct Reclaimed {
    /// Jobs moved Running → Failed (retried after backoff while their
    /// attempts last), with their `last_error` set.
    pub jobs: Vec<Job>,
    /// Ids of notifications moved Sending → Pending (or Failed when out of
    /// attempts).
    pub notifications: Vec<String>,
}

impl Store {
    /// Takes back every job still `running` and every notification still
    /// `sending` whose lease this store's `instance_id` owns, with the lease
    /// reaper's effect ([`Store::reap_expired_leases`],
    /// [`Store::reap_expired_notification_leases`]): jobs → Failed with
    /// backoff, notifications → Pending with backoff (or Failed when out of
    /// attempts), whether or not the leases have expired yet.
    ///
    /// Call it once at start, before this instance claims anything: such
    /// leases can only be leftovers of its previous run. Two live processes
    /// sharing one instance id would take each other's work back, which is
    /// why instance ids must be unique per replica.
    pub async fn reap_own_leases(&self) -> StoreResult<Reclaimed> {
        let now = now();
        let owner = self.options.instance_id.as_str();
        let base = self.options.backoff.base.as_secs_f64();
        let cap = self.options.backoff.cap.as_secs_f64();
        let jobs = on_write!(self, lite::REAP_OWN, pg::REAP_OWN, |pool, sql| {
            sqlx::query_as::<_, Job>(sql)
                .bind(ts(now))
                .bind(owner)
                .bind(base)
                .bind(cap)
                .fetch_all(pool)
                .await?
        });
        let notifications = on_write!(
            self,
            lite::REAP_OWN_NOTIFICATIONS,
            pg::REAP_OWN_NOTIFICATIONS,
            |pool, sql| {
                sqlx::query_scalar::<_, String>(sql)
                    .bind(ts(now))
                    .bind(owner)
                    .bind(base)
                    .bind(cap)
                    .fetch_all(pool)
                    .await?
            }
        );
        Ok(Reclaimed {
            jobs,
            notifications,
        })
    }
}
