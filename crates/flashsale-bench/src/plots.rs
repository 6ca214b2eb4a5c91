//! The report's PNG plots, drawn with `plotters` from a parsed results file
//! ([`crate::benchmarks::Results`]): throughput by concurrency for Flashsale
//! and each baseline, p99 latency by concurrency, and the latency
//! percentiles of every design at one concurrency. The load tool's crate
//! carries `plotters`; the server never links it.
//!
//! Text is drawn with a TrueType font read at run time: DejaVu Sans from
//! Debian's `fonts-dejavu-core` unless `FLASHSALE_REPORT_FONT` names another.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context as _};
use plotters::prelude::*;

use crate::benchmarks::{
    plain_label, reference_concurrency, Group, Results, LATENCY_PNG, PERCENTILES_PNG,
    THROUGHPUT_PNG,
};

/// The font the plots use unless `FLASHSALE_REPORT_FONT` says otherwise.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The family name the font is registered under.
const FAMILY: &str = "sans-serif";

/// Pixels of every plot.
const SIZE: (u32, u32) = (1100, 660);

/// One colour per series, the same in every plot.
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Percentiles on the percentile plot's x axis.
const PERCENTILES: [&str; 4] = ["p50", "p90", "p99", "p99.9"];

/// One line of a plot: its legend and its points.
struct Line {
    name: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// What the x axis shows.
#[derive(Clone, Copy)]
enum XAxis {
    /// log2 of the connections, labelled with the connections.
    Concurrency,
    /// Index into [`PERCENTILES`].
    Percentile,
}

/// What the y axis shows (always on a log scale).
#[derive(Clone, Copy)]
enum YAxis {
    Rate,
    Millis,
}

/// Draws every plot into `dir` (created if missing) and returns the paths
/// written, relative to docs/ (the names the report links).
///
/// # Errors
/// When the font cannot be loaded or a file cannot be written.
pub fn draw_all(results: &Results, dir: &Path) -> anyhow::Result<Vec<String>> {
    register_font()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = |rel: &str| dir.join(rel.trim_start_matches("plots/"));
    let names = results.series_names(Group::Sweep);
    let color = |i: usize| COLORS[i % COLORS.len()];
    let by_concurrency = |pick: &dyn Fn(&crate::benchmarks::Point) -> f64| -> Vec<Line> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| Line {
                name: plain_label(name),
                color: color(i),
                points: results
                    .series(Group::Sweep, name)
                    .map(|p| (f64::from(p.concurrency).log2(), pick(p)))
                    .filter(|&(_, y)| y > 0.0)
                    .collect(),
            })
            .collect()
    };

    let mut written = Vec::new();
    line_chart(
        &file(THROUGHPUT_PNG),
        "Throughput by concurrency: Flashsale and the baselines",
        "connections (log scale)",
        "per second: requests (healthz, sold-out), orders (the rest)",
        XAxis::Concurrency,
        YAxis::Rate,
        &by_concurrency(&|p| p.rate),
    )?;
    written.push(THROUGHPUT_PNG.to_owned());
    line_chart(
        &file(LATENCY_PNG),
        "p99 latency by concurrency",
        "connections (log scale)",
        "p99 latency, ms",
        XAxis::Concurrency,
        YAxis::Millis,
        &by_concurrency(&|p| p.latency.p99),
    )?;
    written.push(LATENCY_PNG.to_owned());

    let at = reference_concurrency(results).unwrap_or(64);
    let percentiles: Vec<Line> = names
        .iter()
        .enumerate()
        .filter_map(|(i, name)| {
            let p = results.at(name, at)?;
            let l = p.latency;
            Some(Line {
                name: plain_label(name),
                color: color(i),
                points: [l.p50, l.p90, l.p99, l.p999]
                    .into_iter()
                    .enumerate()
                    .map(|(x, y)| (x as f64, y))
                    .filter(|&(_, y)| y > 0.0)
                    .collect(),
            })
        })
        .collect();
    line_chart(
        &file(PERCENTILES_PNG),
        &format!("Latency percentiles at {at} connections"),
        "percentile",
        "latency, ms",
        XAxis::Percentile,
        YAxis::Millis,
        &percentiles,
    )?;
    written.push(PERCENTILES_PNG.to_owned());
    Ok(written)
}

/// Loads the font once for the process.
fn register_font() -> anyhow::Result<()> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = std::env::var_os("FLASHSALE_REPORT_FONT")
                .map_or_else(|| PathBuf::from(DEFAULT_FONT), PathBuf::from);
            let bytes = std::fs::read(&path).map_err(|e| {
                format!(
                    "reading the plot font {}: {e} (install Debian's fonts-dejavu-core or set \
                     FLASHSALE_REPORT_FONT to a .ttf)",
                    path.display()
                )
            })?;
            // plotters keeps fonts for the whole process; one small file.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
                .map_err(|_| format!("{} is not a usable TrueType font", path.display()))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// A line plot on a log-scale y axis, with a legend in headroom above the
/// highest line.
fn line_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    x: XAxis,
    y: YAxis,
    lines: &[Line],
) -> anyhow::Result<()> {
    let draw = || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let root = BitMapBackend::new(path, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let xs = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
        let ys = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
        let (x_lo, x_hi) = match x {
            XAxis::Concurrency => {
                let (lo, hi) = bounds(xs).unwrap_or((4.0, 10.0));
                (lo - 0.3, hi + 0.3)
            }
            XAxis::Percentile => (-0.25, PERCENTILES.len() as f64 - 0.75),
        };
        let (y_lo, y_hi) = bounds(ys).unwrap_or((1.0, 10.0));
        // Room above the lines for the legend: each entry takes about a
        // twentieth of the height, on a log axis.
        let decades = (y_hi / y_lo).log10().max(1.0);
        let headroom = 10f64.powf(decades * (0.08 * lines.len() as f64 + 0.1));
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FAMILY, 26))
            .margin(20)
            .x_label_area_size(55)
            .y_label_area_size(85)
            .build_cartesian_2d(x_lo..x_hi, (y_lo / 1.5..y_hi * headroom).log_scale())?;
        let x_label = move |v: &f64| -> String {
            let rounded = v.round();
            if (v - rounded).abs() > 1e-6 {
                return String::new();
            }
            match x {
                XAxis::Concurrency => format!("{}", 2f64.powf(rounded).round()),
                XAxis::Percentile => usize::try_from(rounded as i64)
                    .ok()
                    .and_then(|i| PERCENTILES.get(i))
                    .map_or_else(String::new, |s| (*s).to_owned()),
            }
        };
        let y_label = move |v: &f64| -> String {
            match y {
                YAxis::Rate if *v >= 1e6 => format!("{}M", trim(*v / 1e6)),
                YAxis::Rate if *v >= 1000.0 => format!("{}k", trim(*v / 1000.0)),
                YAxis::Rate | YAxis::Millis => trim(*v),
            }
        };
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_labels(match x {
                XAxis::Concurrency => 16,
                XAxis::Percentile => PERCENTILES.len() * 2,
            })
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .label_style((FAMILY, 16))
            .axis_desc_style((FAMILY, 18))
            .draw()?;
        for line in lines {
            let color = line.color;
            chart
                .draw_series(LineSeries::new(
                    line.points.iter().copied(),
                    color.stroke_width(3),
                ))?
                .label(line.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                });
            chart.draw_series(
                line.points
                    .iter()
                    .map(|&p| Circle::new(p, 4, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font((FAMILY, 16))
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}

/// The smallest and largest value, if any.
fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// A short number: `2`, `0.5`, `0.05`.
fn trim(v: f64) -> String {
    let text = if v >= 10.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_numbers_are_short() {
        assert_eq!(trim(50.0), "50");
        assert_eq!(trim(2.0), "2");
        assert_eq!(trim(2.5), "2.5");
        assert_eq!(trim(0.05), "0.05");
        assert_eq!(trim(0.5), "0.5");
        assert_eq!(bounds([3.0, 1.0, 2.0].into_iter()), Some((1.0, 3.0)));
        assert_eq!(bounds(std::iter::empty()), None);
    }
}
