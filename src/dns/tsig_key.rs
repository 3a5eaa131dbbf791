//! TSIG key files as `tsig-keygen` (BIND) writes them:
//!
//! ```text
//! key "kmsd-key" {
//!     algorithm hmac-sha256;
//!     secret "base64...";
//! };
//! ```
//!
//! The first `key` clause of the file is used. `#`, `//` and `/* */`
//! comments are allowed, as in named.conf.

use hickory_proto::rr::Name;
use hickory_proto::rr::TSigner;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use std::path::{Path, PathBuf};

/// The TSIG algorithms kmsd signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    HmacSha256,
    HmacSha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Self::HmacSha256 => "hmac-sha256",
            Self::HmacSha512 => "hmac-sha512",
        }
    }

    fn hickory(self) -> TsigAlgorithm {
        match self {
            Self::HmacSha256 => TsigAlgorithm::HmacSha256,
            Self::HmacSha512 => TsigAlgorithm::HmacSha512,
        }
    }
}

/// A TSIG key read from a file. Its secret never appears in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct TsigKey {
    /// The file it was read from (what the configuration shows).
    pub path: PathBuf,
    /// The key's name, as the server knows it (without a trailing dot).
    pub name: String,
    pub algorithm: Algorithm,
    secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigKey")
            .field("path", &self.path)
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Seconds of clock difference the server may allow (RFC 8945 recommends 300).
const FUDGE: u16 = 300;

impl TsigKey {
    /// Reads and parses the key file at `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the TSIG key file {}: {e}", path.display()))?;
        Self::parse(&text, path).map_err(|e| format!("TSIG key file {}: {e}", path.display()))
    }

    /// Parses the text of a key file (`path` is kept for display).
    pub fn parse(text: &str, path: &Path) -> Result<Self, String> {
        let tokens = tokens(&strip_comments(text))?;
        let mut it = tokens.iter().map(String::as_str).peekable();
        while let Some(t) = it.next() {
            if t != "key" {
                continue;
            }
            let name = it
                .next()
                .filter(|n| *n != "{")
                .ok_or("`key` without a name")?;
            let name = super::normal_name(name)
                .ok_or_else(|| format!("{name:?} is not a usable key name"))?;
            if it.next() != Some("{") {
                return Err(format!("key {name:?}: expected `{{`"));
            }
            let (mut algorithm, mut secret) = (None, None);
            loop {
                let field = it.next().ok_or_else(|| format!("key {name:?}: no `}}`"))?;
                if field == "}" {
                    break;
                }
                let value = it
                    .next()
                    .ok_or_else(|| format!("key {name:?}: {field} without a value"))?;
                if it.next() != Some(";") {
                    return Err(format!("key {name:?}: expected `;` after {field}"));
                }
                match field {
                    "algorithm" => {
                        algorithm = Some(match value.to_ascii_lowercase().as_str() {
                            "hmac-sha256" => Algorithm::HmacSha256,
                            "hmac-sha512" => Algorithm::HmacSha512,
                            other => {
                                return Err(format!(
                                    "key {name:?}: algorithm {other} is not supported (use hmac-sha256 or hmac-sha512)"
                                ));
                            }
                        });
                    }
                    "secret" => {
                        secret =
                            Some(base64(value).ok_or_else(|| {
                                format!("key {name:?}: the secret is not base64")
                            })?);
                    }
                    _ => {}
                }
            }
            let algorithm = algorithm.ok_or_else(|| format!("key {name:?}: no algorithm"))?;
            let secret = secret
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("key {name:?}: no secret"))?;
            return Ok(Self {
                path: path.to_owned(),
                name,
                algorithm,
                secret,
            });
        }
        Err("no `key \"NAME\" { algorithm ...; secret \"...\"; };` clause".into())
    }

    /// The signer for hickory's TSIG.
    pub fn signer(&self) -> Result<TSigner, String> {
        let name = Name::from_ascii(format!("{}.", self.name)).map_err(|e| e.to_string())?;
        TSigner::new(self.secret.clone(), self.algorithm.hickory(), name, FUDGE)
            .map_err(|e| e.to_string())
    }
}

fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("/*") {
            rest = r.find("*/").map_or("", |i| &r[i + 2..]);
            out.push(' ');
        } else if rest.starts_with("//") || rest.starts_with('#') {
            rest = rest.find('\n').map_or("", |i| &rest[i..]);
        } else if rest.starts_with('"') {
            let end = rest[1..].find('"').map_or(rest.len(), |i| i + 2);
            out.push_str(&rest[..end]);
            rest = &rest[end..];
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Words, quoted strings (unquoted), and `{`, `}`, `;`.
fn tokens(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '{' | '}' | ';' => {
                out.push(c.to_string());
                chars.next();
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some(c) => s.push(c),
                        None => return Err("a quoted string is not closed".into()),
                    }
                }
                out.push(s);
            }
            _ => {
                let mut s = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '{' | '}' | ';' | '"') {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                out.push(s);
            }
        }
    }
    Ok(out)
}

/// Standard base64 (padding optional, whitespace ignored).
fn base64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYGEN: &str = "key \"kmsd-key\" {\n\talgorithm hmac-sha256;\n\tsecret \"DhbWLG9e/5x9To6SyzMdW2JB4hy5eLfmuNLYt1aR2sk=\";\n};\n";

    #[test]
    fn reads_what_tsig_keygen_writes() {
        let k = TsigKey::parse(KEYGEN, Path::new("k")).unwrap();
        assert_eq!(k.name, "kmsd-key");
        assert_eq!(k.algorithm, Algorithm::HmacSha256);
        assert_eq!(k.secret.len(), 32);
        assert_eq!(&k.secret[..3], &[0x0e, 0x16, 0xd6]);
        assert!(!format!("{k:?}").contains("secret"), "{k:?}");
        k.signer().unwrap();
        let commented = format!(
            "# made by tsig-keygen\n// another\n/* block\n */ {}",
            KEYGEN.replace("hmac-sha256", "HMAC-SHA512")
        );
        let k = TsigKey::parse(&commented, Path::new("k")).unwrap();
        assert_eq!(k.algorithm, Algorithm::HmacSha512);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        for (text, says) in [
            ("", "no `key"),
            (
                "key \"k\" { algorithm hmac-md5; secret \"AAAA\"; };",
                "not supported",
            ),
            ("key \"k\" { algorithm hmac-sha256; };", "no secret"),
            ("key \"k\" { secret \"AAAA\"; };", "no algorithm"),
            (
                "key \"k\" { algorithm hmac-sha256; secret \"!!\"; };",
                "not base64",
            ),
            (
                "key \"k\" { algorithm hmac-sha256 secret \"AAAA\"; };",
                "expected `;`",
            ),
            ("key \"k\" { secret \"AAAA", "not closed"),
        ] {
            let e = TsigKey::parse(text, Path::new("k")).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn base64_decodes() {
        assert_eq!(base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64("").unwrap(), b"");
    }
}
