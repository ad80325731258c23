//! Manifests: the four media types accepted (Docker v2 schema 2 and OCI, images
//! and lists/indexes), the size limit, and what a manifest references — the blobs
//! (config, layers) an image manifest needs and the manifests an index lists.

use serde::Deserialize;

use super::name::Digest;
use super::{OciCode, OciError};

/// Largest manifest accepted (the distribution registry's default).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Docker image manifest, v2 schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-platform), v2 schema 2.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest; assumed for a body without `mediaType` or `manifests`.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (multi-platform); assumed for a body without `mediaType`
/// that has `manifests`.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Every manifest type served and stored, for `Accept` headers upstream.
pub const MEDIA_TYPES: [&str; 4] = [
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST,
];

/// Layers a registry never stores (Windows base layers hosted elsewhere).
const FOREIGN_LAYERS: [&str; 3] = [
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
];

/// What a manifest points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// One of [`MEDIA_TYPES`]: the request's `Content-Type`, else the body's
    /// `mediaType`.
    pub media_type: String,
    /// Blobs that must exist in the repository (config and layers).
    pub blobs: Vec<Digest>,
    /// Manifests an index lists.
    pub manifests: Vec<Digest>,
}

impl Manifest {
    /// Whether it lists other manifests (an OCI index or a Docker manifest list)
    /// rather than describing one image.
    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_MANIFEST_LIST
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<i64>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    manifests: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: Option<String>,
    digest: String,
    size: i64,
    #[serde(default)]
    urls: Vec<String>,
}

fn invalid(message: impl Into<String>) -> OciError {
    OciError::new(OciCode::ManifestInvalid, message)
}

/// Parses and checks a manifest of `content_type` (the request's `Content-Type`,
/// or `None` to take the body's own `mediaType`).
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Manifest, OciError> {
    if body.len() > MAX_MANIFEST_BYTES {
        return Err(OciError::new(
            OciCode::SizeInvalid,
            format!(
                "manifest of {} bytes is over the {MAX_MANIFEST_BYTES}-byte limit",
                body.len()
            ),
        ));
    }
    let raw: Raw = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("manifest is not valid JSON of a manifest: {e}")))?;
    if raw.schema_version != Some(2) {
        return Err(invalid(
            "only schemaVersion 2 manifests are accepted (Docker v2 schema 2 or OCI)",
        ));
    }
    // The header names the type; a body that names another is contradictory.
    let header = content_type
        .map(|value| value.split(';').next().unwrap_or("").trim())
        .filter(|value| !value.is_empty() && *value != "application/json");
    let media_type = match (header, raw.media_type.as_deref()) {
        (Some(header), Some(body)) if header != body => {
            return Err(invalid(format!(
                "Content-Type {header:?} and the manifest's mediaType {body:?} differ"
            )))
        }
        (Some(header), _) => header.to_string(),
        (None, Some(body)) => body.to_string(),
        // OCI allows mediaType to be absent: an index lists manifests.
        (None, None) if raw.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) => OCI_MANIFEST.to_string(),
    };
    if !MEDIA_TYPES.contains(&media_type.as_str()) {
        return Err(invalid(format!(
            "unknown manifest media type {media_type:?}; accepted: {}",
            MEDIA_TYPES.join(", ")
        )));
    }
    let descriptor_digest = |d: &Descriptor| -> Result<Digest, OciError> {
        if d.size < 0 {
            return Err(invalid(format!(
                "descriptor {} has a negative size",
                d.digest
            )));
        }
        Digest::parse(&d.digest)
    };
    let mut manifest = Manifest {
        media_type,
        blobs: Vec::new(),
        manifests: Vec::new(),
    };
    if manifest.is_index() {
        let Some(children) = raw.manifests else {
            return Err(invalid("an index needs a manifests list"));
        };
        for child in &children {
            manifest.manifests.push(descriptor_digest(child)?);
        }
    } else {
        let Some(config) = &raw.config else {
            return Err(invalid("an image manifest needs a config descriptor"));
        };
        manifest.blobs.push(descriptor_digest(config)?);
        for layer in &raw.layers {
            let digest = descriptor_digest(layer)?;
            let foreign = layer
                .media_type
                .as_deref()
                .is_some_and(|t| FOREIGN_LAYERS.contains(&t))
                && !layer.urls.is_empty();
            if !foreign {
                manifest.blobs.push(digest);
            }
        }
    }
    manifest.blobs.sort();
    manifest.blobs.dedup();
    manifest.manifests.sort();
    manifest.manifests.dedup();
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn image_manifests_reference_config_and_layers() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest('a'), "size": 10},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest('b'), "size": 20},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest('a'), "size": 10},
            ]
        });
        let manifest = parse(Some(OCI_MANIFEST), body.to_string().as_bytes()).expect("parse");
        assert_eq!(manifest.blobs.len(), 2);
        assert!(!manifest.is_index());
        // Without a header the body's mediaType decides.
        assert_eq!(
            parse(None, body.to_string().as_bytes())
                .expect("parse")
                .media_type,
            OCI_MANIFEST
        );
    }

    #[test]
    fn indexes_reference_manifests() {
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_LIST,
            "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": digest('c'), "size": 5, "platform": {"os": "linux", "architecture": "amd64"}}]
        });
        let manifest =
            parse(Some(DOCKER_MANIFEST_LIST), body.to_string().as_bytes()).expect("parse");
        assert!(manifest.is_index());
        assert_eq!(
            manifest.manifests,
            vec![Digest::parse(&digest('c')).expect("digest")]
        );
    }

    #[test]
    fn bad_manifests_are_refused_with_their_codes() {
        let ok_config = serde_json::json!({"digest": digest('a'), "size": 1});
        let cases: Vec<(Option<&str>, Vec<u8>, OciCode)> = vec![
            (Some(OCI_MANIFEST), b"{".to_vec(), OciCode::ManifestInvalid),
            (Some(OCI_MANIFEST), b"[]".to_vec(), OciCode::ManifestInvalid),
            (
                Some("application/vnd.example+json"),
                serde_json::json!({"schemaVersion": 2, "config": ok_config}).to_string().into_bytes(),
                OciCode::ManifestInvalid,
            ),
            (
                Some(OCI_MANIFEST),
                serde_json::json!({"schemaVersion": 1, "config": ok_config}).to_string().into_bytes(),
                OciCode::ManifestInvalid,
            ),
            (
                Some(OCI_MANIFEST),
                serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "config": ok_config}).to_string().into_bytes(),
                OciCode::ManifestInvalid,
            ),
            (
                Some(OCI_MANIFEST),
                serde_json::json!({"schemaVersion": 2, "config": {"digest": "md5:abc", "size": 1}}).to_string().into_bytes(),
                OciCode::DigestInvalid,
            ),
            (
                Some(OCI_MANIFEST),
                serde_json::json!({"schemaVersion": 2}).to_string().into_bytes(),
                OciCode::ManifestInvalid,
            ),
            (Some(OCI_MANIFEST), vec![b' '; MAX_MANIFEST_BYTES + 1], OciCode::SizeInvalid),
        ];
        for (content_type, body, code) in cases {
            let error = parse(content_type, &body).expect_err("refused");
            assert_eq!(error.code, code, "{}", error.message);
        }
    }
}
