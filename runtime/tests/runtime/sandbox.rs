//! The sandbox against hostile components: every misbehaviour fails only its
//! own call, with the right typed error, and the next call succeeds.

use std::time::{Duration, Instant};

use crate::common::{dummy_bundle, instance, load};
use certplane_runtime::harness::{Harness, TestResponse, TestServer};
use certplane_runtime::{CallError, ConnectorError, InstanceConfig, Limits, PluginInstance};

fn hostile(mode: &str) -> InstanceConfig {
    InstanceConfig::new(format!("hostile-{mode}"))
        .with_settings(serde_json::json!({ "mode": mode }))
        .unwrap()
}

async fn deploy(i: &PluginInstance) -> Result<Vec<String>, CallError> {
    i.deploy(&dummy_bundle(), "key", "{}")
        .await
        .map(|r| r.changed)
}

/// After any failure, a well-behaved call on the same plugin still works.
async fn next_call_succeeds(harness: &Harness) {
    let plugin = load(harness, "hostile").await;
    let ok = instance(&plugin, hostile("ok"));
    assert_eq!(deploy(&ok).await.unwrap(), vec!["ok".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_hits_the_deadline() {
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "hostile").await;
    let limits = Limits {
        deadline: Duration::from_millis(300),
        ..Limits::default()
    };
    let i = instance(&plugin, hostile("loop").with_limits(limits));
    let started = Instant::now();
    let err = deploy(&i).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, CallError::Deadline { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(
        took >= Duration::from_millis(300),
        "stopped early: {took:?}"
    );
    assert!(took < Duration::from_secs(2), "stopped late: {took:?}");
    next_call_succeeds(&harness).await;
}

#[test]
fn busy_guest_does_not_starve_other_tasks() {
    // One worker thread: if the looping guest never yielded, the ticker task
    // below could not run until the deadline.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ticks = rt.block_on(async {
        let harness = Harness::new().unwrap();
        let plugin = load(&harness, "hostile").await;
        let limits = Limits {
            deadline: Duration::from_millis(500),
            ..Limits::default()
        };
        let i = instance(&plugin, hostile("loop").with_limits(limits));
        let ticker = tokio::spawn(async {
            let mut n = 0u32;
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(400) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                n += 1;
            }
            n
        });
        let err = deploy(&i).await.unwrap_err();
        assert!(matches!(err, CallError::Deadline { .. }), "{err:?}");
        ticker.await.unwrap()
    });
    assert!(
        ticks >= 5,
        "other task ran only {ticks} times beside a busy guest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_hits_the_cap() {
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "hostile").await;
    let limits = Limits {
        memory_bytes: 16 * 1024 * 1024,
        ..Limits::default()
    };
    let i = instance(&plugin, hostile("memory").with_limits(limits));
    match deploy(&i).await {
        // The fixture copes with allocation failure and reports how far it got.
        Err(CallError::Connector {
            error: ConnectorError::Transient(msg),
            ..
        }) => {
            let mib: usize = msg
                .rsplit("after ")
                .next()
                .and_then(|s| s.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(usize::MAX);
            assert!(mib < 16, "grew to {mib} MiB past a 16 MiB cap: {msg}");
        }
        Err(CallError::MemoryLimit { limit_bytes, .. }) => {
            assert_eq!(limit_bytes, 16 * 1024 * 1024)
        }
        other => panic!("expected the memory cap to stop the bomb, got {other:?}"),
    }
    next_call_succeeds(&harness).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_trap_and_stack_overflow_are_traps() {
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "hostile").await;
    for mode in ["panic", "trap", "stack-overflow"] {
        let err = deploy(&instance(&plugin, hostile(mode))).await.unwrap_err();
        let CallError::Trap { message, .. } = &err else {
            panic!("{mode}: expected a trap, got {err:?}");
        };
        // Rust keeps large frames on a shadow stack in linear memory, so a
        // runaway recursion ends as an out-of-bounds access or a wasm
        // call-stack exhaustion, depending on frame sizes: a trap either way.
        assert!(!message.is_empty(), "{mode}");
        if mode == "panic" {
            assert!(
                message.contains("panicked"),
                "panic message not surfaced: {message}"
            );
        }
        next_call_succeeds(&harness).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_to_ungranted_host_is_denied_not_trapped() {
    let server = TestServer::start(|_| TestResponse::text(200, "should not be reached"))
        .await
        .unwrap();
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "hostile").await;
    let config = InstanceConfig::new("hostile-net")
        .with_settings(serde_json::json!({"mode": "forbidden-host", "url": format!("{}/secret", server.url())}))
        .unwrap()
        .with_hosts(&["https://api.example.com"])
        .unwrap();
    let err = deploy(&instance(&plugin, config)).await.unwrap_err();
    let CallError::CapabilityDenied { denials, error, .. } = &err else {
        panic!("expected a capability denial, got {err:?}");
    };
    assert!(denials[0].contains("/secret"), "{denials:?}");
    // The plugin saw an HTTP error (HttpRequestDenied), not a trap.
    assert!(
        matches!(error, Some(ConnectorError::Transient(m)) if m.to_lowercase().contains("denied")),
        "{error:?}"
    );
    assert!(!err.is_retryable());
    assert!(
        server.requests().is_empty(),
        "the refused request reached the server"
    );
    next_call_succeeds(&harness).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granted_loopback_address_is_reachable() {
    let server = TestServer::start(|req| TestResponse::text(200, format!("hi {}", req.path)))
        .await
        .unwrap();
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "hostile").await;
    let config = InstanceConfig::new("hostile-net")
        .with_settings(
            serde_json::json!({"mode": "forbidden-host", "url": format!("{}/ok", server.url())}),
        )
        .unwrap()
        .with_hosts(&[server.grant()])
        .unwrap();
    let changed = deploy(&instance(&plugin, config)).await.unwrap();
    assert!(changed[0].contains("HTTP 200"), "{changed:?}");
    assert_eq!(server.requests().len(), 1);
    assert_eq!(server.requests()[0].path, "/ok");
}

/// A name from /etc/hosts (other than `localhost`) that maps to loopback.
fn loopback_alias() -> String {
    let hosts = std::fs::read_to_string("/etc/hosts").expect("/etc/hosts readable");
    hosts
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let ip: std::net::IpAddr = f.next()?.parse().ok()?;
            ip.is_loopback()
                .then(|| f.find(|n| *n != "localhost" && !n.starts_with("ip6-")))?
        })
        .map(str::to_string)
        .next()
        .expect("/etc/hosts maps no name besides localhost to loopback; this test needs one")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granted_name_resolving_to_loopback_is_refused() {
    let server = TestServer::start(|_| TestResponse::text(200, "reached"))
        .await
        .unwrap();
    let name = loopback_alias();
    let url = format!("http://{name}:{}/x", server.addr().port());
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "hostile").await;
    let config = InstanceConfig::new("hostile-rebind")
        .with_settings(serde_json::json!({"mode": "forbidden-host", "url": url}))
        .unwrap()
        .with_hosts(&[format!("http://{name}:{}", server.addr().port())])
        .unwrap();
    let err = deploy(&instance(&plugin, config)).await.unwrap_err();
    let CallError::CapabilityDenied { denials, .. } = &err else {
        panic!("expected a denial for {name} -> loopback, got {err:?}");
    };
    assert!(denials[0].contains("non-public"), "{denials:?}");
    assert!(server.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_outside_preopens_fail() {
    let granted = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, "top secret").unwrap();
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "hostile").await;
    for path in [
        secret.to_string_lossy().to_string(),
        "/etc/passwd".to_string(),
    ] {
        let config = InstanceConfig::new("hostile-fs")
            .with_settings(serde_json::json!({"mode": "path-escape", "path": path}))
            .unwrap()
            .with_dir(granted.path(), "/certs", false);
        let err = deploy(&instance(&plugin, config)).await.unwrap_err();
        assert!(
            matches!(
                &err,
                CallError::Connector {
                    error: ConnectorError::Rejected(_),
                    ..
                }
            ),
            "{path}: expected every read to fail, got {err:?}"
        );
    }
    next_call_succeeds(&harness).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_grants_beyond_the_manifest_are_refused() {
    // The hostile fixture requests read-only filesystem access at most.
    let dir = tempfile::tempdir().unwrap();
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "hostile").await;
    let config = hostile("ok").with_dir(dir.path(), "/certs", true);
    let err = PluginInstance::new(plugin, config).unwrap_err();
    assert!(err.to_string().contains("filesystem"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_share_no_state_and_see_only_their_config() {
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "hostile").await;
    let a = instance(
        &plugin,
        InstanceConfig::new("a")
            .with_settings(serde_json::json!({"mode": "echo-config", "n": 1}))
            .unwrap()
            .with_secret("token", "alpha"),
    );
    let b = instance(&plugin, hostile("echo-config"));
    let (ra, rb) = tokio::join!(deploy(&a), deploy(&b));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    // The guest read its secret; echoed into `changed` (audit text) it is
    // redacted on the way out, so the marker proves it saw "alpha".
    assert_eq!(ra[1], "[redacted:token]");
    assert_eq!(rb[1], "<none>");
    let settings: serde_json::Value = serde_json::from_str(&ra[0]).unwrap();
    assert_eq!(settings["n"], 1);
    // Debug output of the config never shows secrets.
    let shown = format!(
        "{:?}",
        InstanceConfig::new("x").with_secret("token", "alpha")
    );
    assert!(!shown.contains("alpha"), "{shown}");
}
