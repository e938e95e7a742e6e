//! Revocation by the account that ordered the certificate (RFC 8555
//! section 7.6).

use certplane_sdk::{ConnectorError, log, pem};
use serde_json::json;

use crate::account;
use crate::bindings::{RevocationReason, RevocationRequest};
use crate::jws::{Payload, b64};
use crate::nonce::{Client, Directory};
use crate::settings::Settings;

/// The RFC 5280 CRLReason code of a reason.
pub fn reason_code(reason: RevocationReason) -> u8 {
    match reason {
        RevocationReason::Unspecified => 0,
        RevocationReason::KeyCompromise => 1,
        RevocationReason::CaCompromise => 2,
        RevocationReason::AffiliationChanged => 3,
        RevocationReason::Superseded => 4,
        RevocationReason::CessationOfOperation => 5,
    }
}

/// `revoke`: revokeCert signed with the instance's account.
pub fn revoke(request: &RevocationRequest) -> Result<(), ConnectorError> {
    let settings = Settings::load()?;
    let certs = pem::certificates(&request.certificate_pem)
        .map_err(|e| ConnectorError::rejected(format!("the certificate to revoke: {e}")))?;
    let leaf = certs
        .first()
        .ok_or_else(|| ConnectorError::rejected("the certificate to revoke is missing"))?;
    let directory = Directory::fetch(&settings.directory_url)?;
    let url = directory.revoke_cert.clone().ok_or_else(|| {
        ConnectorError::unsupported("this CA's directory has no revokeCert resource")
    })?;
    let key = account::load_or_create_key()?;
    let mut client = Client::new(directory.new_nonce.as_str(), key);
    account::ensure(&mut client, &directory, &settings)?;
    let payload = json!({
        "certificate": b64(&leaf.der),
        "reason": reason_code(request.reason),
    });
    match client.post(&url, Payload::Json(&payload)) {
        Ok(_) => {
            log::info!("certificate {} revoked", request.serial_hex);
            Ok(())
        }
        Err(e) if e.is("alreadyRevoked") => {
            log::info!("certificate {} was already revoked", request.serial_hex);
            Ok(())
        }
        Err(e) => Err(crate::order::submit_error(
            e,
            "revoking the certificate (revokeCert)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_are_rfc5280s() {
        assert_eq!(reason_code(RevocationReason::Unspecified), 0);
        assert_eq!(reason_code(RevocationReason::KeyCompromise), 1);
        assert_eq!(reason_code(RevocationReason::Superseded), 4);
        assert_eq!(reason_code(RevocationReason::CessationOfOperation), 5);
    }
}
