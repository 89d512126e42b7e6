//! Per-user access tokens: JWTs signed with EdDSA (Ed25519) by the cluster's token key.
//!
//! An app's backend (or `concordant token`) signs a token with the private key
//! (`certs/tokens.key`, PKCS#8 PEM, which nodes never read); every node verifies it
//! offline with the public key named by `[api] token_key` (`certs/tokens.pub`, SPKI PEM):
//! signature, expiry (with [`LEEWAY_S`] of clock skew), and the claims:
//!
//! | claim | meaning |
//! | --- | --- |
//! | `sub` | the user (required, 1 to 256 characters) |
//! | `exp` | expiry, seconds since the Unix epoch (required) |
//! | `nbf`, `iat` | not before, issued at (optional; a token issued before its user's revocation is refused, see [`crate::revocations`]) |
//! | `jti` | the token's id, for revocation (optional) |
//! | `docs` | the document ids it reaches (optional, at most [`MAX_DOCS`]) |
//! | `owner` | also every document its `sub` created (optional bool) |
//! | `rights` | `"read"` (the default) or `"write"` |
//! | `create` | may create documents (optional bool) |
//!
//! Anything else (a claim of the wrong type, an unknown `rights`, an invalid document id)
//! makes the token malformed. Unknown claims are ignored.
//!
//! Owns: the claims, what a token allows ([`Access`]), verifying, minting, key pairs and
//! the count of refusals. It does no IO; verifying and minting take the time from the
//! caller.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Seconds of clock skew allowed between the minting backend and a node.
pub const LEEWAY_S: u64 = 60;
/// The most document ids one token may name.
pub const MAX_DOCS: usize = 1024;
/// The longest `sub`.
pub const MAX_SUB: usize = 256;

/// Errors of keys and minting (the backend's side and the node's start).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A key is not a PEM Ed25519 key of the right kind.
    #[error("not an Ed25519 {kind} key in PEM: {detail}")]
    Key {
        /// "private" (PKCS#8) or "public" (SPKI).
        kind: &'static str,
        /// Why.
        detail: String,
    },
    /// The claims to sign are invalid.
    #[error("invalid token claims: {0}")]
    Claims(String),
    /// Signing failed.
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// Why a token was not accepted: answered 401, the message says which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a JWT, not EdDSA, or claims of the wrong shape.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not verify with the cluster's token key.
    #[error("the token's signature does not verify with the cluster's token key")]
    Signature,
    /// Past `exp`.
    #[error("the token expired {0} s ago")]
    Expired(u64),
    /// Before `nbf`.
    #[error("the token is not valid for another {0} s")]
    NotYet(u64),
    /// Revoked (by its `jti` or its `sub`).
    #[error("the token was revoked")]
    Revoked,
}

impl Refusal {
    /// The label of `concordant_auth_refused_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::Signature => "signature",
            Refusal::Expired(_) | Refusal::NotYet(_) => "expired",
            Refusal::Revoked => "revoked",
        }
    }
}

/// What a user may do: read, or read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rights {
    /// Read only.
    Read,
    /// Read and write.
    Write,
}

/// A verified user token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserToken {
    /// The user.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, if given.
    pub iat: Option<u64>,
    /// The token's id, if given.
    pub jti: Option<String>,
    /// The documents it reaches.
    pub docs: BTreeSet<String>,
    /// Also every document its `sub` created.
    pub owner: bool,
    /// Read, or read and write.
    pub rights: Rights,
    /// May create documents.
    pub create: bool,
}

impl UserToken {
    /// Whether the token names `doc` (ownership aside).
    pub fn names(&self, doc: &str) -> bool {
        self.docs.contains(doc)
    }

    /// Whether the token may change documents it reaches.
    pub fn writes(&self) -> bool {
        self.rights == Rights::Write
    }
}

/// Who a request or a sync socket acts for.
#[derive(Debug, Clone)]
pub enum Access {
    /// The admin token, or anyone where no admin token is configured: everything.
    Admin,
    /// A user token: its documents only.
    User(Arc<UserToken>),
}

impl Access {
    /// Whether this access may read `doc`.
    pub fn may_read(&self, doc: &str) -> bool {
        match self {
            Access::Admin => true,
            Access::User(user) => user.names(doc),
        }
    }

    /// Whether this access may change `doc`.
    pub fn may_write(&self, doc: &str) -> bool {
        match self {
            Access::Admin => true,
            Access::User(user) => user.names(doc) && user.writes(),
        }
    }

    /// The user token, if this is one.
    pub fn user(&self) -> Option<&UserToken> {
        match self {
            Access::Admin => None,
            Access::User(user) => Some(user),
        }
    }
}

/// Requests and sockets refused for their token, by reason (the labels of
/// `concordant_auth_refused_total{reason}`).
#[derive(Debug, Default)]
pub struct Refusals(Mutex<BTreeMap<&'static str, u64>>);

impl Refusals {
    /// One more refusal for `reason`.
    pub fn count(&self, reason: &'static str) {
        if let Ok(mut map) = self.0.lock() {
            *map.entry(reason).or_insert(0) += 1;
        }
    }

    /// The counts so far.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// The claims as signed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    #[serde(default)]
    docs: Vec<String>,
    #[serde(default)]
    owner: bool,
    #[serde(default = "read")]
    rights: Rights,
    #[serde(default)]
    create: bool,
}

fn read() -> Rights {
    Rights::Read
}

impl Claims {
    fn check(self) -> Result<UserToken, String> {
        if self.sub.is_empty() || self.sub.chars().count() > MAX_SUB {
            return Err(format!("sub must have 1 to {MAX_SUB} characters"));
        }
        if self.docs.len() > MAX_DOCS {
            return Err(format!(
                "docs names {} documents, more than {MAX_DOCS}",
                self.docs.len()
            ));
        }
        if let Some(bad) = self
            .docs
            .iter()
            .find(|d| !crate::doc_id::is_valid_doc_id(d))
        {
            return Err(format!("docs: {bad:?} is not a valid document id"));
        }
        if self
            .jti
            .as_ref()
            .is_some_and(|j| j.is_empty() || j.len() > 256)
        {
            return Err("jti must have 1 to 256 characters".into());
        }
        Ok(UserToken {
            sub: self.sub,
            exp: self.exp,
            iat: self.iat,
            jti: self.jti,
            docs: self.docs.into_iter().collect(),
            owner: self.owner,
            rights: self.rights,
            create: self.create,
        })
    }
}

/// Verifies user tokens with the cluster's public token key.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(Ed25519)")
    }
}

impl Verifier {
    /// The verifier of the public key in `pem` (SPKI `PUBLIC KEY`).
    pub fn from_pem(pem: &[u8]) -> Result<Verifier, TokenError> {
        let key = DecodingKey::from_ed_pem(pem).map_err(|e| TokenError::Key {
            kind: "public",
            detail: e.to_string(),
        })?;
        Ok(Verifier { key })
    }

    /// Whether `token` looks like a JWT (three dot-separated parts) rather than the admin
    /// token.
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3
    }

    /// Verifies `token` at `now` (seconds since the Unix epoch): its signature, expiry and
    /// claims. Revocation is the caller's to check.
    pub fn verify(&self, token: &str, now: u64) -> Result<UserToken, Refusal> {
        let mut validation = Validation::new(Algorithm::EdDSA);
        // Times are checked below against the caller's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims = std::collections::HashSet::new();
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => Refusal::Signature,
                ErrorKind::InvalidAlgorithm => {
                    Refusal::Malformed("the token is not signed with EdDSA".into())
                }
                _ => Refusal::Malformed(e.to_string()),
            }
        })?;
        let claims = data.claims;
        if now > claims.exp.saturating_add(LEEWAY_S) {
            return Err(Refusal::Expired(now - claims.exp));
        }
        if let Some(nbf) = claims.nbf {
            if nbf > now.saturating_add(LEEWAY_S) {
                return Err(Refusal::NotYet(nbf - now));
            }
        }
        claims.check().map_err(Refusal::Malformed)
    }
}

/// Seconds since the Unix epoch, by this machine's clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Signs `token` with the private key in `pem` (PKCS#8 `PRIVATE KEY`), issued at `now`.
pub fn mint(pem: &[u8], token: &UserToken, now: u64) -> Result<String, TokenError> {
    let key = EncodingKey::from_ed_pem(pem).map_err(|e| TokenError::Key {
        kind: "private",
        detail: e.to_string(),
    })?;
    let claims = Claims {
        sub: token.sub.clone(),
        exp: token.exp,
        nbf: None,
        iat: Some(now),
        jti: token.jti.clone(),
        docs: token.docs.iter().cloned().collect(),
        owner: token.owner,
        rights: token.rights,
        create: token.create,
    };
    // What a node would refuse is refused here.
    claims.clone().check().map_err(TokenError::Claims)?;
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key)
        .map_err(|e| TokenError::Sign(e.to_string()))
}

/// A new token-signing key pair: the private key (PKCS#8 v1 PEM, the form every JWT
/// library and OpenSSL read) and the public key (SPKI PEM).
pub fn generate_key_pair() -> Result<(String, String), TokenError> {
    let error = |detail: String| TokenError::Key {
        kind: "private",
        detail,
    };
    let pair =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(|e| error(e.to_string()))?;
    // The generator writes PKCS#8 v2 (the public key after the seed, in an encoding some
    // readers refuse); v1 is the same header with version 0 and the seed alone.
    let der = pair.serialize_der();
    let seed = der
        .strip_prefix(&PKCS8_V2_HEAD[..])
        .and_then(|rest| rest.get(..32))
        .ok_or_else(|| error("the generated key is not the expected PKCS#8 form".into()))?;
    let mut v1 = PKCS8_V1_HEAD.to_vec();
    v1.extend_from_slice(seed);
    let private = pem::encode(&pem::Pem::new("PRIVATE KEY", v1));
    Ok((private, pair.public_key_pem()))
}

/// The DER before the 32-byte seed of an Ed25519 PKCS#8 v2 key (version 1) and of a v1 key
/// (version 0): SEQUENCE, version, the Ed25519 algorithm, the seed's OCTET STRING.
const PKCS8_V2_HEAD: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const PKCS8_V1_HEAD: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn keys() -> (String, Verifier) {
        let (private, public) = generate_key_pair().expect("a key pair");
        (
            private,
            Verifier::from_pem(public.as_bytes()).expect("a verifier"),
        )
    }

    fn alice() -> UserToken {
        UserToken {
            sub: "alice".into(),
            exp: NOW + 3600,
            iat: None,
            jti: Some("t1".into()),
            docs: ["doc-a".to_string()].into_iter().collect(),
            owner: false,
            rights: Rights::Write,
            create: true,
        }
    }

    /// Signs arbitrary claims with `private` (what another JWT library could send).
    fn sign_raw(private: &str, claims: serde_json::Value) -> String {
        let key = EncodingKey::from_ed_pem(private.as_bytes()).expect("a key");
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).expect("signed")
    }

    #[test]
    fn a_minted_token_verifies_with_its_claims() {
        let (private, verifier) = keys();
        let token = mint(private.as_bytes(), &alice(), NOW).expect("minted");
        let got = verifier.verify(&token, NOW).expect("valid");
        assert_eq!(
            got,
            UserToken {
                iat: Some(NOW),
                ..alice()
            }
        );
        assert!(got.names("doc-a") && !got.names("doc-b") && got.writes());
        assert!(Verifier::looks_like_jwt(&token));
        assert!(!Verifier::looks_like_jwt("an-admin-token"));
    }

    #[test]
    fn expiry_allows_the_clock_skew_and_no_more() {
        let (private, verifier) = keys();
        let token = mint(private.as_bytes(), &alice(), NOW).expect("minted");
        let exp = alice().exp;
        assert!(
            verifier.verify(&token, exp + LEEWAY_S).is_ok(),
            "within the skew"
        );
        assert_eq!(
            verifier.verify(&token, exp + LEEWAY_S + 1),
            Err(Refusal::Expired(LEEWAY_S + 1))
        );
        let early = sign_raw(
            &private,
            serde_json::json!({"sub": "alice", "exp": NOW + 3600, "nbf": NOW + 100}),
        );
        assert_eq!(verifier.verify(&early, NOW), Err(Refusal::NotYet(100)));
        assert!(verifier.verify(&early, NOW + 100 - LEEWAY_S).is_ok());
    }

    #[test]
    fn another_keys_signature_or_another_algorithm_is_refused() {
        let (private, _) = keys();
        let (_, other) = keys();
        let token = mint(private.as_bytes(), &alice(), NOW).expect("minted");
        assert_eq!(other.verify(&token, NOW), Err(Refusal::Signature));
        let hmac = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "alice", "exp": NOW + 10}),
            &EncodingKey::from_secret(b"secret"),
        )
        .expect("signed");
        let refused = other.verify(&hmac, NOW).expect_err("HS256");
        assert_eq!(refused.reason(), "malformed", "{refused}");
        for junk in ["", "a.b.c", "not a token", "e30.e30.e30"] {
            let refused = other.verify(junk, NOW).expect_err(junk);
            assert_eq!(refused.reason(), "malformed", "{junk}: {refused}");
        }
    }

    #[test]
    fn malformed_claims_are_refused_naming_the_claim() {
        let (private, verifier) = keys();
        let cases = [
            (serde_json::json!({"exp": NOW + 10}), "sub"),
            (serde_json::json!({"sub": "alice"}), "exp"),
            (serde_json::json!({"sub": "", "exp": NOW + 10}), "sub"),
            (
                serde_json::json!({"sub": "a", "exp": "soon"}),
                "invalid type",
            ),
            (
                serde_json::json!({"sub": "a", "exp": NOW + 10, "docs": "doc-a"}),
                "invalid type",
            ),
            (
                serde_json::json!({"sub": "a", "exp": NOW + 10, "docs": ["no/slash"]}),
                "docs",
            ),
            (
                serde_json::json!({"sub": "a", "exp": NOW + 10, "rights": "admin"}),
                "unknown variant",
            ),
            (
                serde_json::json!({"sub": "a", "exp": NOW + 10, "owner": "yes"}),
                "invalid type",
            ),
        ];
        for (claims, names) in cases {
            let token = sign_raw(&private, claims.clone());
            let refused = verifier.verify(&token, NOW).expect_err("malformed");
            assert_eq!(refused.reason(), "malformed", "{claims}: {refused}");
            assert!(refused.to_string().contains(names), "{claims}: {refused}");
        }
        // Defaults: read only, nothing created, no document named; other claims ignored.
        let token = sign_raw(
            &private,
            serde_json::json!({"sub": "bob", "exp": NOW + 10, "iss": "app", "aud": "x"}),
        );
        let bob = verifier.verify(&token, NOW).expect("valid");
        assert!(!bob.writes() && !bob.create && !bob.owner && bob.docs.is_empty());
        // What a node would refuse cannot be minted.
        let mut bad = alice();
        bad.docs.insert("no/slash".into());
        assert!(matches!(
            mint(private.as_bytes(), &bad, NOW),
            Err(TokenError::Claims(_))
        ));
    }

    #[test]
    fn keys_of_the_wrong_kind_are_refused() {
        let (private, _) = keys();
        assert!(Verifier::from_pem(private.as_bytes()).is_err());
        assert!(Verifier::from_pem(b"junk").is_err());
        assert!(mint(b"junk", &alice(), NOW).is_err());
    }
}
