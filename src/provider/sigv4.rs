//! AWS Signature Version 4 for the Bedrock adapter: the canonical request, the string to sign,
//! the derived signing key (HMAC-SHA256 with `ring`) and the `Authorization` header.
//!
//! Only what a JSON `POST` needs: no query string, the payload hash of the body, the headers
//! the adapter signs (`content-type`, `host`, `x-amz-content-sha256`, `x-amz-date` and
//! `x-amz-security-token` with temporary credentials). The canonical URI is the request path
//! URI-encoded once more (every service but S3 double-encodes): a model id's `:` travels as
//! `%3A` and is signed as `%253A`.

use ring::hmac;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// AWS credentials: an access key id, its secret and, for temporary credentials, the session
/// token. The secret and the token are [`Secret`]s (never printed).
#[derive(Clone)]
pub struct AwsCredentials {
    /// `AKIA…` / `ASIA…`.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: Secret,
    /// The session token of temporary credentials (`x-amz-security-token`).
    pub session_token: Option<Secret>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Hex SHA-256 of `data`.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
}

/// SigV4 URI encoding: every byte but `A-Z a-z 0-9 - _ . ~` as `%XX` (upper-case hex); `/`
/// kept when `keep_slash`.
pub(crate) fn uri_encode(s: &str, keep_slash: bool) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else if b == b'/' && keep_slash {
            out.push('/');
        } else {
            out.push('%');
            out.push(char::from(DIGITS[usize::from(b >> 4)]));
            out.push(char::from(DIGITS[usize::from(b & 15)]));
        }
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` for `unix` seconds (UTC).
pub(crate) fn amz_date(unix: u64) -> String {
    let days = i64::try_from(unix / 86_400).unwrap_or(0);
    let secs = unix % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// What one signature covers.
pub(crate) struct Signing<'a> {
    pub method: &'a str,
    /// The canonical URI (already encoded as the service wants it).
    pub canonical_uri: &'a str,
    /// The canonical query string (empty for none).
    pub query: &'a str,
    /// `(lower-case name, trimmed value)`, sorted by name.
    pub headers: &'a [(&'a str, &'a str)],
    pub payload_hash: &'a str,
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

impl Signing<'_> {
    /// `host;x-amz-date;…`.
    pub(crate) fn signed_headers(&self) -> String {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| *k).collect();
        names.join(";")
    }

    /// The canonical request.
    pub(crate) fn canonical_request(&self) -> String {
        let mut canon = String::new();
        for (k, v) in self.headers {
            canon.push_str(k);
            canon.push(':');
            canon.push_str(v);
            canon.push('\n');
        }
        format!(
            "{}\n{}\n{}\n{canon}\n{}\n{}",
            self.method,
            self.canonical_uri,
            self.query,
            self.signed_headers(),
            self.payload_hash
        )
    }

    fn scope(&self) -> String {
        let date = self.amz_date.get(..8).unwrap_or(self.amz_date);
        format!("{date}/{}/{}/aws4_request", self.region, self.service)
    }

    /// The string to sign.
    pub(crate) fn string_to_sign(&self) -> String {
        format!(
            "AWS4-HMAC-SHA256\n{}\n{}\n{}",
            self.amz_date,
            self.scope(),
            sha256_hex(self.canonical_request().as_bytes())
        )
    }

    /// The hex signature with `secret`.
    pub(crate) fn signature(&self, secret: &Secret) -> String {
        let date = self.amz_date.get(..8).unwrap_or(self.amz_date);
        let k_secret = format!("AWS4{}", secret.expose());
        let k_date = hmac_sha256(k_secret.as_bytes(), date.as_bytes());
        let k_region = hmac_sha256(k_date.as_ref(), self.region.as_bytes());
        let k_service = hmac_sha256(k_region.as_ref(), self.service.as_bytes());
        let k_signing = hmac_sha256(k_service.as_ref(), b"aws4_request");
        hex(hmac_sha256(k_signing.as_ref(), self.string_to_sign().as_bytes()).as_ref())
    }

    /// The `Authorization` header value.
    pub(crate) fn authorization(&self, access_key_id: &str, secret: &Secret) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential={access_key_id}/{}, SignedHeaders={}, Signature={}",
            self.scope(),
            self.signed_headers(),
            self.signature(secret)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published example of the Amazon S3 documentation ("Signature Calculations for the
    /// Authorization Header", GET Object): its canonical request, string to sign and signature.
    #[test]
    fn the_published_s3_get_object_example() {
        let headers = [
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            (
                "x-amz-content-sha256",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            ("x-amz-date", "20130524T000000Z"),
        ];
        let s = Signing {
            method: "GET",
            canonical_uri: "/test.txt",
            query: "",
            headers: &headers,
            payload_hash: &sha256_hex(b""),
            amz_date: "20130524T000000Z",
            region: "us-east-1",
            service: "s3",
        };
        assert_eq!(
            s.string_to_sign(),
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n\
             7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        let secret = Secret::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY");
        assert_eq!(
            s.signature(&secret),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert!(
            s.authorization("AKIAIOSFODNN7EXAMPLE", &secret)
                .starts_with(
                    "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/\
                     aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
                     Signature=f0e8bdb8"
                )
        );
    }

    /// The AWS Signature Version 4 test suite's `get-vanilla`.
    #[test]
    fn the_test_suite_get_vanilla() {
        let headers = [
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
        ];
        let s = Signing {
            method: "GET",
            canonical_uri: "/",
            query: "",
            headers: &headers,
            payload_hash: &sha256_hex(b""),
            amz_date: "20150830T123600Z",
            region: "us-east-1",
            service: "service",
        };
        let secret = Secret::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
        assert_eq!(
            s.signature(&secret),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn model_ids_are_encoded_once_in_the_path_and_twice_in_the_canonical_uri() {
        let path = format!(
            "/model/{}/converse",
            uri_encode("anthropic.claude-3-5-sonnet-20240620-v1:0", false)
        );
        assert_eq!(
            path,
            "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
        );
        assert_eq!(
            uri_encode(&path, true),
            "/model/anthropic.claude-3-5-sonnet-20240620-v1%253A0/converse"
        );
    }

    #[test]
    fn dates_are_utc_basic_format() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(1_440_938_160), "20150830T123600Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
    }
}
