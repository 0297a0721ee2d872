//! Where a plugin lives in a registry: `oci://REGISTRY/REPOSITORY:TAG` or
//! `oci://REGISTRY/REPOSITORY@sha256:DIGEST` (a tag and a digest together
//! pin the digest; the tag is kept for messages). The registry is always
//! explicit — there is no default registry to pull from by accident.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use oci_client::Reference;

/// The prefix that marks a plugin location as an OCI reference.
pub const SCHEME: &str = "oci://";
const MAX_REPOSITORY_BYTES: usize = 255;
const MAX_TAG_BYTES: usize = 128;

/// A parsed `oci://` plugin location.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OciLocation {
    /// `host[:port]`.
    pub registry: String,
    /// The repository path inside the registry.
    pub repository: String,
    /// The tag, when given.
    pub tag: Option<String>,
    /// The manifest digest (`sha256:<hex>`), when pinned.
    pub digest: Option<String>,
}

impl OciLocation {
    /// Whether `text` is meant as an OCI reference.
    pub fn is_oci(text: &str) -> bool {
        text.starts_with(SCHEME)
    }

    /// The OCI location a plugin path names, if it names one.
    pub fn from_path(path: &Path) -> Option<Result<Self, String>> {
        let text = path.to_str()?;
        Self::is_oci(text).then(|| Self::parse(text))
    }

    /// Parses `oci://REGISTRY/REPOSITORY(:TAG|@sha256:DIGEST|:TAG@sha256:DIGEST)`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = |why: &str| format!("{text:?} is not an OCI reference: {why}");
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| invalid("it must start with oci://"))?;
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("expected oci://REGISTRY/REPOSITORY:TAG"))?;
        if !valid_registry(registry) {
            return Err(invalid("the registry must be HOST or HOST:PORT"));
        }
        let (name, digest) = match path.split_once('@') {
            Some((name, digest)) => {
                if !valid_digest(digest) {
                    return Err(invalid(
                        "the digest must be sha256: and 64 lowercase hex digits",
                    ));
                }
                (name, Some(digest.to_string()))
            }
            None => (path, None),
        };
        // A ':' after the last '/' starts the tag.
        let (repository, tag) = match name.rfind(':') {
            Some(colon) if !name[colon..].contains('/') => {
                (&name[..colon], Some(name[colon + 1..].to_string()))
            }
            _ => (name, None),
        };
        if !valid_repository(repository) {
            return Err(invalid(
                "the repository must be lowercase letters, digits and '.', '_', '-', '/' separators",
            ));
        }
        if let Some(tag) = &tag
            && !valid_tag(tag)
        {
            return Err(invalid("a tag is 1-128 letters, digits, '.', '_', '-'"));
        }
        if tag.is_none() && digest.is_none() {
            return Err(invalid("give a :TAG or an @sha256:DIGEST"));
        }
        Ok(Self {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// The reference as the OCI client takes it.
    pub fn reference(&self) -> Reference {
        match (&self.tag, &self.digest) {
            (_, Some(digest)) => Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                digest.clone(),
            ),
            (tag, None) => Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                tag.clone().unwrap_or_default(),
            ),
        }
    }

    /// The same repository at `digest` (what a tag resolved to).
    pub fn at_digest(&self, digest: &str) -> Self {
        Self {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    /// The registry's host, without the port.
    pub fn host(&self) -> &str {
        let registry = self.registry.as_str();
        if let Some(end) = registry.find(']') {
            return &registry[1..end];
        }
        registry.split(':').next().unwrap_or(registry)
    }

    /// Whether the registry is on this machine (`localhost`, 127.0.0.0/8,
    /// `[::1]`, and 127.0.0.0/8 written as an IPv4-mapped IPv6 address):
    /// like docker, we speak plain HTTP to those.
    pub fn is_loopback(&self) -> bool {
        let host = self.host();
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.to_canonical().is_loopback())
    }
}

impl fmt::Display for OciLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// `sha256:` followed by 64 lowercase hex digits.
pub fn valid_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn valid_registry(registry: &str) -> bool {
    let (host_ok, port) = match registry.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) => (v6.parse::<std::net::Ipv6Addr>().is_ok(), port),
            None => return false,
        },
        None => {
            let (host, port) = registry
                .find(':')
                .map_or((registry, ""), |colon| registry.split_at(colon));
            let host_ok = !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            (host_ok, port)
        }
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .and_then(|p| p.parse::<u16>().ok())
            .is_some_and(|n| n > 0);
    host_ok && port_ok
}

fn valid_repository(repository: &str) -> bool {
    !repository.is_empty()
        && repository.len() <= MAX_REPOSITORY_BYTES
        && repository.split('/').all(|part| {
            let bytes = part.as_bytes();
            !bytes.is_empty()
                && bytes[0].is_ascii_alphanumeric()
                && bytes[bytes.len() - 1].is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
        })
}

fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_TAG_BYTES
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn tags_digests_and_ports_parse() {
        let tagged = OciLocation::parse("oci://127.0.0.1:5000/plugins/echo:1.0").unwrap();
        assert_eq!(tagged.registry, "127.0.0.1:5000");
        assert_eq!(tagged.repository, "plugins/echo");
        assert_eq!(tagged.tag.as_deref(), Some("1.0"));
        assert!(tagged.is_loopback());
        assert_eq!(tagged.to_string(), "oci://127.0.0.1:5000/plugins/echo:1.0");

        let pinned = OciLocation::parse(&format!("oci://ghcr.io/acme/echo@{DIGEST}")).unwrap();
        assert_eq!(pinned.digest.as_deref(), Some(DIGEST));
        assert!(!pinned.is_loopback());
        assert_eq!(pinned.reference().digest(), Some(DIGEST));

        let both = OciLocation::parse(&format!("oci://localhost/echo:v2@{DIGEST}")).unwrap();
        assert_eq!(both.tag.as_deref(), Some("v2"));
        assert!(both.is_loopback());
        for local in [
            "oci://[::1]:5000/echo:1",
            "oci://[::ffff:127.0.0.1]:5000/echo:1",
        ] {
            assert!(OciLocation::parse(local).unwrap().is_loopback(), "{local}");
        }
        assert!(
            !OciLocation::parse("oci://[::ffff:10.0.0.1]:5000/echo:1")
                .unwrap()
                .is_loopback()
        );
    }

    #[test]
    fn malformed_references_say_why() {
        for (text, why) in [
            ("oci://registry/echo", "give a :TAG"),
            ("oci://echo:1", "expected oci://REGISTRY"),
            ("oci://reg:99999/echo:1", "HOST or HOST:PORT"),
            ("oci://reg/Echo:1", "lowercase"),
            ("oci://reg/echo:-x", "a tag is"),
            ("oci://reg/echo@sha256:abc", "64 lowercase hex"),
            ("http://reg/echo:1", "oci://"),
        ] {
            let error = OciLocation::parse(text).unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
        }
        assert!(OciLocation::from_path(Path::new("plugins/echo.wasm")).is_none());
    }
}
