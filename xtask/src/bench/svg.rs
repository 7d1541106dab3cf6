//! bench.svg: the ratio chart first (a panel per step, a plot per interpreter), the
//! absolute ns/op bars below it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::backends::{BackendSpec, Family, KIT_CFFI, UPSTREAM_VERSION};
use crate::util;

use super::render::{fmt_ns, fmt_ratio, pct};
use super::stats::{comparisons, interval_level, Against, Summary, Verdict};

/// Text for SVG.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// bench.svg: the ratio chart first, the absolute chart below it, in one document.
pub fn render_svg(s: &Summary, path: &Path, subtitle: &str) -> Result<()> {
    let (ratio, rw, rh) = ratio_chart(s, subtitle);
    let (abs, aw, ah) = absolute_chart(s, subtitle)?;
    let gap = 30;
    let (width, height) = (rw.max(aw), rh + gap + ah);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" \
         font-family=\"sans-serif\">\n<rect x=\"0\" y=\"0\" width=\"{width}\" height=\"{height}\" fill=\"white\"/>\n"
    );
    svg.push_str(&ratio);
    let _ = writeln!(
        svg,
        "<line x1=\"0\" y1=\"{y}\" x2=\"{width}\" y2=\"{y}\" stroke=\"#999\" stroke-width=\"1\"/>",
        y = rh + gap / 2
    );
    // plotters writes a whole document; nested, it becomes the lower part
    let abs = abs.trim_start_matches(|c: char| c != '<');
    let nested = abs.strip_prefix("<svg ").map(|rest| format!("<svg x=\"0\" y=\"{}\" {rest}", rh + gap));
    svg.push_str(&nested.context("the absolute chart is not an <svg> document")?);
    svg.push_str("\n</svg>\n");
    util::write_atomic(path, svg.as_bytes())
}

/// Colours of the comparisons and the verdicts.
fn against_color(a: Against) -> &'static str {
    match a {
        Against::PrevStep(_) => "#1f5fb4",
        Against::Vanilla => "#555555",
        Against::Upstream => "#dd7711",
    }
}

fn verdict_color(v: Option<Verdict>) -> &'static str {
    match v {
        Some(Verdict::Regression) => "#c0392b",
        Some(Verdict::Inconclusive) => "#b9770e",
        Some(Verdict::Faster) => "#1e8449",
        _ => "#333333",
    }
}

/// The log-scale x axis of the ratio chart: [lo, hi] on [x0, x0 + w].
struct RatioAxis {
    lo: f64,
    hi: f64,
    x0: f64,
    w: f64,
}

impl RatioAxis {
    /// The range: every interval, clamped to [0.5, 2] so that a few percent stay visible
    /// (beyond: a triangle and the value at the edge), never narrower than the band.
    fn range(values: &[f64], threshold: f64) -> (f64, f64) {
        let up = 1.0 + threshold;
        let lo = values.iter().copied().fold(1.0 / up, f64::min) / 1.03;
        let hi = values.iter().copied().fold(up, f64::max) * 1.03;
        (lo.clamp(0.5, 0.9), hi.clamp(1.1, 2.0))
    }

    fn x(&self, v: f64) -> f64 {
        let v = v.clamp(self.lo, self.hi);
        self.x0 + (v / self.lo).ln() / (self.hi / self.lo).ln() * self.w
    }

    /// Tick values at least `min_px` apart: 1, then rounder values before others.
    fn ticks(&self, min_px: f64) -> Vec<f64> {
        const BY_PRIORITY: &[f64] = &[
            1.0, 0.5, 2.0, 0.25, 4.0, 0.8, 1.25, 0.9, 1.1, 1.5, 0.95, 1.05, 0.6, 0.7, 0.3, 0.4, 1.2, 1.3, 3.0, 2.5,
            0.85, 1.75,
        ];
        let mut out: Vec<f64> = Vec::new();
        for &v in BY_PRIORITY {
            if v >= self.lo && v <= self.hi && out.iter().all(|&t| (self.x(t) - self.x(v)).abs() >= min_px) {
                out.push(v);
            }
        }
        out.sort_by(|a, b| a.total_cmp(b));
        out
    }
}

fn fmt_tick(v: f64) -> String {
    let t = format!("{v:.2}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The first picture: for each kit step a panel, in it one plot per interpreter
/// (free-threaded first), one row per op (and the geomean) with kit / other for each
/// comparison: a dot at the median per-round ratio, whiskers over its interval, a line
/// at 1.0 and the threshold band. Right of each plot: the change against the step's
/// baseline, coloured by its verdict. Returns the SVG elements and their size.
pub fn ratio_chart(s: &Summary, subtitle: &str) -> (String, u32, u32) {
    const LX: f64 = 190.0; // op labels end here
    const PW: f64 = 420.0; // width of one plot
    const GAP: f64 = 120.0; // between plots: the verdict text of the left one
    const SUB: f64 = 12.0; // between the series of one row
    let comps = comparisons(&s.backends);
    let up = 1.0 + s.threshold;
    let level = interval_level(s.rounds as usize);
    let mut out = String::new();
    let width = (LX + 2.0 * PW + GAP + 110.0) as u32;
    let _ = writeln!(
        out,
        "<text x=\"12\" y=\"26\" font-size=\"19\" font-weight=\"bold\">cffi-ft bench: kit ns/op divided by another \
         backend's, single thread, same interpreter</text>\n\
         <text x=\"12\" y=\"46\" font-size=\"13\" fill=\"#444\">{}</text>",
        esc(&format!(
            "{subtitle}; dot: median of the per-round ratios; whiskers: its {:.0}% interval over {} rounds (order statistics)",
            level * 100.0,
            s.rounds
        ))
    );
    if comps.is_empty() {
        let _ = writeln!(
            out,
            "<text x=\"12\" y=\"80\" font-size=\"14\">no ratios: measure a kit step together with vanilla or {UPSTREAM_VERSION} \
             (--backends kit,vanilla,upstream)</text>"
        );
        return (out, width, 100);
    }

    // legend
    let mut lx = 12.0;
    let ly = 70.0;
    let prev_name = "the previous step";
    let items: Vec<(String, String)> = [
        (Against::PrevStep(0), format!("vs {prev_name}")),
        (Against::Vanilla, format!("vs vanilla {KIT_CFFI} (on t: PYTHON_GIL=0, unsafe)")),
        (Against::Upstream, format!("vs {UPSTREAM_VERSION} (on t: forced, unsupported)")),
    ]
    .into_iter()
    .filter(|(a, _)| comps.iter().any(|c| std::mem::discriminant(&c.against) == std::mem::discriminant(a)))
    .map(|(a, t)| (against_color(a).to_string(), t))
    .collect();
    for (color, text) in &items {
        let _ = writeln!(
            out,
            "<line x1=\"{:.1}\" y1=\"{ly}\" x2=\"{:.1}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"/>\
             <circle cx=\"{:.1}\" cy=\"{ly}\" r=\"4\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"13\">{}</text>",
            lx,
            lx + 24.0,
            lx + 12.0,
            lx + 30.0,
            ly + 4.5,
            esc(text)
        );
        lx += 30.0 + text.len() as f64 * 6.9 + 24.0;
    }
    let _ = writeln!(
        out,
        "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"24\" height=\"12\" fill=\"#e3efe3\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"13\">{}</text>",
        ly - 6.0,
        lx + 30.0,
        ly + 4.5,
        esc(&format!("{:.2} .. {up:.2}: within {:.0}%", 1.0 / up, s.threshold * 100.0))
    );
    for (i, line) in [
        "below 1: the kit is faster. Right of each plot: the change of ns/op against the step's baseline (the previous \
         step; vanilla for the first step measured),"
            .to_string(),
        format!(
            "coloured by its verdict: R: regression (the whole interval is above {up:.2}); ?: inconclusive (the interval \
             reaches above {up:.2}); green: faster (whole interval below {:.2})",
            1.0 / up
        ),
    ]
    .iter()
    .enumerate()
    {
        let _ = writeln!(
            out,
            "<text x=\"12\" y=\"{:.1}\" font-size=\"13\" fill=\"#444\">{}</text>",
            ly + 24.0 + 17.0 * i as f64,
            esc(line)
        );
    }

    // one axis for all plots, so that they compare
    let mut values = Vec::new();
    for c in &comps {
        for oi in 0..s.ops.len() {
            if let Some(iv) = s.ratio_stat(c, oi).interval {
                values.extend([iv.lo, iv.hi]);
            }
        }
    }
    let (alo, ahi) = RatioAxis::range(&values, s.threshold);

    let mut steps: Vec<u32> = s
        .backends
        .iter()
        .filter_map(|b| match b.family {
            Family::Kit(step) => Some(step),
            _ => None,
        })
        .collect();
    steps.sort();
    steps.dedup();
    let n_rows = s.ops.len() + 1;
    let mut y = ly + 60.0;
    for step in steps {
        // free-threaded first: that is what the kit is for
        let mut kits: Vec<usize> = comps.iter().map(|c| c.kit).filter(|&k| s.backends[k].family == Family::Kit(step)).collect();
        kits.dedup();
        kits.sort_by_key(|&k| (!s.backends[k].free_threaded, s.backends[k].python.clone()));
        if kits.is_empty() {
            continue;
        }
        // the series of a row: the same slots in every plot of the panel
        let mut slots: Vec<Against> = Vec::new();
        for c in comps.iter().filter(|c| kits.contains(&c.kit)) {
            if !slots.iter().any(|a| std::mem::discriminant(a) == std::mem::discriminant(&c.against)) {
                slots.push(c.against);
            }
        }
        slots.sort_by_key(|a| match a {
            Against::PrevStep(_) => 0,
            Against::Vanilla => 1,
            Against::Upstream => 2,
        });
        let row_h = SUB * slots.len() as f64 + 12.0;
        let baseline_name = comps
            .iter()
            .find(|c| c.kit == kits[0] && c.baseline)
            .map(|c| s.backends[c.other].family.name())
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "<text x=\"12\" y=\"{:.1}\" font-size=\"17\" font-weight=\"bold\">kit-step{step}</text>\
             <text x=\"110\" y=\"{:.1}\" font-size=\"13\" fill=\"#444\">{}</text>",
            y + 16.0,
            y + 16.0,
            esc(&format!("judged against {baseline_name} on the same interpreter"))
        );
        y += 26.0;
        let top = y + 20.0;
        let bottom = top + row_h * n_rows as f64;
        // rows: stripes and op labels
        for r in 0..n_rows {
            let ry = top + r as f64 * row_h;
            if r % 2 == 1 {
                let _ = writeln!(
                    out,
                    "<rect x=\"8\" y=\"{ry:.1}\" width=\"{:.1}\" height=\"{row_h:.1}\" fill=\"#f4f4f4\"/>",
                    width as f64 - 16.0
                );
            }
            let label = s.ops.get(r).map(String::as_str).unwrap_or("geomean");
            let weight = if r == s.ops.len() { " font-weight=\"bold\"" } else { "" };
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"13\" text-anchor=\"end\"{weight}>{}</text>",
                LX - 10.0,
                ry + row_h / 2.0 + 4.5,
                esc(label)
            );
        }
        for (pi, &k) in kits.iter().enumerate() {
            let b = &s.backends[k];
            let axis = RatioAxis { lo: alo, hi: ahi, x0: LX + pi as f64 * (PW + GAP), w: PW };
            let x0 = axis.x0;
            let title = format!(
                "{} ({})",
                b.py_label(),
                if b.free_threaded { "free-threaded" } else { "GIL" }
            );
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"14\" font-weight=\"bold\" text-anchor=\"middle\">{}</text>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\" fill=\"#444\">vs baseline</text>",
                x0 + PW / 2.0,
                top - 6.0,
                esc(&title),
                x0 + PW + 40.0,
                top - 6.0
            );
            // threshold band, grid, 1.0, frame
            let _ = writeln!(
                out,
                "<rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#e3efe3\" fill-opacity=\"0.8\"/>",
                axis.x(1.0 / up),
                axis.x(up) - axis.x(1.0 / up),
                bottom - top
            );
            for t in axis.ticks(34.0) {
                let tx = axis.x(t);
                let (stroke, sw) = if t == 1.0 { ("#222", 1.5) } else { ("#ccc", 0.8) };
                let _ = writeln!(
                    out,
                    "<line x1=\"{tx:.1}\" y1=\"{top:.1}\" x2=\"{tx:.1}\" y2=\"{bottom:.1}\" stroke=\"{stroke}\" stroke-width=\"{sw}\"/>\
                     <text x=\"{tx:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
                    bottom + 14.0,
                    fmt_tick(t)
                );
            }
            let _ = writeln!(
                out,
                "<rect x=\"{x0:.1}\" y=\"{top:.1}\" width=\"{PW:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"#888\"/>\
                 <line x1=\"{x0:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\" fill=\"#333\">\
                 kit / other, log scale (below 1: the kit is faster)</text>",
                bottom - top,
                bottom - row_h,
                x0 + PW,
                bottom - row_h,
                x0 + PW / 2.0,
                bottom + 30.0
            );
            for r in 0..n_rows {
                let ry = top + r as f64 * row_h + 6.0 + SUB / 2.0;
                for c in comps.iter().filter(|c| c.kit == k) {
                    let Some(slot) = slots.iter().position(|a| std::mem::discriminant(a) == std::mem::discriminant(&c.against))
                    else {
                        continue;
                    };
                    let st = if r < s.ops.len() { s.ratio_stat(c, r) } else { s.geomean_stat(c) };
                    let Some(iv) = &st.interval else { continue };
                    let cy = ry + slot as f64 * SUB;
                    let color = against_color(c.against);
                    let (xl, xh, xm) = (axis.x(iv.lo), axis.x(iv.hi), axis.x(iv.median));
                    let _ = writeln!(
                        out,
                        "<line x1=\"{xl:.1}\" y1=\"{cy:.1}\" x2=\"{xh:.1}\" y2=\"{cy:.1}\" stroke=\"{color}\" stroke-width=\"1.6\"/>\
                         <line x1=\"{xl:.1}\" y1=\"{:.1}\" x2=\"{xl:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-width=\"1.6\"/>\
                         <line x1=\"{xh:.1}\" y1=\"{:.1}\" x2=\"{xh:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-width=\"1.6\"/>",
                        cy - 3.5,
                        cy + 3.5,
                        cy - 3.5,
                        cy + 3.5
                    );
                    let off_lo = iv.median < axis.lo;
                    let off_hi = iv.median > axis.hi;
                    if off_lo || off_hi {
                        // a triangle at the edge pointing outwards, and the value
                        let (tip, base, anchor, tx) =
                            if off_lo { (x0 - 1.0, x0 + 8.0, "start", x0 + 11.0) } else { (x0 + PW + 1.0, x0 + PW - 8.0, "end", x0 + PW - 11.0) };
                        let _ = writeln!(
                            out,
                            "<polygon points=\"{tip:.1},{cy:.1} {base:.1},{:.1} {base:.1},{:.1}\" fill=\"{color}\"/>\
                             <text x=\"{tx:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"{anchor}\" fill=\"{color}\">{}</text>",
                            cy - 4.5,
                            cy + 4.5,
                            cy + 3.5,
                            fmt_ratio(iv.median)
                        );
                    } else {
                        let ring = if c.baseline && st.verdict == Some(Verdict::Regression) {
                            " stroke=\"#c0392b\" stroke-width=\"2\""
                        } else {
                            ""
                        };
                        let _ = writeln!(out, "<circle cx=\"{xm:.1}\" cy=\"{cy:.1}\" r=\"4\" fill=\"{color}\"{ring}/>");
                    }
                    if c.baseline {
                        let text = format!(
                            "{}{}",
                            pct(iv.median),
                            match st.verdict {
                                Some(Verdict::Regression) => " R",
                                Some(Verdict::Inconclusive) => " ?",
                                _ => "",
                            }
                        );
                        let _ = writeln!(
                            out,
                            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"{}\">{}</text>",
                            x0 + PW + 8.0,
                            cy + 4.0,
                            verdict_color(st.verdict),
                            esc(&text)
                        );
                    }
                }
            }
        }
        y = bottom + 52.0;
    }
    (out, width, y as u32)
}

fn palette(spec: &BackendSpec) -> plotters::style::RGBColor {
    use plotters::style::RGBColor;
    let (gil, t) = match spec.family {
        Family::Kit(step) => {
            let shade = (step.min(6) * 18) as u8;
            (RGBColor(110 + shade / 2, 170, 230), RGBColor(20 + shade, 90 + shade, 180))
        }
        Family::Vanilla => (RGBColor(190, 190, 190), RGBColor(100, 100, 100)),
        Family::Upstream => (RGBColor(250, 190, 120), RGBColor(220, 110, 20)),
    };
    if spec.free_threaded {
        t
    } else {
        gil
    }
}

/// The second picture: grouped horizontal bars, one group per op, one bar per backend,
/// log-scale ns/op. Returns the SVG document and its size.
fn absolute_chart(s: &Summary, subtitle: &str) -> Result<(String, u32, u32)> {
    use plotters::prelude::*;

    let n_ops = s.ops.len().max(1);
    let n_b = s.backends.len().max(1);
    let bar_px = 11u32;
    let group_px = bar_px * n_b as u32 + 14;
    let legend_px = 24 * (n_b as u32).div_ceil(2) + 20;
    let plot_px = group_px * n_ops as u32 + 90;
    let (width, height) = (1100u32, plot_px + legend_px);

    let values: Vec<f64> = s.aggs.iter().flatten().filter_map(|a| a.ns_min).collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(0.0f64, f64::max);
    let (lo, hi) = if values.is_empty() {
        (1.0, 1000.0)
    } else {
        (10f64.powf((lo * 0.7).log10().floor()), hi * 2.5)
    };

    let mut buf = String::new();
    {
    let root = SVGBackend::with_string(&mut buf, (width, height)).into_drawing_area();
    let draw_err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("cannot draw the absolute chart: {e:?}");
    root.fill(&WHITE).map_err(draw_err)?;
    let (plot, legend) = root.split_vertically(plot_px);
    // Op i (top to bottom) is centred on y = n_ops - 1 - i; integer key points label it.
    let ops = s.ops.clone();
    let mut chart = ChartBuilder::on(&plot)
        .caption(
            format!("absolute: ns/op, single thread, min over rounds (log scale, lower is better) - {subtitle}"),
            ("sans-serif", 21),
        )
        .margin(12)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(150)
        .build_cartesian_2d((lo..hi).log_scale(), -0.5f64..n_ops as f64 - 0.5)
        .map_err(draw_err)?;
    let label_of = move |y: &f64| {
        if (y - y.round()).abs() > 1e-6 {
            return String::new();
        }
        let i = n_ops as i64 - 1 - y.round() as i64;
        usize::try_from(i).ok().and_then(|i| ops.get(i)).cloned().unwrap_or_default()
    };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n_ops + 1)
        .y_label_formatter(&label_of)
        .x_label_formatter(&|x| {
            // label 1, 2 and 5 of each decade only: the others crowd on a log axis
            let m = x / 10f64.powf(x.log10().floor());
            if [1.0, 2.0, 5.0, 10.0].iter().any(|k| (m - k).abs() < 1e-6) {
                if *x >= 1.0 {
                    format!("{x:.0}")
                } else {
                    fmt_ns(*x)
                }
            } else {
                String::new()
            }
        })
        .x_desc("ns per operation (log scale)")
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(draw_err)?;

    let band = 1.0 - 14.0 / group_px as f64;
    let bar_h = band / n_b as f64;
    for (bi, spec) in s.backends.iter().enumerate() {
        let color = palette(spec);
        let mut bars = Vec::new();
        let mut texts = Vec::new();
        for (oi, row) in s.aggs.iter().enumerate() {
            let Some(ns) = row[bi].ns_min else { continue };
            let top = (n_ops - 1 - oi) as f64 + 0.5 - (1.0 - band) / 2.0 - bi as f64 * bar_h;
            let bottom = top - bar_h * 0.9;
            bars.push(Rectangle::new([(lo, bottom), (ns, top)], color.filled()));
            let a = &row[bi];
            let failed_2t = a.failed_own2 + a.failed_shared2 > 0;
            let text = format!(" {}{}", fmt_ns(ns), if failed_2t { "  (2-thread runs failed)" } else { "" });
            let color = if failed_2t { RED } else { BLACK };
            texts.push(Text::new(text, (ns, top - bar_h * 0.05), ("sans-serif", 12).into_font().color(&color)));
        }
        chart.draw_series(bars).map_err(draw_err)?;
        chart.draw_series(texts).map_err(draw_err)?;
    }

    for (bi, spec) in s.backends.iter().enumerate() {
        let (col, row) = ((bi % 2) as i32, (bi / 2) as i32);
        let x = 160 + col * 460;
        let y = 8 + row * 24;
        legend
            .draw(&Rectangle::new([(x, y), (x + 16, y + 14)], palette(spec).filled()))
            .map_err(draw_err)?;
        legend
            .draw(&Text::new(spec.label(), (x + 22, y), ("sans-serif", 16).into_font().color(&BLACK)))
            .map_err(draw_err)?;
    }
    root.present().map_err(draw_err)?;
    }
    Ok((buf, width, height))
}


#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    use crate::bench::stats::fixtures::{spec, summary};
    use crate::bench::stats::Agg;

    #[test]
    fn svg_has_the_ratio_chart_first_then_the_absolute_one() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("bench.svg");
        let mut s = summary();
        s.backends.push(spec(Family::Kit(1), true));
        for (row, ns) in s.aggs.iter_mut().zip([41.0, 100.0]) {
            row.push(Agg { ns_min: Some(ns), ns_best_runs: vec![Some(ns * 0.5); 6], ..Agg::default() });
        }
        render_svg(&s, &path, "test").unwrap();
        let svg = fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{}", &svg[..200.min(svg.len())]);
        let ratio_at = svg.find("divided by another").unwrap();
        let abs_at = svg.find("absolute: ns/op").unwrap();
        assert!(ratio_at < abs_at);
        for panel in ["kit-step0</text>", "kit-step1</text>", "judged against kit-step0", "judged against vanilla-1.17.1"] {
            assert!(svg.contains(panel), "no {panel}");
        }
        assert!(svg.contains(">3.13.5t (free-threaded)<") && svg.contains(">3.13.5 (GIL)<") && svg.contains(">geomean<"));
        // step 1 vs step 0 on typeof_hit: 41 / 40 = +2.5%; step 0 t vs vanilla t: +25% regression
        assert!(svg.contains(">+2.5%<") && svg.contains(">+25.0% R<"), "verdict texts");
        // step 1 t on new_function_type: 100 / 300 (step 0) and 100 / 250 (vanilla) are off
        // the scale (0.5 ..): triangles at the edge with their values; 0.8 and 1.25 fit
        assert_eq!(svg.matches("<polygon").count(), 2);
        assert!(svg.contains(">0.33</text>") && svg.contains(">0.40</text>"));
        for op in ["typeof_hit", "new_function_type"] {
            assert!(svg.contains(&format!(">{op}</text>")), "no ratio label {op}");
            assert!(svg.contains(&format!("\n{op}\n")), "no absolute label {op}");
        }
        // the nested absolute chart sits below the ratio chart
        assert_eq!(svg.matches("<svg").count(), 2);
        assert!(svg.contains("<svg x=\"0\" y=\""));
    }

    #[test]
    fn ratio_axis_clamps_and_ticks_do_not_crowd() {
        let (lo, hi) = RatioAxis::range(&[0.03, 1.2], 0.05);
        assert_eq!((lo, hi), (0.5, 1.2 * 1.03));
        assert_eq!(RatioAxis::range(&[0.7, 9.0], 0.05), (0.7 / 1.03, 2.0));
        let (lo, hi) = RatioAxis::range(&[0.99, 1.01], 0.05);
        assert!(lo < 1.0 / 1.05 && hi > 1.05 && lo >= 0.9 - 1e-12 && hi <= 1.1 + 1e-12, "{lo} {hi}");
        let axis = RatioAxis { lo: 0.25, hi: 4.0, x0: 100.0, w: 400.0 };
        assert_eq!(axis.x(0.01), 100.0);
        assert!((axis.x(1.0) - 300.0).abs() < 1e-9);
        let ticks = axis.ticks(34.0);
        assert!(ticks.contains(&1.0) && ticks.contains(&0.25) && ticks.contains(&4.0), "{ticks:?}");
        for w in ticks.windows(2) {
            assert!(axis.x(w[1]) - axis.x(w[0]) >= 34.0, "{ticks:?}");
        }
        assert_eq!(fmt_tick(0.25), "0.25");
        assert_eq!(fmt_tick(1.0), "1");
        assert_eq!(fmt_tick(1.5), "1.5");
    }
}

