//! Turning what CertCentral hands back (a `pem_all` download or an order's
//! `certificate_chain`) into the contract's leaf plus chain.
//!
//! CertCentral's order of certificates is not relied on: the chain is
//! rebuilt by matching each certificate's issuer to another's subject
//! (`certplane_sdk::pem::order_leaf_first`), and roots are left out.

use certplane_sdk::issuer::IssuedCertificate;
use certplane_sdk::pem;

/// The leaf and its intermediates (nearest first) from PEM text holding
/// certificates in any order. `Err` says why the text is unusable.
pub fn bundle(
    pem_text: &str,
    ca_certificate_id: Option<String>,
) -> Result<IssuedCertificate, String> {
    let certs = pem::certificates(pem_text).map_err(|e| e.message().to_string())?;
    let ordered = pem::order_leaf_first(certs).map_err(|e| e.message().to_string())?;
    let (leaf, rest) = pem::split_leaf(ordered).map_err(|e| e.message().to_string())?;
    if leaf.is_self_signed() {
        return Err("it holds no leaf certificate, only self-signed ones".into());
    }
    let chain_pem = rest
        .iter()
        .filter(|c| !c.is_self_signed())
        .map(pem::PemBlock::to_pem)
        .collect();
    Ok(IssuedCertificate {
        certificate_pem: leaf.to_pem(),
        chain_pem,
        ca_certificate_id,
    })
}

/// The PEM text of an order's `certificate_chain` entries, joined.
pub fn join<'a>(pems: impl IntoIterator<Item = &'a str>) -> String {
    let mut text = String::new();
    for p in pems {
        text.push_str(p.trim());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    // The SDK's three-level test chain (root -> intermediate -> leaf).
    const ROOT: &str = include_str!("../../sdk/testdata/root.pem");
    const INTERMEDIATE: &str = include_str!("../../sdk/testdata/intermediate.pem");
    const LEAF: &str = include_str!("../../sdk/testdata/leaf.pem");

    #[test]
    fn any_order_comes_out_leaf_first_without_the_root() {
        for text in [
            join([ROOT, INTERMEDIATE, LEAF]),
            join([INTERMEDIATE, LEAF, ROOT]),
            join([LEAF, ROOT, INTERMEDIATE]),
        ] {
            let issued = bundle(&text, Some("77".into())).unwrap();
            assert!(pem::same_blocks(&issued.certificate_pem, LEAF));
            assert_eq!(issued.chain_pem.len(), 1);
            assert!(pem::same_blocks(&issued.chain_pem[0], INTERMEDIATE));
            assert_eq!(issued.ca_certificate_id.as_deref(), Some("77"));
        }
    }

    #[test]
    fn unusable_text_says_why() {
        assert!(bundle("", None).unwrap_err().contains("no PEM block"));
        assert!(bundle(ROOT, None).unwrap_err().contains("no leaf"));
        let bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(bundle(bad, None).unwrap_err().contains("does not parse"));
    }
}
