//! Line plots as inline SVG for `keel report` and `keel compare`: a faint
//! raw line under an EMA-smoothed one (TensorBoard's debiased smoothing),
//! a band (min–max over seeds) when one is given, axis ticks at round
//! numbers with a grid, a legend, and a constant series labelled as such.

use std::fmt::Write as _;

pub const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf",
];

/// The smoothing weight of [`ema`] in the plots (TensorBoard's default
/// slider is 0.6; per-step RL metrics are noisier).
pub const SMOOTHING: f64 = 0.8;

/// Series with more points than this are smoothed, if they are dense
/// ([`smoothed`]); sparser ones are drawn as they are.
pub const SMOOTH_FROM: usize = 12;

/// Whether a series is smoothed: more than [`SMOOTH_FROM`] points, logged
/// at (nearly) every step — on average at most two steps apart. A
/// held-out evaluation every 25 steps is drawn as it is, however long the
/// run: its last point is the final value, not an average lagging behind.
pub fn smoothed(points: &[(f64, f64)]) -> bool {
    let n = points.len();
    if n <= SMOOTH_FROM {
        return false;
    }
    let span = points[n - 1].0 - points[0].0;
    span / (n - 1) as f64 <= 2.0
}

/// (x, lo, hi): one step of a band.
pub type Band = (f64, f64, f64);

/// One line of a plot.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub name: String,
    /// (x, y), x increasing.
    pub points: Vec<(f64, f64)>,
    /// (x, lo, hi): the band drawn behind the line (min–max over seeds).
    pub band: Vec<Band>,
}

/// TensorBoard's smoothing: an exponential moving average with weight `w`,
/// debiased so that the first points are not pulled towards 0.
pub fn ema(points: &[(f64, f64)], w: f64) -> Vec<(f64, f64)> {
    let (mut last, mut debias) = (0.0, 0.0);
    points
        .iter()
        .map(|&(x, y)| {
            last = last * w + (1.0 - w) * y;
            debias = debias * w + (1.0 - w);
            (x, last / debias)
        })
        .collect()
}

/// About `n` round tick values (1, 2 or 5 × 10^k apart) covering [lo, hi].
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater)
        || !lo.is_finite()
        || !hi.is_finite()
    {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A number as an axis label: short, without float noise.
pub fn label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e4 || v.abs() < 1e-3 {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    }
}

/// One figure: `series` over steps, dashed vertical lines at `events`.
pub fn figure(title: &str, series: &[Series], events: &[f64]) -> String {
    let Some(f) = Frame::of(series) else {
        return String::new();
    };
    // The legend sits below the plot area, one row a series, not over the
    // curves.
    let rows = if series.len() > 1 {
        series.len()
    } else {
        usize::from(f.constant)
    };
    let mut o = String::new();
    f.axes(&mut o, title, LEGEND_ROW * rows as f64);
    for &e in events {
        if e >= f.x0 && e <= f.x1 {
            let x = f.sx(e);
            let _ = write!(
                o,
                "<line class=\"event\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"#e377c2\" stroke-dasharray=\"3,3\"/>",
                T,
                HGT - B
            );
        }
    }
    for (k, s) in series.iter().enumerate() {
        f.series(&mut o, k, s, series.len() > 1);
    }
    o.push_str("</svg></figure>");
    o
}

/// The figure's size and margins (left, bottom, top, right).
const W: f64 = 440.0;
const HGT: f64 = 240.0;
const L: f64 = 60.0;
const B: f64 = 34.0;
const T: f64 = 10.0;
const R: f64 = 10.0;
/// The height of one legend row, below the figure.
const LEGEND_ROW: f64 = 14.0;

/// The data ranges a figure maps to its plot area.
struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    /// Every value is the same (the range is padded around it).
    constant: bool,
}

impl Frame {
    /// The ranges of every point and band of `series` (padded by 5 %),
    /// `None` when there is no point.
    fn of(series: &[Series]) -> Option<Frame> {
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for s in series {
            for &(x, y) in &s.points {
                xs.push(x);
                ys.push(y);
            }
            for &(x, lo, hi) in &s.band {
                xs.push(x);
                ys.extend([lo, hi]);
            }
        }
        let fold = |v: &[f64], f: fn(f64, f64) -> f64, init: f64| v.iter().copied().fold(init, f);
        let (x0, mut x1) = (fold(&xs, f64::min, f64::MAX), fold(&xs, f64::max, f64::MIN));
        let (mut y0, mut y1) = (fold(&ys, f64::min, f64::MAX), fold(&ys, f64::max, f64::MIN));
        if xs.is_empty() {
            return None;
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let constant = y1 <= y0;
        if constant {
            let pad = if y0 == 0.0 { 1.0 } else { y0.abs() * 0.5 };
            y1 = y0 + pad;
            y0 -= pad;
        } else {
            let pad = (y1 - y0) * 0.05;
            y0 -= pad;
            y1 += pad;
        }
        Some(Frame {
            x0,
            x1,
            y0,
            y1,
            constant,
        })
    }

    fn sx(&self, x: f64) -> f64 {
        L + (x - self.x0) / (self.x1 - self.x0) * (W - L - R)
    }

    fn sy(&self, y: f64) -> f64 {
        T + (1.0 - (y - self.y0) / (self.y1 - self.y0)) * (HGT - T - B)
    }

    /// The caption, the plot area, the grid with its tick labels, and the
    /// x axis's name.
    /// `legend` is the height added below for the legend.
    fn axes(&self, o: &mut String, title: &str, legend: f64) {
        let (w, hgt, l, b, t, r) = (W, HGT, L, B, T, R);
        let _ = write!(
            o,
            "<figure><figcaption>{0}</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{3}\" role=\"img\" aria-label=\"{0}\">\
<rect x=\"{l}\" y=\"{t}\" width=\"{1}\" height=\"{2}\" fill=\"#fcfcfc\" stroke=\"#bbb\"/>",
            esc(title),
            w - l - r,
            hgt - t - b,
            hgt + legend
        );
        for y in ticks(self.y0, self.y1, 5) {
            let py = self.sy(y);
            let _ = write!(
                o,
                "<line class=\"grid\" x1=\"{l}\" x2=\"{:.1}\" y1=\"{py:.1}\" y2=\"{py:.1}\" stroke=\"#e5e5e5\"/>\
<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{}</text>",
                w - r,
                l - 4.0,
                py + 3.0,
                label(y)
            );
        }
        for x in ticks(self.x0, self.x1, 5) {
            let px = self.sx(x);
            let _ = write!(
                o,
                "<line class=\"grid\" x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{t}\" y2=\"{:.1}\" stroke=\"#e5e5e5\"/>\
<text x=\"{px:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
                hgt - b,
                hgt - b + 12.0,
                label(x)
            );
        }
        let _ = write!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">step</text>",
            l + (w - l - r) / 2.0,
            hgt - 4.0
        );
    }

    /// Points as an SVG `points` list.
    fn line(&self, p: &[(f64, f64)]) -> String {
        p.iter()
            .map(|(x, y)| format!("{:.1},{:.1}", self.sx(*x), self.sy(*y)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Series `k`: its band, its line (smoothed over the faint raw values
    /// when long enough) or point, and its legend entry (where there are
    /// several series, or the values are constant).
    fn series(&self, o: &mut String, k: usize, s: &Series, several: bool) {
        let c = COLORS[k % COLORS.len()];
        if s.band.len() > 1 {
            let mut pts: Vec<String> = s
                .band
                .iter()
                .map(|&(x, _, hi)| format!("{:.1},{:.1}", self.sx(x), self.sy(hi)))
                .collect();
            pts.extend(
                s.band
                    .iter()
                    .rev()
                    .map(|&(x, lo, _)| format!("{:.1},{:.1}", self.sx(x), self.sy(lo))),
            );
            let _ = write!(
                o,
                "<polygon class=\"band\" fill=\"{c}\" fill-opacity=\"0.15\" stroke=\"none\" points=\"{}\"/>",
                pts.join(" ")
            );
        }
        let constant = self.constant;
        match s.points.len() {
            0 => {}
            1 => {
                let _ = write!(
                    o,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"/>",
                    self.sx(s.points[0].0),
                    self.sy(s.points[0].1)
                );
            }
            _ => {
                // The raw values, faint, when smoothing changes them.
                let smooth_it = smoothed(&s.points) && !constant;
                if smooth_it {
                    let _ = write!(
                        o,
                        "<polyline class=\"raw\" fill=\"none\" stroke=\"{c}\" stroke-opacity=\"0.25\" stroke-width=\"1\" points=\"{}\"/>",
                        self.line(&s.points)
                    );
                }
                let smooth = if smooth_it {
                    ema(&s.points, SMOOTHING)
                } else {
                    s.points.clone()
                };
                let _ = write!(
                    o,
                    "<polyline class=\"series\" fill=\"none\" stroke=\"{c}\" stroke-width=\"1.8\" points=\"{}\"/>",
                    self.line(&smooth)
                );
            }
        }
        let name = if constant && !s.points.is_empty() {
            format!("{} (constant {})", s.name, label(s.points[0].1))
        } else {
            s.name.clone()
        };
        if several || constant {
            let _ = write!(
                o,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"3\" fill=\"{c}\"/><text class=\"legend\" x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#333\">{}</text>",
                L + 6.0,
                HGT + 2.0 + LEGEND_ROW * k as f64,
                L + 20.0,
                HGT + 6.0 + LEGEND_ROW * k as f64,
                esc(&name)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The legend of several series lies below the plot area (and the
    /// "step" label), in a figure tall enough for it: no entry over a curve.
    #[test]
    fn legends_sit_below_the_curves() {
        let series: Vec<Series> = (0..3)
            .map(|k| Series {
                name: format!("arm {k}"),
                points: (0..10).map(|x| (x as f64, (x * k) as f64)).collect(),
                band: Vec::new(),
            })
            .collect();
        let svg = figure("pass@1", &series, &[]);
        assert!(
            svg.contains(&format!("height=\"{}\"", HGT + 3.0 * LEGEND_ROW)),
            "{svg}"
        );
        let ys: Vec<f64> = svg
            .split("<text class=\"legend\"")
            .skip(1)
            .filter_map(|t| t.split("y=\"").nth(1)?.split('"').next()?.parse().ok())
            .collect();
        assert_eq!(ys.len(), 3, "{svg}");
        assert!(
            ys.iter().all(|&y| y > HGT && y < HGT + 3.0 * LEGEND_ROW),
            "{ys:?}"
        );
    }

    #[test]
    fn ema_is_tensorboards_debiased_average() {
        // w = 0.5 on 2, 4, 0: last = 1, 2.5, 1.25; debias = 0.5, 0.75,
        // 0.875; smoothed = 2, 3.333…, 1.428….
        let s = ema(&[(0.0, 2.0), (1.0, 4.0), (2.0, 0.0)], 0.5);
        assert_eq!(s[0], (0.0, 2.0));
        assert!((s[1].1 - 2.5 / 0.75).abs() < 1e-12, "{s:?}");
        assert!((s[2].1 - 1.25 / 0.875).abs() < 1e-12, "{s:?}");
        // A constant stays constant.
        assert!(
            ema(&[(0.0, 3.0), (1.0, 3.0), (2.0, 3.0)], 0.9)
                .iter()
                .all(|p| (p.1 - 3.0).abs() < 1e-12)
        );
    }

    /// Only dense series are smoothed: a held-out evaluation every 25 steps
    /// (13 points over 300 steps) is drawn as it is, its last point the
    /// final value; a per-step series of 13 points is smoothed.
    #[test]
    fn sparse_series_are_drawn_as_they_are() {
        let eval: Vec<(f64, f64)> = (0..13)
            .map(|k| (25.0 * k as f64, 0.3 + 0.01 * k as f64))
            .collect();
        let step: Vec<(f64, f64)> = (1..14).map(|k| (k as f64, 0.3 + 0.01 * k as f64)).collect();
        assert!(!smoothed(&eval) && smoothed(&step) && !smoothed(&step[..12]));
        let one = |points: Vec<(f64, f64)>| {
            figure(
                "t",
                &[Series {
                    name: "a".into(),
                    points,
                    band: Vec::new(),
                }],
                &[],
            )
        };
        assert!(!one(eval).contains("class=\"raw\""));
        assert!(one(step).contains("class=\"raw\""));
    }

    #[test]
    fn ticks_are_round_and_inside() {
        assert_eq!(
            ticks(0.0, 1.0, 5),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        assert_eq!(ticks(0.0, 300.0, 5), vec![0.0, 100.0, 200.0, 300.0]);
        let t = ticks(-0.013, 0.037, 5);
        assert_eq!(t.first().copied(), Some(-0.01));
        assert!(t.iter().all(|x| (-0.013..=0.037).contains(x)), "{t:?}");
        assert_eq!(ticks(1.0, 1.0, 5), vec![1.0]);
    }

    #[test]
    fn a_constant_series_is_labelled_and_not_smoothed() {
        let s = Series {
            name: "clip_frac".into(),
            points: (0..20).map(|i| (i as f64, 0.0)).collect(),
            band: Vec::new(),
        };
        let svg = figure("clip fraction", &[s], &[]);
        assert!(svg.contains("clip_frac (constant 0)"), "{svg}");
        assert!(!svg.contains("class=\"raw\""));
        assert_eq!(svg.matches("class=\"series\"").count(), 1);
    }
}
