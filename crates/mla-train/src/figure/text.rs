//! Text for the figures (compare, decode bench) without any font on the system: glyph outlines of DejaVu
//! Sans compiled into the binary, laid out and rasterised here.
//!
//! plotters draws text through fontconfig (its `ttf` feature), which fails on a machine
//! without fonts; its `ab_glyph` alternative is not vendored here. So the figure is drawn by
//! plotters without any text, and the text is added afterwards from a list of [`Label`]s:
//! rasterised into the PNG (anti-aliased, non-zero winding) or written as `<text>` elements
//! into the SVG, both laid out with the same metrics.
//!
//! `dejavu-sans-subset.glyphs` (13 KB; licence in `DEJAVU-LICENSE.txt`) holds 108 characters:
//! `b"MLAGLYF1"`, u16 units per em, i16 ascender, i16 descender, u16 glyph count, then per
//! glyph u32 char, u16 advance, u16 op count and the ops: a u8 tag (0 move, 1 line,
//! 2 quadratic, 3 close) followed by one (move, line) or two (quadratic) i16 `(x, y)` points
//! in font units, y up; all little-endian. It was written from `DejaVuSans.ttf` 2.37 by
//! ttf-parser 0.20's `Face::outline_glyph` for `' '..='~'` and `±×–—…·≈µ°≤≥→−`, each op
//! written as it is called back, coordinates rounded to i16.

use std::collections::HashMap;
use std::sync::OnceLock;

const GLYPHS: &[u8] = include_bytes!("dejavu-sans-subset.glyphs");
/// What the SVG asks the viewer for (the PNG always uses the embedded outlines).
pub const SVG_FONT_FAMILY: &str = "DejaVu Sans, Verdana, Arial, sans-serif";
/// Sub-scanlines per pixel row (coverage along x is exact).
const SUBSAMPLES: usize = 5;
/// Line segments per quadratic curve.
const CURVE_STEPS: usize = 6;

struct Glyph {
    advance: f32,
    /// Closed polylines in font units, y up.
    contours: Vec<Vec<(f32, f32)>>,
}

struct Font {
    units_per_em: f32,
    ascender: f32,
    descender: f32,
    glyphs: HashMap<char, Glyph>,
}

impl Font {
    fn parse(bytes: &[u8]) -> Option<Font> {
        let mut at = 0usize;
        let mut take = |n: usize| -> Option<&[u8]> {
            let s = bytes.get(at..at + n)?;
            at += n;
            Some(s)
        };
        if take(8)? != b"MLAGLYF1" {
            return None;
        }
        let u16_ = |s: &[u8]| u16::from_le_bytes([s[0], s[1]]);
        let i16_ = |s: &[u8]| i16::from_le_bytes([s[0], s[1]]) as f32;
        let units_per_em = u16_(take(2)?) as f32;
        let ascender = i16_(take(2)?);
        let descender = i16_(take(2)?);
        let count = u16_(take(2)?);
        let mut glyphs = HashMap::new();
        for _ in 0..count {
            let c = char::from_u32(u32::from_le_bytes(take(4)?.try_into().ok()?))?;
            let advance = u16_(take(2)?) as f32;
            let ops = u16_(take(2)?);
            let mut contours: Vec<Vec<(f32, f32)>> = vec![];
            let mut current: Vec<(f32, f32)> = vec![];
            for _ in 0..ops {
                let tag = take(1)?[0];
                let mut point = || -> Option<(f32, f32)> {
                    let p = take(4)?;
                    Some((i16_(&p[0..2]), i16_(&p[2..4])))
                };
                match tag {
                    0 => {
                        if current.len() > 1 {
                            contours.push(std::mem::take(&mut current));
                        }
                        current = vec![point()?];
                    }
                    1 => current.push(point()?),
                    2 => {
                        let (c, end) = (point()?, point()?);
                        let start = *current.last()?;
                        for i in 1..=CURVE_STEPS {
                            let t = i as f32 / CURVE_STEPS as f32;
                            let u = 1.0 - t;
                            current.push((
                                u * u * start.0 + 2.0 * u * t * c.0 + t * t * end.0,
                                u * u * start.1 + 2.0 * u * t * c.1 + t * t * end.1,
                            ));
                        }
                    }
                    3 => {
                        if current.len() > 1 {
                            contours.push(std::mem::take(&mut current));
                        }
                    }
                    _ => return None,
                }
            }
            if current.len() > 1 {
                contours.push(current);
            }
            glyphs.insert(c, Glyph { advance, contours });
        }
        Some(Font {
            units_per_em,
            ascender,
            descender,
            glyphs,
        })
    }

    fn glyph(&self, c: char) -> &Glyph {
        self.glyphs
            .get(&c)
            .or_else(|| self.glyphs.get(&'?'))
            .expect("the subset has '?'")
    }
}

fn font() -> &'static Font {
    static FONT: OnceLock<Font> = OnceLock::new();
    FONT.get_or_init(|| Font::parse(GLYPHS).expect("the embedded glyph file is well formed"))
}

/// Width in pixels of `text` at an em size of `size` pixels.
pub fn width(text: &str, size: f64) -> f64 {
    let f = font();
    let units: f32 = text.chars().map(|c| f.glyph(c).advance).sum();
    units as f64 * size / f.units_per_em as f64
}

/// Height in pixels of a line (ascender to descender) at an em size of `size` pixels.
pub fn line_height(size: f64) -> f64 {
    let f = font();
    (f.ascender - f.descender) as f64 * size / f.units_per_em as f64
}

fn ascent(size: f64) -> f64 {
    let f = font();
    f.ascender as f64 * size / f.units_per_em as f64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HAlign {
    Left,
    Center,
    Right,
}

/// Which part of the line box (ascender to descender) sits at the anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VAlign {
    Top,
    Center,
    Bottom,
}

/// One line of text at an anchor point, in figure pixels.
#[derive(Clone, Debug)]
pub struct Label {
    pub text: String,
    pub x: f64,
    pub y: f64,
    /// Em size in pixels.
    pub size: f64,
    pub color: (u8, u8, u8),
    pub h: HAlign,
    pub v: VAlign,
    /// Rotated 90 degrees counter-clockwise (reads bottom to top), as a y-axis title.
    pub vertical: bool,
}

impl Label {
    pub fn new(text: impl Into<String>, (x, y): (f64, f64), size: f64) -> Self {
        Self {
            text: text.into(),
            x,
            y,
            size,
            color: (0, 0, 0),
            h: HAlign::Left,
            v: VAlign::Top,
            vertical: false,
        }
    }

    pub fn align(mut self, h: HAlign, v: VAlign) -> Self {
        self.h = h;
        self.v = v;
        self
    }

    pub fn color(mut self, color: (u8, u8, u8)) -> Self {
        self.color = color;
        self
    }

    pub fn vertical(mut self) -> Self {
        self.vertical = true;
        self
    }

    /// Offsets of the anchor inside the text's own box (x along the text, y down it).
    fn anchor_offset(&self) -> (f64, f64) {
        let w = width(&self.text, self.size);
        let h = line_height(self.size);
        let dx = match self.h {
            HAlign::Left => 0.0,
            HAlign::Center => w / 2.0,
            HAlign::Right => w,
        };
        let dy = match self.v {
            VAlign::Top => 0.0,
            VAlign::Center => h / 2.0,
            VAlign::Bottom => h,
        };
        (dx, dy)
    }
}

/// Anti-aliased coverage (0..1) of `text` on a grid whose (0, 0) pixel corner is the top left
/// of the line box shifted by `(ox, oy)` pixels. Returns (width, height, row-major coverage).
fn rasterize(text: &str, size: f64, (ox, oy): (f64, f64)) -> (usize, usize, Vec<f32>) {
    let f = font();
    let s = (size / f.units_per_em as f64) as f32;
    let w = (width(text, size) + ox).ceil() as usize + 2;
    let h = (line_height(size) + oy).ceil() as usize + 2;
    let baseline = (ascent(size) + oy) as f32;
    // Every glyph edge, in pixels, y down: (x0, y0, x1, y1).
    let mut edges: Vec<(f32, f32, f32, f32)> = vec![];
    let mut pen = ox as f32;
    for c in text.chars() {
        let g = f.glyph(c);
        for contour in &g.contours {
            let n = contour.len();
            for i in 0..n {
                let (a, b) = (contour[i], contour[(i + 1) % n]);
                edges.push((
                    pen + a.0 * s,
                    baseline - a.1 * s,
                    pen + b.0 * s,
                    baseline - b.1 * s,
                ));
            }
        }
        pen += g.advance * s;
    }
    let mut cov = vec![0f32; w * h];
    let weight = 1.0 / SUBSAMPLES as f32;
    let mut crossings: Vec<(f32, i32)> = vec![];
    for row in 0..h {
        let line = &mut cov[row * w..(row + 1) * w];
        for k in 0..SUBSAMPLES {
            let y = row as f32 + (k as f32 + 0.5) / SUBSAMPLES as f32;
            crossings.clear();
            for &(x0, y0, x1, y1) in &edges {
                let (lo, hi, dir) = if y0 < y1 { (y0, y1, 1) } else { (y1, y0, -1) };
                if y >= lo && y < hi {
                    crossings.push((x0 + (y - y0) / (y1 - y0) * (x1 - x0), dir));
                }
            }
            crossings.sort_by(|a, b| a.0.total_cmp(&b.0));
            // Non-zero winding: fill between crossings while the winding number is not 0.
            let mut winding = 0;
            for pair in crossings.windows(2) {
                winding += pair[0].1;
                if winding != 0 {
                    add_span(line, pair[0].0, pair[1].0, weight);
                }
            }
        }
    }
    (w, h, cov)
}

/// Add `weight` times the covered fraction of each pixel in `[a, b)` to `line`.
fn add_span(line: &mut [f32], a: f32, b: f32, weight: f32) {
    let max = line.len() as f32;
    let (a, b) = (a.clamp(0.0, max), b.clamp(0.0, max));
    if b <= a {
        return;
    }
    let (ia, ib) = (a.floor() as usize, b.floor() as usize);
    if ia == ib {
        line[ia] += (b - a) * weight;
        return;
    }
    line[ia] += (ia as f32 + 1.0 - a) * weight;
    for p in &mut line[ia + 1..ib] {
        *p += weight;
    }
    if ib < line.len() {
        line[ib] += (b - ib as f32) * weight;
    }
}

/// Draw `labels` into an RGB8 buffer of `width` x `height` pixels.
pub fn render_rgb(buf: &mut [u8], width: u32, height: u32, labels: &[Label]) {
    let (fw, fh) = (width as i64, height as i64);
    for label in labels {
        let (dx, dy) = label.anchor_offset();
        // The text box's top-left corner in figure pixels, split into a whole-pixel origin and
        // a sub-pixel shift that goes into the rasterisation.
        let (fx, fy) = if label.vertical {
            // Local x runs up the figure, local y to the right.
            (label.x - dy, label.y + dx)
        } else {
            (label.x - dx, label.y - dy)
        };
        let (ix, iy) = (fx.floor(), fy.floor());
        let shift = if label.vertical {
            (iy + 1.0 - fy, fx - ix)
        } else {
            (fx - ix, fy - iy)
        };
        let (w, h, cov) = rasterize(&label.text, label.size, shift);
        let (r, g, b) = label.color;
        for v in 0..h {
            for u in 0..w {
                let a = cov[v * w + u].min(1.0);
                if a <= 0.0 {
                    continue;
                }
                let (px, py) = if label.vertical {
                    (ix as i64 + v as i64, iy as i64 + 1 - u as i64 - 1)
                } else {
                    (ix as i64 + u as i64, iy as i64 + v as i64)
                };
                if px < 0 || py < 0 || px >= fw || py >= fh {
                    continue;
                }
                let at = ((py * fw + px) * 3) as usize;
                for (channel, value) in buf[at..at + 3].iter_mut().zip([r, g, b]) {
                    *channel = (*channel as f32 * (1.0 - a) + value as f32 * a).round() as u8;
                }
            }
        }
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `labels` as SVG `<text>` elements, placed as [`render_rgb`] places them.
pub fn svg_elements(labels: &[Label]) -> String {
    let mut out = String::new();
    for l in labels {
        let anchor = match l.h {
            HAlign::Left => "start",
            HAlign::Center => "middle",
            HAlign::Right => "end",
        };
        let (_, dy) = l.anchor_offset();
        // The baseline, in the text's own frame, below the anchor.
        let baseline = ascent(l.size) - dy;
        let (r, g, b) = l.color;
        let transform = if l.vertical {
            format!(" transform=\"rotate(-90 {:.1} {:.1})\"", l.x, l.y)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-family=\"{SVG_FONT_FAMILY}\" font-size=\"{:.1}\" \
             text-anchor=\"{anchor}\" fill=\"#{r:02x}{g:02x}{b:02x}\"{transform}>{}</text>\n",
            l.x,
            l.y + baseline,
            l.size,
            escape(&l.text)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_subset_parses_and_has_sane_metrics() {
        let f = font();
        assert_eq!(f.units_per_em, 2048.0);
        assert_eq!(f.glyphs.len(), 108);
        // DejaVu Sans digits are all as wide (tables of numbers line up).
        let w0 = width("0", 20.0);
        assert!((width("8", 20.0) - w0).abs() < 1e-9);
        assert!(width("mla", 20.0) > width("ii", 20.0));
        assert!(line_height(20.0) > 20.0 && line_height(20.0) < 25.0);
    }

    #[test]
    fn rasterised_text_covers_about_the_ink_of_its_glyphs() {
        let (w, h, cov) = rasterize("H", 100.0, (0.0, 0.0));
        let ink: f32 = cov.iter().sum();
        // 'H': two stems and a bar, about 0.2 of its box.
        let frac = ink / (w * h) as f32;
        assert!(frac > 0.1 && frac < 0.35, "{frac}");
        assert!(cov.iter().all(|&c| c <= 1.0 + 1e-4));
        // 'o' has a hole: its centre stays empty under non-zero winding.
        let (w, h, cov) = rasterize("o", 100.0, (0.0, 0.0));
        let centre_row = (ascent(100.0) - 27.0) as usize;
        let hole = cov[centre_row * w + (width("o", 100.0) / 2.0) as usize];
        assert_eq!(hole, 0.0, "{w}x{h}");
    }
}
