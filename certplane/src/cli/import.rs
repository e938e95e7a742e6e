//! `certplane certs import FILE`: many certificates from one JSON file,
//! sent in batches of `POST /certificates/batch`.
//!
//! Each batch is all or nothing on the host. A file longer than one batch
//! is sent batch after batch, so a refusal leaves the batches before it
//! created: the error says how many and the item at fault by its place in
//! the file, and importing the rest of the file again is safe (names are
//! unique, so a repeat of a created item is refused, not duplicated).

use std::io::Read as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use certplane_client::ClientError;
use serde_json::{Value, json};

use super::Ctx;
use super::output::{self, OutputFormat};

/// Most certificates per request (the host's limit).
const BATCH: usize = certplane_host::api::MAX_CREATE_BATCH;

/// Reads a JSON array of `POST /certificates` bodies from `file` (`-`:
/// standard input).
pub(super) fn read_items(file: &Path) -> anyhow::Result<Vec<Value>> {
    let text = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let Value::Array(items) = value else {
        bail!(
            "{} must hold a JSON array of certificates, each as `POST /certificates` takes one",
            file.display()
        );
    };
    if items.is_empty() {
        bail!("{} holds no certificates", file.display());
    }
    Ok(items)
}

/// Creates `items` in batches; prints the certificates created (a table
/// or one JSON array) and, between batches, progress on standard error.
pub(super) async fn import(ctx: &Ctx, items: Vec<Value>) -> anyhow::Result<()> {
    let total = items.len();
    let mut created: Vec<Value> = Vec::with_capacity(total);
    for (n, batch) in items.chunks(BATCH).enumerate() {
        let first = n * BATCH;
        let reply = match ctx
            .client
            .post(
                "/certificates/batch",
                Some(&json!({ "certificates": batch })),
            )
            .await
        {
            Ok(reply) => reply,
            Err(e) => {
                if !created.is_empty() {
                    print_created(ctx, &created);
                }
                return Err(refused(e, first, created.len(), total));
            }
        };
        let items = reply
            .json
            .as_ref()
            .and_then(|v| v.get("items"))
            .and_then(Value::as_array)
            .context("the host's answer lists no certificates")?;
        created.extend(items.iter().cloned());
        if total > BATCH {
            eprintln!("created {} of {total} certificates", created.len());
        }
    }
    print_created(ctx, &created);
    Ok(())
}

fn print_created(ctx: &Ctx, created: &[Value]) {
    match ctx.output {
        OutputFormat::Json => print!("{}", output::json(&Value::Array(created.to_vec()))),
        OutputFormat::Table => print!("{}", output::table(super::CERT_COLUMNS, created)),
    }
}

/// The error of a refused batch starting at item `first` of the file, its
/// `certificates[i]` turned into the item's place in the file.
fn refused(err: ClientError, first: usize, created: usize, total: usize) -> anyhow::Error {
    let at = match &err {
        ClientError::Api {
            param: Some(param), ..
        } => param
            .strip_prefix("certificates[")
            .and_then(|rest| rest.split(']').next())
            .and_then(|i| i.parse::<usize>().ok())
            .map(|i| format!(" (item {} of the file)", first + i)),
        _ => None,
    };
    let done = if created > 0 {
        format!(
            "; the {created} certificates before item {first} were created (listed above), \
             items {first} to {} were not",
            total - 1
        )
    } else {
        "; nothing was created".to_owned()
    };
    anyhow::Error::new(err).context(format!(
        "the host refused the batch from item {first}{}{done}",
        at.unwrap_or_default()
    ))
}
