-- Parts staged in place: the store's own upload of an entry's object (S3: the
-- multipart upload id), opened at the first part that can be placed, and each
-- placed part's rank in it. See docs/cache.md, "Joining parts".
ALTER TABLE cache_entries ADD COLUMN staging_handle TEXT;
ALTER TABLE cache_parts ADD COLUMN placed_rank BIGINT;
