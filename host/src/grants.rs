//! Parts of an instance's `grants` beyond hosts, directories and limits,
//! shared by the API (which checks them) and the engine (which applies
//! them): the connector's own TLS trust, and who publishes an issuer's
//! domain-validation challenges.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// TLS of the connector's own outgoing HTTPS, for this instance only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsGrant {
    /// PEM CA certificates trusted besides the host's roots (a private CA's
    /// API, a test CA).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_roots_pem: Vec<String>,
    /// Client certificate chain (PEM, leaf first) for upstreams that
    /// authenticate with one; its key is the secret named by
    /// `client_key_secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_pem: Option<String>,
    /// Name of the instance secret holding the client certificate's PEM
    /// private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_secret: Option<String>,
}

impl TlsGrant {
    /// The runtime's per-instance TLS from this grant and the instance's
    /// secrets (which hold the client key). Errors name the field.
    pub fn instance_tls<'a>(
        &self,
        secret: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<certplane_runtime::InstanceTls, String> {
        let client_key_pem = match (&self.client_certificate_pem, &self.client_key_secret) {
            (None, None) => None,
            (Some(_), Some(name)) => {
                Some(certplane_runtime::Secret::new(secret(name).ok_or_else(
                    || format!("grants.tls.client_key_secret names {name:?}, which is not set"),
                )?))
            }
            _ => {
                return Err(
                    "grants.tls: client_certificate_pem and client_key_secret go together".into(),
                );
            }
        };
        Ok(certplane_runtime::InstanceTls {
            extra_roots_pem: self.extra_roots_pem.clone(),
            client_cert_pem: self.client_certificate_pem.clone(),
            client_key_pem,
        })
    }
}

/// Who serves an issuer's http-01 challenges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Http01Route {
    /// The host's responder at `/.well-known/acme-challenge/` (any replica
    /// answers from the database; `[challenges] http_listen` must be
    /// reachable on port 80 of every name).
    Host,
    /// The agent running the certificate's key-holding (first) target
    /// writes the token into the webroot of the web server on its machine
    /// (its `[challenges] webroot`) and checks it there. Offered only for
    /// certificates whose first target an agent runs.
    Agent,
}

/// dns-01 challenges of one zone go to one dns-solver instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DnsZoneRoute {
    /// The zone, e.g. `example.com`: its names and every name below it.
    pub zone: String,
    /// Id of the dns-solver instance that publishes its records.
    pub solver: String,
}

/// How an issuer's challenges are published. Without it, an issuer that
/// presents challenges (ACME) is told no kind is routed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChallengeRoutes {
    /// Who serves http-01 (not for wildcard names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_01: Option<Http01Route>,
    /// dns-01 solvers by zone; the longest matching zone wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_01: Vec<DnsZoneRoute>,
}

/// A chosen dns-01 route for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRoute<'a> {
    /// The zone that matched.
    pub zone: &'a str,
    /// The solver instance id.
    pub solver: &'a str,
}

impl ChallengeRoutes {
    /// The dns-01 route for `identifier` (without `*.`): the longest zone
    /// that is the name or an ancestor of it.
    pub fn dns_for(&self, identifier: &str) -> Option<DnsRoute<'_>> {
        let name = identifier.trim_end_matches('.').to_ascii_lowercase();
        self.dns_01
            .iter()
            .filter(|r| {
                let zone = r.zone.trim_end_matches('.').to_ascii_lowercase();
                name == zone || name.ends_with(&format!(".{zone}"))
            })
            .max_by_key(|r| r.zone.len())
            .map(|r| DnsRoute {
                zone: r.zone.trim_end_matches('.'),
                solver: &r.solver,
            })
    }

    /// Whether http-01 can be served for `name` (a certificate name, which
    /// may be a wildcard).
    pub fn http_for(&self, name: &str) -> Option<Http01Route> {
        if name.starts_with("*.") {
            return None;
        }
        self.http_01
    }

    /// Checks zone names; the API turns the message into a 422.
    pub fn check(&self) -> Result<(), String> {
        for route in &self.dns_01 {
            let zone = route.zone.trim_end_matches('.');
            let ok = !zone.is_empty()
                && zone.len() <= 253
                && zone.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !ok {
                return Err(format!(
                    "challenges.dns_01: {:?} is not a DNS zone name",
                    route.zone
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> ChallengeRoutes {
        ChallengeRoutes {
            http_01: Some(Http01Route::Host),
            dns_01: vec![
                DnsZoneRoute {
                    zone: "example.com".into(),
                    solver: "outer".into(),
                },
                DnsZoneRoute {
                    zone: "dev.example.com.".into(),
                    solver: "inner".into(),
                },
            ],
        }
    }

    #[test]
    fn the_longest_zone_wins_and_only_below_it() {
        let r = routes();
        assert_eq!(r.dns_for("www.example.com").unwrap().solver, "outer");
        assert_eq!(r.dns_for("example.com").unwrap().solver, "outer");
        assert_eq!(r.dns_for("a.dev.example.com").unwrap().solver, "inner");
        assert_eq!(
            r.dns_for("a.dev.example.com").unwrap().zone,
            "dev.example.com"
        );
        assert!(r.dns_for("notexample.com").is_none());
        assert!(r.dns_for("example.org").is_none());
    }

    #[test]
    fn http_01_never_serves_wildcards_and_zones_are_checked() {
        let r = routes();
        assert_eq!(r.http_for("www.example.com"), Some(Http01Route::Host));
        assert_eq!(r.http_for("*.example.com"), None);
        assert!(r.check().is_ok());
        let bad = ChallengeRoutes {
            http_01: None,
            dns_01: vec![DnsZoneRoute {
                zone: "bad zone".into(),
                solver: "x".into(),
            }],
        };
        assert!(bad.check().unwrap_err().contains("bad zone"));
    }

    #[test]
    fn http_01_may_go_to_the_agent() {
        let r: ChallengeRoutes = serde_json::from_str(r#"{"http_01":"agent"}"#).unwrap();
        assert_eq!(r.http_for("www.example.com"), Some(Http01Route::Agent));
        assert_eq!(r.http_for("*.example.com"), None);
        assert!(serde_json::from_str::<ChallengeRoutes>(r#"{"http_01":"agents"}"#).is_err());
    }
}
