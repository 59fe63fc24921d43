//! etcd's JWT tokens (`--auth-token jwt,pub-key=PATH,priv-key=PATH,sign-method=METHOD,ttl=DUR`),
//! signed and verified with `ring`.
//!
//! A token is `base64url(header).base64url(claims).base64url(signature)` with the header
//! `{"alg":METHOD,"typ":"JWT"}` and the claims `{"exp":UNIX_SECONDS,"revision":AUTH_REV,
//! "username":NAME}`, byte for byte as etcd (golang-jwt) writes them. A token names its user and
//! the auth revision it was issued at, so any member holding the key verifies it: tokens survive
//! restarts and work on every member, unlike simple tokens. A member given only the public key
//! verifies tokens but cannot issue them (etcd's ErrVerifyOnly).
//!
//! Supported: HS256/384/512 (the priv-key file's bytes are the shared secret), RS256/384/512,
//! PS256/384/512, ES256, ES384, EdDSA (Ed25519). ES512 (P-521) is refused at start: ring has no
//! P-521. RSA keys must have 2048 to 4096 bits to sign, up to 8192 to verify (ring's bounds).
//!
//! Expiry is checked against this member's clock (never in apply).

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, UnparsedPublicKey};
use ring::hmac;

use crate::keys::{self, Curve, PrivateKey, PublicKey};
use crate::{AuthError, AuthInfo};

/// etcd's DefaultTTL.
pub const DEFAULT_TTL_SECS: i128 = 300;

/// Why a token configuration cannot be used; the messages start as etcd's errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenConfigError {
    /// etcd's ErrInvalidAuthOpts; the reason is what etcd logs beside it.
    #[error("auth: invalid auth options ({0})")]
    InvalidOpts(String),
    #[error("auth: missing key data")]
    MissingKey,
    #[error("auth: public and private keys don't match")]
    KeyMismatch,
    /// A key file that does not hold a usable key of the method's type.
    #[error("{0}")]
    BadKey(String),
    /// A method etcd accepts that etcd-rs cannot do.
    #[error("auth: sign method {0} is not supported by etcd-rs ({1})")]
    Unsupported(String, &'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignMethod {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    ES512,
    EdDSA,
}

const METHODS: [SignMethod; 13] = {
    use SignMethod::*;
    [HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA]
};

impl SignMethod {
    /// The JWT `alg` name (golang-jwt's registry names).
    pub fn name(self) -> &'static str {
        use SignMethod::*;
        match self {
            HS256 => "HS256",
            HS384 => "HS384",
            HS512 => "HS512",
            RS256 => "RS256",
            RS384 => "RS384",
            RS512 => "RS512",
            PS256 => "PS256",
            PS384 => "PS384",
            PS512 => "PS512",
            ES256 => "ES256",
            ES384 => "ES384",
            ES512 => "ES512",
            EdDSA => "EdDSA",
        }
    }

    pub fn from_name(name: &str) -> Option<SignMethod> {
        METHODS.into_iter().find(|m| m.name() == name)
    }

    fn hmac(self) -> Option<hmac::Algorithm> {
        use SignMethod::*;
        match self {
            HS256 => Some(hmac::HMAC_SHA256),
            HS384 => Some(hmac::HMAC_SHA384),
            HS512 => Some(hmac::HMAC_SHA512),
            _ => None,
        }
    }

    /// RSA signing padding and verification parameters.
    fn rsa(self) -> Option<(&'static dyn signature::RsaEncoding, &'static signature::RsaParameters)> {
        use SignMethod::*;
        Some(match self {
            RS256 => (&signature::RSA_PKCS1_SHA256, &signature::RSA_PKCS1_2048_8192_SHA256),
            RS384 => (&signature::RSA_PKCS1_SHA384, &signature::RSA_PKCS1_2048_8192_SHA384),
            RS512 => (&signature::RSA_PKCS1_SHA512, &signature::RSA_PKCS1_2048_8192_SHA512),
            PS256 => (&signature::RSA_PSS_SHA256, &signature::RSA_PSS_2048_8192_SHA256),
            PS384 => (&signature::RSA_PSS_SHA384, &signature::RSA_PSS_2048_8192_SHA384),
            PS512 => (&signature::RSA_PSS_SHA512, &signature::RSA_PSS_2048_8192_SHA512),
            _ => return None,
        })
    }

    /// ECDSA curve, signing and verification algorithms (JWT's fixed r||s signatures).
    fn ecdsa(self) -> Option<(Curve, &'static signature::EcdsaSigningAlgorithm, &'static signature::EcdsaVerificationAlgorithm)> {
        match self {
            SignMethod::ES256 => {
                Some((Curve::P256, &signature::ECDSA_P256_SHA256_FIXED_SIGNING, &signature::ECDSA_P256_SHA256_FIXED))
            }
            SignMethod::ES384 => {
                Some((Curve::P384, &signature::ECDSA_P384_SHA384_FIXED_SIGNING, &signature::ECDSA_P384_SHA384_FIXED))
            }
            _ => None,
        }
    }
}

enum Signer {
    Hmac(hmac::Key),
    Rsa(RsaKeyPair, &'static dyn signature::RsaEncoding),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

enum Verifier {
    Hmac(hmac::Key),
    Public(UnparsedPublicKey<Vec<u8>>),
}

/// A JWT token provider: the method, the token lifetime, the key to verify with and (unless
/// verify-only) the key to sign with.
pub struct JwtTokens {
    method: SignMethod,
    ttl_nanos: i128,
    signer: Option<Signer>,
    verifier: Verifier,
    rng: SystemRandom,
}

impl std::fmt::Debug for JwtTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtTokens")
            .field("method", &self.method)
            .field("ttl_nanos", &self.ttl_nanos)
            .field("verify_only", &self.signer.is_none())
            .finish()
    }
}

/// The options etcd's JWT provider knows; others are logged and ignored.
const KNOWN_OPTIONS: [&str; 4] = ["sign-method", "pub-key", "priv-key", "ttl"];

fn read_key_file(path: &str) -> Result<Vec<u8>, TokenConfigError> {
    std::fs::read(path).map_err(|e| TokenConfigError::InvalidOpts(format!("open {path}: {e}")))
}

impl JwtTokens {
    /// etcd's newTokenProviderJWT: ttl (default 5m), key files and sign method are read first
    /// (any failure: invalid auth options), then the keys are parsed for the method.
    pub fn from_options(opts: &HashMap<String, String>) -> Result<JwtTokens, TokenConfigError> {
        let get = |k: &str| opts.get(k).map(String::as_str).unwrap_or("");
        let ttl_nanos = match get("ttl") {
            "" => DEFAULT_TTL_SECS * 1_000_000_000,
            s => parse_go_duration(s).ok_or_else(|| TokenConfigError::InvalidOpts(format!("time: invalid duration {s:?}")))?,
        };
        let public = match get("pub-key") {
            "" => Vec::new(),
            path => read_key_file(path)?,
        };
        let private = match get("priv-key") {
            "" => Vec::new(),
            path => read_key_file(path)?,
        };
        let method = SignMethod::from_name(get("sign-method"))
            .ok_or_else(|| TokenConfigError::InvalidOpts("auth: invalid auth signature method".into()))?;
        let unknown: Vec<&str> = opts.keys().map(String::as_str).filter(|k| !KNOWN_OPTIONS.contains(k)).collect();
        if !unknown.is_empty() {
            tracing::warn!(keys = ?unknown, "unknown JWT options");
        }
        Self::with_keys(method, ttl_nanos, &public, &private)
    }

    /// A provider for `method` from the contents of the key files (empty: not given).
    pub fn with_keys(method: SignMethod, ttl_nanos: i128, public: &[u8], private: &[u8]) -> Result<JwtTokens, TokenConfigError> {
        let rng = SystemRandom::new();
        let (signer, verifier) = if let Some(alg) = method.hmac() {
            if private.is_empty() {
                return Err(TokenConfigError::MissingKey);
            }
            let key = hmac::Key::new(alg, private);
            (Some(Signer::Hmac(key.clone())), Verifier::Hmac(key))
        } else if method == SignMethod::ES512 {
            return Err(TokenConfigError::Unsupported("ES512".into(), "ring, its crypto library, has no P-521 curve"));
        } else {
            let private = match private.is_empty() {
                true => None,
                false => Some(pem_private(private)?),
            };
            let public = match public.is_empty() {
                true => None,
                false => Some(pem_public(public)?),
            };
            asymmetric_keys(method, private, public, &rng)?
        };
        Ok(JwtTokens { method, ttl_nanos, signer, verifier, rng })
    }

    pub fn method(&self) -> SignMethod {
        self.method
    }

    /// Holds only a public key: verifies tokens, cannot issue them.
    pub fn verify_only(&self) -> bool {
        self.signer.is_none()
    }

    /// A token for `username` at auth revision `revision`, expiring ttl from now.
    pub fn assign(&self, username: &str, revision: u64) -> Result<String, AuthError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0);
        self.assign_at(username, revision, now)
    }

    fn assign_at(&self, username: &str, revision: u64, now_nanos: i128) -> Result<String, AuthError> {
        let Some(signer) = &self.signer else { return Err(AuthError::VerifyOnly) };
        // Go's time.Unix(): seconds rounded toward minus infinity
        let exp = (now_nanos + self.ttl_nanos).div_euclid(1_000_000_000);
        let header = format!(r#"{{"alg":"{}","typ":"JWT"}}"#, self.method.name());
        let claims = format!(r#"{{"exp":{exp},"revision":{revision},"username":{}}}"#, go_json_string(username));
        let signing_input = format!("{}.{}", keys::b64url_encode(header.as_bytes()), keys::b64url_encode(claims.as_bytes()));
        let sig = match signer {
            Signer::Hmac(key) => hmac::sign(key, signing_input.as_bytes()).as_ref().to_vec(),
            Signer::Rsa(kp, padding) => {
                let mut sig = vec![0; kp.public().modulus_len()];
                kp.sign(*padding, &self.rng, signing_input.as_bytes(), &mut sig)
                    .map_err(|_| AuthError::Sign("RSA signing failed".into()))?;
                sig
            }
            Signer::Ecdsa(kp) => kp
                .sign(&self.rng, signing_input.as_bytes())
                .map_err(|_| AuthError::Sign("ECDSA signing failed".into()))?
                .as_ref()
                .to_vec(),
            Signer::Ed25519(kp) => kp.sign(signing_input.as_bytes()).as_ref().to_vec(),
        };
        Ok(format!("{signing_input}.{}", keys::b64url_encode(&sig)))
    }

    /// Who a token names and the auth revision it was issued at; None for a token that is
    /// malformed, signed with another method or key, expired, or lacks the claims.
    pub fn info(&self, token: &str) -> Option<AuthInfo> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        match self.info_at(token, now) {
            Ok(ai) => Some(ai),
            Err(why) => {
                tracing::warn!(error = why, "failed to parse a JWT token");
                None
            }
        }
    }

    fn info_at(&self, token: &str, now_secs: i64) -> Result<AuthInfo, &'static str> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err("token contains an invalid number of segments");
        };
        let header: serde_json::Value =
            serde_json::from_slice(&keys::b64url_decode(h).ok_or("malformed header")?).map_err(|_| "malformed header")?;
        let claims: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&keys::b64url_decode(c).ok_or("malformed claims")?).map_err(|_| "malformed claims")?;
        let sig = keys::b64url_decode(s).ok_or("malformed signature")?;
        if header.get("alg").and_then(|a| a.as_str()) != Some(self.method.name()) {
            return Err("invalid signing method");
        }
        let signing_input = &token.as_bytes()[..h.len() + 1 + c.len()];
        let verified = match &self.verifier {
            Verifier::Hmac(key) => hmac::verify(key, signing_input, &sig).is_ok(),
            Verifier::Public(key) => key.verify(signing_input, &sig).is_ok(),
        };
        if !verified {
            return Err("signature is invalid");
        }
        // golang-jwt's MapClaims.Valid: exp, iat and nbf are checked when they are numbers
        let time_claim = |name: &str| claims.get(name).and_then(|v| v.as_f64()).map(|f| f as i64).filter(|&t| t != 0);
        if time_claim("exp").is_some_and(|exp| now_secs > exp) {
            return Err("token is expired");
        }
        if time_claim("iat").is_some_and(|iat| now_secs < iat) {
            return Err("token used before issued");
        }
        if time_claim("nbf").is_some_and(|nbf| now_secs < nbf) {
            return Err("token is not valid yet");
        }
        let username = claims.get("username").and_then(|v| v.as_str()).ok_or("no username claim")?;
        let revision = claims.get("revision").and_then(|v| v.as_f64()).ok_or("no revision claim")?;
        Ok(AuthInfo { username: username.to_string(), revision: revision as u64 })
    }
}

fn pem_block(text: &[u8], what: &str) -> Result<Vec<u8>, TokenConfigError> {
    keys::pem_first_block(text)
        .map(|(_, der)| der)
        .ok_or_else(|| TokenConfigError::BadKey(format!("Invalid Key: Key must be PEM encoded {what}")))
}

fn pem_private(text: &[u8]) -> Result<PrivateKey, TokenConfigError> {
    let der = pem_block(text, "PKCS1, PKCS8 or SEC1 private key")?;
    keys::parse_private_key(&der).map_err(|e| TokenConfigError::BadKey(format!("cannot parse the private key: {e}")))
}

fn pem_public(text: &[u8]) -> Result<PublicKey, TokenConfigError> {
    let der = pem_block(text, "PKIX or PKCS1 public key, or certificate")?;
    keys::parse_public_key(&der).map_err(|e| TokenConfigError::BadKey(format!("cannot parse the public key: {e}")))
}

fn wrong_key(method: SignMethod, which: &str, kind: &str) -> TokenConfigError {
    TokenConfigError::BadKey(format!("auth: sign method {} needs a different key: the {which} key is {kind}", method.name()))
}

fn rejected(which: &str, e: ring::error::KeyRejected) -> TokenConfigError {
    TokenConfigError::BadKey(format!("cannot use the {which} key: {e}"))
}

/// The signer (None: verify-only) and verifier of an RSA, ECDSA or Ed25519 method; with both
/// keys given they must be one pair.
fn asymmetric_keys(
    method: SignMethod,
    private: Option<PrivateKey>,
    public: Option<PublicKey>,
    rng: &SystemRandom,
) -> Result<(Option<Signer>, Verifier), TokenConfigError> {
    let (signer, derived): (Option<Signer>, Option<PublicKey>) = match private {
        None => (None, None),
        Some(key) => {
            if let Some((padding, _)) = method.rsa() {
                let PrivateKey::Rsa(der) = key else { return Err(wrong_key(method, "private", key.kind())) };
                let kp = RsaKeyPair::from_der(&der).map_err(|e| rejected("RSA private", e))?;
                let public = PublicKey::Rsa(kp.public().as_ref().to_vec());
                (Some(Signer::Rsa(kp, padding)), Some(public))
            } else if let Some((curve, alg, _)) = method.ecdsa() {
                let PrivateKey::Ec { curve: key_curve, d, public } = key else {
                    return Err(wrong_key(method, "private", key.kind()));
                };
                if key_curve != curve {
                    return Err(wrong_key(method, "private", &format!("on {}", key_curve.name())));
                }
                let point = public.ok_or_else(|| {
                    TokenConfigError::BadKey("the EC private key file leaves out its public key, which etcd-rs needs".into())
                })?;
                let kp = EcdsaKeyPair::from_private_key_and_public_key(alg, &d, &point, rng)
                    .map_err(|e| rejected("ECDSA private", e))?;
                (Some(Signer::Ecdsa(kp)), Some(PublicKey::Ec { curve, point }))
            } else {
                let PrivateKey::Ed25519(pkcs8) = key else { return Err(wrong_key(method, "private", key.kind())) };
                let kp = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).map_err(|e| rejected("Ed25519 private", e))?;
                let public = PublicKey::Ed25519(kp.public_key().as_ref().to_vec());
                (Some(Signer::Ed25519(kp)), Some(public))
            }
        }
    };
    if let Some(p) = &public {
        let fits = match p {
            PublicKey::Rsa(_) => method.rsa().is_some(),
            PublicKey::Ec { curve, .. } => method.ecdsa().is_some_and(|(c, _, _)| c == *curve),
            PublicKey::Ed25519(_) => method == SignMethod::EdDSA,
        };
        if !fits {
            let kind = match p {
                PublicKey::Ec { curve, .. } => format!("ECDSA on {}", curve.name()),
                other => other.kind().to_string(),
            };
            return Err(wrong_key(method, "public", &kind));
        }
    }
    let public = match (public, derived) {
        (None, None) => return Err(TokenConfigError::MissingKey),
        (Some(given), Some(derived)) => {
            let same = match (&given, &derived) {
                (PublicKey::Rsa(a), PublicKey::Rsa(b)) => {
                    keys::rsa_public_numbers(a).is_some() && keys::rsa_public_numbers(a) == keys::rsa_public_numbers(b)
                }
                (a, b) => a == b,
            };
            if !same {
                return Err(TokenConfigError::KeyMismatch);
            }
            derived
        }
        (Some(key), None) | (None, Some(key)) => key,
    };
    let verifier = match public {
        PublicKey::Rsa(der) => {
            let (_, params) = method.rsa().ok_or(TokenConfigError::MissingKey)?;
            UnparsedPublicKey::new(params as &dyn signature::VerificationAlgorithm, der)
        }
        PublicKey::Ec { point, .. } => {
            let (_, _, alg) = method.ecdsa().ok_or(TokenConfigError::MissingKey)?;
            UnparsedPublicKey::new(alg as &dyn signature::VerificationAlgorithm, point)
        }
        PublicKey::Ed25519(raw) => UnparsedPublicKey::new(&signature::ED25519 as &dyn signature::VerificationAlgorithm, raw),
    };
    Ok((signer, Verifier::Public(verifier)))
}

/// A JSON string as Go's encoding/json writes it (HTML characters and U+2028/9 escaped).
fn go_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", ch as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's time.ParseDuration, in nanoseconds ("1h30m", "-1.5s", "0"); None when malformed.
pub fn parse_go_duration(s: &str) -> Option<i128> {
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." {
            return None;
        }
        let n: f64 = num.parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * unit;
    }
    // Go's Duration is an int64 of nanoseconds
    if total > i64::MAX as f64 {
        return None;
    }
    let nanos = total as i128;
    Some(if neg { -nanos } else { nanos })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i128 = 1_000_000_000;

    /// A fixed RSA-2048 test key (ring cannot generate RSA keys; rcgen uses ring).
    const RSA_PRIVATE: &str = include_str!("../testdata/rsa2048.key");
    const RSA_PUBLIC: &str = include_str!("../testdata/rsa2048.pub");
    const RSA_OTHER_PUBLIC: &str = include_str!("../testdata/rsa2048-other.pub");

    fn ec_pair(alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
        let kp = rcgen::KeyPair::generate_for(alg).unwrap();
        (kp.serialize_pem(), kp.public_key_pem())
    }

    fn provider(method: SignMethod, public: &str, private: &str) -> JwtTokens {
        JwtTokens::with_keys(method, 300 * SEC, public.as_bytes(), private.as_bytes()).unwrap()
    }

    fn round_trip(t: &JwtTokens) {
        let now = 1_700_000_000 * SEC;
        let token = t.assign_at("alice", 7, now).unwrap();
        assert_eq!(token.split('.').count(), 3, "{token}");
        let ai = t.info_at(&token, 1_700_000_000).unwrap();
        assert_eq!(ai, AuthInfo { username: "alice".into(), revision: 7 });
    }

    #[test]
    fn hmac_methods_round_trip_with_the_shared_secret() {
        for m in [SignMethod::HS256, SignMethod::HS384, SignMethod::HS512] {
            let t = provider(m, "", "shared secret\n");
            round_trip(&t);
            let other = provider(m, "", "another secret\n");
            let token = t.assign_at("alice", 1, 0).unwrap();
            assert!(other.info_at(&token, 0).is_err(), "{m:?}: another secret must not verify");
        }
        assert_eq!(JwtTokens::with_keys(SignMethod::HS256, SEC, b"", b"").unwrap_err(), TokenConfigError::MissingKey);
    }

    #[test]
    fn rsa_and_pss_methods_round_trip() {
        for m in [SignMethod::RS256, SignMethod::RS384, SignMethod::RS512, SignMethod::PS256, SignMethod::PS384, SignMethod::PS512] {
            round_trip(&provider(m, "", RSA_PRIVATE));
            round_trip(&provider(m, RSA_PUBLIC, RSA_PRIVATE));
        }
    }

    #[test]
    fn ecdsa_and_eddsa_methods_round_trip() {
        let (p256, p256_pub) = ec_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (p384, p384_pub) = ec_pair(&rcgen::PKCS_ECDSA_P384_SHA384);
        let (ed, ed_pub) = ec_pair(&rcgen::PKCS_ED25519);
        round_trip(&provider(SignMethod::ES256, &p256_pub, &p256));
        round_trip(&provider(SignMethod::ES384, &p384_pub, &p384));
        round_trip(&provider(SignMethod::EdDSA, &ed_pub, &ed));
        round_trip(&provider(SignMethod::EdDSA, "", &ed));
    }

    #[test]
    fn openssl_key_formats_load() {
        // "EC PRIVATE KEY" (SEC1, as `openssl ecparam -genkey` writes it) and "RSA PRIVATE KEY" (PKCS#1)
        round_trip(&provider(SignMethod::ES256, include_str!("../testdata/ec-p256-sec1.pub"), include_str!("../testdata/ec-p256-sec1.key")));
        let pkcs1 = include_str!("../testdata/rsa2048-pkcs1.key");
        round_trip(&provider(SignMethod::RS256, RSA_PUBLIC, pkcs1));
        // a token signed with the PKCS#1 file verifies with the PKCS#8 file of the same key
        let token = provider(SignMethod::RS512, "", pkcs1).assign_at("alice", 1, 0).unwrap();
        assert!(provider(SignMethod::RS512, "", RSA_PRIVATE).info_at(&token, 0).is_ok());
    }

    #[test]
    fn a_verify_only_member_checks_tokens_but_cannot_issue_them() {
        let signer = provider(SignMethod::RS256, "", RSA_PRIVATE);
        let verifier = provider(SignMethod::RS256, RSA_PUBLIC, "");
        assert!(verifier.verify_only() && !signer.verify_only());
        let token = signer.assign_at("bob", 3, 0).unwrap();
        assert_eq!(verifier.info_at(&token, 0).unwrap().username, "bob");
        assert_eq!(verifier.assign_at("bob", 3, 0), Err(AuthError::VerifyOnly));
        assert_eq!(AuthError::VerifyOnly.to_string(), "auth: token signing attempted with verify-only key");
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let (p256, p256_pub) = ec_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let t = provider(SignMethod::ES256, &p256_pub, &p256);
        let token = t.assign_at("alice", 1, 0).unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        // claims rewritten to another user, signature kept
        parts[1] = keys::b64url_encode(br#"{"exp":999999999999,"revision":1,"username":"root"}"#);
        assert_eq!(t.info_at(&parts.join("."), 0), Err("signature is invalid"));
        // one signature bit flipped
        let mut sig = keys::b64url_decode(token.split('.').nth(2).unwrap()).unwrap();
        sig[5] ^= 1;
        let flipped = format!("{}.{}", token.rsplit_once('.').unwrap().0, keys::b64url_encode(&sig));
        assert_eq!(t.info_at(&flipped, 0), Err("signature is invalid"));
        assert!(t.info_at("a.b", 0).is_err());
        assert!(t.info_at("not a token", 0).is_err());
        assert!(t.info_at(&format!("{token}.x"), 0).is_err());
    }

    #[test]
    fn a_token_of_another_key_or_method_is_refused() {
        let (a, a_pub) = ec_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (b, b_pub) = ec_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let ta = provider(SignMethod::ES256, &a_pub, &a);
        let tb = provider(SignMethod::ES256, &b_pub, &b);
        let token = ta.assign_at("alice", 1, 0).unwrap();
        assert_eq!(tb.info_at(&token, 0), Err("signature is invalid"));
        let rsa = provider(SignMethod::RS256, "", RSA_PRIVATE);
        let ps = provider(SignMethod::PS256, "", RSA_PRIVATE);
        assert_eq!(ps.info_at(&rsa.assign_at("alice", 1, 0).unwrap(), 0), Err("invalid signing method"));
        // an HMAC token signed with the RSA public key bytes as the secret (alg confusion)
        let confused = provider(SignMethod::HS256, "", RSA_PUBLIC);
        assert!(rsa.info_at(&confused.assign_at("root", 1, 0).unwrap(), 0).is_err());
    }

    #[test]
    fn a_token_is_valid_until_its_exp_second() {
        let t = JwtTokens::with_keys(SignMethod::HS256, 2 * SEC, b"", b"k").unwrap();
        let token = t.assign_at("alice", 1, 1000 * SEC + SEC / 2).unwrap();
        assert!(t.info_at(&token, 1002).is_ok(), "exp is issue time + ttl, truncated to seconds");
        assert_eq!(t.info_at(&token, 1003), Err("token is expired"));
    }

    #[test]
    fn claims_are_written_as_etcd_writes_them() {
        let t = JwtTokens::with_keys(SignMethod::HS256, 300 * SEC, b"", b"k").unwrap();
        let token = t.assign_at("a<b\"", 5, 100 * SEC).unwrap();
        let mut parts = token.split('.');
        let header = keys::b64url_decode(parts.next().unwrap()).unwrap();
        let claims = keys::b64url_decode(parts.next().unwrap()).unwrap();
        assert_eq!(header, br#"{"alg":"HS256","typ":"JWT"}"#);
        assert_eq!(std::str::from_utf8(&claims).unwrap(), r#"{"exp":400,"revision":5,"username":"a\u003cb\""}"#);
    }

    #[test]
    fn tokens_without_user_or_revision_claims_are_refused() {
        let t = JwtTokens::with_keys(SignMethod::HS256, SEC, b"", b"k").unwrap();
        let forge = |claims: &str| {
            let input = format!("{}.{}", keys::b64url_encode(br#"{"alg":"HS256","typ":"JWT"}"#), keys::b64url_encode(claims.as_bytes()));
            let key = hmac::Key::new(hmac::HMAC_SHA256, b"k");
            format!("{input}.{}", keys::b64url_encode(hmac::sign(&key, input.as_bytes()).as_ref()))
        };
        assert_eq!(t.info_at(&forge(r#"{"revision":1}"#), 0), Err("no username claim"));
        assert_eq!(t.info_at(&forge(r#"{"username":"a"}"#), 0), Err("no revision claim"));
        assert_eq!(t.info_at(&forge(r#"{"username":"a","revision":2}"#), 0).unwrap().revision, 2, "no exp: never expires");
        assert_eq!(t.info_at(&forge(r#"{"username":"a","revision":2,"nbf":50}"#), 10), Err("token is not valid yet"));
    }

    #[test]
    fn keys_must_fit_the_method_and_each_other() {
        let (p256, p256_pub) = ec_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (p384, _) = ec_pair(&rcgen::PKCS_ECDSA_P384_SHA384);
        let (_, other_pub) = ec_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
        let with = |m, public: &str, private: &str| JwtTokens::with_keys(m, SEC, public.as_bytes(), private.as_bytes());
        assert_eq!(with(SignMethod::RS256, "", "").unwrap_err(), TokenConfigError::MissingKey);
        assert_eq!(with(SignMethod::ES256, &other_pub, &p256).unwrap_err(), TokenConfigError::KeyMismatch);
        assert_eq!(with(SignMethod::RS256, RSA_OTHER_PUBLIC, RSA_PRIVATE).unwrap_err(), TokenConfigError::KeyMismatch);
        assert!(matches!(with(SignMethod::RS256, "", &p256).unwrap_err(), TokenConfigError::BadKey(m) if m.contains("ECDSA")));
        assert!(matches!(with(SignMethod::ES256, "", &p384).unwrap_err(), TokenConfigError::BadKey(m) if m.contains("P-384")));
        assert!(matches!(with(SignMethod::ES256, RSA_PUBLIC, "").unwrap_err(), TokenConfigError::BadKey(m) if m.contains("RSA")));
        assert!(matches!(with(SignMethod::EdDSA, &p256_pub, "").unwrap_err(), TokenConfigError::BadKey(_)));
        assert!(matches!(with(SignMethod::RS256, "", "not pem").unwrap_err(), TokenConfigError::BadKey(m) if m.contains("PEM")));
        assert!(matches!(with(SignMethod::ES512, "", &p256).unwrap_err(), TokenConfigError::Unsupported(..)));
    }

    #[test]
    fn options_are_read_as_etcd_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::write(&key, RSA_PRIVATE).unwrap();
        let key = key.to_str().unwrap().to_string();
        let opts = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>();

        let t = JwtTokens::from_options(&opts(&[("sign-method", "RS256"), ("priv-key", &key)])).unwrap();
        assert_eq!(t.ttl_nanos, 300 * SEC, "default ttl is etcd's 5 minutes");
        let t = JwtTokens::from_options(&opts(&[("sign-method", "RS256"), ("priv-key", &key), ("ttl", "90s"), ("x", "y")])).unwrap();
        assert_eq!(t.ttl_nanos, 90 * SEC);

        let invalid = |o: &[(&str, &str)]| match JwtTokens::from_options(&opts(o)) {
            Err(TokenConfigError::InvalidOpts(why)) => why,
            other => panic!("{o:?}: {other:?}"),
        };
        assert_eq!(invalid(&[("priv-key", &key)]), "auth: invalid auth signature method");
        assert_eq!(invalid(&[("sign-method", "XX256"), ("priv-key", &key)]), "auth: invalid auth signature method");
        assert_eq!(invalid(&[("sign-method", "RS256"), ("priv-key", &key), ("ttl", "abc")]), "time: invalid duration \"abc\"");
        assert!(invalid(&[("sign-method", "RS256"), ("priv-key", "/nonexistent/key")]).starts_with("open /nonexistent/key:"));
        assert_eq!(
            TokenConfigError::InvalidOpts("x".into()).to_string(),
            "auth: invalid auth options (x)",
            "the message starts as etcd's ErrInvalidAuthOpts"
        );
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("5m"), Some(300 * SEC));
        assert_eq!(parse_go_duration("1h30m"), Some(5400 * SEC));
        assert_eq!(parse_go_duration("1.5s"), Some(SEC * 3 / 2));
        assert_eq!(parse_go_duration("-2s"), Some(-2 * SEC));
        assert_eq!(parse_go_duration("0"), Some(0));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("5x"), None);
        assert_eq!(parse_go_duration(".s"), None);
    }
}
