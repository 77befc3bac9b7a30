//! `forward --plot FILE.png`: forwarded Mpps per variant (bars) per frame
//! size, one panel per queue count, drawn with plotters' bitmap backend.
//! Text is rendered by ab_glyph from DejaVu Sans (Debian fonts-dejavu-core),
//! so no fontconfig or freetype is involved.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

/// DejaVu Sans as installed by fonts-dejavu-core.
const FONT_FILES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// One bar: a variant's forwarded rate at one queue count and frame size.
pub struct Point {
    pub variant: String,
    pub queues: u32,
    pub size: usize,
    pub mpps: f64,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn load_font() -> Result<(), Error> {
    let bytes = FONT_FILES
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or("no DejaVu Sans font (apt-get install fonts-dejavu-core)")?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| "DejaVu Sans: not a font plotters can read")?;
    Ok(())
}

/// Draws `points` (in the order the variants first appear) to `path`.
pub fn draw(path: &Path, title: &str, points: &[Point]) -> Result<(), Error> {
    load_font()?;
    let mut variants: Vec<&str> = Vec::new();
    let mut queues: Vec<u32> = Vec::new();
    let mut sizes: Vec<usize> = Vec::new();
    for p in points {
        if !variants.contains(&p.variant.as_str()) {
            variants.push(&p.variant);
        }
        if !queues.contains(&p.queues) {
            queues.push(p.queues);
        }
        if !sizes.contains(&p.size) {
            sizes.push(p.size);
        }
    }
    if points.is_empty() {
        return Err("nothing to plot".into());
    }
    let panel_h = 420;
    let root =
        BitMapBackend::new(path, (1000, 60 + panel_h * queues.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(60);
    top.titled(title, ("sans-serif", 22))?;
    let panels = body.split_evenly((queues.len(), 1));
    // The top third free for the legend.
    let ymax = points.iter().map(|p| p.mpps).fold(0.0, f64::max) * 1.5 + 1e-3;
    let n = sizes.len() as f64;
    // Each size is a group of width 1 centred on its index; bars fill 80 %.
    let bar_w = 0.8 / variants.len() as f64;
    for (panel, &q) in panels.iter().zip(&queues) {
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{q} queue(s)"), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5..n - 0.5, 0.0..ymax)?;
        let sizes_ref = &sizes;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(sizes.len() * 2 + 1)
            .x_label_formatter(&|x: &f64| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < sizes_ref.len() {
                    format!("{} B", sizes_ref[i as usize])
                } else {
                    String::new()
                }
            })
            .y_desc("forwarded Mpps")
            .label_style(("sans-serif", 14))
            .draw()?;
        for (vi, v) in variants.iter().enumerate() {
            let color = Palette99::pick(vi).to_rgba();
            let bars: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| p.queues == q && p.variant == *v)
                .filter_map(|p| {
                    let g = sizes.iter().position(|&s| s == p.size)? as f64;
                    Some((g - 0.4 + vi as f64 * bar_w, p.mpps))
                })
                .collect();
            chart
                .draw_series(bars.iter().map(|&(x0, y)| {
                    Rectangle::new([(x0, 0.0), (x0 + bar_w * 0.95, y)], color.filled())
                }))?
                .label(*v)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
            // The value above each bar, centred.
            let above = ("sans-serif", 12)
                .into_font()
                .into_text_style(panel)
                .pos(Pos::new(HPos::Center, VPos::Bottom));
            chart.draw_series(bars.iter().map(|&(x0, y)| {
                Text::new(
                    format!("{y:.2}"),
                    (x0 + bar_w * 0.475, y + ymax * 0.01),
                    above.clone(),
                )
            }))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
