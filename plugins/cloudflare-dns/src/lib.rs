//! `cloudflare-dns`: a certplane DNS solver that publishes ACME dns-01 TXT
//! records in a Cloudflare zone through the Cloudflare API v4.
//!
//! Settings (see [`config::SETTINGS_SCHEMA`]): `base_url` (default
//! `https://api.cloudflare.com/client/v4`), `zone_id` (optional; else the
//! zone is looked up by name), `ttl` (default 60). Secret: `api_token`, sent
//! as `Authorization: Bearer`.
//!
//! - `validate-config`: `GET /user/tokens/verify` (the status must be
//!   `active`); account-owned tokens are refused there, so on 401/403 the
//!   token is tried on `GET /zones` (or, with `zone_id`, on the zone's
//!   records) instead. With `zone_id`, also one `GET
//!   /zones/{zone_id}/dns_records` to prove the zone exists and is readable.
//! - `present`: zone id → list the TXT records of the name → nothing to do
//!   when the value is there, else `POST` it. A concurrent identical create
//!   (Cloudflare code 81057/81058) is success. Other values under the same
//!   name stay: a wildcard and its apex need two.
//! - `cleanup`: delete exactly the TXT records of the name whose value is
//!   the given one (quotes tolerated); none is success.
//!
//! Errors: 401/403 `unauthorized`, 404 or an unknown zone `invalid-config`,
//! 429 `rate-limited` with `Retry-After`, 5xx and transport failures
//! `transient`, other 4xx (validation errors) `rejected`.

pub mod api;
pub mod config;
pub mod records;

use certplane_sdk::bindings::dns_solver::exports::certplane::connector::dns_solver_api::{
    Guest, TxtRecord,
};
use certplane_sdk::{ConnectorError, PluginInfo, log};

use api::{CODE_IDENTICAL_RECORD_EXISTS, CODE_RECORD_EXISTS, Client, Failure};
use config::Settings;
use records::Wanted;

/// The connector's name; equals the manifest's `name`.
pub const NAME: &str = "cloudflare-dns";

/// The exported component.
pub struct CloudflareDns;

fn client(settings: &Settings) -> Result<Client, ConnectorError> {
    Ok(Client::new(&settings.base_url, &config::api_token()?))
}

/// The zone id: the operator's, or looked up by the zone's name.
fn zone_id(client: &Client, settings: &Settings, zone: &str) -> Result<String, ConnectorError> {
    if let Some(id) = &settings.zone_id {
        return Ok(id.clone());
    }
    match client.zone_by_name(zone) {
        Ok(Some(z)) => Ok(z.id),
        Ok(None) => Err(ConnectorError::invalid_config(format!(
            "GET /zones?name={zone}: no zone named {zone} is visible to this API token: check the \
             zone's name, that the token has Zone:Read on it, or set `zone_id`"
        ))),
        Err(f) => Err(f.into_error()),
    }
}

fn validate() -> Result<(), ConnectorError> {
    let settings = Settings::load()?;
    let client = client(&settings)?;
    match client.verify_token() {
        Ok(status) if status == "active" => {}
        Ok(status) => {
            return Err(ConnectorError::unauthorized(format!(
                "GET /user/tokens/verify: the API token in secret `api_token` is {status:?}, not \
                 active"
            )));
        }
        // Not a user token; an account-owned token proves itself on the
        // calls it will make.
        Err(Failure::Api(e)) if matches!(e.status, 401 | 403) => {
            log::debug!(
                "{}: HTTP {}; trying the token as an account-owned token",
                e.what,
                e.status
            );
            if settings.zone_id.is_none() {
                client.probe_zones().map_err(Failure::into_error)?;
            }
        }
        Err(f) => return Err(f.into_error()),
    }
    if let Some(id) = &settings.zone_id {
        client.probe_records(id).map_err(Failure::into_error)?;
    }
    Ok(())
}

fn present(wanted: &Wanted) -> Result<(), ConnectorError> {
    let settings = Settings::load()?;
    let client = client(&settings)?;
    let zone = zone_id(&client, &settings, &wanted.zone)?;
    let existing = client
        .txt_records(&zone, &wanted.name)
        .map_err(Failure::into_error)?;
    if existing.iter().any(|r| records::matches(r, wanted)) {
        log::info!("TXT {} already holds the value; nothing to do", wanted.name);
        return Ok(());
    }
    match client.create_txt(&zone, &wanted.name, &wanted.value, settings.ttl) {
        Ok(r) => {
            log::info!("TXT {} created (record {})", wanted.name, r.id);
            Ok(())
        }
        // Created meanwhile by someone else (a retried call, say): the
        // record we want is there.
        Err(Failure::Api(e))
            if e.status == 400
                && e.has_code(&[CODE_RECORD_EXISTS, CODE_IDENTICAL_RECORD_EXISTS]) =>
        {
            log::info!(
                "TXT {} already exists (Cloudflare: {})",
                wanted.name,
                e.detail
            );
            Ok(())
        }
        Err(f) => Err(f.into_error()),
    }
}

fn cleanup(wanted: &Wanted) -> Result<(), ConnectorError> {
    let settings = Settings::load()?;
    let client = client(&settings)?;
    let zone = zone_id(&client, &settings, &wanted.zone)?;
    let existing = client
        .txt_records(&zone, &wanted.name)
        .map_err(Failure::into_error)?;
    let mut first_error = None;
    let mut deleted = 0;
    for r in existing.iter().filter(|r| records::matches(r, wanted)) {
        match client.delete_record(&zone, &r.id) {
            Ok(()) => deleted += 1,
            // Deleted meanwhile: what cleanup wants.
            Err(Failure::Api(e)) if e.status == 404 => {}
            // Keep deleting the others; report the first failure.
            Err(f) => {
                let e = f.into_error();
                log::warn!("TXT {} record {}: {}", wanted.name, r.id, e.message());
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    log::info!(
        "TXT {}: {deleted} record(s) with the value deleted",
        wanted.name
    );
    Ok(())
}

impl Guest for CloudflareDns {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Publishes ACME dns-01 TXT records through the Cloudflare API v4".into(),
            settings_schema: config::SETTINGS_SCHEMA.into(),
            secret_names: vec![config::API_TOKEN.into()],
        }
    }

    fn validate_config() -> Result<(), ConnectorError> {
        validate()
    }

    fn present(txt: TxtRecord) -> Result<(), ConnectorError> {
        present(&records::check(&txt.zone, &txt.name, &txt.value)?)
    }

    fn cleanup(txt: TxtRecord) -> Result<(), ConnectorError> {
        cleanup(&records::check(&txt.zone, &txt.name, &txt.value)?)
    }
}

// The SDK has no `export_dns_solver!` wrapper yet; like its wrappers, export
// only on wasm32 so the crate also builds natively for unit tests.
#[cfg(target_arch = "wasm32")]
certplane_sdk::bindings::dns_solver::export_dns_solver!(CloudflareDns);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_matches_the_manifest() {
        let info = CloudflareDns::describe();
        assert_eq!(info.name, NAME);
        assert_eq!(info.secret_names, ["api_token"]);
        let manifest = include_str!("../plugin.toml");
        assert!(manifest.contains(&format!("name = \"{NAME}\"")));
        assert!(manifest.contains(&format!("version = \"{}\"", info.version)));
        assert!(manifest.contains("kind = \"dns-solver\""));
    }
}
