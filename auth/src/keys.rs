//! Key material for JWT tokens, decoded by hand on top of `ring`: base64 (standard and URL-safe),
//! PEM, and the few DER structures etcd's JWT keys come in (PKCS#8, PKCS#1 and SEC1 private
//! keys; SubjectPublicKeyInfo, PKCS#1 public keys and X.509 certificates for public keys).
//!
//! Invariant: everything here reads untrusted bytes (key files, tokens) and answers None or an
//! error for anything malformed, never panics; lengths are checked before every slice.

// ---- base64 ----

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding (JWT's segment encoding).
pub(crate) fn b64url_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(URL[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// base64url, padded or not (jwt-go accepts both).
pub(crate) fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    b64_decode(s.as_bytes(), URL)
}

fn b64_decode(s: &[u8], alphabet: &[u8; 64]) -> Option<Vec<u8>> {
    let body = match s.iter().position(|&c| c == b'=') {
        Some(p) => {
            // padding only at the end, and only as much as completes a quantum
            if s[p..].iter().any(|&c| c != b'=') || !s.len().is_multiple_of(4) || s.len() - p > 2 {
                return None;
            }
            &s[..p]
        }
        None => s,
    };
    if body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in body {
        let v = alphabet.iter().position(|&a| a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // the unused low bits of the last character must be zero (canonical encoding)
    if acc != 0 {
        return None;
    }
    Some(out)
}

// ---- PEM ----

/// The first PEM block of `text` (any label, as Go's pem.Decode): its label and DER bytes.
/// Header lines ("Proc-Type: ...") are skipped; None when there is no complete block.
pub(crate) fn pem_first_block(text: &[u8]) -> Option<(String, Vec<u8>)> {
    let text = std::str::from_utf8(text).ok()?;
    let mut lines = text.lines().map(str::trim);
    let label = loop {
        let line = lines.next()?;
        if let Some(rest) = line.strip_prefix("-----BEGIN ") {
            if let Some(label) = rest.strip_suffix("-----") {
                break label.to_string();
            }
        }
    };
    let end = format!("-----END {label}-----");
    let mut b64 = Vec::new();
    for line in lines {
        if line == end {
            return Some((label, b64_decode(&b64, STD)?));
        }
        if line.contains(':') {
            continue;
        }
        b64.extend_from_slice(line.as_bytes());
    }
    None
}

// ---- DER ----

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const CONTEXT_0: u8 = 0xa0;
const CONTEXT_1: u8 = 0xa1;

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// A cursor over DER elements.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The next element's tag and contents.
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        let (content, after) = rest.split_at(len);
        self.0 = after;
        Some((tag, content))
    }

    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next()? {
            (t, content) if t == tag => Some(content),
            _ => None,
        }
    }

    fn peek_tag(&self) -> Option<u8> {
        self.0.first().copied()
    }
}

/// The contents of a BIT STRING with no unused bits.
fn bit_string(content: &[u8]) -> Option<&[u8]> {
    match content.split_first()? {
        (0, bits) => Some(bits),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Curve {
    P256,
    P384,
    P521,
    Other,
}

impl Curve {
    fn from_oid(oid: &[u8]) -> Curve {
        match oid {
            OID_P256 => Curve::P256,
            OID_P384 => Curve::P384,
            OID_P521 => Curve::P521,
            _ => Curve::Other,
        }
    }

    /// Bytes of a private scalar on this curve.
    fn scalar_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
            Curve::Other => 0,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
            Curve::Other => "an unsupported curve",
        }
    }
}

/// A private key as found in a key file.
pub(crate) enum PrivateKey {
    /// PKCS#1 RSAPrivateKey DER.
    Rsa(Vec<u8>),
    /// The private scalar (left-padded to the curve's size) and the uncompressed public point
    /// (None when the file left it out).
    Ec { curve: Curve, d: Vec<u8>, public: Option<Vec<u8>> },
    /// The whole PKCS#8 document (ring reads Ed25519 keys from it).
    Ed25519(Vec<u8>),
}

/// A public key as found in a key or certificate file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PublicKey {
    /// PKCS#1 RSAPublicKey DER.
    Rsa(Vec<u8>),
    /// The uncompressed point.
    Ec { curve: Curve, point: Vec<u8> },
    Ed25519(Vec<u8>),
}

impl PrivateKey {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            PrivateKey::Rsa(_) => "RSA",
            PrivateKey::Ec { .. } => "ECDSA",
            PrivateKey::Ed25519(_) => "Ed25519",
        }
    }
}

impl PublicKey {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            PublicKey::Rsa(_) => "RSA",
            PublicKey::Ec { .. } => "ECDSA",
            PublicKey::Ed25519(_) => "Ed25519",
        }
    }
}

/// A private key from DER: PKCS#8, PKCS#1 (RSA) or SEC1 (EC), told apart by their shapes.
pub(crate) fn parse_private_key(der: &[u8]) -> Result<PrivateKey, &'static str> {
    const BAD: &str = "not a PKCS#8, PKCS#1 or SEC1 private key";
    let mut outer = Der(der);
    let mut seq = Der(outer.expect(SEQUENCE).ok_or(BAD)?);
    if !outer.is_empty() {
        return Err(BAD);
    }
    let version = seq.expect(INTEGER).ok_or(BAD)?;
    match seq.peek_tag() {
        // PKCS#8: version, AlgorithmIdentifier, OCTET STRING privateKey, ...
        Some(SEQUENCE) => {
            let mut alg = Der(seq.expect(SEQUENCE).ok_or(BAD)?);
            let oid = alg.expect(OID).ok_or(BAD)?;
            let inner = seq.expect(OCTET_STRING).ok_or(BAD)?;
            match oid {
                OID_RSA => Ok(PrivateKey::Rsa(inner.to_vec())),
                OID_EC => {
                    let curve = Curve::from_oid(alg.expect(OID).ok_or("EC key without a named curve")?);
                    parse_sec1(inner, Some(curve))
                }
                OID_ED25519 => Ok(PrivateKey::Ed25519(der.to_vec())),
                _ => Err("private key of an unsupported algorithm"),
            }
        }
        // PKCS#1 RSAPrivateKey: version 0, modulus, ...
        Some(INTEGER) if version == [0] => Ok(PrivateKey::Rsa(der.to_vec())),
        // SEC1 ECPrivateKey: version 1, OCTET STRING d, ...
        Some(OCTET_STRING) if version == [1] => parse_sec1(der, None),
        _ => Err(BAD),
    }
}

/// SEC1 ECPrivateKey { version 1, privateKey OCTET STRING, [0] curve OID, [1] public key }.
fn parse_sec1(der: &[u8], curve_from_pkcs8: Option<Curve>) -> Result<PrivateKey, &'static str> {
    const BAD: &str = "malformed SEC1 EC private key";
    let mut seq = Der(Der(der).expect(SEQUENCE).ok_or(BAD)?);
    if seq.expect(INTEGER).ok_or(BAD)? != [1] {
        return Err(BAD);
    }
    let d = seq.expect(OCTET_STRING).ok_or(BAD)?;
    let mut curve = curve_from_pkcs8;
    let mut public = None;
    while let Some((tag, content)) = seq.next() {
        match tag {
            CONTEXT_0 => {
                let named = Curve::from_oid(Der(content).expect(OID).ok_or(BAD)?);
                if curve.is_some_and(|c| c != named) {
                    return Err("EC key names two different curves");
                }
                curve = Some(named);
            }
            CONTEXT_1 => public = Some(bit_string(Der(content).expect(BIT_STRING).ok_or(BAD)?).ok_or(BAD)?.to_vec()),
            _ => return Err(BAD),
        }
    }
    let curve = curve.ok_or("EC key without a named curve")?;
    let len = curve.scalar_len();
    if d.len() > len || len == 0 {
        return Err("EC private key does not fit its curve");
    }
    let mut padded = vec![0u8; len - d.len()];
    padded.extend_from_slice(d);
    Ok(PrivateKey::Ec { curve, d: padded, public })
}

/// A public key from DER: SubjectPublicKeyInfo, an X.509 certificate's key, or a PKCS#1
/// RSAPublicKey.
pub(crate) fn parse_public_key(der: &[u8]) -> Result<PublicKey, &'static str> {
    const BAD: &str = "not a public key (PKIX or PKCS#1) or a certificate";
    let mut outer = Der(der);
    let content = outer.expect(SEQUENCE).ok_or(BAD)?;
    if !outer.is_empty() {
        return Err(BAD);
    }
    let mut seq = Der(content);
    match seq.peek_tag() {
        Some(INTEGER) => Ok(PublicKey::Rsa(der.to_vec())),
        Some(SEQUENCE) => {
            let first = seq.expect(SEQUENCE).ok_or(BAD)?;
            match Der(first).peek_tag() {
                // SubjectPublicKeyInfo { AlgorithmIdentifier, BIT STRING }
                Some(OID) => parse_spki(content),
                // Certificate { TBSCertificate { [0] version, serial, sig alg, issuer, validity,
                // subject, subjectPublicKeyInfo, ... }, ... }
                Some(CONTEXT_0) | Some(INTEGER) => {
                    let mut tbs = Der(first);
                    if tbs.peek_tag() == Some(CONTEXT_0) {
                        tbs.next().ok_or(BAD)?;
                    }
                    for _ in 0..5 {
                        tbs.next().ok_or(BAD)?;
                    }
                    parse_spki(tbs.expect(SEQUENCE).ok_or(BAD)?)
                }
                _ => Err(BAD),
            }
        }
        _ => Err(BAD),
    }
}

fn parse_spki(content: &[u8]) -> Result<PublicKey, &'static str> {
    const BAD: &str = "malformed SubjectPublicKeyInfo";
    let mut seq = Der(content);
    let mut alg = Der(seq.expect(SEQUENCE).ok_or(BAD)?);
    let key = bit_string(seq.expect(BIT_STRING).ok_or(BAD)?).ok_or(BAD)?;
    match alg.expect(OID).ok_or(BAD)? {
        OID_RSA => Ok(PublicKey::Rsa(key.to_vec())),
        OID_EC => {
            let curve = Curve::from_oid(alg.expect(OID).ok_or("EC key without a named curve")?);
            Ok(PublicKey::Ec { curve, point: key.to_vec() })
        }
        OID_ED25519 => Ok(PublicKey::Ed25519(key.to_vec())),
        _ => Err("public key of an unsupported algorithm"),
    }
}

/// An RSA public key's (modulus, exponent) without leading zero bytes, to compare two keys
/// whatever their encodings.
pub(crate) fn rsa_public_numbers(pkcs1: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut seq = Der(Der(pkcs1).expect(SEQUENCE)?);
    let n = seq.expect(INTEGER)?;
    let e = seq.expect(INTEGER)?;
    let trim = |v: &[u8]| -> usize { v.iter().take_while(|&&b| b == 0).count() };
    Some((&n[trim(n)..], &e[trim(e)..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trips_every_length() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let enc = b64url_encode(&data);
            assert!(!enc.contains('='));
            assert_eq!(b64url_decode(&enc).as_deref(), Some(data.as_slice()), "len {len}");
        }
        assert_eq!(b64url_encode(b"\xfb\xff"), "-_8");
    }

    #[test]
    fn base64url_refuses_bad_input() {
        assert_eq!(b64url_decode("a"), None, "a lone character is no byte");
        assert_eq!(b64url_decode("ab+c"), None, "standard alphabet characters are not base64url");
        assert_eq!(b64url_decode("ab=c"), None);
        assert_eq!(b64url_decode("ab"), None, "non-zero unused bits");
        assert_eq!(b64url_decode("aQ==").as_deref(), Some(&b"i"[..]), "padding is accepted");
    }

    #[test]
    fn pem_first_block_reads_any_label_and_skips_headers() {
        let pem = "junk\n-----BEGIN FOO BAR-----\nProc-Type: 4,ENCRYPTED\n\naGVs\nbG8=\n-----END FOO BAR-----\n";
        assert_eq!(pem_first_block(pem.as_bytes()), Some(("FOO BAR".to_string(), b"hello".to_vec())));
        assert_eq!(pem_first_block(b"-----BEGIN X-----\naGVs\n"), None, "no END line");
        assert_eq!(pem_first_block(b"no pem here"), None);
    }

    #[test]
    fn der_lengths_past_the_input_are_refused() {
        assert!(parse_private_key(&[0x30, 0x82, 0xff, 0xff, 0x02]).is_err());
        assert!(parse_public_key(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_err());
        assert!(parse_public_key(&[]).is_err());
        assert!(parse_private_key(&[0x30, 0x00]).is_err());
    }
}
