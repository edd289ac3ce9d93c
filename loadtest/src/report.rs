//! Reports: one [`Report`] per run, printed as a table, written as JSON and as a
//! self-contained HTML page with inline SVG plots (no external assets).
//!
//! # Layout
//! - this file: [`Report`], its table and HTML page, and the page frame the bench's
//!   report shares ([`page`], [`esc`], [`fmt_us`]).
//! - [`plots`]: the plots, drawn by `plotters` into SVG.

pub mod plots;

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
        body.push_str(&self.percentile_plot());
        body.push_str("<h2>Over time</h2>");
        body.push_str(&plots::requests_per_second(&self.timeline));
        body.push_str(&plots::latency_per_second(&self.timeline));
        body.push_str("<h2>Responses</h2><table><tr><th>role</th><th>requests</th><th class=l>statuses</th><th class=l>deny codes</th></tr>");
        for (role, c) in &self.by_role {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td class=l>{}</td><td class=l>{}</td></tr>",
                esc(role),
                c.requests,
                esc(&join_counts(&c.statuses)),
                esc(&join_counts(&c.deny_codes))
            );
        }
        body.push_str("</table>");
        body.push_str(&self.deny_code_chart());
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

impl Report {
    fn percentile_plot(&self) -> String {
        // `all` first, then the tags, each in its fixed color.
        let mut names: Vec<&String> = self.percentile_curves.keys().collect();
        names.sort_by_key(|n| (n.as_str() != "all", n.as_str()));
        let curves: Vec<plots::Curve<'_>> = names
            .iter()
            .enumerate()
            .map(|(i, name)| plots::Curve {
                name,
                color: match name.as_str() {
                    "all" => plots::PALETTE[0],
                    "legit" => plots::OK,
                    "attack" => plots::ERROR,
                    _ => plots::PALETTE[3 + i % 5],
                },
                points: &self.percentile_curves[*name],
            })
            .collect();
        plots::percentile_plot("Latency by percentile (log scale)", &curves)
    }

    fn deny_code_chart(&self) -> String {
        if self.totals.deny_codes.is_empty() {
            return "<p class=plot-empty>No request was denied.</p>".to_owned();
        }
        // Most frequent first.
        let mut codes: Vec<(&String, &u64)> = self.totals.deny_codes.iter().collect();
        codes.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let rows: Vec<plots::BarRow> = codes
            .into_iter()
            .map(|(code, n)| plots::BarRow {
                label: code.clone(),
                pieces: vec![(0, *n as f64)],
                note: None,
            })
            .collect();
        plots::bar_chart(
            "Deny codes (all requests)",
            "requests",
            &[("denied", plots::DENIED)],
            &rows,
            &|v| format!("{v:.0}"),
        )
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
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}table.wide{font-size:.8em}table.wide th{vertical-align:bottom}\
tr.none td{color:#666}td.l,th.l{text-align:left}pre{overflow-x:auto}pre.cmd{background:#f6f6f6;padding:.5em}td:first-child,th:first-child{text-align:left}\
tr.ok td{background:#eef9ee}tr.fail td{background:#fde8e8}span.ok{color:#1a7f37}span.fail{color:#c62828}\
figure.plot{margin:1em 0}figure.plot svg{display:block;max-width:100%;height:auto;border:1px solid #ddd}\
.plot-empty,.plot-error{color:#666;font-style:italic}.plot-error{color:#c62828}";

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
    fn formatting() {
        assert_eq!(fmt_us(850), "850µs");
        assert_eq!(fmt_us(1_250), "1.25ms");
        assert_eq!(fmt_us(3_100_000), "3.10s");
        assert_eq!(esc("<a&b>"), "&lt;a&amp;b&gt;");
    }
}
