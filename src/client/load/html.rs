//! `kmsd load --report FILE.html`: the run as one self-contained page: the
//! parameters, the totals, errors by kind, a latency histogram,
//! throughput and latency over time as inline SVG, and the host's own
//! figures when `--metrics` was given. No scripts and no external assets,
//! so it opens anywhere and can be mailed or archived as it is.
//!
//! Rendered with [`maud`], like the status page: every value is escaped
//! (error kinds and the target are text from the command line or the
//! network); the stylesheet is the only text inserted raw.

use super::series::{lat_bounds, lat_bucket};
use super::{LoadReport, Scenario, SecondSample, ServerFigures};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use std::fmt::Write as _;

/// The stylesheet, inlined in a `<style>` element.
const CSS: &str = include_str!("report.css");

/// Chart geometry (SVG user units).
const W: f64 = 760.0;
const H: f64 = 240.0;
const LEFT: f64 = 62.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 36.0;
/// Most bars or points a time chart draws; longer runs are binned.
const MAX_BINS: usize = 240;

/// The page.
pub fn render(r: &LoadReport) -> String {
    page(r).into_string()
}

fn page(r: &LoadReport) -> Markup {
    let title = format!("kmsd load report: {}", r.target);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    h1 { "kmsd load report" }
                    p.sub {
                        (summary(r))
                    }
                }
                main {
                    (totals(r))
                    section #parameters {
                        h2 { "Parameters" }
                        (parameters(r))
                    }
                    section #throughput {
                        h2 { "Throughput over time" }
                        p.sub { "Verified answers per second: green activated, amber below the threshold (the client retries later); errors per second in red." }
                        (throughput_chart(&r.series))
                    }
                    section #latency-time {
                        h2 { "Latency over time" }
                        p.sub { "Median and 99th percentile of each second's verified activations (±10%), from connect to verified response." }
                        (latency_time_chart(&r.series))
                    }
                    section #latency {
                        h2 { "Latency distribution" }
                        (percentiles(r))
                        (latency_histogram(r))
                    }
                    section #errors {
                        h2 { "Errors by kind" }
                        (errors(r))
                    }
                    @if let Some(s) = &r.server {
                        section #server {
                            h2 { "The host's figures" }
                            (server(s))
                        }
                    }
                }
                footer {
                    "kmsd " (env!("CARGO_PKG_VERSION")) " · started "
                    (crate::report::iso_utc(r.started_unix_ms))
                }
            }
        }
    }
}

fn summary(r: &LoadReport) -> String {
    match r.scenario {
        Scenario::Classic => format!(
            "{} verified activations against {} in {:.1} s ({:.1}/s), {} errors; stopped by {}.",
            r.activations,
            r.target,
            r.elapsed_secs,
            r.activations_per_sec,
            r.error_total,
            r.stopped_by
        ),
        Scenario::BootStorm => format!(
            "Boot storm against {}: {} machines over {} s. {} activated, {} stayed below \
             the threshold of {}, {} failed.",
            r.target,
            r.clients,
            r.planned_secs,
            r.activated,
            r.below_threshold,
            r.n_policy,
            r.error_total
        ),
    }
}

fn tile(id: &str, value: u64, shown: String, label: &str, class: &str) -> Markup {
    html! {
        div.tile.(class) id=(id) data-value=(value) {
            div.v { (shown) }
            div.k { (label) }
        }
    }
}

fn totals(r: &LoadReport) -> Markup {
    let bad = if r.error_total > 0 { "bad" } else { "" };
    html! {
        section #totals .tiles {
            (tile("t-activations", r.activations, r.activations.to_string(), "verified activations", ""))
            (tile("t-rate", r.activations_per_sec.round() as u64, format!("{:.1}", r.activations_per_sec), "activations / s", ""))
            (tile("t-activated", r.activated, r.activated.to_string(), "activated (count ≥ threshold)", "ok"))
            (tile("t-below", r.below_threshold, r.below_threshold.to_string(), &format!("below the threshold of {}", r.n_policy), "wait"))
            (tile("t-errors", r.error_total, r.error_total.to_string(), "errors", bad))
            (tile("t-connections", r.connections, r.connections.to_string(), "connections", ""))
            (tile("t-p50", r.latency_us.p50, fmt_us(r.latency_us.p50 as f64), "median latency", ""))
            (tile("t-p99", r.latency_us.p99, fmt_us(r.latency_us.p99 as f64), "p99 latency", ""))
        }
    }
}

fn parameters(r: &LoadReport) -> Markup {
    let mut rows: Vec<(&str, String)> = vec![
        ("target", r.target.clone()),
        ("scenario", r.scenario.to_string()),
        ("protocol", format!("KMS {}.0", r.protocol)),
        ("product", r.product.clone()),
        ("threshold sent (N_Policy)", r.n_policy.to_string()),
    ];
    match r.scenario {
        Scenario::Classic => {
            rows.push(("concurrency", r.concurrency.to_string()));
            rows.push(("duration", format!("{} s", r.planned_secs)));
            if let Some(n) = r.requests_limit {
                rows.push(("request cap", n.to_string()));
            }
            rows.push(("clients (CMIDs)", r.clients.clone()));
        }
        Scenario::BootStorm => {
            rows.push(("machines", r.clients.clone()));
            rows.push(("window", format!("{} s", r.planned_secs)));
            rows.push(("in flight at most", r.concurrency.to_string()));
        }
    }
    rows.push(("connections", r.connection.to_string()));
    rows.push(("step timeout", format!("{} s", r.timeout_secs)));
    rows.push(("started", crate::report::iso_utc(r.started_unix_ms)));
    rows.push(("elapsed", format!("{:.2} s", r.elapsed_secs)));
    rows.push(("stopped by", r.stopped_by.to_string()));
    html! {
        table.kv {
            tbody {
                @for (k, v) in &rows {
                    tr { th scope="row" { (k) } td { (v) } }
                }
            }
        }
    }
}

fn percentiles(r: &LoadReport) -> Markup {
    let l = &r.latency_us;
    let cells = [
        ("p50", l.p50 as f64),
        ("p90", l.p90 as f64),
        ("p99", l.p99 as f64),
        ("p99.9", l.p999 as f64),
        ("max", l.max as f64),
        ("mean", l.mean),
    ];
    html! {
        table #percentiles {
            thead { tr { @for (k, _) in &cells { th.num { (k) } } } }
            tbody { tr {
                @for (k, v) in &cells {
                    td.num data-q=(k) data-us=(format!("{v:.0}")) { (fmt_us(*v)) }
                }
            } }
        }
    }
}

fn errors(r: &LoadReport) -> Markup {
    html! {
        @if r.errors.is_empty() {
            p.none { "No errors: every response passed every check." }
        } @else {
            table #error-kinds {
                thead { tr { th { "kind" } th.num { "count" } th.num { "share" } } }
                tbody {
                    @for (kind, n) in &r.errors {
                        tr.error data-count=(n) {
                            td.mono { (kind) }
                            td.num { (n) }
                            td.num { (format!("{:.1}%", *n as f64 * 100.0 / (r.error_total.max(1)) as f64)) }
                        }
                    }
                }
            }
        }
    }
}

fn server(s: &ServerFigures) -> Markup {
    html! {
        p.sub { "Read from " span.mono { (s.url) } " before and after the run." }
        @if let Some(e) = &s.error {
            p.none #server-error { "No figures after the run: " (e) }
        } @else {
            div.tiles {
                (tile("s-requests", s.requests as u64, format!("{}", s.requests), "requests the host handled", ""))
                @if let Some(m) = s.response_mean_us {
                    (tile("s-mean", m as u64, fmt_us(m), "host's mean response time", ""))
                }
                @if let Some(p) = s.response_p50_le_us {
                    (tile("s-p50", p.min(u64::MAX as f64) as u64, le(p), "host's median (bucket)", ""))
                }
                @if let Some(p) = s.response_p99_le_us {
                    (tile("s-p99", p.min(u64::MAX as f64) as u64, le(p), "host's p99 (bucket)", ""))
                }
                @if let Some(b) = s.batch_mean {
                    (tile("s-batch", b.round() as u64, format!("{b:.1}"), "records per store commit", ""))
                }
            }
            table #server-series {
                thead { tr { th { "series" } th.num { "before" } th.num { "after" } th.num { "change" } } }
                tbody {
                    @for m in &s.series {
                        tr data-delta=(m.delta()) {
                            td.mono { (m.series) }
                            td.num { (num(m.before)) }
                            td.num { (num(m.after)) }
                            td.num { (signed(m.delta())) }
                        }
                    }
                }
            }
        }
    }
}

fn le(us: f64) -> String {
    if us.is_infinite() {
        "above the top bucket".into()
    } else {
        format!("≤ {}", fmt_us(us))
    }
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

fn signed(v: f64) -> String {
    let n = num(v);
    if v > 0.0 { format!("+{n}") } else { n }
}

/// A duration in microseconds, in the unit that reads best.
pub fn fmt_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 10_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else if us < 1_000_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// A round latency for an axis: `500 µs`, `2 ms`, `1 s`.
fn round_us(us: u64) -> String {
    match us {
        0..1000 => format!("{us} µs"),
        1000..1_000_000 => format!("{} ms", tick_label(us as f64 / 1e3)),
        _ => format!("{} s", tick_label(us as f64 / 1e6)),
    }
}

// ---------------------------------------------------------------------------
// Charts: inline SVG, drawn from plain numbers.

/// 0 = a, then about `n` round steps (1, 2 or 5 × 10^k) up to at least `max`.
fn ticks(max: f64, n: usize) -> Vec<f64> {
    let max = if max > 0.0 { max } else { 1.0 };
    let raw = max / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let top = (max / step).ceil() * step;
    let count = (top / step).round() as usize;
    (0..=count).map(|i| i as f64 * step).collect()
}

/// Trims a tick label (`2.50` → `2.5`, `3.0` → `3`).
fn tick_label(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

struct Frame {
    x_max: f64,
    y_max: f64,
}

impl Frame {
    fn x(&self, v: f64) -> f64 {
        LEFT + v / self.x_max.max(1e-9) * (W - LEFT - RIGHT)
    }
    fn y(&self, v: f64) -> f64 {
        H - BOTTOM - v / self.y_max.max(1e-9) * (H - TOP - BOTTOM)
    }
}

/// Axes, grid lines and labels for a chart of `x_ticks` by `y_ticks`.
fn axes(
    f: &Frame,
    x_ticks: &[(f64, String)],
    y_ticks: &[f64],
    x_title: &str,
    y_title: &str,
) -> Markup {
    let bottom = H - BOTTOM;
    html! {
        g.grid {
            @for &v in y_ticks {
                line x1=(LEFT) x2=(W - RIGHT) y1=(r1(f.y(v))) y2=(r1(f.y(v))) {}
                text.ylab x=(LEFT - 6.0) y=(r1(f.y(v) + 4.0)) text-anchor="end" { (tick_label(v)) }
            }
            @for (v, label) in x_ticks {
                line.tick x1=(r1(f.x(*v))) x2=(r1(f.x(*v))) y1=(bottom) y2=(bottom + 5.0) {}
                text.xlab x=(r1(f.x(*v))) y=(bottom + 18.0) text-anchor="middle" { (label) }
            }
            line.axis x1=(LEFT) x2=(W - RIGHT) y1=(bottom) y2=(bottom) {}
            line.axis x1=(LEFT) x2=(LEFT) y1=(TOP) y2=(bottom) {}
        }
        text.title x=(W - RIGHT) y=(H - 4.0) text-anchor="end" { (x_title) }
        text.title x="12" y=(TOP + 4.0) transform=(format!("rotate(-90 12 {})", TOP + 4.0)) text-anchor="end" { (y_title) }
    }
}

fn r1(v: f64) -> String {
    format!("{v:.1}")
}

/// One bin of a time chart: several seconds when the run is long.
#[derive(Default, Clone, Copy)]
struct Bin {
    t0: f64,
    width: f64,
    ok: u64,
    below: u64,
    errors: u64,
    /// Activation-weighted mean of the seconds' medians.
    p50: f64,
    /// Highest of the seconds' p99.
    p99: u64,
}

fn bins(series: &[SecondSample]) -> Vec<Bin> {
    // A short last second (the run's tail) joins the one before it, so a
    // few answers in a sliver of time do not read as a spike.
    let n = series.len();
    let tail = n > 1 && series[n - 1].width < 0.5;
    let per = (n - usize::from(tail)).div_ceil(MAX_BINS).max(1);
    let mut out: Vec<Bin> = series[..n - usize::from(tail)]
        .chunks(per)
        .map(|c| {
            let mut b = Bin {
                t0: f64::from(c[0].t),
                ..Bin::default()
            };
            let mut weighted = 0.0;
            for s in c {
                b.width += s.width;
                b.ok += s.activations;
                b.below += s.below_threshold;
                b.errors += s.errors;
                weighted += s.p50_us as f64 * s.activations as f64;
                b.p99 = b.p99.max(s.p99_us);
            }
            if b.ok > 0 {
                b.p50 = weighted / b.ok as f64;
            }
            b
        })
        .collect();
    if let (true, Some(last), Some(t)) = (tail, out.last_mut(), series.last()) {
        let weighted = last.p50 * last.ok as f64 + t.p50_us as f64 * t.activations as f64;
        last.width += t.width;
        last.ok += t.activations;
        last.below += t.below_threshold;
        last.errors += t.errors;
        last.p99 = last.p99.max(t.p99_us);
        if last.ok > 0 {
            last.p50 = weighted / last.ok as f64;
        }
    }
    out
}

fn time_ticks(secs: f64) -> Vec<(f64, String)> {
    ticks(secs, 8)
        .into_iter()
        .filter(|&t| t <= secs + 1e-9)
        .map(|t| (t, tick_label(t)))
        .collect()
}

fn empty_chart(id: &str, why: &str) -> Markup {
    html! {
        svg.chart id=(id) viewBox=(format!("0 0 {W} {H}")) role="img" xmlns="http://www.w3.org/2000/svg" {
            title { (why) }
            text.empty x=(W / 2.0) y=(H / 2.0) text-anchor="middle" { (why) }
        }
    }
}

fn throughput_chart(series: &[SecondSample]) -> Markup {
    let bins = bins(series);
    let secs: f64 = bins.iter().map(|b| b.width).sum();
    if bins.is_empty() || secs <= 0.0 {
        return empty_chart("chart-throughput", "No samples");
    }
    let rate = |n: u64, b: &Bin| n as f64 / b.width.max(1e-3);
    let y_max = bins
        .iter()
        .map(|b| rate(b.ok, b).max(rate(b.errors, b)))
        .fold(0.0, f64::max);
    let y_ticks = ticks(y_max, 5);
    let f = Frame {
        x_max: secs,
        y_max: *y_ticks.last().unwrap_or(&1.0),
    };
    let mut ok_bars = String::new();
    let mut below_bars = String::new();
    let mut err_path = String::new();
    for b in &bins {
        let x0 = f.x(b.t0);
        let x1 = f.x(b.t0 + b.width);
        let w = (x1 - x0 - 0.6).max(0.4);
        let base = f.y(0.0);
        let activated = rate(b.ok - b.below, b);
        let below = rate(b.below, b);
        let y_act = f.y(activated);
        let y_top = f.y(activated + below);
        if activated > 0.0 {
            let _ = write!(ok_bars, "M{x0:.1} {base:.1}V{y_act:.1}h{w:.1}V{base:.1}z");
        }
        if below > 0.0 {
            let _ = write!(
                below_bars,
                "M{x0:.1} {y_act:.1}V{y_top:.1}h{w:.1}V{y_act:.1}z"
            );
        }
        let ye = f.y(rate(b.errors, b));
        let cmd = if err_path.is_empty() { 'M' } else { 'L' };
        let _ = write!(err_path, "{cmd}{:.1} {ye:.1}", x0 + w / 2.0);
    }
    let any_errors = bins.iter().any(|b| b.errors > 0);
    html! {
        svg.chart #chart-throughput viewBox=(format!("0 0 {W} {H}")) role="img" xmlns="http://www.w3.org/2000/svg" {
            title { "Verified activations and errors per second" }
            (axes(&f, &time_ticks(secs), &y_ticks, "seconds", "per second"))
            path.activated d=(ok_bars) {}
            path.below d=(below_bars) {}
            @if any_errors {
                path.errors d=(err_path) {}
            }
        }
        (legend(&[("activated", "activated"), ("below", "below the threshold"), ("errors", "errors")]))
    }
}

fn latency_time_chart(series: &[SecondSample]) -> Markup {
    let bins = bins(series);
    let secs: f64 = bins.iter().map(|b| b.width).sum();
    let y_max = bins.iter().map(|b| b.p99 as f64).fold(0.0, f64::max);
    if bins.is_empty() || secs <= 0.0 || y_max <= 0.0 {
        return empty_chart("chart-latency-time", "No verified activations");
    }
    // Milliseconds on the axis.
    let y_ticks = ticks(y_max / 1000.0, 5);
    let f = Frame {
        x_max: secs,
        y_max: *y_ticks.last().unwrap_or(&1.0),
    };
    let line = |pick: &dyn Fn(&Bin) -> f64| {
        let mut d = String::new();
        let mut pen_down = false;
        for b in &bins {
            if b.ok == 0 {
                pen_down = false;
                continue;
            }
            let x = f.x(b.t0 + b.width / 2.0);
            let y = f.y(pick(b) / 1000.0);
            let _ = write!(d, "{}{x:.1} {y:.1}", if pen_down { 'L' } else { 'M' });
            pen_down = true;
        }
        d
    };
    let p50 = line(&|b| b.p50);
    let p99 = line(&|b| b.p99 as f64);
    // A dot on every point, so a run of one second still shows.
    let dots: Vec<(String, String, String)> = bins
        .iter()
        .filter(|b| b.ok > 0)
        .map(|b| {
            let x = f.x(b.t0 + b.width / 2.0);
            (
                r1(x),
                r1(f.y(b.p50 / 1000.0)),
                r1(f.y(b.p99 as f64 / 1000.0)),
            )
        })
        .collect();
    html! {
        svg.chart #chart-latency-time viewBox=(format!("0 0 {W} {H}")) role="img" xmlns="http://www.w3.org/2000/svg" {
            title { "Median and p99 latency per second" }
            (axes(&f, &time_ticks(secs), &y_ticks, "seconds", "ms"))
            path.p99 d=(p99) {}
            path.p50 d=(p50) {}
            @if dots.len() <= 60 {
                @for (x, y50, y99) in &dots {
                    circle.p99 cx=(x) cy=(y99) r="2.5" {}
                    circle.p50 cx=(x) cy=(y50) r="2.5" {}
                }
            }
        }
        (legend(&[("p50", "median"), ("p99", "99th percentile")]))
    }
}

fn latency_histogram(r: &LoadReport) -> Markup {
    let mut counts = vec![0u64; super::series::LAT_BUCKETS];
    for v in r.histogram.iter_recorded() {
        counts[lat_bucket(v.value_iterated_to())] += v.count_at_value();
    }
    let Some(first) = counts.iter().position(|&c| c > 0) else {
        return empty_chart("chart-latency", "No verified activations");
    };
    let last = counts.iter().rposition(|&c| c > 0).unwrap_or(first);
    // Widen narrow distributions to at least two octaves, for context.
    let first = first.saturating_sub(2);
    let last = (last + 2).min(counts.len() - 1);
    let shown = &counts[first..=last];
    let y_max = shown.iter().copied().max().unwrap_or(1) as f64;
    let y_ticks = ticks(y_max, 5);
    let f = Frame {
        x_max: shown.len() as f64,
        y_max: *y_ticks.last().unwrap_or(&1.0),
    };
    let mut bars = String::new();
    for (i, &c) in shown.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let x0 = f.x(i as f64) + 0.5;
        let w = (f.x(i as f64 + 1.0) - f.x(i as f64) - 1.0).max(0.5);
        let y = f.y(c as f64);
        let base = f.y(0.0);
        let _ = write!(bars, "M{x0:.1} {base:.1}V{y:.1}h{w:.1}V{base:.1}z");
    }
    // Where a latency falls on the buckets' log scale.
    let pos = |us: u64| {
        let i = lat_bucket(us.max(1));
        let (lo, hi) = lat_bounds(i);
        (i.saturating_sub(first)) as f64 + (us.saturating_sub(lo)) as f64 / (hi - lo) as f64
    };
    // Labels at round latencies: 1, 2 and 5 × 10^k µs.
    let (lo, hi) = (lat_bounds(first).0, lat_bounds(last).1);
    let x_ticks: Vec<(f64, String)> = (0..10u32)
        .flat_map(|k| [1u64, 2, 5].map(|m| m * 10u64.pow(k)))
        .filter(|&us| us >= lo && us < hi)
        .map(|us| (pos(us), round_us(us)))
        .collect();
    let marks = [("p50", r.latency_us.p50), ("p99", r.latency_us.p99)];
    html! {
        svg.chart #chart-latency viewBox=(format!("0 0 {W} {H}")) role="img" xmlns="http://www.w3.org/2000/svg" {
            title { "Latency histogram (logarithmic buckets)" }
            (axes(&f, &x_ticks, &y_ticks, "latency (log scale)", "activations"))
            path.bars d=(bars) {}
            @for (name, us) in marks {
                @let x = f.x(pos(us));
                line.(format!("mark {name}")) x1=(r1(x)) x2=(r1(x)) y1=(TOP) y2=(H - BOTTOM) {}
                text.marklab x=(r1(x + 4.0)) y=(TOP + 10.0) { (name) " " (fmt_us(us as f64)) }
            }
        }
    }
}

fn legend(items: &[(&str, &str)]) -> Markup {
    html! {
        div.legend {
            @for (class, label) in items {
                span { i.(class) {} (label) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::report::histogram;
    use super::super::{ConnectionMode, Latency, StoppedBy};
    use super::*;
    use std::collections::BTreeMap;

    fn report() -> LoadReport {
        let mut hist = histogram();
        for us in [800u64, 900, 950, 1000, 1100, 1200, 5000, 25_000] {
            hist.record(us).unwrap();
        }
        let mut errors = BTreeMap::new();
        errors.insert("timeout: response".to_owned(), 2);
        errors.insert("<b>hostile</b> & \"kind\"".to_owned(), 1);
        let series = (0..5)
            .map(|t| SecondSample {
                t,
                width: if t == 4 { 0.5 } else { 1.0 },
                activations: 2 + u64::from(t),
                below_threshold: u64::from(t < 2),
                errors: u64::from(t == 3),
                p50_us: 1000 + 100 * u64::from(t),
                p99_us: 5000,
            })
            .collect();
        LoadReport {
            target: "127.0.0.1:1688".into(),
            scenario: Scenario::BootStorm,
            protocol: 6,
            product: "Windows 10/11 Enterprise".into(),
            n_policy: 25,
            concurrency: 8,
            connection: ConnectionMode::PerActivation,
            clients: "20".into(),
            planned_secs: 4.0,
            requests_limit: Some(20),
            timeout_secs: 10.0,
            started_unix_ms: 1_790_000_000_000,
            activations: 8,
            below_threshold: 2,
            activated: 6,
            errors,
            error_total: 3,
            connections: 11,
            elapsed_secs: 4.5,
            activations_per_sec: 8.0 / 4.5,
            latency_us: Latency::of(&hist),
            stopped_by: StoppedBy::Requests,
            series,
            server: None,
            histogram: hist,
        }
    }

    #[test]
    fn ticks_are_round_and_cover_the_maximum() {
        assert_eq!(ticks(9.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(
            ticks(430.0, 5),
            vec![0.0, 100.0, 200.0, 300.0, 400.0, 500.0]
        );
        assert_eq!(
            ticks(0.0, 5),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        assert_eq!(tick_label(0.6000000000000001), "0.6");
        assert_eq!(fmt_us(850.0), "850 µs");
        assert_eq!(fmt_us(1234.0), "1.23 ms");
        assert_eq!(fmt_us(2_500_000.0), "2.50 s");
        assert_eq!(round_us(500), "500 µs");
        assert_eq!(round_us(20_000), "20 ms");
        assert_eq!(round_us(2_000_000), "2 s");
    }

    #[test]
    fn the_page_parses_and_holds_the_run() {
        let html = render(&report());
        let doc = scraper::Html::parse_document(&html);
        assert!(doc.errors.is_empty(), "parse errors: {:?}", doc.errors);
        // The check has teeth: a stray end tag is an error.
        let broken = html.replacen("</h1>", "</h1></p>", 1);
        assert!(!scraper::Html::parse_document(&broken).errors.is_empty());
        let sel = |s: &str| scraper::Selector::parse(s).unwrap();
        for id in ["#chart-throughput", "#chart-latency-time", "#chart-latency"] {
            let chart = doc
                .select(&sel(&format!("svg{id}")))
                .next()
                .unwrap_or_else(|| panic!("{id}"));
            let paths: Vec<_> = chart
                .select(&sel("path"))
                .filter(|p| p.value().attr("d").is_some_and(|d| d.len() > 10))
                .collect();
            assert!(!paths.is_empty(), "{id} draws something");
        }
        let value = |id: &str| {
            doc.select(&sel(&format!("#{id}")))
                .next()
                .and_then(|e| e.value().attr("data-value"))
                .unwrap_or_else(|| panic!("{id}"))
                .to_owned()
        };
        assert_eq!(value("t-activations"), "8");
        assert_eq!(value("t-activated"), "6");
        assert_eq!(value("t-below"), "2");
        assert_eq!(value("t-errors"), "3");
        // The hostile error kind is text, not markup.
        assert!(html.contains("&lt;b&gt;hostile&lt;/b&gt; &amp; &quot;kind&quot;"));
        assert!(doc.select(&sel("#errors b")).next().is_none());
        // Self-contained.
        for bad in ["<script", "src=", "<link", "@import", "url("] {
            assert!(!html.contains(bad), "{bad}");
        }
        assert!(html.contains("Boot storm against 127.0.0.1:1688: 20 machines over 4 s."));
    }

    #[test]
    fn the_host_figures_are_shown() {
        let mut r = report();
        let before = super::super::scrape::parse(
            "kmsd_requests_total{result=\"answered\"} 5\nkmsd_response_seconds_sum 0\nkmsd_response_seconds_count 5\n",
        );
        let after = super::super::scrape::parse(
            "kmsd_requests_total{result=\"answered\"} 13\nkmsd_response_seconds_sum 0.008\nkmsd_response_seconds_count 13\n",
        );
        r.server = Some(ServerFigures::new(
            "http://127.0.0.1:9/metrics",
            &before,
            Ok(after),
        ));
        let html = render(&r);
        let doc = scraper::Html::parse_document(&html);
        assert!(doc.errors.is_empty(), "{:?}", doc.errors);
        let sel = scraper::Selector::parse("#server-series tr[data-delta=\"8\"]").unwrap();
        assert!(doc.select(&sel).next().is_some(), "{html}");
        assert!(html.contains("1.00 ms"), "host's mean response");
    }

    #[test]
    fn an_empty_run_still_renders() {
        let mut r = report();
        r.series.clear();
        r.histogram.reset();
        r.activations = 0;
        let html = render(&r);
        let doc = scraper::Html::parse_document(&html);
        assert!(doc.errors.is_empty(), "{:?}", doc.errors);
        assert!(html.contains("No samples") && html.contains("No verified activations"));
    }
}
