//! `target/bench/results.svg`: the results table as a chart, written by hand (a few
//! dozen elements do not need a plotting library).
//!
//! One row of panels per test (each test has its own unit and scale, shared along the
//! row), one column per underlay mode, so the modes stand side by side; in each panel
//! one horizontal bar per path, the value at the end of the bar, each weft path's ratio
//! to the kernel anchor on that underlay beside it, and a dashed line at the anchor's
//! value so "how far from the kernel" is visible without reading numbers.

use std::fmt::Write as _;

use weft_tests::lab::underlay::UnderlayMode;

use crate::results::{format_value, Path, Results, Test, ANCHOR};

const PANEL_WIDTH: f64 = 340.0;
const MARGIN: f64 = 20.0;
const HEADER: f64 = 64.0;
const PANEL_GAP: f64 = 18.0;
const PANEL_TITLE: f64 = 46.0;
const BAR_ROW: f64 = 30.0;
const BAR_HEIGHT: f64 = 20.0;
const LABEL_WIDTH: f64 = 132.0;
/// Room right of the longest bar for "12.4 · 1.03×".
const VALUE_ROOM: f64 = 96.0;

fn colour(path: Path) -> &'static str {
    match path {
        Path::Veth => "#b0bec5",
        Path::HostGw => "#78909c",
        Path::KernelVxlan => "#37474f",
        Path::WeftVxlan => "#e65100",
        Path::WeftIpip => "#fb8c00",
        Path::KernelToWeft => "#8e24aa",
        Path::WeftToKernel => "#ba68c8",
        Path::WeftVxlanTc => "#f4511e",
        Path::WeftVxlanUserspace => "#ffb300",
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
    let underlays = results.underlays();
    let columns = underlays.len().max(1);
    let width = 2.0 * MARGIN + columns as f64 * PANEL_WIDTH + (columns as f64 - 1.0) * PANEL_GAP;
    let panel_height = PANEL_TITLE + BAR_ROW * paths.len() as f64 + 10.0;
    let height = HEADER + tests.len() as f64 * (panel_height + PANEL_GAP) + MARGIN;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="system-ui, -apple-system, 'Segoe UI', sans-serif">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        svg,
        r##"<text x="{MARGIN}" y="30" font-size="20" font-weight="600" fill="#212121">weft-bench: pod to pod across two lab nodes, one column per underlay</text>"##
    );
    let subtitle = format!(
        "{} · ratios are weft ÷ {} on the same underlay in this run (dashed line)",
        results.describe(),
        ANCHOR.name()
    );
    let _ = writeln!(
        svg,
        r##"<text x="{MARGIN}" y="50" font-size="12" fill="#616161">{}</text>"##,
        escape(&subtitle)
    );

    for (row, &test) in tests.iter().enumerate() {
        // One scale per test, so the underlays compare by bar length.
        let max = results
            .runs
            .iter()
            .filter(|r| r.test == test.name())
            .filter_map(|r| r.value)
            .fold(0.0_f64, f64::max);
        for (column, &underlay) in underlays.iter().enumerate() {
            let x = MARGIN + column as f64 * (PANEL_WIDTH + PANEL_GAP);
            let y = HEADER + row as f64 * (panel_height + PANEL_GAP);
            let panel = Panel {
                test,
                underlay,
                max,
                x,
                y,
                width: PANEL_WIDTH,
                height: panel_height,
            };
            panel.draw(&mut svg, results, &paths);
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// One panel: a test on an underlay, at (`x`, `y`), bars scaled to `max`.
struct Panel {
    test: Test,
    underlay: UnderlayMode,
    max: f64,
    x: f64,
    y: f64,
    width: f64,
    height: f64,
}

impl Panel {
    fn draw(&self, svg: &mut String, results: &Results, paths: &[Path]) {
        let Panel {
            test,
            underlay,
            max,
            x,
            y,
            width,
            height,
        } = *self;
        let better = if test.higher_is_better() {
            "higher is better"
        } else {
            "lower is better"
        };
        let _ = writeln!(
            svg,
            r#"<g class="panel" data-test="{}" data-underlay="{}">"#,
            test.name(),
            underlay.name()
        );
        let _ = writeln!(
            svg,
            r##"<rect x="{x:.1}" y="{y:.1}" width="{width:.1}" height="{height:.1}" rx="6" fill="#fafafa" stroke="#e0e0e0"/>"##
        );
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="15" font-weight="600" fill="#212121">{} <tspan font-weight="400" fill="#616161">{} · {}</tspan></text>"##,
            x + 12.0,
            y + 22.0,
            escape(test.name()),
            escape(test.unit()),
            escape(underlay.name())
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
        let scale = |v: f64| if max > 0.0 { v / max * bar_room } else { 0.0 };

        // Drawn first so bars and labels sit on top of it.
        if let Some(anchor) = results.value(ANCHOR, test, underlay) {
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
            let Some(run) = results.find(path, test, underlay) else {
                continue;
            };
            match run.value {
                Some(value) => {
                    let w = scale(value).max(1.0);
                    let range = match (run.min, run.max) {
                        (Some(min), Some(max)) => {
                            format!(" ({}–{})", format_value(min), format_value(max))
                        }
                        _ => String::new(),
                    };
                    let _ = writeln!(
                        svg,
                        r#"<rect class="bar" data-path="{}" data-underlay="{}" data-value="{value}" x="{bar_x:.1}" y="{row_y:.1}" width="{w:.1}" height="{BAR_HEIGHT}" rx="2" fill="{}"><title>{} {} on {}: {} {}{}</title></rect>"#,
                        path.name(),
                        underlay.name(),
                        colour(path),
                        path.name(),
                        test.name(),
                        underlay.name(),
                        format_value(value),
                        escape(test.unit()),
                        escape(&range)
                    );
                    let label = escape(&format_value(value));
                    let mut ratio_span = String::new();
                    if path.is_weft() {
                        if let Some(ratio) = results.ratio_to_anchor(path, test, underlay) {
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
                        r##"<g class="failed" data-path="{}" data-underlay="{}"><title>{}</title><text x="{bar_x:.1}" y="{text_y:.1}" font-size="12" font-style="italic" fill="#c62828">failed</text></g>"##,
                        path.name(),
                        underlay.name(),
                        escape(error)
                    );
                }
            }
        }

        svg.push_str("</g>\n");
    }
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
            let underlay = bar.attribute("data-underlay").unwrap();
            let panel = bar.parent().unwrap();
            let test = panel.attribute("data-test").unwrap();
            assert_eq!(panel.attribute("data-underlay"), Some(underlay));
            let value: f64 = bar.attribute("data-value").unwrap().parse().unwrap();
            let run = results
                .runs
                .iter()
                .find(|r| r.path == path && r.test == test && r.underlay == underlay)
                .unwrap();
            assert_eq!(run.value, Some(value));
        }
        // One panel per test and underlay, each with the anchor line.
        let panels = doc.descendants().filter(|n| class(n, "panel")).count();
        assert_eq!(panels, 2 * Test::ALL.len());
        let anchors = doc.descendants().filter(|n| class(n, "anchor")).count();
        assert_eq!(anchors, 2 * Test::ALL.len());
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
        // Five weft paths with values (weft-ipip failed in the sample), in all six tests,
        // on both underlays; each at half the kernel on its own underlay.
        assert_eq!(ratios.len(), 5 * Test::ALL.len() * 2);
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
