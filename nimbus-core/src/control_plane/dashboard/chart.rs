//! Server-drawn SVG charts: no script, readable at a glance, scaled to the page.

use maud::{html, Markup};

use crate::analytics::{human_duration as duration, DayFigures};

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 16.0;

/// The x position of day `i` of `n`.
fn x(i: usize, n: usize) -> f64 {
    if n <= 1 {
        LEFT + (WIDTH - LEFT) / 2.0
    } else {
        LEFT + (WIDTH - LEFT - 8.0) * i as f64 / (n - 1) as f64
    }
}

fn y(value: f64, max: f64) -> f64 {
    let plot = HEIGHT - TOP - BOTTOM;
    TOP + plot - plot * (value / max).min(1.0)
}

fn day_label(figures: &DayFigures) -> String {
    format!("{}-{:02}", u8::from(figures.day.month()), figures.day.day())
}

fn frame(max_label: String, days: &[DayFigures]) -> Markup {
    let first = days.first().map(day_label).unwrap_or_default();
    let last = days.last().map(day_label).unwrap_or_default();
    html! {
        line.axis x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(HEIGHT - BOTTOM) {}
        line.axis x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH) y2=(HEIGHT - BOTTOM) {}
        text x=(LEFT - 4.0) y=(TOP + 4.0) text-anchor="end" { (max_label) }
        text x=(LEFT - 4.0) y=(HEIGHT - BOTTOM) text-anchor="end" { "0" }
        text x=(LEFT) y=(HEIGHT - 6.0) { (first) }
        text x=(WIDTH) y=(HEIGHT - 6.0) text-anchor="end" { (last) }
    }
}

/// Jobs created per day, as bars.
pub fn jobs_per_day(days: &[DayFigures]) -> Markup {
    let totals: Vec<i64> = days.iter().map(|d| d.jobs.total()).collect();
    let max = totals.iter().copied().max().unwrap_or(0).max(1) as f64;
    let n = days.len().max(1);
    let slot = (WIDTH - LEFT - 8.0) / n as f64;
    html! {
        div.chart {
            h2 { "Jobs per day" }
            svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label="Jobs per day" {
                (frame(format!("{max}"), days))
                @for (i, total) in totals.iter().enumerate() {
                    @let top = y(*total as f64, max);
                    rect.bar x=(LEFT + 2.0 + slot * i as f64) y=(top) width=((slot - 3.0).max(1.0))
                        height=(HEIGHT - BOTTOM - top) {
                        title { (day_label(&days[i])) ": " (total) " jobs" }
                    }
                }
            }
        }
    }
}

/// p50 and p95 of a duration per day, as two lines (days without jobs are gaps).
pub fn durations(
    title: &str,
    days: &[DayFigures],
    pick: fn(&DayFigures) -> (Option<u64>, Option<u64>),
) -> Markup {
    let points: Vec<(Option<u64>, Option<u64>)> = days.iter().map(pick).collect();
    let max = points
        .iter()
        .flat_map(|(p50, p95)| [*p50, *p95])
        .flatten()
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let n = days.len();
    let path = |values: Vec<Option<u64>>| {
        let mut d = String::new();
        let mut pen_down = false;
        for (i, value) in values.into_iter().enumerate() {
            match value {
                Some(v) => {
                    d.push_str(&format!(
                        "{}{:.1},{:.1} ",
                        if pen_down { "L" } else { "M" },
                        x(i, n),
                        y(v as f64, max)
                    ));
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        d
    };
    let p50 = path(points.iter().map(|p| p.0).collect());
    let p95 = path(points.iter().map(|p| p.1).collect());
    html! {
        div.chart {
            h2 { (title) }
            svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(title) {
                (frame(duration(Some(max as u64)), days))
                path.p95 d=(p95) {}
                path.p50 d=(p50) {}
                @for (i, (median, _)) in points.iter().enumerate() {
                    @if let Some(v) = median {
                        circle.legend-p50 cx=(x(i, n)) cy=(y(*v as f64, max)) r="2.5" {
                            title { (day_label(&days[i])) ": p50 " (duration(Some(*v))) }
                        }
                    }
                }
                rect.legend-p50 x=(WIDTH - 120.0) y="2" width="10" height="4" {}
                text x=(WIDTH - 106.0) y="8" { "p50" }
                rect.legend-p95 x=(WIDTH - 70.0) y="2" width="10" height="4" {}
                text x=(WIDTH - 56.0) y="8" { "p95" }
            }
        }
    }
}

/// A small horizontal bar of `value` out of `max` (for bucket tables).
pub fn meter(value: i64, max: i64) -> Markup {
    let width = if max > 0 {
        (120.0 * value as f64 / max as f64).max(if value > 0 { 1.0 } else { 0.0 })
    } else {
        0.0
    };
    html! {
        svg.meter width="120" height="10" viewBox="0 0 120 10" aria-hidden="true" {
            rect x="0" y="1" width=(format!("{width:.1}")) height="8" {}
        }
    }
}
