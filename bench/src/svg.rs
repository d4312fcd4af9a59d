//! `target/bench/results.svg`: the results table as a chart, written by hand (a few
//! dozen elements do not need a plotting library).
//!
//! One panel per test (each test has its own unit and scale), one horizontal bar per
//! path, the value at the end of the bar, each weft path's ratio to the kernel anchor
//! beside it, and a dashed line at the anchor's value so "how far from the kernel" is
//! visible without reading numbers.

use std::fmt::Write as _;

use crate::results::{format_value, Path, Results, Test, ANCHOR};

const WIDTH: f64 = 1080.0;
const COLUMNS: usize = 3;
const MARGIN: f64 = 20.0;
const HEADER: f64 = 64.0;
const PANEL_GAP: f64 = 18.0;
const PANEL_TITLE: f64 = 46.0;
const BAR_ROW: f64 = 30.0;
const BAR_HEIGHT: f64 = 20.0;
const LABEL_WIDTH: f64 = 96.0;
/// Room right of the longest bar for "12.4 · 1.03×".
const VALUE_ROOM: f64 = 96.0;

fn colour(path: Path) -> &'static str {
    match path {
        Path::Veth => "#b0bec5",
        Path::HostGw => "#78909c",
        Path::KernelVxlan => "#37474f",
        Path::WeftVxlan => "#e65100",
        Path::WeftIpip => "#fb8c00",
    }
}

/// Escapes text for XML character data and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(c),
        }
    }
    out
}

/// Renders the chart. Every run becomes exactly one `rect.bar` (a value) or one
/// `g.failed` (an error), so the picture cannot silently drop a result.
pub fn render(results: &Results) -> String {
    let paths = results.paths();
    let tests = results.tests();
    let panel_width = (WIDTH - 2.0 * MARGIN - (COLUMNS as f64 - 1.0) * PANEL_GAP) / COLUMNS as f64;
    let panel_height = PANEL_TITLE + BAR_ROW * paths.len() as f64 + 10.0;
    let rows = tests.len().div_ceil(COLUMNS);
    let height = HEADER + rows as f64 * (panel_height + PANEL_GAP) + MARGIN;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="system-ui, -apple-system, 'Segoe UI', sans-serif">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        svg,
        r##"<text x="{MARGIN}" y="30" font-size="20" font-weight="600" fill="#212121">weft-bench: pod to pod across two lab nodes</text>"##
    );
    let subtitle = format!(
        "{} · ratios are weft ÷ {} in this run (dashed line)",
        results.describe(),
        ANCHOR.name()
    );
    let _ = writeln!(
        svg,
        r##"<text x="{MARGIN}" y="50" font-size="12" fill="#616161">{}</text>"##,
        escape(&subtitle)
    );

    for (i, &test) in tests.iter().enumerate() {
        let x = MARGIN + (i % COLUMNS) as f64 * (panel_width + PANEL_GAP);
        let y = HEADER + (i / COLUMNS) as f64 * (panel_height + PANEL_GAP);
        panel(
            &mut svg,
            results,
            &paths,
            test,
            x,
            y,
            panel_width,
            panel_height,
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[allow(clippy::too_many_arguments)]
fn panel(
    svg: &mut String,
    results: &Results,
    paths: &[Path],
    test: Test,
    x: f64,
    y: f64,
    width: f64,
    height: f64,
) {
    let better = if test.higher_is_better() {
        "higher is better"
    } else {
        "lower is better"
    };
    let _ = writeln!(svg, r#"<g class="panel" data-test="{}">"#, test.name());
    let _ = writeln!(
        svg,
        r##"<rect x="{x:.1}" y="{y:.1}" width="{width:.1}" height="{height:.1}" rx="6" fill="#fafafa" stroke="#e0e0e0"/>"##
    );
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" font-size="15" font-weight="600" fill="#212121">{} <tspan font-weight="400" fill="#616161">{}</tspan></text>"##,
        x + 12.0,
        y + 22.0,
        escape(test.name()),
        escape(test.unit())
    );
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#757575">{} · {better}</text>"##,
        x + 12.0,
        y + 38.0,
        escape(test.describe())
    );

    let bar_x = x + 12.0 + LABEL_WIDTH;
    let bar_room = (width - 24.0 - LABEL_WIDTH - VALUE_ROOM).max(10.0);
    let max = paths
        .iter()
        .filter_map(|&p| results.value(p, test))
        .fold(0.0_f64, f64::max);
    let scale = |v: f64| if max > 0.0 { v / max * bar_room } else { 0.0 };

    // Drawn first so bars and labels sit on top of it.
    if let Some(anchor) = results.value(ANCHOR, test) {
        let line_x = bar_x + scale(anchor);
        let top = y + PANEL_TITLE - 4.0;
        let bottom = y + PANEL_TITLE + paths.len() as f64 * BAR_ROW - 4.0;
        let _ = writeln!(
            svg,
            r##"<line class="anchor" x1="{line_x:.1}" y1="{top:.1}" x2="{line_x:.1}" y2="{bottom:.1}" stroke="#90a4ae" stroke-width="1" stroke-dasharray="4 3"/>"##
        );
    }
    for (row, &path) in paths.iter().enumerate() {
        let row_y = y + PANEL_TITLE + row as f64 * BAR_ROW;
        let text_y = row_y + BAR_HEIGHT / 2.0 + 4.0;
        let weight = if path.is_weft() { "600" } else { "400" };
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{text_y:.1}" font-size="12" font-weight="{weight}" fill="#424242" text-anchor="end">{}</text>"##,
            bar_x - 8.0,
            escape(path.name())
        );
        let Some(run) = results.find(path, test) else {
            continue;
        };
        match run.value {
            Some(value) => {
                let w = scale(value).max(1.0);
                let _ = writeln!(
                    svg,
                    r#"<rect class="bar" data-path="{}" data-value="{value}" x="{bar_x:.1}" y="{row_y:.1}" width="{w:.1}" height="{BAR_HEIGHT}" rx="2" fill="{}"><title>{} {}: {} {}</title></rect>"#,
                    path.name(),
                    colour(path),
                    path.name(),
                    test.name(),
                    format_value(value),
                    escape(test.unit())
                );
                let mut label = format_value(value);
                let mut ratio_span = String::new();
                if path.is_weft() {
                    if let Some(ratio) = results.ratio_to_anchor(path, test) {
                        let good = if test.higher_is_better() {
                            ratio >= 1.0
                        } else {
                            ratio <= 1.0
                        };
                        let fill = if good { "#2e7d32" } else { "#c62828" };
                        ratio_span = format!(
                            r#" <tspan class="ratio" font-weight="600" fill="{fill}">{ratio:.2}×</tspan>"#
                        );
                    }
                }
                label = escape(&label);
                let _ = writeln!(
                    svg,
                    r##"<text x="{:.1}" y="{text_y:.1}" font-size="12" fill="#212121">{label}{ratio_span}</text>"##,
                    bar_x + w + 6.0
                );
            }
            None => {
                let error = run.error.as_deref().unwrap_or("no value");
                let _ = writeln!(
                    svg,
                    r##"<g class="failed" data-path="{}"><title>{}</title><text x="{bar_x:.1}" y="{text_y:.1}" font-size="12" font-style="italic" fill="#c62828">failed</text></g>"##,
                    path.name(),
                    escape(error)
                );
            }
        }
    }

    svg.push_str("</g>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::tests::sample;

    fn parse(svg: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(svg)
            .unwrap_or_else(|e| panic!("not well-formed XML: {e}\n{svg}"))
    }

    #[test]
    fn one_bar_per_successful_run_and_one_marker_per_failed_run() {
        let results = sample();
        let svg = render(&results);
        let doc = parse(&svg);
        let class = |n: &roxmltree::Node<'_, '_>, c: &str| n.attribute("class") == Some(c);
        let bars: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("rect") && class(n, "bar"))
            .collect();
        let ok_runs = results.runs.iter().filter(|r| r.value.is_some()).count();
        let failed_runs = results.runs.len() - ok_runs;
        assert_eq!(bars.len(), ok_runs);
        let failed = doc
            .descendants()
            .filter(|n| n.has_tag_name("g") && class(n, "failed"))
            .count();
        assert_eq!(failed, failed_runs);
        // Every bar carries its own value, so each is the run it claims to be.
        for bar in &bars {
            let path = bar.attribute("data-path").unwrap();
            let test = bar.parent().unwrap().attribute("data-test").unwrap();
            let value: f64 = bar.attribute("data-value").unwrap().parse().unwrap();
            let run = results
                .runs
                .iter()
                .find(|r| r.path == path && r.test == test)
                .unwrap();
            assert_eq!(run.value, Some(value));
        }
        // One panel per test, each with the anchor line.
        let panels = doc.descendants().filter(|n| class(n, "panel")).count();
        assert_eq!(panels, Test::ALL.len());
        let anchors = doc.descendants().filter(|n| class(n, "anchor")).count();
        assert_eq!(anchors, Test::ALL.len());
    }

    #[test]
    fn ratios_are_annotated_on_weft_bars() {
        let svg = render(&sample());
        let doc = parse(&svg);
        let ratios: Vec<String> = doc
            .descendants()
            .filter(|n| n.attribute("class") == Some("ratio"))
            .map(|n| n.text().unwrap_or_default().to_string())
            .collect();
        // weft-vxlan has a value in all six tests (weft-ipip failed in the sample).
        assert_eq!(ratios.len(), Test::ALL.len());
        assert!(ratios.iter().all(|r| r == "0.50×"), "{ratios:?}");
    }

    #[test]
    fn error_text_is_escaped() {
        let mut results = sample();
        results.runs[0].value = None;
        results.runs[0].error = Some("<weftd> said \"no\" & quit".into());
        let svg = render(&results);
        let doc = parse(&svg);
        let title = doc
            .descendants()
            .find(|n| n.attribute("class") == Some("failed"))
            .and_then(|g| g.children().find(|c| c.has_tag_name("title")))
            .and_then(|t| t.text())
            .unwrap();
        assert_eq!(title, "<weftd> said \"no\" & quit");
    }
}
