//! What the figures (`mla compare`, `mla bench decode`) share: writing one drawing as PNG and
//! SVG with the embedded-font text of [`text`], tick placement, and fixed colours per
//! attention type so that every figure of this project colours MLA, MHA, GQA and MQA alike.

pub mod text;

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use text::Label;

/// A figure: plotters draws everything but text, and returns the text to put on top.
pub trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>)
    -> Result<Vec<Label>, String>;
}

/// A figure could not be written: the file and why.
#[derive(Debug)]
pub struct WriteError {
    pub path: PathBuf,
    pub message: String,
}

/// Write `figure` as a PNG (text rasterised from the embedded font) and an SVG (text as
/// `<text>` elements), both laid out with the same metrics.
pub fn write(figure: &impl Figure, png: &Path, svg: &Path) -> Result<(), WriteError> {
    let (w, h) = figure.size();
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |message: String| WriteError { path, message }
    };
    // PNG: plotters draws into a buffer, the labels go on top, then the buffer is saved.
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let labels = {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let labels = figure.draw(&root).map_err(err(png))?;
        root.present().map_err(|e| err(png)(e.to_string()))?;
        labels
    };
    text::render_rgb(&mut buf, w, h, &labels);
    let mut out = BitMapBackend::new(png, (w, h));
    out.blit_bitmap((0, 0), (w, h), &buf)
        .and_then(|_| out.present())
        .map_err(|e| err(png)(e.to_string()))?;

    // SVG: the same drawing, the labels as text elements before the closing tag.
    let mut doc = String::new();
    let labels = {
        let root = SVGBackend::with_string(&mut doc, (w, h)).into_drawing_area();
        let labels = figure.draw(&root).map_err(err(svg))?;
        root.present().map_err(|e| err(svg)(e.to_string()))?;
        labels
    };
    let end = doc
        .rfind("</svg>")
        .ok_or_else(|| err(svg)("no </svg>".into()))?;
    doc.insert_str(end, &text::svg_elements(&labels));
    std::fs::write(svg, doc).map_err(|e| err(svg)(e.to_string()))
}

/// Ticks at a 1-2-2.5-5 step inside `[lo, hi]`, about `target` of them, and the decimals that
/// print them exactly.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, usize) {
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let (mult, extra) = [(1.0, 0), (2.0, 0), (2.5, 1), (5.0, 0), (10.0, 0)]
        .into_iter()
        .find(|(m, _)| m * mag >= raw)
        .unwrap_or((10.0, 0));
    let step = mult * mag;
    let decimals = ((-(step.log10().floor())).max(0.0) as usize + extra).min(9);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    let ticks = (first..=last).map(|k| k as f64 * step).collect();
    (ticks, decimals)
}

/// The colour of an attention type (or decode-bench arm), the same in every figure.
pub fn attention_colour(name: &str) -> Option<RGBColor> {
    Some(match name {
        "mla" => RGBColor(214, 39, 40),
        "mla-naive" => RGBColor(148, 103, 189),
        "mha" => RGBColor(31, 119, 180),
        "gqa" => RGBColor(44, 160, 44),
        "mqa" => RGBColor(255, 127, 14),
        _ => return None,
    })
}

/// Colours for anything else, in order.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside() {
        let (t, d) = nice_ticks(0.0, 3.0, 7);
        assert_eq!(t, vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]);
        assert_eq!(d, 1);
        let (t, d) = nice_ticks(3.62, 5.91, 7);
        assert_eq!((t, d), (vec![4.0, 4.5, 5.0, 5.5], 1));
        let (t, d) = nice_ticks(0.0, 1.6, 7);
        assert_eq!(t.len(), 7);
        assert!((t[1] - 0.25).abs() < 1e-12 && d == 2, "{t:?} {d}");
    }
}
