//! Several host replicas on one database, and one replica restarting:
//! wake-ups crossing replicas (PostgreSQL LISTEN/NOTIFY), the instance id
//! kept across restarts and the leases of the previous run taken back at
//! start, the secrets key checked against the database, one bootstrap
//! admin key per database, the pool size setting and the
//! `jobs.parent_job_id` index.
//!
//! Each replica is the real `serve::run_until` on a thread with its own
//! runtime (as in production, one process each), serving plain HTTP on a
//! loopback port.

use certplane_testkit::both_backends;
use std::net::SocketAddr;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use certplane_host::api::auth;
use certplane_host::config::HostConfig;
use certplane_host::secrets::SecretBox;
use certplane_host::store::*;
use certplane_testkit::app::BOOTSTRAP;
use certplane_testkit::{Backend, TestDb, count, exec, fixtures, test_options};
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// How long a replica may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    listener.local_addr().expect("address")
}

/// A replica named `name` of `db`: its own data directory under `root` and
/// port, the secrets key `key_file`, no plugins (start-up and the agent
/// API are all these tests use).
fn replica_config(db: &TestDb, root: &Path, name: &str, key_file: &Path) -> HostConfig {
    let no_plugins = root.join("no-plugins");
    std::fs::create_dir_all(&no_plugins).expect("plugin dir");
    let mut config = HostConfig {
        data_dir: root.join(name),
        database_url: Some(db.url.clone()),
        plugin_dir: no_plugins,
        listen: free_addr(),
        ..HostConfig::default()
    };
    config.tls.plain_http = true;
    config.secrets.key_file = Some(key_file.to_path_buf());
    config.agents.bootstrap_tokens = vec![BOOTSTRAP.to_owned()];
    config
}

/// A running `certplane serve`.
struct Replica {
    addr: SocketAddr,
    stop: CancellationToken,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Replica {
    /// Starts `serve::run_until` with `config` and waits until it listens;
    /// `Err` carries the start-up error of a host that stopped instead.
    async fn start(config: HostConfig) -> Result<Replica, String> {
        let addr = config.listen;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(certplane_host::serve::run_until(config, token))
                .map_err(|e| format!("{e:#}"))
        });
        let mut replica = Replica {
            addr,
            stop,
            thread: Some(thread),
        };
        let started = Instant::now();
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if replica.thread.as_ref().is_some_and(JoinHandle::is_finished) {
                return Err(match replica.join().await {
                    Ok(()) => "the host stopped during start-up without an error".into(),
                    Err(e) => e,
                });
            }
            assert!(started.elapsed() < START_TIMEOUT, "{addr} never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(replica)
    }

    /// Stops it gracefully and waits for it.
    async fn stop(mut self) -> Result<(), String> {
        self.stop.cancel();
        self.join().await
    }

    async fn join(&mut self) -> Result<(), String> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .expect("join task")
            .map_err(|_| "the host thread panicked".to_owned())?
    }

    /// `method /api/v1{path}` with a bearer token and a JSON body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(format!("/api/v1{path}"))
            .header(header::HOST, self.addr.to_string())
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let body = match body {
            Some(v) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let response = sender
            .send_request(request.body(body).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An admin API key in `store`.
async fn admin_key(store: &Store) -> String {
    let (key, hash) = auth::new_api_key();
    store
        .create_api_key(NewApiKey {
            name: "test-admin".into(),
            key_hash: hash,
            scopes: vec![ApiScope::Admin],
            expires_at: None,
        })
        .await
        .expect("api key");
    key
}

fn sql_text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

// ------------------------------------------------------------- wake-ups

/// A burst of wake-ups (one per created job, hundreds a second) is
/// published in a few statements, at most one per `PUBLISH_GAP`, and the
/// last one still reaches the other replicas soon after it was made.
#[tokio::test]
async fn a_burst_of_wake_ups_is_published_in_a_few_notifications() {
    use certplane_host::wake::{PUBLISH_GAP, Wake};
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.migrated().await;
    let mut other = store
        .listen_signals()
        .await
        .unwrap()
        .expect("PostgreSQL listens");
    let wake = std::sync::Arc::new(Wake::default());
    let stop = CancellationToken::new();
    let link = wake
        .connect_replicas(&store, stop.clone())
        .await
        .expect("PostgreSQL links replicas");
    let burst = Duration::from_millis(300);
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < burst {
        wake.wake_jobs();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let last_sent = Instant::now();
    let mut received = 0;
    let mut last_received = None;
    while let Ok(next) = tokio::time::timeout(Duration::from_millis(500), other.recv()).await {
        if let Received::Payload(p) = next.unwrap()
            && p.starts_with("jobs ")
        {
            received += 1;
            last_received = Some(Instant::now());
        }
    }
    stop.cancel();
    link.join().await;
    let most = (burst.as_millis() / PUBLISH_GAP.as_millis()) as usize + 3;
    assert!(
        (1..=most).contains(&received),
        "{sent} wake-ups published as {received} notifications (at most {most})"
    );
    let last = last_received.expect("a notification");
    assert!(
        last >= last_sent || last_sent - last < PUBLISH_GAP * 2,
        "the burst's last wake-up was published"
    );
    assert!(
        last.saturating_duration_since(last_sent) < Duration::from_millis(400),
        "published within the gap of the last wake-up, not later"
    );
}

/// An agent registered through replica B long-polls replica A; a job for
/// it is created through B's API. B's wake-up reaches A through
/// PostgreSQL, so the poll answers at once rather than when its 25 s wait
/// runs out. Then the listeners' connections are killed: they come back,
/// and the next job created on B still reaches the next poll on A at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_created_on_one_replica_wakes_a_long_poll_on_another() {
    let db = TestDb::new(Backend::Postgres).await;
    let root = tempfile::tempdir().expect("temp dir");
    let key = root.path().join("shared/secrets.key");
    let a = Replica::start(replica_config(&db, root.path(), "a", &key))
        .await
        .expect("replica a starts");
    let b = Replica::start(replica_config(&db, root.path(), "b", &key))
        .await
        .expect("replica b starts");
    let store = db.store().await;
    let admin = admin_key(&store).await;

    let (status, body) = b
        .call(
            Method::POST,
            "/agents/register",
            "",
            Some(json!({ "name": "web-1", "bootstrap_token": BOOTSTRAP })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let agent_id = body["agent_id"].as_str().expect("agent id").to_owned();
    let credential = body["credential"].as_str().expect("credential").to_owned();

    // A finished deployment of the agent's, to verify again through B.
    let target = fixtures::target(&store, &agent_id, "web").await;
    let deployment = store
        .create_job(NewJob::new(JobType::Deployment).target(target.id.clone()))
        .await
        .expect("deployment");
    assert_eq!(deployment.agent_id.as_deref(), Some(agent_id.as_str()));
    exec(
        &store,
        &format!(
            "UPDATE jobs SET status = 'completed', finished_at = updated_at WHERE id = {}",
            sql_text(&deployment.id)
        ),
    )
    .await;

    let a = std::sync::Arc::new(a);
    let poll_a_while_b_creates_a_job = |round: &str| {
        let a = a.clone();
        let b = &b;
        let admin = admin.clone();
        let credential = credential.clone();
        let deployment = deployment.id.clone();
        let round = round.to_owned();
        async move {
            let poll = tokio::spawn(async move {
                let reply = a
                    .call(Method::GET, "/agents/work?wait_secs=25", &credential, None)
                    .await;
                (Instant::now(), reply)
            });
            // Let the poll find nothing and park on A.
            tokio::time::sleep(Duration::from_millis(700)).await;
            assert!(
                !poll.is_finished(),
                "{round}: the poll parks while there is no work"
            );
            let created_at = Instant::now();
            let (status, job) = b
                .call(
                    Method::POST,
                    &format!("/jobs/{deployment}/verify"),
                    &admin,
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::ACCEPTED, "{job}");
            let job_id = job["id"].as_str().expect("job id").to_owned();
            let (answered_at, (status, reply)) =
                tokio::time::timeout(Duration::from_secs(30), poll)
                    .await
                    .expect("the poll answers")
                    .expect("poll task");
            assert_eq!(status, StatusCode::OK, "{reply}");
            let latency = answered_at.duration_since(created_at);
            let jobs = reply["jobs"].clone();
            assert_eq!(
                jobs[0]["id"].as_str(),
                Some(job_id.as_str()),
                "{round}: {jobs}"
            );
            assert!(
                latency < Duration::from_secs(3),
                "{round}: the poll on replica a answered {latency:?} after the job was \
                 created on b (the fallback would be the 25 s wait)"
            );
        }
    };
    poll_a_while_b_creates_a_job("first job").await;

    // Cut both replicas' LISTEN connections, as a database restart or a
    // network blip would.
    let killed = count(
        &store,
        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .await;
    assert_eq!(killed, 2, "one listener per replica");
    poll_a_while_b_creates_a_job("after the listeners were cut").await;
    let listening = count(
        &store,
        "SELECT COUNT(*) FROM pg_stat_activity
         WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .await;
    assert_eq!(listening, 2, "both listeners reconnected");

    store.close().await;
    b.stop().await.expect("b stops");
    std::sync::Arc::into_inner(a)
        .expect("no poll left")
        .stop()
        .await
        .expect("a stops");
}

// ------------------------------------------- instance id and own leases

/// A host restarted on its data directory keeps its generated instance id,
/// and at start takes back the job and the notification its previous run
/// left leased to that id (an hour before the leases would lapse), while
/// another instance's lease is left alone.
async fn a_restarted_host_takes_back_its_own_leases_at_once(b: Backend) {
    let db = TestDb::new(b).await;
    let root = tempfile::tempdir().expect("temp dir");
    let key = root.path().join("h/secrets.key");
    let config = replica_config(&db, root.path(), "h", &key);
    let id_file = config.data_dir.join("instance-id");
    let host = Replica::start(config.clone()).await.expect("host starts");
    let instance_id = std::fs::read_to_string(&id_file)
        .expect("the instance id is kept in the data directory")
        .trim()
        .to_owned();
    host.stop().await.expect("host stops");

    // What a run killed mid-work leaves behind: claims under its id.
    let leased = |owner: &str| StoreOptions {
        instance_id: owner.to_owned(),
        lease_duration: Duration::from_secs(3600),
        ..test_options()
    };
    let own = db.store_with(leased(&instance_id)).await;
    let other = db.store_with(leased("host-still-running")).await;
    let mut job = NewJob::new(JobType::Revocation);
    job.max_attempts = 1; // not retried, so it stays observable
    let job = own.create_job(job).await.expect("job");
    let claimed = own
        .claim_pending_jobs(Some(JobType::Revocation), 10)
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        claimed[0].lease_owner.as_deref(),
        Some(instance_id.as_str())
    );
    let foreign = other
        .create_job(NewJob::new(JobType::Revocation))
        .await
        .expect("job");
    assert_eq!(
        other
            .claim_pending_jobs(Some(JobType::Revocation), 10)
            .await
            .expect("claim")[0]
            .id,
        foreign.id
    );
    let notifier = own
        .create_notifier(NewPluginInstance::new("hook", "webhook", "0.1.0"))
        .await
        .expect("notifier");
    let notification = own
        .enqueue_notification(NewNotification {
            notifier_id: notifier.id.clone(),
            event_type: "certificate.issued".into(),
            subject: None,
            payload: json!({}),
            max_attempts: 1,
        })
        .await
        .expect("notification");
    assert_eq!(own.claim_notifications(10).await.expect("claim").len(), 1);
    own.close().await;

    let host = Replica::start(config).await.expect("host restarts");

    let store = db.store().await;
    let job = store.get_job(&job.id).await.expect("read").expect("job");
    assert_eq!(job.status, JobStatus::Failed, "{job:?}");
    let error = job.last_error.unwrap_or_default();
    assert!(
        error.contains("previous run") && error.contains(&instance_id),
        "{error}"
    );
    let foreign = store
        .get_job(&foreign.id)
        .await
        .expect("read")
        .expect("job");
    assert_eq!(
        foreign.status,
        JobStatus::Running,
        "another instance's lease"
    );
    let notification = store
        .get_notification(&notification.id)
        .await
        .expect("read")
        .expect("notification");
    assert_eq!(notification.status, NotificationStatus::Failed);
    assert!(
        notification
            .last_error
            .unwrap_or_default()
            .contains("previous run")
    );
    assert_eq!(
        std::fs::read_to_string(&id_file).expect("id file").trim(),
        instance_id,
        "the instance id survives the restart"
    );

    store.close().await;
    other.close().await;
    host.stop().await.expect("host stops");
}

/// The repository call itself: only rows leased to this store's instance,
/// whatever their expiry; jobs with attempts left are retried.
async fn reap_own_leases_takes_only_this_instances_rows(b: Backend) {
    let db = TestDb::new(b).await;
    let own = db
        .store_with(StoreOptions {
            instance_id: "host-me".into(),
            ..test_options()
        })
        .await;
    own.migrate().await.expect("migrate");
    let other = db
        .store_with(StoreOptions {
            instance_id: "host-other".into(),
            ..test_options()
        })
        .await;
    let mine = own
        .create_job(NewJob::new(JobType::Revocation))
        .await
        .expect("job");
    own.claim_pending_jobs(None, 10).await.expect("claim");
    let theirs = other
        .create_job(NewJob::new(JobType::Revocation))
        .await
        .expect("job");
    other.claim_pending_jobs(None, 10).await.expect("claim");
    let pending = own
        .create_job(NewJob::new(JobType::Revocation))
        .await
        .expect("job");

    let reclaimed = own.reap_own_leases().await.expect("reap");
    assert_eq!(
        reclaimed.jobs.iter().map(|j| &j.id).collect::<Vec<_>>(),
        vec![&mine.id]
    );
    assert!(reclaimed.notifications.is_empty());
    assert_eq!(reclaimed.jobs[0].status, JobStatus::Failed);
    // Same as the reaper: back to pending through the retry path.
    assert_eq!(own.retry_failed_jobs(10).await.expect("retry"), 1);
    let statuses = |id: &str| {
        let own = own.clone();
        let id = id.to_owned();
        async move { own.get_job(&id).await.expect("read").expect("job").status }
    };
    assert_eq!(statuses(&mine.id).await, JobStatus::Pending);
    assert_eq!(statuses(&theirs.id).await, JobStatus::Running);
    assert_eq!(statuses(&pending.id).await, JobStatus::Pending);
    assert!(
        own.reap_own_leases().await.expect("reap").jobs.is_empty(),
        "nothing left"
    );
    own.close().await;
    other.close().await;
}

// ------------------------------------------------------------ secrets key

/// A host started with a key that is not the one the database was set up
/// with refuses to start and names the key file and the setting; a missing
/// key file is not replaced by a new key; the right key starts.
async fn a_host_with_the_wrong_secrets_key_refuses_to_start(b: Backend) {
    let db = TestDb::new(b).await;
    let root = tempfile::tempdir().expect("temp dir");
    let key_a = root.path().join("keys/a.key");
    let key_b = root.path().join("keys/b.key");
    let config = replica_config(&db, root.path(), "h", &key_a);
    let host = Replica::start(config.clone())
        .await
        .expect("the first start creates key a");
    host.stop().await.expect("stops");
    assert!(key_a.exists());

    SecretBox::load_or_create(&key_b).expect("another valid key");
    let mut wrong = config.clone();
    wrong.secrets.key_file = Some(key_b.clone());
    let err = match Replica::start(wrong).await {
        Ok(_) => panic!("a host with key b started"),
        Err(e) => e,
    };
    assert!(
        err.contains(&key_b.display().to_string())
            && err.contains("secrets.key_file")
            && err.contains("refuses to start"),
        "{err}"
    );

    let missing = root.path().join("keys/missing.key");
    let mut absent = config.clone();
    absent.secrets.key_file = Some(missing.clone());
    let err = match Replica::start(absent).await {
        Ok(_) => panic!("a host without its key file started"),
        Err(e) => e,
    };
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("does not exist"),
        "{err}"
    );
    assert!(!missing.exists(), "no new key was invented");

    let host = Replica::start(config).await.expect("key a starts again");
    host.stop().await.expect("stops");
}

// --------------------------------------------------- bootstrap admin key

/// Three replicas start together on a fresh PostgreSQL database: one
/// bootstrap admin key in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_issue_one_bootstrap_admin_key() {
    let db = TestDb::new(Backend::Postgres).await;
    let root = tempfile::tempdir().expect("temp dir");
    let key = root.path().join("shared/secrets.key");
    let starts =
        ["a", "b", "c"].map(|name| Replica::start(replica_config(&db, root.path(), name, &key)));
    for replica in futures::future::join_all(starts).await {
        replica
            .expect("every replica starts")
            .stop()
            .await
            .expect("and stops cleanly");
    }
    let store = db.store().await;
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM api_keys WHERE name = 'bootstrap-admin'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM host_meta WHERE key = 'bootstrap-admin'"
        )
        .await,
        1
    );
    store.close().await;
}

/// The claim itself on both backends: of eight concurrent claimants (one
/// store each, as replicas have), exactly one creates a key.
async fn the_bootstrap_claim_has_one_winner(b: Backend) {
    let db = TestDb::new(b).await;
    db.migrated().await.close().await;
    let mut stores = Vec::new();
    for _ in 0..8 {
        stores.push(db.store().await);
    }
    let claims = stores.iter().enumerate().map(|(i, store)| {
        store.claim_bootstrap_admin_key(NewApiKey {
            name: "bootstrap-admin".into(),
            key_hash: format!("hash-{i}"),
            scopes: vec![ApiScope::Admin],
            expires_at: None,
        })
    });
    let results = futures::future::join_all(claims).await;
    let won = results
        .into_iter()
        .map(|r| r.expect("claim"))
        .filter(Option::is_some)
        .count();
    assert_eq!(won, 1);
    assert_eq!(count(&stores[0], "SELECT COUNT(*) FROM api_keys").await, 1);
    for store in stores {
        store.close().await;
    }
}

// ---------------------------------------------------- pool and schema

/// `database.max_connections` reaches the store (and the PostgreSQL pool).
async fn the_pool_size_is_configurable(b: Backend) {
    let db = TestDb::new(b).await;
    let root = tempfile::tempdir().expect("temp dir");
    let mut config = replica_config(&db, root.path(), "h", &root.path().join("k"));
    config.database.max_connections = 3;
    certplane_host::serve::prepare_data_dir(&config.data_dir).unwrap();
    let store = certplane_host::serve::open_store(&config)
        .await
        .expect("store");
    assert_eq!(store.options().max_connections, 3);
    if let PoolRef::Postgres(pool) = store.pool() {
        assert_eq!(pool.options().get_max_connections(), 3);
    }
    store.close().await;
}

/// Looking jobs up by parent uses the `jobs_by_parent` index.
async fn jobs_are_found_by_parent_through_an_index(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    let plan: String = match store.pool() {
        PoolRef::Sqlite(pool) => {
            let rows: Vec<(i64, i64, i64, String)> =
                sqlx::query_as("EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE parent_job_id = 'x'")
                    .fetch_all(pool)
                    .await
                    .expect("plan");
            rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
        }
        PoolRef::Postgres(pool) => {
            // An empty table is cheapest to scan; ask whether the index
            // can serve the lookup at all.
            let mut tx = pool.begin().await.expect("tx");
            sqlx::query("SET LOCAL enable_seqscan = off")
                .execute(&mut *tx)
                .await
                .expect("set");
            let rows: Vec<String> =
                sqlx::query_scalar("EXPLAIN SELECT id FROM jobs WHERE parent_job_id = 'x'")
                    .fetch_all(&mut *tx)
                    .await
                    .expect("plan");
            rows.join("\n")
        }
    };
    assert!(plan.contains("jobs_by_parent"), "{plan}");
    store.close().await;
}

both_backends!(
    a_restarted_host_takes_back_its_own_leases_at_once,
    reap_own_leases_takes_only_this_instances_rows,
    a_host_with_the_wrong_secrets_key_refuses_to_start,
    the_bootstrap_claim_has_one_winner,
    the_pool_size_is_configurable,
    jobs_are_found_by_parent_through_an_index,
);
