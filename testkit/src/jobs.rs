//! Waiting on a certificate's jobs in host tests: the first job of a type,
//! and a bounded wait until it reaches a state, which says where the job
//! (and each challenge it presented) stood when the wait runs out.

use std::time::{Duration, Instant};

use certplane_host::store::{Job, JobFilter, JobType, Store};

/// How often [`wait_for_job`] looks.
const POLL: Duration = Duration::from_millis(25);

/// The first job of `job_type` for certificate `certificate_id`, if any.
pub async fn job_of(store: &Store, certificate_id: &str, job_type: JobType) -> Option<Job> {
    store
        .list_jobs(&JobFilter {
            job_type: Some(job_type),
            certificate_id: Some(certificate_id.to_string()),
            ..JobFilter::default()
        })
        .await
        .expect("list jobs")
        .into_iter()
        .next()
}

/// Waits until the first `job_type` job of the certificate satisfies
/// `done`; panics after `within` naming `what`, the job's status, order
/// and last error, and its challenges' states and messages.
pub async fn wait_for_job(
    store: &Store,
    certificate_id: &str,
    job_type: JobType,
    what: &str,
    within: Duration,
    done: impl Fn(&Job) -> bool,
) -> Job {
    let deadline = Instant::now() + within;
    loop {
        let job = job_of(store, certificate_id, job_type).await;
        if let Some(job) = &job
            && done(job)
        {
            return job.clone();
        }
        if Instant::now() >= deadline {
            let rows = match &job {
                Some(j) => store.job_challenges(&j.id).await.unwrap_or_default(),
                None => Vec::new(),
            };
            panic!(
                "timed out waiting for {what}; job: {:?}; challenges: {:?}",
                job.map(|j| (j.status, j.order_id, j.last_error)),
                rows.iter()
                    .map(|r| (&r.challenge_id, &r.kind, &r.state, r.checks, &r.message))
                    .collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}
