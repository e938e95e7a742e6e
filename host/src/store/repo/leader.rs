//! Leader leases: one row per singleton loop, taken when free or expired,
//! renewed by its holder. Same SQL on both backends.

use std::time::Duration;

use crate::store::codec::{now, ts};
use crate::store::{LeaderLease, Store, StoreResult, on_read, on_write};

/// Outcome of [`Store::try_acquire_leader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderElection {
    /// The caller holds the lease (newly taken or renewed) until the expiry.
    Leader(LeaderLease),
    /// Someone else holds it.
    Follower(LeaderLease),
}

impl LeaderElection {
    /// True when the caller is the leader.
    pub fn is_leader(&self) -> bool {
        matches!(self, LeaderElection::Leader(_))
    }
}

impl Store {
    /// Takes or renews lease `name` for `holder` for `ttl`: succeeds when the
    /// lease is free, expired, or already held by `holder` (renewal keeps
    /// `acquired_at`). One statement (`INSERT .. ON CONFLICT DO UPDATE ..
    /// WHERE`), so two contenders cannot both win.
    pub async fn try_acquire_leader(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<LeaderElection> {
        let now = now();
        let expires =
            now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::seconds(30));
        let won = on_write!(self, |pool| {
            sqlx::query_as::<_, LeaderLease>(
                "INSERT INTO leader_leases (name, holder, acquired_at, expires_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET
                     holder = excluded.holder,
                     expires_at = excluded.expires_at,
                     acquired_at = CASE WHEN leader_leases.holder = excluded.holder
                                        THEN leader_leases.acquired_at
                                        ELSE excluded.acquired_at END
                 WHERE leader_leases.holder = excluded.holder OR leader_leases.expires_at <= $3
                 RETURNING *",
            )
            .bind(name)
            .bind(holder)
            .bind(ts(now))
            .bind(ts(expires))
            .fetch_optional(pool)
            .await?
        });
        if let Some(lease) = won {
            return Ok(LeaderElection::Leader(lease));
        }
        match self.current_leader(name).await? {
            Some(lease) if lease.holder == holder => Ok(LeaderElection::Leader(lease)),
            Some(lease) => Ok(LeaderElection::Follower(lease)),
            // Released between our two statements: try once more next tick.
            None => Ok(LeaderElection::Follower(LeaderLease {
                name: name.to_owned(),
                holder: String::new(),
                acquired_at: now,
                expires_at: now,
            })),
        }
    }

    /// Gives lease `name` up if `holder` holds it; returns whether it did.
    pub async fn release_leader(&self, name: &str, holder: &str) -> StoreResult<bool> {
        Ok(on_write!(self, |pool| {
            sqlx::query("DELETE FROM leader_leases WHERE name = $1 AND holder = $2")
                .bind(name)
                .bind(holder)
                .execute(pool)
                .await?
                .rows_affected()
                == 1
        }))
    }

    /// The current row of lease `name` (possibly expired).
    pub async fn current_leader(&self, name: &str) -> StoreResult<Option<LeaderLease>> {
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, LeaderLease>("SELECT * FROM leader_leases WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
        }))
    }
}
