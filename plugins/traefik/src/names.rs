//! Names of the files this connector writes. Traefik reads a certificate
//! file only when it rebuilds its configuration and never watches it, so
//! new content must go to a new name that the configuration then points
//! at: names carry a digest of what the files hold.

use sha2::{Digest, Sha256};

/// Hex digits of the content digest in a file name (64 bits: two
/// different contents for one certificate id never meet in practice).
pub const DIGEST_HEX: usize = 16;

/// Suffix of temporary files written before a rename. Traefik reads only
/// `.yml`, `.yaml` and `.toml` files, so it never sees one half-written.
pub use certplane_sdk::files::TMP_SUFFIX;

/// Which of a certificate's two files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `<stem>.crt`: the leaf, then the chain.
    Cert,
    /// `<stem>.key`: the private key.
    Key,
}

/// A file name this connector gives, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName {
    /// The certificate id.
    pub certificate_id: String,
    /// `<id>-<hex>`.
    pub stem: String,
    /// Which file.
    pub kind: Kind,
}

/// Checks that a certificate id is safe in a file name: 1..=128 characters
/// of `[a-z0-9-]`, not starting with `-`.
pub fn check_certificate_id(id: &str) -> Result<(), String> {
    certplane_sdk::files::check_certificate_id(id, "in a file name")
}

/// `<id>-<hex>`: the shared name of the two files holding `cert` and
/// `key` for certificate `id`.
pub fn stem(id: &str, cert: &str, key: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(cert.as_bytes());
    hash.update([0u8]);
    hash.update(key.as_bytes());
    let digest = hash.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{id}-{}", &hex[..DIGEST_HEX])
}

/// Reads `<id>-<hex>.crt` or `<id>-<hex>.key`; `None` for any other name.
/// The id is everything before the last `-`, so ids that contain `-` or
/// are prefixes of one another are told apart.
pub fn parse_file_name(name: &str) -> Option<FileName> {
    let (stem, kind) = if let Some(stem) = name.strip_suffix(".crt") {
        (stem, Kind::Cert)
    } else {
        (name.strip_suffix(".key")?, Kind::Key)
    };
    let (id, hex) = stem.rsplit_once('-')?;
    let hex_ok = hex.len() == DIGEST_HEX
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex_ok || check_certificate_id(id).is_err() {
        return None;
    }
    Some(FileName {
        certificate_id: id.to_string(),
        stem: stem.to_string(),
        kind,
    })
}

/// The temporary name `.<name>.certplane-tmp` of `name`.
pub fn tmp_name(name: &str) -> String {
    format!(".{name}{TMP_SUFFIX}")
}

/// The name a temporary file stands for, when `name` is one.
pub fn untmp_name(name: &str) -> Option<&str> {
    name.strip_prefix('.')?.strip_suffix(TMP_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_follow_the_content() {
        let a = stem("web", "CERT", "KEY");
        assert_eq!(a.len(), "web-".len() + DIGEST_HEX);
        assert_eq!(a, stem("web", "CERT", "KEY"));
        assert_ne!(a, stem("web", "CERT2", "KEY"));
        assert_ne!(a, stem("web", "CERT", "KEY2"));
        // The separator keeps "AB"+"C" apart from "A"+"BC".
        assert_ne!(stem("w", "AB", "C"), stem("w", "A", "BC"));
        assert!(a.starts_with("web-"));
    }

    #[test]
    fn file_names_are_read_back_exactly() {
        let s = stem("web-1", "c", "k");
        let parsed = parse_file_name(&format!("{s}.crt")).unwrap();
        assert_eq!(
            (parsed.certificate_id.as_str(), parsed.kind),
            ("web-1", Kind::Cert)
        );
        assert_eq!(parsed.stem, s);
        assert_eq!(
            parse_file_name(&format!("{s}.key")).unwrap().kind,
            Kind::Key
        );
        for bad in [
            "web-1.crt",
            "web-0123456789abcdef.pem",
            "web-0123456789ABCDEF.crt",
            "web-0123456789abcde.crt",
            "-0123456789abcdef.crt",
            "Web-0123456789abcdef.crt",
            "certplane.yml",
            ".web-0123456789abcdef.crt.certplane-tmp",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
        assert_eq!(
            untmp_name(&tmp_name("web-0123456789abcdef.crt")),
            Some("web-0123456789abcdef.crt")
        );
        assert_eq!(untmp_name("web.crt"), None);
    }

    #[test]
    fn certificate_ids_are_checked() {
        check_certificate_id("web-1").unwrap();
        assert!(check_certificate_id("").is_err());
        assert!(check_certificate_id("-x").is_err());
        assert!(check_certificate_id("a/b").is_err());
        assert!(check_certificate_id(&"a".repeat(129)).is_err());
    }
}
