//! The dynamic configuration file this connector owns in the directory
//! Traefik's file provider watches: its format, the marker that says it is
//! certplane's, and reading it back.
//!
//! The file is the connector's only state (every call runs on a fresh
//! instance): which certificate ids are deployed, and under which files, is
//! read back from its `tls.certificates` entries. Certificate files are
//! named `<certificate id>-<16 hex digits>.crt` / `.key`, so an entry tells
//! its certificate id by its file names alone and the file holds nothing
//! Traefik does not know (its decoder is strict about unknown keys).

use serde::{Deserialize, Serialize};

use crate::names;

/// The first line of a file this connector wrote. A file with the
/// configured name that does not start with it belongs to someone else and
/// is never overwritten.
pub const MARKER: &str = "# certplane-managed: traefik target";

/// The comment block written at the top of the file (its first line is
/// [`MARKER`]).
pub const HEADER: &str = "# certplane-managed: traefik target\n\
# Written by certplane; do not edit. Every change is written to a temporary\n\
# file first and renamed over this one. certplane refuses to rewrite this file\n\
# if it holds anything it did not write: keep your own configuration in other\n\
# files of this directory.\n";

/// The whole file as YAML sees it. Unknown keys are refused rather than
/// dropped on the next rewrite.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    tls: Tls,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tls {
    #[serde(default)]
    certificates: Vec<Entry>,
}

/// One `tls.certificates` entry, in Traefik's documented key names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Entry {
    /// The certificate file (leaf, then chain) as Traefik opens it.
    pub cert_file: String,
    /// The private key file as Traefik opens it.
    pub key_file: String,
}

/// An entry of the file with what its names say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    /// The certificate id the entry is for.
    pub certificate_id: String,
    /// The files' shared name without extension, `<id>-<hex>`.
    pub stem: String,
    /// The directory of both files, as written in the entry.
    pub dir: String,
    /// The entry itself.
    pub entry: Entry,
}

/// Why an existing file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// It does not start with [`MARKER`]: not certplane's.
    Foreign,
    /// It has the marker but does not hold what this connector writes.
    Unparseable(String),
}

/// Whether `text` starts with the marker line.
pub fn has_marker(text: &str) -> bool {
    text.lines().next().map(str::trim_end) == Some(MARKER)
}

/// Reads a file this connector wrote back into its entries.
pub fn parse(text: &str) -> Result<Vec<Managed>, Problem> {
    if !has_marker(text) {
        return Err(Problem::Foreign);
    }
    // A file cut to its comments parses as YAML's null, not as a document.
    let only_comments = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
    let document: Document = if only_comments {
        Document::default()
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| Problem::Unparseable(e.to_string()))?
    };
    let mut out: Vec<Managed> = Vec::new();
    for (i, entry) in document.tls.certificates.into_iter().enumerate() {
        let managed = classify(entry)
            .map_err(|why| Problem::Unparseable(format!("tls.certificates[{i}]: {why}")))?;
        if out
            .iter()
            .any(|m| m.certificate_id == managed.certificate_id)
        {
            return Err(Problem::Unparseable(format!(
                "tls.certificates[{i}]: a second entry for certificate {}",
                managed.certificate_id
            )));
        }
        out.push(managed);
    }
    Ok(out)
}

/// What an entry's file names say, when they are names this connector
/// gives: `<dir>/<id>-<hex>.crt` and `<dir>/<id>-<hex>.key`.
fn classify(entry: Entry) -> Result<Managed, String> {
    let split = |path: &str| -> Option<(String, String)> {
        let (dir, name) = path.rsplit_once('/')?;
        Some((dir.to_string(), name.to_string()))
    };
    let (Some((cert_dir, cert_name)), Some((key_dir, key_name))) =
        (split(&entry.cert_file), split(&entry.key_file))
    else {
        return Err("certFile and keyFile must be absolute paths".into());
    };
    let cert = names::parse_file_name(&cert_name);
    let key = names::parse_file_name(&key_name);
    match (cert, key) {
        (Some(c), Some(k))
            if c.kind == names::Kind::Cert
                && k.kind == names::Kind::Key
                && c.stem == k.stem
                && cert_dir == key_dir =>
        {
            Ok(Managed {
                certificate_id: c.certificate_id,
                stem: c.stem,
                dir: cert_dir,
                entry,
            })
        }
        _ => Err(format!(
            "{} / {} are not files certplane names",
            entry.cert_file, entry.key_file
        )),
    }
}

/// The file for `entries`, sorted by certificate id so that the same
/// certificates always give the same bytes.
pub fn render(entries: &[Managed]) -> Result<String, String> {
    let mut sorted: Vec<&Managed> = entries.iter().collect();
    sorted.sort_by(|a, b| a.certificate_id.cmp(&b.certificate_id));
    let document = Document {
        tls: Tls {
            certificates: sorted.into_iter().map(|m| m.entry.clone()).collect(),
        },
    };
    let body = serde_yaml_ng::to_string(&document)
        .map_err(|e| format!("serializing the dynamic configuration: {e}"))?;
    Ok(format!("{HEADER}{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn managed(dir: &str, id: &str, hex: &str) -> Managed {
        let stem = format!("{id}-{hex}");
        Managed {
            certificate_id: id.into(),
            stem: stem.clone(),
            dir: dir.into(),
            entry: Entry {
                cert_file: format!("{dir}/{stem}.crt"),
                key_file: format!("{dir}/{stem}.key"),
            },
        }
    }

    #[test]
    fn renders_traefiks_keys_sorted_and_reads_them_back() {
        let a = managed("/srv/certs", "web-2", "0123456789abcdef");
        let b = managed("/srv/certs", "api", "fedcba9876543210");
        let text = render(&[a.clone(), b.clone()]).unwrap();
        assert!(text.starts_with(MARKER), "{text}");
        let body: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            body,
            [
                "tls:",
                "  certificates:",
                "  - certFile: /srv/certs/api-fedcba9876543210.crt",
                "    keyFile: /srv/certs/api-fedcba9876543210.key",
                "  - certFile: /srv/certs/web-2-0123456789abcdef.crt",
                "    keyFile: /srv/certs/web-2-0123456789abcdef.key",
            ]
        );
        assert_eq!(parse(&text).unwrap(), vec![b, a]);
        // Same entries in another order: the same bytes.
        assert_eq!(
            render(&[
                managed("/srv/certs", "api", "fedcba9876543210"),
                managed("/srv/certs", "web-2", "0123456789abcdef")
            ])
            .unwrap(),
            text
        );
    }

    #[test]
    fn empty_and_unusual_paths_round_trip() {
        let text = render(&[]).unwrap();
        assert!(text.ends_with("tls:\n  certificates: []\n"), "{text}");
        assert_eq!(parse(&text).unwrap(), vec![]);
        assert_eq!(parse(HEADER).unwrap(), vec![]);
        // Paths YAML would misread unquoted come back as written.
        let odd = managed("/srv/my certs: #1/'x'", "web", "0123456789abcdef");
        let text = render(std::slice::from_ref(&odd)).unwrap();
        assert_eq!(parse(&text).unwrap(), vec![odd]);
    }

    #[test]
    fn foreign_and_edited_files_are_refused() {
        assert_eq!(parse(""), Err(Problem::Foreign));
        assert_eq!(
            parse("tls:\n  certificates: []\n"),
            Err(Problem::Foreign),
            "no marker"
        );
        assert_eq!(
            parse(&format!("# note\n{HEADER}tls: {{}}\n")),
            Err(Problem::Foreign),
            "the marker must be the first line"
        );
        let unparseable = |text: &str| match parse(text) {
            Err(Problem::Unparseable(why)) => why,
            other => panic!("{text}: {other:?}"),
        };
        assert!(!unparseable(&format!("{HEADER}tls: [\n")).is_empty());
        let why = unparseable(&format!("{HEADER}http:\n  routers: {{}}\n"));
        assert!(why.contains("http"), "{why}");
        let why = unparseable(&format!(
            "{HEADER}tls:\n  certificates:\n  - certFile: /a/x.pem\n    keyFile: /a/x.key\n"
        ));
        assert!(why.contains("not files certplane names"), "{why}");
        // Cert and key of different stems or directories.
        unparseable(&format!(
            "{HEADER}tls:\n  certificates:\n  - certFile: /a/w-0123456789abcdef.crt\n    keyFile: /a/w-1123456789abcdef.key\n"
        ));
        unparseable(&format!(
            "{HEADER}tls:\n  certificates:\n  - certFile: /a/w-0123456789abcdef.crt\n    keyFile: /b/w-0123456789abcdef.key\n"
        ));
        // Extra keys Traefik knows (stores) are still not ours.
        unparseable(&format!(
            "{HEADER}tls:\n  certificates:\n  - certFile: /a/w-0123456789abcdef.crt\n    keyFile: /a/w-0123456789abcdef.key\n    stores: [default]\n"
        ));
        let a = managed("/a", "w", "0123456789abcdef");
        let b = managed("/a", "w", "1123456789abcdef");
        let twice = render(&[a, b]).unwrap();
        assert!(unparseable(&twice).contains("a second entry"));
    }
}
