//! The `expiry` loop: tells people about certificates running out of time
//! and about jobs that failed for good, through the notifiers.
//!
//! Both are sweeps that see the same event on every tick, so each
//! notification carries a key naming the event (`certificate.expiring`
//! stage of one version, `job.failed` of one job) and every notifier gets
//! it once.

use certplane_runtime::Level;
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use super::events::{About, deployment_key, expiry_key, issuance_key, kind, verification_key};
use super::notify::{Announcement, announce, enabled_notifiers};
use crate::engine::Engine;
use crate::store::{AlertChange, Certificate, Job, JobType, StoreResult};

/// Certificates one tick looks at, soonest expiry first.
const CERT_BATCH: u32 = 1_000;
/// Failed jobs one tick looks at.
const JOB_BATCH: u32 = 500;
/// How far back a tick looks for jobs that failed for good (covers ticks
/// missed while the host was down).
const FAILED_LOOKBACK_HOURS: i64 = 24;

/// The notification a certificate's time left calls for: (kind, stage
/// label, severity), or `None` outside every stage. `stages` are days
/// before expiry, most urgent first; the most urgent is an error.
pub fn stage(
    not_after: DateTime<Utc>,
    now: DateTime<Utc>,
    stages: &[u32],
) -> Option<(&'static str, String, Level)> {
    let left = not_after - now;
    if left <= Duration::zero() {
        return Some((kind::EXPIRED, "expired".into(), Level::Error));
    }
    let last = stages.first().copied();
    stages
        .iter()
        .find(|days| left <= Duration::days(i64::from(**days)))
        .map(|days| {
            let severity = if Some(*days) == last {
                Level::Error
            } else {
                Level::Warn
            };
            (kind::EXPIRING, format!("{days}d"), severity)
        })
}

/// One tick: returns how many notifications were enqueued. Without an
/// enabled notifier there is nobody to tell, and nothing is read.
pub async fn tick(engine: &Engine) -> StoreResult<usize> {
    if enabled_notifiers(engine).await?.is_empty() {
        return Ok(0);
    }
    let now = Utc::now();
    let stages = engine.config.notifications.stages();
    let widest = stages.last().copied().unwrap_or(0);
    let horizon = now + Duration::days(i64::from(widest));
    let mut enqueued = 0;
    for cert in engine
        .store
        .list_expiring_certificates(horizon, CERT_BATCH)
        .await?
    {
        enqueued += expiring(engine, cert, now, &stages).await?;
    }
    let since = now - Duration::hours(FAILED_LOOKBACK_HOURS);
    for job in engine
        .store
        .list_jobs_failed_for_good(since, JOB_BATCH)
        .await?
    {
        enqueued += failed_for_good(engine, &job).await?;
    }
    if enqueued > 0 {
        tracing::info!(enqueued, "expiry and failure notifications enqueued");
    }
    Ok(enqueued)
}

/// `issuance.failed`, `deployment.failed` or `job.failed` for a job that
/// failed for good, once per job. A deployment whose check on the wire
/// found another certificate was announced as `verification.mismatch`
/// with its outcome.
async fn failed_for_good(engine: &Engine, job: &Job) -> StoreResult<usize> {
    let mismatch = job
        .verification_result
        .as_ref()
        .and_then(|v| v.get("status"))
        .and_then(Value::as_str)
        == Some("mismatch");
    let cert_id = job.certificate_id.as_deref();
    let target_id = job.target_id.as_deref();
    let (event_kind, alert) = match (job.job_type, cert_id, target_id) {
        (JobType::Issuance | JobType::Renewal, Some(c), _) => {
            (kind::ISSUANCE_FAILED, Some(issuance_key(c)))
        }
        (JobType::Deployment | JobType::Verification, Some(_), Some(_)) if mismatch => {
            return Ok(0);
        }
        (JobType::Deployment, Some(c), Some(t)) => {
            (kind::DEPLOYMENT_FAILED, Some(deployment_key(c, t)))
        }
        (JobType::Verification, Some(c), Some(t)) => {
            (kind::DEPLOYMENT_FAILED, Some(verification_key(c, t)))
        }
        _ => (kind::JOB_FAILED, None),
    };
    let about = About::load(engine, cert_id, target_id, job.agent_id.as_deref()).await?;
    let error = job.last_error.as_deref().unwrap_or("no error recorded");
    let summary = match event_kind {
        kind::ISSUANCE_FAILED => format!(
            "issuing certificate {} failed after {} attempts: {error}",
            about.certificate_name(cert_id.unwrap_or_default()),
            job.attempts
        ),
        kind::DEPLOYMENT_FAILED => format!(
            "deploying certificate {} to target {} failed after {} attempts: {error}",
            about.certificate_name(cert_id.unwrap_or_default()),
            about.target_name(target_id.unwrap_or_default()),
            job.attempts
        ),
        _ => format!(
            "{} job {} failed for good after {} attempts: {error}",
            job.job_type, job.id, job.attempts
        ),
    };
    let subject = match cert_id {
        Some(c) if event_kind != kind::JOB_FAILED => format!("certificate/{c}"),
        _ => format!("job/{}", job.id),
    };
    let event = Announcement {
        alerts: alert.into_iter().map(AlertChange::Trigger).collect(),
        ..Announcement::new(
            event_kind,
            &subject,
            &summary,
            Level::Error,
            about.details(Some(job), Some(error), json!({})),
        )
    };
    let key = format!("job.failed:{}", job.id);
    announce(engine, &event, Some(&key)).await
}

async fn expiring(
    engine: &Engine,
    cert: Certificate,
    now: DateTime<Utc>,
    stages: &[u32],
) -> StoreResult<usize> {
    let (Some(not_after), Some(version)) = (cert.not_after, cert.current_version_id.clone()) else {
        return Ok(0);
    };
    let Some((event_kind, stage, severity)) = stage(not_after, now, stages) else {
        return Ok(0);
    };
    let key = format!("{event_kind}:{}:{version}:{stage}", cert.id);
    let summary = if event_kind == kind::EXPIRED {
        format!("certificate {} expired at {not_after}", cert.name)
    } else {
        format!(
            "certificate {} expires at {not_after} ({} h left) and has not been renewed",
            cert.name,
            (not_after - now).num_hours()
        )
    };
    let subject = format!("certificate/{}", cert.id);
    let alert = AlertChange::Trigger(expiry_key(&cert.id));
    let target_id = cert.target_id.clone();
    let about = About::of(engine, Some(cert), target_id.as_deref(), None).await?;
    let extra = if event_kind == kind::EXPIRING {
        json!({ "expiring": { "stage": stage, "hours_left": (not_after - now).num_hours() } })
    } else {
        json!({})
    };
    let event = Announcement {
        alerts: vec![alert],
        ..Announcement::new(
            event_kind,
            &subject,
            &summary,
            severity,
            about.details(None, None, extra),
        )
    };
    announce(engine, &event, Some(&key)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_pick_the_most_urgent() {
        let now = Utc::now();
        let at = |h: i64| now + Duration::hours(h);
        let stages = [1, 7, 14];
        assert_eq!(
            stage(at(-1), now, &stages).unwrap().0,
            "certificate.expired"
        );
        assert_eq!(stage(at(20), now, &stages).unwrap().1, "1d");
        assert_eq!(stage(at(20), now, &stages).unwrap().2, Level::Error);
        assert_eq!(stage(at(24 * 5), now, &stages).unwrap().1, "7d");
        assert_eq!(stage(at(24 * 5), now, &stages).unwrap().2, Level::Warn);
        assert_eq!(stage(at(24 * 10), now, &stages).unwrap().1, "14d");
        assert!(stage(at(24 * 20), now, &stages).is_none());
        assert_eq!(stage(at(24 * 20), now, &[3, 30]).unwrap().1, "30d");
    }
}
