//! Conditional transitions under contention, audit and the renewal enqueue,
//! on SQLite and PostgreSQL.

use std::collections::HashMap;

use certplane_host::store::*;
use certplane_testkit::both_backends;
use certplane_testkit::{Backend, TestDb, count, fixtures};

fn audit(action: &str, job_id: &str) -> NewAuditEvent {
    NewAuditEvent {
        actor: "tester".into(),
        actor_type: ActorType::System,
        action: action.into(),
        subject_type: "job".into(),
        subject_id: Some(job_id.to_owned()),
        details: serde_json::json!({}),
    }
}

/// 16 concurrent callers race for the same transition (two store instances):
/// exactly one wins, and only the winner's audit event is written.
async fn conditional_transition_has_one_winner(b: Backend) {
    let db = TestDb::new(b).await;
    let store_a = db.migrated().await;
    let store_b = db.store().await;
    for round in 0..5 {
        let job = store_a
            .create_job(NewJob::new(JobType::Issuance).status(JobStatus::AwaitingApproval))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..16 {
            let s = if i % 2 == 0 {
                store_a.clone()
            } else {
                store_b.clone()
            };
            let id = job.id.clone();
            tasks.push(tokio::spawn(async move {
                s.transition_job(
                    &id,
                    JobStatus::AwaitingApproval,
                    JobStatus::Pending,
                    JobUpdate {
                        last_error: Some(format!("approved by {i}")),
                        ..JobUpdate::default()
                    },
                    Some(audit("job.approve", &id)),
                )
                .await
                .unwrap()
            }));
        }
        let mut winners = 0;
        for t in tasks {
            if t.await.unwrap() {
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "round {round}: exactly one winner");
        let stored = store_a.get_job(&job.id).await.unwrap().unwrap();
        assert_eq!(stored.status, JobStatus::Pending);
        let events = store_a
            .list_audit_events(Some("job"), Some(&job.id), 100)
            .await
            .unwrap();
        assert_eq!(events.len(), 1, "only the winner audits");
        assert_eq!(events[0].action, "job.approve");
    }
}

/// Racing the claim against a cancel: one of them wins, never both.
async fn claim_and_cancel_race(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    for _ in 0..20 {
        let job = store
            .create_job(NewJob::new(JobType::Revocation))
            .await
            .unwrap();
        let (claimed, cancelled) = tokio::join!(
            store.claim_pending_jobs(None, 10),
            store.transition_job(
                &job.id,
                JobStatus::Pending,
                JobStatus::Cancelled,
                JobUpdate::default(),
                None
            )
        );
        let claimed = !claimed.unwrap().is_empty();
        let cancelled = cancelled.unwrap();
        assert!(
            claimed ^ cancelled,
            "claimed={claimed} cancelled={cancelled}"
        );
    }
}

/// Illegal moves are refused before touching the database; a lost race
/// returns false; terminal states stay terminal.
async fn illegal_and_stale_transitions(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    let job = store
        .create_job(NewJob::new(JobType::Issuance))
        .await
        .unwrap();
    let err = store
        .transition_job(
            &job.id,
            JobStatus::Pending,
            JobStatus::Completed,
            JobUpdate::default(),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::IllegalTransition { .. }), "{err}");
    assert!(
        !store
            .transition_job(
                &job.id,
                JobStatus::Running,
                JobStatus::Completed,
                JobUpdate::default(),
                None
            )
            .await
            .unwrap()
    );
    assert!(store.cancel_job(&job.id, "operator").await.unwrap());
    assert!(!store.cancel_job(&job.id, "operator").await.unwrap());
    let j = store.get_job(&job.id).await.unwrap().unwrap();
    assert_eq!(j.status, JobStatus::Cancelled);
    assert!(j.finished_at.is_some());
    assert!(
        StoreError::IllegalTransition {
            from: JobStatus::Cancelled,
            to: JobStatus::Pending
        }
        .to_string()
        .contains("cancelled -> pending")
    );
    let bad = store
        .create_job(NewJob::new(JobType::Issuance).status(JobStatus::Running))
        .await
        .unwrap_err();
    assert!(matches!(bad, StoreError::InvalidArgument(_)));
}

/// Renewal enqueue: one set-based statement, idempotent under 4 concurrent
/// callers (two store instances), the right type and initial status.
async fn renewal_enqueue_idempotent_under_concurrency(b: Backend) {
    let db = TestDb::new(b).await;
    let store_a = db.migrated().await;
    let store_b = db.store().await;
    let issuer = fixtures::issuer(&store_a).await;
    let agent = fixtures::agent(&store_a, "edge").await;
    let target = fixtures::target(&store_a, &agent.id, "edge-pem").await;
    let mut host_keyed = Vec::new();
    for _ in 0..150 {
        host_keyed.push(fixtures::certificate(&store_a, &issuer.id, None, KeySource::Host).await);
    }
    let mut agent_keyed = Vec::new();
    for _ in 0..50 {
        agent_keyed.push(
            fixtures::certificate(&store_a, &issuer.id, Some(&target.id), KeySource::Agent).await,
        );
    }
    // 20 issued 90-day certificates far from their window, 10 inside it
    // (issued 80 days ago).
    let far = now() + chrono::Duration::days(90);
    let near = now() + chrono::Duration::days(10);
    for (i, c) in host_keyed.iter().take(30).enumerate() {
        let not_after = if i < 20 { far } else { near };
        store_a
            .record_certificate_version(NewCertificateVersion {
                certificate_id: c.id.clone(),
                serial: format!("{i:x}"),
                pem_chain: "-----BEGIN CERTIFICATE-----".into(),
                not_before: not_after - chrono::Duration::days(90),
                not_after,
                fingerprint_sha256: format!("{:064x}", i),
                encrypted_private_key: Some(vec![1, 2, 3]),
                job_id: None,
                ca_certificate_id: None,
                ca_order_id: None,
                renew_before_secs: None,
            })
            .await
            .unwrap();
    }
    // One disabled certificate is never renewed.
    store_a
        .set_certificate_status(&host_keyed[149].id, CertificateStatus::Disabled)
        .await
        .unwrap();
    // One certificate already has an open job.
    store_a
        .create_job(NewJob::new(JobType::Renewal).certificate(&host_keyed[148].id))
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for i in 0..4 {
        let s = if i % 2 == 0 {
            store_a.clone()
        } else {
            store_b.clone()
        };
        tasks.push(tokio::spawn(async move {
            s.enqueue_due_renewals(5, 100_000).await.unwrap()
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += t.await.unwrap();
    }
    // 200 - 20 far - 1 disabled - 1 with an open job.
    assert_eq!(created, 178);
    assert_eq!(store_a.enqueue_due_renewals(5, 100_000).await.unwrap(), 0);
    assert_eq!(
        count(&store_a, "SELECT COUNT(*) FROM (SELECT certificate_id FROM jobs GROUP BY certificate_id HAVING COUNT(*) > 1) d").await,
        0
    );
    assert_eq!(
        count(
            &store_a,
            "SELECT COUNT(*) FROM jobs WHERE job_type = 'renewal'"
        )
        .await,
        11
    );
    assert_eq!(
        count(
            &store_a,
            "SELECT COUNT(*) FROM jobs WHERE status = 'awaiting_csr' AND job_type = 'issuance'"
        )
        .await,
        50
    );
    assert_eq!(
        count(
            &store_a,
            "SELECT COUNT(*) FROM jobs WHERE agent_id <> 'host'"
        )
        .await,
        0
    );

    // A completed job re-opens the certificate for the next window.
    let cert = &host_keyed[25];
    let jobs = store_a
        .list_jobs(&JobFilter {
            certificate_id: Some(cert.id.clone()),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].job_type, JobType::Renewal);
    assert!(store_a.cancel_job(&jobs[0].id, "test").await.unwrap());
    assert_eq!(store_a.enqueue_due_renewals(5, 100_000).await.unwrap(), 1);
    // Limit bounds one call.
    exec_cancel_all(&store_a).await;
    assert_eq!(store_a.enqueue_due_renewals(5, 7).await.unwrap(), 7);
}

async fn exec_cancel_all(store: &Store) {
    certplane_testkit::exec(store, "UPDATE jobs SET status = 'cancelled'").await;
}

/// Issued versions move `renew_at`; agent keys are never stored.
async fn certificate_versions(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    let issuer = fixtures::issuer(&store).await;
    let agent = fixtures::agent(&store, "edge").await;
    let target = fixtures::target(&store, &agent.id, "edge-pem").await;
    let cert = fixtures::certificate(&store, &issuer.id, Some(&target.id), KeySource::Agent).await;
    let not_after = now() + chrono::Duration::days(90);
    let v = NewCertificateVersion {
        certificate_id: cert.id.clone(),
        serial: "01".into(),
        pem_chain: "pem".into(),
        not_before: now(),
        not_after,
        fingerprint_sha256: "ab".repeat(32),
        encrypted_private_key: Some(vec![1]),
        job_id: None,
        ca_certificate_id: None,
        ca_order_id: None,
        renew_before_secs: None,
    };
    let err = store
        .record_certificate_version(v.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
    let version = store
        .record_certificate_version(NewCertificateVersion {
            encrypted_private_key: None,
            ..v.clone()
        })
        .await
        .unwrap();
    let c = store.get_certificate(&cert.id).await.unwrap().unwrap();
    assert_eq!(c.current_version_id.as_deref(), Some(version.id.as_str()));
    assert_eq!(c.not_after, Some(not_after));
    assert_eq!(c.renew_at, not_after - chrono::Duration::days(30));
    assert_eq!(c.sans, cert.sans);
    assert_eq!(version.not_after, not_after);
    let dup = store
        .record_certificate_version(NewCertificateVersion {
            encrypted_private_key: None,
            ..v.clone()
        })
        .await
        .unwrap_err();
    assert!(matches!(dup, StoreError::AlreadyExists(_)), "{dup}");

    // A caller that read the window checks it instead of reading it again;
    // one that read it before it changed gets the window the row holds.
    let window = 30 * 86_400;
    for (n, assumed) in [(2u8, window), (3, 7 * 86_400)] {
        let version = store
            .record_certificate_version(NewCertificateVersion {
                encrypted_private_key: None,
                fingerprint_sha256: format!("{n:02x}").repeat(32),
                renew_before_secs: Some(assumed),
                ..v.clone()
            })
            .await
            .unwrap();
        let c = store.get_certificate(&cert.id).await.unwrap().unwrap();
        assert_eq!(c.current_version_id.as_deref(), Some(version.id.as_str()));
        assert_eq!(
            c.renew_at,
            not_after - chrono::Duration::days(30),
            "assumed {assumed}"
        );
    }
    // The checks hold on that path too.
    let err = store
        .record_certificate_version(NewCertificateVersion {
            fingerprint_sha256: "04".repeat(32),
            renew_before_secs: Some(window),
            ..v.clone()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument(_)), "{err}");
    let err = store
        .record_certificate_version(NewCertificateVersion {
            certificate_id: "no-such-certificate".into(),
            fingerprint_sha256: "05".repeat(32),
            renew_before_secs: Some(window),
            ..v.clone()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert_eq!(
        store
            .list_certificate_versions(&cert.id)
            .await
            .unwrap()
            .len(),
        3
    );

    let expiring = store
        .list_expiring_certificates(now() + chrono::Duration::days(100), 10)
        .await
        .unwrap();
    assert_eq!(expiring.len(), 1);
}

/// Many job outcomes committed at once (on SQLite they share transactions
/// of the group committer): each is all or nothing on its own. An outcome
/// whose statement fails (a version for a certificate that does not exist)
/// fails alone and writes nothing, one whose lease is lost writes nothing,
/// and every other one commits with its audit row.
async fn concurrent_outcomes_commit_each_alone(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    let issuer = fixtures::issuer(&store).await;
    let cert = fixtures::certificate(&store, &issuer.id, None, KeySource::Host).await;
    for round in 0..3 {
        let mut ids = Vec::new();
        for _ in 0..40 {
            let job = store
                .create_job(NewJob::new(JobType::Revocation).certificate(&cert.id))
                .await
                .unwrap();
            ids.push(job.id);
        }
        let claimed = store
            .claim_pending_jobs(Some(JobType::Revocation), 40)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 40, "round {round}");
        // Round 0 has an outcome that fails in the database; its group is
        // rolled back and written again one by one. Rounds 1 and 2 have
        // none, so their groups commit as groups.
        let bad = if round == 0 {
            claimed[7].id.clone()
        } else {
            String::new()
        };
        let lost = claimed[23].id.clone();
        // Outcome i has i % 4 follow-up jobs (one outcome of the last
        // round more than one multi-row INSERT holds) and one or two audit
        // rows, all deferred to the end of a shared transaction.
        let wants: HashMap<String, usize> = claimed
            .iter()
            .enumerate()
            .map(|(i, job)| {
                let n = if round == 2 && i == 11 { 1_100 } else { i % 4 };
                (job.id.clone(), n)
            })
            .collect();
        let tasks: Vec<_> = claimed
            .into_iter()
            .map(|job| {
                let follow_ups = wants[&job.id];
                let cert_id = cert.id.clone();
                let store = store.clone();
                let (bad, lost) = (bad.clone(), lost.clone());
                tokio::spawn(async move {
                    let mut lease = job.lease().unwrap();
                    if job.id == lost {
                        lease.attempt += 1;
                    }
                    let mut outcome =
                        Outcome::new("revoked", Guard::Lease(lease), JobEnd::Complete);
                    outcome.audit.push(audit("revocation.completed", &job.id));
                    if follow_ups % 2 == 1 {
                        outcome.audit.push(audit("revocation.noted", &job.id));
                    }
                    outcome.follow_ups = (0..follow_ups)
                        .map(|n| {
                            NewJob::new(JobType::Verification)
                                .certificate(&cert_id)
                                .payload(serde_json::json!({ "of": job.id, "n": n }))
                        })
                        .collect();
                    if job.id == bad {
                        outcome.version = Some(NewCertificateVersion {
                            certificate_id: "no-such-certificate".into(),
                            serial: "01".into(),
                            pem_chain: "pem".into(),
                            not_before: now(),
                            not_after: now() + chrono::Duration::days(1),
                            fingerprint_sha256: "cd".repeat(32),
                            encrypted_private_key: None,
                            job_id: None,
                            ca_certificate_id: None,
                            ca_order_id: None,
                            renew_before_secs: None,
                        });
                    }
                    (job.id, store.commit_outcome(outcome).await)
                })
            })
            .collect();
        for task in tasks {
            let (id, result) = task.await.unwrap();
            let stored = store.get_job(&id).await.unwrap().unwrap();
            let audited = store
                .list_audit_events(Some("job"), Some(&id), 10)
                .await
                .unwrap()
                .len();
            if id == bad {
                let err = result.unwrap_err();
                assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
                assert_eq!((stored.status, audited), (JobStatus::Running, 0));
            } else if id == lost {
                assert!(result.unwrap().is_none(), "a lost lease writes nothing");
                assert_eq!((stored.status, audited), (JobStatus::Running, 0));
            } else {
                let committed = result.unwrap().expect("committed");
                assert_eq!(committed.job.status, JobStatus::Completed);
                let n = wants[&id];
                let audit_rows = 1 + n % 2;
                assert_eq!((stored.status, audited), (JobStatus::Completed, audit_rows));
                // Its own follow-ups, in the order it gave them, stored.
                let got: Vec<serde_json::Value> = committed
                    .follow_ups
                    .iter()
                    .map(|j| j.payload.clone().unwrap_or_default())
                    .collect();
                let expected: Vec<serde_json::Value> = (0..n)
                    .map(|n| serde_json::json!({ "of": id, "n": n }))
                    .collect();
                assert_eq!(got, expected, "follow-ups of {id}");
                for job in committed.follow_ups.iter().take(3) {
                    let stored = store.get_job(&job.id).await.unwrap().unwrap();
                    assert_eq!(stored.payload, job.payload);
                }
            }
        }
    }
    // The group holding the failed outcome is rolled back and its members
    // are committed one by one (not counted here); the groups of the later
    // rounds really held several outcomes each.
    let (groups, outcomes) = store
        .grouped_commits()
        .expect("outcomes are committed in groups");
    assert!(groups > 0, "nothing was grouped");
    assert!(groups < outcomes, "{groups} groups for {outcomes} outcomes");
}

/// Outcomes that record versions and clear alert conditions, committed at
/// once (on SQLite a group writes them phase by phase): each writes what it
/// would write alone, and one whose lease was lost writes nothing. Then
/// one certificate's renewal window changes after its job read it, and two
/// outcomes clear the same condition: their group is written again one
/// outcome at a time, and the window in force is the one used.
async fn grouped_versions_write_what_each_would_alone(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    let issuer = fixtures::issuer(&store).await;
    store
        .create_notifier(NewPluginInstance::new("hook", "webhook", "1.0.0"))
        .await
        .unwrap();
    let mut certs = Vec::new();
    for _ in 0..30 {
        certs.push(fixtures::certificate(&store, &issuer.id, None, KeySource::Host).await);
    }
    let condition = |i: usize| format!("issuance:{}", certs[i].id);
    // Even certificates have an open condition; certificates 9 and 11
    // both clear "shared" as well.
    let notice = |keys: Vec<String>, send_when: SendWhen| Notice {
        event_type: "certificate.issued".into(),
        subject: None,
        payload: serde_json::json!({}),
        max_attempts: 3,
        dedupe_key: None,
        alerts: keys.into_iter().map(AlertChange::Resolve).collect(),
        send_when,
    };
    let mut opened: Vec<String> = (0..30).step_by(2).map(condition).collect();
    opened.push("shared".into());
    store
        .queue_notices(&[Notice {
            alerts: opened.iter().cloned().map(AlertChange::Trigger).collect(),
            ..notice(Vec::new(), SendWhen::Opened)
        }])
        .await
        .unwrap();
    let setup_notifications = store
        .list_notifications(None, None, 0, 100)
        .await
        .unwrap()
        .1;
    for cert in &certs {
        store
            .create_job(NewJob::new(JobType::Issuance).certificate(&cert.id))
            .await
            .unwrap();
    }
    let claimed = store
        .claim_pending_jobs(Some(JobType::Issuance), 30)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 30);
    // The window changes after the job read it (30 days).
    let moved = certs[5].id.clone();
    store
        .update_certificate(&moved, None, Some(10 * 86_400), None, None, None, None)
        .await
        .unwrap()
        .unwrap();
    let index: HashMap<String, usize> = certs
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.clone(), i))
        .collect();
    let not_before = now() - chrono::Duration::hours(1);
    let not_after = now() + chrono::Duration::days(90);
    // Certificate 20's job lost its lease: its outcome writes nothing.
    let lost = 20;
    let outcomes: Vec<(usize, Outcome)> = claimed
        .into_iter()
        .map(|job| {
            let cert_id = job.certificate_id.clone().unwrap();
            let i = index[&cert_id];
            let mut keys = vec![condition(i)];
            if i == 9 || i == 11 {
                keys.push("shared".into());
            }
            let mut lease = job.lease().unwrap();
            if i == lost {
                lease.attempt += 1;
            }
            let mut outcome = Outcome::new("issued", Guard::Lease(lease), JobEnd::Complete);
            outcome.version = Some(NewCertificateVersion {
                certificate_id: cert_id.clone(),
                serial: format!("{i:02x}"),
                pem_chain: "pem".into(),
                not_before,
                not_after,
                fingerprint_sha256: format!("{i:064x}"),
                encrypted_private_key: None,
                job_id: Some(job.id.clone()),
                ca_certificate_id: None,
                ca_order_id: None,
                renew_before_secs: Some(30 * 86_400),
            });
            outcome.follow_ups = vec![NewJob::new(JobType::Deployment).certificate(&cert_id)];
            outcome.audit.push(audit("certificate.issued", &job.id));
            outcome.notices = vec![notice(keys, SendWhen::Resolved)];
            (i, outcome)
        })
        .collect();
    // First the outcomes nothing irregular is about, all at once (grouped
    // on SQLite), then the three that send their group back to be written
    // one by one.
    let (irregular, regular): (Vec<_>, Vec<_>) = outcomes
        .into_iter()
        .partition(|(i, _)| [5, 9, 11].contains(i));
    let commit_all = |outcomes: Vec<(usize, Outcome)>| {
        let tasks: Vec<_> = outcomes
            .into_iter()
            .map(|(i, outcome)| {
                let store = store.clone();
                tokio::spawn(async move { (i, store.commit_outcome(outcome).await) })
            })
            .collect();
        futures::future::join_all(tasks)
    };
    let mut results = commit_all(regular).await;
    let (groups, outcomes) = store
        .grouped_commits()
        .expect("outcomes are committed in groups");
    assert!(groups > 0, "nothing was grouped");
    assert!(groups < outcomes, "{groups} groups for {outcomes} outcomes");
    results.extend(commit_all(irregular).await);
    let mut notified = 0;
    for task in results {
        let (i, result) = task.unwrap();
        let cert = store.get_certificate(&certs[i].id).await.unwrap().unwrap();
        if i == lost {
            assert!(result.unwrap().is_none(), "a lost lease writes nothing");
            assert_eq!(cert.current_version_id, None);
            continue;
        }
        let committed = result.unwrap().expect("committed");
        let version = committed.version.expect("a version");
        assert_eq!(version.serial, format!("{i:02x}"));
        assert_eq!(committed.follow_ups.len(), 1);
        assert_eq!(
            committed.follow_ups[0].certificate_version_id.as_ref(),
            Some(&version.id)
        );
        notified += committed.notifications;
        if i % 2 == 0 {
            assert_eq!(
                committed.notifications, 1,
                "certificate {i} cleared its condition"
            );
        } else if i != 9 && i != 11 {
            assert_eq!(
                committed.notifications, 0,
                "certificate {i} cleared nothing"
            );
        }
        assert_eq!(
            cert.current_version_id.as_ref(),
            Some(&version.id),
            "certificate {i}"
        );
        let window = if i == 5 { 10 * 86_400 } else { 30 * 86_400 };
        let (due, _) = renewal_due_at(not_before, not_after, window);
        assert_eq!(
            cert.renew_at.timestamp(),
            due.timestamp(),
            "certificate {i}"
        );
        assert_eq!(
            cert.not_after.map(|t| t.timestamp()),
            Some(not_after.timestamp())
        );
    }
    // The lost job left no follow-up, audit row or cleared condition.
    let lost_job = store
        .list_jobs(&JobFilter {
            certificate_id: Some(certs[lost].id.clone()),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        lost_job.len(),
        1,
        "no deployment of a version never recorded"
    );
    let audited = store
        .list_audit_events(Some("job"), Some(&lost_job[0].id), 10)
        .await
        .unwrap();
    assert!(audited.is_empty());
    // 14 open conditions (not the lost job's) and "shared" cleared once.
    assert_eq!(notified, 15);
    let notifications = store
        .list_notifications(None, None, 0, 100)
        .await
        .unwrap()
        .1;
    assert_eq!(notifications - setup_notifications, 15);
    let mut keys: Vec<String> = (0..30).map(condition).collect();
    keys.push("shared".into());
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(
        store.alert_conditions_open(&keys).await.unwrap(),
        vec![condition(lost)]
    );
    // Every issuance closed in a group or alone took its certificate's
    // open count with it; the lost job is still open.
    for (i, cert) in certs.iter().enumerate() {
        let open = store
            .get_certificate(&cert.id)
            .await
            .unwrap()
            .unwrap()
            .open_issuance;
        assert_eq!(open, i64::from(i == lost), "certificate {i}");
    }
}

/// Issuances closed in groups every way an outcome closes one (completed
/// with a version, completed without, cancelled) and failed (still open),
/// outcomes of lost leases among them: each certificate's `open_issuance`
/// ends equal to its open issuance jobs, however the group was written
/// (on PostgreSQL the group keeps the count itself for the jobs it closes).
async fn grouped_closings_keep_the_open_count(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    let issuer = fixtures::issuer(&store).await;
    let mut certs = Vec::new();
    for _ in 0..40 {
        let cert = fixtures::certificate(&store, &issuer.id, None, KeySource::Host).await;
        store
            .create_job(NewJob::new(JobType::Issuance).certificate(&cert.id))
            .await
            .unwrap();
        certs.push(cert.id);
    }
    let claimed = store
        .claim_pending_jobs(Some(JobType::Issuance), 40)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 40);
    let index: HashMap<String, usize> = certs
        .iter()
        .enumerate()
        .map(|(i, c)| (c.clone(), i))
        .collect();
    let now = now();
    let (groups_before, _) = store.grouped_commits().expect("grouped");
    let tasks: Vec<_> = claimed
        .into_iter()
        .map(|job| {
            let cert_id = job.certificate_id.clone().unwrap();
            let i = index[&cert_id];
            let mut lease = job.lease().unwrap();
            if i % 10 == 9 {
                lease.attempt += 1;
            }
            let guard = Guard::Lease(lease);
            let outcome = match i % 4 {
                0 => {
                    let mut o = Outcome::new("issued", guard, JobEnd::Complete);
                    o.version = Some(NewCertificateVersion {
                        certificate_id: cert_id.clone(),
                        serial: format!("{i:02x}"),
                        pem_chain: "pem".into(),
                        not_before: now - chrono::Duration::hours(1),
                        not_after: now + chrono::Duration::days(90),
                        fingerprint_sha256: format!("{i:064x}"),
                        encrypted_private_key: None,
                        job_id: Some(job.id.clone()),
                        ca_certificate_id: None,
                        ca_order_id: None,
                        renew_before_secs: Some(30 * 86_400),
                    });
                    o
                }
                1 => Outcome::new("issued", guard, JobEnd::Complete),
                2 => Outcome::new("superseded", guard, JobEnd::Move(JobStatus::Cancelled)),
                _ => Outcome::new(
                    "failed",
                    guard,
                    JobEnd::Fail(JobFailure::permanent("refused")),
                ),
            };
            let store = store.clone();
            tokio::spawn(async move { (i, store.commit_outcome(outcome).await) })
        })
        .collect();
    for task in futures::future::join_all(tasks).await {
        let (i, result) = task.unwrap();
        assert_eq!(
            result.unwrap().is_some(),
            i % 10 != 9,
            "certificate {i}: only a lost lease writes nothing"
        );
    }
    let (groups_after, _) = store.grouped_commits().expect("grouped");
    assert!(groups_after > groups_before, "nothing was grouped");
    crate::renewal_storm::assert_open_matches_jobs(&store, &certs).await;
    for (i, id) in certs.iter().enumerate() {
        let still_open = i % 10 == 9 || i % 4 == 3;
        let counted = store
            .get_certificate(id)
            .await
            .unwrap()
            .unwrap()
            .open_issuance;
        assert_eq!(counted, i64::from(still_open), "certificate {i}");
    }
}

/// Outcomes of every shape of job change, committed at once (on
/// PostgreSQL a group changes the jobs of one shape in one statement):
/// each job ends as its own outcome says, with its own columns (text with
/// a NUL, JSON, times), an outcome whose lease was lost changes nothing,
/// and of two outcomes for one job found in a status only one wins.
async fn grouped_job_changes_of_every_shape(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    let issuer = fixtures::issuer(&store).await;
    let cert = fixtures::certificate(&store, &issuer.id, None, KeySource::Host).await;
    for _ in 0..64 {
        store
            .create_job(NewJob::new(JobType::Revocation).certificate(&cert.id))
            .await
            .unwrap();
    }
    let mut claimed = store
        .claim_pending_jobs(Some(JobType::Revocation), 64)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 64);
    claimed.sort_by(|a, b| a.id.cmp(&b.id));
    let lost = [5usize, 22, 43];
    let at =
        |i: usize| chrono::DateTime::from_timestamp(1_900_000_000 + i as i64 * 3_600, 0).unwrap();
    // Outcome i's change, by i % 4.
    let outcome_of = |i: usize, job: &Job| {
        let mut lease = job.lease().unwrap();
        if lost.contains(&i) {
            lease.attempt += 1;
        }
        let guard = Guard::Lease(lease);
        match i % 4 {
            0 => {
                let mut o = Outcome::new("order_placed", guard, JobEnd::Move(JobStatus::Polling));
                o.update = JobUpdate {
                    order_id: Some(format!("order-{i}\0end")),
                    order_state: Some(format!("{{\"n\":{i}}}")),
                    next_poll_at: Some(at(i)),
                    poll_deadline_at: Some(at(i + 100)),
                    ..JobUpdate::default()
                };
                o
            }
            1 => {
                let mut o = Outcome::new("verified", guard, JobEnd::Complete);
                o.update = JobUpdate {
                    verification_result: Some(serde_json::json!({ "n": i, "detail": "a\0b" })),
                    payload: Some(serde_json::json!([i, "p"])),
                    ..JobUpdate::default()
                };
                o
            }
            2 => {
                let mut o = Outcome::new("order_pending", guard, JobEnd::Move(JobStatus::Pending));
                o.update = JobUpdate {
                    run_at: Some(at(i)),
                    last_error: Some(format!("later {i}")),
                    ..JobUpdate::default()
                };
                o
            }
            _ => Outcome::new("csr_requested", guard, JobEnd::Move(JobStatus::AwaitingCsr)),
        }
    };
    let tasks: Vec<_> = claimed
        .iter()
        .enumerate()
        .map(|(i, job)| {
            let store = store.clone();
            let outcome = outcome_of(i, job);
            tokio::spawn(async move { store.commit_outcome(outcome).await })
        })
        .collect();
    let results = futures::future::join_all(tasks).await;
    for (i, (job, result)) in claimed.iter().zip(results).enumerate() {
        let result = result.unwrap().unwrap();
        let stored = store.get_job(&job.id).await.unwrap().unwrap();
        if lost.contains(&i) {
            assert!(result.is_none(), "job {i}: a lost lease writes nothing");
            assert_eq!(&stored, job, "job {i} unchanged");
            continue;
        }
        let committed = result.expect("committed");
        assert_eq!(
            committed.job, stored,
            "job {i}: the row returned is the row stored"
        );
        assert_eq!(stored.lease_expires_at, None, "job {i}");
        match i % 4 {
            0 => {
                assert_eq!(stored.status, JobStatus::Polling);
                assert_eq!(
                    stored.order_id.as_deref(),
                    Some(format!("order-{i}\u{FFFD}end").as_str())
                );
                assert_eq!(stored.order_state, Some(format!("{{\"n\":{i}}}")));
                assert_eq!(stored.next_poll_at, Some(at(i)));
                assert_eq!(stored.poll_deadline_at, Some(at(i + 100)));
                assert_eq!(stored.verification_result, None);
            }
            1 => {
                assert_eq!(stored.status, JobStatus::Completed);
                assert!(stored.finished_at.is_some(), "job {i}");
                assert_eq!(
                    stored.verification_result,
                    Some(serde_json::json!({ "n": i, "detail": "a\u{FFFD}b" }))
                );
                assert_eq!(stored.payload, Some(serde_json::json!([i, "p"])));
                assert_eq!(stored.order_id, None);
            }
            2 => {
                assert_eq!(stored.status, JobStatus::Pending);
                assert_eq!(
                    (stored.lease_owner.as_deref(), stored.finished_at),
                    (None, None)
                );
                assert_eq!(stored.run_at, at(i));
                assert_eq!(stored.last_error, Some(format!("later {i}")));
            }
            _ => {
                assert_eq!(stored.status, JobStatus::AwaitingCsr);
                assert_eq!(
                    (stored.csr_pem.as_deref(), stored.last_error.as_deref()),
                    (None, None)
                );
            }
        }
    }
    // The jobs awaiting a CSR get one, found by status; job 3 gets two at
    // once, and exactly one of them is kept.
    let waiting: Vec<&Job> = claimed
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 4 == 3 && !lost.contains(i))
        .map(|(_, job)| job)
        .collect();
    let csr = |job: &Job, n: u8| {
        let mut o = Outcome::new(
            "csr_received",
            Guard::Status {
                job_id: job.id.clone(),
                status: JobStatus::AwaitingCsr,
            },
            JobEnd::Move(JobStatus::Pending),
        );
        o.update = JobUpdate {
            csr_pem: Some(format!("csr {} {n}", job.id)),
            ..JobUpdate::default()
        };
        o
    };
    let mut submissions: Vec<(String, u8, Outcome)> = waiting
        .iter()
        .map(|job| (job.id.clone(), 0, csr(job, 0)))
        .collect();
    submissions.push((waiting[0].id.clone(), 1, csr(waiting[0], 1)));
    let tasks: Vec<_> = submissions
        .into_iter()
        .map(|(id, n, outcome)| {
            let store = store.clone();
            tokio::spawn(async move { (id, n, store.commit_outcome(outcome).await) })
        })
        .collect();
    let mut kept: HashMap<String, Vec<u8>> = HashMap::new();
    for task in futures::future::join_all(tasks).await {
        let (id, n, result) = task.unwrap();
        if result.unwrap().is_some() {
            kept.entry(id).or_default().push(n);
        }
    }
    assert_eq!(kept.len(), waiting.len(), "every waiting job got its CSR");
    for job in &waiting {
        let won = &kept[&job.id];
        assert_eq!(won.len(), 1, "one CSR kept for {}", job.id);
        let stored = store.get_job(&job.id).await.unwrap().unwrap();
        assert_eq!(stored.status, JobStatus::Pending);
        assert_eq!(stored.csr_pem, Some(format!("csr {} {}", job.id, won[0])));
    }
    let (groups, outcomes) = store
        .grouped_commits()
        .expect("outcomes are committed in groups");
    assert!(groups < outcomes, "{groups} groups for {outcomes} outcomes");
}

/// API keys and audit listing round-trip.
async fn api_keys(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    let key = store
        .create_api_key(NewApiKey {
            name: "ci".into(),
            key_hash: "h1".into(),
            scopes: vec![ApiScope::Operator, ApiScope::ReadOnly],
            expires_at: None,
        })
        .await
        .unwrap();
    let found = store.find_api_key_by_hash("h1").await.unwrap().unwrap();
    assert_eq!(found, key);
    assert!(found.is_usable(now()));
    assert!(store.revoke_api_key(&key.id).await.unwrap());
    assert!(!store.revoke_api_key(&key.id).await.unwrap());
    assert!(
        !store
            .find_api_key_by_hash("h1")
            .await
            .unwrap()
            .unwrap()
            .is_usable(now())
    );
    assert!(store.find_api_key_by_hash("nope").await.unwrap().is_none());
}

/// A certificate is created only under an issuer that exists and is not
/// retired, and a create racing the issuer's retirement ends one way or
/// the other: the certificate exists and the issuer stays, or the issuer is
/// retired and nothing was written.
async fn certificates_need_a_live_issuer(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    let other = db.store().await;
    let new = |issuer_id: &str, name: &str| NewCertificate {
        name: name.to_owned(),
        common_name: format!("{name}.example.test"),
        sans: vec![format!("{name}.example.test")],
        key_type: "ecdsa-p256".into(),
        key_source: KeySource::Host,
        issuer_id: issuer_id.to_owned(),
        target_id: None,
        renew_before_secs: 30 * 86_400,
        owner: None,
    };
    let options = CertificateOptions::default();
    let audit = NewAuditEvent {
        subject_type: "certificate".into(),
        subject_id: None,
        ..audit("certificate.created", "")
    };
    let err = store
        .create_certificate_with_targets(
            new("no-such-issuer", "orphan"),
            &[],
            &options,
            Some(&audit),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::InvalidArgument(ref m) if m.contains("no issuer")),
        "{err}"
    );

    let create = |issuer_id: &str, name: &str| CertificateCreate {
        new: new(issuer_id, name),
        extra_targets: Vec::new(),
        options: options.clone(),
        audit: Some(audit.clone()),
    };
    // A batch with one missing issuer writes none of its certificates.
    let live = fixtures::issuer(&store).await;
    let err = store
        .create_certificates(vec![
            create(&live.id, "batch-ok"),
            create("no-such-issuer", "batch-orphan"),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::InvalidArgument(ref m) if m.contains("no-such-issuer")),
        "{err}"
    );

    // Odd rounds create a batch of two (one statement for both on
    // PostgreSQL), even rounds one certificate.
    for round in 0..20 {
        let issuer = fixtures::issuer(&store).await;
        let name = format!("race-{round}");
        let batch = round % 2 == 1;
        let (created, retired) = tokio::join!(
            async {
                if batch {
                    let mut certs = store
                        .create_certificates(vec![
                            create(&issuer.id, &name),
                            create(&issuer.id, &format!("{name}-b")),
                        ])
                        .await?;
                    assert_eq!(certs.len(), 2);
                    assert_eq!(certs[1].name, format!("{name}-b"));
                    Ok(certs.swap_remove(0))
                } else {
                    store
                        .create_certificate_with_targets(
                            new(&issuer.id, &name),
                            &[],
                            &options,
                            Some(&audit),
                        )
                        .await
                }
            },
            other.retire_issuer(&issuer.id),
        );
        let rows = count(
            &store,
            &format!("SELECT COUNT(*) FROM certificates WHERE name LIKE '{name}%'"),
        )
        .await;
        let expected = if batch { 2 } else { 1 };
        match (created, retired.unwrap()) {
            (Ok(cert), false) => {
                assert_eq!(rows, expected);
                assert_eq!(cert.issuer_id, issuer.id);
                // In use: it cannot be retired now.
                assert!(!other.retire_issuer(&issuer.id).await.unwrap());
            }
            (Err(StoreError::InvalidArgument(m)), true) if m.contains("no issuer") => {
                assert_eq!(
                    rows, 0,
                    "round {round}: a refused create wrote its certificate"
                );
            }
            (created, retired) => {
                panic!("round {round}: created {created:?} while retired = {retired}")
            }
        }
    }
    // The refused creates left no audit rows behind.
    let audited = count(
        &store,
        "SELECT COUNT(*) FROM audit_events WHERE action = 'certificate.created'",
    )
    .await;
    let certificates = count(&store, "SELECT COUNT(*) FROM certificates").await;
    assert_eq!(audited, certificates);
}

both_backends!(
    conditional_transition_has_one_winner,
    claim_and_cancel_race,
    illegal_and_stale_transitions,
    renewal_enqueue_idempotent_under_concurrency,
    certificate_versions,
    certificates_need_a_live_issuer,
    concurrent_outcomes_commit_each_alone,
    grouped_versions_write_what_each_would_alone,
    grouped_job_changes_of_every_shape,
    grouped_closings_keep_the_open_count,
    api_keys,
);
