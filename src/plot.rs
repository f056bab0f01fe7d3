//! Pictures of results: training curves and confusion matrices as PNG, drawn with
//! embedded-graphics' built-in bitmap fonts so that nothing depends on the fonts of the machine.

use std::path::Path;

use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::mono_font::ascii::{FONT_6X10, FONT_7X13_BOLD};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Line, PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Text};

/// An RGB picture to draw on.
pub struct Canvas {
    w: u32,
    h: u32,
    rgb: Vec<u8>,
}

impl Canvas {
    /// A white canvas.
    pub fn new(w: u32, h: u32) -> Self {
        Self { w, h, rgb: vec![255; (w * h * 3) as usize] }
    }

    /// Writes it as a PNG.
    pub fn save(&self, path: &Path) -> Result<(), image::ImageError> {
        image::save_buffer(path, &self.rgb, self.w, self.h, image::ExtendedColorType::Rgb8)
    }

    /// The pixels, RGB rows.
    pub fn pixels(&self) -> &[u8] {
        &self.rgb
    }

    fn text(&mut self, s: &str, x: i32, y: i32, align: Alignment, bold: bool, color: Rgb888) {
        let font = if bold { &FONT_7X13_BOLD } else { &FONT_6X10 };
        let _ = Text::with_alignment(s, Point::new(x, y), MonoTextStyle::new(font, color), align).draw(self);
    }

    fn line(&mut self, a: (i32, i32), b: (i32, i32), color: Rgb888, width: u32) {
        let _ = Line::new(Point::new(a.0, a.1), Point::new(b.0, b.1))
            .into_styled(PrimitiveStyle::with_stroke(color, width))
            .draw(self);
    }

    fn fill(&mut self, x: i32, y: i32, w: u32, h: u32, color: Rgb888) {
        let _ =
            Rectangle::new(Point::new(x, y), Size::new(w, h)).into_styled(PrimitiveStyle::with_fill(color)).draw(self);
    }
}

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(self.w, self.h)
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = core::convert::Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(&mut self, pixels: I) -> Result<(), Self::Error> {
        for Pixel(p, c) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < self.w && (p.y as u32) < self.h {
                let i = ((p.y as u32 * self.w + p.x as u32) * 3) as usize;
                self.rgb[i..i + 3].copy_from_slice(&[c.r(), c.g(), c.b()]);
            }
        }
        Ok(())
    }
}

/// A named line of (x, y) points.
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// Colour.
    pub color: Rgb888,
    /// Points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// Tick positions: about `n` round numbers covering [lo, hi].
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    (0..).map(|i| first + i as f64 * step).take_while(|v| *v <= hi + step * 1e-9).collect()
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if (v * 10.0).round() == v * 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Draws a line chart into the rectangle (x, y, w, h) of `c`.
#[allow(clippy::too_many_arguments)]
pub fn line_chart(c: &mut Canvas, [x0, y0, w, h]: [i32; 4], title: &str, xlabel: &str, series: &[Series]) {
    let black = Rgb888::BLACK;
    let grey = Rgb888::new(225, 225, 225);
    let (l, r, t, b) = (x0 + 48, x0 + w - 12, y0 + 26, y0 + h - 34);
    let pts = series.iter().flat_map(|s| s.points.iter()).filter(|p| p.1.is_finite());
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        xmin = xmin.min(x);
        xmax = xmax.max(x);
        ymin = ymin.min(y);
        ymax = ymax.max(y);
    }
    if xmin > xmax {
        (xmin, xmax, ymin, ymax) = (0.0, 1.0, 0.0, 1.0);
    }
    if xmax - xmin < 1e-12 {
        xmax = xmin + 1.0;
    }
    let pad = ((ymax - ymin) * 0.05).max(1e-6);
    let (ymin, ymax) = (ymin - pad, ymax + pad);
    let px = |x: f64| l + ((x - xmin) / (xmax - xmin) * (r - l) as f64).round() as i32;
    let py = |y: f64| b - ((y - ymin) / (ymax - ymin) * (b - t) as f64).round() as i32;
    c.text(title, x0 + w / 2, y0 + 14, Alignment::Center, true, black);
    for v in ticks(ymin, ymax, 6) {
        c.line((l, py(v)), (r, py(v)), grey, 1);
        c.text(&fmt_tick(v), l - 4, py(v) + 3, Alignment::Right, false, black);
    }
    // Epochs and other whole-number axes get whole-number ticks.
    let whole = series.iter().flat_map(|s| s.points.iter()).all(|p| p.0 == p.0.round());
    for v in ticks(xmin, xmax, 8).into_iter().filter(|v| !whole || *v == v.round()) {
        c.line((px(v), b), (px(v), b + 3), black, 1);
        c.text(&fmt_tick(v), px(v), b + 13, Alignment::Center, false, black);
    }
    c.line((l, t), (l, b), black, 1);
    c.line((l, b), (r, b), black, 1);
    c.text(xlabel, (l + r) / 2, b + 27, Alignment::Center, false, black);
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<(i32, i32)> = s.points.iter().filter(|p| p.1.is_finite()).map(|&(x, y)| (px(x), py(y))).collect();
        for seg in pts.windows(2) {
            c.line(seg[0], seg[1], s.color, 2);
        }
        for &p in &pts {
            c.fill(p.0 - 2, p.1 - 2, 5, 5, s.color);
        }
        let ly = t + 6 + 14 * i as i32;
        c.fill(r - 110, ly - 4, 14, 4, s.color);
        c.text(&s.name, r - 92, ly + 2, Alignment::Left, false, black);
    }
}

/// Colours of the curves.
pub const BLUE: Rgb888 = Rgb888::new(31, 119, 180);
/// Colours of the curves.
pub const ORANGE: Rgb888 = Rgb888::new(255, 127, 14);

/// Training curves: loss (train and test) and accuracy (train and test) per epoch, side by side.
pub fn training_curves(epochs: &[(usize, f64, f64, f64, f64)], title: &str) -> Canvas {
    let mut c = Canvas::new(960, 400);
    let pick = |f: fn(&(usize, f64, f64, f64, f64)) -> f64| -> Vec<(f64, f64)> {
        epochs.iter().map(|e| (e.0 as f64, f(e))).collect()
    };
    let loss = [
        Series { name: "train loss".into(), color: BLUE, points: pick(|e| e.1) },
        Series { name: "test loss".into(), color: ORANGE, points: pick(|e| e.3) },
    ];
    let acc = [
        Series { name: "train acc %".into(), color: BLUE, points: pick(|e| e.2 * 100.0) },
        Series { name: "test acc %".into(), color: ORANGE, points: pick(|e| e.4 * 100.0) },
    ];
    line_chart(&mut c, [0, 20, 480, 380], "loss", "epoch", &loss);
    line_chart(&mut c, [480, 20, 480, 380], "accuracy (%)", "epoch", &acc);
    c.text(title, 480, 14, Alignment::Center, true, Rgb888::BLACK);
    c
}

/// A confusion matrix (`m[true][predicted]`) as a heatmap with the counts written in; rows are
/// coloured by their share so that small classes read as well as large ones.
pub fn confusion(m: &[Vec<usize>], names: &[String], title: &str) -> Canvas {
    let k = m.len();
    let cell = if k <= 12 { 44 } else { (640 / k.max(1)).max(4) } as i32;
    let left = 16 + 6 * names.iter().map(|n| n.len()).max().unwrap_or(1).min(16) as i32;
    let top = 48;
    let w = (left + cell * k as i32 + 20) as u32;
    let h = (top + cell * k as i32 + 40) as u32;
    let mut c = Canvas::new(w.max(300).max(title.len() as u32 * 7 + 20), h);
    let w = c.w;
    c.text(title, w as i32 / 2, 16, Alignment::Center, true, Rgb888::BLACK);
    c.text("predicted ->", left + cell * k as i32 / 2, 36, Alignment::Center, false, Rgb888::BLACK);
    for (i, row) in m.iter().enumerate() {
        let total = row.iter().sum::<usize>().max(1) as f64;
        let name: String = names.get(i).map_or(i.to_string(), |n| n.chars().take(16).collect());
        c.text(&name, left - 4, top + cell * i as i32 + cell / 2 + 3, Alignment::Right, false, Rgb888::BLACK);
        for (j, &v) in row.iter().enumerate() {
            let share = v as f64 / total;
            // White to dark blue.
            let shade = |full: f64| (255.0 - share.sqrt() * (255.0 - full)) as u8;
            let color = Rgb888::new(shade(8.0), shade(48.0), shade(107.0));
            let (x, y) = (left + cell * j as i32, top + cell * i as i32);
            c.fill(x, y, cell as u32 - 1, cell as u32 - 1, color);
            if cell >= 28 && v > 0 {
                let ink = if share > 0.35 { Rgb888::WHITE } else { Rgb888::BLACK };
                c.text(&v.to_string(), x + cell / 2, y + cell / 2 + 3, Alignment::Center, false, ink);
            }
        }
    }
    c.text("rows: true class", left, top + cell * k as i32 + 20, Alignment::Left, false, Rgb888::BLACK);
    c
}

/// The first `count` channels of a feature map `[c, h, w]` as a grid of gray tiles, each channel
/// stretched to its own range (a constant channel is mid-gray), magnified by whole pixels to at
/// least 48 pixels a side.
pub fn feature_grid(map: &[f32], [c, h, w]: [usize; 3], count: usize) -> Canvas {
    let n = count.clamp(1, c.max(1));
    let cols = (n as f64).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let zoom = 48usize.div_ceil(h.max(w).max(1)).max(1);
    let (th, tw, gap) = (h * zoom, w * zoom, 2usize);
    let mut canvas = Canvas::new((cols * (tw + gap) + gap) as u32, (rows * (th + gap) + gap) as u32);
    for ch in 0..n {
        let plane = &map[ch * h * w..(ch + 1) * h * w];
        let (lo, hi) = plane.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let (x0, y0) = (gap + (ch % cols) * (tw + gap), gap + (ch / cols) * (th + gap));
        for y in 0..th {
            for x in 0..tw {
                let v = plane[(y / zoom) * w + x / zoom];
                let g = if hi > lo { ((v - lo) / (hi - lo) * 255.0).round() as u8 } else { 128 };
                let i = (((y0 + y) * canvas.w as usize) + x0 + x) * 3;
                canvas.rgb[i..i + 3].copy_from_slice(&[g, g, g]);
            }
        }
    }
    canvas
}

/// RGB pictures (`[h, w, 3]` bytes, all of one size) side by side in rows of `cols`, each with a
/// caption under it.
pub fn image_sheet(tiles: &[(Vec<u8>, String)], [h, w]: [usize; 2], cols: usize) -> Canvas {
    let cols = cols.clamp(1, tiles.len().max(1));
    let rows = tiles.len().div_ceil(cols);
    let (gap, caption) = (6usize, 14usize);
    let mut canvas = Canvas::new((cols * (w + gap) + gap) as u32, (rows * (h + caption + gap) + gap) as u32);
    for (k, (rgb, text)) in tiles.iter().enumerate() {
        assert_eq!(rgb.len(), h * w * 3, "tiles of one size");
        let (x0, y0) = (gap + (k % cols) * (w + gap), gap + (k / cols) * (h + caption + gap));
        for y in 0..h {
            let dst = ((y0 + y) * canvas.w as usize + x0) * 3;
            canvas.rgb[dst..dst + w * 3].copy_from_slice(&rgb[y * w * 3..(y + 1) * w * 3]);
        }
        let mid = (x0 + w / 2) as i32;
        canvas.text(text, mid, (y0 + h + 11) as i32, Alignment::Center, false, Rgb888::BLACK);
    }
    canvas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheets_place_tiles_in_rows_with_captions() {
        let red = [255u8, 0, 0].repeat(4 * 5);
        let blue = [0u8, 0, 255].repeat(4 * 5);
        let c = image_sheet(&[(red, "a".into()), (blue.clone(), "b".into()), (blue, "c".into())], [4, 5], 2);
        assert_eq!((c.w, c.h), (2 * (5 + 6) + 6, 2 * (4 + 14 + 6) + 6));
        let px = |x: usize, y: usize| {
            let i = (y * c.w as usize + x) * 3;
            [c.rgb[i], c.rgb[i + 1], c.rgb[i + 2]]
        };
        assert_eq!(px(6, 6), [255, 0, 0]);
        assert_eq!(px(6 + 11, 6), [0, 0, 255]);
        assert_eq!(px(6, 6 + 24), [0, 0, 255], "the third tile starts the second row");
        assert_eq!(px(5, 6), [255, 255, 255]);
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 1.0, 5), vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        let t = ticks(0.87, 0.945, 6);
        assert!(t.len() >= 3 && t.windows(2).all(|w| w[1] > w[0]));
        assert!(t[0] >= 0.87 && *t.last().unwrap() <= 0.945 + 1e-9);
    }

    #[test]
    fn confusion_cells_darken_with_their_share() {
        let m = vec![vec![90, 10], vec![0, 100]];
        let c = confusion(&m, &["a".into(), "b".into()], "t");
        let px = |x: i32, y: i32| {
            let i = ((y as u32 * c.w + x as u32) * 3) as usize;
            c.rgb[i] as u32 + c.rgb[i + 1] as u32 + c.rgb[i + 2] as u32
        };
        let left = 16 + 6;
        // Corner pixels of cells (away from the digits): the 90% cell is darker than the 10% one,
        // and the empty cell is white.
        let (c00, c01, c10) = (px(left + 2, 50), px(left + 44 + 2, 50), px(left + 2, 48 + 44 + 2));
        assert!(c00 < c01, "{c00} {c01}");
        assert_eq!(c10, 765);
    }
}
