-- Reasons of the admission policy: why a job was rejected (or, in dry-run mode,
-- would have been). JSON array of {rule, message}; NULL when none matched.
ALTER TABLE jobs ADD COLUMN policy_reasons TEXT;
