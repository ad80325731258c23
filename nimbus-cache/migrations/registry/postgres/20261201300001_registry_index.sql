-- The registry index (nimbus-cache/src/registry/index.rs): repositories and their
-- owners, blobs (stored once by digest in the cache backend) and which
-- repositories may serve them, manifests (small: kept here, not in the backend),
-- what each manifest references, and tags. Versions of these migrations are
-- YYYYMMDD3000NN so they can share sqlx's table with the cache index's and the
-- control plane's in one PostgreSQL database.

CREATE TABLE IF NOT EXISTS registry_repositories (
    name TEXT PRIMARY KEY,
    org_id BIGINT,
    created_at BIGINT NOT NULL,
    last_pull BIGINT
);

CREATE TABLE IF NOT EXISTS registry_blobs (
    digest TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS registry_links (
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (repository, digest)
);
CREATE INDEX IF NOT EXISTS registry_links_digest ON registry_links (digest);

CREATE TABLE IF NOT EXISTS registry_manifests (
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    body BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (repository, digest)
);

CREATE TABLE IF NOT EXISTS registry_references (
    repository TEXT NOT NULL,
    manifest TEXT NOT NULL,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (repository, manifest, target)
);
CREATE INDEX IF NOT EXISTS registry_references_target ON registry_references (target, kind);

CREATE TABLE IF NOT EXISTS registry_tags (
    repository TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    validated_at BIGINT NOT NULL,
    last_pull BIGINT NOT NULL,
    PRIMARY KEY (repository, tag)
);
CREATE INDEX IF NOT EXISTS registry_tags_digest ON registry_tags (repository, digest);
CREATE INDEX IF NOT EXISTS registry_tags_lru ON registry_tags (last_pull);
