//! `latest.png`: per mode, bars of BPF time and sonde CPU per request and of
//! throughput against the baseline, one bar per workload with its min–max
//! over the rounds as a whisker. Drawn with plotters' bitmap backend and
//! the DejaVu Sans font from Debian's `fonts-dejavu-core`, so no C library
//! is involved.

use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use image::codecs::png::PngEncoder;
use image::{ColorType, ImageEncoder};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::aggregate::Row;
use super::daemon::Mode;
use super::stats::Spread;
use super::wrk::Workload;

pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (1500, 520);
const MODES: [Mode; 3] = [Mode::Floor, Mode::Metrics, Mode::Spans];
const BAR_WIDTH: f64 = 0.36;

/// One panel: a title and the figure it plots from a row.
struct Panel {
    title: &'static str,
    value: fn(&Row) -> Option<Spread>,
    /// Value label under a bar.
    label: fn(f64) -> String,
}

const PANELS: [Panel; 3] = [
    Panel {
        title: "BPF time per request (ns)",
        value: |row| row.bpf_ns_per_request,
        label: |v| format!("{v:.0}"),
    },
    Panel {
        title: "sonde CPU per request (ns)",
        value: |row| row.sonde_cpu_ns_per_request,
        label: |v| format!("{v:.0}"),
    },
    Panel {
        title: "throughput vs baseline (%)",
        value: |row| row.throughput_ratio.map(|s| s.map(|ratio| ratio * 100.0)),
        label: |v| format!("{v:.1}"),
    },
];

fn colour(workload: Workload) -> RGBColor {
    match workload {
        Workload::KeepAlive => RGBColor(0x3b, 0x6e, 0xa8),
        Workload::Close => RGBColor(0xe0, 0x8a, 0x2c),
    }
}

/// The chart as a PNG file's bytes.
pub fn render(rows: &[Row], subtitle: &str) -> Result<Vec<u8>> {
    register_dejavu()?;
    let (width, height) = SIZE;
    let mut pixels = vec![0u8; width as usize * height as usize * 3];
    draw(rows, subtitle, &mut pixels)?;
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(&pixels, width, height, ColorType::Rgb8)
        .context("encoding the chart as PNG")?;
    Ok(png)
}

fn draw(rows: &[Row], subtitle: &str, pixels: &mut [u8]) -> Result<()> {
    let root = BitMapBackend::with_buffer(pixels, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(drawing)?;
    let root = root
        .titled(
            &format!("sonde overhead on nginx — {subtitle}"),
            (FONT, 24).into_font(),
        )
        .map_err(drawing)?;
    for (area, panel) in root.split_evenly((1, PANELS.len())).iter().zip(&PANELS) {
        draw_panel(area, panel, rows)?;
    }
    root.present().map_err(drawing)?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    panel: &Panel,
    rows: &[Row],
) -> Result<()> {
    let bars: Vec<(f64, Workload, Spread)> = MODES
        .iter()
        .enumerate()
        .flat_map(|(i, &mode)| {
            Workload::ALL
                .iter()
                .enumerate()
                .filter_map(move |(j, &workload)| {
                    let row = rows
                        .iter()
                        .find(|r| r.mode == mode && r.workload == workload)?;
                    let x = i as f64 + (j as f64 - 0.5) * BAR_WIDTH;
                    Some((x, workload, (panel.value)(row)?))
                })
        })
        .collect();
    // Headroom above the highest whisker for the value labels and the legend.
    let top = bars.iter().map(|(_, _, s)| s.max).fold(1.0, f64::max) * 1.45;
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, (FONT, 20).into_font())
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5f64..(MODES.len() as f64 - 0.5), 0f64..top)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_labels(MODES.len())
        .x_label_formatter(&|x| {
            MODES
                .get(x.round() as usize)
                .map_or_else(String::new, |mode| mode.label().to_owned())
        })
        .label_style((FONT, 16).into_font())
        .draw()
        .map_err(drawing)?;
    for workload in Workload::ALL {
        let own: Vec<&(f64, Workload, Spread)> =
            bars.iter().filter(|(_, w, _)| *w == workload).collect();
        let fill = colour(workload);
        chart
            .draw_series(own.iter().map(|(x, _, s)| {
                Rectangle::new(
                    [(x - BAR_WIDTH / 2.0, 0.0), (x + BAR_WIDTH / 2.0, s.median)],
                    fill.filled(),
                )
            }))
            .map_err(drawing)?
            .label(workload.label())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], fill.filled()));
        chart
            .draw_series(own.iter().map(|(x, _, s)| {
                PathElement::new(vec![(*x, s.min), (*x, s.max)], BLACK.stroke_width(2))
            }))
            .map_err(drawing)?;
        chart
            .draw_series(own.iter().map(|(x, _, s)| {
                EmptyElement::at((*x, s.max))
                    + Text::new((panel.label)(s.median), (-14, -20), (FONT, 14).into_font())
            }))
            .map_err(drawing)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 15).into_font())
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(drawing)?;
    Ok(())
}

/// plotters' ab_glyph backend knows only fonts registered with it, for the
/// life of the process.
fn register_dejavu() -> Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT_PATH)
                .map_err(|e| format!("{FONT_PATH}: {e} (installed by `cargo xtask setup`)"))?;
            register_font(FONT, FontStyle::Normal, Vec::leak(bytes))
                .map_err(|_| format!("{FONT_PATH} is not a font plotters can read"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
        .context("loading the chart's font")
}

fn drawing<E: std::error::Error + Send + Sync + 'static>(
    err: DrawingAreaErrorKind<E>,
) -> anyhow::Error {
    anyhow!("drawing the chart: {err}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::tests::fixture;

    #[test]
    fn draws_a_png_of_the_chart_size() {
        let png = render(&fixture().rows, "test").unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // The IHDR chunk comes first: width and height, big-endian.
        assert_eq!(&png[12..16], b"IHDR");
        let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert_eq!((width, height), SIZE);
    }
}
