//! A renewal storm: many certificates due at once. What must hold: the
//! sweep is woken when certificates fall due (not up to an interval later),
//! renewed versions are deployed while the rest are still being issued
//! (deployments are not queued behind the issuance backlog), the sweep's
//! work does not grow with the backlog of certificates that already have a
//! job, and every certificate is renewed exactly once.

use std::time::{Duration, Instant};

use certplane_host::engine;
use certplane_host::store::{
    JobFilter, JobStatus, JobType, JobUpdate, KeySource, NewCertificate, NewJob, NewPluginInstance,
    NewTarget, SENTINEL_AGENT_ID, Store,
};
use certplane_testkit::Backend;
use certplane_testkit::app::TestApp;
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn pem_files_target(store: &Store, dir: &std::path::Path) -> String {
    store
        .create_target(NewTarget {
            agent_id: SENTINEL_AGENT_ID.into(),
            instance: NewPluginInstance {
                settings: json!({ "directory": "/certs" }),
                grants: json!({
                    "directories": [{ "path": dir, "guest_path": "/certs", "writable": true }]
                }),
                ..NewPluginInstance::new("files", "pem-files", "0.1.0")
            },
        })
        .await
        .unwrap()
        .id
}

async fn certificate(store: &Store, issuer: &str, target: &str, i: usize) -> String {
    let name = format!("c{i}.storm.test");
    store
        .create_certificate(NewCertificate {
            name: name.clone(),
            common_name: name.clone(),
            sans: vec![name],
            key_type: "ecdsa-p256".into(),
            key_source: KeySource::Host,
            issuer_id: issuer.into(),
            target_id: Some(target.into()),
            renew_before_secs: 86_400,
            owner: None,
        })
        .await
        .unwrap()
        .id
}

async fn renew(
    app: &TestApp,
    token: &str,
    body: serde_json::Value,
) -> certplane_testkit::app::Reply {
    app.post("/api/v1/certificates/renew", token, body).await
}

async fn jobs(store: &Store, job_type: JobType) -> Vec<certplane_host::store::Job> {
    store
        .list_jobs(&JobFilter {
            job_type: Some(job_type),
            limit: Some(100_000),
            ..JobFilter::default()
        })
        .await
        .unwrap()
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Two job slots and 40 certificates renewed at once through
/// `POST /certificates/renew`: the first renewed versions are deployed long
/// before the last renewal is issued, and each certificate gets exactly one
/// renewal and one new deployment.
async fn storm_deploys_while_it_issues(backend: Backend) {
    const N: usize = 40;
    let app = TestApp::with_config(backend, |c| {
        c.jobs.max_concurrent = 2;
        c.scheduler.jobs_ms = 200;
        c.scheduler.renewal_ms = 60_000;
    })
    .await;
    let store = &app.store;
    let issuer = certplane_testkit::ca_issuer(&app.state, "local-ca", json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let target = pem_files_target(store, dir.path()).await;
    for i in 0..N {
        certificate(store, &issuer.id, &target, i).await;
    }
    let scheduler = engine::start(app.state.engine.clone(), CancellationToken::new());
    app.state.engine.wake.renewals.notify_one();
    wait_until("first issuance", Duration::from_secs(60), || async {
        jobs(store, JobType::Deployment)
            .await
            .iter()
            .filter(|j| j.status == JobStatus::Completed)
            .count()
            == N
    })
    .await;

    // An empty body would renew everything by accident: refused.
    let refused = renew(&app, &app.operator, json!({})).await;
    assert_eq!(refused.status, 422, "{}", refused.text);
    let reader = renew(&app, &app.reader, json!({ "issuer_id": issuer.id })).await;
    assert_eq!(reader.status, 403, "{}", reader.text);
    let unknown = renew(
        &app,
        &app.operator,
        json!({ "issuer_id": "no-such-issuer" }),
    )
    .await;
    assert_eq!(unknown.status, 422, "{}", unknown.text);

    let r = renew(&app, &app.operator, json!({ "issuer_id": issuer.id })).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json["renewing"], N as u64);
    wait_until("the storm", Duration::from_secs(120), || async {
        jobs(store, JobType::Deployment)
            .await
            .iter()
            .filter(|j| j.status == JobStatus::Completed)
            .count()
            == 2 * N
    })
    .await;
    let report = scheduler.shutdown(Duration::from_secs(5)).await;
    assert!(report.is_clean(), "{report:?}");

    let renewals = jobs(store, JobType::Renewal).await;
    assert_eq!(renewals.len(), N, "one renewal per certificate");
    assert!(renewals.iter().all(|j| j.status == JobStatus::Completed));
    let mut per_cert: Vec<&str> = renewals
        .iter()
        .filter_map(|j| j.certificate_id.as_deref())
        .collect();
    per_cert.sort_unstable();
    per_cert.dedup();
    assert_eq!(per_cert.len(), N, "no certificate renewed twice");
    let last_issued = renewals.iter().filter_map(|j| j.finished_at).max().unwrap();
    let renewal_ids: Vec<&str> = renewals.iter().map(|j| j.id.as_str()).collect();
    let storm_deploys: Vec<_> = jobs(store, JobType::Deployment)
        .await
        .into_iter()
        .filter(|d| {
            d.parent_job_id
                .as_deref()
                .is_some_and(|p| renewal_ids.contains(&p))
        })
        .collect();
    assert_eq!(storm_deploys.len(), N);
    let deployed_before_last_issued = storm_deploys
        .iter()
        .filter(|d| d.finished_at.is_some_and(|f| f < last_issued))
        .count();
    // With deployments claimed behind the issuance backlog none would be
    // deployed before the last renewal was issued; claimed first, all but
    // the last few are.
    assert!(
        deployed_before_last_issued >= N / 2,
        "only {deployed_before_last_issued} of {N} renewed versions were deployed before the \
         last renewal was issued"
    );
    let audit = store
        .list_audit_events(Some("certificate"), None, 100)
        .await
        .unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "certificate.renew_now" && e.details["renewing"] == N as u64),
        "the bulk renewal is audited with its count"
    );
}

/// A bulk renewal tells the certificates it sends to the sweep from those
/// whose issuance or renewal was already under way (that job's version is
/// their renewal), in its answer and its audit event.
async fn bulk_renewal_counts_what_is_already_under_way(backend: Backend) {
    let app = TestApp::with_config(backend, |_| {}).await;
    let store = &app.store;
    let issuer = certplane_testkit::ca_issuer(&app.state, "local-ca", json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let target = pem_files_target(store, dir.path()).await;
    let later = certplane_host::store::now() + chrono::Duration::days(30);
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = certificate(store, &issuer.id, &target, i).await;
        assert!(
            store
                .set_certificate_renew_at(&id, later, None)
                .await
                .unwrap()
        );
        ids.push(id);
    }
    store
        .create_job(NewJob::new(JobType::Renewal).certificate(&ids[0]))
        .await
        .unwrap();

    let r = renew(&app, &app.operator, json!({ "issuer_id": issuer.id })).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.json["renewing"], 2, "{}", r.text);
    assert_eq!(r.json["under_way"], 1, "{}", r.text);
    let audit = store
        .list_audit_events(Some("certificate"), None, 100)
        .await
        .unwrap();
    let event = audit
        .iter()
        .find(|e| e.action == "certificate.renew_now")
        .expect("audited");
    assert_eq!(event.details["renewing"], 2);
    assert_eq!(event.details["under_way"], 1);
    // Already due now: a second request counts nothing.
    let again = renew(&app, &app.operator, json!({ "issuer_id": issuer.id })).await;
    assert_eq!(again.json["renewing"], 0, "{}", again.text);
    assert_eq!(again.json["under_way"], 0, "{}", again.text);
}

/// A certificate falling due 1.5 s from now is renewed then, although the
/// sweep's own interval is a minute: the sweep arms an alarm for the
/// earliest `renew_at` ahead.
async fn the_sweep_wakes_when_a_certificate_falls_due(backend: Backend) {
    let app = TestApp::with_config(backend, |c| {
        c.scheduler.jobs_ms = 60_000;
        c.scheduler.renewal_ms = 60_000;
    })
    .await;
    let store = &app.store;
    let issuer = certplane_testkit::ca_issuer(&app.state, "local-ca", json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let target = pem_files_target(store, dir.path()).await;
    let id = certificate(store, &issuer.id, &target, 0).await;
    let due_in = Duration::from_millis(1_500);
    let due_at = certplane_host::store::now() + chrono::Duration::from_std(due_in).unwrap();
    assert!(
        store
            .set_certificate_renew_at(&id, due_at, None)
            .await
            .unwrap()
    );
    let started = Instant::now();
    // The first tick runs at once, finds nothing due and arms the alarm.
    let scheduler = engine::start(app.state.engine.clone(), CancellationToken::new());
    wait_until("the issuance job", Duration::from_secs(10), || async {
        !jobs(store, JobType::Issuance).await.is_empty()
    })
    .await;
    let waited = started.elapsed();
    scheduler.shutdown(Duration::from_secs(5)).await;
    assert!(
        waited >= due_in - Duration::from_millis(100),
        "created {waited:?} after start, before the certificate was due"
    );
    assert!(
        waited < due_in + Duration::from_secs(2),
        "created {waited:?} after start: the sweep waited for its interval"
    );
    let job = &jobs(store, JobType::Issuance).await[0];
    assert!(job.created_at >= due_at, "{} < {due_at}", job.created_at);
}

/// The sweep reads only certificates that are due *and* have no open job
/// (`open_issuance`, kept by triggers): through every way a job opens and
/// closes, the counter matches the jobs, and a backlog of due certificates
/// that all have jobs gives the sweep nothing to read.
async fn the_sweep_skips_the_backlog(backend: Backend) {
    let app = TestApp::new(backend).await;
    let store = &app.store;
    let issuer = certplane_testkit::ca_issuer(&app.state, "local-ca", json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let target = pem_files_target(store, dir.path()).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(certificate(store, &issuer.id, &target, i).await);
    }
    assert_eq!(ready(store).await, 30);
    assert_eq!(store.enqueue_due_renewals(5, 10).await.unwrap(), 10);
    assert_eq!(
        ready(store).await,
        20,
        "certificates with a job leave the index"
    );
    assert_eq!(store.enqueue_due_renewals(5, 1_000).await.unwrap(), 20);
    assert_eq!(ready(store).await, 0);
    // Nothing left to read: the backlog of 30 open jobs costs the sweep nothing.
    assert_eq!(store.enqueue_due_renewals(5, 1_000).await.unwrap(), 0);
    assert_open_matches_jobs(store, &ids).await;

    // Claim and complete one, cancel one, fail one for good, retry it.
    let claimed = store
        .claim_pending_jobs(Some(JobType::Issuance), 3)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    let (a, b, c) = (&claimed[0], &claimed[1], &claimed[2]);
    move_job(store, &a.id, JobStatus::Running, JobStatus::Completed).await;
    move_job(store, &b.id, JobStatus::Running, JobStatus::Cancelled).await;
    move_job(store, &c.id, JobStatus::Running, JobStatus::Failed).await;
    assert_open_matches_jobs(store, &ids).await;
    // Completed and cancelled ones are due again (their renew_at has come).
    assert_eq!(ready(store).await, 2);
    move_job(store, &c.id, JobStatus::Failed, JobStatus::Pending).await;
    assert_open_matches_jobs(store, &ids).await;
    // A job created outside the sweep (an operator's) counts too.
    let extra = store
        .create_job(NewJob::new(JobType::Renewal).certificate(a.certificate_id.clone().unwrap()))
        .await
        .unwrap();
    assert_open_matches_jobs(store, &ids).await;
    assert_eq!(ready(store).await, 1);
    move_job(store, &extra.id, JobStatus::Pending, JobStatus::Cancelled).await;
    assert_open_matches_jobs(store, &ids).await;
}

async fn move_job(store: &Store, id: &str, from: JobStatus, to: JobStatus) {
    assert!(
        store
            .transition_job(id, from, to, JobUpdate::default(), None)
            .await
            .unwrap(),
        "{id}: {from} → {to}"
    );
}

/// Active certificates the sweep would read now: due, no open job.
async fn ready(store: &Store) -> usize {
    let now = certplane_host::store::now() + chrono::Duration::seconds(1);
    let mut n = 0;
    for cert in store
        .list_certificates(false, None, None, 0, 10_000)
        .await
        .unwrap()
    {
        if cert.renew_at <= now && store_open_issuance(store, &cert.id).await == 0 {
            n += 1;
        }
    }
    n
}

async fn store_open_issuance(store: &Store, id: &str) -> i64 {
    store
        .get_certificate(id)
        .await
        .unwrap()
        .unwrap()
        .open_issuance
}

/// `open_issuance` of each certificate equals its open issuance/renewal jobs.
pub(crate) async fn assert_open_matches_jobs(store: &Store, ids: &[String]) {
    for id in ids {
        let open = store
            .list_jobs(&JobFilter {
                certificate_id: Some(id.clone()),
                ..JobFilter::default()
            })
            .await
            .unwrap()
            .into_iter()
            .filter(|j| {
                matches!(j.job_type, JobType::Issuance | JobType::Renewal)
                    && !matches!(j.status, JobStatus::Completed | JobStatus::Cancelled)
            })
            .count() as i64;
        assert_eq!(
            store_open_issuance(store, id).await,
            open,
            "certificate {id}"
        );
    }
}

certplane_testkit::both_backends!(
    storm_deploys_while_it_issues,
    the_sweep_wakes_when_a_certificate_falls_due,
    the_sweep_skips_the_backlog,
    bulk_renewal_counts_what_is_already_under_way,
);
