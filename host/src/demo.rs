//! `certplane demo`: the README's main job. Runs the issuance data path on
//! the embedded defaults, end to end and for real: a temporary data
//! directory with an embedded SQLite store, the local-CA issuer connector
//! signing a CSR, the host checking what the connector returned, and the
//! PEM-files target connector writing the result into the one directory it
//! was granted. Every step prints a progress line with its timing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use certplane_runtime::issuer::{CertificateRequest, IssueResult};
use certplane_runtime::target::CertificateBundle;
use certplane_runtime::{InstanceConfig, PluginInstance, Runtime, RuntimeConfig};

use crate::pipeline::certcheck::{IssuedInput, check_issued};
use crate::pipeline::keygen::{KeyType, generate_key_and_csr};
use crate::store::{KeySource, NewCertificate, NewCertificateVersion, NewPluginInstance, Store};

/// Options of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Directory holding the packaged plugins (`local-ca.toml`, ...).
    pub plugin_dir: PathBuf,
    /// Keep the temporary data directory instead of deleting it.
    pub keep: bool,
    /// Compiled-plugin cache kept across runs (`None`: inside the temporary
    /// data directory, so every run compiles).
    pub cache_dir: Option<PathBuf>,
}

struct Progress {
    started: Instant,
    step: u32,
}

impl Progress {
    fn say(&mut self, what: impl std::fmt::Display) {
        self.step += 1;
        println!(
            "[{:>7.1} ms] {:>2}. {what}",
            self.started.elapsed().as_secs_f64() * 1e3,
            self.step
        );
    }
}

/// A throwaway CA for the demo: (certificate PEM, PKCS#8 key PEM).
fn demo_ca() -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "certplane demo CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn manifest(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    if !path.exists() {
        bail!(
            "{} not found: build the plugins first (scripts/build-plugins) or pass --plugin-dir",
            path.display()
        );
    }
    Ok(path)
}

/// Runs the demo.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let mut p = Progress {
        started: Instant::now(),
        step: 0,
    };
    let data = tempfile::Builder::new()
        .prefix("certplane-demo-")
        .tempdir()
        .context("creating the demo data directory")?;
    let data_dir = data.path().to_path_buf();
    p.say(format!("data directory {}", data_dir.display()));

    let url = format!(
        "sqlite://{}?mode=rwc",
        data_dir.join("certplane.db").display()
    );
    let store = Store::connect(&url).await?;
    let report = store.migrate().await?;
    p.say(format!(
        "embedded SQLite store ready ({} migrations applied)",
        report.applied.len()
    ));

    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(
            options
                .cache_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("plugin-cache")),
        ),
        ..RuntimeConfig::default()
    })?;
    let issuer_plugin = runtime
        .load_plugin(&manifest(&options.plugin_dir, "local-ca")?)
        .await?;
    let target_plugin = runtime
        .load_plugin(&manifest(&options.plugin_dir, "pem-files")?)
        .await?;
    for plugin in [&issuer_plugin, &target_plugin] {
        p.say(format!(
            "loaded {} plugin {} {} (sha256 {}…, world {})",
            plugin.kind(),
            plugin.name(),
            plugin.version(),
            &plugin.sha256()[..12],
            plugin.manifest().world
        ));
    }

    let (ca_cert, ca_key) = demo_ca()?;
    let issuer_settings = serde_json::json!({ "ca_certificate_pem": ca_cert, "validity_days": 30 });
    let issuer = PluginInstance::new(
        issuer_plugin.clone(),
        InstanceConfig::new("demo-local-ca")
            .with_settings(issuer_settings.clone())?
            .with_secret("ca_private_key_pem", ca_key),
    )?;
    issuer.validate_config().await?;
    let issuer_row = store
        .create_issuer(NewPluginInstance {
            name: "demo-local-ca".into(),
            plugin_name: issuer_plugin.name().into(),
            plugin_version: issuer_plugin.version().into(),
            settings: issuer_settings,
            encrypted_secrets: None,
            grants: serde_json::json!({}),
        })
        .await?;
    p.say("issuer instance validated by the connector and saved");

    let names = vec![
        "demo.certplane.test".to_string(),
        "www.demo.certplane.test".to_string(),
    ];
    let cert_row = store
        .create_certificate(NewCertificate {
            name: "demo".into(),
            common_name: names[0].clone(),
            sans: names.clone(),
            key_type: KeyType::EcdsaP256.as_str().into(),
            key_source: KeySource::Host,
            issuer_id: issuer_row.id.clone(),
            target_id: None,
            renew_before_secs: 10 * 24 * 3600,
            owner: Some("demo".into()),
        })
        .await?;
    p.say(format!("managed certificate {} created", cert_row.id));

    let generated = generate_key_and_csr(KeyType::EcdsaP256, &names[0], &names, &[])?;
    p.say("ECDSA P-256 key and CSR generated in the host (host key mode)");

    let request = CertificateRequest {
        csr_pem: generated.csr_pem.clone(),
        common_name: names[0].clone(),
        dns_names: names.clone(),
        ip_addresses: vec![],
        validity_days: Some(30),
        certificate_id: cert_row.id.clone(),
    };
    let issued = match issuer.submit(&request).await? {
        IssueResult::Issued(issued) => issued,
        IssueResult::Pending(order) => bail!(
            "the local CA unexpectedly returned pending order {}",
            order.id
        ),
    };
    let checked = check_issued(&IssuedInput {
        csr_pem: &generated.csr_pem,
        dns_names: &names,
        ip_addresses: &[],
        leaf_pem: &issued.certificate_pem,
        chain_pem: &issued.chain_pem,
        now: chrono::Utc::now(),
        validity_days: Some(30),
        trust_anchor_pem: Some(ca_cert.as_str()),
    })?;
    p.say(format!(
        "issued by the local-ca connector and checked (serial {}, expires {})",
        checked.serial_hex, checked.not_after
    ));

    let version = store
        .record_certificate_version(NewCertificateVersion {
            certificate_id: cert_row.id.clone(),
            serial: checked.serial_hex.clone(),
            pem_chain: std::iter::once(checked.leaf_pem.as_str())
                .chain(checked.chain_pem.iter().map(String::as_str))
                .collect(),
            not_before: checked.not_before,
            not_after: checked.not_after,
            fingerprint_sha256: checked.fingerprint_sha256.clone(),
            // Demo only: the key stays in memory and is handed to the target.
            encrypted_private_key: None,
            job_id: None,
        })
        .await?;
    p.say(format!("version {} recorded as current", version.id));

    let deploy_dir = data_dir.join("deployed");
    std::fs::create_dir_all(&deploy_dir)?;
    let target = PluginInstance::new(
        target_plugin,
        InstanceConfig::new("demo-pem-files")
            .with_settings(serde_json::json!({ "directory": "/certs" }))?
            .with_dir(&deploy_dir, "/certs", true),
    )?;
    target.validate_config().await?;
    let bundle = CertificateBundle {
        certificate_id: cert_row.id.clone(),
        dns_names: names.clone(),
        certificate_pem: checked.leaf_pem.clone(),
        chain_pem: checked.chain_pem.clone(),
        fingerprint_sha256: checked.fingerprint_sha256.clone(),
    };
    let result = target
        .deploy(&bundle, generated.private_key_pem.expose_secret(), "{}")
        .await?;
    p.say(format!(
        "deployed by the pem-files connector into its granted directory: {}",
        result.changed.join(", ")
    ));

    let written = std::fs::read_to_string(deploy_dir.join(&cert_row.id).join("cert.pem"))
        .context("reading the deployed certificate")?;
    let der = rustls_pemfile::certs(&mut written.as_bytes())
        .next()
        .context("the deployed cert.pem holds no certificate")??;
    let on_disk = crate::tls::fingerprint_sha256(&der);
    if on_disk != checked.fingerprint_sha256 {
        bail!(
            "deployed file has fingerprint {on_disk}, expected {}",
            checked.fingerprint_sha256
        );
    }
    p.say(format!(
        "verified: the deployed file carries fingerprint {}…",
        &on_disk[..16]
    ));

    store.close().await;
    let total = p.started.elapsed();
    if options.keep {
        let kept = data.keep();
        println!("kept data directory {}", kept.display());
    }
    println!("demo finished in {:.0} ms", total.as_secs_f64() * 1e3);
    Ok(())
}
