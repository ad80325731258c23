//! Repository names, references and digests, checked before anything is looked
//! up: a name that could escape a namespace (`..`, `/` at the ends, upper case,
//! other alphabets) is `NAME_INVALID`, whatever the caller's rights.

use std::fmt;

use nimbus_core::OrgId;

use super::{OciCode, OciError};

/// Longest repository name (the distribution registry's limit).
const MAX_NAME: usize = 255;

/// Who a repository belongs to, read off its first path component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A read-only copy of the upstream's repository `upstream`
    /// (`library/x` → `library/x`, `mirror/a/b` → `a/b`).
    Mirror {
        /// The repository's name at the upstream.
        upstream: String,
    },
    /// `org-{id}/…`: pushed and pulled by that org only.
    Org(OrgId),
}

/// A checked repository name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    name: String,
    owner: Owner,
}

impl Repository {
    /// Parses `raw`: the distribution spec's grammar (lower-case components joined
    /// by `.`, `_`, `__` or dashes, separated by `/`), under one of the three
    /// namespaces `library/`, `mirror/` or `org-{id}/`.
    pub fn parse(raw: &str) -> Result<Self, OciError> {
        let invalid = |why: &str| {
            OciError::new(
                OciCode::NameInvalid,
                format!("invalid repository name {:?}: {why}", truncate(raw)),
            )
        };
        if raw.is_empty() || raw.len() > MAX_NAME {
            return Err(invalid("it must be 1 to 255 characters"));
        }
        let components: Vec<&str> = raw.split('/').collect();
        if !components.iter().all(|c| valid_component(c)) {
            return Err(invalid(
                "each /-separated part is lower-case letters and digits, joined by '.', '_', '__' or dashes",
            ));
        }
        let owner = match components[0] {
            "library" if components.len() >= 2 => Owner::Mirror {
                upstream: raw.to_string(),
            },
            "mirror" if components.len() >= 2 => Owner::Mirror {
                upstream: components[1..].join("/"),
            },
            first if first.starts_with("org-") && components.len() >= 2 => {
                match first["org-".len()..].parse::<OrgId>() {
                    Ok(id) if id > 0 && first == format!("org-{id}") => Owner::Org(id),
                    _ => {
                        return Err(invalid(
                            "org repositories are org-{id}/NAME with a numeric id",
                        ))
                    }
                }
            }
            _ => {
                return Err(OciError::new(
                    OciCode::NameUnknown,
                    format!(
                        "repository {:?} is in no namespace: use library/NAME or mirror/PATH \
                         (read-only copies of the upstream) or org-{{id}}/NAME (your org's own)",
                        truncate(raw)
                    ),
                ))
            }
        };
        Ok(Repository {
            name: raw.to_string(),
            owner,
        })
    }

    /// The name as given, e.g. `org-7/app` or `library/alpine`.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// Who the repository belongs to.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// Whether it is a read-only copy of an upstream repository
    /// (`library/…` or `mirror/…`).
    pub fn is_mirror(&self) -> bool {
        matches!(self.owner, Owner::Mirror { .. })
    }

    /// The org that owns it (`None` for mirrors).
    pub fn org(&self) -> Option<OrgId> {
        match self.owner {
            Owner::Org(id) => Some(id),
            Owner::Mirror { .. } => None,
        }
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = separator == "."
            || separator == "_"
            || separator == "__"
            || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn truncate(raw: &str) -> String {
    raw.chars().take(100).collect()
}

/// A content digest; only sha256 is accepted (what every client produces).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:` followed by 64 lower-case hex digits; anything else is
    /// `DIGEST_INVALID`.
    pub fn parse(raw: &str) -> Result<Self, OciError> {
        let invalid = |why: &str| {
            OciError::new(
                OciCode::DigestInvalid,
                format!("invalid digest {:?}: {why}", truncate(raw)),
            )
        };
        let Some((algorithm, hex)) = raw.split_once(':') else {
            return Err(invalid("expected sha256:<64 hex digits>"));
        };
        if algorithm != "sha256" {
            return Err(invalid("only sha256 digests are supported"));
        }
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid("expected sha256:<64 lower-case hex digits>"));
        }
        Ok(Digest(raw.to_string()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Digest(format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(bytes))
        ))
    }

    /// From a hex sha256 (as the backend reports it).
    pub fn from_sha256_hex(hex: &str) -> Self {
        Digest(format!("sha256:{hex}"))
    }

    /// The whole digest, `sha256:HEX`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a manifest is asked for by: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A tag, e.g. `latest`.
    Tag(String),
    /// A manifest's digest (`sha256:HEX`).
    Digest(Digest),
}

impl Reference {
    /// A digest when `raw` contains `:` (`DIGEST_INVALID` if malformed), else a
    /// tag: 1 to 128 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`
    /// (`TAG_INVALID` otherwise).
    pub fn parse(raw: &str) -> Result<Self, OciError> {
        if raw.contains(':') {
            return Digest::parse(raw).map(Reference::Digest);
        }
        let bytes = raw.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= 128
            && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if valid {
            Ok(Reference::Tag(raw.to_string()))
        } else {
            Err(OciError::new(
                OciCode::TagInvalid,
                format!(
                    "invalid tag {:?}: 1 to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'",
                    truncate(raw)
                ),
            ))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(tag) => f.write_str(tag),
            Reference::Digest(digest) => digest.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_owned() {
        let repo = Repository::parse("library/alpine").expect("library");
        assert_eq!(
            repo.owner(),
            &Owner::Mirror {
                upstream: "library/alpine".into()
            }
        );
        let repo = Repository::parse("mirror/bitnami/redis").expect("mirror");
        assert_eq!(
            repo.owner(),
            &Owner::Mirror {
                upstream: "bitnami/redis".into()
            }
        );
        assert_eq!(
            Repository::parse("org-12/app/web").expect("org").org(),
            Some(12)
        );
        assert!(Repository::parse("a.b_c__d---e/x").is_err_and(|e| e.code == OciCode::NameUnknown));
        for bad in [
            "",
            "org-1/../org-2/app",
            "org-1/./app",
            "org-1//app",
            "/org-1/app",
            "org-1/app/",
            "org-1/App",
            "org-1/a..b",
            "org-1/a___b",
            "org-1/-a",
            "org-01/app",
            "org-0/app",
            "org-x/app",
            "org-1/a%2fb",
            "org-1/a b",
        ] {
            let error = Repository::parse(bad).expect_err(bad);
            assert_eq!(error.code, OciCode::NameInvalid, "{bad}");
        }
        for unknown in ["alpine", "org-1", "library", "mirror", "other/app"] {
            let error = Repository::parse(unknown).expect_err(unknown);
            assert_eq!(error.code, OciCode::NameUnknown, "{unknown}");
        }
        assert!(Repository::parse(&format!("org-1/{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn digests_and_tags() {
        let hex = "a".repeat(64);
        assert!(Digest::parse(&format!("sha256:{hex}")).is_ok());
        for bad in [
            "sha256:abc".to_string(),
            format!("sha512:{hex}"),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{hex}0"),
            "sha256".to_string(),
        ] {
            assert_eq!(
                Digest::parse(&bad).expect_err(&bad).code,
                OciCode::DigestInvalid
            );
        }
        assert_eq!(
            Reference::parse("v1.2_3-rc").expect("tag"),
            Reference::Tag("v1.2_3-rc".into())
        );
        for bad in ["", ".x", "-x", "a/b", &"t".repeat(129)] {
            assert_eq!(
                Reference::parse(bad).expect_err(bad).code,
                OciCode::TagInvalid
            );
        }
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
