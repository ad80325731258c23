-- Each staged part's sha256, recorded as it is written. An upload whose parts
-- all have one is joined by the store itself (no read-back) and its entry is
-- identified by the composite of its parts' digests; the rows of such an entry
-- stay after the commit, as its layout (offset, size, sha256 per part), for the
-- integrity scrub.
ALTER TABLE cache_parts ADD COLUMN sha256 TEXT;
