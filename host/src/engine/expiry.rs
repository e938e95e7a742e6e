//! The `expiry` loop: tells people about certificates running out of time
//! and about jobs that failed for good, through the notifiers.
//!
//! Both are sweeps that see the same event on every tick, so each
//! notification carries a key naming the event (`certificate.expiring`
//! stage of one version, `job.failed` of one job) and every notifier gets
//! it once.

use certplane_runtime::Level;
use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use super::notify::{Announcement, announce, enabled_notifiers};
use crate::engine::Engine;
use crate::store::{Certificate, PluginInstance, StoreResult};

/// Warning stages before expiry, in days, most urgent first.
pub const STAGES_DAYS: [i64; 3] = [1, 7, 14];
/// Certificates one tick looks at, soonest expiry first.
const CERT_BATCH: u32 = 1_000;
/// Failed jobs one tick looks at.
const JOB_BATCH: u32 = 500;
/// How far back a tick looks for jobs that failed for good (covers ticks
/// missed while the host was down).
const FAILED_LOOKBACK_HOURS: i64 = 24;

/// The notification a certificate's time left calls for: (kind, stage
/// label, severity), or `None` outside every stage.
pub fn stage(
    not_after: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<(&'static str, String, Level)> {
    let left = not_after - now;
    if left <= Duration::zero() {
        return Some(("certificate.expired", "expired".into(), Level::Error));
    }
    STAGES_DAYS
        .iter()
        .find(|days| left <= Duration::days(**days))
        .map(|days| {
            let severity = if *days <= 1 {
                Level::Error
            } else {
                Level::Warn
            };
            ("certificate.expiring", format!("{days}d"), severity)
        })
}

/// One tick: returns how many notifications were enqueued. Without an
/// enabled notifier there is nobody to tell, and nothing is read.
pub async fn tick(engine: &Engine) -> StoreResult<usize> {
    let notifiers = enabled_notifiers(engine).await?;
    if notifiers.is_empty() {
        return Ok(0);
    }
    let now = Utc::now();
    let horizon = now + Duration::days(STAGES_DAYS[STAGES_DAYS.len() - 1]);
    let mut enqueued = 0;
    for cert in engine
        .store
        .list_expiring_certificates(horizon, CERT_BATCH)
        .await?
    {
        enqueued += expiring(engine, &notifiers, &cert, now).await?;
    }
    let since = now - Duration::hours(FAILED_LOOKBACK_HOURS);
    for job in engine
        .store
        .list_jobs_failed_for_good(since, JOB_BATCH)
        .await?
    {
        let summary = format!(
            "{} job {} failed for good after {} attempts: {}",
            job.job_type,
            job.id,
            job.attempts,
            job.last_error.as_deref().unwrap_or("no error recorded")
        );
        let event = Announcement {
            kind: "job.failed",
            subject: &format!("job/{}", job.id),
            summary: &summary,
            severity: Level::Error,
            details: json!({
                "job_id": job.id,
                "job_type": job.job_type.to_string(),
                "certificate_id": job.certificate_id,
                "target_id": job.target_id,
                "attempts": job.attempts,
                "last_error": job.last_error,
            }),
        };
        let key = format!("job.failed:{}", job.id);
        enqueued += announce(engine, &notifiers, &event, Some(&key)).await?;
    }
    if enqueued > 0 {
        tracing::info!(enqueued, "expiry and failure notifications enqueued");
    }
    Ok(enqueued)
}

async fn expiring(
    engine: &Engine,
    notifiers: &[PluginInstance],
    cert: &Certificate,
    now: DateTime<Utc>,
) -> StoreResult<usize> {
    let (Some(not_after), Some(version)) = (cert.not_after, cert.current_version_id.as_deref())
    else {
        return Ok(0);
    };
    let Some((kind, stage, severity)) = stage(not_after, now) else {
        return Ok(0);
    };
    let summary = if kind == "certificate.expired" {
        format!("certificate {} expired at {not_after}", cert.name)
    } else {
        format!(
            "certificate {} expires at {not_after} ({} h left) and has not been renewed",
            cert.name,
            (not_after - now).num_hours()
        )
    };
    let event = Announcement {
        kind,
        subject: &format!("certificate/{}", cert.id),
        summary: &summary,
        severity,
        details: json!({
            "certificate_id": cert.id,
            "name": cert.name,
            "version_id": version,
            "not_after": not_after,
            "stage": stage,
        }),
    };
    let key = format!("{kind}:{}:{version}:{stage}", cert.id);
    announce(engine, notifiers, &event, Some(&key)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_pick_the_most_urgent() {
        let now = Utc::now();
        let at = |h: i64| now + Duration::hours(h);
        assert_eq!(stage(at(-1), now).unwrap().0, "certificate.expired");
        assert_eq!(stage(at(20), now).unwrap().1, "1d");
        assert_eq!(stage(at(24 * 5), now).unwrap().1, "7d");
        assert_eq!(stage(at(24 * 10), now).unwrap().1, "14d");
        assert!(stage(at(24 * 20), now).is_none());
    }
}
