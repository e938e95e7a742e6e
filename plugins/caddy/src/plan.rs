//! What to change in Caddy's `apps.tls.certificates`, decided from what the
//! admin API returned, as pure functions over JSON so every case is unit
//! tested natively.
//!
//! A plan is a list of single admin API writes, the one that matters most
//! first. The connector applies the first, then reads the configuration
//! again (with a new `ETag`) and plans again, until nothing is left: each
//! write is guarded by the `If-Match` of the read it was planned from, so a
//! configuration that changed in between is never overwritten with a stale
//! view, and indices are never reused across reads.

use serde_json::{Value, json};

/// The admin API path (under `/config/`) of the certificate loaders.
pub const CERTIFICATES_PATH: &str = "apps/tls/certificates";

/// A certificate loader of Caddy's TLS app that certplane writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loader {
    /// `load_pem`: the PEM text is in the configuration itself.
    Pem,
    /// `load_files`: the configuration names files Caddy reads when it
    /// loads the configuration.
    Files,
}

impl Loader {
    /// The loader's key in `apps.tls.certificates`.
    pub fn key(self) -> &'static str {
        match self {
            Loader::Pem => "load_pem",
            Loader::Files => "load_files",
        }
    }

    /// The other loader (where an earlier mode may have left entries).
    pub fn other(self) -> Loader {
        match self {
            Loader::Pem => Loader::Files,
            Loader::Files => Loader::Pem,
        }
    }
}

/// An admin API method that changes the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Appends to an array.
    Post,
    /// Creates a key (and the objects on the way to it).
    Put,
    /// Replaces an existing value.
    Patch,
    /// Deletes a value.
    Delete,
}

impl Method {
    /// The method on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// One admin API write.
#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    /// The method.
    pub method: Method,
    /// The path under `/config/`, e.g. `apps/tls/certificates/load_pem/0`.
    pub path: String,
    /// The JSON body (none for `DELETE`).
    pub body: Option<Value>,
    /// Send `Cache-Control: must-revalidate`: Caddy then reloads even when
    /// the write leaves its JSON as it was (files changed on disk).
    pub force_reload: bool,
    /// What it does, as reported in `changed`.
    pub describe: String,
}

/// The tag every entry certplane writes for `certificate_id` carries, and
/// by which its entries are found again: `<prefix>:<certificate-id>`.
pub fn id_tag(prefix: &str, certificate_id: &str) -> String {
    format!("{prefix}:{certificate_id}")
}

/// The tags of a `load_pem` entry: the prefix (what a TLS connection policy
/// selects) and the per-certificate tag.
pub fn pem_tags(prefix: &str, certificate_id: &str) -> Vec<String> {
    vec![prefix.to_string(), id_tag(prefix, certificate_id)]
}

/// The tags of a `load_files` entry: those of [`pem_tags`] and
/// `<prefix>:sha256:<fingerprint>` of the leaf in the files. The files'
/// contents are not in Caddy's JSON; this tag is, so a new certificate
/// always changes the JSON (and Caddy reloads), and a deploy whose files
/// were written but whose reload never happened (the call was cut short) is
/// recognised and finished by the next one.
pub fn files_tags(prefix: &str, certificate_id: &str, fingerprint: &str) -> Vec<String> {
    let mut tags = pem_tags(prefix, certificate_id);
    tags.push(format!("{prefix}:sha256:{fingerprint}"));
    tags
}

/// A `load_pem` entry.
pub fn pem_entry(fullchain: &str, key: &str, tags: &[String]) -> Value {
    json!({"certificate": fullchain, "key": key, "tags": tags})
}

/// A `load_files` entry (paths as Caddy sees them).
pub fn files_entry(certificate_path: &str, key_path: &str, tags: &[String]) -> Value {
    json!({
        "certificate": certificate_path,
        "key": key_path,
        "format": "pem",
        "tags": tags,
    })
}

fn has_tag(entry: &Value, tag: &str) -> bool {
    entry
        .get("tags")
        .and_then(Value::as_array)
        .is_some_and(|tags| tags.iter().any(|t| t.as_str() == Some(tag)))
}

fn tag_set(entry: &Value) -> Vec<&str> {
    let mut tags: Vec<&str> = entry
        .get("tags")
        .and_then(Value::as_array)
        .map(|tags| tags.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    tags.sort_unstable();
    tags.dedup();
    tags
}

/// Whether `existing` already is `desired`. PEM text is compared by its
/// blocks (line endings and wrapping aside); everything else exactly.
pub fn same_entry(loader: Loader, existing: &Value, desired: &Value) -> bool {
    if tag_set(existing) != tag_set(desired) {
        return false;
    }
    let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    match loader {
        Loader::Pem => {
            ["certificate", "key"]
                .iter()
                .all(|k| match (field(existing, k), field(desired, k)) {
                    (Some(a), Some(b)) => certplane_sdk::pem::same_blocks(&a, &b),
                    _ => false,
                })
        }
        Loader::Files => {
            ["certificate", "key"]
                .iter()
                .all(|k| field(existing, k) == field(desired, k))
                // Caddy reads a missing format as PEM.
                && field(existing, "format").unwrap_or_else(|| "pem".into())
                    == field(desired, "format").unwrap_or_else(|| "pem".into())
        }
    }
}

/// A loader's state in the configuration read.
enum Slot<'a> {
    /// The key (or `certificates` itself) is absent.
    Missing,
    /// The key holds `null`.
    Null,
    /// The entries.
    Entries(&'a [Value]),
}

fn slot<'a>(certificates: &'a Value, loader: Loader) -> Result<Slot<'a>, String> {
    let map = match certificates {
        Value::Null => return Ok(Slot::Missing),
        Value::Object(map) => map,
        other => {
            return Err(format!(
                "Caddy's apps.tls.certificates is not an object but {}",
                kind(other)
            ));
        }
    };
    match map.get(loader.key()) {
        None => Ok(Slot::Missing),
        Some(Value::Null) => Ok(Slot::Null),
        Some(Value::Array(entries)) => Ok(Slot::Entries(entries)),
        Some(other) => Err(format!(
            "Caddy's apps.tls.certificates.{} is not an array but {}",
            loader.key(),
            kind(other)
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn tagged(slot: &Slot<'_>, tag: &str) -> Vec<usize> {
    match slot {
        Slot::Entries(entries) => entries
            .iter()
            .enumerate()
            .filter(|(_, e)| has_tag(e, tag))
            .map(|(i, _)| i)
            .collect(),
        Slot::Missing | Slot::Null => Vec::new(),
    }
}

fn delete(loader: Loader, index: usize, what: &str, tag: &str) -> Op {
    Op {
        method: Method::Delete,
        path: format!("{CERTIFICATES_PATH}/{}/{index}", loader.key()),
        body: None,
        force_reload: false,
        describe: format!("caddy: removed {what}{}[{index}] ({tag})", loader.key()),
    }
}

/// The writes that make `certificates` (the value of
/// `apps.tls.certificates`, `null` when absent) hold `entry` in `loader`
/// as the only entry tagged `tag`, with no entry tagged `tag` left in the
/// other loader. `force_reload`: the entry's files changed on disk, so
/// Caddy must reload even if the entry is already right.
///
/// Fails when the configuration has a shape Caddy itself would not load.
pub fn plan_deploy(
    certificates: &Value,
    loader: Loader,
    entry: &Value,
    tag: &str,
    force_reload: bool,
) -> Result<Vec<Op>, String> {
    let current = slot(certificates, loader)?;
    let stale = slot(certificates, loader.other())?;
    let mut ops = Vec::new();
    let ours = tagged(&current, tag);
    let base = format!("{CERTIFICATES_PATH}/{}", loader.key());
    let added = || format!("caddy: added {} entry ({tag})", loader.key());
    match current {
        // PUT creates the key and any missing object on its way
        // (`certificates`, `tls`); POST would fail on a missing array.
        Slot::Missing => ops.push(Op {
            method: Method::Put,
            path: base,
            body: Some(Value::Array(vec![entry.clone()])),
            force_reload: false,
            describe: added(),
        }),
        // PUT refuses a key that exists, even holding null.
        Slot::Null => ops.push(Op {
            method: Method::Patch,
            path: base,
            body: Some(Value::Array(vec![entry.clone()])),
            force_reload: false,
            describe: added(),
        }),
        Slot::Entries(entries) => match ours.first() {
            None => ops.push(Op {
                method: Method::Post,
                path: base,
                body: Some(entry.clone()),
                force_reload: false,
                describe: added(),
            }),
            Some(&first) => {
                let path = format!("{base}/{first}");
                if !entries
                    .get(first)
                    .is_some_and(|e| same_entry(loader, e, entry))
                {
                    ops.push(Op {
                        method: Method::Patch,
                        path,
                        body: Some(entry.clone()),
                        force_reload: false,
                        describe: format!("caddy: replaced {}[{first}] ({tag})", loader.key()),
                    });
                } else if force_reload {
                    ops.push(Op {
                        method: Method::Patch,
                        path,
                        body: Some(entry.clone()),
                        force_reload: true,
                        describe: format!("caddy: reloaded {}[{first}] ({tag})", loader.key()),
                    });
                }
                for &i in ours.iter().skip(1).rev() {
                    ops.push(delete(loader, i, "duplicate ", tag));
                }
            }
        },
    }
    for &i in tagged(&stale, tag).iter().rev() {
        ops.push(delete(loader.other(), i, "", tag));
    }
    Ok(ops)
}

/// The writes that leave no entry tagged `tag` in either loader, the
/// highest index first.
pub fn plan_remove(certificates: &Value, tag: &str) -> Result<Vec<Op>, String> {
    let mut ops = Vec::new();
    for loader in [Loader::Pem, Loader::Files] {
        for &i in tagged(&slot(certificates, loader)?, tag).iter().rev() {
            ops.push(delete(loader, i, "", tag));
        }
    }
    Ok(ops)
}

/// Whether a TLS connection policy of Caddy's HTTP servers selects
/// certificates by `prefix` or one of its per-certificate tags
/// (`certificate_selection.any_tag` / `all_tags`), given the whole
/// configuration (`GET /config/`).
pub fn policy_selects(config: &Value, prefix: &str) -> bool {
    let per_id = format!("{prefix}:");
    let Some(servers) = config
        .pointer("/apps/http/servers")
        .and_then(Value::as_object)
    else {
        return false;
    };
    servers
        .values()
        .filter_map(|s| s.get("tls_connection_policies").and_then(Value::as_array))
        .flatten()
        .filter_map(|p| p.get("certificate_selection"))
        .flat_map(|sel| {
            ["any_tag", "all_tags"]
                .into_iter()
                .filter_map(|k| sel.get(k).and_then(Value::as_array))
                .flatten()
        })
        .filter_map(Value::as_str)
        .any(|t| t == prefix || t.starts_with(&per_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEAF: &str = include_str!("../../sdk/testdata/leaf.pem");
    const OTHER: &str = include_str!("../../sdk/testdata/intermediate.pem");
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----\n";

    fn ours(cert: &str) -> Value {
        pem_entry(cert, KEY, &pem_tags("certplane", "web"))
    }

    fn foreign(tag: &str) -> Value {
        json!({"certificate": OTHER, "key": KEY, "tags": [tag]})
    }

    fn methods(ops: &[Op]) -> Vec<(Method, &str)> {
        ops.iter().map(|o| (o.method, o.path.as_str())).collect()
    }

    #[test]
    fn appending_uses_the_method_each_level_needs() {
        let tag = id_tag("certplane", "web");
        let entry = ours(LEAF);
        // No certificates at all (or no TLS app): PUT creates the way.
        let ops = plan_deploy(&Value::Null, Loader::Pem, &entry, &tag, false).unwrap();
        assert_eq!(
            methods(&ops),
            [(Method::Put, "apps/tls/certificates/load_pem")]
        );
        assert_eq!(ops[0].body, Some(json!([entry])));
        assert_eq!(
            ops[0].describe,
            "caddy: added load_pem entry (certplane:web)"
        );
        // Certificates without this loader.
        let ops =
            plan_deploy(&json!({"load_files": []}), Loader::Pem, &entry, &tag, false).unwrap();
        assert_eq!(ops[0].method, Method::Put);
        // The key holds null: PUT would be refused.
        let ops =
            plan_deploy(&json!({"load_pem": null}), Loader::Pem, &entry, &tag, false).unwrap();
        assert_eq!(
            methods(&ops),
            [(Method::Patch, "apps/tls/certificates/load_pem")]
        );
        assert_eq!(ops[0].body, Some(json!([entry])));
        // An array of others: append.
        let certs = json!({"load_pem": [foreign("manual")]});
        let ops = plan_deploy(&certs, Loader::Pem, &entry, &tag, false).unwrap();
        assert_eq!(
            methods(&ops),
            [(Method::Post, "apps/tls/certificates/load_pem")]
        );
        assert_eq!(ops[0].body, Some(entry));
    }

    #[test]
    fn the_same_entry_needs_nothing_and_a_new_one_replaces_in_place() {
        let tag = id_tag("certplane", "web");
        // Line endings differ; the blocks are the same.
        let crlf = ours(&LEAF.replace('\n', "\r\n"));
        let certs = json!({"load_pem": [foreign("manual"), crlf]});
        assert!(
            plan_deploy(&certs, Loader::Pem, &ours(LEAF), &tag, false)
                .unwrap()
                .is_empty()
        );
        let ops = plan_deploy(&certs, Loader::Pem, &ours(OTHER), &tag, false).unwrap();
        assert_eq!(
            methods(&ops),
            [(Method::Patch, "apps/tls/certificates/load_pem/1")]
        );
        assert_eq!(
            ops[0].describe,
            "caddy: replaced load_pem[1] (certplane:web)"
        );
        assert!(!ops[0].force_reload);
        // Tags count: an entry that lost its selection tag is rewritten.
        let mut untagged = ours(LEAF);
        untagged["tags"] = json!(["certplane:web"]);
        let certs = json!({"load_pem": [untagged]});
        assert_eq!(
            plan_deploy(&certs, Loader::Pem, &ours(LEAF), &tag, false)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn duplicates_and_entries_of_the_other_loader_are_removed_after() {
        let tag = id_tag("certplane", "web");
        let file_entry = files_entry("/a", "/b", &pem_tags("certplane", "web"));
        let certs = json!({
            "load_pem": [ours(OTHER), foreign("manual"), ours(OTHER)],
            "load_files": [file_entry, foreign("certplane:web-2")],
        });
        let ops = plan_deploy(&certs, Loader::Pem, &ours(LEAF), &tag, false).unwrap();
        assert_eq!(
            methods(&ops),
            [
                (Method::Patch, "apps/tls/certificates/load_pem/0"),
                (Method::Delete, "apps/tls/certificates/load_pem/2"),
                (Method::Delete, "apps/tls/certificates/load_files/0"),
            ]
        );
        assert_eq!(
            ops[1].describe,
            "caddy: removed duplicate load_pem[2] (certplane:web)"
        );
        assert_eq!(
            ops[2].describe,
            "caddy: removed load_files[0] (certplane:web)"
        );
    }

    #[test]
    fn files_force_a_reload_only_when_the_entry_is_already_right() {
        let tag = id_tag("certplane", "web");
        let tags = files_tags("certplane", "web", &"ab".repeat(32));
        assert_eq!(tags[2], format!("certplane:sha256:{}", "ab".repeat(32)));
        let entry = files_entry(
            "/srv/certs/web/fullchain.pem",
            "/srv/certs/web/privkey.pem",
            &tags,
        );
        let certs = json!({"load_files": [entry.clone()]});
        assert!(
            plan_deploy(&certs, Loader::Files, &entry, &tag, false)
                .unwrap()
                .is_empty()
        );
        let ops = plan_deploy(&certs, Loader::Files, &entry, &tag, true).unwrap();
        assert_eq!(
            methods(&ops),
            [(Method::Patch, "apps/tls/certificates/load_files/0")]
        );
        assert!(ops[0].force_reload);
        assert_eq!(
            ops[0].describe,
            "caddy: reloaded load_files[0] (certplane:web)"
        );
        // A missing format reads as PEM.
        let mut no_format = entry.clone();
        no_format.as_object_mut().unwrap().remove("format");
        assert!(same_entry(Loader::Files, &no_format, &entry));
        // Another fingerprint: replaced (which reloads anyway).
        let newer = files_entry(
            "/srv/certs/web/fullchain.pem",
            "/srv/certs/web/privkey.pem",
            &files_tags("certplane", "web", &"cd".repeat(32)),
        );
        let ops = plan_deploy(&certs, Loader::Files, &newer, &tag, true).unwrap();
        assert!(!ops[0].force_reload);
        assert!(ops[0].describe.contains("replaced"));
    }

    #[test]
    fn remove_finds_the_tag_in_both_loaders_highest_index_first() {
        let tag = id_tag("certplane", "web");
        let certs = json!({
            "load_pem": [ours(LEAF), foreign("certplane:web-2"), ours(LEAF)],
            "load_files": [files_entry("/a", "/b", &pem_tags("certplane", "web"))],
            "automate": ["example.com"],
        });
        assert_eq!(
            methods(&plan_remove(&certs, &tag).unwrap()),
            [
                (Method::Delete, "apps/tls/certificates/load_pem/2"),
                (Method::Delete, "apps/tls/certificates/load_pem/0"),
                (Method::Delete, "apps/tls/certificates/load_files/0"),
            ]
        );
        assert!(plan_remove(&certs, "certplane:gone").unwrap().is_empty());
        assert!(plan_remove(&Value::Null, &tag).unwrap().is_empty());
        assert!(
            plan_remove(&json!({"load_pem": null}), &tag)
                .unwrap()
                .is_empty()
        );
        // A per-id tag matches exactly, not by prefix.
        assert!(
            plan_remove(&json!({"load_pem": [foreign("certplane:web-2")]}), &tag)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn shapes_caddy_would_not_load_are_errors() {
        let tag = id_tag("certplane", "web");
        let e = plan_deploy(&json!([]), Loader::Pem, &ours(LEAF), &tag, false).unwrap_err();
        assert!(e.contains("not an object but an array"), "{e}");
        let e = plan_remove(&json!({"load_files": {"x": 1}}), &tag).unwrap_err();
        assert!(
            e.contains("load_files is not an array but an object"),
            "{e}"
        );
    }

    #[test]
    fn policies_selecting_the_tags_are_found() {
        let config = |sel: Value| {
            json!({"apps": {"http": {"servers": {
                "plain": {"listen": [":80"]},
                "tls": {"tls_connection_policies": [{}, {"certificate_selection": sel}]},
            }}}})
        };
        assert!(policy_selects(
            &config(json!({"any_tag": ["certplane"]})),
            "certplane"
        ));
        assert!(policy_selects(
            &config(json!({"all_tags": ["certplane:web"]})),
            "certplane"
        ));
        assert!(!policy_selects(
            &config(json!({"any_tag": ["certplanex"]})),
            "certplane"
        ));
        assert!(!policy_selects(
            &config(json!({"serial_number": []})),
            "certplane"
        ));
        assert!(!policy_selects(&json!({}), "certplane"));
    }
}
