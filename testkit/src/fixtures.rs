//! Store rows for tests: an issuer, agents, targets, certificates.

use certplane_host::store::*;

pub async fn issuer(store: &Store) -> PluginInstance {
    store
        .create_issuer(NewPluginInstance::new(
            format!("issuer-{}", new_id()),
            "local-ca",
            "1.0.0",
        ))
        .await
        .expect("issuer")
}

pub async fn agent(store: &Store, name: &str) -> Agent {
    store
        .register_agent(NewAgent {
            name: name.to_owned(),
            credential_hash: format!("hash-{}", new_id()),
        })
        .await
        .expect("agent")
}

pub async fn target(store: &Store, agent_id: &str, name: &str) -> Target {
    store
        .create_target(NewTarget {
            agent_id: agent_id.to_owned(),
            instance: NewPluginInstance::new(format!("{name}-{}", new_id()), "pem-file", "1.0.0"),
        })
        .await
        .expect("target")
}

pub async fn certificate(
    store: &Store,
    issuer_id: &str,
    target_id: Option<&str>,
    key_source: KeySource,
) -> Certificate {
    let name = format!("cert-{}", new_id());
    store
        .create_certificate(NewCertificate {
            name: name.clone(),
            common_name: format!("{name}.example.test"),
            sans: vec![format!("{name}.example.test")],
            key_type: "ecdsa-p256".into(),
            key_source,
            issuer_id: issuer_id.to_owned(),
            target_id: target_id.map(str::to_owned),
            renew_before_secs: 30 * 86_400,
            owner: Some("team-a".into()),
        })
        .await
        .expect("certificate")
}

/// Records a placeholder version of `cert_id` (not a parseable
/// certificate: for tests of bookkeeping, not of certificates) issued 80
/// days ago and ending `days_left` days from now, made current.
pub async fn version_ending_in(
    store: &Store,
    cert_id: &str,
    serial: &str,
    days_left: i64,
) -> CertificateVersion {
    let now = chrono::Utc::now();
    store
        .record_certificate_version(NewCertificateVersion {
            certificate_id: cert_id.to_owned(),
            serial: serial.to_owned(),
            pem_chain: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
            not_before: now - chrono::Duration::days(80),
            not_after: now + chrono::Duration::days(days_left),
            fingerprint_sha256: "ab".repeat(32),
            encrypted_private_key: None,
            job_id: None,
            ca_certificate_id: None,
            ca_order_id: None,
            renew_before_secs: None,
        })
        .await
        .expect("version")
}
