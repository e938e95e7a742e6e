//! CertCentral's error answers mapped to the contract's error classes.
//!
//! Which class a status means depends on what was being done: a `404` while
//! ordering means the configured product (or base URL) does not exist,
//! while polling it means the order is gone.

use certplane_sdk::ConnectorError;

use crate::api::ErrorBody;

/// Backoff suggested on a `429`: CertCentral sends no `Retry-After`, and its
/// limits (about 1000 requests per 3–5 minutes, 100 per 5 seconds, per key)
/// reset within minutes.
pub const RATE_LIMIT_BACKOFF_SECS: u32 = 60;

/// How many bytes of a body that is not CertCentral's error shape messages
/// quote.
const SNIPPET: usize = 300;

/// What the connector was doing when CertCentral answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `GET /user/me`.
    CheckKey,
    /// `POST /order/certificate/{product}`.
    PlaceOrder,
    /// `GET /order/certificate/{order_id}`.
    GetOrder,
    /// `GET /certificate/{id}/download/format/pem_all`.
    Download,
    /// `PUT /certificate/{id}/revoke`.
    Revoke,
}

/// Error codes that are about the instance's settings rather than about the
/// certificate asked for: they become `invalid-config`, so the operator is
/// told to fix the instance instead of the job failing obscurely.
const SETTINGS_CODE_WORDS: [&str; 7] = [
    "organization",
    "product",
    "signature_hash",
    "server_platform",
    "payment",
    "validity",
    "container",
];

/// `code: message; code: message`, or the start of the body when it is not
/// the documented error shape.
pub fn describe_body(body: &[u8]) -> String {
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body)
        && !parsed.errors.is_empty()
    {
        return parsed
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                (true, _) => e.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    let cut = &body[..body.len().min(SNIPPET)];
    let text: String = String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    text.trim().to_string()
}

fn codes(body: &[u8]) -> Vec<String> {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|b| {
            b.errors
                .into_iter()
                .map(|e| e.code.to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default()
}

fn about_settings(body: &[u8]) -> bool {
    codes(body)
        .iter()
        .any(|c| SETTINGS_CODE_WORDS.iter().any(|w| c.contains(w)))
}

/// The error for a non-2xx answer `status` to `request` (e.g.
/// `POST https://.../order/certificate/ssl_basic`) made for `op`;
/// `retry_after` is the `Retry-After` hint, if CertCentral sent one.
pub fn status_error(
    op: Op,
    request: &str,
    status: u16,
    retry_after: Option<u32>,
    body: &[u8],
) -> ConnectorError {
    let detail = describe_body(body);
    let msg = if detail.is_empty() {
        format!("{request}: HTTP {status}")
    } else {
        format!("{request}: HTTP {status}: {detail}")
    };
    match status {
        401 | 403 => ConnectorError::unauthorized(format!(
            "{msg} (check the `api_key` secret and the permissions of the key's user)"
        )),
        429 => {
            ConnectorError::rate_limited(Some(retry_after.unwrap_or(RATE_LIMIT_BACKOFF_SECS)), msg)
        }
        503 if retry_after.is_some() => ConnectorError::rate_limited(retry_after, msg),
        408 | 500..=599 => ConnectorError::transient(msg),
        404 => match op {
            Op::CheckKey | Op::PlaceOrder => ConnectorError::invalid_config(format!(
                "{msg} (check the `base_url` and `product` settings)"
            )),
            Op::GetOrder | Op::Download | Op::Revoke => ConnectorError::rejected(msg),
        },
        _ if op == Op::CheckKey || about_settings(body) => ConnectorError::invalid_config(msg),
        _ => ConnectorError::rejected(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(code: &str, message: &str) -> Vec<u8> {
        serde_json::json!({"errors": [{"code": code, "message": message}]})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn messages_carry_code_and_message() {
        let e = status_error(
            Op::GetOrder,
            "GET https://x/order/certificate/9",
            404,
            None,
            &errors("not_found|order", "Order not found"),
        );
        assert_eq!(e.kind(), "rejected");
        assert_eq!(
            e.message(),
            "GET https://x/order/certificate/9: HTTP 404: not_found|order: Order not found"
        );
        let two = br#"{"errors":[{"code":"a","message":"one"},{"code":"b"}]}"#;
        assert_eq!(describe_body(two), "a: one; b");
        assert_eq!(
            describe_body(b"<html>\nBad gateway</html>"),
            "<html> Bad gateway</html>"
        );
    }

    #[test]
    fn classes_follow_status_and_operation() {
        let body = errors("x", "y");
        let class = |op, status, retry| status_error(op, "R", status, retry, &body);
        assert_eq!(class(Op::PlaceOrder, 401, None).kind(), "unauthorized");
        let denied = status_error(
            Op::Revoke,
            "R",
            403,
            None,
            &errors("access_denied|missing_permission", "no"),
        );
        assert_eq!(denied.kind(), "unauthorized");
        assert!(
            denied
                .message()
                .contains("access_denied|missing_permission")
        );
        for (op, status, kind) in [
            (Op::PlaceOrder, 500, "transient"),
            (Op::GetOrder, 503, "transient"),
            (Op::Download, 502, "transient"),
            (Op::PlaceOrder, 408, "transient"),
            (Op::PlaceOrder, 404, "invalid-config"),
            (Op::CheckKey, 404, "invalid-config"),
            (Op::CheckKey, 400, "invalid-config"),
            (Op::GetOrder, 404, "rejected"),
            (Op::Revoke, 404, "rejected"),
            (Op::PlaceOrder, 400, "rejected"),
            (Op::PlaceOrder, 409, "rejected"),
        ] {
            assert_eq!(class(op, status, None).kind(), kind, "{op:?} {status}");
        }
    }

    #[test]
    fn rate_limits_get_a_backoff_when_digicert_gives_none() {
        let limited = status_error(
            Op::PlaceOrder,
            "R",
            429,
            None,
            &errors("request_limit_exceeded", "slow down"),
        );
        match limited {
            ConnectorError::RateLimited(r) => {
                assert_eq!(r.retry_after_secs, Some(RATE_LIMIT_BACKOFF_SECS));
                assert!(r.message.contains("request_limit_exceeded"));
            }
            other => panic!("{other:?}"),
        }
        match status_error(Op::GetOrder, "R", 429, Some(7), b"") {
            ConnectorError::RateLimited(r) => assert_eq!(r.retry_after_secs, Some(7)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            status_error(Op::GetOrder, "R", 503, Some(9), b"").kind(),
            "rate-limited"
        );
    }

    #[test]
    fn bad_requests_about_settings_are_configuration_errors() {
        for code in [
            "invalid_organization_id",
            "missing_field|organization.id",
            "invalid_product",
            "invalid_signature_hash",
            "invalid_order_validity",
            "invalid_payment_method",
        ] {
            let e = status_error(Op::PlaceOrder, "R", 400, None, &errors(code, "m"));
            assert_eq!(e.kind(), "invalid-config", "{code}");
        }
        for code in ["bad_request_format", "invalid_csr", "invalid_common_name"] {
            let e = status_error(Op::PlaceOrder, "R", 400, None, &errors(code, "m"));
            assert_eq!(e.kind(), "rejected", "{code}");
        }
    }
}
