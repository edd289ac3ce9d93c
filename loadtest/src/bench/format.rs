//! The bench's outputs: the text table printed at the end, `bench.md` (the README's
//! table), `bench.html` (tables and plots) and `bench.json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::results::{
    ratio, BenchReport, DialectResult, Measure, MemoryCheck, RedisMemory, TargetResult,
};
use super::runs::cpu_text;
use crate::report::plots::{self, BarRow, Curve};
use crate::report::{esc, fmt_us, page};

/// Column headers of a dialect's table.
const HEADERS: [&str; 14] = [
    "target",
    "req/s",
    "p50",
    "p99",
    "p99.9",
    "proxy CPU µs/req",
    "generator CPU µs/req",
    "exchange CPU µs/req",
    "req/s ÷ (a)",
    "req/s ÷ (b)",
    "p50 ÷ (a)",
    "p50 ÷ (b)",
    "p99 ÷ (a)",
    "p99 ÷ (b)",
];

/// Headers of the HTML tables (narrow enough for the page).
const HTML_HEADERS: [&str; 14] = [
    "target",
    "req/s",
    "p50",
    "p99",
    "p99.9",
    "CPU µs/req proxy",
    "CPU µs/req generator",
    "CPU µs/req exchange",
    "req/s ÷ (a)",
    "req/s ÷ (b)",
    "p50 ÷ (a)",
    "p50 ÷ (b)",
    "p99 ÷ (a)",
    "p99 ÷ (b)",
];

/// Short headers for the fixed-width text table.
const TEXT_HEADERS: [&str; 14] = [
    "target",
    "req/s",
    "p50",
    "p99",
    "p99.9",
    "CPU proxy",
    "CPU gen",
    "CPU exch",
    "rps÷(a)",
    "rps÷(b)",
    "p50÷(a)",
    "p50÷(b)",
    "p99÷(a)",
    "p99÷(b)",
];

/// A target's row: either its cells or why it did not run.
enum Row {
    Measured(Box<[String; 14]>),
    Skipped(String, String),
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}"))
}

fn fmt_cpu(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.1}"))
}

fn fmt_signed_us(us: i64) -> String {
    if us < 0 {
        format!("-{}", fmt_us(us.unsigned_abs()))
    } else {
        format!("+{}", fmt_us(us as u64))
    }
}

fn rows(d: &DialectResult) -> Vec<Row> {
    let direct = d.measured("direct");
    let nginx = d.measured("nginx");
    d.targets
        .iter()
        .map(|t| {
            if let Some(why) = &t.skipped {
                return Row::Skipped(t.description.clone(), why.clone());
            }
            let m = &t.median;
            let r = |base: Option<&Measure>, f: fn(&Measure) -> f64| {
                fmt_ratio(base.and_then(|b| ratio(f(m), f(b))))
            };
            Row::Measured(Box::new([
                t.description.clone(),
                format!("{:.0}", m.ok_rps),
                fmt_us(m.p50_us),
                fmt_us(m.p99_us),
                fmt_us(m.p999_us),
                match m.cpu("redis") {
                    // redis-server shares the cores: what it spends is part of the cost.
                    Some(r) => format!("{} + {r:.1} redis", fmt_cpu(m.cpu("proxy"))),
                    None => fmt_cpu(m.cpu("proxy")),
                },
                fmt_cpu(m.cpu("generator")),
                fmt_cpu(m.cpu("exchange")),
                r(direct, |x| x.ok_rps),
                r(nginx, |x| x.ok_rps),
                r(direct, |x| x.p50_us as f64),
                r(nginx, |x| x.p50_us as f64),
                r(direct, |x| x.p99_us as f64),
                r(nginx, |x| x.p99_us as f64),
            ]))
        })
        .collect()
}

impl BenchReport {
    fn machine(&self) -> String {
        format!(
            "{} CPUs ({}), {:.0} GiB{}",
            self.cpus,
            self.cpu_model,
            self.memory_gib,
            self.nginx_version
                .as_ref()
                .map(|v| format!(", {v}"))
                .unwrap_or_default()
        )
    }

    fn setup(&self) -> String {
        format!(
            "{} closed-loop clients, {} round(s) of {:.0} s per target (targets alternate in each round; median of the rounds); Keyguard workers: {}",
            self.concurrency,
            self.rounds,
            self.duration_s,
            self.workers
                .map_or_else(|| "default (one per core)".to_owned(), |w| w.to_string())
        )
    }

    /// The plain-text report.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "bench: {}", self.setup());
        let _ = writeln!(out, "machine: {}", self.machine());
        let _ = writeln!(out, "command: {}", self.command);
        for d in &self.dialects {
            let _ = writeln!(out, "\n{} (CPU: µs per request of each process)", d.dialect);
            let _ = writeln!(
                out,
                "{:<28}{}",
                TEXT_HEADERS[0],
                TEXT_HEADERS[1..]
                    .iter()
                    .map(|h| format!(" {h:>9}"))
                    .collect::<String>()
            );
            for row in rows(d) {
                match row {
                    Row::Measured(cells) => {
                        let _ = writeln!(
                            out,
                            "{:<28}{}",
                            cells[0],
                            cells[1..]
                                .iter()
                                .map(|c| format!(" {c:>9}"))
                                .collect::<String>()
                        );
                    }
                    Row::Skipped(what, why) => {
                        let _ = writeln!(out, "{what:<28}{why}");
                    }
                }
            }
            for t in &d.targets {
                if !t.median.non_2xx.is_empty() {
                    let _ = writeln!(
                        out,
                        "note: {} answered non-2xx (not counted in req/s): {:?}",
                        t.name, t.median.non_2xx
                    );
                }
            }
            if let Some(h) = &d.half_rate {
                let _ = writeln!(
                    out,
                    "open loop at {:.0} req/s (half of {}'s maximum): p50 direct {}, nginx {}, Keyguard HS256 {} (÷ nginx {}, {} over direct); p99 direct {}, nginx {}, Keyguard {}",
                    h.rate,
                    h.half_of,
                    fmt_us(h.direct.p50_us),
                    h.nginx.as_ref().map_or("—".into(), |n| fmt_us(n.p50_us)),
                    fmt_us(h.keyguard.p50_us),
                    fmt_ratio(h.p50_ratio_to_nginx),
                    fmt_signed_us(h.p50_added_over_direct_us),
                    fmt_us(h.direct.p99_us),
                    h.nginx.as_ref().map_or("—".into(), |n| fmt_us(n.p99_us)),
                    fmt_us(h.keyguard.p99_us),
                );
                let _ = writeln!(
                    out,
                    "  achieved req/s: direct {:.0}, nginx {}, Keyguard HS256 {:.0}",
                    h.direct.ok_rps,
                    h.nginx
                        .as_ref()
                        .map_or("—".into(), |n| format!("{:.0}", n.ok_rps)),
                    h.keyguard.ok_rps
                );
                if let Some(note) = half_rate_note(d) {
                    let _ = writeln!(out, "  note: {note}");
                }
                let _ = writeln!(
                    out,
                    "  CPU µs/request at that rate: Keyguard {}{}",
                    cpu_text(&h.keyguard),
                    h.nginx
                        .as_ref()
                        .map(|n| format!("; nginx {}", cpu_text(n)))
                        .unwrap_or_default()
                );
            }
        }
        if !self.goals.is_empty() {
            let _ = writeln!(out, "\ntargets:");
            for g in &self.goals {
                let _ = writeln!(
                    out,
                    "  {:<8} {:<62} {:>8}  (target {}: {})",
                    g.dialect.as_deref().unwrap_or("all"),
                    g.what,
                    g.value
                        .map_or_else(|| "—".to_owned(), |v| format!("{v:.2}")),
                    g.target,
                    g.verdict()
                );
            }
        }
        for m in self.memory_checks() {
            let _ = writeln!(
                out,
                "\nmemory ({}, {} store) through {:.0} s of stuffing: {} requests, {} distinct keys, {} distinct source IPs + {} random X-Forwarded-For IPs ({:.0} new networks/s)",
                m.dialect, m.store, m.duration_s, m.requests, m.distinct_keys, m.distinct_source_ips, m.distinct_forwarded_ips, m.networks_per_s()
            );
            let _ = writeln!(
                out,
                "  gateway VmRSS start {} MiB, before {} MiB, peak {} MiB, after {} MiB => growth {:.1} MiB (target < 50 MiB: {})",
                m.rss_start_kib / 1024,
                m.rss_before_kib / 1024,
                m.rss_peak_kib / 1024,
                m.rss_after_kib / 1024,
                m.growth_mib,
                if m.growth_mib < 50.0 { "met" } else { "MISSED" }
            );
            if let Some(r) = &m.redis {
                let _ = writeln!(
                    out,
                    "  redis used_memory before {}, peak {}, after {} => growth {:.1} MiB (target < 64 MiB: {}); keys before {}, peak {}, after {}",
                    fmt_mib(r.used_memory_before),
                    fmt_mib(r.used_memory_peak),
                    fmt_mib(r.used_memory_after),
                    r.growth_mib,
                    if r.growth_mib < 64.0 { "met" } else { "MISSED" },
                    r.keys_before,
                    r.keys_peak,
                    r.keys_after
                );
                if let Some(line) = redis_bound(m) {
                    let _ = writeln!(out, "  {line}");
                }
            }
            for (role, c) in &m.by_role {
                let _ = writeln!(
                    out,
                    "  {role}: {} requests, statuses {:?}, deny codes {:?}",
                    c.requests, c.statuses, c.deny_codes
                );
            }
            let _ = writeln!(out, "  {}", m.method);
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }

    /// The README's table: Markdown, with the machine and the command.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Machine: {}. {}.\n", self.machine(), self.setup());
        let _ = writeln!(out, "```sh\n{}\n```\n", self.command);
        let _ = writeln!(out, "| dialect | {} |", HEADERS.join(" | "));
        let _ = writeln!(out, "|---|{}", "---|".repeat(HEADERS.len()));
        for d in &self.dialects {
            for row in rows(d) {
                match row {
                    Row::Measured(cells) => {
                        let _ = writeln!(out, "| {} | {} |", d.dialect, cells.join(" | "));
                    }
                    Row::Skipped(what, why) => {
                        let _ = writeln!(
                            out,
                            "| {} | {what} | {why} |{}",
                            d.dialect,
                            " |".repeat(HEADERS.len() - 2)
                        );
                    }
                }
            }
        }
        if self.dialects.iter().any(|d| d.half_rate.is_some()) {
            let _ = writeln!(
                out,
                "\n| dialect | open-loop rate | half of | p50 direct | p50 nginx | p50 Keyguard HS256 | ÷ nginx | p99 nginx | p99 Keyguard HS256 |\n|---|---|---|---|---|---|---|---|---|"
            );
            for d in &self.dialects {
                if let Some(h) = &d.half_rate {
                    let _ = writeln!(
                        out,
                        "| {} | {:.0} req/s | {} | {} | {} | {} | {} | {} | {} |",
                        d.dialect,
                        h.rate,
                        h.half_of,
                        fmt_us(h.direct.p50_us),
                        h.nginx.as_ref().map_or("—".into(), |n| fmt_us(n.p50_us)),
                        fmt_us(h.keyguard.p50_us),
                        fmt_ratio(h.p50_ratio_to_nginx),
                        h.nginx.as_ref().map_or("—".into(), |n| fmt_us(n.p99_us)),
                        fmt_us(h.keyguard.p99_us),
                    );
                }
            }
            for d in &self.dialects {
                if let Some(note) = half_rate_note(d) {
                    let _ = writeln!(out, "\n{}: {note}", d.dialect);
                }
            }
        }
        if !self.goals.is_empty() {
            let _ = writeln!(
                out,
                "\n| dialect | target | measured | goal | |\n|---|---|---|---|---|"
            );
            for g in &self.goals {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} |",
                    g.dialect.as_deref().unwrap_or("all"),
                    g.what,
                    g.value
                        .map_or_else(|| "—".to_owned(), |v| format!("{v:.2}")),
                    g.target,
                    match g.met {
                        Some(true) => "met",
                        Some(false) => "**missed**",
                        None => "not measured",
                    }
                );
            }
        }
        if !self.memory_checks().is_empty() {
            let _ = writeln!(
                out,
                "\n| stuffing check | {} |\n|---|{}",
                MEMORY_HEADERS.join(" | "),
                "---|".repeat(MEMORY_HEADERS.len())
            );
            for m in self.memory_checks() {
                let _ = writeln!(out, "| {} | {} |", m.dialect, memory_cells(m).join(" | "));
            }
            for m in self.memory_checks() {
                if let Some(line) = redis_bound(m) {
                    let _ = writeln!(out, "\n{line}");
                }
            }
        }
        out
    }

    /// The stuffing checks that ran: embedded, then Redis.
    fn memory_checks(&self) -> Vec<&MemoryCheck> {
        self.memory.iter().chain(&self.memory_redis).collect()
    }

    /// The self-contained HTML report: targets, a table per dialect, and plots of
    /// requests/s, latency percentiles and CPU per request by dialect and target.
    pub fn html(&self) -> String {
        let mut body = format!(
            "<h1>Keyguard bench</h1><p class=sub>{}<br>{}</p><pre class=cmd>{}</pre>",
            esc(&self.setup()),
            esc(&self.machine()),
            esc(&self.command)
        );
        if !self.goals.is_empty() {
            body.push_str("<h2>Targets</h2><table><tr><th>dialect</th><th class=l>what</th><th>measured</th><th>target</th><th></th></tr>");
            for g in &self.goals {
                let class = match g.met {
                    Some(true) => "ok",
                    Some(false) => "fail",
                    None => "none",
                };
                let _ = write!(
                    body,
                    "<tr class={class}><td>{}</td><td class=l>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(g.dialect.as_deref().unwrap_or("all")),
                    esc(&g.what),
                    g.value.map_or_else(|| "—".to_owned(), |v| format!("{v:.2}")),
                    esc(&g.target),
                    g.verdict()
                );
            }
            body.push_str("</table>");
        }
        if !self.memory_checks().is_empty() {
            // The dialect goes with the store: one column fewer, so the table fits the page.
            body.push_str("<h2>Memory through credential stuffing</h2><table class=wide><tr>");
            for h in MEMORY_HEADERS {
                let _ = write!(body, "<th>{}</th>", esc(h));
            }
            body.push_str("</tr>");
            for m in self.memory_checks() {
                let mut cells = memory_cells(m);
                cells[0] = format!("{} ({})", cells[0], m.dialect);
                body.push_str("<tr>");
                for c in cells {
                    let _ = write!(body, "<td>{}</td>", esc(&c));
                }
                body.push_str("</tr>");
            }
            body.push_str("</table>");
            for m in self.memory_checks() {
                if let Some(line) = redis_bound(m) {
                    let _ = write!(body, "<p class=sub>{}</p>", esc(&line));
                }
            }
        }
        body.push_str(&self.rps_chart());
        body.push_str(&self.cpu_chart());
        for d in &self.dialects {
            let _ = write!(body, "<h2>{}</h2><table class=wide><tr>", esc(&d.dialect));
            for h in HTML_HEADERS {
                let _ = write!(body, "<th>{}</th>", esc(h));
            }
            body.push_str("</tr>");
            for row in rows(d) {
                match row {
                    Row::Measured(cells) => {
                        body.push_str("<tr>");
                        for c in cells.iter() {
                            let _ = write!(body, "<td>{}</td>", esc(c));
                        }
                        body.push_str("</tr>");
                    }
                    Row::Skipped(what, why) => {
                        let _ = write!(
                            body,
                            "<tr class=none><td>{}</td><td colspan={}>{}</td></tr>",
                            esc(&what),
                            HEADERS.len() - 1,
                            esc(&why)
                        );
                    }
                }
            }
            body.push_str("</table>");
            if let Some(h) = &d.half_rate {
                let _ = write!(
                    body,
                    "<h3>{}: open loop at {:.0} req/s (half of {}'s maximum)</h3>",
                    esc(&d.dialect),
                    h.rate,
                    esc(&h.half_of)
                );
                if let Some(note) = half_rate_note(d) {
                    let _ = write!(body, "<p class=sub>{}</p>", esc(&note));
                }
                body.push_str("<table><tr><th>target</th><th>achieved req/s</th><th>p50</th><th>p99</th><th>p99.9</th><th>proxy CPU µs/req</th><th>p50 ÷ nginx</th></tr>");
                let nginx_p50 = h.nginx.as_ref().map(|n| n.p50_us as f64);
                let mut runs = vec![("(a) mock exchange directly", &h.direct)];
                runs.extend(h.nginx.as_ref().map(|n| ("(b) nginx proxy_pass", n)));
                runs.push(("(c) Keyguard, HS256", &h.keyguard));
                for (what, m) in runs {
                    let _ = write!(
                        body,
                        "<tr><td>{}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(what),
                        m.ok_rps,
                        fmt_us(m.p50_us),
                        fmt_us(m.p99_us),
                        fmt_us(m.p999_us),
                        fmt_cpu(m.cpu("proxy")),
                        fmt_ratio(nginx_p50.and_then(|n| ratio(m.p50_us as f64, n)))
                    );
                }
                body.push_str("</table>");
            }
            body.push_str(&latency_plot(d));
        }
        let _ = write!(
            body,
            "<h2>Full output</h2><pre>{}</pre>",
            esc(&self.table())
        );
        page("Keyguard bench", &body)
    }

    /// Writes `bench.json`, `bench.md` and `bench.html` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join("bench.json");
        std::fs::write(&json, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", json.display()))?;
        let md = dir.join("bench.md");
        std::fs::write(&md, self.markdown())
            .with_context(|| format!("writing {}", md.display()))?;
        let html = dir.join("bench.html");
        std::fs::write(&html, self.html())
            .with_context(|| format!("writing {}", html.display()))?;
        Ok((json, md, html))
    }

    /// Requests/s of every target, grouped by dialect, colored by target.
    fn rps_chart(&self) -> String {
        let (series, rows) = self.bars(|t| vec![(0, t.median.ok_rps)], true);
        plots::bar_chart(
            "Requests per second (2xx, median of the rounds)",
            "requests/s",
            &series,
            &rows,
            &|v| format!("{v:.0}"),
        )
    }

    /// CPU µs per request of each process, stacked, by dialect and target.
    fn cpu_chart(&self) -> String {
        let (_, rows) = self.bars(
            |t| {
                ["proxy", "redis", "generator", "exchange"]
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| t.median.cpu(p).map(|v| (i, v)))
                    .collect()
            },
            false,
        );
        plots::bar_chart(
            "CPU time per request (µs, median of the rounds)",
            "µs of CPU per request",
            &[
                ("proxy", plots::PALETTE[0]),
                ("redis-server", plots::PALETTE[2]),
                ("load generator", plots::PALETTE[7]),
                ("mock exchange", plots::PALETTE[5]),
            ],
            &rows,
            &|v| format!("{v:.1}"),
        )
    }

    /// One bar row per dialect and target that ran or was skipped for a reason worth
    /// showing. With `by_target`, each target is its own series (one color per target).
    fn bars<'a>(
        &'a self,
        pieces: impl Fn(&TargetResult) -> Vec<(usize, f64)>,
        by_target: bool,
    ) -> (Vec<(&'a str, plots::RGBColor)>, Vec<BarRow>) {
        let mut names: Vec<&'a str> = Vec::new();
        let mut rows = Vec::new();
        for d in &self.dialects {
            for t in &d.targets {
                if t.skipped
                    .as_deref()
                    .is_some_and(|s| s.starts_with("not selected"))
                {
                    continue;
                }
                // Only targets with bars get a legend entry.
                let series = match names.iter().position(|n| *n == t.description) {
                    Some(i) => i,
                    None if t.skipped.is_none() => {
                        names.push(&t.description);
                        names.len() - 1
                    }
                    None => 0,
                };
                let label = format!("{} · {}", d.dialect, t.description);
                let row = match &t.skipped {
                    Some(why) => BarRow {
                        label,
                        pieces: Vec::new(),
                        note: Some(why.clone()),
                    },
                    None => BarRow {
                        label,
                        pieces: pieces(t)
                            .into_iter()
                            .map(|(s, v)| (if by_target { series } else { s }, v))
                            .collect(),
                        note: None,
                    },
                };
                rows.push(row);
            }
        }
        let series = names.into_iter().map(|n| (n, target_color(n))).collect();
        (series, rows)
    }
}

/// Columns of the stuffing checks' table (after the dialect).
const MEMORY_HEADERS: [&str; 11] = [
    "store",
    "seconds",
    "requests",
    "new networks/s",
    "gateway VmRSS before",
    "VmRSS peak",
    "VmRSS growth",
    "redis used_memory before",
    "used_memory peak",
    "used_memory growth",
    "redis keys before / peak / after",
];

fn fmt_mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// One stuffing check's cells, as [`MEMORY_HEADERS`] names them.
fn memory_cells(m: &MemoryCheck) -> [String; 11] {
    let redis = |f: fn(&RedisMemory) -> String| m.redis.as_ref().map_or("—".to_owned(), f);
    [
        m.store.clone(),
        format!("{:.0}", m.duration_s),
        m.requests.to_string(),
        format!("{:.0}", m.networks_per_s()),
        format!("{} MiB", m.rss_before_kib / 1024),
        format!("{} MiB", m.rss_peak_kib / 1024),
        format!("{:.1} MiB", m.growth_mib),
        redis(|r| fmt_mib(r.used_memory_before)),
        redis(|r| fmt_mib(r.used_memory_peak)),
        redis(|r| format!("{:.1} MiB", r.growth_mib)),
        redis(|r| format!("{} / {} / {}", r.keys_before, r.keys_peak, r.keys_after)),
    ]
}

/// What bounds Redis's growth, in the run's own numbers: how many networks failed within
/// one window (a new network's failure record lives one window), against the keys Redis
/// actually added: records of their own are capped at `anomaly.max_entries` per window,
/// so past the cap the growth no longer follows the networks.
fn redis_bound(m: &MemoryCheck) -> Option<String> {
    let r = m.redis.as_ref()?;
    let live = m.live_networks()?;
    let added = r.keys_peak.saturating_sub(r.keys_before);
    Some(format!(
        "Redis ({}): {:.0} new networks/s × {:.0} s window ≈ {live:.0} networks failing within one window; Redis added at most {added} keys ({:.1} MiB, {}), as records of their own are capped at anomaly.max_entries per window and past the cap a flood shares 16 overflow records.",
        m.dialect,
        m.networks_per_s(),
        (r.window_ms as f64 / 1000.0).min(m.duration_s),
        r.growth_mib,
        r.bytes_per_key
            .map_or("no key added".to_owned(), |b| format!("{b:.0} bytes per key")),
    ))
}

/// Said next to the half-rate numbers when Keyguard cannot keep up with that rate, so
/// its latency there is time spent queueing.
fn half_rate_note(d: &DialectResult) -> Option<String> {
    let h = d.half_rate.as_ref()?;
    let max = d.measured("keyguard-hs256")?.ok_rps;
    (h.rate > max).then(|| {
        format!(
            "{:.0} req/s is above Keyguard HS256's closed-loop maximum ({max:.0} req/s): requests queue, so its latency at this rate is mostly waiting (achieved {:.0} req/s).",
            h.rate, h.keyguard.ok_rps
        )
    })
}

/// A fixed color per target, the same in every plot.
fn target_color(description: &str) -> plots::RGBColor {
    let i = match description.get(..3) {
        Some("(a)") => 7,
        Some("(b)") => 1,
        Some("(c)") => 0,
        Some("(d)") => 3,
        Some("(e)") => 2,
        Some("(f)") => 4,
        _ => 5,
    };
    plots::PALETTE[i]
}

fn latency_plot(d: &DialectResult) -> String {
    let curves: Vec<Curve<'_>> = d
        .targets
        .iter()
        .filter(|t| t.skipped.is_none())
        .map(|t| Curve {
            name: &t.description,
            color: target_color(&t.description),
            points: &t.latency_curve,
        })
        .collect();
    plots::percentile_plot(
        &format!(
            "{}: latency by percentile, all rounds (log scale)",
            d.dialect
        ),
        &curves,
    )
}

#[cfg(test)]
mod tests {
    use super::super::results::{goals, HalfRate};
    use super::*;

    fn m(rps: f64, p50: u64, p99: u64, proxy: f64) -> Measure {
        let mut m = Measure {
            rps,
            ok_rps: rps,
            p50_us: p50,
            p99_us: p99,
            p999_us: p99 * 2,
            ..Measure::default()
        };
        m.cpu_us_per_request.insert("generator".into(), 10.0);
        m.cpu_us_per_request.insert("exchange".into(), 8.0);
        if proxy > 0.0 {
            m.cpu_us_per_request.insert("proxy".into(), proxy);
        }
        m
    }

    fn target(name: &str, description: &str, median: Measure) -> TargetResult {
        TargetResult {
            name: name.into(),
            description: description.into(),
            latency_curve: vec![
                (0.0, median.p50_us / 2),
                (0.5, median.p50_us),
                (0.99, median.p99_us),
            ],
            median,
            ..TargetResult::default()
        }
    }

    pub(crate) fn sample() -> BenchReport {
        let dialect = |name: &str| DialectResult {
            dialect: name.into(),
            targets: vec![
                target(
                    "direct",
                    "(a) mock exchange directly",
                    m(1000.0, 100, 400, 0.0),
                ),
                target("nginx", "(b) nginx proxy_pass", m(500.0, 200, 800, 15.0)),
                target(
                    "keyguard-hs256",
                    "(c) Keyguard, HS256",
                    m(600.0, 150, 800, 20.0),
                ),
                target(
                    "keyguard-eddsa",
                    "(d) Keyguard, EdDSA",
                    m(300.0, 300, 1200, 40.0),
                ),
                TargetResult {
                    skipped: Some(
                        "skipped: redis-server is not installed (apt-get install redis-server)"
                            .into(),
                    ),
                    ..target("keyguard-redis", "(e) Keyguard, Redis", Measure::default())
                },
            ],
            half_rate: Some(HalfRate {
                rate: 250.0,
                half_of: "nginx".into(),
                direct: m(250.0, 100, 300, 0.0),
                nginx: Some(m(250.0, 200, 500, 15.0)),
                keyguard: m(250.0, 220, 600, 20.0),
                p50_ratio_to_nginx: Some(1.1),
                p50_added_over_direct_us: 120,
            }),
        };
        let dialects = vec![dialect("zaif"), dialect("binance")];
        BenchReport {
            command: "keyguard-loadtest bench --rounds 1".into(),
            cpus: 2,
            cpu_model: "Test CPU".into(),
            memory_gib: 24.0,
            concurrency: 64,
            duration_s: 5.0,
            rounds: 1,
            goals: goals(&dialects, None, None),
            dialects,
            ..BenchReport::default()
        }
    }

    fn stuffing(store: &str, redis: Option<RedisMemory>) -> MemoryCheck {
        MemoryCheck {
            dialect: "zaif".into(),
            store: store.into(),
            duration_s: 60.0,
            requests: 600_000,
            distinct_keys: 600_000,
            distinct_source_ips: 150_000,
            distinct_forwarded_ips: 300_000,
            rss_before_kib: 40 * 1024,
            rss_peak_kib: 52 * 1024,
            rss_after_kib: 50 * 1024,
            growth_mib: 12.0,
            redis,
            ..MemoryCheck::default()
        }
    }

    #[test]
    fn memory_checks_of_both_stores_are_reported() {
        let mut report = sample();
        report.memory = Some(stuffing("embedded", None));
        report.memory_redis = Some(stuffing(
            "redis",
            Some(RedisMemory {
                used_memory_before: 2 << 20,
                used_memory_peak: 62 << 20,
                used_memory_after: 61 << 20,
                keys_before: 1000,
                keys_peak: 451_000,
                keys_after: 440_000,
                growth_mib: 60.0,
                bytes_per_key: Some(139.8),
                window_ms: 60_000,
            }),
        ));
        report.goals = goals(
            &report.dialects,
            report.memory.as_ref(),
            report.memory_redis.as_ref(),
        );
        let t = report.table();
        assert!(t.contains("memory (zaif, embedded store)"), "{t}");
        assert!(
            t.contains("redis used_memory before 2.0 MiB, peak 62.0 MiB, after 61.0 MiB => growth 60.0 MiB (target < 64 MiB: met); keys before 1000, peak 451000, after 440000"),
            "{t}"
        );
        // 450 000 networks in 60 s, each living the 60 s window; the keys Redis added.
        assert!(
            t.contains("7500 new networks/s × 60 s window ≈ 450000 networks failing within one window; Redis added at most 450000 keys (60.0 MiB, 140 bytes per key)"),
            "{t}"
        );
        assert!(
            t.contains("Redis used_memory growth through 60 s of stuffing (MiB)"),
            "{t}"
        );
        let md = report.markdown();
        assert!(
            md.contains("| zaif | embedded | 60 | 600000 | 7500 | 40 MiB | 52 MiB | 12.0 MiB | — | — | — | — |"),
            "{md}"
        );
        assert!(
            md.contains("| zaif | redis | 60 | 600000 | 7500 | 40 MiB | 52 MiB | 12.0 MiB | 2.0 MiB | 62.0 MiB | 60.0 MiB | 1000 / 451000 / 440000 |"),
            "{md}"
        );
        let html = report.html();
        assert!(html.contains("<h2>Memory through credential stuffing</h2>"));
        assert!(html.contains("<td>redis (zaif)</td>"), "{html}");
        assert!(html.contains("<td>1000 / 451000 / 440000</td>"), "{html}");
    }

    #[test]
    fn rows_show_ratios_and_skips() {
        let report = sample();
        let rows = rows(&report.dialects[0]);
        let Row::Measured(hs) = &rows[2] else {
            panic!("HS256 measured")
        };
        assert_eq!(hs[1], "600");
        assert_eq!(hs[5], "20.0");
        assert_eq!(hs[8], "0.60");
        assert_eq!(hs[9], "1.20");
        assert_eq!(hs[13], "1.00");
        assert!(matches!(&rows[4], Row::Skipped(_, why) if why.contains("redis-server")));
        let t = report.table();
        assert!(t.contains("HS256 req/s ÷ nginx req/s"), "{t}");
        assert!(t.contains("(target ≥ 0.80: met)"), "{t}");
        assert!(t.contains("(target ≥ 0.50: met)"), "{t}");
        let md = report.markdown();
        assert!(md.contains("| zaif | (c) Keyguard, HS256 | 600 |"), "{md}");
        assert!(
            md.contains("```sh\nkeyguard-loadtest bench --rounds 1\n```"),
            "{md}"
        );
        let html = report.html();
        assert_eq!(html.matches("<svg").count(), 2 + report.dialects.len());
    }
}
