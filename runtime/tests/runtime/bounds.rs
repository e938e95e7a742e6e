//! Isolation between connectors: every guest output is bounded (log lines
//! per call, error messages, order ids and state, descriptive lists), the
//! instance's secrets are redacted from errors and logs, and a global
//! memory budget keeps concurrent calls from exhausting the host.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing_subscriber::layer::{Context, SubscriberExt};

use crate::common::{dummy_bundle, instance, load};
use certplane_runtime::bounds::{MAX_ERROR_MESSAGE, MAX_LIST_ENTRIES, MAX_ORDER_ID};
use certplane_runtime::harness::Harness;
use certplane_runtime::issuer::{CertificateRequest, IssueResult};
use certplane_runtime::{
    CallError, ConfigError, ConnectorError, InstanceConfig, Limits, PluginInstance, RuntimeConfig,
};

const MIB: u64 = 1024 * 1024;

fn hostile(mode: &str, settings: serde_json::Value) -> InstanceConfig {
    let mut all = serde_json::json!({ "mode": mode });
    if let (Some(all), serde_json::Value::Object(more)) = (all.as_object_mut(), settings) {
        all.extend(more);
    }
    InstanceConfig::new(format!("hostile-{mode}"))
        .with_settings(all)
        .unwrap()
}

fn limits(deadline_secs: u64, memory_mib: u64) -> Limits {
    Limits {
        deadline: Duration::from_secs(deadline_secs),
        memory_bytes: memory_mib * MIB,
    }
}

/// Every event that reaches the subscriber: target, level and all fields
/// rendered as text.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<(String, tracing::Level, String)>>>);

impl Events {
    fn all(&self) -> Vec<(String, tracing::Level, String)> {
        self.0.lock().unwrap().clone()
    }
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={value:?} ", field.name()));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push_str(&format!("{}={value} ", field.name()));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let meta = event.metadata();
        self.0
            .lock()
            .unwrap()
            .push((meta.target().to_string(), *meta.level(), fields.0));
    }
}

/// Captures every event (all levels) on this thread while `f` runs; the
/// tests use current-thread runtimes so plugin calls log on this thread.
fn capture() -> (Events, tracing::subscriber::DefaultGuard) {
    let events = Events::default();
    let subscriber = tracing_subscriber::registry().with(events.clone());
    let guard = tracing::subscriber::set_default(subscriber);
    (events, guard)
}

async fn deploy(i: &PluginInstance) -> Result<Vec<String>, CallError> {
    i.deploy(&dummy_bundle(), "key", "{}")
        .await
        .map(|r| r.changed)
}

#[tokio::test]
async fn log_spam_is_bounded_per_call_and_reported_once() {
    let (events, _guard) = capture();
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "hostile").await;
    let i = instance(
        &plugin,
        hostile("log-spam", serde_json::json!({"lines": 1_000_000})).with_limits(limits(120, 32)),
    );
    let started = Instant::now();
    let changed = deploy(&i).await.unwrap();
    let took = started.elapsed();
    assert_eq!(changed, ["logged 1000000 lines"]);

    let plugin_lines: Vec<_> = events
        .all()
        .into_iter()
        .filter(|(target, _, _)| target == "certplane::plugin")
        .collect();
    let spam = plugin_lines
        .iter()
        .filter(|(_, _, f)| f.contains("spam line"))
        .count();
    let bytes: usize = plugin_lines.iter().map(|(_, _, f)| f.len()).sum();
    let markers: Vec<_> = plugin_lines
        .iter()
        .filter(|(_, _, f)| f.contains("plugin log:"))
        .collect();
    eprintln!(
        "1,000,000 guest lines in {took:?}: {} host events ({spam} spam lines, {bytes} bytes of fields); marker {markers:?}",
        plugin_lines.len()
    );
    let defaults = RuntimeConfig::default();
    assert_eq!(spam, defaults.max_log_lines as usize, "lines kept");
    assert!(
        bytes < 2 * defaults.max_log_bytes as usize,
        "{bytes} bytes reached the logs"
    );
    assert_eq!(markers.len(), 1, "one dropped marker: {markers:?}");
    let (_, level, fields) = markers[0];
    assert_eq!(*level, tracing::Level::WARN);
    assert!(
        fields.contains("plugin log: 999000 lines (") && fields.contains("bytes) dropped"),
        "{fields}"
    );
    assert!(
        fields.contains("plugin=hostile") && fields.contains("instance=hostile-log-spam"),
        "{fields}"
    );
}

#[tokio::test]
async fn a_well_behaved_call_logs_everything_and_no_marker() {
    let (events, _guard) = capture();
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "hostile").await;
    let i = instance(
        &plugin,
        hostile("log-spam", serde_json::json!({"lines": 50})),
    );
    deploy(&i).await.unwrap();
    let lines = events.all();
    let spam = lines
        .iter()
        .filter(|(_, _, f)| f.contains("spam line"))
        .count();
    assert_eq!(spam, 50);
    assert!(!lines.iter().any(|(_, _, f)| f.contains("dropped")));
}

#[tokio::test]
async fn a_20_mib_error_arrives_cut_to_the_bound() {
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "hostile").await;
    let i = instance(
        &plugin,
        hostile("big-error", serde_json::json!({"bytes": 20 << 20})).with_limits(limits(30, 128)),
    );
    let err = deploy(&i).await.unwrap_err();
    let CallError::Connector {
        error: ConnectorError::Transient(message),
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    let cut = (20 << 20) - MAX_ERROR_MESSAGE;
    assert!(
        message.len() <= MAX_ERROR_MESSAGE + 32,
        "{} bytes",
        message.len()
    );
    assert!(message.starts_with("EEEE"));
    assert!(
        message.ends_with(&format!("… ({cut} bytes cut)")),
        "{}",
        &message[MAX_ERROR_MESSAGE - 8..]
    );
    assert!(err.to_string().len() < MAX_ERROR_MESSAGE + 128);
    assert!(err.is_retryable(), "still transient");
}

#[tokio::test]
async fn the_secret_never_leaves_in_errors_or_logs() {
    const SECRET: &str = "tok-9f8e7d6c5b4a";
    let (events, _guard) = capture();
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "hostile").await;
    let i = instance(
        &plugin,
        hostile("leak-secret", serde_json::json!({})).with_secret("token", SECRET),
    );
    let err = deploy(&i).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains(SECRET), "{text}");
    assert!(
        matches!(&err, CallError::Connector { error: ConnectorError::Rejected(m), .. }
            if m == "token is [redacted:token]"),
        "{err:?}"
    );
    let logged: Vec<_> = events.all();
    let plugin_lines: Vec<_> = logged
        .iter()
        .filter(|(t, _, _)| t == "certplane::plugin")
        .collect();
    assert_eq!(plugin_lines.len(), 2, "{plugin_lines:?}");
    for (_, _, fields) in &logged {
        assert!(!fields.contains(SECRET), "{fields}");
        assert!(!fields.contains("tok-9f8e"), "a partial secret: {fields}");
    }
    assert!(
        plugin_lines
            .iter()
            .all(|(_, _, f)| f.contains("[redacted:token]")),
        "{plugin_lines:?}"
    );

    // Trap output (stderr) is redacted too: a panicking guest that printed
    // the secret before dying.
    let i = instance(
        &plugin,
        hostile("panic", serde_json::json!({})).with_secret("token", "deliberate panic"),
    );
    let err = deploy(&i).await.unwrap_err();
    assert!(matches!(err, CallError::Trap { .. }), "{err:?}");
    assert!(!err.to_string().contains("deliberate panic"), "{err}");
    assert!(err.to_string().contains("[redacted:token]"), "{err}");
}

#[tokio::test]
async fn short_secrets_are_not_redacted() {
    // A 3-byte value would shred ordinary text and reveal itself by the
    // pattern of markers; it is left alone.
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "hostile").await;
    let i = instance(
        &plugin,
        hostile("leak-secret", serde_json::json!({})).with_secret("token", "abc"),
    );
    let err = deploy(&i).await.unwrap_err();
    assert!(err.to_string().contains("token is abc"), "{err}");
}

#[tokio::test]
async fn long_descriptive_lists_are_cut() {
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "hostile").await;
    let i = instance(
        &plugin,
        hostile(
            "many-changes",
            serde_json::json!({"entries": 10_000, "bytes": 5000}),
        )
        .with_limits(limits(30, 128)),
    );
    let changed = deploy(&i).await.unwrap();
    assert_eq!(changed.len(), MAX_LIST_ENTRIES);
    assert!(changed[0].len() < 1100, "{}", changed[0].len());
    assert!(changed[0].ends_with("bytes cut)"));
    assert_eq!(
        changed[MAX_LIST_ENTRIES - 1],
        format!("… ({} more entries cut)", 10_000 - (MAX_LIST_ENTRIES - 1))
    );
}

fn request() -> CertificateRequest {
    CertificateRequest {
        csr_pem: "unused".into(),
        common_name: "www.example.com".into(),
        dns_names: vec!["www.example.com".into()],
        ip_addresses: vec![],
        validity_days: None,
        certificate_id: "web-1".into(),
    }
}

async fn slow_ca(harness: &Harness, settings: serde_json::Value) -> PluginInstance {
    let plugin = harness
        .load(certplane_testkit::test_plugin_manifest("slow-ca"))
        .await
        .expect("slow-ca loads");
    instance(
        &plugin,
        InstanceConfig::new("slow-ca")
            .with_settings(settings)
            .unwrap(),
    )
}

#[tokio::test]
async fn oversized_order_ids_and_states_are_refused() {
    let harness = Harness::new().unwrap();
    for (field, bytes) in [("order-id", 1 << 20), ("order-state", 1 << 20)] {
        let i = slow_ca(
            &harness,
            serde_json::json!({"pending_polls": 2, "oversize": field, "oversize_bytes": bytes}),
        )
        .await;
        let err = i.submit(&request()).await.unwrap_err();
        let CallError::Contract { message, .. } = &err else {
            panic!("{field}: {err:?}");
        };
        assert!(message.contains(&bytes.to_string()), "{message}");
        assert_eq!(err.class(), certplane_proto::ErrorClass::Rejected);
        assert!(!err.is_retryable());
        assert!(err.to_string().len() < 512, "{err}");
    }
    // At the bounds, orders pass.
    for (field, bytes) in [("order-id", MAX_ORDER_ID), ("order-state", 64 * 1024)] {
        let i = slow_ca(
            &harness,
            serde_json::json!({"pending_polls": 2, "oversize": field, "oversize_bytes": bytes}),
        )
        .await;
        let IssueResult::Pending(order) = i.submit(&request()).await.unwrap() else {
            panic!("pending expected");
        };
        let len = if field == "order-id" {
            order.id.len()
        } else {
            order.state.len()
        };
        assert_eq!(len, bytes, "{field}");
        // `poll` is bounded the same way; within bounds it goes on.
        assert!(matches!(
            i.poll(&order).await.unwrap(),
            IssueResult::Pending(_)
        ));
    }
}

#[tokio::test]
async fn an_instance_larger_than_the_budget_is_refused() {
    let harness = Harness::with_config(RuntimeConfig {
        memory_budget_bytes: 128 * MIB,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let plugin = load(&harness, "hostile").await;
    let err = PluginInstance::new(
        plugin.clone(),
        hostile("ok", serde_json::json!({})).with_limits(limits(5, 129)),
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::Limit(_)), "{err}");
    assert!(err.to_string().contains("memory budget"), "{err}");
    let fits = instance(
        &plugin,
        hostile("ok", serde_json::json!({})).with_limits(limits(5, 128)),
    );
    assert_eq!(deploy(&fits).await.unwrap(), ["ok"]);
    assert_eq!(harness.runtime().memory_budget().in_use_bytes, 0);
}

/// `VmRSS` and `VmHWM` of this process, in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_stay_within_the_memory_budget() {
    const BUDGET: u64 = 256 * MIB;
    const CAP_MIB: u64 = 64;
    const HOLD_MIB: u64 = 60;
    const CALLS: usize = 32;
    let harness = Harness::with_config(RuntimeConfig {
        memory_budget_bytes: BUDGET,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let runtime = harness.runtime().clone();
    let plugin = load(&harness, "hostile").await;
    let i = instance(
        &plugin,
        hostile(
            "hold-memory",
            serde_json::json!({"mib": HOLD_MIB, "millis": 150}),
        )
        .with_limits(limits(30, CAP_MIB)),
    );
    // Warm up (first-call costs), then reset the high-water mark so it
    // measures the burst alone ("5" resets VmHWM to the current RSS).
    assert_eq!(deploy(&i).await.unwrap(), [format!("held {HOLD_MIB} MiB")]);
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let (rss_before, hwm_before) = rss();

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak, runtime) = (stop.clone(), peak.clone(), runtime.clone());
        std::thread::spawn(move || {
            let mut samples = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let usage = runtime.memory_budget();
                assert_eq!(usage.total_bytes, BUDGET);
                peak.fetch_max(usage.in_use_bytes, Ordering::Relaxed);
                samples += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
            samples
        })
    };
    let started = Instant::now();
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let i = i.clone();
            tokio::spawn(async move { deploy(&i).await })
        })
        .collect();
    for call in calls {
        assert_eq!(
            call.await.unwrap().unwrap(),
            [format!("held {HOLD_MIB} MiB")]
        );
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    let (rss_after, hwm_after) = rss();
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "{CALLS} calls x {CAP_MIB} MiB cap ({HOLD_MIB} MiB touched) under a {} MiB budget in {took:?}: \
         budget peak {} MiB ({samples} samples); RSS before {} MiB, after {} MiB; \
         VmHWM before {} MiB, after {} MiB (reset: {reset}); peak over the start {} MiB",
        BUDGET / MIB,
        peak / MIB,
        rss_before / MIB,
        rss_after / MIB,
        hwm_before / MIB,
        hwm_after / MIB,
        hwm_after.saturating_sub(rss_before) / MIB,
    );
    assert!(peak <= BUDGET, "budget peak {peak}");
    assert_eq!(peak, BUDGET, "the burst should fill the budget");
    assert_eq!(runtime.memory_budget().in_use_bytes, 0, "all released");
    // Four calls at a time touch 4 x 60 MiB; without the budget 32 would
    // touch ~1.9 GiB at once. Allow 64 MiB for everything else the burst
    // allocates (stores, tasks, output pipes).
    assert!(
        hwm_after.saturating_sub(rss_before) <= BUDGET + 64 * MIB,
        "peak RSS grew by {} MiB",
        hwm_after.saturating_sub(rss_before) / MIB
    );
    // Calls waited for the budget rather than failing: 8 waves of 150 ms.
    assert!(took >= Duration::from_millis(8 * 150), "{took:?}");
}
