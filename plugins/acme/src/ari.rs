//! ACME Renewal Information (RFC 9773): the certificate identifier, the
//! CA's suggested renewal window, and the `replaces` field of a renewal's
//! newOrder.

use certplane_sdk::http::Method;
use certplane_sdk::{ConnectorError, log, pem};
use const_oid::db::rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER;
use der::Decode;
use serde::Deserialize;
use x509_cert::Certificate;
use x509_cert::ext::pkix::AuthorityKeyIdentifier;

use crate::jws::b64;
use crate::nonce::{Directory, request, status_error};

/// A suggested renewal window, in Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Renew no earlier than this.
    pub start: u64,
    /// Renew before this.
    pub end: u64,
    /// Why the window is early, when the CA says.
    pub explanation_url: Option<String>,
    /// When to ask again (`Retry-After`).
    pub retry_after_secs: Option<u32>,
}

/// The RFC 9773 certificate identifier of a DER certificate:
/// base64url(AKI keyIdentifier) "." base64url(serial number bytes as DER
/// encodes them, leading zero included).
pub fn cert_id(der: &[u8]) -> Result<String, String> {
    let cert = Certificate::from_der(der).map_err(|e| format!("not a certificate: {e}"))?;
    let tbs = &cert.tbs_certificate;
    let ext = tbs
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == ID_CE_AUTHORITY_KEY_IDENTIFIER)
        .ok_or("the certificate has no authority key identifier")?;
    let aki = AuthorityKeyIdentifier::from_der(ext.extn_value.as_bytes())
        .map_err(|e| format!("unreadable authority key identifier: {e}"))?;
    let key_id = aki
        .key_identifier
        .ok_or("the authority key identifier has no keyIdentifier")?;
    Ok(format!(
        "{}.{}",
        b64(key_id.as_bytes()),
        b64(tbs.serial_number.as_bytes())
    ))
}

/// [`cert_id`] of the first certificate of a PEM text.
pub fn cert_id_from_pem(certificate_pem: &str) -> Result<String, String> {
    let certs = pem::certificates(certificate_pem).map_err(|e| e.to_string())?;
    let leaf = certs.first().ok_or("no certificate")?;
    cert_id(&leaf.der)
}

/// The `replaces` value of a renewal's newOrder: the predecessor's
/// identifier, when the CA offers renewal information.
pub fn replaces(directory: &Directory, predecessor_pem: Option<&str>) -> Option<String> {
    directory.renewal_info.as_ref()?;
    match cert_id_from_pem(predecessor_pem?) {
        Ok(id) => Some(id),
        Err(e) => {
            log::warn!("not marking the order as a replacement: {e}");
            None
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RenewalInfo {
    suggested_window: SuggestedWindow,
    #[serde(default, rename = "explanationURL")]
    explanation_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SuggestedWindow {
    start: String,
    end: String,
}

/// The CA's suggested window for `certificate_pem`; `None` when the
/// directory has no `renewalInfo` or the CA knows nothing of the
/// certificate (404).
pub fn renewal_window(
    directory: &Directory,
    certificate_pem: &str,
) -> Result<Option<Window>, ConnectorError> {
    let Some(base) = directory.renewal_info.as_deref() else {
        return Ok(None);
    };
    let id = cert_id_from_pem(certificate_pem)
        .map_err(|e| ConnectorError::rejected(format!("renewal information: {e}")))?;
    let url = format!("{}/{id}", base.trim_end_matches('/'));
    let response = request(Method::Get, &url)
        .header("accept", "application/json")
        .send()
        .map_err(|e| e.context("fetching renewal information"))?;
    if response.status() == 404 {
        log::info!("the CA has no renewal information for certificate {id}");
        return Ok(None);
    }
    if !response.is_success() {
        return Err(status_error(&response).into_error("fetching renewal information"));
    }
    let info: RenewalInfo = response.json()?;
    let window = window_from(info, response.retry_after_secs())
        .map_err(|e| ConnectorError::transient(format!("renewal information for {id}: {e}")))?;
    Ok(Some(window))
}

fn window_from(info: RenewalInfo, retry_after_secs: Option<u32>) -> Result<Window, String> {
    let start = parse_rfc3339(&info.suggested_window.start)
        .ok_or_else(|| format!("bad start time {:?}", info.suggested_window.start))?;
    let end = parse_rfc3339(&info.suggested_window.end)
        .ok_or_else(|| format!("bad end time {:?}", info.suggested_window.end))?;
    if end < start {
        return Err(format!(
            "the window ends ({end}) before it starts ({start})"
        ));
    }
    Ok(Window {
        start,
        end,
        explanation_url: info.explanation_url,
        retry_after_secs,
    })
}

/// Parses an RFC 3339 date-time (`2025-01-02T03:04:05Z`, fractions and
/// offsets allowed) to Unix seconds, fractions dropped; `None` when it is
/// not one or lies before 1970.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.trim().as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = b.get(range)?;
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &b[19..];
    if rest.first() == Some(&b'.') {
        let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        rest = &rest[1 + digits..];
    }
    let offset = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let d = |c: u8| i64::from(c - b'0');
            let minutes = (d(*h1) * 10 + d(*h2)) * 60 + d(*m1) * 10 + d(*m2);
            if *sign == b'+' {
                minutes * 60
            } else {
                -minutes * 60
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(secs).ok()
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made with openssl: AKI keyid
    /// 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4 and
    /// serial 0x87654321 (DER 00 87 65 43 21), the values of RFC 9773's
    /// example (section 4.1), so its certID must be the RFC's.
    const RFC_EXAMPLE: &str = include_str!("../testdata/ari-example.pem");

    #[test]
    fn cert_id_matches_rfc9773_example() {
        assert_eq!(
            cert_id_from_pem(RFC_EXAMPLE).unwrap(),
            "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
        );
        assert!(cert_id(b"junk").is_err());
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2025-01-02T03:04:05Z"), Some(1_735_787_045));
        assert_eq!(
            parse_rfc3339("2025-01-02T03:04:05.123456Z"),
            Some(1_735_787_045)
        );
        assert_eq!(
            parse_rfc3339("2025-01-02T05:04:05+02:00"),
            Some(1_735_787_045)
        );
        assert_eq!(
            parse_rfc3339("2025-01-01T22:04:05-05:00"),
            Some(1_735_787_045)
        );
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Some(1_709_164_800));
        for bad in [
            "",
            "2025-01-02",
            "2025-01-02T03:04:05",
            "2025-13-02T03:04:05Z",
            "2023-02-29T00:00:00Z",
            "2025-01-02T03:04:05.Z",
            "2025-01-02T03:04:05+0200",
            "1969-12-31T23:59:59Z",
            "2025-01-02X03:04:05Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn windows_are_read_and_checked() {
        let info: RenewalInfo = serde_json::from_str(
            r#"{"suggestedWindow":{"start":"2025-01-02T00:00:00Z","end":"2025-01-03T00:00:00Z"},
                "explanationURL":"https://ca/why"}"#,
        )
        .unwrap();
        let w = window_from(info, Some(21600)).unwrap();
        assert_eq!(
            w,
            Window {
                start: 1_735_776_000,
                end: 1_735_862_400,
                explanation_url: Some("https://ca/why".into()),
                retry_after_secs: Some(21600),
            }
        );
        let backwards: RenewalInfo = serde_json::from_str(
            r#"{"suggestedWindow":{"start":"2025-01-03T00:00:00Z","end":"2025-01-02T00:00:00Z"}}"#,
        )
        .unwrap();
        assert!(window_from(backwards, None).is_err());
    }
}
