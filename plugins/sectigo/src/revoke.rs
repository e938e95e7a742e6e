//! Revocation: SCM wants the sslId the certificate was issued under and a
//! free-text reason of 1 to 511 characters.

use certplane_sdk::ConnectorError;
use certplane_sdk::issuer::{RevocationReason, RevocationRequest};

use crate::scm::parse_ssl_id;

/// SCM refuses longer reasons.
pub const MAX_REASON_CHARS: usize = 511;

/// The reason as words.
pub fn reason_text(reason: RevocationReason) -> &'static str {
    match reason {
        RevocationReason::Unspecified => "Unspecified",
        RevocationReason::KeyCompromise => "Key compromise",
        RevocationReason::CaCompromise => "CA compromise",
        RevocationReason::AffiliationChanged => "Affiliation changed",
        RevocationReason::Superseded => "Superseded",
        RevocationReason::CessationOfOperation => "Cessation of operation",
    }
}

/// The `reason` field: the reason, then where the request came from.
pub fn reason(request: &RevocationRequest) -> String {
    let serial: String = request
        .serial_hex
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(64)
        .collect();
    let text = if serial.is_empty() {
        format!(
            "{} (revoked through certplane)",
            reason_text(request.reason)
        )
    } else {
        format!(
            "{} (revoked through certplane; serial {serial})",
            reason_text(request.reason)
        )
    };
    text.chars().take(MAX_REASON_CHARS).collect()
}

/// The sslId to revoke: the `ca-certificate-id` returned at issuance.
pub fn ssl_id(request: &RevocationRequest) -> Result<u64, ConnectorError> {
    let Some(id) = request.ca_certificate_id.as_deref() else {
        return Err(ConnectorError::rejected(
            "SCM revokes by sslId, but this certificate version has no ca-certificate-id \
             (the sslId returned when it was issued); revoke it in the SCM console",
        ));
    };
    parse_ssl_id(id.trim()).ok_or_else(|| {
        ConnectorError::rejected(format!(
            "ca-certificate-id {id:?} is not an SCM sslId (a positive integer)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: Option<&str>, reason: RevocationReason) -> RevocationRequest {
        RevocationRequest {
            certificate_pem: String::new(),
            serial_hex: "0a1b2c".into(),
            ca_certificate_id: id.map(str::to_string),
            reason,
        }
    }

    #[test]
    fn reasons_are_words_within_bounds() {
        for r in [
            RevocationReason::Unspecified,
            RevocationReason::KeyCompromise,
            RevocationReason::CaCompromise,
            RevocationReason::AffiliationChanged,
            RevocationReason::Superseded,
            RevocationReason::CessationOfOperation,
        ] {
            let text = reason(&request(Some("1"), r));
            assert!(!text.is_empty() && text.chars().count() <= MAX_REASON_CHARS);
            assert!(text.starts_with(reason_text(r)));
        }
        assert_eq!(
            reason(&request(Some("1"), RevocationReason::KeyCompromise)),
            "Key compromise (revoked through certplane; serial 0a1b2c)"
        );
        let mut long = request(Some("1"), RevocationReason::Superseded);
        long.serial_hex = "f".repeat(10_000);
        assert!(reason(&long).chars().count() <= MAX_REASON_CHARS);
        long.serial_hex = String::new();
        assert_eq!(reason(&long), "Superseded (revoked through certplane)");
    }

    #[test]
    fn the_ssl_id_is_required_and_numeric() {
        assert_eq!(
            ssl_id(&request(Some("123"), RevocationReason::Unspecified)).unwrap(),
            123
        );
        let e = ssl_id(&request(None, RevocationReason::Unspecified)).unwrap_err();
        assert_eq!(e.kind(), "rejected");
        assert!(e.message().contains("ca-certificate-id"), "{}", e.message());
        let e = ssl_id(&request(Some("../x"), RevocationReason::Unspecified)).unwrap_err();
        assert_eq!(e.kind(), "rejected");
    }
}
