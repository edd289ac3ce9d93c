//! The HTML reports, opened in real headless Chromium: `run`'s report.html and `bench`'s
//! bench.html, generated from small synthetic data, must render every plot with its
//! marks. The check reads the DOM as Chromium built it (`--dump-dom`), which is where a
//! malformed SVG shows: an element that swallowed its neighbours (an unquoted attribute
//! value ending in `/`) nests them inside itself, and nested shapes are never drawn.
//! Screenshots of both pages are saved under `target/report-screenshots/`.
//!
//! Skips (with a message) only when no Chromium is installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use keyguard_loadtest::bench::results::{goals, HalfRate, RedisMemory};
use keyguard_loadtest::bench::{BenchReport, DialectResult, Measure, MemoryCheck, TargetResult};
use keyguard_loadtest::harness::run_with_timeout;
use keyguard_loadtest::report::Report;
use keyguard_loadtest::runner::{Counts, RunData, Tag};
use keyguard_loadtest::stats::Latency;
use serde::Deserialize;

/// Appended to a copy of each report: what Chromium rendered, per `<svg>`, as JSON in a
/// `<pre>` that `--dump-dom` prints. Runs after the page is parsed; reading a bounding
/// box forces layout, so the numbers are what is on screen.
const CHECK_SCRIPT: &str = r#"<script>
(() => {
  const shapes = 'rect,line,polyline,path,circle,polygon,text';
  const svgs = [...document.querySelectorAll('svg')].map(svg => {
    const marks = {};
    let nested = 0;
    for (const el of svg.querySelectorAll(shapes)) {
      // A shape inside another shape is never drawn.
      if (el.parentElement.closest(shapes)) { nested++; continue; }
      const r = el.getBoundingClientRect();
      if (r.width <= 0 && r.height <= 0) continue;
      const fill = el.getAttribute('fill');
      const color = (fill && fill !== 'none' ? fill : el.getAttribute('stroke')) || '';
      const key = el.tagName.toLowerCase() + ' ' + color.toLowerCase();
      marks[key] = (marks[key] || 0) + 1;
    }
    const texts = [...svg.querySelectorAll('text')].map(t => t.textContent.trim());
    const b = svg.getBoundingClientRect();
    return { width: b.width, height: b.height, marks, nested, texts };
  });
  const pre = document.createElement('pre');
  pre.id = 'render-check';
  pre.textContent = JSON.stringify({ svgs, height: document.documentElement.scrollHeight });
  document.body.appendChild(pre);
})();
</script>"#;

/// Screenshot width (px): the reports' 1000 px column with its margins.
const SHOT_WIDTH: u32 = 1100;

#[derive(Debug, Deserialize)]
struct Rendered {
    svgs: Vec<Svg>,
    height: u32,
}

#[derive(Debug, Deserialize)]
struct Svg {
    width: f64,
    height: f64,
    marks: BTreeMap<String, u32>,
    nested: u32,
    texts: Vec<String>,
}

impl Svg {
    fn count(&self, tag: &str, color: &str) -> u32 {
        self.marks
            .get(&format!("{tag} {color}"))
            .copied()
            .unwrap_or(0)
    }
}

impl Rendered {
    /// The plot whose title (a `<text>`) is `title`.
    fn plot(&self, title: &str) -> &Svg {
        self.svgs
            .iter()
            .find(|s| s.texts.iter().any(|t| t == title))
            .unwrap_or_else(|| panic!("no plot titled {title:?} in {:#?}", self.svgs))
    }
}

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn chromium_command(bin: &Path, profile: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// Opens `html` (a file) in Chromium with the check script; returns what rendered.
fn render(bin: &Path, html: &Path) -> Rendered {
    let page = std::fs::read_to_string(html).expect("report written");
    let checked = html.with_extension("check.html");
    let with_script = page.replace("</body>", &format!("{CHECK_SCRIPT}</body>"));
    assert_ne!(with_script, page, "the report has a </body>");
    std::fs::write(&checked, with_script).expect("write checked copy");
    let profile = tempfile::tempdir().expect("profile dir");
    let out = run_with_timeout(
        chromium_command(bin, profile.path())
            .arg("--dump-dom")
            // The screenshot's width, so the page height measured here is the one shot.
            .arg(format!("--window-size={SHOT_WIDTH},900"))
            .arg(format!("file://{}", checked.display())),
        Duration::from_secs(120),
    )
    .expect("run chromium --dump-dom");
    assert!(
        out.status.success(),
        "chromium --dump-dom failed ({}): {}",
        out.status,
        out.stderr
    );
    let start = out
        .stdout
        .find("<pre id=\"render-check\">")
        .unwrap_or_else(|| panic!("no render check in the DOM:\n{}", out.stdout))
        + "<pre id=\"render-check\">".len();
    let end = start + out.stdout[start..].find("</pre>").expect("</pre>");
    let json = out.stdout[start..end]
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    let rendered: Rendered = serde_json::from_str(&json).expect("render check JSON");
    let _ = std::fs::remove_file(&checked);
    for svg in &rendered.svgs {
        assert_eq!(svg.nested, 0, "shapes nested inside shapes: {svg:#?}");
        assert!(svg.width > 100.0 && svg.height > 100.0, "{svg:#?}");
    }
    rendered
}

/// A screenshot of the whole page (the window as tall as the page).
fn screenshot(bin: &Path, html: &Path, png: &Path, height: u32) {
    let profile = tempfile::tempdir().expect("profile dir");
    let _ = std::fs::remove_file(png);
    let out = run_with_timeout(
        chromium_command(bin, profile.path())
            .arg(format!("--screenshot={}", png.display()))
            .arg(format!(
                "--window-size={SHOT_WIDTH},{}",
                height.clamp(600, 12_000)
            ))
            .arg(format!("file://{}", html.display())),
        Duration::from_secs(120),
    )
    .expect("run chromium --screenshot");
    assert!(
        out.status.success(),
        "chromium --screenshot failed ({}): {}",
        out.status,
        out.stderr
    );
    let bytes = std::fs::read(png).expect("screenshot written");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "a real PNG"
    );
}

fn screenshot_dir() -> PathBuf {
    // Test binaries live in target/<profile>/deps.
    let exe = std::env::current_exe().expect("test exe");
    let target = exe
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "target"))
        .map(Path::to_owned)
        .unwrap_or_else(std::env::temp_dir);
    let dir = target.join("report-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// 20 seconds of a mixed run: legit and attack latencies, denials and a few errors.
fn run_report() -> Report {
    let mut data = RunData::default();
    let mut rng = fastrand::Rng::with_seed(8);
    let mut legit = Latency::default();
    let mut attack = Latency::default();
    for s in 0..20u64 {
        let second = data.timeline.at(s as usize);
        for i in 0..(200 + 10 * s) {
            let us = 300 + rng.u64(..2_000) + if i % 97 == 0 { 30_000 } else { 0 };
            second.latency.record(us);
            second.requests += 1;
            if i % 3 == 0 {
                second.denied += 1;
                attack.record(us / 2);
            } else {
                second.ok += 1;
                legit.record(us);
            }
        }
        if s % 5 == 4 {
            second.errors += 4;
            second.requests += 4;
        }
    }
    data.latency.add(&legit);
    data.latency.add(&attack);
    data.latency_by_tag.insert(Tag::Legit, legit);
    data.latency_by_tag.insert(Tag::Attack, attack);
    let mut counts = Counts {
        requests: 6_000,
        ..Counts::default()
    };
    counts.statuses.insert("200".into(), 4_000);
    counts.statuses.insert("403".into(), 2_000);
    for (code, n) in [
        ("ip_blocked", 1_300),
        ("new_ip_probation", 400),
        ("key_dormant", 200),
        ("ip_not_allowed", 100),
    ] {
        counts.deny_codes.insert(code.into(), n);
    }
    data.by_role.insert("zaif-attacker".into(), counts.clone());
    let mut traders = Counts {
        requests: 4_000,
        ..Counts::default()
    };
    traders.statuses.insert("200".into(), 4_000);
    data.by_role.insert("trader".into(), traders.clone());
    data.by_tag.insert(Tag::Attack, counts);
    data.by_tag.insert(Tag::Legit, traders);
    data.elapsed = Duration::from_secs(20);
    Report::from_run(
        "mixed",
        "zaif",
        "http://127.0.0.1:8080",
        "open loop, 300 req/s",
        20.0,
        &data,
    )
}

fn measure(rps: f64, p50: u64, p99: u64, proxy: Option<f64>) -> Measure {
    let mut m = Measure {
        rps,
        ok_rps: rps,
        p50_us: p50,
        p99_us: p99,
        p999_us: p99 * 2,
        requests: (rps * 5.0) as u64,
        ..Measure::default()
    };
    m.cpu_us_per_request.insert("generator".into(), 14.0);
    m.cpu_us_per_request.insert("exchange".into(), 9.0);
    if let Some(p) = proxy {
        m.cpu_us_per_request.insert("proxy".into(), p);
    }
    m
}

fn target(name: &str, description: &str, alg: Option<&str>, m: Measure) -> TargetResult {
    let mut l = Latency::default();
    for i in 0..5_000u64 {
        l.record(m.p50_us / 2 + (i * i) % (m.p99_us.max(1) * 2));
    }
    TargetResult {
        name: name.into(),
        description: description.into(),
        alg: alg.map(str::to_owned),
        skipped: None,
        rounds: vec![m.clone()],
        median: m,
        latency_curve: l.curve(),
    }
}

const DIALECTS: [&str; 3] = ["zaif", "binance", "kraken"];

fn bench_report() -> BenchReport {
    let dialects: Vec<DialectResult> = DIALECTS
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let f = 1.0 + i as f64 * 0.1;
            DialectResult {
                dialect: (*d).into(),
                targets: vec![
                    target(
                        "direct",
                        "(a) mock exchange directly",
                        None,
                        measure(76_000.0 / f, 800, 2_600, None),
                    ),
                    target(
                        "nginx",
                        "(b) nginx proxy_pass",
                        None,
                        measure(41_000.0 / f, 1_500, 3_400, Some(15.3)),
                    ),
                    target(
                        "keyguard-hs256",
                        "(c) Keyguard, HS256",
                        Some("HS256"),
                        measure(34_000.0 / f, 1_800, 4_000, Some(22.0)),
                    ),
                    target(
                        "keyguard-eddsa",
                        "(d) Keyguard, EdDSA",
                        Some("EdDSA"),
                        measure(21_000.0 / f, 2_900, 5_900, Some(45.0)),
                    ),
                    TargetResult {
                        name: "keyguard-redis".into(),
                        description: "(e) Keyguard, Redis".into(),
                        skipped: Some(
                            "skipped: redis-server is not installed (apt-get install redis-server)"
                                .into(),
                        ),
                        ..TargetResult::default()
                    },
                ],
                half_rate: Some(HalfRate {
                    rate: 20_500.0,
                    half_of: "nginx".into(),
                    direct: measure(20_500.0, 130, 900, None),
                    nginx: Some(measure(20_500.0, 340, 1_400, Some(15.0))),
                    keyguard: measure(20_500.0, 400, 1_900, Some(21.0)),
                    p50_ratio_to_nginx: Some(400.0 / 340.0),
                    p50_added_over_direct_us: 270,
                }),
            }
        })
        .collect();
    let stuffing = |store: &str, growth_mib: f64, redis: Option<RedisMemory>| MemoryCheck {
        dialect: "zaif".into(),
        store: store.into(),
        duration_s: 60.0,
        requests: 610_000,
        distinct_keys: 610_000,
        distinct_source_ips: 152_000,
        distinct_forwarded_ips: 305_000,
        rss_start_kib: 30 * 1024,
        rss_before_kib: 41 * 1024,
        rss_peak_kib: 41 * 1024 + (growth_mib * 1024.0) as u64,
        rss_after_kib: 45 * 1024,
        growth_mib,
        redis,
        method: "synthetic".into(),
        ..MemoryCheck::default()
    };
    let memory = stuffing("embedded", 9.5, None);
    let memory_redis = stuffing(
        "redis",
        14.0,
        Some(RedisMemory {
            used_memory_before: 3 << 20,
            used_memory_peak: 61 << 20,
            used_memory_after: 60 << 20,
            keys_before: 21_000,
            keys_peak: 458_000,
            keys_after: 447_000,
            growth_mib: 58.0,
            bytes_per_key: Some(139.2),
            window_ms: 60_000,
        }),
    );
    BenchReport {
        command: "keyguard-loadtest bench --rounds 3 --duration 5s --stuffing-check".into(),
        cpus: 2,
        cpu_model: "Intel(R) Xeon(R) Processor".into(),
        memory_gib: 24.0,
        nginx_version: Some("nginx/1.22.1".into()),
        concurrency: 64,
        duration_s: 5.0,
        rounds: 3,
        workers: None,
        goals: goals(&dialects, Some(&memory), Some(&memory_redis)),
        dialects,
        memory: Some(memory),
        memory_redis: Some(memory_redis),
        notes: vec!["synthetic data for the render test".into()],
    }
}

#[test]
fn reports_render_in_chromium() {
    let Some(bin) = chromium() else {
        eprintln!("skipping: no Chromium at /usr/bin/chromium (`apt-get install chromium`)");
        return;
    };
    let dir = screenshot_dir();

    // run: report.html
    let report = run_report();
    let run_html = dir.join("run.html");
    std::fs::write(&run_html, report.html()).expect("write run.html");
    let run = render(&bin, &run_html);
    assert_eq!(run.svgs.len(), 4, "{:#?}", run.svgs);

    let pct = run.plot("Latency by percentile (log scale)");
    for (curve, color) in [
        ("all", "#1f77b4"),
        ("legit", "#2ca02c"),
        ("attack", "#d62728"),
    ] {
        // The curve and its legend swatch.
        assert!(pct.count("polyline", color) >= 2, "{curve} curve: {pct:#?}");
        assert!(
            pct.texts.iter().any(|t| t == curve),
            "{curve} in the legend"
        );
    }
    for label in ["90%", "99%", "1ms"] {
        assert!(
            pct.texts.iter().any(|t| t == label),
            "axis label {label}: {pct:#?}"
        );
    }

    let seconds = report.timeline.len() as u32;
    let with_errors = report.timeline.iter().filter(|p| p.errors > 0).count() as u32;
    let rps = run.plot("Requests per second");
    // One bar per second and layer, plus the layer's legend swatch.
    assert_eq!(rps.count("rect", "#2ca02c"), seconds + 1, "{rps:#?}");
    assert_eq!(rps.count("rect", "#ff9800"), seconds + 1, "{rps:#?}");
    assert_eq!(rps.count("rect", "#d62728"), with_errors + 1, "{rps:#?}");

    let lat = run.plot("Latency per second");
    assert!(lat.count("polyline", "#1f77b4") >= 2, "{lat:#?}");
    assert!(lat.count("polyline", "#d62728") >= 2, "{lat:#?}");

    let deny = run.plot("Deny codes (all requests)");
    assert_eq!(
        deny.count("rect", "#ff9800"),
        report.totals.deny_codes.len() as u32,
        "{deny:#?}"
    );
    for code in report.totals.deny_codes.keys() {
        assert!(deny.texts.iter().any(|t| t == code), "{code}: {deny:#?}");
    }
    screenshot(&bin, &run_html, &dir.join("run.png"), run.height);

    // bench: bench.html
    let bench = bench_report();
    let bench_html = dir.join("bench.html");
    std::fs::write(&bench_html, bench.html()).expect("write bench.html");
    let rendered = render(&bin, &bench_html);
    assert_eq!(
        rendered.svgs.len(),
        2 + DIALECTS.len(),
        "{:#?}",
        rendered.svgs
    );

    let rps = rendered.plot("Requests per second (2xx, median of the rounds)");
    // One bar per dialect and measured target, plus each target's legend swatch.
    for color in ["#7f7f7f", "#2ca02c", "#1f77b4", "#9467bd"] {
        assert_eq!(
            rps.count("rect", color),
            DIALECTS.len() as u32 + 1,
            "{color}: {rps:#?}"
        );
    }
    for d in DIALECTS {
        let label = format!("{d} · (c) Keyguard, HS256");
        assert!(rps.texts.contains(&label), "{label}: {rps:#?}");
    }
    assert!(
        rps.texts
            .iter()
            .any(|t| t.contains("redis-server is not installed")),
        "the skipped target says why: {rps:#?}"
    );

    let cpu = rendered.plot("CPU time per request (µs, median of the rounds)");
    // Generator and exchange under every measured row, proxy under all but direct.
    let measured_rows = DIALECTS.len() as u32 * 4;
    assert_eq!(cpu.count("rect", "#7f7f7f"), measured_rows + 1, "{cpu:#?}");
    assert_eq!(cpu.count("rect", "#8c564b"), measured_rows + 1, "{cpu:#?}");
    assert_eq!(
        cpu.count("rect", "#1f77b4"),
        DIALECTS.len() as u32 * 3 + 1,
        "{cpu:#?}"
    );

    for d in DIALECTS {
        let p = rendered.plot(&format!(
            "{d}: latency by percentile, all rounds (log scale)"
        ));
        for color in ["#7f7f7f", "#2ca02c", "#1f77b4", "#9467bd"] {
            assert!(p.count("polyline", color) >= 2, "{d} {color}: {p:#?}");
        }
    }
    screenshot(&bin, &bench_html, &dir.join("bench.png"), rendered.height);
    eprintln!("screenshots: {}", dir.display());
}
