//! Agent retirement (the seed's rules) on SQLite and PostgreSQL.

use certplane_host::store::*;
use certplane_testkit::both_backends;
use certplane_testkit::{Backend, TestDb, fixtures};

fn req(force: bool, reason: Option<&str>) -> RetireAgent {
    RetireAgent {
        force,
        reason: reason.map(str::to_owned),
        actor: "admin".into(),
        actor_type: ActorType::User,
        notices: Vec::new(),
        move_to_target: None,
    }
}

async fn retirement_rules(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;

    // The sentinel exists (seeded by a migration) and can never be retired.
    let host = store.get_agent(SENTINEL_AGENT_ID).await.unwrap().unwrap();
    assert!(host.sentinel);
    assert_eq!(
        store
            .retire_agent(SENTINEL_AGENT_ID, req(false, None))
            .await
            .unwrap(),
        RetireOutcome::Sentinel
    );
    assert_eq!(
        store
            .retire_agent(SENTINEL_AGENT_ID, req(true, Some("x")))
            .await
            .unwrap(),
        RetireOutcome::Sentinel
    );
    assert_eq!(
        store.retire_agent("nope", req(false, None)).await.unwrap(),
        RetireOutcome::NotFound
    );

    let issuer = fixtures::issuer(&store).await;
    let agent = fixtures::agent(&store, "edge-1").await;
    let t1 = fixtures::target(&store, &agent.id, "t1").await;
    let t2 = fixtures::target(&store, &agent.id, "t2").await;
    let cert = fixtures::certificate(&store, &issuer.id, Some(&t1.id), KeySource::Agent).await;
    let extra = fixtures::certificate(&store, &issuer.id, None, KeySource::Host).await;
    store
        .add_certificate_target(&extra.id, &t2.id)
        .await
        .unwrap();
    store
        .add_certificate_target(&extra.id, &t2.id)
        .await
        .unwrap();
    store
        .create_job(NewJob::new(JobType::Deployment).target(&t2.id))
        .await
        .unwrap();
    store
        .create_job(
            NewJob::new(JobType::Issuance)
                .certificate(&cert.id)
                .status(JobStatus::AwaitingCsr),
        )
        .await
        .unwrap();

    let deps = store.agent_dependencies(&agent.id).await.unwrap();
    assert_eq!(
        deps,
        AgentDependencies {
            active_targets: 2,
            active_certificates: 2,
            pending_jobs: 2
        }
    );
    assert_eq!(
        store
            .retire_agent(&agent.id, req(false, None))
            .await
            .unwrap(),
        RetireOutcome::Blocked(deps)
    );
    assert_eq!(
        store
            .retire_agent(&agent.id, req(true, None))
            .await
            .unwrap(),
        RetireOutcome::ReasonRequired
    );
    assert_eq!(
        store
            .retire_agent(&agent.id, req(true, Some("  ")))
            .await
            .unwrap(),
        RetireOutcome::ReasonRequired
    );
    // Nothing changed by the refused attempts.
    assert_eq!(
        store.get_agent(&agent.id).await.unwrap().unwrap().status,
        AgentStatus::Active
    );

    let out = store
        .retire_agent(&agent.id, req(true, Some("host decommissioned")))
        .await
        .unwrap();
    let RetireOutcome::Retired {
        agent: retired,
        targets_retired,
        jobs_cancelled,
        ..
    } = out
    else {
        panic!("expected Retired, got {out:?}");
    };
    assert_eq!(targets_retired, 2);
    assert_eq!(jobs_cancelled, 2);
    assert_eq!(retired.status, AgentStatus::Retired);
    assert_eq!(
        retired.retired_reason.as_deref(),
        Some("host decommissioned")
    );
    let at = retired.retired_at.unwrap();
    for t in store.list_targets_for_agent(&agent.id, true).await.unwrap() {
        assert_eq!(
            t.retired_at,
            Some(at),
            "targets retired with the same timestamp"
        );
        assert_eq!(t.retired_reason.as_deref(), Some("host decommissioned"));
    }
    assert!(
        store
            .list_targets_for_agent(&agent.id, false)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .agent_dependencies(&agent.id)
            .await
            .unwrap()
            .pending_jobs,
        0
    );

    // Replay is an idempotent no-op.
    let again = store
        .retire_agent(&agent.id, req(true, Some("other reason")))
        .await
        .unwrap();
    let RetireOutcome::AlreadyRetired { agent: same } = again else {
        panic!("expected AlreadyRetired, got {again:?}");
    };
    assert_eq!(same.retired_at, Some(at));
    assert_eq!(same.retired_reason.as_deref(), Some("host decommissioned"));

    // Heartbeats: retired → Retired (410), active → Recorded, unknown.
    assert_eq!(
        store.record_heartbeat(&agent.id).await.unwrap(),
        HeartbeatOutcome::Retired
    );
    let live = fixtures::agent(&store, "edge-2").await;
    assert_eq!(
        store.record_heartbeat(&live.id).await.unwrap(),
        HeartbeatOutcome::Recorded
    );
    assert!(
        store
            .get_agent(&live.id)
            .await
            .unwrap()
            .unwrap()
            .last_heartbeat_at
            .is_some()
    );
    assert_eq!(
        store.record_heartbeat("nope").await.unwrap(),
        HeartbeatOutcome::NotFound
    );

    // A plain retirement without dependencies works and needs no reason.
    assert!(matches!(
        store
            .retire_agent(&live.id, req(false, None))
            .await
            .unwrap(),
        RetireOutcome::Retired {
            targets_retired: 0,
            jobs_cancelled: 0,
            ..
        }
    ));
    let listed = store.list_agents(false).await.unwrap();
    assert_eq!(
        listed.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        vec![SENTINEL_AGENT_ID]
    );
    assert_eq!(store.list_agents(true).await.unwrap().len(), 3);

    // Audited.
    let events = store
        .list_audit_events(Some("agent"), Some(&agent.id), 10)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action, "agent.retire");
    assert_eq!(events[0].actor, "admin");

    // A target cannot be created for a retired agent.
    let err = store
        .create_target(NewTarget {
            agent_id: agent.id.clone(),
            instance: NewPluginInstance::new("late", "pem-file", "1.0.0"),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
}

/// Concurrent forced retirements: one Retired, the rest AlreadyRetired.
async fn concurrent_retirement(b: Backend) {
    let db = TestDb::new(b).await;
    let store = db.migrated().await;
    let agent = fixtures::agent(&store, "edge").await;
    fixtures::target(&store, &agent.id, "t").await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let s = store.clone();
        let id = agent.id.clone();
        tasks.push(tokio::spawn(async move {
            s.retire_agent(&id, req(true, Some("bye"))).await.unwrap()
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        match t.await.unwrap() {
            RetireOutcome::Retired { .. } => fresh += 1,
            RetireOutcome::AlreadyRetired { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(fresh, 1);
}

both_backends!(retirement_rules, concurrent_retirement);
