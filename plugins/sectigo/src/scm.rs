//! The SCM REST API calls this connector makes, one function each.
//!
//! Every request carries the `login`, `password` and `customerUri` headers
//! SCM authenticates with. Paths are relative to the `base_url` setting:
//!
//! | call | request |
//! | --- | --- |
//! | [`Scm::types`] | `GET /ssl/v1/types` |
//! | [`Scm::enroll`] | `POST /ssl/v1/enroll` |
//! | [`Scm::collect`] | `GET /ssl/v1/collect/{sslId}/pem` (certificate and chain as raw PEM) |
//! | [`Scm::status`] | `GET /ssl/v1/{sslId}` |
//! | [`Scm::revoke`] | `POST /ssl/v1/revoke/{sslId}` |

use core::time::Duration;

use certplane_sdk::{ConnectorError, http};
use serde::{Deserialize, Serialize};

use crate::config::{Credentials, CustomField, Settings};
use crate::errors;

/// Two requests must fit in the call deadline the manifest asks for.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(12);

/// A certificate with its chain is a few KiB; the type list is small too.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// The collect format: certificate with its chain, PEM.
pub const COLLECT_FORMAT: &str = "pem";

/// One SSL certificate type of the account.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct CertType {
    /// The id `certType` takes.
    pub id: i64,
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// The terms (days) it can be ordered for.
    #[serde(default)]
    pub terms: Vec<u32>,
}

/// The body of `POST /ssl/v1/enroll`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollRequest {
    /// Organization or department id.
    pub org_id: i64,
    /// The CSR, PEM.
    pub csr: String,
    /// Every name to certify, comma-separated: SCM wants one string here,
    /// not a JSON array.
    pub subj_alt_names: String,
    /// Certificate type id.
    pub cert_type: i64,
    /// Always 1: one server licence.
    pub number_servers: u32,
    /// Always -1: "other" server software.
    pub server_type: i32,
    /// Term in days.
    pub term: u32,
    /// Order comments.
    pub comments: String,
    /// Requester e-mail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_requester: Option<String>,
    /// Custom fields.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub custom_fields: Vec<CustomField>,
}

/// What `POST /ssl/v1/enroll` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrolled {
    /// The order's certificate id (collect, status, revoke).
    pub ssl_id: u64,
    /// The renewal id SCM hands out with it.
    pub renew_id: Option<String>,
}

/// The fields of `GET /ssl/v1/{sslId}` this connector reads.
#[derive(Clone, Debug, Deserialize)]
pub struct CertStatus {
    /// `Requested`, `Applied`, `Issued`, `Declined`, ...
    #[serde(default)]
    pub status: String,
}

/// What a collect answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Collected {
    /// The certificate and its chain, PEM, in SCM's order.
    Ready(String),
    /// Not issued yet (SCM error -183).
    NotYet,
}

/// An authenticated SCM client.
pub struct Scm {
    base: String,
    customer_uri: String,
    credentials: Credentials,
}

impl Scm {
    /// A client for these settings and credentials.
    pub fn new(settings: &Settings, credentials: Credentials) -> Scm {
        Scm {
            base: settings.base().to_string(),
            customer_uri: settings.customer_uri.clone(),
            credentials,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/ssl/v1/{path}", self.base)
    }

    fn send(&self, request: http::Request) -> Result<(String, http::Response), ConnectorError> {
        let what = format!(
            "{} {}",
            request.method_ref(),
            http::redact_url(request.url())
        );
        let response = request
            .header("login", self.credentials.login.as_str())
            .header("password", self.credentials.password.as_str())
            .header("customerUri", self.customer_uri.as_str())
            .timeout(CONNECT_TIMEOUT, READ_TIMEOUT)
            .max_response_bytes(MAX_RESPONSE_BYTES)
            .send()?;
        Ok((what, response))
    }

    /// Sends, and turns a non-2xx answer into its error.
    fn send_ok(&self, request: http::Request) -> Result<(String, http::Response), ConnectorError> {
        let (what, response) = self.send(request)?;
        if response.is_success() {
            return Ok((what, response));
        }
        Err(errors::status_error(
            &what,
            response.status(),
            response.retry_after_secs(),
            response.body(),
        ))
    }

    /// The SSL certificate types of the account.
    pub fn types(&self) -> Result<Vec<CertType>, ConnectorError> {
        let request = http::Request::get(self.url("types")).header("accept", "application/json");
        let (_, response) = self.send_ok(request)?;
        response.json()
    }

    /// Places an order.
    pub fn enroll(&self, body: &EnrollRequest) -> Result<Enrolled, ConnectorError> {
        let request = http::Request::post(self.url("enroll"))
            .header("accept", "application/json")
            .json(body)?;
        let (what, response) = self.send_ok(request)?;
        let value: serde_json::Value = response.json()?;
        parse_enrolled(&value).map_err(|why| {
            ConnectorError::transient(format!(
                "{what}: HTTP {}: the answer is not an enrollment ({why}): {value}",
                response.status()
            ))
        })
    }

    /// Tries to download the certificate with its chain.
    pub fn collect(&self, ssl_id: u64) -> Result<Collected, ConnectorError> {
        let request = http::Request::get(self.url(&format!("collect/{ssl_id}/{COLLECT_FORMAT}")))
            .header("accept", "application/x-pem-file, text/plain, */*");
        let (what, response) = self.send(request)?;
        if response.is_success() {
            return Ok(Collected::Ready(response.text()?.to_string()));
        }
        errors::collect_error(
            &what,
            response.status(),
            response.retry_after_secs(),
            response.body(),
        )?;
        Ok(Collected::NotYet)
    }

    /// The order's status.
    pub fn status(&self, ssl_id: u64) -> Result<CertStatus, ConnectorError> {
        let request =
            http::Request::get(self.url(&ssl_id.to_string())).header("accept", "application/json");
        let (_, response) = self.send_ok(request)?;
        response.json()
    }

    /// Revokes the certificate.
    pub fn revoke(&self, ssl_id: u64, reason: &str) -> Result<(), ConnectorError> {
        let request = http::Request::post(self.url(&format!("revoke/{ssl_id}")))
            .json(&serde_json::json!({ "reason": reason }))?;
        self.send_ok(request)?;
        Ok(())
    }
}

/// Reads `{"renewId": "...", "sslId": N}`; `sslId` may come as a number or a
/// string of digits.
pub fn parse_enrolled(value: &serde_json::Value) -> Result<Enrolled, String> {
    let ssl_id = match value.get("sslId") {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => parse_ssl_id(s),
        _ => return Err("no sslId".into()),
    }
    .ok_or("sslId is not a positive integer")?;
    let renew_id = match value.get("renewId") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    Ok(Enrolled { ssl_id, renew_id })
}

/// An sslId as written in order ids and `ca-certificate-id`: decimal digits
/// only, since it goes into URL paths.
pub fn parse_ssl_id(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn enroll_body_has_scm_names_and_a_string_of_names() {
        let body = EnrollRequest {
            org_id: 7,
            csr: "CSR".into(),
            subj_alt_names: "a.example,b.example".into(),
            cert_type: 224,
            number_servers: 1,
            server_type: -1,
            term: 365,
            comments: "c".into(),
            external_requester: None,
            custom_fields: vec![],
        };
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(
            v,
            json!({"orgId":7,"csr":"CSR","subjAltNames":"a.example,b.example","certType":224,
                   "numberServers":1,"serverType":-1,"term":365,"comments":"c"})
        );
        let body = EnrollRequest {
            external_requester: Some("x@y.example".into()),
            custom_fields: vec![CustomField {
                name: "n".into(),
                value: "v".into(),
            }],
            ..body
        };
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(v["externalRequester"], "x@y.example");
        assert_eq!(v["customFields"], json!([{"name":"n","value":"v"}]));
    }

    #[test]
    fn enroll_answers_parse() {
        assert_eq!(
            parse_enrolled(&json!({"renewId":"r-1","sslId":1234})).unwrap(),
            Enrolled {
                ssl_id: 1234,
                renew_id: Some("r-1".into())
            }
        );
        assert_eq!(parse_enrolled(&json!({"sslId":"99"})).unwrap().ssl_id, 99);
        assert!(parse_enrolled(&json!({"renewId":"r"})).is_err());
        assert!(parse_enrolled(&json!({"sslId":-3})).is_err());
        assert!(parse_enrolled(&json!({"sslId":"1/../2"})).is_err());
    }

    #[test]
    fn ssl_ids_are_plain_digits() {
        assert_eq!(parse_ssl_id("42"), Some(42));
        for bad in ["", "0", "-1", "4 2", "42/", "abc", "99999999999999999999"] {
            assert_eq!(parse_ssl_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn types_parse_with_extra_fields() {
        let t: Vec<CertType> = serde_json::from_str(
            r#"[{"id":224,"name":"OV SSL","terms":[365,730],"description":"x"},{"id":5}]"#,
        )
        .unwrap();
        assert_eq!(t[0].terms, vec![365, 730]);
        assert!(t[1].terms.is_empty());
    }
}
