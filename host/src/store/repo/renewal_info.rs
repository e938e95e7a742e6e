//! Renewal windows suggested by the CA (ACME renewal information, through
//! an issuer's `issuer-lifecycle` export).

use chrono::{DateTime, Utc};

use crate::store::codec::{now, ts};
use crate::store::repo::sql_limit;
use crate::store::{Certificate, Store, StoreResult, on_read, on_write};

impl Store {
    /// Active, issued certificates whose renewal window is due to be asked
    /// for, oldest check first.
    pub async fn certificates_due_for_renewal_info(
        &self,
        limit: u32,
    ) -> StoreResult<Vec<Certificate>> {
        let now = now();
        Ok(on_read!(self, |pool| {
            sqlx::query_as::<_, Certificate>(
                "SELECT * FROM certificates
                 WHERE status = 'active' AND current_version_id IS NOT NULL
                   AND (renewal_info_at IS NULL OR renewal_info_at <= $1)
                 ORDER BY renewal_info_at LIMIT $2",
            )
            .bind(ts(now))
            .bind(sql_limit(limit))
            .fetch_all(pool)
            .await?
        }))
    }

    /// Records a window check: `renew_at` only ever moves earlier (the
    /// operator's own window still applies), and the next check is at
    /// `next_check`. Returns whether `renew_at` moved.
    pub async fn record_renewal_info(
        &self,
        certificate_id: &str,
        renew_at: Option<DateTime<Utc>>,
        next_check: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let now = now();
        Ok(on_write!(self, |pool| {
            let moved = match renew_at {
                Some(at) => {
                    sqlx::query(
                        "UPDATE certificates SET renew_at = $2, renewal_info_at = $3,
                                updated_at = $4
                         WHERE id = $1 AND renew_at > $2",
                    )
                    .bind(certificate_id)
                    .bind(ts(at))
                    .bind(ts(next_check))
                    .bind(ts(now))
                    .execute(pool)
                    .await?
                    .rows_affected()
                        > 0
                }
                None => false,
            };
            if !moved {
                sqlx::query("UPDATE certificates SET renewal_info_at = $2 WHERE id = $1")
                    .bind(certificate_id)
                    .bind(ts(next_check))
                    .execute(pool)
                    .await?;
            }
            moved
        }))
    }
}
