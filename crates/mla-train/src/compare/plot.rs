//! The comparison figure: loss against tokens seen (left) and against wall time (right), one
//! colour per group, train loss solid with a min-max band over seeds, validation loss dashed
//! with dots. plotters draws the lines; the text comes from [`crate::figure::text`] (see there why).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::{CompareError, Comparison, CurvePoint, Group};
use crate::figure::text::{self, HAlign, Label, VAlign};
use crate::figure::{self, nice_ticks};

const WIDTH: u32 = 1600;
const HEIGHT: u32 = 640;
/// Height of the title band above the panels.
const TITLE_H: u32 = 64;
/// Plot area margins inside each panel: left, right, top, bottom.
const MARGIN: (u32, u32, u32, u32) = (84, 24, 8, 64);
const TICK_SIZE: f64 = 14.0;
const AXIS_SIZE: f64 = 15.0;
const LEGEND_SIZE: f64 = 14.0;
const GREY: (u8, u8, u8) = (90, 90, 90);

/// Write the figure as PNG and SVG (see [`crate::figure::write`]).
pub fn write(cmp: &Comparison, png: &Path, svg: &Path) -> Result<(), CompareError> {
    figure::write(&Figure::new(cmp), png, svg).map_err(|e| CompareError::Write {
        path: e.path,
        message: e.message,
    })
}

/// The project's colour per attention type (when each group has its own), else a palette.
fn colours(groups: &[Group]) -> Vec<RGBColor> {
    let mut kinds: Vec<&str> = groups.iter().map(|g| g.attention.as_str()).collect();
    kinds.sort();
    kinds.dedup();
    let by_kind = kinds.len() == groups.len();
    groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let fixed = by_kind
                .then(|| figure::attention_colour(&g.attention))
                .flatten();
            fixed.unwrap_or(figure::PALETTE[i % figure::PALETTE.len()])
        })
        .collect()
}

/// An axis: its range in display units and where its ticks go.
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    decimals: usize,
    title: String,
}

impl Axis {
    fn new(lo: f64, hi: f64, title: String) -> Axis {
        let (lo, hi) = if hi > lo {
            (lo, hi)
        } else {
            (lo - 0.5, lo + 0.5)
        };
        let (ticks, decimals) = nice_ticks(lo, hi, 7);
        Axis {
            lo,
            hi,
            ticks,
            decimals,
            title,
        }
    }
}

/// Scale and unit for an axis of counts or seconds.
fn token_unit(max: f64) -> (f64, &'static str) {
    match max {
        m if m >= 1e9 => (1e9, "B"),
        m if m >= 1e6 => (1e6, "M"),
        m if m >= 1e4 => (1e3, "K"),
        _ => (1.0, ""),
    }
}

fn time_unit(max_s: f64) -> (f64, &'static str) {
    match max_s {
        m if m >= 7200.0 => (3600.0, "h"),
        m if m >= 120.0 => (60.0, "min"),
        _ => (1.0, "s"),
    }
}

/// The y range: from the lowest value to the 95th percentile of the curves, so that the
/// first steps' very high loss does not squash the rest; a margin on both sides.
fn loss_range(groups: &[Group]) -> (f64, f64) {
    let mut means: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.train_curve.iter().chain(&g.val_curve).map(|p| p.mean))
        .filter(|v| v.is_finite())
        .collect();
    if means.is_empty() {
        return (0.0, 1.0);
    }
    means.sort_by(f64::total_cmp);
    let p95 = means[((means.len() - 1) as f64 * 0.95).round() as usize];
    let lo = groups
        .iter()
        .flat_map(|g| g.train_curve.iter().chain(&g.val_curve).map(|p| p.min))
        .filter(|v| v.is_finite())
        .fold(f64::INFINITY, f64::min);
    let hi = p95.max(lo + 1e-3);
    let margin = 0.04 * (hi - lo);
    (lo - margin, hi + margin)
}

struct Figure<'a> {
    cmp: &'a Comparison,
    colours: Vec<RGBColor>,
    loss: (f64, f64),
    tokens: (f64, &'static str, f64),
    time: (f64, &'static str, f64),
}

impl<'a> Figure<'a> {
    fn new(cmp: &'a Comparison) -> Self {
        let points = || {
            cmp.groups
                .iter()
                .flat_map(|g| g.train_curve.iter().chain(&g.val_curve))
        };
        let max_tokens = points().map(|p| p.tokens as f64).fold(0.0, f64::max);
        let max_time = points().map(|p| p.elapsed_s).fold(0.0, f64::max);
        let (ts, tu) = token_unit(max_tokens);
        let (ss, su) = time_unit(max_time);
        Figure {
            cmp,
            colours: colours(&cmp.groups),
            loss: loss_range(&cmp.groups),
            tokens: (ts, tu, max_tokens.max(1.0)),
            time: (ss, su, max_time.max(1e-3)),
        }
    }

    fn legend(&self) -> Vec<(RGBColor, String)> {
        self.cmp
            .groups
            .iter()
            .zip(&self.colours)
            .map(|(g, c)| {
                let mark = if g.mismatch { "! " } else { "" };
                (
                    *c,
                    format!(
                        "{mark}{} ({}, {} B/token)",
                        g.label, g.attention, g.kv_cache_bytes_per_token
                    ),
                )
            })
            .collect()
    }
}

impl figure::Figure for Figure<'_> {
    fn size(&self) -> (u32, u32) {
        (WIDTH, HEIGHT)
    }

    /// Draw everything but text; return the text to put on top.
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<Vec<Label>, String> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let mut labels = vec![];
        let n = self.cmp.runs.len();
        labels.push(Label::new(
            format!(
                "Loss of {n} run{} in {} group{}",
                if n == 1 { "" } else { "s" },
                self.cmp.groups.len(),
                if self.cmp.groups.len() == 1 { "" } else { "s" }
            ),
            (24.0, 10.0),
            20.0,
        ));
        labels.push(
            Label::new(
                "solid: train loss   dashed with dots: validation loss   shaded: min–max over \
                 seeds (curves: mean)",
                (24.0, 38.0),
                14.0,
            )
            .color(GREY),
        );
        let body = root.clone().shrink((0, TITLE_H), (WIDTH, HEIGHT - TITLE_H));
        let (left, right) = body.split_horizontally(WIDTH / 2);
        let (ts, tu, tmax) = self.tokens;
        let x_tokens = Axis::new(
            0.0,
            tmax / ts,
            if tu.is_empty() {
                "tokens seen".into()
            } else {
                format!("tokens seen ({tu})")
            },
        );
        let (ss, su, smax) = self.time;
        let x_time = Axis::new(0.0, smax / ss, format!("wall time ({su})"));
        let y = Axis::new(self.loss.0, self.loss.1, "loss (nats/token)".into());
        self.panel(
            &left,
            &x_tokens,
            &y,
            &|p| p.tokens as f64 / ts,
            true,
            &mut labels,
        )?;
        self.panel(
            &right,
            &x_time,
            &y,
            &|p| p.elapsed_s / ss,
            false,
            &mut labels,
        )?;
        Ok(labels)
    }
}

impl Figure<'_> {
    fn panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        x: &Axis,
        y: &Axis,
        x_of: &dyn Fn(&CurvePoint) -> f64,
        with_legend: bool,
        labels: &mut Vec<Label>,
    ) -> Result<(), String> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        let (ml, mr, mt, mb) = MARGIN;
        let chart = ChartBuilder::on(area)
            .margin_left(ml)
            .margin_right(mr)
            .margin_top(mt)
            .margin_bottom(mb)
            .build_cartesian_2d(x.lo..x.hi, y.lo..y.hi)
            .map_err(e)?;
        let plot = chart.plotting_area();
        let px = |p: (f64, f64)| chart.backend_coord(&p);
        let (x0, y1p) = px((x.lo, y.lo));
        let (x1p, y0p) = px((x.hi, y.hi));
        let grid = RGBColor(225, 225, 225);

        // Grid and ticks.
        for &t in &x.ticks {
            plot.draw(&PathElement::new(vec![(t, y.lo), (t, y.hi)], grid))
                .map_err(e)?;
            let (tx, _) = px((t, y.lo));
            labels.push(
                Label::new(fmt(t, x.decimals), (tx as f64, y1p as f64 + 8.0), TICK_SIZE)
                    .align(HAlign::Center, VAlign::Top),
            );
        }
        for &t in &y.ticks {
            plot.draw(&PathElement::new(vec![(x.lo, t), (x.hi, t)], grid))
                .map_err(e)?;
            let (_, ty) = px((x.lo, t));
            labels.push(
                Label::new(fmt(t, y.decimals), (x0 as f64 - 8.0, ty as f64), TICK_SIZE)
                    .align(HAlign::Right, VAlign::Center),
            );
        }
        labels.push(
            Label::new(
                x.title.clone(),
                ((x0 + x1p) as f64 / 2.0, y1p as f64 + 34.0),
                AXIS_SIZE,
            )
            .align(HAlign::Center, VAlign::Top),
        );
        labels.push(
            Label::new(
                y.title.clone(),
                (x0 as f64 - 62.0, (y0p + y1p) as f64 / 2.0),
                AXIS_SIZE,
            )
            .align(HAlign::Center, VAlign::Top)
            .vertical(),
        );

        // Bands, then train lines, then validation lines and dots.
        let clamp = |v: f64| v.clamp(y.lo, y.hi);
        for (g, c) in self.cmp.groups.iter().zip(&self.colours) {
            if g.runs.len() > 1 {
                for (curve, alpha) in [(&g.train_curve, 0.22), (&g.val_curve, 0.14)] {
                    if curve.len() < 2 {
                        continue;
                    }
                    let mut poly: Vec<(f64, f64)> =
                        curve.iter().map(|p| (x_of(p), clamp(p.max))).collect();
                    poly.extend(curve.iter().rev().map(|p| (x_of(p), clamp(p.min))));
                    plot.draw(&Polygon::new(poly, c.mix(alpha).filled()))
                        .map_err(e)?;
                }
            }
        }
        for (g, c) in self.cmp.groups.iter().zip(&self.colours) {
            let pts: Vec<(f64, f64)> = g.train_curve.iter().map(|p| (x_of(p), p.mean)).collect();
            for piece in clip(&pts, y.lo, y.hi) {
                plot.draw(&PathElement::new(piece, c.stroke_width(2)))
                    .map_err(e)?;
            }
        }
        for (g, c) in self.cmp.groups.iter().zip(&self.colours) {
            let pts: Vec<(f64, f64)> = g.val_curve.iter().map(|p| (x_of(p), p.mean)).collect();
            for piece in clip(&pts, y.lo, y.hi) {
                plot.draw(&plotters::element::DashedPathElement::new(
                    piece,
                    7,
                    5,
                    c.stroke_width(2),
                ))
                .map_err(e)?;
            }
            for &(vx, vy) in pts.iter().filter(|p| p.1 >= y.lo && p.1 <= y.hi) {
                plot.draw(&Circle::new((vx, vy), 4, c.filled()))
                    .map_err(e)?;
                plot.draw(&Circle::new((vx, vy), 4, WHITE.stroke_width(1)))
                    .map_err(e)?;
            }
        }

        // Frame and tick marks (on top of the curves).
        let black = BLACK.stroke_width(1);
        let root_area = area.strip_coord_spec();
        let (ax, ay) = area.get_base_pixel();
        let local = |(px, py): (i32, i32)| (px - ax, py - ay);
        root_area
            .draw(&Rectangle::new(
                [local((x0, y0p)), local((x1p, y1p))],
                black,
            ))
            .map_err(e)?;
        for &t in &x.ticks {
            let (tx, _) = px((t, y.lo));
            root_area
                .draw(&PathElement::new(
                    vec![local((tx, y1p)), local((tx, y1p + 5))],
                    black,
                ))
                .map_err(e)?;
        }
        for &t in &y.ticks {
            let (_, ty) = px((x.lo, t));
            root_area
                .draw(&PathElement::new(
                    vec![local((x0 - 5, ty)), local((x0, ty))],
                    black,
                ))
                .map_err(e)?;
        }

        if with_legend {
            let entries = self.legend();
            let pad = 10;
            let sample = 40;
            let row = (text::line_height(LEGEND_SIZE) + 6.0).ceil() as i32;
            let text_w = entries
                .iter()
                .map(|(_, t)| text::width(t, LEGEND_SIZE))
                .fold(0.0, f64::max)
                .ceil() as i32;
            let w = pad * 3 + sample + text_w;
            let h = pad * 2 + row * entries.len() as i32;
            let (bx1, by0) = (x1p - 10, y0p + 10);
            let bx0 = bx1 - w;
            root_area
                .draw(&Rectangle::new(
                    [local((bx0, by0)), local((bx1, by0 + h))],
                    WHITE.mix(0.92).filled(),
                ))
                .map_err(e)?;
            root_area
                .draw(&Rectangle::new(
                    [local((bx0, by0)), local((bx1, by0 + h))],
                    RGBColor(160, 160, 160).stroke_width(1),
                ))
                .map_err(e)?;
            for (i, (c, t)) in entries.iter().enumerate() {
                let cy = by0 + pad + row * i as i32 + row / 2;
                let sx = bx0 + pad;
                root_area
                    .draw(&PathElement::new(
                        vec![local((sx, cy)), local((sx + sample, cy))],
                        c.stroke_width(2),
                    ))
                    .map_err(e)?;
                root_area
                    .draw(&Circle::new(local((sx + sample / 2, cy)), 4, c.filled()))
                    .map_err(e)?;
                labels.push(
                    Label::new(
                        t.clone(),
                        ((sx + sample + pad) as f64, cy as f64),
                        LEGEND_SIZE,
                    )
                    .align(HAlign::Left, VAlign::Center),
                );
            }
        }
        Ok(())
    }
}

fn fmt(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

/// A polyline cut to `lo <= y <= hi`: the pieces inside, ending where they cross the bounds.
pub fn clip(points: &[(f64, f64)], lo: f64, hi: f64) -> Vec<Vec<(f64, f64)>> {
    let inside = |p: (f64, f64)| p.1 >= lo && p.1 <= hi;
    let cross = |a: (f64, f64), b: (f64, f64), yb: f64| {
        let t = (yb - a.1) / (b.1 - a.1);
        (a.0 + t * (b.0 - a.0), yb)
    };
    let mut pieces = vec![];
    let mut cur: Vec<(f64, f64)> = vec![];
    for (i, &p) in points.iter().enumerate() {
        if i == 0 {
            if inside(p) {
                cur.push(p);
            }
            continue;
        }
        let a = points[i - 1];
        match (inside(a), inside(p)) {
            (true, true) => cur.push(p),
            (true, false) => {
                cur.push(cross(a, p, if p.1 > hi { hi } else { lo }));
                pieces.push(std::mem::take(&mut cur));
            }
            (false, true) => {
                cur.push(cross(a, p, if a.1 > hi { hi } else { lo }));
                cur.push(p);
            }
            (false, false) => {
                // Both outside: the segment may still pass through the band.
                if (a.1 > hi && p.1 < lo) || (a.1 < lo && p.1 > hi) {
                    let (ya, yb) = if a.1 > hi { (hi, lo) } else { (lo, hi) };
                    pieces.push(vec![cross(a, p, ya), cross(a, p, yb)]);
                }
            }
        }
    }
    if !cur.is_empty() {
        pieces.push(cur);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_cuts_at_the_bounds() {
        let pts = [(0.0, 10.0), (1.0, 4.0), (2.0, 3.0), (3.0, -1.0)];
        let pieces = clip(&pts, 0.0, 5.0);
        assert_eq!(pieces.len(), 1);
        let p = &pieces[0];
        assert_eq!(p[0], (0.0 + 5.0 / 6.0, 5.0));
        assert_eq!(p[1], (1.0, 4.0));
        assert_eq!(*p.last().unwrap(), (2.75, 0.0));
    }
}
