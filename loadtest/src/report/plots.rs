//! The reports' plots, drawn by `plotters` into inline SVG.
//!
//! Only plotters' SVG backend is built (no fonts, no bitmap codecs): it writes `<text>`
//! elements and the browser lays them out, so label widths here are plotters' own
//! estimate (about 0.55 em per character) and every label area is sized with room to spare.
//! A plot that cannot be drawn becomes a visible error paragraph instead of a broken page.

use std::error::Error;

use plotters::coord::types::RangedCoordi32;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{esc, fmt_us, TimelinePoint};

pub use plotters::style::RGBColor;

/// Default plot size (the page is 1000 px wide).
const W: u32 = 900;
const H: u32 = 320;
const FONT: &str = "sans-serif";

/// Series colors: blue, green, red, purple, orange, brown, pink, gray.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x98, 0x00),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
];

/// Green for answered requests.
pub const OK: RGBColor = PALETTE[1];
/// Orange for gateway denials.
pub const DENIED: RGBColor = PALETTE[4];
/// Red for requests without an answer.
pub const ERROR: RGBColor = PALETTE[2];

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult = Result<(), Box<dyn Error>>;

/// Draws into a `w`×`h` SVG string; a failure becomes a visible error paragraph.
fn svg(w: u32, h: u32, draw: impl FnOnce(&Area<'_>) -> DrawResult) -> String {
    let mut buf = String::new();
    let result = {
        let root = SVGBackend::with_string(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(Box::<dyn Error>::from)
            .and_then(|()| draw(&root))
            .and_then(|()| root.present().map_err(Box::<dyn Error>::from))
    };
    match result {
        Ok(()) => format!("<figure class=\"plot\">{buf}</figure>"),
        Err(e) => format!(
            "<p class=plot-error>This plot could not be drawn: {}</p>",
            esc(&e.to_string())
        ),
    }
}

/// How a legend entry shows its series.
#[derive(Clone, Copy)]
enum Swatch {
    Line,
    Box,
}

/// Legend entries laid out in rows: (x, entry index), wrapped before the right edge.
fn legend_rows(entries: &[(&str, RGBColor, Swatch)]) -> Vec<Vec<(i32, usize)>> {
    // plotters cannot measure text the browser will lay out: ~7 px per character at
    // this font size is a generous estimate for sans-serif.
    let width = |name: &str| 17 + 7 * name.chars().count() as i32 + 24;
    let left = 80;
    let mut rows: Vec<Vec<(i32, usize)>> = Vec::new();
    let mut x = i32::MAX;
    for (i, e) in entries.iter().enumerate() {
        if x.saturating_add(width(e.0)) > W as i32 - 20 {
            rows.push(Vec::new());
            x = left;
        }
        if let Some(row) = rows.last_mut() {
            row.push((x, i));
        }
        x += width(e.0);
    }
    rows
}

/// Pixels the title and legend take at the top.
fn header_height(entries: &[(&str, RGBColor, Swatch)]) -> u32 {
    36 + 22 * legend_rows(entries).len() as u32
}

/// Draws the title and a legend (wrapped onto as many rows as it needs) across the top
/// of `root`, and returns the area below for the plot: a legend there never covers data.
fn header<'a>(
    root: &Area<'a>,
    title: &str,
    entries: &[(&str, RGBColor, Swatch)],
) -> Result<Area<'a>, Box<dyn Error>> {
    let rows = legend_rows(entries);
    let height = header_height(entries);
    let (head, body) = root.split_vertically(height);
    head.draw(&Text::new(
        title.to_owned(),
        (root.dim_in_pixel().0 as i32 / 2, 10),
        caption_style().pos(Pos::new(HPos::Center, VPos::Top)),
    ))?;
    for (r, row) in rows.iter().enumerate() {
        let y = 42 + 22 * r as i32;
        for (x, i) in row {
            let (name, color, swatch) = &entries[*i];
            match swatch {
                Swatch::Line => head.draw(&PathElement::new(
                    vec![(*x, y), (x + 14, y)],
                    color.stroke_width(2),
                ))?,
                Swatch::Box => head.draw(&Rectangle::new(
                    [(*x, y - 6), (x + 12, y + 6)],
                    color.filled(),
                ))?,
            }
            head.draw(&Text::new(
                (*name).to_owned(),
                (x + 19, y),
                label_style().pos(Pos::new(HPos::Left, VPos::Center)),
            ))?;
        }
    }
    Ok(body)
}

fn caption_style() -> TextStyle<'static> {
    (FONT, 17).into_font().style(FontStyle::Bold).into()
}

fn label_style() -> TextStyle<'static> {
    (FONT, 14).into()
}

/// An axis label in µs without trailing zeros: `500µs`, `1ms`, `2.5ms`, `10ms`.
pub fn axis_us(us: f64) -> String {
    if us <= 0.0 {
        return "0".to_owned();
    }
    let text = fmt_us(us.max(0.0).round() as u64);
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number = if number.contains('.') {
        number.trim_end_matches('0').trim_end_matches('.')
    } else {
        number
    };
    format!("{number}{unit}")
}

/// `20.0` → `20`, `2.50` → `2.5`; other text unchanged.
fn trim_zeros(text: &str) -> String {
    if text.contains('.') && text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text.to_owned()
    }
}

/// The x position of quantile `q` on a "nines" axis: 0 → 0, 0.9 → 1, 0.99 → 2, ...
pub fn nines(q: f64) -> f64 {
    -(1.0 - q).max(1e-7).log10()
}

/// The percentile at `x` on the nines axis: 0 → `0%`, 1 → `90%`, 2 → `99%`, 2.5 → `99.68%`.
pub fn nines_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    if p <= 0.0 {
        return "0%".to_owned();
    }
    // As many decimals as the nines need, without trailing zeros.
    let decimals = (x.ceil() as usize).saturating_sub(2).min(6);
    let text = format!("{p:.decimals$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    };
    format!("{text}%")
}

/// One line of a percentile plot.
pub struct Curve<'a> {
    /// Legend text.
    pub name: &'a str,
    /// Line color.
    pub color: RGBColor,
    /// (quantile, µs) points, quantiles ascending.
    pub points: &'a [(f64, u64)],
}

/// Latency by percentile: x on a nines scale, y logarithmic. Empty curves are left out;
/// with none at all the plot says so.
pub fn percentile_plot(title: &str, curves: &[Curve<'_>]) -> String {
    let curves: Vec<&Curve<'_>> = curves.iter().filter(|c| !c.points.is_empty()).collect();
    if curves.is_empty() {
        return format!(
            "<p class=plot-empty>{}: no latencies recorded.</p>",
            esc(title)
        );
    }
    let max_x = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| nines(p.0)))
        .fold(1.0_f64, f64::max)
        .ceil();
    let (lo, hi) = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1.max(1) as f64))
        .fold((f64::MAX, 1.0_f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    // Whole decades, so the axis labels are 10µs, 100µs, 1ms, ...
    let ylo = 10f64.powf(lo.log10().floor());
    let yhi = 10f64.powf(hi.log10().ceil()).max(ylo * 10.0);
    let entries: Vec<(&str, RGBColor, Swatch)> = curves
        .iter()
        .map(|c| (c.name, c.color, Swatch::Line))
        .collect();
    svg(W, H, |root| {
        let body = header(root, title, &entries)?;
        let mut chart = ChartBuilder::on(&body)
            .margin(12)
            .margin_right(36)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .build_cartesian_2d(0.0..max_x, (ylo..yhi).log_scale())?;
        chart
            .configure_mesh()
            .x_labels(max_x as usize + 1)
            .x_label_formatter(&|x| nines_label(*x))
            .y_label_formatter(&|us| axis_us(*us))
            .x_desc("percentile")
            .y_desc("latency")
            .label_style(label_style())
            .light_line_style(RGBColor(0xee, 0xee, 0xee))
            .draw()?;
        for c in &curves {
            chart.draw_series(LineSeries::new(
                c.points
                    .iter()
                    .map(|(q, us)| (nines(*q), (*us).max(1) as f64)),
                c.color.stroke_width(2),
            ))?;
        }
        Ok(())
    })
}

/// The bottom and top of one layer of a second's bar.
type Span = fn(&TimelinePoint) -> (u64, u64);
/// One value of a second.
type Value = fn(&TimelinePoint) -> u64;

/// Requests completed per second, stacked: answered (green), denied by the gateway
/// (orange), no answer (red).
pub fn requests_per_second(points: &[TimelinePoint]) -> String {
    let title = "Requests per second";
    if points.is_empty() {
        return format!("<p class=plot-empty>{title}: no requests.</p>");
    }
    let n = points.len() as f64;
    let top = points.iter().map(|p| p.requests).max().unwrap_or(0).max(1) as f64 * 1.15;
    let entries = [
        ("answered", OK, Swatch::Box),
        ("denied by the gateway", DENIED, Swatch::Box),
        ("no answer", ERROR, Swatch::Box),
    ];
    svg(W, H, |root| {
        let body = header(root, title, &entries)?;
        let mut chart = ChartBuilder::on(&body)
            .margin(12)
            .margin_right(36)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .build_cartesian_2d(0.0..n, 0.0..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(points.len().clamp(2, 11))
            .x_label_formatter(&|t| format!("{t:.0}s"))
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("seconds since the start")
            .y_desc("requests")
            .label_style(label_style())
            .light_line_style(RGBColor(0xee, 0xee, 0xee))
            .draw()?;
        // Stacked bottom to top: answered, denied, no answer.
        let layers: [(RGBColor, Span); 3] = [
            (OK, |p| {
                let other = p.requests.saturating_sub(p.ok + p.denied + p.errors);
                (0, p.ok + other)
            }),
            (DENIED, |p| {
                let below = p.requests.saturating_sub(p.denied + p.errors);
                (below, below + p.denied)
            }),
            (ERROR, |p| {
                let below = p.requests.saturating_sub(p.errors);
                (below, p.requests)
            }),
        ];
        for (color, span) in layers {
            chart.draw_series(points.iter().enumerate().filter_map(|(i, p)| {
                let (from, to) = span(p);
                (to > from).then(|| {
                    let x = i as f64;
                    Rectangle::new(
                        [(x + 0.1, from as f64), (x + 0.9, to as f64)],
                        color.filled(),
                    )
                })
            }))?;
        }
        Ok(())
    })
}

/// Median and 99th percentile latency of each second.
pub fn latency_per_second(points: &[TimelinePoint]) -> String {
    let title = "Latency per second";
    if points.is_empty() {
        return format!("<p class=plot-empty>{title}: no requests.</p>");
    }
    let n = points.len() as f64;
    let top = points.iter().map(|p| p.p99_us).max().unwrap_or(0).max(1) as f64 * 1.15;
    let series: [(&str, RGBColor, Value); 2] = [
        ("p50", PALETTE[0], |p| p.p50_us),
        ("p99", PALETTE[2], |p| p.p99_us),
    ];
    let entries: Vec<(&str, RGBColor, Swatch)> = series
        .iter()
        .map(|(n, c, _)| (*n, *c, Swatch::Line))
        .collect();
    svg(W, H, |root| {
        let body = header(root, title, &entries)?;
        let mut chart = ChartBuilder::on(&body)
            .margin(12)
            .margin_right(36)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .build_cartesian_2d(0.0..n, 0.0..top)?;
        chart
            .configure_mesh()
            .x_labels(points.len().clamp(2, 11))
            .x_label_formatter(&|t| format!("{t:.0}s"))
            .y_label_formatter(&|us| axis_us(*us))
            .x_desc("seconds since the start")
            .y_desc("latency")
            .label_style(label_style())
            .light_line_style(RGBColor(0xee, 0xee, 0xee))
            .draw()?;
        for (_, color, value) in series {
            chart.draw_series(LineSeries::new(
                points
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (i as f64 + 0.5, value(p) as f64)),
                color.stroke_width(2),
            ))?;
        }
        Ok(())
    })
}

/// One row of a horizontal bar chart.
pub struct BarRow {
    /// Label left of the bar.
    pub label: String,
    /// Stacked pieces, left to right: (series index, value).
    pub pieces: Vec<(usize, f64)>,
    /// Shown instead of a bar when there are no pieces (e.g. why a target was skipped).
    pub note: Option<String>,
}

/// Horizontal bars, one row each, top to bottom in the given order; pieces of a row are
/// stacked and colored by series (a legend names them when there is more than one
/// series). The row's total is written after its bar with `fmt`.
pub fn bar_chart(
    title: &str,
    x_desc: &str,
    series: &[(&str, RGBColor)],
    rows: &[BarRow],
    fmt: &dyn Fn(f64) -> String,
) -> String {
    if rows.is_empty() {
        return format!("<p class=plot-empty>{}: nothing to show.</p>", esc(title));
    }
    let total = |r: &BarRow| r.pieces.iter().map(|p| p.1).sum::<f64>();
    let max = rows.iter().map(total).fold(0.0_f64, f64::max);
    // Room right of the longest bar for its value.
    let top = if max > 0.0 { max * 1.18 } else { 1.0 };
    // plotters maps a one-value integer range oddly: always give it at least two segments.
    let segments = rows.len().max(2);
    let row_of = |i: usize| (segments - 1 - i) as i32;
    let entries: Vec<(&str, RGBColor, Swatch)> = if series.len() > 1 {
        series.iter().map(|(n, c)| (*n, *c, Swatch::Box)).collect()
    } else {
        Vec::new()
    };
    let longest = rows
        .iter()
        .map(|r| r.label.chars().count())
        .max()
        .unwrap_or(0);
    let label_w = (longest as u32 * 7 + 24).clamp(80, 380);
    let h = 74 + header_height(&entries) + 30 * segments as u32;
    svg(W, h, |root| {
        let body = header(root, title, &entries)?;
        let mut chart = ChartBuilder::on(&body)
            .margin(12)
            .margin_right(36)
            .x_label_area_size(45)
            .y_label_area_size(label_w)
            .build_cartesian_2d(
                0.0..top,
                RangedCoordi32::from(0..segments as i32 - 1).into_segmented(),
            )?;
        let label_of = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(y) => {
                let i = segments as i64 - 1 - i64::from(*y);
                usize::try_from(i)
                    .ok()
                    .and_then(|i| rows.get(i))
                    .map(|r| r.label.clone())
                    .unwrap_or_default()
            }
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(segments)
            .y_label_formatter(&label_of)
            .x_labels(6)
            .x_label_formatter(&|v| trim_zeros(&fmt(*v)))
            .x_desc(x_desc)
            .label_style(label_style())
            .light_line_style(RGBColor(0xee, 0xee, 0xee))
            .draw()?;
        for (s, (_, color)) in series.iter().enumerate() {
            let color = *color;
            let mut bars = Vec::new();
            for (i, row) in rows.iter().enumerate() {
                let mut from = 0.0;
                for (piece_series, v) in &row.pieces {
                    if *piece_series == s && *v > 0.0 {
                        let y = row_of(i);
                        let mut bar = Rectangle::new(
                            [
                                (from, SegmentValue::Exact(y)),
                                (from + v, SegmentValue::Exact(y + 1)),
                            ],
                            color.filled(),
                        );
                        bar.set_margin(5, 5, 0, 0);
                        bars.push(bar);
                    }
                    from += v;
                }
            }
            chart.draw_series(bars)?;
        }
        let texts = rows.iter().enumerate().filter_map(|(i, r)| {
            let y = SegmentValue::CenterOf(row_of(i));
            let text = if r.pieces.is_empty() {
                r.note.clone()?
            } else {
                fmt(total(r))
            };
            let style = label_style().pos(Pos::new(HPos::Left, VPos::Center));
            Some(Text::new(format!(" {text}"), (total(r), y), style))
        });
        chart.draw_series(texts)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis() {
        assert!((nines(0.9) - 1.0).abs() < 1e-9);
        assert!((nines(0.999) - 3.0).abs() < 1e-9);
        assert_eq!(nines(0.0), 0.0);
        assert_eq!(nines_label(0.0), "0%");
        assert_eq!(nines_label(1.0), "90%");
        assert_eq!(nines_label(2.0), "99%");
        assert_eq!(nines_label(3.0), "99.9%");
        assert_eq!(nines_label(4.0), "99.99%");
        assert_eq!(axis_us(500.0), "500µs");
        assert_eq!(axis_us(1_000.0), "1ms");
        assert_eq!(axis_us(2_500.0), "2.5ms");
        assert_eq!(axis_us(10_000.0), "10ms");
        assert_eq!(axis_us(1_500_000.0), "1.5s");
    }

    /// The bug this module replaced: attribute values written without quotes, so a value
    /// ending in `/` swallowed the element's `/>`. plotters quotes every attribute.
    #[test]
    fn every_attribute_is_quoted() {
        let rows = vec![
            BarRow {
                label: "ip_not_allowed".into(),
                pieces: vec![(0, 12.0)],
                note: None,
            },
            BarRow {
                label: "skipped".into(),
                pieces: vec![],
                note: Some("not measured".into()),
            },
        ];
        let svg = bar_chart(
            "Deny codes",
            "requests",
            &[("denied", DENIED)],
            &rows,
            &|v| format!("{v:.0}"),
        );
        assert!(svg.contains("<rect"), "{svg}");
        assert!(svg.contains("not measured"), "{svg}");
        assert!(svg.contains("ip_not_allowed"), "{svg}");
        for tag in svg.split('<').skip(1) {
            let head = tag.split('>').next().unwrap_or_default();
            for attr in head.split_whitespace().skip(1) {
                if let Some((_, value)) = attr.split_once('=') {
                    assert!(value.starts_with('"'), "unquoted attribute in <{head}>");
                }
            }
        }
    }

    #[test]
    fn empty_inputs_say_so() {
        assert!(percentile_plot("Latency", &[]).contains("no latencies"));
        assert!(requests_per_second(&[]).contains("no requests"));
        assert!(bar_chart("x", "y", &[], &[], &|v| v.to_string()).contains("nothing to show"));
    }
}
