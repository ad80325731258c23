-- The fair-share scheduler walks the orgs that have queued work, one index probe
-- per org, and claims an org's oldest queued job: both from this partial index.
CREATE INDEX jobs_queued_by_org ON jobs (org_id, id) WHERE status = 'queued';
-- It breaks ties by the jobs each org has running.
CREATE INDEX jobs_leased_by_org ON jobs (org_id) WHERE status = 'leased';
