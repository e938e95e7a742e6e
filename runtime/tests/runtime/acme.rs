//! The `acme` issuer through the real runtime against a real ACME CA
//! (Pebble, validation on, 5 % of nonces refused as Pebble does by
//! default), and against the test kit's fake for renewal information.
//!
//! The test plays the host's part for challenges: it carries each call's
//! store writes into the next call, publishes what the connector presented
//! into `pebble-challtestsrv` (http-01 tokens, dns-01 TXT records), reports
//! them `ready` (or `failed`) through the next call's context, withdraws
//! what the connector withdraws, and polls honouring `retry-after`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use certplane_runtime::challenges::{Challenge, ChallengeKind, ChallengeState, ChallengeStatus};
use certplane_runtime::context::{CallContext, CallEffects, PreviousVersion};
use certplane_runtime::harness::Harness;
use certplane_runtime::issuer::{
    CertificateRequest, IssueResult, IssuedCertificate, Order, RevocationReason, RevocationRequest,
};
use certplane_runtime::{CallError, ConnectorError, InstanceConfig, InstanceTls, PluginInstance};
use certplane_testkit::pebble::{EAB_HMAC_KEY, EAB_KID};
use certplane_testkit::{FakeAri, Pebble, PebbleOptions, RenewalWindow};
use serde_json::{Value, json};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::common;

/// How long one issuance may take, polls included.
const ISSUANCE_DEADLINE: Duration = Duration::from_secs(90);

/// What the simulated host does with presented challenges.
#[derive(Debug, Clone, PartialEq)]
enum Publish {
    /// Publish them as presented and report them ready.
    Faithfully,
    /// Publish a wrong value but report them ready.
    WrongValue,
    /// Report them failed with this message.
    Fail(String),
}

/// The host's side of an ACME instance: its store, challenge routes and
/// challenge states, applied between calls as the real host would.
struct AcmeHost<'a> {
    instance: PluginInstance,
    pebble: Option<&'a Pebble>,
    store: BTreeMap<String, String>,
    routes: BTreeMap<String, Vec<ChallengeKind>>,
    challenges: BTreeMap<String, ChallengeStatus>,
    presented: Vec<Challenge>,
    withdrawn: Vec<String>,
    /// Every store key a call wrote or deleted, in order.
    written: Vec<String>,
    publish: Publish,
    predecessor: Option<PreviousVersion>,
    options: Value,
}

impl<'a> AcmeHost<'a> {
    fn new(instance: PluginInstance, pebble: Option<&'a Pebble>) -> Self {
        AcmeHost {
            instance,
            pebble,
            store: BTreeMap::new(),
            routes: BTreeMap::new(),
            challenges: BTreeMap::new(),
            presented: Vec::new(),
            withdrawn: Vec::new(),
            written: Vec::new(),
            publish: Publish::Faithfully,
            predecessor: None,
            options: json!({}),
        }
    }

    fn route(&mut self, name: &str, kinds: &[ChallengeKind]) {
        self.routes
            .insert(name.trim_start_matches("*.").to_string(), kinds.to_vec());
    }

    fn context(&self) -> CallContext {
        CallContext {
            predecessor: self.predecessor.clone(),
            options: self.options.to_string(),
            store: self.store.clone(),
            routes: self.routes.clone(),
            challenges: self.challenges.clone(),
            ..CallContext::default()
        }
    }

    /// What the host does after every call, whatever its outcome.
    fn apply(&mut self, effects: CallEffects) {
        for (key, value) in effects.store_writes {
            self.written.push(key.clone());
            match value {
                Some(v) => self.store.insert(key, v),
                None => self.store.remove(&key),
            };
        }
        for c in effects.presented {
            let state = match &self.publish {
                Publish::Fail(message) => ChallengeStatus {
                    id: c.id.clone(),
                    state: ChallengeState::Failed,
                    message: Some(message.clone()),
                },
                publish => {
                    let value = if *publish == Publish::WrongValue {
                        format!("{}-wrong", c.value)
                    } else {
                        c.value.clone()
                    };
                    let pebble = self.pebble.expect("challenges are published into Pebble");
                    match c.kind {
                        ChallengeKind::Http01 => pebble.add_http01(&c.name, &value),
                        ChallengeKind::Dns01 => pebble.set_txt(&c.name, &value),
                    }
                    ChallengeStatus {
                        id: c.id.clone(),
                        state: ChallengeState::Ready,
                        message: None,
                    }
                }
            };
            self.challenges.insert(c.id.clone(), state);
            self.presented.push(c);
        }
        for id in effects.withdrawn {
            if let (Some(c), Some(pebble)) =
                (self.presented.iter().find(|c| c.id == id), self.pebble)
            {
                match c.kind {
                    ChallengeKind::Http01 => pebble.del_http01(&c.name),
                    ChallengeKind::Dns01 => pebble.clear_txt(&c.name),
                }
            }
            self.withdrawn.push(id);
        }
    }

    async fn submit(&mut self, request: &CertificateRequest) -> Result<IssueResult, CallError> {
        let (result, effects) = self.instance.submit_with(&self.context(), request).await;
        self.apply(effects);
        result
    }

    /// A submit whose outcome is not transient: retried a few times as the
    /// host would, since Pebble refuses nonces at random.
    async fn submit_settled(
        &mut self,
        request: &CertificateRequest,
    ) -> Result<IssueResult, CallError> {
        for _ in 0..4 {
            match self.submit(request).await {
                Err(e) if is_transient(&e) => continue,
                other => return other,
            }
        }
        self.submit(request).await
    }

    async fn poll(&mut self, order: &Order) -> Result<IssueResult, CallError> {
        let (result, effects) = self.instance.poll_with(&self.context(), order).await;
        self.apply(effects);
        result
    }

    /// Submits, then polls until issued, honouring `retry-after`. A
    /// transient error is retried as the host would (a submit again, a
    /// poll again), a few times: Pebble refuses 5 % of nonces and a second
    /// refusal in a row is transient by design.
    async fn issue(&mut self, names: &[&str]) -> Result<IssuedCertificate, CallError> {
        self.drive(&request(names), None).await
    }

    /// [`AcmeHost::issue`] from `order` on (from a submit when `None`).
    async fn drive(
        &mut self,
        request: &CertificateRequest,
        mut order: Option<Order>,
    ) -> Result<IssuedCertificate, CallError> {
        let deadline = Instant::now() + ISSUANCE_DEADLINE;
        let mut transient_left = 4;
        loop {
            assert!(Instant::now() < deadline, "issuance took too long");
            let step = match &order {
                None => self.submit(request).await,
                Some(o) => self.poll(o).await,
            };
            match step {
                Ok(IssueResult::Issued(cert)) => return Ok(cert),
                Ok(IssueResult::Pending(next)) => {
                    let wait = next.retry_after_secs.unwrap_or(1).clamp(1, 5);
                    tokio::time::sleep(Duration::from_secs(u64::from(wait))).await;
                    order = Some(next);
                }
                Err(e) if is_transient(&e) && transient_left > 0 => {
                    transient_left -= 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn is_transient(e: &CallError) -> bool {
    matches!(
        e,
        CallError::Connector {
            error: ConnectorError::Transient(_),
            ..
        }
    )
}

/// The connector error of a call, or a panic naming what came instead.
fn connector_error<T: std::fmt::Debug>(result: Result<T, CallError>) -> ConnectorError {
    match result {
        Err(CallError::Connector { error, .. }) => error,
        other => panic!("expected a connector error, got {other:?}"),
    }
}

/// A CSR for `names` whose subject CN is the first name (an ACME CA
/// refuses a CN that is not among the identifiers).
fn request(names: &[&str]) -> CertificateRequest {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    let csr = params.serialize_request(&key).unwrap();
    CertificateRequest {
        csr_pem: csr.pem().unwrap(),
        common_name: names[0].to_string(),
        dns_names: names.iter().map(|n| n.to_string()).collect(),
        ip_addresses: vec![],
        validity_days: None,
        certificate_id: "web-1".into(),
    }
}

/// A name no earlier run (or other test) has authorized at this Pebble.
fn fresh_name(label: &str) -> String {
    let n: u64 = rand::random();
    format!("{label}-{n:016x}.certplane.test")
}

fn settings(directory_url: &str) -> Value {
    json!({
        "directory_url": directory_url,
        "terms_of_service_agreed": true,
        "contact": ["mailto:ops@certplane.test"],
    })
}

async fn acme_instance(harness: &Harness, config: InstanceConfig) -> PluginInstance {
    let plugin = common::load(harness, "acme").await;
    common::instance(&plugin, config)
}

/// An instance granted only Pebble's ACME address, trusting only Pebble's
/// TLS root on top of the runtime's.
fn pebble_config(pebble: &Pebble, settings: Value) -> InstanceConfig {
    InstanceConfig::new("acme-test")
        .with_settings(settings)
        .unwrap()
        .with_hosts(&[pebble.grant()])
        .unwrap()
        .with_tls(InstanceTls {
            extra_roots_pem: vec![pebble.tls_root_pem().to_string()],
            ..InstanceTls::default()
        })
}

fn der_of(pem_text: &str) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).expect("a PEM block");
    pem.contents
}

/// Unpadded base64url, written here so the expected certID does not share
/// code with the connector.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// The leaf certifies exactly `names` and chains through the returned
/// intermediate to Pebble's issuing root.
fn assert_chains_to_pebble(cert: &IssuedCertificate, pebble: &Pebble, names: &[&str]) {
    let leaf_der = der_of(&cert.certificate_pem);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let mut sans: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .expect("a SAN extension")
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    sans.sort();
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(sans, want);
    assert_eq!(
        cert.chain_pem.len(),
        1,
        "Pebble's chain is one intermediate"
    );
    let inter_der = der_of(&cert.chain_pem[0]);
    let (_, inter) = X509Certificate::from_der(&inter_der).unwrap();
    let root_der = der_of(&pebble.issuing_root_pem());
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    leaf.verify_signature(Some(inter.public_key()))
        .expect("the leaf is signed by the intermediate");
    inter
        .verify_signature(Some(root.public_key()))
        .expect("the intermediate is signed by Pebble's root");
    let url = cert
        .ca_certificate_id
        .as_deref()
        .expect("the certificate URL");
    assert!(url.starts_with(&pebble.grant()), "{url}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issuance_from_pebble_chains_to_its_root() {
    let pebble = Pebble::start(PebbleOptions::default());
    let harness = Harness::new().unwrap();
    let instance = acme_instance(
        &harness,
        pebble_config(&pebble, settings(&pebble.directory_url())),
    )
    .await;
    assert_eq!(instance.describe().await.unwrap().name, "acme");
    instance.validate_config().await.unwrap();

    let mut host = AcmeHost::new(instance, Some(&pebble));
    let (a, b) = (fresh_name("www"), fresh_name("api"));
    host.route(&a, &[ChallengeKind::Http01]);
    host.route(&b, &[ChallengeKind::Http01, ChallengeKind::Dns01]);
    let cert = host.issue(&[&a, &b]).await.unwrap();
    assert_chains_to_pebble(&cert, &pebble, &[&a, &b]);

    // One http-01 challenge per name (the host's first route wins), served
    // as the RFC says, and withdrawn once the CA decided.
    assert_eq!(host.presented.len(), 2, "{:?}", host.presented);
    for c in &host.presented {
        assert_eq!(c.kind, ChallengeKind::Http01);
        let (token, thumbprint) = c.value.split_once('.').expect("token.thumbprint");
        assert_eq!(token, c.name);
        assert_eq!(thumbprint.len(), 43, "base64url SHA-256");
        assert!(host.withdrawn.contains(&c.id), "{} withdrawn", c.id);
    }
    // The account lives in the instance's store.
    assert!(host.store.contains_key("acme.account_key"));
    let account: Value = serde_json::from_str(&host.store["acme.account"]).unwrap();
    assert_eq!(account["directory_url"], pebble.directory_url());
    assert!(
        account["url"]
            .as_str()
            .unwrap()
            .starts_with(&pebble.grant())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_repeated_after_a_lost_answer_carries_on() {
    let pebble = Pebble::start(PebbleOptions::default());
    let harness = Harness::new().unwrap();
    let instance = acme_instance(
        &harness,
        pebble_config(&pebble, settings(&pebble.directory_url())),
    )
    .await;
    let mut host = AcmeHost::new(instance, Some(&pebble));
    let name = fresh_name("repeat");
    host.route(&name, &[ChallengeKind::Http01]);
    let request = request(&[&name]);
    let publishing = loop {
        match host.submit(&request).await {
            Ok(IssueResult::Pending(order)) => break order,
            Err(e) if is_transient(&e) => continue,
            other => panic!("{other:?}"),
        }
    };
    // The host publishes; the poll answers the challenges...
    let mut answered = None;
    for _ in 0..4 {
        match host.poll(&publishing).await {
            Ok(IssueResult::Pending(order)) => {
                answered = Some(order);
                break;
            }
            Err(e) if is_transient(&e) => continue,
            other => panic!("{other:?}"),
        }
    }
    let answered = answered.expect("the challenges answered");
    assert!(
        answered.state.contains(r#""phase":"validating""#),
        "{}",
        answered.state
    );
    // ...but the host never recorded that answer and polls the old state:
    // the challenges are answered a second time, harmlessly.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cert = host.drive(&request, Some(publishing)).await.unwrap();
    assert_chains_to_pebble(&cert, &pebble, &[&name]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_issuance_with_a_wildcard() {
    let pebble = Pebble::start(PebbleOptions::default());
    let harness = Harness::new().unwrap();
    let instance = acme_instance(
        &harness,
        pebble_config(&pebble, settings(&pebble.directory_url())),
    )
    .await;
    let mut host = AcmeHost::new(instance, Some(&pebble));
    let base = fresh_name("dns");
    let wildcard = format!("*.{base}");
    // Both routed for the name: the per-certificate option picks dns-01.
    host.route(&base, &[ChallengeKind::Http01, ChallengeKind::Dns01]);
    host.options = json!({"preferred_challenge": "dns-01"});
    let cert = host.issue(&[&base, &wildcard]).await.unwrap();
    assert_chains_to_pebble(&cert, &pebble, &[&base, &wildcard]);
    assert_eq!(host.presented.len(), 2);
    for c in &host.presented {
        assert_eq!(c.kind, ChallengeKind::Dns01);
        assert_eq!(c.identifier, base);
        assert_eq!(c.name, format!("_acme-challenge.{base}"));
        assert_eq!(c.value.len(), 43);
    }
    assert_ne!(host.presented[0].value, host.presented[1].value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_without_a_dns_route_are_a_configuration_error() {
    let pebble = Pebble::start(PebbleOptions::default());
    let harness = Harness::new().unwrap();
    let instance = acme_instance(
        &harness,
        pebble_config(&pebble, settings(&pebble.directory_url())),
    )
    .await;
    let mut host = AcmeHost::new(instance, Some(&pebble));
    let base = fresh_name("wild");
    host.route(&base, &[ChallengeKind::Http01]);
    let result = host.submit_settled(&request(&[&format!("*.{base}")])).await;
    let error = connector_error(result);
    assert!(
        matches!(&error, ConnectorError::InvalidConfig(m) if m.contains("needs dns-01")),
        "{error:?}"
    );
    assert!(host.presented.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_account_binding() {
    let pebble = Pebble::start(PebbleOptions {
        eab: true,
        ..PebbleOptions::default()
    });
    let harness = Harness::new().unwrap();

    // No binding at all: the directory says one is required.
    let plain = acme_instance(
        &harness,
        pebble_config(&pebble, settings(&pebble.directory_url())),
    )
    .await;
    let e = connector_error(plain.validate_config().await);
    assert!(
        matches!(&e, ConnectorError::InvalidConfig(m) if m.contains("external account binding")),
        "{e:?}"
    );
    let mut host = AcmeHost::new(plain, Some(&pebble));
    let name = fresh_name("eab");
    host.route(&name, &[ChallengeKind::Http01]);
    let e = connector_error(host.submit_settled(&request(&[&name])).await);
    assert!(matches!(e, ConnectorError::InvalidConfig(_)), "{e:?}");

    // The key id without its MAC key.
    let mut with_kid = settings(&pebble.directory_url());
    with_kid["eab_kid"] = json!(EAB_KID);
    let no_key = acme_instance(&harness, pebble_config(&pebble, with_kid.clone())).await;
    let e = connector_error(no_key.validate_config().await);
    assert!(
        matches!(&e, ConnectorError::InvalidConfig(m) if m.contains("eab_hmac_key")),
        "{e:?}"
    );

    // A wrong MAC key: Pebble refuses the binding.
    let wrong = acme_instance(
        &harness,
        pebble_config(&pebble, with_kid.clone()).with_secret(
            "eab_hmac_key",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ),
    )
    .await;
    let mut host = AcmeHost::new(wrong, Some(&pebble));
    host.route(&name, &[ChallengeKind::Http01]);
    let e = connector_error(host.submit_settled(&request(&[&name])).await);
    assert!(!matches!(e, ConnectorError::Transient(_)), "{e:?}");
    assert!(!host.store.contains_key("acme.account"));

    // The right one: registered, and a certificate issued.
    let good = acme_instance(
        &harness,
        pebble_config(&pebble, with_kid).with_secret("eab_hmac_key", EAB_HMAC_KEY),
    )
    .await;
    good.validate_config().await.unwrap();
    let mut host = AcmeHost::new(good, Some(&pebble));
    host.route(&name, &[ChallengeKind::Http01]);
    let cert = host.issue(&[&name]).await.unwrap();
    assert_chains_to_pebble(&cert, &pebble, &[&name]);
    assert!(host.store.contains_key("acme.account"));
    assert!(pebble.log().contains(EAB_KID), "Pebble saw the binding");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_is_registered_once_and_reused() {
    let pebble = Pebble::start(PebbleOptions {
        authz_reuse_percent: Some(100),
        ..PebbleOptions::default()
    });
    let harness = Harness::new().unwrap();
    let instance = acme_instance(
        &harness,
        pebble_config(&pebble, settings(&pebble.directory_url())),
    )
    .await;
    let mut host = AcmeHost::new(instance, Some(&pebble));

    // A call that registers the account and then fails (no route for the
    // name) still leaves the account in the store.
    let unrouted = fresh_name("unrouted");
    let e = connector_error(host.submit_settled(&request(&[&unrouted])).await);
    assert!(
        matches!(&e, ConnectorError::InvalidConfig(m) if m.contains("no challenge route")),
        "{e:?}"
    );
    let key = host.store["acme.account_key"].clone();
    let account = host.store["acme.account"].clone();

    // Had only the key been kept, newAccount finds the same account again.
    let mut only_key = AcmeHost::new(
        acme_instance(
            &harness,
            pebble_config(&pebble, settings(&pebble.directory_url())),
        )
        .await,
        Some(&pebble),
    );
    only_key
        .store
        .insert("acme.account_key".into(), key.clone());
    let _ = only_key.submit_settled(&request(&[&unrouted])).await;
    assert_eq!(only_key.store["acme.account"], account, "same account URL");

    // Three certificates later (the third for a name whose authorization
    // the CA reuses: no challenge at all), neither the key nor the account
    // changed, and no call wrote either again.
    host.written.clear();
    let first = fresh_name("first");
    let second = fresh_name("second");
    for (i, name) in [&first, &second, &first].into_iter().enumerate() {
        host.route(name, &[ChallengeKind::Http01]);
        let presented = host.presented.len();
        let cert = host.issue(&[name]).await.unwrap();
        assert_chains_to_pebble(&cert, &pebble, &[name]);
        if i == 2 {
            assert_eq!(
                host.presented.len(),
                presented,
                "no challenge for a valid authorization"
            );
        } else {
            assert!(host.presented.len() > presented);
        }
    }
    assert!(host.written.is_empty(), "{:?}", host.written);
    assert_eq!(host.store["acme.account_key"], key);
    assert_eq!(host.store["acme.account"], account);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_the_ca_forgot_is_registered_again() {
    let pebble = Pebble::start(PebbleOptions::default());
    let harness = Harness::new().unwrap();
    let instance = acme_instance(
        &harness,
        pebble_config(&pebble, settings(&pebble.directory_url())),
    )
    .await;
    let mut host = AcmeHost::new(instance, Some(&pebble));
    let name = fresh_name("forgotten");
    host.route(&name, &[ChallengeKind::Http01]);
    // An account URL the CA never issued (as after a CA-side deletion).
    let _ = host
        .submit_settled(&request(&["unrouted.certplane.test"]))
        .await;
    let real = host.store["acme.account"].clone();
    let mut stale: Value = serde_json::from_str(&real).unwrap();
    stale["url"] = json!(format!("{}/my-account/999999", pebble.grant()));
    host.store.insert("acme.account".into(), stale.to_string());

    // Transient (a refused nonce may come first: that is transient too).
    let mut forgotten = false;
    for _ in 0..4 {
        match connector_error(host.submit(&request(&[&name])).await) {
            ConnectorError::Transient(m) if m.contains("no longer knows") => {
                forgotten = true;
                break;
            }
            ConnectorError::Transient(_) => continue,
            other => panic!("{other:?}"),
        }
    }
    assert!(forgotten);
    assert!(!host.store.contains_key("acme.account"), "forgotten");
    // The host's retry registers again (the same key: the same account).
    let cert = host.issue(&[&name]).await.unwrap();
    assert_chains_to_pebble(&cert, &pebble, &[&name]);
    assert_eq!(host.store["acme.account"], real);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_orders_succeed_despite_refused_nonces() {
    // Pebble's default refuses 5 % of good nonces; 30 % here, so nearly
    // every order meets `badNonce` answers the connector must retry (a
    // second refusal in a row is transient, retried by the host).
    let pebble = Pebble::start(PebbleOptions {
        nonce_reject_percent: Some(30),
        ..PebbleOptions::default()
    });
    let harness = Harness::new().unwrap();
    let instance = acme_instance(
        &harness,
        pebble_config(&pebble, settings(&pebble.directory_url())),
    )
    .await;
    let mut host = AcmeHost::new(instance, Some(&pebble));
    for i in 0..3 {
        let name = fresh_name(&format!("nonce{i}"));
        host.route(&name, &[ChallengeKind::Http01]);
        let cert = host.issue(&[&name]).await.unwrap();
        assert_chains_to_pebble(&cert, &pebble, &[&name]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_nonce_is_retried_with_the_new_nonce_a_bounded_number_of_times() {
    let ari = FakeAri::start();
    let harness = Harness::new().unwrap();
    let config = InstanceConfig::new("acme-fake")
        .with_settings(settings(&ari.directory_url()))
        .unwrap()
        .with_hosts(&[ari.grant()])
        .unwrap();
    let mut host = AcmeHost::new(acme_instance(&harness, config).await, None);
    host.route("a.example.com", &[ChallengeKind::Http01]);

    // One refusal: retried, the order placed.
    ari.reject_nonces(1);
    let result = host.submit(&request(&["a.example.com"])).await;
    assert!(matches!(result, Ok(IssueResult::Pending(_))), "{result:?}");
    assert_eq!(ari.bad_nonces_sent(), 1);
    assert_eq!(ari.new_orders().len(), 1);

    // Three in a row on the same request: still placed.
    ari.reject_nonces(3);
    let result = host.submit(&request(&["b.example.com"])).await;
    assert!(matches!(result, Ok(IssueResult::Pending(_))), "{result:?}");
    assert_eq!(ari.bad_nonces_sent(), 4);
    assert_eq!(ari.new_orders().len(), 2);

    // Four in a row (one more than the retries): transient, nothing placed.
    ari.reject_nonces(4);
    let e = connector_error(host.submit(&request(&["c.example.com"])).await);
    assert!(
        matches!(&e, ConnectorError::Transient(m) if m.contains("badNonce")),
        "{e:?}"
    );
    assert_eq!(ari.bad_nonces_sent(), 8);
    assert_eq!(ari.new_orders().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_the_host_cannot_publish_is_rejected() {
    let pebble = Pebble::start(PebbleOptions::default());
    let harness = Harness::new().unwrap();
    let instance = acme_instance(
        &harness,
        pebble_config(&pebble, settings(&pebble.directory_url())),
    )
    .await;
    let mut host = AcmeHost::new(instance, Some(&pebble));
    host.publish = Publish::Fail("no agent serves http-01 for this name".into());
    let name = fresh_name("unpublished");
    host.route(&name, &[ChallengeKind::Http01]);
    let e = connector_error(host.issue(&[&name]).await);
    assert!(
        matches!(&e, ConnectorError::Rejected(m)
            if m.contains("no agent serves http-01") && m.contains(&name)),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_authorization_fails_with_the_cas_detail() {
    let pebble = Pebble::start(PebbleOptions::default());
    let harness = Harness::new().unwrap();
    let instance = acme_instance(
        &harness,
        pebble_config(&pebble, settings(&pebble.directory_url())),
    )
    .await;
    let mut host = AcmeHost::new(instance, Some(&pebble));
    host.publish = Publish::WrongValue;
    let name = fresh_name("wrong");
    host.route(&name, &[ChallengeKind::Http01]);
    let e = connector_error(host.issue(&[&name]).await);
    let ConnectorError::Rejected(message) = &e else {
        panic!("{e:?}");
    };
    assert!(message.contains("invalid"), "{message}");
    assert!(message.contains(&name), "{message}");
    // Pebble's own words about the mismatch.
    assert!(message.contains("key authorization"), "{message}");
    // The challenges were withdrawn all the same.
    assert_eq!(host.withdrawn.len(), host.presented.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_revokes_what_it_ordered() {
    let pebble = Pebble::start(PebbleOptions::default());
    let harness = Harness::new().unwrap();
    let instance = acme_instance(
        &harness,
        pebble_config(&pebble, settings(&pebble.directory_url())),
    )
    .await;
    let mut host = AcmeHost::new(instance, Some(&pebble));
    let name = fresh_name("revoked");
    host.route(&name, &[ChallengeKind::Http01]);
    let cert = host.issue(&[&name]).await.unwrap();
    let der = der_of(&cert.certificate_pem);
    let (_, leaf) = X509Certificate::from_der(&der).unwrap();
    let serial_hex = leaf.raw_serial_as_string().replace(':', "");
    let revocation = RevocationRequest {
        certificate_pem: cert.certificate_pem.clone(),
        serial_hex: serial_hex.clone(),
        ca_certificate_id: cert.ca_certificate_id.clone(),
        reason: RevocationReason::Superseded,
    };
    let mut revoked = false;
    for _ in 0..4 {
        let (result, effects) = host
            .instance
            .revoke_with(&host.context(), &revocation)
            .await;
        host.apply(effects);
        match result {
            Ok(()) => {
                revoked = true;
                break;
            }
            Err(e) if is_transient(&e) => continue,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(revoked);
    let status = pebble.cert_status(&leaf.serial.to_str_radix(16));
    assert!(status.contains("Revoked"), "{status}");
    // Revoking again is not an error.
    let (result, _) = host
        .instance
        .revoke_with(&host.context(), &revocation)
        .await;
    result.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_withdraws_and_deactivates() {
    let pebble = Pebble::start(PebbleOptions::default());
    let harness = Harness::new().unwrap();
    let instance = acme_instance(
        &harness,
        pebble_config(&pebble, settings(&pebble.directory_url())),
    )
    .await;
    let mut host = AcmeHost::new(instance, Some(&pebble));
    host.publish = Publish::Fail("never published".into());
    let name = fresh_name("cancelled");
    host.route(&name, &[ChallengeKind::Http01]);
    let mut order = None;
    for _ in 0..4 {
        match host.submit(&request(&[&name])).await {
            Ok(IssueResult::Pending(o)) => {
                order = Some(o);
                break;
            }
            Err(e) if is_transient(&e) => continue,
            other => panic!("{other:?}"),
        }
    }
    let order = order.expect("an order");
    let mut cancelled = false;
    for _ in 0..4 {
        let (result, effects) = host
            .instance
            .cancel_order(&host.context(), &order.id, &order.state)
            .await;
        host.apply(effects);
        match result {
            Ok(()) => {
                cancelled = true;
                break;
            }
            Err(e) if is_transient(&e) => continue,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(cancelled);
    let ids: Vec<String> = host.presented.iter().map(|c| c.id.clone()).collect();
    assert!(!ids.is_empty());
    assert!(ids.iter().all(|id| host.withdrawn.contains(id)));

    // The order died with its authorization.
    let mut state: Value = serde_json::from_str(&order.state).unwrap();
    state["phase"] = json!("validating");
    let validating = Order {
        state: state.to_string(),
        ..order.clone()
    };
    let mut outcome = None;
    for _ in 0..4 {
        match host.poll(&validating).await {
            Err(e) if is_transient(&e) => continue,
            other => {
                outcome = Some(other);
                break;
            }
        }
    }
    let e = connector_error(outcome.expect("a poll answer"));
    assert!(
        matches!(&e, ConnectorError::Rejected(m) if m.contains(&format!("{name}: authorization deactivated"))),
        "{e:?}"
    );
}

/// A leaf with an authority key identifier, as every public CA issues.
fn leaf_with_aki(serial: &[u8]) -> String {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(vec![0xa5; 20]);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec!["ari.example.com".to_string()]).unwrap();
    leaf.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
    leaf.use_authority_key_identifier_extension = true;
    leaf.signed_by(&key, &ca_cert, &ca_key).unwrap().pem()
}

/// RFC 9773's certID, computed independently of the connector.
fn expected_cert_id(pem_text: &str) -> String {
    let der = der_of(pem_text);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .expect("an AKI");
    format!("{}.{}", base64url(&aki), base64url(cert.raw_serial()))
}

fn fake_config(ari: &FakeAri) -> InstanceConfig {
    InstanceConfig::new("acme-fake")
        .with_settings(settings(&ari.directory_url()))
        .unwrap()
        .with_hosts(&[ari.grant()])
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_windows_come_from_renewal_info() {
    let ari = FakeAri::start();
    let harness = Harness::new().unwrap();
    let instance = acme_instance(&harness, fake_config(&ari)).await;
    // A serial with its high bit set: DER puts a zero byte in front, and
    // the certID keeps it.
    let cert = leaf_with_aki(&[0x87, 0x65, 0x43, 0x21]);
    let id = expected_cert_id(&cert);
    assert!(id.ends_with(".AIdlQyE"), "{id}");
    ari.set_window(
        &id,
        RenewalWindow {
            start: "2030-01-02T00:00:00Z".into(),
            end: "2030-01-03T12:00:00+02:00".into(),
            explanation_url: Some("https://ca.example/why".into()),
            retry_after: Some("1200".into()),
        },
    );
    let (result, _) = instance
        .renewal_window(&CallContext::default(), &cert)
        .await;
    let info = result.unwrap().expect("a window");
    assert_eq!(info.start, 1_893_542_400);
    assert_eq!(info.end, 1_893_542_400 + 86_400 + 10 * 3600);
    assert_eq!(
        info.explanation_url.as_deref(),
        Some("https://ca.example/why")
    );
    assert_eq!(info.retry_after_secs, Some(1200));
    assert_eq!(ari.asked(), vec![id]);

    // A certificate the CA does not know: no window.
    let other = leaf_with_aki(&[0x01, 0x02]);
    let (result, _) = instance
        .renewal_window(&CallContext::default(), &other)
        .await;
    assert_eq!(result.unwrap(), None);
    assert_eq!(ari.asked().len(), 2);

    // A CA without renewalInfo: no window, nothing asked.
    let plain = FakeAri::start_without_renewal_info();
    let instance = acme_instance(&harness, fake_config(&plain)).await;
    let (result, _) = instance
        .renewal_window(&CallContext::default(), &cert)
        .await;
    assert_eq!(result.unwrap(), None);
    assert!(plain.asked().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_name_the_certificate_they_replace() {
    let ari = FakeAri::start();
    let harness = Harness::new().unwrap();
    let mut host = AcmeHost::new(acme_instance(&harness, fake_config(&ari)).await, None);
    host.route("a.example.com", &[ChallengeKind::Http01]);
    let predecessor = leaf_with_aki(&[0x42, 0x01]);
    host.predecessor = Some(PreviousVersion {
        certificate_pem: predecessor.clone(),
        serial_hex: "4201".into(),
        ca_certificate_id: None,
        ca_order_id: None,
        not_after: 0,
    });
    let result = host.submit(&request(&["a.example.com"])).await;
    assert!(matches!(result, Ok(IssueResult::Pending(_))), "{result:?}");
    host.predecessor = None;
    host.submit(&request(&["a.example.com"])).await.unwrap();

    let orders = ari.new_orders();
    assert_eq!(orders.len(), 2);
    assert_eq!(orders[0]["replaces"], json!(expected_cert_id(&predecessor)));
    assert_eq!(
        orders[0]["identifiers"],
        json!([{"type": "dns", "value": "a.example.com"}])
    );
    assert!(orders[1].get("replaces").is_none(), "{}", orders[1]);

    // Signed with the account URL, not the key, after registration.
    let posts = ari.posts();
    assert_eq!(posts[0].path, "/account");
    assert!(posts[0].protected.get("jwk").is_some());
    assert_eq!(posts[1].protected["alg"], "ES256");
    assert!(
        posts[1].protected["kid"]
            .as_str()
            .unwrap()
            .ends_with("/account/1")
    );

    // Every request names the client (RFC 8555 section 6.1).
    let agents = ari.user_agents();
    assert!(agents.len() >= 5, "{agents:?}");
    assert!(
        agents.iter().all(|ua| ua.starts_with("certplane-acme/")),
        "{agents:?}"
    );

    // A CA without renewalInfo gets no `replaces`.
    let plain = FakeAri::start_without_renewal_info();
    let mut host = AcmeHost::new(acme_instance(&harness, fake_config(&plain)).await, None);
    host.route("a.example.com", &[ChallengeKind::Http01]);
    host.predecessor = Some(PreviousVersion {
        certificate_pem: predecessor,
        serial_hex: "4201".into(),
        ca_certificate_id: None,
        ca_order_id: None,
        not_after: 0,
    });
    host.submit(&request(&["a.example.com"])).await.unwrap();
    assert!(plain.new_orders()[0].get("replaces").is_none());
}
