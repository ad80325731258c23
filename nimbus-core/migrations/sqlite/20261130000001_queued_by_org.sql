-- The fair-share scheduler walks the orgs that have queued work, one index probe
-- per org, and claims an org's oldest queued job: both from this partial index.
CREATE INDEX jobs_queued_by_org ON jobs (org_id, id) WHERE status = 'queued';
-- It breaks ties by the jobs each org has running, counted from the existing
-- partial index of leased jobs (jobs_lease_expiry: as many entries as jobs run at
-- once), so leases and completions maintain no further index.
