//! The dashboard's pages, as maud templates (every value is escaped).

use maud::{html, Markup, DOCTYPE};

use super::chart;
use crate::analytics::{
    human_duration as duration, DayFigures, MetadataHistogram, OrgsReport, StatusCounts,
};
use crate::domain::{Job, JobStatus, OrgId};

fn layout(title: &str, who: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Nimbus" }
                link rel="stylesheet" href="/dashboard/assets/dashboard.css";
                script src="/dashboard/assets/dashboard.js" defer {}
            }
            body {
                header {
                    h1 { "Nimbus" }
                    @if let Some(who) = who {
                        span.who { "signed in as " (who) }
                        form method="post" action="/dashboard/logout" {
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                (body)
            }
        }
    }
}

/// The sign-in form, with what went wrong if anything did.
pub fn login(message: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            main {
                form.login method="post" action="/dashboard/login" {
                    h2 { "Sign in to the Nimbus dashboard" }
                    @if let Some(message) = message {
                        p.error role="alert" { (message) }
                    }
                    label for="token" { "API token (admin, or an org's: " code { "nimbus token mint" } ")" }
                    input #token type="password" name="token" autocomplete="off" required;
                    button type="submit" { "Sign in" }
                    p.muted { "The token is kept in an HttpOnly, SameSite=Strict cookie of this site until you sign out." }
                }
            }
        },
    )
}

fn rate(rate: Option<f64>) -> Markup {
    match rate {
        None => html! { span.muted { "-" } },
        Some(r) => {
            let class = if r >= 0.9 {
                "good"
            } else if r < 0.5 {
                "bad"
            } else {
                ""
            };
            html! { span class=(class) { (format!("{:.1} %", r * 100.0)) } }
        }
    }
}

fn status(status: JobStatus) -> Markup {
    let class = match status {
        JobStatus::Succeeded => "good",
        JobStatus::Failed | JobStatus::TimedOut | JobStatus::Rejected => "bad",
        _ => "muted",
    };
    html! { span class=(class) { (status.as_str()) } }
}

fn counts_cells(jobs: &StatusCounts) -> Markup {
    html! {
        td.n { (jobs.queued) } td.n { (jobs.leased) } td.n { (jobs.succeeded) }
        td.n { (jobs.failed) } td.n { (jobs.timed_out) } td.n { (jobs.cancelled) }
        td.n { (jobs.rejected) }
    }
}

/// One org's cache usage, as the cache proxy reports it.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct CacheUsage {
    /// The org.
    pub org_id: OrgId,
    /// Bytes of its committed entries.
    #[serde(default)]
    pub bytes: u64,
    /// Its committed entries.
    #[serde(default)]
    pub entries: u64,
    /// Restores that found an entry.
    #[serde(default)]
    pub hits: u64,
    /// Restores that found none.
    #[serde(default)]
    pub misses: u64,
    /// Entries evicted (budget or idle time).
    #[serde(default)]
    pub evictions: u64,
}

/// Everything the main page shows.
pub struct Overview<'a> {
    /// Who is signed in, as shown in the header.
    pub who: &'a str,
    /// How many days the figures cover.
    pub days: u32,
    /// The org the page is narrowed to, if any.
    pub org_filter: Option<OrgId>,
    /// The per-org table.
    pub orgs: &'a OrgsReport,
    /// The chart: one entry per day, oldest first.
    pub daily: &'a [DayFigures],
    /// The metadata keys offered for the histogram.
    pub keys: &'a [String],
    /// The histogram of the picked key, if one is picked.
    pub histogram: Option<&'a MetadataHistogram>,
    /// The most recent jobs.
    pub jobs: &'a [Job],
    /// The job whose live log the page follows, if any.
    pub follow: Option<i64>,
    /// The cache usage per org, or why the cache proxy could not be read.
    pub cache: Result<Vec<CacheUsage>, String>,
}

/// The dashboard.
pub fn overview(view: &Overview<'_>) -> Markup {
    let picked = view.histogram.map(|h| h.key.as_str());
    layout(
        "Dashboard",
        Some(view.who),
        html! {
            main {
                section #orgs {
                    h2 { "Orgs · jobs created in the last " (view.days) " days" }
                    table {
                        thead { tr {
                            th.n { "org" } th { "name" } th.n { "jobs" } th.n { "queued" } th.n { "running" }
                            th.n { "succeeded" } th.n { "failed" } th.n { "timed out" } th.n { "cancelled" }
                            th.n { "rejected" } th.n { "success" } th.n { "wait p50" } th.n { "wait p95" }
                            th.n { "run p50" } th.n { "run p95" } th.n { "leases" } th.n { "rate limited" }
                        } }
                        tbody {
                            @for org in &view.orgs.orgs {
                                tr data-org=(org.org_id) {
                                    td.n { (org.org_id) }
                                    td { (org.name.as_deref().unwrap_or("-")) }
                                    td.n.total { (org.total) }
                                    (counts_cells(&org.jobs))
                                    td.n { (rate(org.success_rate)) }
                                    td.n { (duration(org.queue_wait_ms.p50)) }
                                    td.n { (duration(org.queue_wait_ms.p95)) }
                                    td.n { (duration(org.run_time_ms.p50)) }
                                    td.n { (duration(org.run_time_ms.p95)) }
                                    td.n { (org.active_leases) }
                                    td.n { (org.rate_limit_hits) }
                                }
                            }
                        }
                    }
                }
                section.charts #charts {
                    (chart::jobs_per_day(view.daily))
                    (chart::durations("Queue wait", view.daily, |d| (d.queue_wait_ms.p50, d.queue_wait_ms.p95)))
                    (chart::durations("Run time", view.daily, |d| (d.run_time_ms.p50, d.run_time_ms.p95)))
                }
                section #metadata {
                    h2 { "Metadata" }
                    form.inline method="get" action="/dashboard" {
                        label for="metadata_key" { "Key" }
                        select #metadata_key name="metadata_key" data-autosubmit {
                            option value="" selected[picked.is_none()] { "(pick a key)" }
                            @for key in view.keys {
                                option value=(key) selected[picked == Some(key.as_str())] { (key) }
                            }
                        }
                        input type="hidden" name="days" value=(view.days);
                        @if let Some(org) = view.org_filter {
                            input type="hidden" name="org_id" value=(org);
                        }
                        noscript { button type="submit" { "Show" } }
                    }
                    @if let Some(histogram) = view.histogram {
                        @let max = histogram.buckets.iter().map(|b| b.total).max().unwrap_or(0);
                        table #buckets {
                            thead { tr {
                                th { (histogram.key) } th.n { "jobs" } th.n { "succeeded" } th.n { "failed" }
                                th.n { "timed out" } th.n { "success" } th {}
                            } }
                            tbody {
                                @for bucket in &histogram.buckets {
                                    tr data-value=(bucket.value) {
                                        td { (bucket.value) }
                                        td.n.total { (bucket.total) }
                                        td.n { (bucket.jobs.succeeded) }
                                        td.n { (bucket.jobs.failed) }
                                        td.n { (bucket.jobs.timed_out) }
                                        td.n { (rate(bucket.success_rate)) }
                                        td { (chart::meter(bucket.total, max)) }
                                    }
                                }
                                @if histogram.buckets.is_empty() {
                                    tr { td colspan="7" .muted { "no jobs carry this key in the window" } }
                                }
                            }
                        }
                    } @else if view.keys.is_empty() {
                        p.muted { "No job carries metadata yet (runner labels " code { "param:KEY=VALUE" } " or " code { "meta:KEY=VALUE" } ")." }
                    }
                }
                @if let Some(job) = view.follow {
                    section #log {
                        h2 { "Live log of job " (job) " " span #live-log-state .muted { "connecting…" } }
                        pre.log #live-log data-src=(format!("/dashboard/jobs/{job}/log")) {}
                    }
                }
                section #jobs {
                    h2 { "Recent jobs" }
                    table {
                        thead { tr {
                            th.n { "id" } th.n { "org" } th { "repo" } th { "status" } th { "created" }
                            th.n { "wait" } th.n { "run" } th { "metadata" } th {}
                        } }
                        tbody {
                            @for job in view.jobs {
                                @let wait = job.started_at.map(|s| (s - job.created_at).whole_milliseconds().max(0) as u64);
                                @let run = match (job.started_at, job.finished_at) {
                                    (Some(s), Some(f)) => Some((f - s).whole_milliseconds().max(0) as u64),
                                    _ => None,
                                };
                                tr data-job=(job.id) {
                                    td.n { (job.id) }
                                    td.n { (job.org_id) }
                                    td { (job.repo) }
                                    td { (status(job.status)) }
                                    td { (job.created_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()) }
                                    td.n { (duration(wait)) }
                                    td.n { (duration(run)) }
                                    td { (job.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")) }
                                    td { a href=(format!("/dashboard?days={}&log={}#log", view.days, job.id)) { "live log" } }
                                }
                            }
                        }
                    }
                }
                section #cache {
                    h2 { "Cache usage" }
                    @match &view.cache {
                        Ok(usage) if usage.is_empty() => p.muted { "No cache entries." },
                        Ok(usage) => table {
                            thead { tr {
                                th.n { "org" } th.n { "bytes" } th.n { "entries" } th.n { "hits" }
                                th.n { "misses" } th.n { "hit rate" } th.n { "evicted" }
                            } }
                            tbody {
                                @for org in usage {
                                    @let lookups = org.hits + org.misses;
                                    tr {
                                        td.n { (org.org_id) } td.n { (org.bytes) } td.n { (org.entries) }
                                        td.n { (org.hits) } td.n { (org.misses) }
                                        td.n { (rate((lookups > 0).then(|| org.hits as f64 / lookups as f64))) }
                                        td.n { (org.evictions) }
                                    }
                                }
                            }
                        },
                        Err(reason) => p.muted { "Cache usage unavailable: " (reason) },
                    }
                }
            }
        },
    )
}

/// A page that only says what went wrong.
pub fn problem(who: Option<&str>, message: &str) -> Markup {
    layout(
        "Problem",
        who,
        html! { main { p.error role="alert" { (message) } p { a href="/dashboard" { "Back to the dashboard" } } } },
    )
}
