//! What the chat notifier tests (`slack`, `teams`) share: a world with the
//! connector granted only the address of a `FakeChat`, and events built
//! with the `details` of `docs/events.md`.

use std::sync::Arc;

use certplane_runtime::harness::Harness;
use certplane_runtime::notifier::Event;
use certplane_runtime::{
    CallError, ConnectorError, InstanceConfig, Level, Plugin, PluginInstance, RuntimeConfig,
};
use certplane_testkit::fake_chat::FakeChat;
use certplane_testkit::plugin_cache_dir;
use serde_json::{Value, json};

use crate::common::{instance, load};

/// 2026-12-02T08:00:00Z.
pub const OCCURRED_AT: u64 = 1_796_198_400;

/// A chat connector loaded on a runtime, and the fake it posts to.
pub struct ChatWorld {
    pub chat: FakeChat,
    pub plugin: Arc<Plugin>,
    /// The connector's name; instances are `<name>-1`.
    pub name: &'static str,
    /// Checks a message the way the service does.
    pub validate: fn(&Value) -> Result<(), String>,
    /// Panics when an error's text (second) shows the webhook's credential
    /// (first) or what else of its URL must not show.
    pub assert_no_leak: fn(&str, &str),
    pub _harness: Harness,
}

impl ChatWorld {
    /// Loads connector `name` (posting to `chat`) on a fresh runtime.
    pub async fn start(
        name: &'static str,
        chat: FakeChat,
        validate: fn(&Value) -> Result<(), String>,
        assert_no_leak: fn(&str, &str),
    ) -> ChatWorld {
        let harness = Harness::with_config(RuntimeConfig {
            cache_dir: Some(plugin_cache_dir()),
            ..RuntimeConfig::default()
        })
        .unwrap();
        let plugin = load(&harness, name).await;
        ChatWorld {
            chat,
            plugin,
            name,
            validate,
            assert_no_leak,
            _harness: harness,
        }
    }

    /// An instance with `settings`, the fake's URL as its secret and a grant
    /// of the fake's address only.
    pub fn notifier(&self, settings: Value) -> PluginInstance {
        self.notifier_to(settings, &self.chat.url())
    }

    pub fn notifier_to(&self, settings: Value, url: &str) -> PluginInstance {
        let config = InstanceConfig::new(format!("{}-1", self.name))
            .with_settings(settings)
            .unwrap()
            .with_secret("webhook_url", url)
            .with_hosts(&[self.chat.grant()])
            .unwrap();
        instance(&self.plugin, config)
    }

    /// Delivers `event` and returns the one message the fake accepted.
    pub async fn deliver(&self, settings: Value, event: &Event) -> Value {
        let before = self.chat.messages().len();
        self.notifier(settings).notify(event).await.unwrap();
        let messages = self.chat.messages();
        assert_eq!(messages.len(), before + 1, "{:?}", self.chat.requests());
        let message = messages[before].clone();
        (self.validate)(&message).unwrap();
        message
    }

    /// The connector error of a failed delivery; checks that it does not
    /// show the webhook's credential.
    pub async fn failure(&self, settings: Value, event: &Event) -> ConnectorError {
        let err = match self.notifier(settings).notify(event).await {
            Err(CallError::Connector { error, .. }) => error,
            other => panic!("expected a connector error, got {other:?}"),
        };
        (self.assert_no_leak)(self.chat.credential(), &err.to_string());
        err
    }

    /// `min_severity` and `events` filter: of certificate.issued (info),
    /// agent.retired (warn) and agent.offline (error), `warn` sends the
    /// retired one, `["agent.offline"]` the offline one; returns the two
    /// messages.
    pub async fn assert_filters(&self) -> Vec<Value> {
        let issued = event(
            "certificate.issued",
            Level::Info,
            "issued",
            json!({"certificate": certificate()}),
        );
        let retired = agent_event("agent.retired", Level::Warn, "retired", "resolved");
        let offline = agent_event("agent.offline", Level::Error, "offline", "triggered");

        let warn_and_up = self.notifier(json!({"min_severity": "warn"}));
        warn_and_up.notify(&issued).await.unwrap();
        assert!(
            self.chat.requests().is_empty(),
            "{:?}",
            self.chat.requests()
        );
        warn_and_up.notify(&retired).await.unwrap();
        assert_eq!(self.chat.messages().len(), 1);

        let offline_only = self.notifier(json!({"events": ["agent.offline"]}));
        offline_only.notify(&retired).await.unwrap();
        offline_only.notify(&issued).await.unwrap();
        assert_eq!(self.chat.requests().len(), 1);
        offline_only.notify(&offline).await.unwrap();
        let messages = self.chat.messages();
        assert_eq!(messages.len(), 2);
        messages
    }

    /// An instance granted only `granted`, not the fake's address: the
    /// delivery is denied, permanently, without a request, and neither the
    /// denial nor the connector's error shows the credential.
    pub async fn assert_ungranted_is_denied(&self, granted: &str) {
        let config = InstanceConfig::new(format!("{}-ungranted", self.name))
            .with_secret("webhook_url", self.chat.url())
            .with_hosts(&[granted])
            .unwrap();
        let err = instance(&self.plugin, config)
            .notify(&failing_event())
            .await
            .unwrap_err();
        let CallError::CapabilityDenied { denials, error, .. } = &err else {
            panic!("expected a capability denial, got {err:?}");
        };
        // The denial decides the class: permanent, whatever the connector made
        // of the refused request. The runtime redacts the whole URL (the secret)
        // from the denial; the connector's own error names the destination
        // without the credential.
        assert_eq!(err.class(), certplane_proto::ErrorClass::CapabilityDenied);
        assert!(!err.is_retryable());
        assert_eq!(denials.len(), 1, "{denials:?}");
        assert!(denials[0].contains("[redacted:webhook_url]"), "{denials:?}");
        let message = error.as_ref().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains(&format!("POST {}", self.chat.grant())),
            "{message}"
        );
        (self.assert_no_leak)(self.chat.credential(), &err.to_string());
        assert!(
            self.chat.requests().is_empty(),
            "{:?}",
            self.chat.requests()
        );
    }

    /// Stops the fake, then delivers to its address: connection refused, a
    /// transient error naming the destination but not the credential.
    pub async fn assert_refused_is_transient(self) {
        let url = self.chat.url();
        let grant = self.chat.grant();
        let credential = self.chat.credential().to_string();
        drop(self.chat);
        let config = InstanceConfig::new(format!("{}-refused", self.name))
            .with_secret("webhook_url", url)
            .with_hosts(std::slice::from_ref(&grant))
            .unwrap();
        match instance(&self.plugin, config)
            .notify(&failing_event())
            .await
        {
            Err(CallError::Connector {
                error: ConnectorError::Transient(m),
                ..
            }) => {
                assert!(m.contains(&format!("POST {grant}")), "{m}");
                (self.assert_no_leak)(&credential, &m);
            }
            other => panic!("expected transient, got {other:?}"),
        }
    }
}

// ---- events as the host builds them (docs/events.md) ----

pub fn event(kind: &str, severity: Level, summary: &str, details: Value) -> Event {
    Event {
        id: format!("ntf-{kind}"),
        kind: kind.into(),
        severity,
        summary: summary.into(),
        subject: "certificate/c0ffee01".into(),
        occurred_at: OCCURRED_AT,
        details: details.to_string(),
    }
}

pub fn certificate() -> Value {
    json!({
        "id": "c0ffee01",
        "name": "web-prod",
        "dns_names": ["www.example.com", "example.com"],
        "owner": "team-web",
        "issuer_id": "iss-1",
        "issuer": "letsencrypt",
        "serial": "04a1",
        "not_after": "2027-03-01T12:00:00Z"
    })
}

pub fn target() -> Value {
    json!({"id": "tgt-1", "name": "edge-nginx", "plugin": "nginx", "agent_id": "agt-1"})
}

pub fn agent() -> Value {
    json!({"id": "agt-1", "name": "edge-1", "last_heartbeat_at": "2026-12-02T07:40:00Z"})
}

pub fn alert(key: &str, state: &str) -> Value {
    json!({"key": key, "state": state})
}

pub fn certificate_issued() -> Event {
    event(
        "certificate.issued",
        Level::Info,
        "web-prod issued by letsencrypt",
        json!({
            "schema_version": 1,
            "certificate": certificate(),
            "job": {"id": "job-1", "type": "issuance", "attempts": 1},
            "alerts": [alert("issuance:c0ffee01", "resolved")]
        }),
    )
}

pub fn certificate_renewed() -> Event {
    event(
        "certificate.renewed",
        Level::Info,
        "web-prod renewed",
        json!({
            "schema_version": 1,
            "certificate": certificate(),
            "alerts": [alert("expiry:c0ffee01", "resolved"), alert("issuance:c0ffee01", "resolved")]
        }),
    )
}

/// `certificate.expiring` at `stage` with `hours_left`.
pub fn certificate_expiring(severity: Level, summary: &str, stage: &str, hours_left: u64) -> Event {
    event(
        "certificate.expiring",
        severity,
        summary,
        json!({
            "schema_version": 1,
            "certificate": certificate(),
            "expiring": {"stage": stage, "hours_left": hours_left},
            "alerts": [alert("expiry:c0ffee01", "triggered")]
        }),
    )
}

/// `certificate.expired` of a certificate without an owner (`null`).
pub fn certificate_expired() -> Event {
    let mut cert = certificate();
    cert["owner"] = Value::Null;
    event(
        "certificate.expired",
        Level::Error,
        "web-prod expired",
        json!({
            "schema_version": 1,
            "certificate": cert,
            "alerts": [alert("expiry:c0ffee01", "triggered")]
        }),
    )
}

/// `issuance.failed` after 5 attempts, of a certificate never issued
/// (`serial` and `not_after` are `null`).
pub fn issuance_failed(reason: &str) -> Event {
    let mut cert = certificate();
    cert["serial"] = Value::Null;
    cert["not_after"] = Value::Null;
    event(
        "issuance.failed",
        Level::Error,
        "issuing web-prod failed",
        json!({
            "schema_version": 1,
            "certificate": cert,
            "job": {"id": "job-9", "type": "issuance", "attempts": 5},
            "reason": reason,
            "alerts": [alert("issuance:c0ffee01", "triggered")]
        }),
    )
}

/// `deployment.failed` to `target()` run by `agent()` after 3 attempts.
pub fn deployment_failed(reason: &str) -> Event {
    event(
        "deployment.failed",
        Level::Error,
        "deploying web-prod to edge-nginx failed",
        json!({
            "schema_version": 1,
            "certificate": certificate(),
            "target": target(),
            "agent": agent(),
            "job": {"id": "job-3", "type": "deploy", "attempts": 3},
            "reason": reason,
            "alerts": [alert("deployment:c0ffee01:tgt-1", "triggered")]
        }),
    )
}

pub fn deployment_recovered() -> Event {
    event(
        "deployment.recovered",
        Level::Info,
        "web-prod deployed to edge-nginx again",
        json!({
            "schema_version": 1,
            "certificate": certificate(),
            "target": target(),
            "agent": agent(),
            "alerts": [alert("deployment:c0ffee01:tgt-1", "resolved")]
        }),
    )
}

/// `verification.mismatch` on a target the host runs (no agent record).
pub fn verification_mismatch() -> Event {
    let mut host_target = target();
    host_target["agent_id"] = json!("host");
    event(
        "verification.mismatch",
        Level::Error,
        "edge-nginx serves another certificate than web-prod",
        json!({
            "schema_version": 1,
            "certificate": certificate(),
            "target": host_target,
            "reason": "www.example.com:443 served SHA-256 ab12… instead of cd34…",
            "alerts": [alert("verification:c0ffee01:tgt-1", "triggered")]
        }),
    )
}

/// `verification.recovered` on `target()`, with the `agent()` record or
/// without one.
pub fn verification_recovered(with_agent: bool) -> Event {
    let mut details = json!({
        "schema_version": 1,
        "certificate": certificate(),
        "target": target(),
        "alerts": [alert("verification:c0ffee01:tgt-1", "resolved")]
    });
    if with_agent {
        details["agent"] = agent();
    }
    event(
        "verification.recovered",
        Level::Info,
        "edge-nginx serves web-prod again",
        details,
    )
}

/// An `agent.*` event about `agent()`, its alert in `state`.
pub fn agent_event(kind: &str, severity: Level, summary: &str, state: &str) -> Event {
    let mut e = event(
        kind,
        severity,
        summary,
        json!({
            "schema_version": 1,
            "agent": agent(),
            "alerts": [alert("agent:agt-1", state)]
        }),
    );
    e.subject = "agent/agt-1".into();
    e
}

pub fn job_failed() -> Event {
    event(
        "job.failed",
        Level::Error,
        "revoking web-prod failed",
        json!({
            "schema_version": 1,
            "certificate": certificate(),
            "job": {"id": "job-7", "type": "revocation", "attempts": 4},
            "reason": "letsencrypt: HTTP 503"
        }),
    )
}

/// An event the failure tests send: what it is does not matter.
pub fn failing_event() -> Event {
    event(
        "deployment.failed",
        Level::Error,
        "deploying web-prod failed",
        json!({"certificate": certificate(), "target": target(), "reason": "boom"}),
    )
}
