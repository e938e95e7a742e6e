//! Claim repository: the seed's three claim tests plus leases, reaper,
//! retries, polls and notifications, on SQLite and PostgreSQL.

use certplane_testkit::both_backends;
use std::collections::HashSet;
use std::time::Duration;

use certplane_host::store::*;
use certplane_testkit::{Backend, TestDb, count, exec, fixtures, test_options};

/// Seed test 1: claimed jobs flip to Running (attempt counted, leased) and a
/// residual claim returns nothing.
async fn claim_flips_to_running_and_residual_is_empty(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    let jobs: Vec<NewJob> = (0..25).map(|_| NewJob::new(JobType::Issuance)).collect();
    assert_eq!(store.create_jobs(&jobs).await.unwrap(), 25);
    // A future job and an agent job are never claimed by the host queue.
    let later = now() + chrono::Duration::hours(1);
    store
        .create_job(NewJob::new(JobType::Issuance).run_at(later))
        .await
        .unwrap();

    let claimed = store.claim_pending_jobs(None, 100).await.unwrap();
    assert_eq!(claimed.len(), 25);
    for job in &claimed {
        assert_eq!(job.status, JobStatus::Running);
        assert_eq!(job.attempts, 1);
        assert_eq!(job.lease_owner.as_deref(), Some(store.instance_id()));
        assert!(job.lease_expires_at.is_some_and(|t| t > now()));
        let stored = store.get_job(&job.id).await.unwrap().unwrap();
        assert_eq!(stored.status, JobStatus::Running);
    }
    assert!(
        store
            .claim_pending_jobs(None, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let counts = store.job_status_counts().await.unwrap();
    assert_eq!(counts.get(&JobStatus::Running), Some(&25));
    assert_eq!(counts.get(&JobStatus::Pending), Some(&1));
}

/// Claims filtered by type only take that type, within the limit.
async fn claim_by_type_respects_type_and_limit(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    let mut jobs = Vec::new();
    for i in 0..30 {
        let t = if i % 3 == 0 {
            JobType::Revocation
        } else {
            JobType::Renewal
        };
        jobs.push(NewJob::new(t));
    }
    store.create_jobs(&jobs).await.unwrap();
    let first = store
        .claim_pending_jobs(Some(JobType::Revocation), 4)
        .await
        .unwrap();
    assert_eq!(first.len(), 4);
    let rest = store
        .claim_pending_jobs(Some(JobType::Revocation), 100)
        .await
        .unwrap();
    assert_eq!(rest.len(), 6);
    assert!(
        first
            .iter()
            .chain(&rest)
            .all(|j| j.job_type == JobType::Revocation)
    );
    assert_eq!(
        store.claim_pending_jobs(None, 1000).await.unwrap().len(),
        20
    );
}

/// Seed test 2 at scale: 8 claimants on two store instances (two replicas)
/// drain 10,000 jobs; no job is claimed twice, the claims add up to the
/// total, and every row ends Running with exactly one attempt.
async fn concurrent_claimants_get_disjoint_jobs(b: Backend) {
    const TOTAL: usize = 10_000;
    const CLAIMANTS: usize = 8;
    let db = TestDb::new(b).await;
    let store_a = db.migrated().await;
    let store_b = db.store().await;
    let jobs: Vec<NewJob> = (0..TOTAL)
        .map(|i| {
            NewJob::new(if i % 2 == 0 {
                JobType::Renewal
            } else {
                JobType::Issuance
            })
        })
        .collect();
    assert_eq!(store_a.create_jobs(&jobs).await.unwrap(), TOTAL as u64);

    let mut tasks = Vec::new();
    for c in 0..CLAIMANTS {
        let store = if c % 2 == 0 {
            store_a.clone()
        } else {
            store_b.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = store.claim_pending_jobs(None, 50).await.expect("claim");
                if batch.is_empty() {
                    break;
                }
                assert!(batch.len() <= 50, "claim returned more than its limit");
                mine.extend(batch.into_iter().map(|j| (j.id, j.status, j.attempts)));
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    let mut sum = 0;
    for t in tasks {
        let mine = t.await.unwrap();
        sum += mine.len();
        for (id, status, attempts) in mine {
            assert_eq!(status, JobStatus::Running);
            assert_eq!(attempts, 1);
            assert!(seen.insert(id.clone()), "job {id} claimed twice");
        }
    }
    assert_eq!(sum, TOTAL);
    assert_eq!(seen.len(), TOTAL);
    assert_eq!(
        count(
            &store_a,
            "SELECT COUNT(*) FROM jobs WHERE status = 'running' AND attempts = 1"
        )
        .await,
        TOTAL as i64
    );
    assert_eq!(
        count(
            &store_a,
            "SELECT COUNT(*) FROM jobs WHERE status <> 'running'"
        )
        .await,
        0
    );
}

/// Seed test 3: agent scope. Direct and target-fallback jobs are flipped to
/// Running; AwaitingCSR jobs reached through certificate → target → agent
/// come back in place; another agent's jobs and retired targets' jobs never.
async fn agent_claim_scope(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    let issuer = fixtures::issuer(&store).await;
    let a = fixtures::agent(&store, "agent-a").await;
    let other = fixtures::agent(&store, "agent-b").await;
    let ta = fixtures::target(&store, &a.id, "ta").await;
    let ta_retired = fixtures::target(&store, &a.id, "ta-retired").await;
    let tb = fixtures::target(&store, &other.id, "tb").await;

    let direct = store
        .create_job(NewJob::new(JobType::Deployment).agent(&a.id))
        .await
        .unwrap();
    assert_eq!(direct.agent_id.as_deref(), Some(a.id.as_str()));
    // Resolved from the target at insert.
    let via_target = store
        .create_job(NewJob::new(JobType::Deployment).target(&ta.id))
        .await
        .unwrap();
    assert_eq!(via_target.agent_id.as_deref(), Some(a.id.as_str()));
    // Seed fallback: a row without agent_id is routed through its target.
    let fallback = store
        .create_job(NewJob::new(JobType::Renewal).target(&ta.id))
        .await
        .unwrap();
    exec(
        &store,
        &format!(
            "UPDATE jobs SET agent_id = NULL WHERE id = '{}'",
            fallback.id
        ),
    )
    .await;
    let retired_target_job = store
        .create_job(NewJob::new(JobType::Deployment).target(&ta_retired.id))
        .await
        .unwrap();
    assert!(
        store
            .retire_target(&ta_retired.id, "decommissioned")
            .await
            .unwrap()
    );
    let others_job = store
        .create_job(NewJob::new(JobType::Deployment).target(&tb.id))
        .await
        .unwrap();
    let others_fallback = store
        .create_job(NewJob::new(JobType::Deployment).target(&tb.id))
        .await
        .unwrap();
    exec(
        &store,
        &format!(
            "UPDATE jobs SET agent_id = NULL WHERE id = '{}'",
            others_fallback.id
        ),
    )
    .await;
    // AwaitingCSR: a host job reached through certificate → target → agent.
    let cert = fixtures::certificate(&store, &issuer.id, Some(&ta.id), KeySource::Agent).await;
    let csr_job = store
        .create_job(
            NewJob::new(JobType::Issuance)
                .certificate(&cert.id)
                .status(JobStatus::AwaitingCsr),
        )
        .await
        .unwrap();
    assert_eq!(csr_job.agent_id.as_deref(), Some(SENTINEL_AGENT_ID));
    let other_cert =
        fixtures::certificate(&store, &issuer.id, Some(&tb.id), KeySource::Agent).await;
    let other_csr = store
        .create_job(
            NewJob::new(JobType::Issuance)
                .certificate(&other_cert.id)
                .status(JobStatus::AwaitingCsr),
        )
        .await
        .unwrap();

    let got = store.claim_pending_for_agent(&a.id, 100).await.unwrap();
    let ids: HashSet<&str> = got.iter().map(|j| j.id.as_str()).collect();
    let expected: HashSet<&str> = [&direct.id, &via_target.id, &fallback.id, &csr_job.id]
        .into_iter()
        .map(String::as_str)
        .collect();
    assert_eq!(ids, expected);
    for job in &got {
        if job.id == csr_job.id {
            assert_eq!(
                job.status,
                JobStatus::AwaitingCsr,
                "AwaitingCSR is returned in place"
            );
            assert_eq!(job.attempts, 0);
        } else {
            assert_eq!(job.status, JobStatus::Running);
            assert_eq!(job.lease_owner.as_deref(), Some(a.id.as_str()));
            assert_eq!(job.attempts, 1);
        }
    }
    for never in [
        &retired_target_job.id,
        &others_job.id,
        &others_fallback.id,
        &other_csr.id,
    ] {
        assert!(!ids.contains(never.as_str()));
    }
    let stored = store.get_job(&csr_job.id).await.unwrap().unwrap();
    assert_eq!(stored.status, JobStatus::AwaitingCsr);

    // Second call: only the AwaitingCSR job again (still in place).
    let again = store.claim_pending_for_agent(&a.id, 100).await.unwrap();
    assert_eq!(
        again.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        vec![csr_job.id.as_str()]
    );

    // The CSR arrives once; a replay loses.
    assert!(
        store
            .submit_csr(&csr_job.id, "-----BEGIN CERTIFICATE REQUEST-----")
            .await
            .unwrap()
    );
    assert!(
        !store
            .submit_csr(&csr_job.id, "-----BEGIN CERTIFICATE REQUEST-----")
            .await
            .unwrap()
    );
    let pending = store.get_job(&csr_job.id).await.unwrap().unwrap();
    assert_eq!(pending.status, JobStatus::Pending);
    assert!(pending.csr_pem.is_some());

    // The other agent gets its own jobs; a retired agent gets nothing.
    let b_jobs = store.claim_pending_for_agent(&other.id, 100).await.unwrap();
    assert_eq!(b_jobs.len(), 3);
    let c = fixtures::agent(&store, "agent-c").await;
    let tc = fixtures::target(&store, &c.id, "tc").await;
    store
        .create_job(NewJob::new(JobType::Deployment).target(&tc.id))
        .await
        .unwrap();
    let out = store
        .retire_agent(
            &c.id,
            RetireAgent {
                force: true,
                reason: Some("gone".into()),
                actor: "test".into(),
                actor_type: ActorType::User,
                notices: Vec::new(),
                move_to_target: None,
            },
        )
        .await
        .unwrap();
    assert!(matches!(out, RetireOutcome::Retired { .. }));
    exec(
        &store,
        &format!(
            "UPDATE jobs SET status = 'pending' WHERE target_id = '{}'",
            tc.id
        ),
    )
    .await;
    assert!(
        store
            .claim_pending_for_agent(&c.id, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .claim_pending_for_agent("no-such-agent", 100)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Leases: renewal by the holder, completion only with the current lease,
/// the reaper fails expired leases and the retry loop brings them back.
async fn leases_reaper_and_retry(b: Backend) {
    let db = TestDb::new(b).await;
    let short = db
        .store_with(StoreOptions {
            lease_duration: Duration::from_millis(1),
            ..test_options()
        })
        .await;
    short.migrate().await.unwrap();
    let store = db.store().await;

    store
        .create_job(NewJob::new(JobType::Revocation))
        .await
        .unwrap();
    let job = short.claim_pending_jobs(None, 1).await.unwrap().remove(0);
    let stale = job.lease().unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let reaped = store.reap_expired_leases(100).await.unwrap();
    assert_eq!(reaped.len(), 1);
    assert_eq!(reaped[0].status, JobStatus::Failed);
    assert!(
        reaped[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("lease expired")
    );
    assert!(
        !short.complete_job(&stale).await.unwrap(),
        "a reaped lease cannot complete"
    );

    assert_eq!(store.retry_failed_jobs(100).await.unwrap(), 1);
    let job = store.claim_pending_jobs(None, 1).await.unwrap().remove(0);
    assert_eq!(job.attempts, 2);
    let lease = job.lease().unwrap();
    assert!(
        !short.complete_job(&stale).await.unwrap(),
        "an older attempt cannot complete"
    );
    assert!(store.reap_expired_leases(100).await.unwrap().is_empty());

    // Transient failure → retried; permanent failure → stays failed.
    let failed = store
        .fail_job(&lease, JobFailure::transient("CA busy"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.last_error.as_deref(), Some("CA busy"));
    assert!(
        store
            .fail_job(&lease, JobFailure::transient("again"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.retry_failed_jobs(100).await.unwrap(), 1);
    let job = store.claim_pending_jobs(None, 1).await.unwrap().remove(0);
    assert_eq!(job.attempts, 3);
    store
        .fail_job(&job.lease().unwrap(), JobFailure::permanent("rejected"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.retry_failed_jobs(100).await.unwrap(), 0);

    // Budget exhausted by attempts.
    let j = store
        .create_job(NewJob {
            max_attempts: 1,
            ..NewJob::new(JobType::Revocation)
        })
        .await
        .unwrap();
    let c = store.claim_pending_jobs(None, 1).await.unwrap().remove(0);
    assert_eq!(c.id, j.id);
    store
        .fail_job(&c.lease().unwrap(), JobFailure::transient("x"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.retry_failed_jobs(100).await.unwrap(), 0);

    // retry_at override and backoff keep the job away until then.
    store
        .create_job(NewJob::new(JobType::Revocation))
        .await
        .unwrap();
    let c = store.claim_pending_jobs(None, 1).await.unwrap().remove(0);
    let later = now() + chrono::Duration::hours(1);
    let f = store
        .fail_job(
            &c.lease().unwrap(),
            JobFailure {
                retry_at: Some(later),
                ..JobFailure::transient("rate limited")
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(f.run_at, later);
    assert_eq!(store.retry_failed_jobs(100).await.unwrap(), 0);

    // Completion with the live lease.
    store
        .create_job(NewJob::new(JobType::Revocation))
        .await
        .unwrap();
    let c = store.claim_pending_jobs(None, 1).await.unwrap().remove(0);
    assert!(store.complete_job(&c.lease().unwrap()).await.unwrap());
    let done = store.get_job(&c.id).await.unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert!(done.finished_at.is_some());
}

/// The backoff puts a transient failure's next attempt in the future.
async fn backoff_delays_retry(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db
        .store_with(StoreOptions {
            backoff: Backoff {
                base: Duration::from_secs(60),
                cap: Duration::from_secs(600),
            },
            ..test_options()
        })
        .await;
    store.migrate().await.unwrap();
    store
        .create_job(NewJob::new(JobType::Revocation))
        .await
        .unwrap();
    let c = store.claim_pending_jobs(None, 1).await.unwrap().remove(0);
    let before = now();
    let f = store
        .fail_job(&c.lease().unwrap(), JobFailure::transient("x"))
        .await
        .unwrap()
        .unwrap();
    let delay = (f.run_at - before).num_milliseconds();
    assert!(
        (50_000..=70_000).contains(&delay),
        "delay {delay} ms not 60 s ± 10 %"
    );
    assert_eq!(store.retry_failed_jobs(100).await.unwrap(), 0);
}

/// Async CA orders: Polling jobs are claimed when due, once.
async fn due_polls_are_claimed_once(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    store
        .create_job(NewJob::new(JobType::Issuance))
        .await
        .unwrap();
    let job = store.claim_pending_jobs(None, 1).await.unwrap().remove(0);
    let won = store
        .transition_job(
            &job.id,
            JobStatus::Running,
            JobStatus::Polling,
            JobUpdate {
                order_id: Some("order-1".into()),
                order_state: Some(r#"{"url":"https://ca.test/order/1"}"#.into()),
                next_poll_at: Some(now()),
                poll_deadline_at: Some(now() + chrono::Duration::minutes(10)),
                ..JobUpdate::default()
            },
            None,
        )
        .await
        .unwrap();
    assert!(won);
    let (a, b2) = tokio::join!(store.claim_due_polls(10), store.claim_due_polls(10));
    let (a, b2) = (a.unwrap(), b2.unwrap());
    assert_eq!(a.len() + b2.len(), 1);
    let polled = a.into_iter().chain(b2).next().unwrap();
    assert_eq!(polled.status, JobStatus::Running);
    assert_eq!(polled.order_id.as_deref(), Some("order-1"));
    assert_eq!(polled.attempts, 1, "polls do not count as attempts");
    assert!(store.claim_due_polls(10).await.unwrap().is_empty());
}

/// Notifications are claimed like jobs: disjoint, retried, sent once.
async fn notifications_claimed_once(b: Backend) {
    let db = TestDb::new(b).await;
    let store_a = db.migrated().await;
    let store_b = db.store().await;
    let notifier = store_a
        .create_notifier(NewPluginInstance::new("hook", "webhook", "1.0.0"))
        .await
        .unwrap();
    for i in 0..200 {
        store_a
            .enqueue_notification(NewNotification {
                notifier_id: notifier.id.clone(),
                event_type: "certificate.expiring".into(),
                subject: Some(format!("cert {i}")),
                payload: serde_json::json!({ "i": i }),
                max_attempts: 2,
            })
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for s in [
        store_a.clone(),
        store_b.clone(),
        store_a.clone(),
        store_b.clone(),
    ] {
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let batch = s.claim_notifications(7).await.unwrap();
                if batch.is_empty() {
                    break;
                }
                for n in batch {
                    assert_eq!(n.status, NotificationStatus::Sending);
                    ids.push(n.id.clone());
                    assert!(s.mark_notification_sent(&n.lease().unwrap()).await.unwrap());
                }
            }
            ids
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(seen.insert(id), "notification sent twice");
        }
    }
    assert_eq!(seen.len(), 200);
    assert_eq!(
        count(
            &store_a,
            "SELECT COUNT(*) FROM notifications WHERE status = 'sent'"
        )
        .await,
        200
    );

    // Failure: back to pending while budget lasts, then failed.
    let n = store_a
        .enqueue_notification(NewNotification {
            notifier_id: notifier.id.clone(),
            event_type: "job.failed".into(),
            subject: None,
            payload: serde_json::json!({}),
            max_attempts: 2,
        })
        .await
        .unwrap();
    let c = store_a.claim_notifications(10).await.unwrap().remove(0);
    assert!(
        store_a
            .mark_notification_failed(&c.lease().unwrap(), "503", false, None)
            .await
            .unwrap()
    );
    let c = store_a.claim_notifications(10).await.unwrap().remove(0);
    assert_eq!(c.attempts, 2);
    assert!(
        store_a
            .mark_notification_failed(&c.lease().unwrap(), "503", false, None)
            .await
            .unwrap()
    );
    let n = store_a.get_notification(&n.id).await.unwrap().unwrap();
    assert_eq!(n.status, NotificationStatus::Failed);
    assert!(store_a.claim_notifications(10).await.unwrap().is_empty());
}

/// What a connector reports is stored even when it holds a NUL, which
/// PostgreSQL refuses in text and JSON: the failure, the order and the
/// verification land (NUL as U+FFFD) instead of failing the write and
/// leaving the job to its lease.
async fn connector_text_with_nul_is_stored(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.store().await;
    store.migrate().await.unwrap();
    store
        .create_job(NewJob::new(JobType::Revocation))
        .await
        .unwrap();
    let job = store.claim_pending_jobs(None, 1).await.unwrap().remove(0);
    let failed = store
        .fail_job(
            &job.lease().unwrap(),
            JobFailure::transient("CA said \0 no"),
        )
        .await
        .unwrap()
        .expect("the failure is recorded");
    assert_eq!(failed.last_error.as_deref(), Some("CA said \u{FFFD} no"));
}

/// The job loops claim deployments before anything else. While a renewal
/// storm waits, a deployment claim must not walk the backlog of pending
/// renewals queued before it: the claim is served by the deployments' own
/// index, before statistics exist and once they say most jobs are
/// (finished) deployments, and it takes exactly the pending deployments.
async fn deployment_claims_do_not_walk_a_renewal_backlog(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    let earlier = now() - chrono::Duration::minutes(10);
    let finished: Vec<NewJob> = (0..1_000)
        .map(|_| NewJob::new(JobType::Deployment).run_at(earlier))
        .collect();
    store.create_jobs(&finished).await.unwrap();
    exec(&store, "UPDATE jobs SET status = 'completed'").await;
    let backlog: Vec<NewJob> = (0..2_000)
        .map(|_| NewJob::new(JobType::Renewal).run_at(earlier))
        .collect();
    store.create_jobs(&backlog).await.unwrap();
    let deployments: Vec<NewJob> = (0..5).map(|_| NewJob::new(JobType::Deployment)).collect();
    store.create_jobs(&deployments).await.unwrap();

    for analyzed in [false, true] {
        if analyzed {
            exec(&store, "ANALYZE").await;
        }
        // The claim that leaves busy targets alone too.
        for except_targets in [false, true] {
            let plan = store
                .explain_host_claim(Some(JobType::Deployment), except_targets)
                .await
                .unwrap();
            assert!(
                plan.contains("jobs_pending_host_deployments"),
                "analyzed: {analyzed}, leaving targets alone: {except_targets}\n{plan}"
            );
        }
        // Other typed claims keep to the by-type index.
        let plan = store
            .explain_host_claim(Some(JobType::Revocation), false)
            .await
            .unwrap();
        if b == Backend::Sqlite {
            assert!(plan.contains("jobs_pending_host_by_type"), "{plan}");
        }
    }
    let claimed = store
        .claim_pending_jobs(Some(JobType::Deployment), 100)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 5);
    assert!(claimed.iter().all(|j| j.job_type == JobType::Deployment));
    assert!(
        store
            .claim_pending_jobs(Some(JobType::Deployment), 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.claim_pending_jobs(None, 5_000).await.unwrap().len(),
        2_000
    );
}

/// Two targets of one agent, named `busy` and `free`.
async fn busy_and_free_targets(store: &Store) -> (Target, Target) {
    let agent = fixtures::agent(store, "a").await;
    let busy = fixtures::target(store, &agent.id, "busy").await;
    let free = fixtures::target(store, &agent.id, "free").await;
    (busy, free)
}

/// A claim leaves alone the deployments to the targets it is told are
/// busy (whichever claim: deployments only, or any type), and they are
/// claimed once the targets are not.
async fn claims_leave_busy_targets_alone(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    let (busy, free) = busy_and_free_targets(&store).await;
    let earlier = now() - chrono::Duration::minutes(10);
    let mut jobs: Vec<NewJob> = (0..3)
        .map(|_| {
            NewJob::new(JobType::Deployment)
                .target(&busy.id)
                .agent("host")
                .run_at(earlier)
        })
        .collect();
    jobs.push(
        NewJob::new(JobType::Deployment)
            .target(&free.id)
            .agent("host"),
    );
    jobs.push(NewJob::new(JobType::Issuance).run_at(earlier));
    store.create_jobs(&jobs).await.unwrap();
    let except = [busy.id.clone()];

    let deployments = store
        .claim_pending_jobs_except(Some(JobType::Deployment), 10, &except)
        .await
        .unwrap();
    assert_eq!(deployments.len(), 1, "{deployments:?}");
    assert_eq!(deployments[0].target_id.as_deref(), Some(free.id.as_str()));
    let any = store
        .claim_pending_jobs_except(None, 10, &except)
        .await
        .unwrap();
    assert_eq!(any.len(), 1, "{any:?}");
    assert_eq!(any[0].job_type, JobType::Issuance);

    let rest = store.claim_pending_jobs(None, 10).await.unwrap();
    assert_eq!(rest.len(), 3);
    assert!(
        rest.iter()
            .all(|j| j.target_id.as_deref() == Some(busy.id.as_str()))
    );
}

/// One claim takes deployments first, even when issuances have waited
/// longer, then any type for what is left of its limit; it says how many
/// the deployments' claim took. Without `deployments_first` it takes the
/// oldest jobs of any type.
async fn a_claim_takes_deployments_first_then_the_rest(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    let (busy, free) = busy_and_free_targets(&store).await;
    let earlier = now() - chrono::Duration::minutes(10);
    let mut jobs: Vec<NewJob> = (0..3)
        .map(|_| NewJob::new(JobType::Renewal).run_at(earlier))
        .collect();
    for target in [&free, &free, &busy] {
        jobs.push(
            NewJob::new(JobType::Deployment)
                .target(&target.id)
                .agent("host"),
        );
    }
    store.create_jobs(&jobs).await.unwrap();
    let except = [busy.id.clone()];

    let HostClaimed {
        jobs: first,
        deployments,
        ..
    } = store
        .claim_host_jobs_deployments_first(3, &except, true)
        .await
        .unwrap();
    assert_eq!(deployments, 2, "{first:?}");
    let types: Vec<JobType> = first.iter().map(|j| j.job_type).collect();
    assert_eq!(
        types.iter().filter(|t| **t == JobType::Deployment).count(),
        2,
        "{types:?}"
    );
    assert_eq!(
        types.iter().filter(|t| **t == JobType::Renewal).count(),
        1,
        "{types:?}"
    );
    assert!(first.iter().all(|j| j.status == JobStatus::Running));

    // Oldest first: the two renewals left, then the busy target's
    // deployment is left alone.
    let HostClaimed {
        jobs: next,
        deployments,
        ..
    } = store
        .claim_host_jobs_deployments_first(5, &except, false)
        .await
        .unwrap();
    assert_eq!(deployments, 0);
    let types: Vec<JobType> = next.iter().map(|j| j.job_type).collect();
    assert_eq!(types, [JobType::Renewal, JobType::Renewal]);
    let HostClaimed {
        jobs: last,
        deployments,
        ..
    } = store
        .claim_host_jobs_deployments_first(5, &[], true)
        .await
        .unwrap();
    assert_eq!((last.len(), deployments), (1, 1));
    assert_eq!(last[0].target_id.as_deref(), Some(busy.id.as_str()));
}

/// The reaper expires jobs that waited too long (for a CSR, an approval)
/// under the write lock on every tick: it reads them through their own
/// index, never a scan of every job, and fails exactly the stale waits.
async fn expiring_waits_reads_only_the_waiting_jobs(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    let done: Vec<NewJob> = (0..2_000)
        .map(|_| NewJob::new(JobType::Deployment))
        .collect();
    store.create_jobs(&done).await.unwrap();
    exec(&store, "UPDATE jobs SET status = 'completed'").await;
    let waiting: Vec<NewJob> = (0..6).map(|_| NewJob::new(JobType::Issuance)).collect();
    store.create_jobs(&waiting).await.unwrap();
    exec(
        &store,
        "UPDATE jobs SET status = 'awaiting_csr' \
         WHERE id = (SELECT MIN(id) FROM jobs WHERE status = 'pending')",
    )
    .await;
    exec(
        &store,
        "UPDATE jobs SET status = 'awaiting_approval' WHERE status = 'pending'",
    )
    .await;
    exec(&store, "ANALYZE").await;
    for status in [JobStatus::AwaitingCsr, JobStatus::AwaitingApproval] {
        let plan = store.explain_expire_waiting(status).await.unwrap();
        assert!(plan.contains("jobs_waiting_since"), "{status}: {plan}");
    }
    let later = now() + chrono::Duration::seconds(1);
    let expired = store
        .expire_waiting_jobs(JobStatus::AwaitingCsr, later, "too slow", 500)
        .await
        .unwrap();
    assert_eq!(expired, 1);
    let expired = store
        .expire_waiting_jobs(JobStatus::AwaitingApproval, later, "too slow", 500)
        .await
        .unwrap();
    assert_eq!(expired, 5);
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM jobs WHERE status = 'failed'").await,
        6
    );
}

/// A page of the job listing (`GET /jobs`, newest first) reads its rows
/// from the `jobs_by_created` index instead of sorting the whole table:
/// at 30,000 jobs the page took 54 ms with the sort, and the table grows
/// with every renewal.
async fn job_listing_pages_read_an_index_not_the_table(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    let jobs: Vec<NewJob> = (0..10_000)
        .map(|i| {
            NewJob::new(if i % 2 == 0 {
                JobType::Deployment
            } else {
                JobType::Renewal
            })
        })
        .collect();
    store.create_jobs(&jobs).await.unwrap();
    exec(&store, "UPDATE jobs SET status = 'completed'").await;
    exec(&store, "ANALYZE").await;
    let filters = [
        JobFilter::default(),
        JobFilter {
            status: Some(JobStatus::Completed),
            job_type: Some(JobType::Deployment),
            limit: Some(1),
            ..JobFilter::default()
        },
    ];
    for filter in &filters {
        let plan = store.explain_list_jobs(filter).await.unwrap();
        assert!(plan.contains("jobs_by_created"), "{filter:?}\n{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "{filter:?}\n{plan}");
    }
    // Newest first, as before.
    let page = store
        .list_jobs(&JobFilter {
            limit: Some(50),
            offset: Some(10),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 50);
    assert!(
        page.windows(2)
            .all(|w| (&w[0].created_at, &w[0].id) > (&w[1].created_at, &w[1].id))
    );
}

/// The batch reads of claimed jobs' rows find them by primary key in the
/// tables that grow with the inventory: on PostgreSQL, `id IN (SELECT
/// json_array_elements_text(...))` was hash-joined against a sequential
/// scan of every certificate (3 ms per batch at 10,000 certificates, a
/// quarter of the server's time in a renewal storm).
async fn batch_reads_find_rows_by_key(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    let issuer = fixtures::issuer(&store).await;
    let target = fixtures::target(&store, "host", "edge").await;
    let cert = fixtures::certificate(&store, &issuer.id, None, KeySource::Host).await;
    fixtures::version_ending_in(&store, &cert.id, "01", 60).await;
    let copies = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)";
    exec(
        &store,
        &format!(
            "{copies} INSERT INTO certificates (id, name, common_name, key_type, key_source,
                 issuer_id, renew_before_secs, renew_at, created_at, updated_at)
             SELECT c.id || '-' || n.i, c.name || '-' || n.i, c.common_name, c.key_type,
                    c.key_source, c.issuer_id, c.renew_before_secs, c.renew_at, c.created_at,
                    c.updated_at
             FROM certificates c, n"
        ),
    )
    .await;
    exec(
        &store,
        &format!(
            "{copies} INSERT INTO certificate_versions (id, certificate_id, serial, pem_chain,
                 not_before, not_after, fingerprint_sha256, created_at)
             SELECT v.id || '-' || n.i, v.certificate_id || '-' || n.i, v.serial, v.pem_chain,
                    v.not_before, v.not_after, v.fingerprint_sha256, v.created_at
             FROM certificate_versions v, n"
        ),
    )
    .await;
    exec(
        &store,
        &format!(
            "{copies} INSERT INTO certificate_targets (certificate_id, target_id, created_at)
             SELECT c.id || '-' || n.i, '{}', c.created_at FROM certificates c, n
             WHERE c.id = '{}'",
            target.id, cert.id
        ),
    )
    .await;
    exec(&store, "ANALYZE").await;
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM certificate_versions").await,
        10_001
    );
    for (table, plan) in store.explain_batch_reads().await.unwrap() {
        match b {
            Backend::Sqlite => {
                assert!(plan.contains(&format!("SEARCH {table}")), "{table}\n{plan}")
            }
            Backend::Postgres => {
                assert!(plan.contains("Index"), "{table}\n{plan}");
                assert!(!plan.contains("Seq Scan"), "{table}\n{plan}");
            }
        }
    }
}

/// A host-key certificate of `issuer` whose key is held by `key_target`,
/// deployed to `extra` targets as well.
async fn certificate_with_targets(
    store: &Store,
    issuer: &PluginInstance,
    key_target: &Target,
    extra: &[String],
) -> Certificate {
    let name = format!("batch-{}", new_id());
    store
        .create_certificate_with_targets(
            NewCertificate {
                name: name.clone(),
                common_name: format!("{name}.example.test"),
                sans: vec![],
                key_type: "ecdsa-p256".into(),
                key_source: KeySource::Host,
                issuer_id: issuer.id.clone(),
                target_id: Some(key_target.id.clone()),
                renew_before_secs: 86_400,
                owner: None,
            },
            extra,
            &CertificateOptions::default(),
            None,
        )
        .await
        .unwrap()
}

/// The rows of a claimed batch are read together, one read for all of it,
/// and each job gets exactly the rows it would read on its own: an
/// issuance its certificate, issuer and live targets by name; a deployment
/// its target, certificate and version. Rows that are gone, and a version
/// of another certificate, come back as absent, not as someone else's.
async fn claimed_batch_reads_each_jobs_rows(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    let issuer = fixtures::issuer(&store).await;
    // Targets of the host's own agent: their deployments are host jobs.
    let key_target = fixtures::target(&store, "host", "b-edge").await;
    let extra = fixtures::target(&store, "host", "a-edge").await;
    let retired = fixtures::target(&store, "host", "c-edge").await;
    let spread = certificate_with_targets(
        &store,
        &issuer,
        &key_target,
        &[extra.id.clone(), retired.id.clone()],
    )
    .await;
    assert!(store.retire_target(&retired.id, "test").await.unwrap());
    let alone = fixtures::certificate(&store, &issuer.id, None, KeySource::Host).await;
    let spread_v = fixtures::version_ending_in(&store, &spread.id, "01", 60).await;
    let alone_v = fixtures::version_ending_in(&store, &alone.id, "02", 60).await;

    let deployment = |target: &str, cert: &str, version: &str| {
        let mut job = NewJob::new(JobType::Deployment)
            .target(target)
            .certificate(cert);
        job.certificate_version_id = Some(version.to_owned());
        job
    };
    let new = [
        NewJob::new(JobType::Issuance).certificate(&spread.id),
        NewJob::new(JobType::Renewal).certificate(&alone.id),
        deployment(&key_target.id, &spread.id, &spread_v.id),
        // A version of another certificate.
        deployment(&key_target.id, &spread.id, &alone_v.id),
        NewJob::new(JobType::Verification).certificate(&alone.id),
    ];
    store.create_jobs(&new).await.unwrap();
    let mut jobs = store.claim_pending_jobs(None, 10).await.unwrap();
    assert_eq!(jobs.len(), new.len());
    let of = |jobs: &[Job], t: JobType, cert: &str, version: Option<&str>| {
        jobs.iter()
            .find(|j| {
                j.job_type == t
                    && j.certificate_id.as_deref() == Some(cert)
                    && (version.is_none() || j.certificate_version_id.as_deref() == version)
            })
            .unwrap()
            .clone()
    };
    // Rows that are gone: a certificate, and a deployment's target.
    let mut gone_cert = of(&jobs, JobType::Issuance, &spread.id, None);
    gone_cert.id = new_id();
    gone_cert.certificate_id = Some(new_id());
    let mut gone_target = of(&jobs, JobType::Deployment, &spread.id, Some(&spread_v.id));
    gone_target.id = new_id();
    gone_target.target_id = Some(new_id());
    jobs.extend([gone_cert.clone(), gone_target.clone()]);

    // As stored now, with its current version and open issuance.
    let spread = store.get_certificate(&spread.id).await.unwrap().unwrap();
    let (reads_before, _) = store.operation_counts();
    let inputs = store.job_inputs(&jobs).await.unwrap();
    let (reads_after, _) = store.operation_counts();
    assert_eq!(reads_after - reads_before, 1, "one read for the batch");
    assert_eq!(inputs.len(), jobs.len() - 1, "all but the verification");

    let issuance = |job: &Job| match inputs.get(&job.id) {
        Some(JobInputs::Issuance(found)) => found.clone(),
        other => panic!("{other:?}"),
    };
    let deployment = |job: &Job| match inputs.get(&job.id) {
        Some(JobInputs::Deployment(found)) => found.clone(),
        other => panic!("{other:?}"),
    };
    let ids = |targets: &[Target]| targets.iter().map(|t| t.id.clone()).collect::<Vec<_>>();

    let spread_in = issuance(&of(&jobs, JobType::Issuance, &spread.id, None)).unwrap();
    assert_eq!(spread_in.certificate, spread);
    assert_eq!(spread_in.issuer.as_ref(), Some(&issuer));
    assert_eq!(
        ids(&spread_in.targets),
        [extra.id.clone(), key_target.id.clone()],
        "live targets, by name"
    );
    let alone_in = issuance(&of(&jobs, JobType::Renewal, &alone.id, None)).unwrap();
    assert_eq!(alone_in.certificate.id, alone.id);
    assert_eq!(alone_in.issuer.as_ref(), Some(&issuer));
    assert!(alone_in.targets.is_empty());
    assert!(issuance(&gone_cert).is_none());

    let own = deployment(&of(
        &jobs,
        JobType::Deployment,
        &spread.id,
        Some(&spread_v.id),
    ));
    assert_eq!(own.target.as_ref(), Some(&key_target));
    assert_eq!(own.certificate.as_ref(), Some(&spread));
    assert_eq!(own.version.as_ref(), Some(&spread_v));
    let foreign = deployment(&of(
        &jobs,
        JobType::Deployment,
        &spread.id,
        Some(&alone_v.id),
    ));
    assert!(
        foreign.version.is_none(),
        "a version of another certificate"
    );
    assert_eq!(foreign.target.as_ref(), Some(&key_target));
    let lost = deployment(&gone_target);
    assert!(lost.target.is_none());
    assert_eq!(lost.version.as_ref(), Some(&spread_v));

    // A job read on its own gets the same rows; nothing to read, no read.
    let job = of(&jobs, JobType::Issuance, &spread.id, None);
    match store.inputs_for(&job, None).await.unwrap() {
        Some(JobInputs::Issuance(Some(found))) => {
            assert_eq!(ids(&found.targets), ids(&spread_in.targets));
            assert_eq!(found.certificate, spread);
        }
        other => panic!("{other:?}"),
    }
    let (reads_before, _) = store.operation_counts();
    assert!(store.job_inputs(&[]).await.unwrap().is_empty());
    let verification = of(&jobs, JobType::Verification, &alone.id, None);
    assert!(
        store
            .inputs_for(&verification, None)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.operation_counts().0, reads_before);
}

/// On SQLite a claim reads its jobs' rows in its own transaction, on the
/// connection that just wrote them (a reader connection would read every
/// page again after each commit), and each job gets exactly what
/// [`Store::job_inputs`] reads for it; no read transaction is spent. On
/// PostgreSQL the claim leaves the reading to the caller.
async fn a_claim_reads_its_jobs_rows_where_it_writes(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    let issuer = fixtures::issuer(&store).await;
    let target = fixtures::target(&store, "host", "edge").await;
    let retired = fixtures::target(&store, "host", "old-edge").await;
    let linked =
        certificate_with_targets(&store, &issuer, &target, std::slice::from_ref(&retired.id)).await;
    assert!(store.retire_target(&retired.id, "test").await.unwrap());
    let plain = fixtures::certificate(&store, &issuer.id, None, KeySource::Host).await;
    let version = fixtures::version_ending_in(&store, &linked.id, "03", 60).await;
    let mut deployment = NewJob::new(JobType::Deployment)
        .target(&target.id)
        .certificate(&linked.id);
    deployment.certificate_version_id = Some(version.id.clone());
    store
        .create_jobs(&[
            NewJob::new(JobType::Renewal).certificate(&linked.id),
            NewJob::new(JobType::Issuance).certificate(&plain.id),
            deployment,
            NewJob::new(JobType::Verification).certificate(&plain.id),
        ])
        .await
        .unwrap();

    let (reads_before, _) = store.operation_counts();
    let claimed = store
        .claim_host_jobs_deployments_first(10, &[], true)
        .await
        .unwrap();
    let (reads_after, _) = store.operation_counts();
    assert_eq!(claimed.jobs.len(), 4, "{:?}", claimed.jobs);
    assert_eq!(claimed.deployments, 1);
    match b {
        Backend::Sqlite => {
            let inputs = claimed.inputs.expect("read with the claim");
            assert_eq!(reads_after, reads_before, "no read transaction");
            let alone = store.job_inputs(&claimed.jobs).await.unwrap();
            assert_eq!(inputs.len(), 3, "all but the verification: {inputs:?}");
            assert_eq!(
                inputs.keys().collect::<HashSet<_>>(),
                alone.keys().collect::<HashSet<_>>()
            );
            for (id, read) in &inputs {
                assert_eq!(format!("{read:?}"), format!("{:?}", alone[id]));
            }
            let renewal = claimed
                .jobs
                .iter()
                .find(|j| j.job_type == JobType::Renewal)
                .unwrap();
            match &inputs[&renewal.id] {
                JobInputs::Issuance(Some(found)) => {
                    assert_eq!(found.certificate.id, linked.id);
                    assert_eq!(found.issuer.as_ref(), Some(&issuer));
                    let targets: Vec<&str> = found.targets.iter().map(|t| t.id.as_str()).collect();
                    assert_eq!(targets, [target.id.as_str()], "the retired one left out");
                }
                other => panic!("{other:?}"),
            }
        }
        Backend::Postgres => assert!(claimed.inputs.is_none()),
    }
}

both_backends!(
    batch_reads_find_rows_by_key,
    a_claim_reads_its_jobs_rows_where_it_writes,
    claimed_batch_reads_each_jobs_rows,
    job_listing_pages_read_an_index_not_the_table,
    expiring_waits_reads_only_the_waiting_jobs,
    deployment_claims_do_not_walk_a_renewal_backlog,
    claims_leave_busy_targets_alone,
    a_claim_takes_deployments_first_then_the_rest,
    claim_flips_to_running_and_residual_is_empty,
    claim_by_type_respects_type_and_limit,
    concurrent_claimants_get_disjoint_jobs,
    agent_claim_scope,
    leases_reaper_and_retry,
    backoff_delays_retry,
    due_polls_are_claimed_once,
    notifications_claimed_once,
    connector_text_with_nul_is_stored,
);

/// SQLite: a claim whose caller stopped waiting while another process held
/// the database (a job loop's tick timed out) leases nothing once the
/// writer is free again. Run anyway, it would lease jobs that nobody
/// starts, each losing an attempt when its lease lapsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_abandoned_claim_leases_nothing() {
    use sqlx::Connection as _;
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.migrated().await;
    let job = store
        .create_job(NewJob::new(JobType::Issuance))
        .await
        .unwrap();
    // Another process holds the write lock.
    let mut other = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let abandoned = tokio::time::timeout(
        Duration::from_millis(300),
        store.claim_pending_jobs(None, 10),
    )
    .await;
    assert!(abandoned.is_err(), "the claim should still be waiting");
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    // The committer takes the write lock again; a later claim is answered.
    let later = tokio::time::timeout(Duration::from_secs(10), store.claim_pending_jobs(None, 10))
        .await
        .expect("the writer is free again")
        .unwrap();
    assert_eq!(
        later.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        [job.id.as_str()],
        "the abandoned claim took the job"
    );
    assert_eq!(later[0].attempts, 1);
}

/// SQLite: a transaction whose ROLLBACK fails (SQLite already rolled it
/// back on its own, as after a full disk or an I/O error) must not leave
/// the single writer counted inside a transaction: every later write
/// transaction would be refused until a restart. The connection is closed
/// on its return to the pool and the next write gets a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_failed_rollback_does_not_wedge_the_writer() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.migrated().await;
    let PoolRef::Sqlite(writer) = store.pool() else {
        unreachable!("a SQLite store")
    };
    {
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.unwrap();
        // The transaction ends under sqlx: its own ROLLBACK on drop fails.
        sqlx::query("ROLLBACK").execute(&mut *tx).await.unwrap();
    }
    let audit = NewAuditEvent {
        actor: "test".into(),
        actor_type: ActorType::System,
        action: "certificate.renew_now".into(),
        subject_type: "certificate".into(),
        subject_id: None,
        details: serde_json::json!({}),
    };
    // A write transaction of its own (BEGIN IMMEDIATE on the writer).
    let renewed = tokio::time::timeout(
        Duration::from_secs(10),
        store.renew_now_where(None, None, &audit),
    )
    .await
    .expect("the writer answers");
    assert_eq!(renewed.unwrap().renewing, 0);
}
