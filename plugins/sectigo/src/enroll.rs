//! Everything decided before an order is placed: the certificate type and
//! term checked against the account's list, the names, the request body.
//!
//! An SCM enrollment is a paid order, so whatever can be refused locally is
//! refused before it is sent.

use certplane_sdk::ConnectorError;
use certplane_sdk::issuer::CertificateRequest;

use crate::config::{MAX_COMMENTS_CHARS, Settings};
use crate::scm::{CertType, EnrollRequest};

/// The longest DNS name.
const MAX_NAME_LEN: usize = 253;

/// The type `cert_type` names and a check that `term` is one of its terms.
/// Both failures are `invalid-config` naming the allowed values.
pub fn check_type(
    types: &[CertType],
    cert_type: i64,
    term: u32,
) -> Result<&CertType, ConnectorError> {
    let Some(found) = types.iter().find(|t| t.id == cert_type) else {
        let available = if types.is_empty() {
            "the account lists none".to_string()
        } else {
            let list: Vec<String> = types
                .iter()
                .map(|t| format!("{} ({})", t.id, t.name))
                .collect();
            format!("available: {}", list.join(", "))
        };
        return Err(ConnectorError::invalid_config(format!(
            "setting `cert_type` = {cert_type} is not an SSL certificate type of this SCM \
             account; {available}"
        )));
    };
    if !found.terms.contains(&term) {
        return Err(ConnectorError::invalid_config(format!(
            "setting `term` = {term} is not a term of certificate type {} ({}); allowed terms \
             (days): {}",
            found.id,
            found.name,
            join(&found.terms)
        )));
    }
    Ok(found)
}

/// The term to order: the configured one, unless the request asks for a
/// shorter validity, in which case the longest of the type's terms that
/// fits (the host refuses a certificate that lives longer than it asked).
pub fn choose_term(
    cert_type: &CertType,
    configured: u32,
    validity_days: Option<u32>,
) -> Result<u32, ConnectorError> {
    match validity_days {
        Some(days) if days < configured => cert_type
            .terms
            .iter()
            .copied()
            .filter(|&t| t <= days)
            .max()
            .ok_or_else(|| {
                ConnectorError::rejected(format!(
                    "the request asks for {days} days of validity, but certificate type {} ({}) \
                     is only sold for terms of {} days",
                    cert_type.id,
                    cert_type.name,
                    join(&cert_type.terms)
                ))
            }),
        _ => Ok(configured),
    }
}

fn join(terms: &[u32]) -> String {
    let list: Vec<String> = terms.iter().map(u32::to_string).collect();
    list.join(", ")
}

/// The `subjAltNames` string: every DNS name then every IP address of the
/// request (the common name when there are none), comma-separated, without
/// duplicates.
pub fn subject_alt_names(request: &CertificateRequest) -> Result<String, ConnectorError> {
    let mut names: Vec<&str> = Vec::new();
    let requested = request
        .dns_names
        .iter()
        .chain(request.ip_addresses.iter())
        .map(String::as_str);
    for name in requested {
        let name = name.trim();
        let ok = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && !name
                .chars()
                .any(|c| c == ',' || c.is_whitespace() || c.is_control());
        if !ok {
            return Err(ConnectorError::rejected(format!(
                "{name:?} cannot be sent to SCM as a subject alternative name"
            )));
        }
        if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            names.push(name);
        }
    }
    if names.is_empty() {
        let cn = request.common_name.trim();
        if cn.is_empty() || cn.contains(',') || cn.chars().any(char::is_whitespace) {
            return Err(ConnectorError::rejected(
                "the request names no DNS name or IP address to certify",
            ));
        }
        names.push(cn);
    }
    Ok(names.join(","))
}

/// The order comments: the operator's, else a pointer back to certplane.
fn comments(settings: &Settings, request: &CertificateRequest) -> String {
    let text = match &settings.comments {
        Some(c) if !c.trim().is_empty() => c.clone(),
        _ => format!("certplane certificate {}", request.certificate_id),
    };
    text.chars().take(MAX_COMMENTS_CHARS).collect()
}

/// The enrollment body for `request`.
pub fn enroll_request(
    settings: &Settings,
    request: &CertificateRequest,
    term: u32,
) -> Result<EnrollRequest, ConnectorError> {
    let csr = request.csr_pem.trim();
    if !csr.contains("-----BEGIN") {
        return Err(ConnectorError::rejected(
            "the CSR is not PEM (no -----BEGIN line)",
        ));
    }
    Ok(EnrollRequest {
        org_id: settings.org_id,
        csr: csr.to_string(),
        subj_alt_names: subject_alt_names(request)?,
        cert_type: settings.cert_type,
        number_servers: 1,
        server_type: -1,
        term,
        comments: comments(settings, request),
        external_requester: settings.external_requester.clone(),
        custom_fields: settings.custom_fields.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types() -> Vec<CertType> {
        vec![
            CertType {
                id: 224,
                name: "OV SSL".into(),
                terms: vec![365, 730],
            },
            CertType {
                id: 98,
                name: "EV SSL".into(),
                terms: vec![365],
            },
        ]
    }

    fn request(dns: &[&str], ips: &[&str]) -> CertificateRequest {
        CertificateRequest {
            csr_pem:
                "-----BEGIN CERTIFICATE REQUEST-----\nAA==\n-----END CERTIFICATE REQUEST-----\n"
                    .into(),
            common_name: dns.first().copied().unwrap_or("").into(),
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            ip_addresses: ips.iter().map(|s| s.to_string()).collect(),
            validity_days: None,
            certificate_id: "web-1".into(),
        }
    }

    fn settings(extra: &str) -> Settings {
        Settings::from_json(&format!(
            r#"{{"customer_uri":"acme","org_id":7,"cert_type":224,"term":365{extra}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn unknown_type_and_term_name_the_allowed_values() {
        let t = types();
        assert_eq!(check_type(&t, 224, 730).unwrap().name, "OV SSL");
        let e = check_type(&t, 5, 365).unwrap_err();
        assert_eq!(e.kind(), "invalid-config");
        assert!(
            e.message().contains("224 (OV SSL), 98 (EV SSL)"),
            "{}",
            e.message()
        );
        let e = check_type(&t, 224, 400).unwrap_err();
        assert_eq!(e.kind(), "invalid-config");
        assert!(e.message().contains("`term` = 400"), "{}", e.message());
        assert!(e.message().contains("365, 730"), "{}", e.message());
        let e = check_type(&[], 224, 365).unwrap_err();
        assert!(e.message().contains("lists none"), "{}", e.message());
    }

    #[test]
    fn a_shorter_requested_validity_picks_a_shorter_term() {
        let t = &types()[0];
        assert_eq!(choose_term(t, 730, None).unwrap(), 730);
        assert_eq!(choose_term(t, 730, Some(800)).unwrap(), 730);
        assert_eq!(choose_term(t, 730, Some(400)).unwrap(), 365);
        let e = choose_term(t, 730, Some(90)).unwrap_err();
        assert_eq!(e.kind(), "rejected");
        assert!(e.message().contains("365, 730"), "{}", e.message());
    }

    #[test]
    fn names_are_one_comma_separated_string() {
        let r = request(
            &["www.example.com", "example.com", "WWW.example.com"],
            &["192.0.2.1"],
        );
        assert_eq!(
            subject_alt_names(&r).unwrap(),
            "www.example.com,example.com,192.0.2.1"
        );
        let mut only_cn = request(&[], &[]);
        only_cn.common_name = "cn.example".into();
        assert_eq!(subject_alt_names(&only_cn).unwrap(), "cn.example");
        for bad in ["a,b.example", "a b.example", ""] {
            let e = subject_alt_names(&request(&[bad], &[])).unwrap_err();
            assert_eq!(e.kind(), "rejected", "{bad:?}");
        }
        assert!(subject_alt_names(&request(&[], &[])).is_err());
    }

    #[test]
    fn body_carries_settings_and_request() {
        let s = settings(
            r#","external_requester":"pki@example.com","custom_fields":[{"name":"cc","value":"1"}]"#,
        );
        let body = enroll_request(&s, &request(&["a.example", "b.example"], &[]), 365).unwrap();
        assert_eq!(body.org_id, 7);
        assert_eq!(body.cert_type, 224);
        assert_eq!(body.subj_alt_names, "a.example,b.example");
        assert_eq!(
            (body.number_servers, body.server_type, body.term),
            (1, -1, 365)
        );
        assert_eq!(body.comments, "certplane certificate web-1");
        assert_eq!(body.external_requester.as_deref(), Some("pki@example.com"));
        assert_eq!(body.custom_fields.len(), 1);
        assert!(body.csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));

        let s = settings(r#","comments":"ordered by ops""#);
        let body = enroll_request(&s, &request(&["a.example"], &[]), 730).unwrap();
        assert_eq!(body.comments, "ordered by ops");
        assert_eq!(body.term, 730);

        let mut bad = request(&["a.example"], &[]);
        bad.csr_pem = "garbage".into();
        assert_eq!(
            enroll_request(&s, &bad, 365).unwrap_err().kind(),
            "rejected"
        );
    }
}
