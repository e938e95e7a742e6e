//! Isolation between connectors inside the host: a hostile connector
//! running at its deadline holds only its own slot (good issuances keep
//! their latency), the operator's per-instance limits apply and are capped
//! by the host, cancelling stops a running call (here and from another
//! replica) and is not undone by the renewal sweep, `validate-config` is
//! bounded by the request timeout, and plugins reload without a restart.

use std::time::{Duration, Instant};

use certplane_host::engine;
use certplane_host::store::{JobFilter, JobStatus, JobType};
use certplane_testkit::app::{TestApp, ca_issuer, error_code};
use certplane_testkit::{Backend, plugin_dir_with_fixtures};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

async fn app_with_fixtures(
    fixtures: &[&str],
    edit: impl FnOnce(&mut certplane_host::config::HostConfig),
) -> (TestApp, tempfile::TempDir) {
    let plugins = plugin_dir_with_fixtures(fixtures);
    let dir = plugins.path().to_path_buf();
    let app = TestApp::with_config(Backend::Sqlite, |c| {
        c.plugin_dir = dir;
        c.scheduler.jobs_ms = 100;
        c.scheduler.renewal_ms = 100;
        c.scheduler.retry_ms = 100;
        edit(c);
    })
    .await;
    (app, plugins)
}

/// A host-run target through the API; returns its id.
async fn target(app: &TestApp, name: &str, plugin: &str, settings: Value, grants: Value) -> String {
    let reply = app
        .post(
            "/api/v1/targets",
            &app.operator,
            json!({ "name": name, "plugin": plugin, "settings": settings, "grants": grants }),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.json["id"].as_str().unwrap().to_string()
}

async fn certificate(app: &TestApp, name: &str, issuer: &str, target: &str) -> String {
    let reply = app
        .post(
            "/api/v1/certificates",
            &app.operator,
            json!({
                "name": name,
                "common_name": format!("{name}.isolation.test"),
                "issuer_id": issuer,
                "target_ids": [target],
            }),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.json["id"].as_str().unwrap().to_string()
}

async fn jobs_of(app: &TestApp, cert: &str, job_type: JobType) -> Vec<certplane_host::store::Job> {
    app.store
        .list_jobs(&JobFilter {
            job_type: Some(job_type),
            certificate_id: Some(cert.to_string()),
            ..JobFilter::default()
        })
        .await
        .unwrap()
}

/// Waits (up to 20 s) for a job of `job_type` of `cert` that `pred` accepts.
async fn job_where(
    app: &TestApp,
    cert: &str,
    job_type: JobType,
    what: &str,
    pred: impl Fn(&certplane_host::store::Job) -> bool,
) -> certplane_host::store::Job {
    let by = Instant::now() + Duration::from_secs(20);
    loop {
        let jobs = jobs_of(app, cert, job_type).await;
        if let Some(job) = jobs.into_iter().find(|j| pred(j)) {
            return job;
        }
        assert!(Instant::now() < by, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates a certificate and waits until its deployment completed; returns
/// how long that took.
async fn issue_and_deploy(app: &TestApp, name: &str, issuer: &str, target: &str) -> Duration {
    let started = Instant::now();
    let cert = certificate(app, name, issuer, target).await;
    let deadline = started + Duration::from_secs(30);
    loop {
        let jobs = jobs_of(app, &cert, JobType::Deployment).await;
        if jobs.iter().any(|j| j.status == JobStatus::Completed) {
            return started.elapsed();
        }
        assert!(Instant::now() < deadline, "{name} not deployed: {jobs:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A webhook notifier whose receiver accepts connections and never
/// answers (every delivery runs to the connector's deadline); counts the
/// connections.
async fn hung_notifier(app: &TestApp) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let (url, accepted) = crate::notifications::hung_receiver().await;
    crate::notifications::create_webhook_to(&app.state, "hung", &url, &url).await;
    accepted
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_at_its_deadline_holds_only_its_own_slot() {
    let (app, _plugins) = app_with_fixtures(&["hostile"], |_| {}).await;
    let issuer = ca_issuer(&app.state, "local-ca", json!({})).await.id;
    let out = tempfile::tempdir().unwrap();
    let good = target(
        &app,
        "files",
        "pem-files",
        json!({ "directory": "/certs" }),
        json!({ "directories": [{ "path": out.path(), "guest_path": "/certs", "writable": true }] }),
    )
    .await;
    // The operator gives the hostile connector 3 s per call and one call
    // at a time; its manifest asks for 1 s, the operator's value wins.
    let hostile = target(
        &app,
        "spinner",
        "hostile",
        json!({ "mode": "loop" }),
        json!({ "limits": { "deadline_secs": 3, "concurrency": 1 } }),
    )
    .await;
    let token = CancellationToken::new();
    let scheduler = engine::start(app.state.engine.clone(), token.clone());

    let mut unloaded = Vec::new();
    for i in 0..5 {
        unloaded.push(issue_and_deploy(&app, &format!("calm{i}"), &issuer, &good).await);
    }
    let unloaded = median(unloaded);

    // And one that floods its log on every call.
    let spammer = target(
        &app,
        "spammer",
        "hostile",
        json!({ "mode": "log-spam", "lines": 1_000_000 }),
        json!({ "limits": { "deadline_secs": 3, "concurrency": 1 } }),
    )
    .await;
    // And a notifier whose receiver accepts and never answers: every
    // certificate.issued notification runs to its deadline.
    let hung = hung_notifier(&app).await;
    let mut spinners = Vec::new();
    for i in 0..4 {
        spinners.push(certificate(&app, &format!("spin{i}"), &issuer, &hostile).await);
    }
    for i in 0..2 {
        certificate(&app, &format!("spam{i}"), &issuer, &spammer).await;
    }
    // Wait until a hostile deployment is running.
    job_where(
        &app,
        &spinners[0],
        JobType::Deployment,
        "no hostile deployment ran",
        |j| j.status == JobStatus::Running,
    )
    .await;
    let mut loaded = Vec::new();
    for i in 0..5 {
        loaded.push(issue_and_deploy(&app, &format!("busy{i}"), &issuer, &good).await);
    }
    let loaded = median(loaded);
    assert!(
        hung.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the hung notifier was never called"
    );
    eprintln!(
        "good issuance median: unloaded {unloaded:?}, beside a spinning and a log-flooding target and a hung notifier {loaded:?}"
    );
    // Within 2x of the unloaded median (a floor of 100 ms keeps a very fast
    // unloaded run from making the bound meaningless on a busy machine).
    assert!(
        loaded <= unloaded.max(Duration::from_millis(100)) * 2,
        "good issuances slowed from {unloaded:?} to {loaded:?} beside a spinning connector"
    );

    // The spinning calls were stopped at the operator's deadline.
    let failed = job_where(
        &app,
        &spinners[0],
        JobType::Deployment,
        "no deadline error",
        |j| j.last_error.is_some(),
    )
    .await;
    let err = failed.last_error.unwrap_or_default();
    assert!(err.contains("deadline of 3s"), "{err}");
    token.cancel();
    scheduler.shutdown(Duration::from_secs(1)).await;
}

/// Jobs queued behind a connector instance's one call slot for longer than
/// a lease keep their lease by renewing it: without renewals the reaper
/// takes back the waiting deployments at their lease's end, each loses an
/// attempt and waits out a retry (30 s here), and the next holder repeats
/// what the first had begun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_waiting_for_a_call_slot_keep_their_lease() {
    let (app, _plugins) = app_with_fixtures(&["hostile"], |c| {
        c.jobs.lease_secs = 2;
        c.limits.max_deadline_secs = 1;
        c.limits.default_deadline_secs = 1;
        c.scheduler.reaper_ms = 100;
    })
    .await;
    let issuer = ca_issuer(&app.state, "local-ca", json!({})).await.id;
    // One call at a time, each taking 600 ms: the sixth deployment waits
    // about 3 s for the slot, the last ones longer than the 2 s lease.
    let slow = target(
        &app,
        "one-at-a-time",
        "hostile",
        json!({ "mode": "hold-memory", "mib": 1, "millis": 600 }),
        json!({ "limits": { "deadline_secs": 1, "concurrency": 1 } }),
    )
    .await;
    let token = CancellationToken::new();
    let scheduler = engine::start(app.state.engine.clone(), token.clone());
    let mut certs = Vec::new();
    for i in 0..6 {
        certs.push(certificate(&app, &format!("queued{i}"), &issuer, &slow).await);
    }
    for cert in &certs {
        let done = job_where(
            &app,
            cert,
            JobType::Deployment,
            "not deployed in 20 s",
            |j| j.status == JobStatus::Completed,
        )
        .await;
        assert_eq!(
            done.attempts, 1,
            "{cert}: the deployment lost its lease while it waited: {done:?}"
        );
        assert_eq!(jobs_of(&app, cert, JobType::Deployment).await.len(), 1);
    }
    token.cancel();
    scheduler.shutdown(Duration::from_secs(1)).await;
}

/// A slow target with a backlog of deployments holds no more job slots
/// than it can use: its deployments are claimed first, and without a bound
/// every job slot would hold one waiting for the target's single call
/// slot, so another certificate's issuance and deployment would wait for
/// most of the slow backlog to drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_target_leaves_job_slots_for_other_work() {
    let (app, _plugins) = app_with_fixtures(&["hostile"], |c| {
        c.jobs.max_concurrent = 4;
        c.scheduler.jobs_ms = 50;
    })
    .await;
    let issuer = ca_issuer(&app.state, "local-ca", json!({})).await.id;
    let slow = target(
        &app,
        "slow",
        "hostile",
        json!({ "mode": "hold-memory", "mib": 1, "millis": 600 }),
        json!({ "limits": { "concurrency": 1 } }),
    )
    .await;
    let quick = target(
        &app,
        "quick",
        "hostile",
        json!({ "mode": "hold-memory", "mib": 1, "millis": 0 }),
        json!({}),
    )
    .await;
    let token = CancellationToken::new();
    let scheduler = engine::start(app.state.engine.clone(), token.clone());
    let mut backlog = Vec::new();
    for i in 0..10 {
        backlog.push(certificate(&app, &format!("slow{i}"), &issuer, &slow).await);
    }
    for cert in &backlog {
        job_where(&app, cert, JobType::Deployment, "never queued", |_| true).await;
    }
    let cert = certificate(&app, "quick", &issuer, &quick).await;
    job_where(
        &app,
        &cert,
        JobType::Deployment,
        "not deployed in 20 s",
        |j| j.status == JobStatus::Completed,
    )
    .await;
    let mut slow_done = 0;
    for cert in &backlog {
        let jobs = jobs_of(&app, cert, JobType::Deployment).await;
        slow_done += jobs
            .iter()
            .filter(|j| j.status == JobStatus::Completed)
            .count();
    }
    // Without the bound at least seven are (every job slot holds one of
    // them until the backlog is nearly gone); with it, one or two, and
    // no more than the slow target finishes in 2.4 s on a loaded machine.
    assert!(
        slow_done <= 4,
        "the quick certificate waited behind the slow target: {slow_done} of its 10 deployments were done first"
    );
    token.cancel();
    scheduler.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_limits_are_checked_against_the_host_ceiling() {
    let (app, _plugins) = app_with_fixtures(&["hostile"], |c| {
        c.limits.max_deadline_secs = 30;
        c.limits.max_concurrency = 2;
        c.limits.memory_budget_mib = 512;
    })
    .await;
    for (limits, field) in [
        (json!({ "deadline_secs": 31 }), "limits.deadline_secs"),
        (json!({ "memory_mib": 0 }), "limits.memory_mib"),
        (json!({ "concurrency": 3 }), "limits.concurrency"),
        (json!({ "cpu": 1 }), "cpu"),
    ] {
        let reply = app
            .post(
                "/api/v1/targets",
                &app.operator,
                json!({ "name": "t", "plugin": "hostile", "grants": { "limits": limits } }),
            )
            .await;
        assert_eq!(reply.status, 422, "{limits}: {}", reply.text);
        assert!(reply.text.contains(field), "{field}: {}", reply.text);
    }
    let id = target(
        &app,
        "t",
        "hostile",
        json!({}),
        json!({ "limits": { "deadline_secs": 30, "memory_mib": 16, "concurrency": 2 } }),
    )
    .await;
    // The memory budget of concurrent calls is the host's too.
    let budget = app.state.plugins.runtime().memory_budget();
    assert_eq!(budget.total_bytes, 512 << 20);
    let view = app.get(&format!("/api/v1/targets/{id}"), &app.reader).await;
    assert_eq!(
        view.json["grants"]["limits"],
        json!({ "deadline_secs": 30, "memory_mib": 16, "concurrency": 2 })
    );
}

/// A manifest's `concurrency` is a request like its other limits: it sets
/// the call slots of an instance whose operator set none (pem-files asks
/// for 8, the hostile fixture for nothing and gets the host's default),
/// cut to the host's ceiling; an operator's own value wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_asks_for_call_slots_within_the_ceiling() {
    use certplane_runtime::PluginKind;
    for (ceiling, limits, pem_files, hostile) in [
        (16, json!({}), 8, 4),
        (2, json!({}), 2, 2),
        (16, json!({ "concurrency": 3 }), 3, 3),
    ] {
        let (app, _plugins) = app_with_fixtures(&["hostile"], |c| {
            c.limits.max_concurrency = ceiling;
            c.limits.default_concurrency = c.limits.default_concurrency.min(ceiling);
        })
        .await;
        let listed = app.get("/api/v1/plugins", &app.reader).await;
        let asked = listed.json["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "pem-files")
            .map(|p| p["limits"]["concurrency"].clone());
        assert_eq!(asked, Some(json!(8)), "{}", listed.text);
        let certs = tempfile::tempdir().unwrap();
        for (plugin, settings, dirs, want) in [
            (
                "pem-files",
                json!({ "directory": "/certs" }),
                json!([{ "path": certs.path().display().to_string(), "guest_path": "/certs", "writable": true }]),
                pem_files,
            ),
            ("hostile", json!({}), json!([]), hostile),
        ] {
            let grants = json!({ "directories": dirs, "limits": limits });
            let id = target(&app, plugin, plugin, settings.clone(), grants).await;
            let owner = format!("target/{id}");
            let stored = app.get(&format!("/api/v1/targets/{id}"), &app.reader).await;
            engine::connectors::build_instance(
                &app.state.engine,
                PluginKind::Target,
                &owner,
                plugin,
                &settings,
                None,
                &stored.json["grants"],
            )
            .unwrap();
            assert_eq!(
                app.state.runner.instance_concurrency(&owner),
                Some(want),
                "{plugin} under a ceiling of {ceiling} with {limits}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_stops_a_running_call_here_and_from_another_replica() {
    let (app, _plugins) = app_with_fixtures(&["hostile"], |_| {}).await;
    let issuer = ca_issuer(&app.state, "local-ca", json!({})).await.id;
    let hostile = target(
        &app,
        "spinner",
        "hostile",
        json!({ "mode": "loop" }),
        json!({ "limits": { "deadline_secs": 50 } }),
    )
    .await;
    let token = CancellationToken::new();
    let scheduler = engine::start(app.state.engine.clone(), token.clone());

    for via_api in [true, false] {
        let cert = certificate(&app, &format!("c{via_api}"), &issuer, &hostile).await;
        let job = job_where(
            &app,
            &cert,
            JobType::Deployment,
            "the deployment never ran",
            |j| j.status == JobStatus::Running,
        )
        .await;
        // Let the call get going.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(app.state.runner.running(), 1);
        let cancelled = Instant::now();
        if via_api {
            let reply = app
                .post(
                    &format!("/api/v1/jobs/{}/cancel", job.id),
                    &app.operator,
                    json!({}),
                )
                .await;
            assert_eq!(reply.status, 200, "{}", reply.text);
        } else {
            // What another replica's API does: only the database changes.
            assert!(app.store.cancel_job(&job.id, "elsewhere").await.unwrap());
        }
        let bound = if via_api {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(3)
        };
        while app.state.runner.running() > 0 {
            assert!(
                cancelled.elapsed() < bound,
                "the running call was not stopped within {bound:?} (via_api: {via_api})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!(
            "running call stopped {:?} after its cancellation (via_api: {via_api})",
            cancelled.elapsed()
        );
        let job = app.store.get_job(&job.id).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Cancelled);
    }
    token.cancel();
    scheduler.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_issuance_is_not_created_again_by_the_sweep() {
    let (app, _plugins) = app_with_fixtures(&["slow-ca"], |_| {}).await;
    // An asynchronous CA that stays pending for a long while.
    let issuer = ca_issuer(
        &app.state,
        "slow-ca",
        json!({ "pending_polls": 1000, "retry_after_secs": 60 }),
    )
    .await
    .id;
    let token = CancellationToken::new();
    let scheduler = engine::start(app.state.engine.clone(), token.clone());
    let reply = app
        .post(
            "/api/v1/certificates",
            &app.operator,
            json!({ "name": "c", "common_name": "c.isolation.test", "issuer_id": issuer }),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let cert = reply.json["id"].as_str().unwrap().to_string();
    let job = job_where(
        &app,
        &cert,
        JobType::Issuance,
        "the issuance never placed its order",
        |j| j.status == JobStatus::Polling,
    )
    .await;
    let reply = app
        .post(
            &format!("/api/v1/jobs/{}/cancel", job.id),
            &app.operator,
            json!({}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    // Several sweeps (every 100 ms) later, no new issuance exists.
    for _ in 0..10 {
        app.state.wake.renewals.notify_one();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let jobs = jobs_of(&app, &cert, JobType::Issuance).await;
    assert_eq!(
        jobs.len(),
        1,
        "the sweep created the cancelled issuance again: {jobs:?}"
    );
    let cert = app.store.get_certificate(&cert).await.unwrap().unwrap();
    assert!(
        cert.renew_at > chrono::Utc::now() + chrono::Duration::hours(23),
        "renewal is held for a day: {}",
        cert.renew_at
    );
    // The operator's renew runs it at once.
    let reply = app
        .post(
            &format!("/api/v1/certificates/{}/renew", cert.id),
            &app.operator,
            json!({}),
        )
        .await;
    assert!(reply.status.is_success(), "{}", reply.text);
    let by = Instant::now() + Duration::from_secs(10);
    while jobs_of(&app, &cert.id, JobType::Issuance).await.len() < 2 {
        assert!(Instant::now() < by, "renew did not start a new issuance");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    token.cancel();
    scheduler.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_config_is_bounded_by_the_request_timeout() {
    let (app, _plugins) = app_with_fixtures(&["hostile"], |c| {
        c.api.request_timeout_secs = 2;
    })
    .await;
    let started = Instant::now();
    let reply = app
        .post(
            "/api/v1/targets",
            &app.operator,
            json!({
                "name": "spinner",
                "plugin": "hostile",
                "settings": { "mode": "validate-loop" },
                "grants": { "limits": { "deadline_secs": 50 } },
            }),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(error_code(&reply), "timeout");
    assert!(took < Duration::from_secs(4), "answered after {took:?}");
    let list = app.get("/api/v1/targets", &app.reader).await;
    assert!(
        !list.text.contains("spinner"),
        "a timed-out create wrote something: {}",
        list.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_reload_without_a_restart() {
    let (app, plugins) = app_with_fixtures(&[], |_| {}).await;
    let reply = app
        .post("/api/v1/plugins/reload", &app.operator, json!({}))
        .await;
    assert_eq!(reply.status, 403, "only admins reload: {}", reply.text);
    let reply = app
        .post(
            "/api/v1/targets",
            &app.operator,
            json!({ "name": "t", "plugin": "hostile" }),
        )
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text);

    let fixtures = plugin_dir_with_fixtures(&["hostile"]);
    for ext in ["toml", "wasm"] {
        std::fs::copy(
            fixtures.path().join(format!("hostile.{ext}")),
            plugins.path().join(format!("hostile.{ext}")),
        )
        .unwrap();
    }
    let reply = app
        .post("/api/v1/plugins/reload", &app.admin, json!({}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["added"], json!(["hostile"]));
    assert!(reply.json["unchanged"].as_array().unwrap().len() >= 3);
    target(&app, "t", "hostile", json!({}), json!({})).await;

    // A broken new version keeps the loaded one and says why.
    std::fs::write(plugins.path().join("hostile.wasm"), b"not wasm").unwrap();
    let reply = app
        .post("/api/v1/plugins/reload", &app.admin, json!({}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["failures"].as_array().unwrap().len(), 1);
    assert_eq!(reply.json["removed"], json!([]));
    let list = app.get("/api/v1/plugins", &app.reader).await;
    assert!(list.text.contains("\"hostile\""), "{}", list.text);

    for ext in ["toml", "wasm"] {
        std::fs::remove_file(plugins.path().join(format!("hostile.{ext}"))).unwrap();
    }
    let reply = app
        .post("/api/v1/plugins/reload", &app.admin, json!({}))
        .await;
    assert_eq!(reply.json["removed"], json!(["hostile"]), "{}", reply.text);
    let audit = app
        .get("/api/v1/audit?subject_type=plugins", &app.reader)
        .await;
    assert!(audit.text.contains("plugins.reload"), "{}", audit.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_secret_never_reaches_the_api() {
    let (app, _plugins) = app_with_fixtures(&["hostile"], |_| {}).await;
    let issuer = ca_issuer(&app.state, "local-ca", json!({})).await.id;
    let secret = "correct-horse-battery-staple";
    let reply = app
        .post(
            "/api/v1/targets",
            &app.operator,
            json!({
                "name": "leaker",
                "plugin": "hostile",
                "settings": { "mode": "leak-secret" },
                "secrets": { "token": secret },
            }),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let leaker = reply.json["id"].as_str().unwrap().to_string();
    let token = CancellationToken::new();
    let scheduler = engine::start(app.state.engine.clone(), token.clone());
    let cert = certificate(&app, "leak", &issuer, &leaker).await;
    let job = job_where(
        &app,
        &cert,
        JobType::Deployment,
        "the leaking deployment never failed",
        |j| j.last_error.is_some(),
    )
    .await;
    let error = job.last_error.clone().unwrap();
    assert!(!error.contains(secret), "stored: {error}");
    assert!(error.contains("[redacted:token]"), "stored: {error}");
    for path in [
        format!("/api/v1/jobs/{}", job.id),
        "/api/v1/jobs?per_page=50".to_string(),
    ] {
        let reply = app.get(&path, &app.reader).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert!(!reply.text.contains(secret), "{path}: {}", reply.text);
    }
    let audit = app.get("/api/v1/audit?per_page=100", &app.reader).await;
    assert!(!audit.text.contains(secret), "audit: {}", audit.text);
    token.cancel();
    scheduler.shutdown(Duration::from_secs(1)).await;
}
