-- `nimbus run` against a control plane: a workflow job's result (outputs, step
-- summary, annotations; JSON) is kept with the job, and the working trees its jobs
-- start from are kept per org, named by their sha256.
ALTER TABLE jobs ADD COLUMN result TEXT;

CREATE TABLE workspaces (
    org_id      INTEGER NOT NULL,
    digest      TEXT   NOT NULL,  -- sha256 of the archive, 64 hex digits
    archive     BLOB   NOT NULL,  -- a tar of the working tree
    size_bytes  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,  -- last put (a put of the same archive refreshes it)
    PRIMARY KEY (org_id, digest)
);
CREATE INDEX workspaces_by_age ON workspaces (created_at);
