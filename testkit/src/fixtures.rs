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
