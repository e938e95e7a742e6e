//! Authorizations and challenges (RFC 8555 sections 7.1.4, 8): which
//! challenge to answer for a name, given what the CA offers and what the
//! operator routes, and what to publish for it.

use serde::{Deserialize, Serialize};

use crate::bindings::{Challenge, ChallengeKind};
use crate::jws::sha256_b64;
use crate::problem::{Identifier, Problem};

/// An authorization object.
#[derive(Debug, Clone, Deserialize)]
pub struct Authorization {
    /// The name it is about (without `*.`).
    pub identifier: Identifier,
    /// `pending`, `valid`, `invalid`, `deactivated`, `expired`, `revoked`.
    pub status: String,
    /// What the CA accepts as proof.
    #[serde(default)]
    pub challenges: Vec<AcmeChallenge>,
    /// Whether it is for `*.` + identifier.
    #[serde(default)]
    pub wildcard: bool,
}

/// A challenge object.
#[derive(Debug, Clone, Deserialize)]
pub struct AcmeChallenge {
    /// `http-01`, `dns-01`, `tls-alpn-01`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Where to POST `{}` when it is published.
    pub url: String,
    /// The token (absent from some challenge types).
    #[serde(default)]
    pub token: Option<String>,
    /// `pending`, `processing`, `valid`, `invalid`.
    #[serde(default)]
    pub status: String,
    /// Why validation failed.
    #[serde(default)]
    pub error: Option<Problem>,
}

/// What an order remembers of one authorization between calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzState {
    /// The authorization URL.
    pub url: String,
    /// The name (without `*.`).
    pub identifier: String,
    /// The challenge we answer, when the authorization was not already
    /// valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge: Option<ChosenChallenge>,
}

/// The challenge chosen for an authorization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChosenChallenge {
    /// Its URL at the CA.
    pub url: String,
    /// Our id for it in `challenges.present`.
    pub id: String,
    /// `http-01` or `dns-01`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// The ACME name of a challenge kind.
pub fn acme_type(kind: ChallengeKind) -> &'static str {
    match kind {
        ChallengeKind::Http01 => "http-01",
        ChallengeKind::Dns01 => "dns-01",
    }
}

/// Picks the challenge to answer: among the kinds the operator routes for
/// the name (in the host's order), those the CA offers (only dns-01 for a
/// wildcard); the preferred kind when it is one of them, else the first.
pub fn choose<'a>(
    authz: &'a Authorization,
    routed: &[ChallengeKind],
    preferred: Option<ChallengeKind>,
) -> Result<(ChallengeKind, &'a AcmeChallenge), String> {
    let offered = |kind: ChallengeKind| {
        if authz.wildcard && kind != ChallengeKind::Dns01 {
            return None;
        }
        authz
            .challenges
            .iter()
            .find(|c| c.kind == acme_type(kind) && c.token.is_some())
    };
    let candidates: Vec<(ChallengeKind, &AcmeChallenge)> = routed
        .iter()
        .filter_map(|k| offered(*k).map(|c| (*k, c)))
        .collect();
    let pick = preferred
        .and_then(|p| candidates.iter().find(|(k, _)| *k == p))
        .or_else(|| candidates.first());
    pick.copied().ok_or_else(|| {
        let name = display_name(authz);
        let offered: Vec<&str> = authz.challenges.iter().map(|c| c.kind.as_str()).collect();
        let routed: Vec<&str> = routed.iter().map(|k| acme_type(*k)).collect();
        if routed.is_empty() {
            format!(
                "no challenge route for {name}: configure how this issuer's challenges are \
                 served for it (http-01 by an agent or the host, dns-01 by a DNS solver)"
            )
        } else {
            format!(
                "no usable challenge for {name}: the CA offers [{}], the host routes [{}]{}",
                offered.join(", "),
                routed.join(", "),
                if authz.wildcard {
                    " (a wildcard needs dns-01)"
                } else {
                    ""
                }
            )
        }
    })
}

/// `*.name` for a wildcard authorization, else the name.
pub fn display_name(authz: &Authorization) -> String {
    if authz.wildcard {
        format!("*.{}", authz.identifier.value)
    } else {
        authz.identifier.value.clone()
    }
}

/// The key authorization of a token (RFC 8555 section 8.1).
pub fn key_authorization(token: &str, thumbprint: &str) -> String {
    format!("{token}.{thumbprint}")
}

/// What to publish for a challenge: http-01 serves the key authorization
/// under the token; dns-01 a TXT record of its digest at
/// `_acme-challenge.<name>`.
pub fn to_publish(
    kind: ChallengeKind,
    identifier: &str,
    token: &str,
    thumbprint: &str,
) -> Challenge {
    let key_auth = key_authorization(token, thumbprint);
    let (name, value) = match kind {
        ChallengeKind::Http01 => (token.to_string(), key_auth),
        ChallengeKind::Dns01 => (
            format!("_acme-challenge.{identifier}"),
            sha256_b64(key_auth.as_bytes()),
        ),
    };
    Challenge {
        id: challenge_id(kind, token),
        kind,
        identifier: identifier.to_string(),
        name,
        value,
    }
}

/// Our id for a challenge: its kind and token, so it is unique within a
/// job even when a retried job places a new order.
pub fn challenge_id(kind: ChallengeKind, token: &str) -> String {
    let prefix = match kind {
        ChallengeKind::Http01 => "http01",
        ChallengeKind::Dns01 => "dns01",
    };
    let token: String = token
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(100)
        .collect();
    format!("{prefix}-{token}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authz(json: &str) -> Authorization {
        serde_json::from_str(json).unwrap()
    }

    const BOTH: &str = r#"{"identifier":{"type":"dns","value":"www.example.com"},"status":"pending",
        "challenges":[
          {"type":"tls-alpn-01","url":"https://ca/c/0","token":"t0","status":"pending"},
          {"type":"http-01","url":"https://ca/c/1","token":"t1","status":"pending"},
          {"type":"dns-01","url":"https://ca/c/2","token":"t2","status":"pending"}]}"#;

    #[test]
    fn the_host_order_decides_unless_a_preference_is_routed() {
        let a = authz(BOTH);
        let both = [ChallengeKind::Dns01, ChallengeKind::Http01];
        let (k, c) = choose(&a, &both, None).unwrap();
        assert_eq!(
            (k, c.url.as_str()),
            (ChallengeKind::Dns01, "https://ca/c/2")
        );
        let (k, _) = choose(&a, &both, Some(ChallengeKind::Http01)).unwrap();
        assert_eq!(k, ChallengeKind::Http01);
        // A preference that is not routed is ignored.
        let (k, _) = choose(&a, &[ChallengeKind::Http01], Some(ChallengeKind::Dns01)).unwrap();
        assert_eq!(k, ChallengeKind::Http01);
        let e = choose(&a, &[], None).unwrap_err();
        assert!(
            e.starts_with("no challenge route for www.example.com"),
            "{e}"
        );
    }

    #[test]
    fn wildcards_need_dns01() {
        let a = authz(
            r#"{"identifier":{"type":"dns","value":"example.com"},"status":"pending","wildcard":true,
            "challenges":[{"type":"dns-01","url":"https://ca/c/2","token":"t2"}]}"#,
        );
        let e = choose(&a, &[ChallengeKind::Http01], None).unwrap_err();
        assert!(
            e.contains("*.example.com") && e.contains("needs dns-01"),
            "{e}"
        );
        let (k, _) = choose(&a, &[ChallengeKind::Http01, ChallengeKind::Dns01], None).unwrap();
        assert_eq!(k, ChallengeKind::Dns01);
    }

    #[test]
    fn key_authorizations_and_dns_values() {
        // RFC 8555 section 8.4's shape: the TXT value is the unpadded
        // base64url SHA-256 of the key authorization.
        let c = to_publish(
            ChallengeKind::Http01,
            "www.example.com",
            "tok-EN_1",
            "THUMB",
        );
        assert_eq!(
            (c.id.as_str(), c.name.as_str(), c.value.as_str()),
            ("http01-tok-EN_1", "tok-EN_1", "tok-EN_1.THUMB")
        );
        let c = to_publish(ChallengeKind::Dns01, "example.com", "tok", "THUMB");
        assert_eq!(c.name, "_acme-challenge.example.com");
        assert_eq!(c.identifier, "example.com");
        assert_eq!(c.value, sha256_b64(b"tok.THUMB"));
        assert_eq!(c.value.len(), 43);
        assert!(!c.value.contains('='));
        assert_eq!(challenge_id(ChallengeKind::Dns01, "a.b/c"), "dns01-abc");
    }
}
