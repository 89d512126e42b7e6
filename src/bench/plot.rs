//! `concordant bench --plot FILE.svg`: one SVG with two panels, the latency distribution
//! of the latency phase as a CDF and every replica's progress during the throughput phase.
//! Text is emitted as SVG `<text>` elements, so no font files are needed.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use super::{BenchError, BenchReport};

/// Title of the left panel.
pub const CDF_TITLE: &str = "Write latency until visible on every node (CDF)";
/// Title of the right panel.
pub const PROGRESS_TITLE: &str = "Changes seen by each replica (throughput phase)";

/// Font of tick labels and legends.
const LABELS: (&str, u32) = ("sans-serif", 15);
/// Font of axis descriptions.
const AXIS_DESC: (&str, u32) = ("sans-serif", 17);
/// Size of the whole picture, pixels.
const SIZE: (u32, u32) = (1400, 560);

/// Draws the report's two panels into `path` as SVG.
pub fn write_svg(report: &BenchReport, path: &Path) -> Result<(), BenchError> {
    let svg = render_svg(report).map_err(|message| BenchError::Plot {
        path: path.to_path_buf(),
        message,
    })?;
    std::fs::write(path, svg).map_err(|source| BenchError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The SVG text of the two panels.
pub fn render_svg(report: &BenchReport) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let root = root
            .titled(
                &format!(
                    "concordant bench: {} nodes, {}, {} docs, {} writes",
                    report.nodes, report.topology, report.docs, report.writes
                ),
                ("sans-serif", 26),
            )
            .map_err(|e| e.to_string())?;
        let (left, right) = root.split_horizontally(SIZE.0 / 2);
        draw_cdf(&left, report.latencies_us.as_deref().unwrap_or(&[]))
            .map_err(|e| e.to_string())?;
        draw_progress(&right, report.progress.as_deref().unwrap_or(&[]))
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// Left panel: x latency (µs), y fraction of writes at or below it.
fn draw_cdf(area: &Area, latencies: &[u64]) -> DrawResult {
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    // A log axis keeps both the body and the tail of the distribution readable.
    let x_min = sorted.first().copied().unwrap_or(1).max(1) as f64 * 0.9;
    let x_max = (sorted.last().copied().unwrap_or(1).max(1) as f64 * 1.1).max(x_min * 10.0);
    let mut chart = ChartBuilder::on(area)
        .caption(CDF_TITLE, ("sans-serif", 21))
        .margin(12)
        .x_label_area_size(55)
        .y_label_area_size(70)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("latency (µs, log scale)")
        .y_desc("fraction of writes")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .label_style(LABELS)
        .axis_desc_style(AXIS_DESC)
        .draw()?;
    let n = sorted.len() as f64;
    // A step line: each sample raises the fraction by 1/n at its latency.
    let mut points = Vec::with_capacity(sorted.len() * 2 + 1);
    points.push((x_min, 0.0));
    for (i, &us) in sorted.iter().enumerate() {
        let us = (us as f64).max(x_min);
        points.push((us, i as f64 / n));
        points.push((us, (i + 1) as f64 / n));
    }
    chart.draw_series(LineSeries::new(points, BLUE.stroke_width(2)))?;
    Ok(())
}

/// Right panel: x time since the first write (ms), y changes seen, one line per node.
fn draw_progress(area: &Area, progress: &[(u64, usize, u64)]) -> DrawResult {
    let mut by_node: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
    for &(ms, node, changes) in progress {
        by_node
            .entry(node)
            .or_default()
            .push((ms as f64, changes as f64));
    }
    let x_max = progress.iter().map(|p| p.0).max().unwrap_or(1).max(1) as f64 * 1.02;
    let y_max = progress.iter().map(|p| p.2).max().unwrap_or(1).max(1) as f64 * 1.05;
    let mut chart = ChartBuilder::on(area)
        .caption(PROGRESS_TITLE, ("sans-serif", 21))
        .margin(12)
        .x_label_area_size(55)
        .y_label_area_size(85)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("time since the first write (ms)")
        .y_desc("changes seen")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(LABELS)
        .axis_desc_style(AXIS_DESC)
        .draw()?;
    for (node, mut points) in by_node {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let color = Palette99::pick(node).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(format!("n{}", node + 1))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(LABELS)
        .draw()?;
    Ok(())
}
