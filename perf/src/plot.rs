//! Dependency-free SVG bar charts for perf results.

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Height of a bar and the gap below it.
const BAR_H: f64 = 34.0;
const GAP: f64 = 14.0;

/// The geometry of a chart of horizontal bars: the labels' margin, the
/// size, the length of the longest bar.
struct Frame {
    left: f64,
    w: f64,
    h: f64,
    span: f64,
}

impl Frame {
    /// A frame for bars labelled `labels` below `top` pixels of header.
    fn new<'a>(labels: impl Iterator<Item = &'a str>, rows: usize, top: f64) -> Frame {
        // Room for the longest label (about 7.5 px a character at 13 px),
        // the plot keeping its 440 px.
        let longest = labels.map(|l| l.chars().count()).max().unwrap_or(0);
        let left = (12.0 + 7.5 * longest as f64).max(230.0);
        let w = left + 530.0;
        Frame {
            left,
            w,
            h: top + rows as f64 * (BAR_H + GAP) + 40.0,
            span: w - left - 90.0,
        }
    }

    /// The opening of the SVG document with its title.
    fn open(&self, title: &str) -> String {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"13\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"12\" y=\"26\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
            self.w,
            self.h,
            esc(title)
        )
    }

    /// The unit line and the end of the document.
    fn close(&self, unit: &str) -> String {
        format!(
            "<text x=\"{}\" y=\"{}\" fill=\"#555\">{}</text>\n</svg>\n",
            self.left,
            self.h - 12.0,
            esc(unit)
        )
    }
}

/// Horizontal bars, one per `(label, value)`, with the value printed.
pub fn bar_chart(title: &str, unit: &str, bars: &[(String, f64)]) -> String {
    let top = 50.0;
    let f = Frame::new(bars.iter().map(|b| b.0.as_str()), bars.len(), top);
    let (left, span, bar_h, gap) = (f.left, f.span, BAR_H, GAP);
    let max = bars.iter().map(|b| b.1).fold(0.0f64, f64::max).max(1e-9);
    let colors = ["#2b6cb0", "#9b2c2c", "#2f855a", "#b7791f", "#6b46c1"];
    let mut s = f.open(title);
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = top + i as f64 * (bar_h + gap);
        let len = (v / max) * span;
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n<rect x=\"{left}\" y=\"{y}\" width=\"{len:.1}\" height=\"{bar_h}\" fill=\"{}\"/>\n<text x=\"{:.1}\" y=\"{}\">{v:.1}</text>\n",
            left - 8.0,
            y + bar_h * 0.65,
            esc(label),
            colors[i % colors.len()],
            left + len + 6.0,
            y + bar_h * 0.65
        );
    }
    s += &f.close(unit);
    s
}

/// Horizontal stacked bars, one per `(label, parts)`, each part of
/// `parts` a segment named by `segments` in that order (with a legend),
/// and each bar's total printed after it.
pub fn stacked_bars(
    title: &str,
    unit: &str,
    segments: &[&str],
    bars: &[(String, Vec<f64>)],
) -> String {
    // Room for the legend under the title.
    let top = 76.0;
    let f = Frame::new(bars.iter().map(|b| b.0.as_str()), bars.len(), top);
    let (left, span, bar_h, gap) = (f.left, f.span, BAR_H, GAP);
    let total = |parts: &[f64]| parts.iter().map(|v| v.max(0.0)).sum::<f64>();
    let max = bars
        .iter()
        .map(|b| total(&b.1))
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let colors = ["#2b6cb0", "#b7791f", "#2f855a", "#9b2c2c", "#6b46c1"];
    let mut s = f.open(title);
    for (k, name) in segments.iter().enumerate() {
        let x = left + 90.0 * k as f64;
        s += &format!(
            "<rect x=\"{x}\" y=\"40\" width=\"14\" height=\"14\" fill=\"{}\"/>\n<text x=\"{}\" y=\"52\">{}</text>\n",
            colors[k % colors.len()],
            x + 19.0,
            esc(name)
        );
    }
    for (i, (label, parts)) in bars.iter().enumerate() {
        let y = top + i as f64 * (bar_h + gap);
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n",
            left - 8.0,
            y + bar_h * 0.65,
            esc(label)
        );
        let mut x = left;
        for (k, v) in parts.iter().enumerate() {
            let len = v.max(0.0) / max * span;
            if len > 0.0 {
                s += &format!(
                    "<rect x=\"{x:.1}\" y=\"{y}\" width=\"{len:.1}\" height=\"{bar_h}\" fill=\"{}\"/>\n",
                    colors[k % colors.len()]
                );
            }
            x += len;
        }
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\">{:.1}</text>\n",
            x + 6.0,
            y + bar_h * 0.65,
            total(parts)
        );
    }
    s += &f.close(unit);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacked_bars_have_a_segment_per_part_and_a_legend() {
        let svg = stacked_bars(
            "t",
            "u",
            &["rx", "parse", "tx"],
            &[
                ("floor".into(), vec![60.0, 0.0, 90.0]),
                ("ovn".into(), vec![60.0, 30.0, 130.0]),
            ],
        );
        // Three legend squares, two segments for the floor (its empty
        // parse draws nothing) and three for the other.
        assert_eq!(svg.matches("<rect x=").count(), 3 + 2 + 3);
        assert!(svg.contains(">220.0<") && svg.contains(">150.0<"), "{svg}");
        // The longest bar spans the plot: its last segment ends there.
        let left = 230.0;
        assert!(
            svg.contains(&format!("<rect x=\"{:.1}\"", left + 90.0 / 220.0 * 440.0)),
            "{svg}"
        );
    }

    #[test]
    fn chart_has_a_bar_per_value_and_escapes_labels() {
        let svg = bar_chart("t", "u", &[("a<b".into(), 10.0), ("c".into(), 5.0)]);
        assert_eq!(svg.matches("<rect x=").count(), 2);
        assert!(svg.contains("a&lt;b"));
        assert!(
            svg.contains("width=\"440.0\""),
            "the largest bar spans the plot"
        );
    }

    #[test]
    fn long_labels_widen_the_margin_not_shrink_the_plot() {
        let label = "round 12: xconnect floor (100000 flows)".to_string();
        let svg = bar_chart("t", "u", &[(label.clone(), 10.0)]);
        let left = 12.0 + 7.5 * label.len() as f64;
        assert!(left > 230.0);
        assert!(svg.contains(&format!("<rect x=\"{left}\"")), "{svg}");
        assert!(svg.contains("width=\"440.0\""));
    }
}
