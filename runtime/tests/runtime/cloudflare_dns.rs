//! The `cloudflare-dns` connector on the real runtime, granted only the
//! fake Cloudflare API, whose TXT records are mirrored into a real
//! `pebble-challtestsrv`: what `present` publishes is checked in the fake
//! and with a DNS query, as an ACME server would see it.

use std::sync::Arc;

use certplane_runtime::dns_solver::TxtRecord;
use certplane_runtime::harness::Harness;
use certplane_runtime::{CallError, ConnectorError, InstanceConfig, Plugin, PluginInstance};
use certplane_testkit::challtestsrv::{Challtestsrv, txt_lookup};
use certplane_testkit::{CfFault, FakeCloudflare};
use serde_json::{Value, json};

use crate::common::{instance, load};

const ZONE: &str = "example.test";
const NAME: &str = "_acme-challenge.www.example.test";

struct World {
    dns: Challtestsrv,
    cf: FakeCloudflare,
    plugin: Arc<Plugin>,
    _harness: Harness,
}

async fn world() -> World {
    let dns = Challtestsrv::start();
    let cf = FakeCloudflare::start(Some(dns.mgmt())).await;
    let harness = Harness::new().unwrap();
    let plugin = load(&harness, "cloudflare-dns").await;
    World {
        dns,
        cf,
        plugin,
        _harness: harness,
    }
}

impl World {
    /// An instance with `extra` settings over `base_url`, the fake's token
    /// and a grant of the fake's address only.
    fn solver(&self, extra: Value) -> PluginInstance {
        self.solver_with_token(extra, self.cf.token())
    }

    fn solver_with_token(&self, extra: Value, token: &str) -> PluginInstance {
        let mut settings = json!({"base_url": self.cf.url()});
        if let (Some(s), Some(e)) = (settings.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        let config = InstanceConfig::new("cloudflare-1")
            .with_settings(settings)
            .unwrap()
            .with_secret("api_token", token)
            .with_hosts(&[self.cf.grant()])
            .unwrap();
        instance(&self.plugin, config)
    }

    /// The TXT values a resolver gets from the challtestsrv, sorted.
    fn resolved(&self, name: &str) -> Vec<String> {
        let mut values = txt_lookup(self.dns.dns_addr(), name).unwrap();
        values.sort();
        values
    }
}

fn txt(name: &str, value: &str) -> TxtRecord {
    TxtRecord {
        zone: ZONE.into(),
        name: name.into(),
        value: value.into(),
    }
}

fn connector_error(result: Result<(), CallError>) -> ConnectorError {
    match result {
        Err(CallError::Connector { error, .. }) => error,
        other => panic!("expected a connector error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_config_accepts_the_token_and_refuses_a_bad_one() {
    let w = world().await;
    let zone_id = w.cf.add_zone(ZONE);
    w.solver(json!({})).validate_config().await.unwrap();
    w.solver(json!({"zone_id": zone_id}))
        .validate_config()
        .await
        .unwrap();
    assert!(
        w.cf.requests()
            .iter()
            .any(|r| r.starts_with(&format!("GET /client/v4/zones/{zone_id}/dns_records"))),
        "{:?}",
        w.cf.requests()
    );

    let err = connector_error(
        w.solver_with_token(json!({}), "not-a-token")
            .validate_config()
            .await,
    );
    assert!(matches!(err, ConnectorError::Unauthorized(_)), "{err:?}");
    assert!(err.to_string().contains("api_token"), "{err}");

    // Account-owned tokens fail /user/tokens/verify but work elsewhere.
    w.cf.add_account_token("account-token-1");
    w.solver_with_token(json!({}), "account-token-1")
        .validate_config()
        .await
        .unwrap();
    w.solver_with_token(json!({"zone_id": zone_id}), "account-token-1")
        .validate_config()
        .await
        .unwrap();

    // A well-formed zone id that does not exist.
    let err = connector_error(
        w.solver(json!({"zone_id": "0".repeat(32)}))
            .validate_config()
            .await,
    );
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn present_creates_a_record_that_resolves() {
    let w = world().await;
    w.cf.add_zone(ZONE);
    assert!(w.resolved(NAME).is_empty());
    w.solver(json!({"ttl": 120}))
        .present_txt(&txt(NAME, "token-value-1"))
        .await
        .unwrap();
    let records = w.cf.records();
    assert_eq!(records.len(), 1);
    assert_eq!(
        (
            records[0].name.as_str(),
            records[0].content.as_str(),
            records[0].ttl
        ),
        (NAME, "token-value-1", 120)
    );
    assert_eq!(w.resolved(NAME), ["token-value-1"]);
    // Without `zone_id` the zone was looked up by name.
    assert!(
        w.cf.requests()
            .iter()
            .any(|r| r.starts_with("GET /client/v4/zones?name=example.test")),
        "{:?}",
        w.cf.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn present_twice_keeps_one_record() {
    let w = world().await;
    let zone_id = w.cf.add_zone(ZONE);
    let solver = w.solver(json!({"zone_id": zone_id}));
    solver.present_txt(&txt(NAME, "same")).await.unwrap();
    solver.present_txt(&txt(NAME, "same")).await.unwrap();
    // Cloudflare may list the value in quotes: still the same record.
    w.cf.set_quote_contents(true);
    solver.present_txt(&txt(NAME, "same")).await.unwrap();
    assert_eq!(w.cf.creates(), 1);
    // The later calls found the value in the listing: no second POST (the
    // fake would refuse it with 81058, which is success too).
    let posts =
        w.cf.requests()
            .iter()
            .filter(|r| r.starts_with("POST "))
            .count();
    assert_eq!(posts, 1, "{:?}", w.cf.requests());
    assert_eq!(w.cf.txt_values(NAME), ["same"]);
    assert_eq!(w.resolved(NAME), ["same"]);
    // With `zone_id` set, no zone lookup.
    assert!(
        !w.cf
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /client/v4/zones?")),
        "{:?}",
        w.cf.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_values_under_one_name_and_cleanup_removes_exactly_one() {
    let w = world().await;
    w.cf.add_zone(ZONE);
    let solver = w.solver(json!({}));
    let apex = "_acme-challenge.example.test";
    solver.present_txt(&txt(apex, "for-apex")).await.unwrap();
    solver
        .present_txt(&txt(apex, "for-wildcard"))
        .await
        .unwrap();
    solver.present_txt(&txt(NAME, "for-www")).await.unwrap();
    assert_eq!(w.resolved(apex), ["for-apex", "for-wildcard"]);

    solver.cleanup_txt(&txt(apex, "for-apex")).await.unwrap();
    assert_eq!(w.cf.deletes(), 1);
    assert_eq!(w.cf.txt_values(apex), ["for-wildcard"]);
    assert_eq!(w.resolved(apex), ["for-wildcard"]);
    assert_eq!(w.resolved(NAME), ["for-www"]);

    // Cleaning up what is not there is success and deletes nothing.
    solver.cleanup_txt(&txt(apex, "for-apex")).await.unwrap();
    solver.cleanup_txt(&txt(apex, "never-set")).await.unwrap();
    assert_eq!(w.cf.deletes(), 1);

    w.cf.set_quote_contents(true);
    solver
        .cleanup_txt(&txt(apex, "for-wildcard"))
        .await
        .unwrap();
    assert_eq!(w.cf.deletes(), 2);
    assert!(w.cf.txt_values(apex).is_empty());
    assert!(w.resolved(apex).is_empty());
    assert_eq!(w.cf.txt_values(NAME), ["for-www"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_zone_is_invalid_config() {
    let w = world().await;
    w.cf.add_zone("other.test");
    let err = connector_error(w.solver(json!({})).present_txt(&txt(NAME, "v")).await);
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("example.test"), "{err}");
    let err = connector_error(
        w.solver(json!({"zone_id": "f".repeat(32)}))
            .present_txt(&txt(NAME, "v"))
            .await,
    );
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    // A name outside the zone is refused before any request.
    let before = w.cf.requests().len();
    let err = connector_error(
        w.solver(json!({}))
            .present_txt(&txt("_acme-challenge.example.org", "v"))
            .await,
    );
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert_eq!(w.cf.requests().len(), before);
    assert_eq!(w.cf.creates(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_outages_map_to_their_classes() {
    let w = world().await;
    w.cf.add_zone(ZONE);
    let solver = w.solver(json!({}));
    w.cf.fail_next_requests(
        1,
        CfFault::RateLimited {
            retry_after_secs: Some(17),
        },
    );
    match connector_error(solver.present_txt(&txt(NAME, "v")).await) {
        ConnectorError::RateLimited(r) => {
            assert_eq!(r.retry_after_secs, Some(17));
            assert!(r.message.contains("HTTP 429"), "{}", r.message);
        }
        other => panic!("expected rate-limited, got {other:?}"),
    }
    w.cf.fail_next_requests(1, CfFault::Unavailable);
    let err = connector_error(solver.cleanup_txt(&txt(NAME, "v")).await);
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
    assert_eq!(w.cf.creates(), 0);
    // Once the faults are spent the same calls succeed.
    solver.present_txt(&txt(NAME, "v")).await.unwrap();
    assert_eq!(w.resolved(NAME), ["v"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungranted_api_host_is_denied() {
    let w = world().await;
    w.cf.add_zone(ZONE);
    let config = InstanceConfig::new("cloudflare-ungranted")
        .with_settings(json!({"base_url": w.cf.url()}))
        .unwrap()
        .with_secret("api_token", w.cf.token())
        .with_hosts(&["https://api.cloudflare.com"])
        .unwrap();
    let err = instance(&w.plugin, config)
        .present_txt(&txt(NAME, "v"))
        .await
        .unwrap_err();
    let CallError::CapabilityDenied { denials, error, .. } = &err else {
        panic!("expected a capability denial, got {err:?}");
    };
    assert!(denials[0].contains("127.0.0.1"), "{denials:?}");
    assert!(
        matches!(error, Some(ConnectorError::InvalidConfig(_))),
        "{error:?}"
    );
    assert!(w.cf.requests().is_empty(), "{:?}", w.cf.requests());
}
