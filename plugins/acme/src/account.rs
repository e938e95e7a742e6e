//! The ACME account of an instance (RFC 8555 section 7.3), kept in the
//! instance's store: the P-256 key (generated on first use) and the account
//! URL of the directory it was registered with.
//!
//! The key is stored before it is registered, so a call that registers an
//! account and then fails leaves a key behind that the next call registers
//! again, and newAccount for a known key answers with the existing account:
//! one account per instance and CA, however calls fail.

use certplane_sdk::{ConnectorError, log};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::bindings::store;
use crate::jws::{self, AccountKey, Payload};
use crate::nonce::{self, Client, Directory};
use crate::problem::AcmeError;
use crate::settings::Settings;

/// Store key of the account key (raw P-256 scalar, base64url).
pub const KEY_ENTRY: &str = "acme.account_key";

/// Store key of the registered account ([`StoredAccount`] as JSON).
pub const ACCOUNT_ENTRY: &str = "acme.account";

/// The registered account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAccount {
    /// The directory it was registered with: another directory means
    /// another CA, where it does not exist.
    pub directory_url: String,
    /// The account URL (the JWS `kid`).
    pub url: String,
}

/// The stored account key; `None` when there is none (or it is unreadable).
pub fn stored_key() -> Option<AccountKey> {
    let text = store::get(KEY_ENTRY)?;
    match AccountKey::from_stored(&text) {
        Ok(key) => Some(key),
        Err(e) => {
            log::warn!("the stored ACME account key is unreadable ({e}); a new one replaces it");
            None
        }
    }
}

/// The stored account key, or a new one, stored before any use.
pub fn load_or_create_key() -> Result<AccountKey, ConnectorError> {
    if let Some(key) = stored_key() {
        return Ok(key);
    }
    let key = AccountKey::generate().map_err(ConnectorError::transient)?;
    // An account URL stored with another key is of no use to this one.
    store::delete(ACCOUNT_ENTRY);
    store::set(KEY_ENTRY, &key.to_stored()).map_err(|e| {
        ConnectorError::transient(format!("cannot keep the new ACME account key: {e:?}"))
    })?;
    log::info!(
        "generated a new ACME account key (thumbprint {})",
        key.thumbprint()
    );
    Ok(key)
}

/// The account registered with `directory_url`, when one is stored.
pub fn stored_account(directory_url: &str) -> Option<StoredAccount> {
    let text = store::get(ACCOUNT_ENTRY)?;
    let account: StoredAccount = serde_json::from_str(&text).ok()?;
    (account.directory_url == directory_url).then_some(account)
}

/// Forgets the stored account URL (the CA no longer knows it); the key
/// stays, so the next registration is for the same key.
pub fn forget_account() {
    store::delete(ACCOUNT_ENTRY);
}

/// Makes sure `client` signs as a registered account: the stored one, or a
/// new registration (stored at once).
pub fn ensure(
    client: &mut Client,
    directory: &Directory,
    settings: &Settings,
) -> Result<String, ConnectorError> {
    if let Some(account) = stored_account(&settings.directory_url) {
        client.kid = Some(account.url.clone());
        return Ok(account.url);
    }
    let eab = settings.eab()?;
    if directory.meta.external_account_required == Some(true) && eab.is_none() {
        return Err(ConnectorError::invalid_config(
            "this CA requires an external account binding: set `eab_kid` and the secret \
             `eab_hmac_key` to the values the CA issued",
        ));
    }
    let payload =
        new_account_payload(client.key(), settings, eab.as_ref(), &directory.new_account)?;
    client.kid = None;
    let response = client
        .post(&directory.new_account, Payload::Json(&payload))
        .map_err(|e| e.into_error("registering the ACME account (newAccount)"))?;
    let url = nonce::location(&response, "newAccount")
        .map_err(|e| e.into_error("registering the ACME account"))?;
    let body: Value =
        nonce::json(&response).map_err(|e| e.into_error("registering the ACME account"))?;
    if let Some(status) = body.get("status").and_then(Value::as_str)
        && status != "valid"
    {
        return Err(ConnectorError::unauthorized(format!(
            "the CA's account {url} for this key is {status}; it cannot be used again"
        )));
    }
    let stored = StoredAccount {
        directory_url: settings.directory_url.clone(),
        url: url.clone(),
    };
    let text = serde_json::to_string(&stored).unwrap_or_default();
    if let Err(e) = store::set(ACCOUNT_ENTRY, &text) {
        // Harmless: the next call's newAccount finds the same account.
        log::warn!("cannot keep the ACME account URL: {e:?}");
    }
    log::info!(
        "ACME account {url} {} with {}",
        if response.status() == 201 {
            "registered"
        } else {
            "found"
        },
        settings.directory_url
    );
    client.kid = Some(url.clone());
    Ok(url)
}

/// The newAccount request body.
pub fn new_account_payload(
    key: &AccountKey,
    settings: &Settings,
    eab: Option<&(String, Vec<u8>)>,
    new_account_url: &str,
) -> Result<Value, ConnectorError> {
    let mut payload = json!({
        "termsOfServiceAgreed": settings.terms_of_service_agreed,
        "contact": settings.contact,
    });
    if let Some((kid, mac_key)) = eab {
        let binding = jws::external_account_binding(kid, mac_key, new_account_url, &key.jwk())
            .map_err(|e| ConnectorError::invalid_config(format!("secret `eab_hmac_key`: {e}")))?;
        payload["externalAccountBinding"] = binding;
    }
    Ok(payload)
}

/// Where an error of a request signed by the stored account leaves it: when
/// the CA no longer knows the account, the stored URL is forgotten, so the
/// next attempt registers again.
pub fn account_gone(error: &AcmeError) -> bool {
    if error.is("accountDoesNotExist") {
        log::warn!("the CA no longer knows the stored ACME account; it is forgotten");
        forget_account();
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_account_payload_with_and_without_binding() {
        let key = AccountKey::generate().unwrap();
        let settings = Settings::from_json(
            r#"{"directory_url":"https://ca/dir","terms_of_service_agreed":true,
                "contact":["mailto:ops@example.com"]}"#,
        )
        .unwrap();
        let p = new_account_payload(&key, &settings, None, "https://ca/new-acct").unwrap();
        assert_eq!(
            p,
            json!({"termsOfServiceAgreed": true, "contact": ["mailto:ops@example.com"]})
        );
        let eab = ("kid-1".to_string(), vec![7u8; 32]);
        let p = new_account_payload(&key, &settings, Some(&eab), "https://ca/new-acct").unwrap();
        let binding = &p["externalAccountBinding"];
        assert!(binding["protected"].is_string() && binding["signature"].is_string());
    }

    #[test]
    fn stored_account_round_trips() {
        let a = StoredAccount {
            directory_url: "https://ca/dir".into(),
            url: "https://ca/acct/1".into(),
        };
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<StoredAccount>(&text).unwrap(), a);
    }
}
