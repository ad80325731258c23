-- The W3C trace context (`traceparent`) of a job's admission, when tracing is
-- exported: its lease, run, steps and log lines join the same trace.
ALTER TABLE jobs ADD COLUMN traceparent TEXT;
