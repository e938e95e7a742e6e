//! JSON Web Signatures as ACME uses them (RFC 8555 section 6.2): flattened
//! JSON serialization, ES256 with the raw 64-byte `R || S` signature
//! (RFC 7518 section 3.4, not DER), the account key's JWK and its RFC 7638
//! thumbprint, and the HS256 inner JWS of an external account binding.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Unpadded base64url, the only encoding JOSE and ACME use.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url or standard base64, padded or not, ignoring
/// whitespace: operators paste keys from CA consoles in either form.
pub fn b64_decode_lenient(text: &str) -> Result<Vec<u8>, String> {
    let normal: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=')
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    URL_SAFE_NO_PAD
        .decode(normal.as_bytes())
        .map_err(|e| format!("not base64url: {e}"))
}

/// SHA-256, base64url: the digest form ACME uses (thumbprints, dns-01).
pub fn sha256_b64(data: &[u8]) -> String {
    b64(&Sha256::digest(data))
}

/// The RFC 7638 thumbprint of a JWK given by its required members: the
/// members sorted by name, serialized without whitespace, SHA-256,
/// base64url.
pub fn thumbprint(members: &[(&str, &str)]) -> String {
    let mut sorted: Vec<&(&str, &str)> = members.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let body: Vec<String> = sorted
        .iter()
        .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
        .collect();
    sha256_b64(format!("{{{}}}", body.join(",")).as_bytes())
}

fn json_string(s: &str) -> String {
    // Serializing a &str cannot fail; the fallback is never used.
    serde_json::to_string(s).unwrap_or_default()
}

/// What a JWS signs: a JSON object, or nothing at all (POST-as-GET, whose
/// payload is the empty string).
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// A JSON body (`{}` to answer a challenge).
    Json(&'a Value),
    /// POST-as-GET (RFC 8555 section 6.3).
    Empty,
}

impl Payload<'_> {
    fn encoded(&self) -> String {
        match self {
            // A `Value` always serializes.
            Payload::Json(v) => b64(&serde_json::to_vec(v).unwrap_or_default()),
            Payload::Empty => String::new(),
        }
    }
}

/// The ACME account key: ECDSA P-256.
#[derive(Clone)]
pub struct AccountKey {
    key: SigningKey,
}

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountKey")
            .field("thumbprint", &self.thumbprint())
            .finish()
    }
}

impl AccountKey {
    /// A new random key from the host's entropy (`wasi:random` through
    /// getrandom).
    pub fn generate() -> Result<AccountKey, String> {
        // A random 32-byte string is a valid P-256 scalar except with
        // probability ~2^-32; try again then.
        for _ in 0..8 {
            let mut bytes = [0u8; 32];
            getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
            if let Ok(key) = SigningKey::from_slice(&bytes) {
                return Ok(AccountKey { key });
            }
        }
        Err("could not generate a P-256 key".into())
    }

    /// The key as stored: the raw 32-byte scalar, base64url.
    pub fn to_stored(&self) -> String {
        b64(&self.key.to_bytes())
    }

    /// Reads a key written by [`AccountKey::to_stored`].
    pub fn from_stored(text: &str) -> Result<AccountKey, String> {
        let bytes = b64_decode_lenient(text)?;
        let key = SigningKey::from_slice(&bytes).map_err(|_| "not a P-256 private key")?;
        Ok(AccountKey { key })
    }

    /// The public key as a JWK (RFC 7518 section 6.2).
    pub fn jwk(&self) -> Value {
        let (x, y) = self.coordinates();
        json!({"crv": "P-256", "kty": "EC", "x": x, "y": y})
    }

    /// The RFC 7638 thumbprint of [`AccountKey::jwk`].
    pub fn thumbprint(&self) -> String {
        let (x, y) = self.coordinates();
        thumbprint(&[("crv", "P-256"), ("kty", "EC"), ("x", &x), ("y", &y)])
    }

    fn coordinates(&self) -> (String, String) {
        let point = self.key.verifying_key().to_encoded_point(false);
        // An uncompressed point always has both coordinates.
        let x = point.x().map(|x| b64(x)).unwrap_or_default();
        let y = point.y().map(|y| b64(y)).unwrap_or_default();
        (x, y)
    }

    /// The verifying half, for tests.
    pub fn verifying_key(&self) -> p256::ecdsa::VerifyingKey {
        *self.key.verifying_key()
    }

    /// Signs `payload` under the `protected` header (which must name `alg`
    /// ES256, and `nonce`, `url`, `jwk` or `kid` as ACME wants).
    pub fn sign(&self, protected: &Value, payload: Payload<'_>) -> Value {
        let protected = b64(&serde_json::to_vec(protected).unwrap_or_default());
        let payload = payload.encoded();
        let signature: Signature = self.key.sign(format!("{protected}.{payload}").as_bytes());
        json!({
            "protected": protected,
            "payload": payload,
            "signature": b64(&signature.to_bytes()),
        })
    }
}

/// The protected header of an ACME request: `jwk` for newAccount (and
/// revocation by certificate key), `kid` (the account URL) otherwise.
pub fn protected(key: &AccountKey, kid: Option<&str>, nonce: &str, url: &str) -> Value {
    match kid {
        Some(kid) => json!({"alg": "ES256", "kid": kid, "nonce": nonce, "url": url}),
        None => json!({"alg": "ES256", "jwk": key.jwk(), "nonce": nonce, "url": url}),
    }
}

/// The external account binding of a newAccount request (RFC 8555 section
/// 7.3.4): a JWS over the account's JWK, HS256 with the CA-issued MAC key,
/// its `url` the newAccount URL, no nonce.
pub fn external_account_binding(
    eab_kid: &str,
    mac_key: &[u8],
    new_account_url: &str,
    account_jwk: &Value,
) -> Result<Value, String> {
    let protected = b64(&serde_json::to_vec(&json!({
        "alg": "HS256",
        "kid": eab_kid,
        "url": new_account_url,
    }))
    .unwrap_or_default());
    let payload = b64(&serde_json::to_vec(account_jwk).unwrap_or_default());
    let mut mac =
        Hmac::<Sha256>::new_from_slice(mac_key).map_err(|e| format!("unusable MAC key: {e}"))?;
    mac.update(format!("{protected}.{payload}").as_bytes());
    let signature = mac.finalize().into_bytes();
    Ok(json!({
        "protected": protected,
        "payload": payload,
        "signature": b64(&signature),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;

    fn decode_json(b64text: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(b64text).unwrap()).unwrap()
    }

    #[test]
    fn es256_signature_is_raw_64_bytes_and_verifies() {
        let key = AccountKey::generate().unwrap();
        let header = protected(&key, Some("https://ca/acct/1"), "n0nce", "https://ca/order");
        let body = json!({"identifiers": [{"type": "dns", "value": "a.example"}]});
        let jws = key.sign(&header, Payload::Json(&body));
        let sig = URL_SAFE_NO_PAD
            .decode(jws["signature"].as_str().unwrap())
            .unwrap();
        assert_eq!(sig.len(), 64, "ES256 signatures are R || S, not DER");
        let input = format!(
            "{}.{}",
            jws["protected"].as_str().unwrap(),
            jws["payload"].as_str().unwrap()
        );
        let signature = Signature::from_slice(&sig).unwrap();
        key.verifying_key()
            .verify(input.as_bytes(), &signature)
            .unwrap();
        // Another key does not verify it.
        let other = AccountKey::generate().unwrap();
        assert!(
            other
                .verifying_key()
                .verify(input.as_bytes(), &signature)
                .is_err()
        );
        let header = decode_json(jws["protected"].as_str().unwrap());
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], "https://ca/acct/1");
        assert_eq!(header["nonce"], "n0nce");
        assert_eq!(header["url"], "https://ca/order");
        assert!(header.get("jwk").is_none());
        assert_eq!(decode_json(jws["payload"].as_str().unwrap()), body);
    }

    #[test]
    fn post_as_get_has_an_empty_payload_and_new_account_a_jwk() {
        let key = AccountKey::generate().unwrap();
        let jws = key.sign(&protected(&key, None, "n", "u"), Payload::Empty);
        assert_eq!(jws["payload"], "");
        let header = decode_json(jws["protected"].as_str().unwrap());
        assert_eq!(header["jwk"], key.jwk());
        assert!(header.get("kid").is_none());
        let jwk = key.jwk();
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(jwk["x"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
    }

    #[test]
    fn stored_key_round_trips() {
        let key = AccountKey::generate().unwrap();
        let again = AccountKey::from_stored(&key.to_stored()).unwrap();
        assert_eq!(again.jwk(), key.jwk());
        assert!(AccountKey::from_stored("AAAA").is_err());
        assert!(AccountKey::from_stored("!!").is_err());
    }

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        // RFC 7638 section 3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let tp = thumbprint(&[("kty", "RSA"), ("n", n), ("e", "AQAB")]);
        assert_eq!(tp, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
        // The account key's thumbprint is the same computation over its JWK.
        let key = AccountKey::generate().unwrap();
        let jwk = key.jwk();
        let members: Vec<(&str, &str)> = ["crv", "kty", "x", "y"]
            .iter()
            .map(|m| (*m, jwk[m].as_str().unwrap()))
            .collect();
        assert_eq!(key.thumbprint(), thumbprint(&members));
    }

    #[test]
    fn external_account_binding_shape() {
        let key = AccountKey::generate().unwrap();
        let mac_key =
            b64_decode_lenient("zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W")
                .unwrap();
        let eab =
            external_account_binding("kid-1", &mac_key, "https://ca/new-acct", &key.jwk()).unwrap();
        let header = decode_json(eab["protected"].as_str().unwrap());
        assert_eq!(
            header,
            json!({"alg": "HS256", "kid": "kid-1", "url": "https://ca/new-acct"})
        );
        assert!(header.get("nonce").is_none(), "the inner JWS has no nonce");
        assert_eq!(decode_json(eab["payload"].as_str().unwrap()), key.jwk());
        let mut mac = Hmac::<Sha256>::new_from_slice(&mac_key).unwrap();
        mac.update(
            format!(
                "{}.{}",
                eab["protected"].as_str().unwrap(),
                eab["payload"].as_str().unwrap()
            )
            .as_bytes(),
        );
        let sig = URL_SAFE_NO_PAD
            .decode(eab["signature"].as_str().unwrap())
            .unwrap();
        mac.verify_slice(&sig).unwrap();
    }

    #[test]
    fn lenient_base64() {
        assert_eq!(b64_decode_lenient("-_8=").unwrap(), vec![0xfb, 0xff]);
        assert_eq!(b64_decode_lenient("+/8").unwrap(), vec![0xfb, 0xff]);
        assert_eq!(b64_decode_lenient(" +/ 8 \n").unwrap(), vec![0xfb, 0xff]);
        assert!(b64_decode_lenient("a").is_err());
    }
}
