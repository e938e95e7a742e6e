//! The optional `issuer-lifecycle` export (contract 1.1): the CA's
//! suggested renewal window (ACME renewal information, RFC 9773) moves a
//! certificate's renewal earlier, and an operator's cancel of a job with a
//! pending order gives that order up at the CA.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::challenges::{apply_effects, instance_context, observed_with_effects};
use super::connectors::issuer_instance;
use super::versions::split_pem;
use crate::engine::Engine;
use crate::store::{Certificate, Job, StoreError};

/// Certificates one tick asks about at most.
const BATCH: u32 = 100;
/// When to ask again when the CA named no time (RFC 9773 suggests a few
/// hours), or after a failure.
const DEFAULT_RECHECK: Duration = Duration::from_secs(6 * 3600);
const RECHECK_AFTER_ERROR: Duration = Duration::from_secs(3600);
/// Issuers without the export are asked about again only this rarely (a
/// plugin reload may add it).
const RECHECK_WITHOUT_EXPORT: Duration = Duration::from_secs(24 * 3600);
/// Bounds on the CA's `Retry-After` for renewal information.
const MIN_RECHECK: Duration = Duration::from_secs(60);
const MAX_RECHECK: Duration = Duration::from_secs(24 * 3600);

fn after(d: Duration) -> DateTime<Utc> {
    Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::hours(1))
}

/// A time in the window to renew at: uniformly random (RFC 9773 §4.2, so
/// a fleet does not renew in one burst), or now when the window has begun
/// to pass.
pub fn pick_in_window(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    now: DateTime<Utc>,
    unit: f64,
) -> DateTime<Utc> {
    let start = start.max(now);
    if end <= start {
        return start;
    }
    let span = (end - start).num_milliseconds() as f64;
    start + chrono::Duration::milliseconds((span * unit.clamp(0.0, 1.0)) as i64)
}

/// One tick: asks the issuers of due certificates for their renewal
/// window. Returns how many certificates were looked at.
pub async fn tick(engine: &Engine) -> Result<usize, StoreError> {
    let due = engine
        .store
        .certificates_due_for_renewal_info(BATCH)
        .await?;
    let n = due.len();
    for cert in due {
        let (renew_at, next) = ask(engine, &cert).await?;
        let moved = engine
            .store
            .record_renewal_info(&cert.id, renew_at, next)
            .await?;
        if moved {
            tracing::info!(certificate = %cert.id, renew_at = ?renew_at, "renewal moved earlier by the CA's renewal information");
            engine.wake.renewals.notify_one();
        }
    }
    Ok(n)
}

async fn ask(
    engine: &Engine,
    cert: &Certificate,
) -> Result<(Option<DateTime<Utc>>, DateTime<Utc>), StoreError> {
    let issuer = match issuer_instance(engine, &cert.issuer_id).await? {
        Ok(issuer) => issuer,
        Err(why) => {
            tracing::debug!(certificate = %cert.id, %why, "no issuer to ask for a renewal window");
            return Ok((None, after(RECHECK_WITHOUT_EXPORT)));
        }
    };
    if !issuer.plugin().has_lifecycle() {
        return Ok((None, after(RECHECK_WITHOUT_EXPORT)));
    }
    let Some(version_id) = &cert.current_version_id else {
        return Ok((None, after(RECHECK_WITHOUT_EXPORT)));
    };
    let Some(version) = engine
        .store
        .list_certificate_versions(&cert.id)
        .await?
        .into_iter()
        .find(|v| &v.id == version_id)
    else {
        return Ok((None, after(RECHECK_AFTER_ERROR)));
    };
    let Some(leaf) = split_pem(&version.pem_chain).into_iter().next() else {
        return Ok((None, after(RECHECK_WITHOUT_EXPORT)));
    };
    let owner = format!("issuer/{}", cert.issuer_id);
    let context = instance_context(engine, &issuer, &owner).await?;
    let (result, effects) =
        observed_with_effects(engine, &issuer, "renewal-window", move |i| async move {
            i.renewal_window(&context, &leaf).await
        })
        .await;
    apply_effects(engine, &owner, None, &Default::default(), effects).await?;
    Ok(match result {
        Ok(Some(window)) => {
            let start = DateTime::from_timestamp(window.start as i64, 0);
            let end = DateTime::from_timestamp(window.end as i64, 0);
            let next = window
                .retry_after_secs
                .map(|s| Duration::from_secs(u64::from(s)).clamp(MIN_RECHECK, MAX_RECHECK))
                .unwrap_or(DEFAULT_RECHECK);
            match (start, end) {
                (Some(start), Some(end)) => {
                    if let Some(url) = &window.explanation_url {
                        tracing::info!(certificate = %cert.id, %start, %end, explanation = %url, "the CA explains its renewal window");
                    }
                    let at = pick_in_window(start, end, Utc::now(), rand::random::<f64>());
                    (Some(at), after(next))
                }
                _ => (None, after(next)),
            }
        }
        Ok(None) => (None, after(DEFAULT_RECHECK)),
        Err(e) => {
            tracing::warn!(certificate = %cert.id, error = %e, "renewal window not available");
            (None, after(RECHECK_AFTER_ERROR))
        }
    })
}

/// After an operator cancelled `job` (read before the cancel): gives its
/// pending order up at the CA when the issuer can (`issuer-lifecycle`
/// `cancel`). Best effort: logged, never retried; the CA's own expiry of
/// unfinished orders covers a host that stops first.
pub async fn cancel_order(engine: Engine, job: Job) {
    let (Some(order_id), Some(state)) = (job.order_id.clone(), job.order_state.clone()) else {
        return;
    };
    let Some(cert_id) = job.certificate_id.as_deref() else {
        return;
    };
    let cert = match engine.store.get_certificate(cert_id).await {
        Ok(Some(cert)) => cert,
        _ => return,
    };
    let issuer = match issuer_instance(&engine, &cert.issuer_id).await {
        Ok(Ok(issuer)) if issuer.plugin().has_lifecycle() => issuer,
        _ => return,
    };
    let owner = format!("issuer/{}", cert.issuer_id);
    let context = match instance_context(&engine, &issuer, &owner).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "cannot cancel the order at the CA");
            return;
        }
    };
    let order = order_id.clone();
    let (result, effects) =
        observed_with_effects(&engine, &issuer, "cancel", move |i| async move {
            i.cancel_order(&context, &order, &state).await
        })
        .await;
    if let Err(e) = apply_effects(&engine, &owner, None, &Default::default(), effects).await {
        tracing::warn!(job = %job.id, error = %e, "cannot keep the issuer's store writes");
    }
    match result {
        Ok(()) => tracing::info!(job = %job.id, order = %order_id, "order cancelled at the CA"),
        Err(e) => {
            tracing::warn!(job = %job.id, order = %order_id, error = %e, "the CA did not cancel the order")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_renewal_time_falls_in_the_window_and_never_in_the_past() {
        let now = Utc::now();
        let start = now + chrono::Duration::days(10);
        let end = now + chrono::Duration::days(12);
        for unit in [0.0, 0.3, 1.0, 7.0] {
            let at = pick_in_window(start, end, now, unit);
            assert!(at >= start && at <= end, "{unit}: {at}");
        }
        // A window that has begun: from now on.
        let at = pick_in_window(
            now - chrono::Duration::days(1),
            now + chrono::Duration::hours(1),
            now,
            0.0,
        );
        assert_eq!(at, now);
        // One that has passed entirely: now.
        let at = pick_in_window(
            now - chrono::Duration::days(3),
            now - chrono::Duration::days(2),
            now,
            0.5,
        );
        assert_eq!(at, now);
    }
}
