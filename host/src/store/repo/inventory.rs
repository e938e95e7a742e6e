//! The dashboard's inventory: certificates searched by name and filtered
//! by owner, issuer and status, one page at a time, and how many expire in
//! each of the coming weeks. Server-side so a page costs the same at 10 or
//! 10,000 certificates.

use chrono::{DateTime, Duration, Utc};

use crate::store::codec::{now, opt_ts};
use crate::store::repo::sql_limit;
use crate::store::{Certificate, CertificateStatus, Store, StoreResult, on_read};

/// What the inventory shows: every field optional, all that are set must
/// match.
#[derive(Debug, Clone, Default)]
pub struct InventoryFilter {
    /// A piece of the name or common name, matched without regard to case.
    pub search: Option<String>,
    /// Exactly this owner.
    pub owner: Option<String>,
    /// Exactly this issuer.
    pub issuer_id: Option<String>,
    /// Exactly this status; retired certificates are shown only when asked
    /// for by status.
    pub status: Option<CertificateStatus>,
}

/// `search` as a LIKE pattern: lower case, `%` `_` `\` escaped, wrapped in
/// `%`.
fn like_pattern(search: &str) -> String {
    let mut pattern = String::with_capacity(search.len() + 2);
    pattern.push('%');
    for c in search.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

const WHERE: &str = "WHERE ($1 IS NULL OR LOWER(name) LIKE $1 ESCAPE '\\' OR LOWER(common_name) LIKE $1 ESCAPE '\\')
       AND ($2 IS NULL OR owner = $2)
       AND ($3 IS NULL OR issuer_id = $3)
       AND (($4 IS NULL AND status <> 'retired') OR status = $4)";

impl Store {
    /// One page of the inventory, soonest expiry first (never issued last),
    /// and how many match over all pages.
    pub async fn inventory_page(
        &self,
        filter: &InventoryFilter,
        offset: u64,
        limit: u32,
    ) -> StoreResult<(Vec<Certificate>, u64)> {
        let pattern = filter.search.as_deref().map(like_pattern);
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let page_sql = format!(
            "SELECT * FROM certificates {WHERE}
             ORDER BY CASE WHEN not_after IS NULL THEN 1 ELSE 0 END, not_after, name, id
             LIMIT $5 OFFSET $6"
        );
        let count_sql = format!("SELECT COUNT(*) FROM certificates {WHERE}");
        let (rows, total): (Vec<Certificate>, i64) = on_read!(self, |pool| {
            let rows = sqlx::query_as::<_, Certificate>(&page_sql)
                .bind(pattern.clone())
                .bind(filter.owner.clone())
                .bind(filter.issuer_id.clone())
                .bind(filter.status)
                .bind(sql_limit(limit))
                .bind(offset)
                .fetch_all(pool)
                .await?;
            let total = sqlx::query_scalar(&count_sql)
                .bind(pattern.clone())
                .bind(filter.owner.clone())
                .bind(filter.issuer_id.clone())
                .bind(filter.status)
                .fetch_one(pool)
                .await?;
            (rows, total)
        });
        Ok((rows, u64::try_from(total).unwrap_or(0)))
    }

    /// How many of the certificates `filter` matches expire in each of the
    /// next `weeks` weeks (index 0: already expired or within 7 days).
    pub async fn expiry_by_week(
        &self,
        filter: &InventoryFilter,
        weeks: u32,
    ) -> StoreResult<Vec<u64>> {
        let pattern = filter.search.as_deref().map(like_pattern);
        let now = now();
        let horizon = now + Duration::weeks(i64::from(weeks));
        let sql = format!(
            "SELECT not_after FROM certificates {WHERE}
               AND not_after IS NOT NULL AND not_after < $5"
        );
        let expiries: Vec<DateTime<Utc>> = on_read!(self, |pool| {
            sqlx::query_scalar(&sql)
                .bind(pattern.clone())
                .bind(filter.owner.clone())
                .bind(filter.issuer_id.clone())
                .bind(filter.status)
                .bind(opt_ts(Some(horizon)))
                .fetch_all(pool)
                .await?
        });
        let mut buckets = vec![0u64; weeks.max(1) as usize];
        for not_after in expiries {
            let week = (not_after - now).num_weeks().max(0);
            if let Some(n) = usize::try_from(week).ok().and_then(|w| buckets.get_mut(w)) {
                *n += 1;
            }
        }
        Ok(buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::like_pattern;

    #[test]
    fn search_text_is_matched_literally() {
        assert_eq!(like_pattern("Web"), "%web%");
        assert_eq!(like_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }
}
