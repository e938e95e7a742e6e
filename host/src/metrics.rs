//! Prometheus metrics, served at `GET /metrics` (OpenMetrics text, no auth).
//!
//! Two kinds:
//!
//! * computed at scrape time from the database, so every replica reports
//!   the same numbers: `certplane_jobs{status,type}` (every combination,
//!   zeros included) and `certplane_certificates_expiry{bucket}` (active
//!   certificates by time left: `expired`, `lt_7d`, `lt_30d`, `lt_90d`,
//!   `ge_90d`);
//! * recorded in process by the code that does the work, through
//!   [`Metrics`]: claim latency, plugin call latency and plugin call errors.

use std::collections::HashMap;
use std::time::Duration;

use certplane_runtime::CallError;
use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::{JobStatus, JobType, Store, StoreResult, now, on_read};

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of the claim latency histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClaimLabels {
    op: String,
}

/// Labels of the plugin call latency histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginCallLabels {
    plugin: String,
    call: String,
}

/// Labels of the plugin call error counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginErrorLabels {
    plugin: String,
    call: String,
    class: String,
}

/// Labels of the job gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    status: String,
    r#type: String,
}

/// Labels of the certificate expiry gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExpiryLabels {
    bucket: String,
}

/// Labels of the store transaction counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn claim_histogram() -> Histogram {
    // 0.5 ms … ~4 s.
    Histogram::new(exponential_buckets(0.000_5, 2.0, 14))
}

fn plugin_histogram() -> Histogram {
    // 10 µs (a warm local call) … ~48 s (a slow CA).
    Histogram::new(exponential_buckets(0.000_01, 3.0, 15))
}

/// In-process metrics that the host's services record into; shared through
/// `AppState::metrics`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    claim_latency: HistogramFamily<ClaimLabels>,
    plugin_call_latency: HistogramFamily<PluginCallLabels>,
    plugin_call_errors: Family<PluginErrorLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics, registered under their `certplane_` names.
    pub fn new() -> Self {
        let claim_latency: HistogramFamily<ClaimLabels> =
            Family::new_with_constructor(claim_histogram as fn() -> Histogram);
        let plugin_call_latency: HistogramFamily<PluginCallLabels> =
            Family::new_with_constructor(plugin_histogram as fn() -> Histogram);
        let plugin_call_errors = Family::<PluginErrorLabels, Counter>::default();
        let mut registry = Registry::default();
        registry.register(
            "certplane_claim_duration_seconds",
            "Duration of job/notification claim operations, by operation",
            claim_latency.clone(),
        );
        registry.register(
            "certplane_plugin_call_duration_seconds",
            "Duration of connector plugin calls, by plugin and call",
            plugin_call_latency.clone(),
        );
        registry.register(
            "certplane_plugin_call_errors",
            "Failed connector plugin calls, by plugin, call and error class",
            plugin_call_errors.clone(),
        );
        Metrics {
            registry,
            claim_latency,
            plugin_call_latency,
            plugin_call_errors,
        }
    }

    /// Records one plugin call: its duration, and its error class when it
    /// failed (see [`error_class`]).
    pub fn observe_plugin_call(
        &self,
        plugin: &str,
        call: &str,
        duration: Duration,
        result: Result<(), &CallError>,
    ) {
        self.plugin_call_latency
            .get_or_create(&PluginCallLabels {
                plugin: plugin.to_string(),
                call: call.to_string(),
            })
            .observe(duration.as_secs_f64());
        if let Err(err) = result {
            self.plugin_call_errors
                .get_or_create(&PluginErrorLabels {
                    plugin: plugin.to_string(),
                    call: call.to_string(),
                    class: error_class(err).to_string(),
                })
                .inc();
        }
    }

    /// Records the duration of one claim operation (`op` names the store
    /// call, e.g. `claim_pending_jobs`, `claim_pending_for_agent`).
    pub fn observe_claim(&self, op: &str, duration: Duration) {
        self.claim_latency
            .get_or_create(&ClaimLabels { op: op.to_string() })
            .observe(duration.as_secs_f64());
    }

    /// The complete exposition: gauges computed from `store` now, then the
    /// recorded metrics, then `# EOF`.
    pub async fn render(&self, store: &Store) -> Result<String, RenderError> {
        let scrape = scrape_registry(store).await?;
        let mut out = String::new();
        encode_registry(&mut out, &scrape)?;
        encode_registry(&mut out, &self.registry)?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}

/// Why the exposition could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Counting jobs or certificates failed.
    #[error("cannot read metrics from the database: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The text encoder failed.
    #[error("cannot encode metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// Stable, low-cardinality class of a plugin call error (the `class`
/// label): the wire name of [`CallError::class`].
pub fn error_class(err: &CallError) -> &'static str {
    err.class().as_str()
}

/// Expiry buckets, in order: label and upper bound (days from now).
const EXPIRY_BUCKETS: [(&str, i64); 4] =
    [("expired", 0), ("lt_7d", 7), ("lt_30d", 30), ("lt_90d", 90)];
/// Label of certificates with 90 days or more left.
const EXPIRY_LAST: &str = "ge_90d";

/// A registry holding the gauges computed from the database for one scrape.
async fn scrape_registry(store: &Store) -> StoreResult<Registry> {
    let counts: HashMap<(JobStatus, JobType), i64> = job_counts(store)
        .await?
        .into_iter()
        .map(|(status, job_type, n)| ((status, job_type), n))
        .collect();
    let jobs = Family::<JobLabels, Gauge>::default();
    for &status in JobStatus::ALL {
        for &job_type in JobType::ALL {
            let n = counts.get(&(status, job_type)).copied().unwrap_or(0);
            jobs.get_or_create(&JobLabels {
                status: status.as_str().to_string(),
                r#type: job_type.as_str().to_string(),
            })
            .set(n);
        }
    }
    let counts: HashMap<String, i64> = expiry_counts(store, now()).await?.into_iter().collect();
    let expiry = Family::<ExpiryLabels, Gauge>::default();
    let labels = EXPIRY_BUCKETS
        .iter()
        .map(|(label, _)| *label)
        .chain([EXPIRY_LAST]);
    for label in labels {
        let n = counts.get(label).copied().unwrap_or(0);
        expiry
            .get_or_create(&ExpiryLabels {
                bucket: label.to_string(),
            })
            .set(n);
    }
    let (reads, writes) = store.operation_counts();
    let transactions = Family::<KindLabels, Counter>::default();
    transactions
        .get_or_create(&KindLabels {
            kind: "read".into(),
        })
        .inc_by(reads);
    transactions
        .get_or_create(&KindLabels {
            kind: "write".into(),
        })
        .inc_by(writes);
    let mut registry = Registry::default();
    if let Some((groups, writes)) = store.grouped_commits() {
        let group_commits = Counter::<u64>::default();
        group_commits.inc_by(groups);
        let grouped = Counter::<u64>::default();
        grouped.inc_by(writes);
        registry.register(
            "certplane_store_group_commits",
            "Transactions the group committer committed",
            group_commits,
        );
        registry.register(
            "certplane_store_grouped_writes",
            "Job outcomes (and on SQLite certificate creates and job claims) the group committer wrote; divided by the group commits, the writes per transaction",
            grouped,
        );
    }
    registry.register(
        "certplane_store_transactions",
        "Database transactions (single statements or explicit transactions) this process ran, by kind",
        transactions,
    );
    registry.register(
        "certplane_jobs",
        "Jobs in the database, by status and type",
        jobs,
    );
    registry.register(
        "certplane_certificates_expiry",
        "Active issued certificates by time left before expiry (expired, <7d, <30d, <90d, >=90d)",
        expiry,
    );
    Ok(registry)
}

/// Jobs per (status, type); combinations without jobs are absent.
// TODO(store): belongs in store/repo/jobs.rs next to `job_status_counts`.
async fn job_counts(store: &Store) -> StoreResult<Vec<(JobStatus, JobType, i64)>> {
    Ok(on_read!(store, |pool| {
        sqlx::query_as("SELECT status, job_type, COUNT(*) FROM jobs GROUP BY status, job_type")
            .fetch_all(pool)
            .await?
    }))
}

/// Active certificates with a current version, per expiry bucket at `at`.
// TODO(store): belongs in store/repo/certificates.rs.
async fn expiry_counts(store: &Store, at: DateTime<Utc>) -> StoreResult<Vec<(String, i64)>> {
    let bound = |days: i64| crate::store::codec::ts(at + chrono::Duration::days(days));
    let mut sql = String::from("SELECT CASE");
    for (i, (label, _)) in EXPIRY_BUCKETS.iter().enumerate() {
        sql.push_str(&format!(" WHEN not_after < ${} THEN '{label}'", i + 1));
    }
    sql.push_str(&format!(
        " ELSE '{EXPIRY_LAST}' END AS bucket, COUNT(*) FROM certificates
         WHERE status = 'active' AND not_after IS NOT NULL GROUP BY 1"
    ));
    Ok(on_read!(store, |pool| {
        let mut query = sqlx::query_as(&sql);
        for (_, days) in EXPIRY_BUCKETS {
            query = query.bind(bound(days));
        }
        query.fetch_all(pool).await?
    }))
}
