//! Reports: one [`Report`] per run, printed as a table, written as JSON and as a
//! self-contained HTML page with inline SVG plots (no external assets).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::runner::{Counts, RunData};
use crate::stats::LatencySummary;
use crate::verdict::Verdict;

/// Everything one run measured, in the shape written to `report.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Dialect.
    pub dialect: String,
    /// The gateway URL.
    pub target: String,
    /// `open loop, N req/s` or `closed loop, C concurrent clients`.
    pub load: String,
    /// Configured duration (s).
    pub duration_s: f64,
    /// From the first request to the last answer (s).
    pub elapsed_s: f64,
    /// Requests completed.
    pub requests: u64,
    /// Requests without a response.
    pub transport_errors: u64,
    /// Completed requests per second.
    pub throughput_rps: f64,
    /// Open-loop requests sent later than due (the client was still waiting).
    pub late_requests: u64,
    /// All latencies.
    pub latency: LatencySummary,
    /// Latencies by tag (`legit`, `attack`).
    pub latency_by_tag: BTreeMap<String, LatencySummary>,
    /// Counts over all requests.
    pub totals: Counts,
    /// Counts by tag.
    pub by_tag: BTreeMap<String, Counts>,
    /// Counts by actor role.
    pub by_role: BTreeMap<String, Counts>,
    /// Per second: requests, ok, denied, errors, p50 and p99 (µs).
    pub timeline: Vec<TimelinePoint>,
    /// Latency percentile curves by tag (`all`, `legit`, `attack`): (quantile, µs).
    pub percentile_curves: BTreeMap<String, Vec<(f64, u64)>>,
    /// What reached the exchange, from its ledger; `None` without a ledger.
    pub verdict: Option<Verdict>,
    /// Context the numbers need (what the gateway supports, what was approximated).
    pub notes: Vec<String>,
}

/// One second of the timeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// Seconds since the start.
    pub t: u64,
    /// Requests completed in that second.
    pub requests: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Gateway denials.
    pub denied: u64,
    /// No response.
    pub errors: u64,
    /// Median latency (µs).
    pub p50_us: u64,
    /// 99th percentile latency (µs).
    pub p99_us: u64,
}

impl Report {
    /// A report of `data`; the caller fills in the verdict and notes.
    pub fn from_run(
        scenario: &str,
        dialect: &str,
        target: &str,
        load: &str,
        duration_s: f64,
        data: &RunData,
    ) -> Report {
        let mut totals = Counts::default();
        for c in data.by_tag.values() {
            totals.add(c);
        }
        let transport_errors = totals
            .statuses
            .iter()
            .filter(|(s, _)| s.starts_with("error"))
            .map(|(_, n)| n)
            .sum();
        let elapsed_s = data.elapsed.as_secs_f64();
        let mut curves = BTreeMap::new();
        curves.insert("all".to_owned(), data.latency.curve());
        for (tag, l) in &data.latency_by_tag {
            curves.insert(tag.as_str().to_owned(), l.curve());
        }
        Report {
            scenario: scenario.to_owned(),
            dialect: dialect.to_owned(),
            target: target.to_owned(),
            load: load.to_owned(),
            duration_s,
            elapsed_s,
            requests: totals.requests,
            transport_errors,
            throughput_rps: if elapsed_s > 0.0 {
                totals.requests as f64 / elapsed_s
            } else {
                0.0
            },
            late_requests: data.late,
            latency: data.latency.summary(),
            latency_by_tag: data
                .latency_by_tag
                .iter()
                .map(|(t, l)| (t.as_str().to_owned(), l.summary()))
                .collect(),
            totals,
            by_tag: data
                .by_tag
                .iter()
                .map(|(t, c)| (t.as_str().to_owned(), c.clone()))
                .collect(),
            by_role: data.by_role.clone(),
            timeline: data
                .timeline
                .seconds()
                .iter()
                .enumerate()
                .map(|(t, s)| TimelinePoint {
                    t: t as u64,
                    requests: s.requests,
                    ok: s.ok,
                    denied: s.denied,
                    errors: s.errors,
                    p50_us: s.latency.quantile(0.5),
                    p99_us: s.latency.quantile(0.99),
                })
                .collect(),
            percentile_curves: curves,
            verdict: None,
            notes: Vec::new(),
        }
    }

    /// The report as a plain-text table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {} ({}) against {} — {}, {:.1} s",
            self.scenario, self.dialect, self.target, self.load, self.elapsed_s
        );
        let _ = writeln!(
            out,
            "{} requests, {:.0} req/s, {} without response{}",
            self.requests,
            self.throughput_rps,
            self.transport_errors,
            if self.late_requests > 0 {
                format!(
                    ", {} sent late (open loop behind schedule)",
                    self.late_requests
                )
            } else {
                String::new()
            }
        );
        out.push('\n');
        let _ = writeln!(
            out,
            "{:<8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency", "count", "mean", "p50", "p90", "p99", "p99.9", "max"
        );
        let mut rows = vec![("all".to_owned(), self.latency)];
        rows.extend(self.latency_by_tag.iter().map(|(t, l)| (t.clone(), *l)));
        for (name, l) in rows {
            let _ = writeln!(
                out,
                "{:<8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                name,
                l.count,
                fmt_us(l.mean_us as u64),
                fmt_us(l.p50_us),
                fmt_us(l.p90_us),
                fmt_us(l.p99_us),
                fmt_us(l.p999_us),
                fmt_us(l.max_us)
            );
        }
        out.push('\n');
        let _ = writeln!(
            out,
            "{:<16} {:>9}  {:<40}  deny codes",
            "role", "requests", "statuses"
        );
        for (role, c) in &self.by_role {
            let _ = writeln!(
                out,
                "{:<16} {:>9}  {:<40}  {}",
                role,
                c.requests,
                join_counts(&c.statuses),
                join_counts(&c.deny_codes)
            );
        }
        out.push('\n');
        match &self.verdict {
            None => {
                let _ = writeln!(
                    out,
                    "verdict: unavailable (no ledger of the exchange to read)"
                );
            }
            Some(v) => {
                let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
                let _ = writeln!(
                    out,
                    "verdict from the exchange's ledger ({} lines):",
                    v.ledger_lines
                );
                let _ = writeln!(
                    out,
                    "  {} attack orders/withdrawals that reached the exchange: {} (orders {}, withdrawals {}; must be 0)",
                    mark(v.attack_funds_reached == 0),
                    v.attack_funds_reached,
                    v.attack_orders_reached,
                    v.attack_withdrawals_reached
                );
                let _ = writeln!(
                    out,
                    "  {} legitimate requests refused: {} of {}{} (must be 0)",
                    mark(v.legit_refused == 0),
                    v.legit_refused,
                    v.legit_sent,
                    if v.legit_refused_reasons.is_empty() {
                        String::new()
                    } else {
                        format!(" [{}]", join_counts(&v.legit_refused_reasons))
                    }
                );
                let _ = writeln!(
                    out,
                    "       attack reads that reached the exchange: {} of {} attack requests{}",
                    v.attack_reads_reached,
                    v.attack_sent,
                    if v.attack_reached_by_role.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " (all executed attack requests by role: {})",
                            join_counts(&v.attack_reached_by_role)
                        )
                    }
                );
                if v.executed_twice
                    + v.identity_mismatches
                    + v.unmatched_ledger_lines
                    + v.request_id_mismatches
                    > 0
                {
                    let _ = writeln!(
                        out,
                        "  FAIL ledger inconsistencies: executed twice {}, identity mismatches {}, unmatched lines {}, request id mismatches {}",
                        v.executed_twice, v.identity_mismatches, v.unmatched_ledger_lines, v.request_id_mismatches
                    );
                }
                let _ = writeln!(out, "  => {}", if v.pass { "PASS" } else { "FAIL" });
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }

    /// Writes `report.json` and `report.html` into `dir` (created if needed); returns
    /// their paths.
    pub fn write(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join("report.json");
        std::fs::write(&json, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", json.display()))?;
        let html = dir.join("report.html");
        std::fs::write(&html, self.html())
            .with_context(|| format!("writing {}", html.display()))?;
        Ok((json, html))
    }

    /// The self-contained HTML report.
    pub fn html(&self) -> String {
        let mut body = String::new();
        let _ = write!(
            body,
            "<h1>Keyguard load test: {}</h1><p class=sub>{} dialect, against {} — {}, {:.1} s, {} requests, {:.0} req/s</p>",
            esc(&self.scenario),
            esc(&self.dialect),
            esc(&self.target),
            esc(&self.load),
            self.elapsed_s,
            self.requests,
            self.throughput_rps
        );
        body.push_str(&verdict_html(self.verdict.as_ref()));
        body.push_str("<h2>Latency</h2><table><tr><th></th><th>count</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
        let mut rows = vec![("all".to_owned(), self.latency)];
        rows.extend(self.latency_by_tag.iter().map(|(t, l)| (t.clone(), *l)));
        for (name, l) in rows {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&name),
                l.count,
                fmt_us(l.mean_us as u64),
                fmt_us(l.p50_us),
                fmt_us(l.p90_us),
                fmt_us(l.p99_us),
                fmt_us(l.p999_us),
                fmt_us(l.max_us)
            );
        }
        body.push_str("</table>");
        body.push_str(&svg::percentile_plot(&self.percentile_curves));
        body.push_str("<h2>Over time</h2>");
        body.push_str(&svg::timeline_plot(&self.timeline));
        body.push_str("<h2>Responses</h2><table><tr><th>role</th><th>requests</th><th>statuses</th><th>deny codes</th></tr>");
        for (role, c) in &self.by_role {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(role),
                c.requests,
                esc(&join_counts(&c.statuses)),
                esc(&join_counts(&c.deny_codes))
            );
        }
        body.push_str("</table>");
        body.push_str(&svg::bar_chart(
            "Deny codes (all requests)",
            &self.totals.deny_codes,
        ));
        if !self.notes.is_empty() {
            body.push_str("<h2>Notes</h2><ul>");
            for n in &self.notes {
                let _ = write!(body, "<li>{}</li>", esc(n));
            }
            body.push_str("</ul>");
        }
        page(&format!("Keyguard load test: {}", self.scenario), &body)
    }
}

fn verdict_html(v: Option<&Verdict>) -> String {
    let Some(v) = v else {
        return "<p class=verdict>Verdict unavailable: no ledger of the exchange was read.</p>"
            .to_owned();
    };
    let row = |ok: bool, what: &str, value: String| {
        format!(
            "<tr class={}><td>{}</td><td>{}</td><td>{}</td></tr>",
            if ok { "ok" } else { "fail" },
            if ok { "✔" } else { "✘" },
            esc(what),
            esc(&value)
        )
    };
    let mut s = format!(
        "<h2>Verdict: <span class={}>{}</span></h2><p>From the mock exchange's ledger ({} lines): what actually executed.</p><table>",
        if v.pass { "ok" } else { "fail" },
        if v.pass { "PASS" } else { "FAIL" },
        v.ledger_lines
    );
    s.push_str(&row(
        v.attack_funds_reached == 0,
        "attack orders and withdrawals that reached the exchange (must be 0)",
        format!(
            "{} (orders {}, withdrawals {})",
            v.attack_funds_reached, v.attack_orders_reached, v.attack_withdrawals_reached
        ),
    ));
    s.push_str(&row(
        v.legit_refused == 0,
        "legitimate requests refused (must be 0)",
        format!(
            "{} of {} {}",
            v.legit_refused,
            v.legit_sent,
            join_counts(&v.legit_refused_reasons)
        ),
    ));
    s.push_str(&row(
        true,
        "attack reads that reached the exchange (reported)",
        format!(
            "{} of {} attack requests",
            v.attack_reads_reached, v.attack_sent
        ),
    ));
    s.push_str(&row(
        v.executed_twice + v.identity_mismatches + v.unmatched_ledger_lines == 0,
        "ledger consistency (executed twice / identity mismatches / unmatched lines)",
        format!(
            "{} / {} / {}",
            v.executed_twice, v.identity_mismatches, v.unmatched_ledger_lines
        ),
    ));
    s.push_str("</table>");
    s
}

/// A complete HTML page with the report's inline style.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{}</title><style>{}</style></head><body>{}</body></html>\n",
        esc(title),
        STYLE,
        body
    )
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}\
h1{margin-bottom:0}.sub{color:#666;margin-top:.3em}table{border-collapse:collapse;margin:1em 0}\
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}td:first-child,th:first-child{text-align:left}\
tr.ok td{background:#eef9ee}tr.fail td{background:#fde8e8}span.ok{color:#1a7f37}span.fail{color:#c62828}\
svg{display:block;margin:1em 0;background:#fff;border:1px solid #ddd}svg text{font-size:11px;font-family:system-ui,sans-serif}";

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `a 3, b 5`.
pub fn join_counts(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Microseconds, human-sized: `850µs`, `1.25ms`, `3.1s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1_000.0)
    } else {
        format!("{:.2}s", us as f64 / 1_000_000.0)
    }
}

/// Inline SVG charts.
pub mod svg {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;

    use super::{esc, fmt_us, TimelinePoint};

    const W: f64 = 900.0;
    const H: f64 = 320.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 30.0;
    const BOTTOM: f64 = 40.0;
    const COLORS: [&str; 4] = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd"];

    fn color(name: &str, i: usize) -> &'static str {
        match name {
            "legit" => "#2ca02c",
            "attack" => "#d62728",
            "all" => "#1f77b4",
            _ => COLORS[i % COLORS.len()],
        }
    }

    /// The x position of quantile `q` on a "nines" axis: 0 → 0, 0.9 → 1, 0.99 → 2, ...
    pub fn nines(q: f64) -> f64 {
        -(1.0 - q).max(1e-7).log10()
    }

    /// Latency by percentile, x on a nines scale, y logarithmic.
    pub fn percentile_plot(curves: &BTreeMap<String, Vec<(f64, u64)>>) -> String {
        let max_x = curves
            .values()
            .flat_map(|c| c.iter().map(|p| nines(p.0)))
            .fold(1.0_f64, f64::max)
            .ceil();
        let (lo, hi) = curves
            .values()
            .flat_map(|c| c.iter().map(|p| p.1.max(1) as f64))
            .fold((f64::MAX, 1.0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if lo == f64::MAX {
            return String::new();
        }
        let (ylo, yhi) = (
            lo.log10().floor(),
            hi.log10().ceil().max(lo.log10().floor() + 1.0),
        );
        let px = |x: f64| LEFT + x / max_x * (W - LEFT - RIGHT);
        let py =
            |us: f64| H - BOTTOM - (us.max(1.0).log10() - ylo) / (yhi - ylo) * (H - TOP - BOTTOM);
        let mut s = header("Latency by percentile (log scale)");
        // Grid.
        for n in 0..=(max_x as i32) {
            let x = px(f64::from(n));
            let label = match n {
                0 => "0%".to_owned(),
                n => format!("{}%", 100.0 - 100.0 * 10f64.powi(-n)),
            };
            let _ = write!(s, "<line x1={x:.1} y1={TOP} x2={x:.1} y2={} stroke=#eee/><text x={x:.1} y={} text-anchor=middle>{label}</text>", H - BOTTOM, H - BOTTOM + 15.0);
        }
        for d in (ylo as i32)..=(yhi as i32) {
            let y = py(10f64.powi(d));
            let _ = write!(s, "<line x1={LEFT} y1={y:.1} x2={} y2={y:.1} stroke=#eee/><text x={} y={:.1} text-anchor=end>{}</text>", W - RIGHT, LEFT - 5.0, y + 4.0, fmt_us(10u64.pow(d.max(0) as u32)));
        }
        for (i, (name, curve)) in curves.iter().enumerate() {
            let points: Vec<String> = curve
                .iter()
                .map(|(q, us)| format!("{:.1},{:.1}", px(nines(*q)), py(*us as f64)))
                .collect();
            let c = color(name, i);
            let _ = write!(
                s,
                "<polyline fill=none stroke={c} stroke-width=2 points=\"{}\"/>",
                points.join(" ")
            );
            let _ = write!(
                s,
                "<text x={} y={} fill={c}>{}</text>",
                LEFT + 10.0 + 80.0 * i as f64,
                TOP - 10.0,
                esc(name)
            );
        }
        s.push_str("</svg>");
        s
    }

    /// Requests per second (stacked ok / denied / errors) and p50/p99 latency per second.
    pub fn timeline_plot(points: &[TimelinePoint]) -> String {
        if points.is_empty() {
            return String::new();
        }
        let n = points.len() as f64;
        let max_req = points.iter().map(|p| p.requests).max().unwrap_or(1).max(1) as f64;
        let bar_w = (W - LEFT - RIGHT) / n;
        let px = |i: f64| LEFT + i * bar_w;
        let py = |v: f64| H - BOTTOM - v / max_req * (H - TOP - BOTTOM);
        let mut s = header("Requests per second: ok (green), denied (orange), no response (red)");
        for k in 0..=4 {
            let v = max_req * f64::from(k) / 4.0;
            let y = py(v);
            let _ = write!(s, "<line x1={LEFT} y1={y:.1} x2={} y2={y:.1} stroke=#eee/><text x={} y={:.1} text-anchor=end>{v:.0}</text>", W - RIGHT, LEFT - 5.0, y + 4.0);
        }
        for (i, p) in points.iter().enumerate() {
            let x = px(i as f64) + 1.0;
            let w = (bar_w - 2.0).max(1.0);
            let other = p.requests.saturating_sub(p.ok + p.denied + p.errors);
            let mut base = 0.0;
            for (v, c) in [
                (p.ok + other, "#2ca02c"),
                (p.denied, "#ff9800"),
                (p.errors, "#d62728"),
            ] {
                if v == 0 {
                    continue;
                }
                let y0 = py(base);
                let y1 = py(base + v as f64);
                let _ = write!(
                    s,
                    "<rect x={x:.1} y={y1:.1} width={w:.1} height={:.1} fill={c}/>",
                    (y0 - y1).max(0.5)
                );
                base += v as f64;
            }
            if i % ((points.len() / 10).max(1)) == 0 {
                let _ = write!(
                    s,
                    "<text x={:.1} y={} text-anchor=middle>{}s</text>",
                    x + w / 2.0,
                    H - BOTTOM + 15.0,
                    p.t
                );
            }
        }
        s.push_str("</svg>");
        // Latency per second.
        let hi = points.iter().map(|p| p.p99_us).max().unwrap_or(1).max(1) as f64;
        let ly = |us: f64| H - BOTTOM - us / hi * (H - TOP - BOTTOM);
        s.push_str(&header("Latency per second: p50 (blue), p99 (red)"));
        for k in 0..=4 {
            let v = hi * f64::from(k) / 4.0;
            let y = ly(v);
            let _ = write!(s, "<line x1={LEFT} y1={y:.1} x2={} y2={y:.1} stroke=#eee/><text x={} y={:.1} text-anchor=end>{}</text>", W - RIGHT, LEFT - 5.0, y + 4.0, fmt_us(v as u64));
        }
        for (field, c) in [(0, "#1f77b4"), (1, "#d62728")] {
            let pts: Vec<String> = points
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let v = if field == 0 { p.p50_us } else { p.p99_us };
                    format!("{:.1},{:.1}", px(i as f64) + bar_w / 2.0, ly(v as f64))
                })
                .collect();
            let _ = write!(
                s,
                "<polyline fill=none stroke={c} stroke-width=2 points=\"{}\"/>",
                pts.join(" ")
            );
        }
        s.push_str("</svg>");
        s
    }

    /// Horizontal bars, one per entry.
    pub fn bar_chart(title: &str, counts: &BTreeMap<String, u64>) -> String {
        if counts.is_empty() {
            return String::new();
        }
        let max = counts.values().copied().max().unwrap_or(1).max(1) as f64;
        let row = 22.0;
        let h = TOP + row * counts.len() as f64 + 10.0;
        let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width={W} height={h} viewBox=\"0 0 {W} {h}\"><text x=10 y=18 font-weight=bold>{}</text>", esc(title));
        let label_w = 200.0;
        for (i, (name, v)) in counts.iter().enumerate() {
            let y = TOP + row * i as f64;
            let w = *v as f64 / max * (W - label_w - 120.0);
            let _ = write!(s, "<text x={} y={:.1} text-anchor=end>{}</text><rect x={label_w} y={:.1} width={w:.1} height={:.1} fill=#ff9800/><text x={:.1} y={:.1}>{v}</text>", label_w - 6.0, y + 14.0, esc(name), y + 3.0, row - 6.0, label_w + w + 5.0, y + 14.0);
        }
        s.push_str("</svg>");
        s
    }

    fn header(title: &str) -> String {
        format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width={W} height={H} viewBox=\"0 0 {W} {H}\"><text x=10 y=18 font-weight=bold>{}</text>", esc(title))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::Tag;
    use crate::stats::Latency;

    fn sample() -> Report {
        let mut data = RunData::default();
        let mut l = Latency::default();
        for us in [100, 200, 300, 5_000] {
            l.record(us);
        }
        data.latency = l.clone();
        data.latency_by_tag.insert(Tag::Legit, l);
        let mut c = Counts {
            requests: 4,
            ..Counts::default()
        };
        c.statuses.insert("200".into(), 3);
        c.statuses.insert("error:timeout".into(), 1);
        c.deny_codes.insert("ip_not_allowed".into(), 1);
        data.by_tag.insert(Tag::Legit, c);
        data.timeline.at(0).requests = 4;
        data.elapsed = std::time::Duration::from_secs(2);
        Report::from_run(
            "mixed",
            "zaif",
            "http://127.0.0.1:1",
            "open loop",
            2.0,
            &data,
        )
    }

    #[test]
    fn report_math() {
        let r = sample();
        assert_eq!(r.requests, 4);
        assert_eq!(r.transport_errors, 1);
        assert!((r.throughput_rps - 2.0).abs() < 1e-9);
        assert_eq!(r.latency.p50_us, 200);
        assert_eq!(r.timeline.len(), 1);
    }

    #[test]
    fn table_and_html_show_the_verdict() {
        let mut r = sample();
        assert!(r.table().contains("verdict: unavailable"));
        r.verdict = Some(Verdict {
            attack_orders_reached: 2,
            attack_funds_reached: 2,
            ..Verdict::default()
        });
        let t = r.table();
        assert!(
            t.contains("FAIL attack orders/withdrawals that reached the exchange: 2"),
            "{t}"
        );
        let html = r.html();
        assert!(html.starts_with("<!doctype html>"));
        assert!(html.contains("<svg"));
        assert!(
            !html.contains("http://") || !html.contains("src=\"http"),
            "no external assets"
        );
        assert!(html.contains("Verdict: <span class=fail>FAIL</span>"));
    }

    #[test]
    fn nines_axis() {
        assert!((svg::nines(0.9) - 1.0).abs() < 1e-9);
        assert!((svg::nines(0.999) - 3.0).abs() < 1e-9);
        assert_eq!(svg::nines(0.0), 0.0);
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_us(850), "850µs");
        assert_eq!(fmt_us(1_250), "1.25ms");
        assert_eq!(fmt_us(3_100_000), "3.10s");
        assert_eq!(esc("<a&b>"), "&lt;a&amp;b&gt;");
    }
}
