//! Managed certificates and their issued versions.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::codec::text_enum;

text_enum! {
    /// Where the private key of a certificate is generated.
    pub enum KeySource ("key source") {
        /// On the agent of the certificate's target; never leaves it. Issuance
        /// and renewal jobs start in `AwaitingCsr`.
        Agent => "agent",
        /// By the host (stored encrypted in the version).
        Host => "host",
    }
}

text_enum! {
    /// Life-cycle state of a managed certificate.
    pub enum CertificateStatus ("certificate status") {
        /// Managed: renewed when it enters its renewal window.
        Active => "active",
        /// Kept but not renewed.
        Disabled => "disabled",
        /// No longer managed.
        Retired => "retired",
    }
}

/// A managed certificate definition.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Certificate {
    /// UUID text.
    pub id: String,
    /// Unique display name.
    pub name: String,
    /// Subject common name.
    pub common_name: String,
    /// Subject alternative names.
    #[sqlx(json)]
    pub sans: Vec<String>,
    /// Key type, e.g. `"ecdsa-p256"`, `"rsa-2048"`.
    pub key_type: String,
    /// Where the key is generated.
    pub key_source: KeySource,
    /// Issuer instance.
    pub issuer_id: String,
    /// Key-holding target (required for `KeySource::Agent`).
    pub target_id: Option<String>,
    /// Renewal window: renew this many seconds before `not_after`.
    pub renew_before_secs: i64,
    /// Owner (team, person) for notifications.
    pub owner: Option<String>,
    /// Active, disabled or retired.
    pub status: CertificateStatus,
    /// Version currently in force.
    pub current_version_id: Option<String>,
    /// Expiry of the current version.
    pub not_after: Option<DateTime<Utc>>,
    /// When the renewal sweep picks it up (`not_after - renew_before`, or
    /// creation time before the first issuance).
    pub renew_at: DateTime<Utc>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Options for the issuer (`context.options`), a JSON object.
    #[sqlx(json)]
    pub issuer_options: serde_json::Value,
    /// Options for every target (`deploy`/`remove` options), a JSON object.
    #[sqlx(json)]
    pub target_options: serde_json::Value,
    /// When the host next asks the issuer for a renewal window (issuers
    /// exporting `issuer-lifecycle`); `None`: at the next check.
    pub renewal_info_at: Option<DateTime<Utc>>,
    /// Open (not completed, not cancelled) issuance and renewal jobs: 0 or
    /// 1, kept by the database's triggers. The renewal sweep reads only
    /// certificates at 0.
    pub open_issuance: i64,
    /// Retired since (status `retired`).
    pub retired_at: Option<DateTime<Utc>>,
    /// Why the host disabled it by itself (its key-holding agent was
    /// retired); `None` when active or disabled by an operator.
    pub disabled_reason: Option<String>,
}

/// Per-certificate connector options: JSON objects handed to the issuer
/// (`context.options`) and to every target (`deploy`/`remove`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CertificateOptions {
    /// For the issuer.
    pub issuer: serde_json::Value,
    /// For every target.
    pub target: serde_json::Value,
}

impl Default for CertificateOptions {
    fn default() -> Self {
        CertificateOptions {
            issuer: serde_json::Value::Object(Default::default()),
            target: serde_json::Value::Object(Default::default()),
        }
    }
}

/// Input of [`crate::store::Store::create_certificate`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewCertificate {
    /// Unique display name.
    pub name: String,
    /// Subject common name.
    pub common_name: String,
    /// Subject alternative names.
    pub sans: Vec<String>,
    /// Key type.
    pub key_type: String,
    /// Where the key is generated.
    pub key_source: KeySource,
    /// Issuer instance id.
    pub issuer_id: String,
    /// Key-holding target id.
    pub target_id: Option<String>,
    /// Renewal window in seconds.
    pub renew_before_secs: i64,
    /// Owner.
    pub owner: Option<String>,
}

/// An issued version of a certificate.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct CertificateVersion {
    /// UUID text.
    pub id: String,
    /// The certificate.
    pub certificate_id: String,
    /// Serial number (hex).
    pub serial: String,
    /// Leaf plus chain, PEM.
    pub pem_chain: String,
    /// Validity start.
    pub not_before: DateTime<Utc>,
    /// Validity end.
    pub not_after: DateTime<Utc>,
    /// SHA-256 of the leaf DER, hex.
    pub fingerprint_sha256: String,
    /// Encrypted private key (host-generated keys only).
    #[serde(skip)]
    pub encrypted_private_key: Option<Vec<u8>>,
    /// Job that produced it.
    pub job_id: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// The CA's id of the certificate (revocation at CAs that revoke by id).
    pub ca_certificate_id: Option<String>,
    /// The CA order it was issued under.
    pub ca_order_id: Option<String>,
}

/// Input of [`crate::store::Store::record_certificate_version`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewCertificateVersion {
    /// The certificate.
    pub certificate_id: String,
    /// Serial number.
    pub serial: String,
    /// Leaf plus chain, PEM.
    pub pem_chain: String,
    /// Validity start.
    pub not_before: DateTime<Utc>,
    /// Validity end.
    pub not_after: DateTime<Utc>,
    /// SHA-256 fingerprint, hex.
    pub fingerprint_sha256: String,
    /// Encrypted private key; must be `None` for agent-generated keys.
    pub encrypted_private_key: Option<Vec<u8>>,
    /// Producing job.
    pub job_id: Option<String>,
    /// The CA's id of the certificate, when the issuer returned one.
    pub ca_certificate_id: Option<String>,
    /// The CA order it was issued under, when there was one.
    pub ca_order_id: Option<String>,
    /// The certificate's renewal window as the caller read it, when it
    /// did: the store then checks it instead of reading it again (and
    /// reads it after all when it changed meanwhile).
    pub renew_before_secs: Option<i64>,
}

/// When a version is due for renewal: `renew_before_secs` before it
/// expires, unless that window covers more than two thirds of its lifetime
/// (a 30-day certificate with a 30-day window would be due the moment it
/// is issued, and renew on every sweep). Then it renews when two thirds of
/// its lifetime have passed, and the second value is true so the caller can
/// warn that the window does not fit the certificate.
pub fn renewal_due_at(
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    renew_before_secs: i64,
) -> (DateTime<Utc>, bool) {
    let lifetime = not_after - not_before;
    let window = chrono::Duration::seconds(renew_before_secs.max(0));
    if lifetime > chrono::Duration::zero() && window * 3 <= lifetime * 2 {
        (not_after - window, false)
    } else {
        (not_before + lifetime * 2 / 3, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_longer_than_the_lifetime_renews_at_two_thirds() {
        let nb = Utc::now();
        let day = chrono::Duration::days(1);
        // 90 days, renew 30 days before: the window fits.
        assert_eq!(
            renewal_due_at(nb, nb + day * 90, 30 * 86_400),
            (nb + day * 60, false)
        );
        // 30 days, renew 30 days before: two thirds in, not at once.
        assert_eq!(
            renewal_due_at(nb, nb + day * 30, 30 * 86_400),
            (nb + day * 20, true)
        );
        // A window of exactly two thirds is honoured; a longer one is not.
        assert_eq!(
            renewal_due_at(nb, nb + day * 30, 20 * 86_400),
            (nb + day * 10, false)
        );
        assert_eq!(
            renewal_due_at(nb, nb + day * 30, 21 * 86_400),
            (nb + day * 20, true)
        );
        // A version already expired at issue (nothing to renew against).
        assert_eq!(renewal_due_at(nb, nb, 86_400), (nb, true));
    }
}
