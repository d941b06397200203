//! The report's charts, drawn by plotters as inline SVG: text stays SVG
//! text in the page's own fonts, so nothing is fetched.

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use super::output::{escape, Cell, Table};

/// Width of every chart, in SVG units (it scales to the page).
const WIDTH: u32 = 640;

/// Bars a bar chart shows at most.
const MAX_BARS: usize = 20;

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn color(index: usize) -> RGBColor {
    COLORS[index % COLORS.len()]
}

/// `Type:id` as `id`, for labels.
fn short(entity: &str) -> &str {
    entity.split_once(':').map_or(entity, |(_, id)| id)
}

/// One bar: its label, value and color.
struct Bar {
    label: String,
    value: f64,
    color: usize,
}

/// Wraps a drawn SVG into a figure, naming it for tests and readers.
fn figure(id: &str, caption: &str, svg: Result<String, String>) -> String {
    match svg {
        Ok(svg) => {
            let svg = svg.replacen(
                "<svg ",
                &format!(
                    "<svg class=\"chart\" id=\"chart-{id}\" role=\"img\" aria-label=\"{}\" ",
                    escape(caption)
                ),
                1,
            );
            format!(
                "<figure>\n{svg}\n<figcaption>{}</figcaption>\n</figure>\n",
                escape(caption)
            )
        }
        Err(problem) => format!(
            "<p class=\"note\">The chart {} could not be drawn: {}</p>\n",
            escape(caption),
            escape(&problem)
        ),
    }
}

/// A chart that says there is nothing to show.
fn nothing(message: &str) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 60)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        root.draw(&Text::new(
            message.to_string(),
            (16, 24),
            ("sans-serif", 16).into_font().color(&RGBColor(82, 96, 109)),
        ))
        .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Horizontal bars, the first on top; `percent` scales 0-1 values to %.
fn bars(bars: &[Bar], x_desc: &str, percent: bool, marks: &[f64]) -> Result<String, String> {
    if bars.is_empty() {
        return nothing("Nothing in this window.");
    }
    // Rows of the chart: one per bar, and at least two (a range of one
    // integer has no labels to draw); a row without a bar stays empty.
    let count = bars.len().max(2);
    let scale = if percent { 100.0 } else { 1.0 };
    let max = bars
        .iter()
        .map(|bar| bar.value * scale)
        .chain(marks.iter().copied())
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.08;
    let longest = bars
        .iter()
        .map(|bar| bar.label.chars().count())
        .max()
        .unwrap_or(0);
    let label_area = u32::try_from(longest * 8 + 16)
        .unwrap_or(280)
        .clamp(60, 280);
    let height = 56 + 30 * u32::try_from(count).unwrap_or(u32::MAX / 64);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .margin(8)
            .x_label_area_size(34)
            .y_label_area_size(label_area)
            .build_cartesian_2d(0f64..max, (0..count - 1).into_segmented())
            .map_err(|e| e.to_string())?;
        // The rows are 0 to count - 1 (plotters' integer ranges hold their
        // end), row 0 at the bottom: the first bar goes in the top row.
        let label_of = |value: &SegmentValue<usize>| match value {
            SegmentValue::CenterOf(row) | SegmentValue::Exact(row) => bars
                .get(count.saturating_sub(row + 1))
                .map_or_else(String::new, |bar| bar.label.clone()),
            SegmentValue::Last => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(WHITE)
            .y_labels(count)
            .y_label_formatter(&label_of)
            .x_labels(6)
            .x_label_formatter(&|x| {
                if percent {
                    format!("{x:.0}%")
                } else {
                    format!("{x:.0}")
                }
            })
            .x_desc(x_desc)
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(bars.iter().enumerate().map(|(index, bar)| {
                let row = count - 1 - index;
                // Bars fill the rows from the top.
                let mut rect = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(row)),
                        (bar.value * scale, SegmentValue::Exact(row + 1)),
                    ],
                    color(bar.color).filled(),
                );
                rect.set_margin(4, 4, 0, 0);
                rect
            }))
            .map_err(|e| e.to_string())?;
        for mark in marks {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![
                        (*mark, SegmentValue::Exact(0)),
                        (*mark, SegmentValue::Exact(count)),
                    ],
                    RGBColor(82, 96, 109).stroke_width(1),
                )))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Lines over days; `x` labels are the days.
fn lines(days: &[String], series: &[(String, Vec<f64>)], y_desc: &str) -> Result<String, String> {
    if days.is_empty() || series.is_empty() {
        return nothing("Nothing in this window.");
    }
    let max = series
        .iter()
        .flat_map(|(_, values)| values.iter().copied())
        .fold(0.0_f64, f64::max)
        .max(1.0)
        // Headroom above the lines for the legend.
        * 1.5;
    let last = days.len().saturating_sub(1).max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, 320)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .margin_right(36)
            .x_label_area_size(34)
            .y_label_area_size(60)
            .build_cartesian_2d(0usize..last, 0f64..max)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_labels(days.len().min(8))
            .x_label_formatter(&|index| {
                days.get(*index)
                    .map_or_else(String::new, |day| day.get(5..).unwrap_or(day).to_string())
            })
            .y_labels(6)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .y_desc(y_desc)
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(|e| e.to_string())?;
        for (index, (name, values)) in series.iter().enumerate() {
            let stroke = color(index);
            chart
                .draw_series(LineSeries::new(
                    values.iter().enumerate().map(|(day, value)| (day, *value)),
                    stroke.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], stroke.stroke_width(3))
                });
            chart
                .draw_series(
                    values
                        .iter()
                        .enumerate()
                        .map(|(day, value)| Circle::new((day, *value), 3, stroke.filled())),
                )
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(217, 222, 229))
            .label_font(("sans-serif", 16))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

fn text(table: &Table, row: usize, column: &str) -> String {
    table.cell(row, column).map(Cell::text).unwrap_or_default()
}

fn number(table: &Table, row: usize, column: &str) -> f64 {
    table.cell(row, column).map_or(0.0, Cell::number)
}

/// Adoption: each feature's share per plan, colored by plan.
pub fn adoption(table: &Table) -> String {
    let mut plans: Vec<String> = (0..table.rows.len())
        .map(|row| text(table, row, "plan"))
        .collect();
    plans.sort();
    plans.dedup();
    let mut rows: Vec<usize> = (0..table.rows.len()).collect();
    rows.sort_by(|a, b| number(table, *b, "share").total_cmp(&number(table, *a, "share")));
    rows.truncate(MAX_BARS);
    let data: Vec<Bar> = rows
        .into_iter()
        .map(|row| {
            let plan = text(table, row, "plan");
            Bar {
                label: format!("{} · {plan}", short(&text(table, row, "feature"))),
                value: number(table, row, "share"),
                color: plans.iter().position(|p| *p == plan).unwrap_or(0),
            }
        })
        .collect();
    figure(
        "adoption",
        "Share of each plan's accounts that used the feature (color: plan)",
        bars(&data, "accounts using it", true, &[]),
    )
}

/// Paywall demand: the largest denial counts by feature, plan and code.
pub fn paywall(table: &Table) -> String {
    let mut codes: Vec<String> = (0..table.rows.len())
        .map(|row| text(table, row, "code"))
        .collect();
    codes.sort();
    codes.dedup();
    let data: Vec<Bar> = (0..table.rows.len().min(MAX_BARS))
        .map(|row| {
            let code = text(table, row, "code");
            Bar {
                label: format!(
                    "{} · {} · {code}",
                    short(&text(table, row, "feature")),
                    text(table, row, "plan")
                ),
                value: number(table, row, "denials"),
                color: codes.iter().position(|c| *c == code).unwrap_or(0),
            }
        })
        .collect();
    figure(
        "paywall",
        "Denials by feature, plan and reason (color: reason)",
        bars(&data, "denials", false, &[]),
    )
}

/// Cap pressure: each meter window's peak as a share of its limit.
pub fn cap_pressure(table: &Table) -> String {
    let data: Vec<Bar> = (0..table.rows.len().min(MAX_BARS))
        .map(|row| {
            let passed = number(table, row, "passed");
            Bar {
                label: format!(
                    "{} · {} · {}",
                    text(table, row, "account"),
                    text(table, row, "meter"),
                    text(table, row, "window")
                ),
                value: number(table, row, "percent"),
                color: if passed >= 100.0 {
                    3
                } else if passed >= 80.0 {
                    1
                } else {
                    0
                },
            }
        })
        .collect();
    figure(
        "cap-pressure",
        "Peak use of each meter window against its limit (lines at 50, 80 and 100%)",
        bars(&data, "of the limit", true, &[50.0, 80.0, 100.0]),
    )
}

fn days(table: &Table) -> Vec<String> {
    (0..table.rows.len())
        .map(|row| text(table, row, "day"))
        .collect()
}

fn column(table: &Table, name: &str) -> Vec<f64> {
    (0..table.rows.len())
        .map(|row| number(table, row, name))
        .collect()
}

/// Decisions, allows and denials per day.
pub fn trends(table: &Table) -> String {
    figure(
        "trends",
        "Decisions per day",
        lines(
            &days(table),
            &[
                ("decisions".to_string(), column(table, "decisions")),
                ("allowed".to_string(), column(table, "allowed")),
                ("denied".to_string(), column(table, "denied")),
            ],
            "decisions",
        ),
    )
}

/// Units consumed per day.
pub fn consumption(table: &Table) -> String {
    figure(
        "consumption",
        "Units consumed per day (all meters)",
        lines(
            &days(table),
            &[("consumed".to_string(), column(table, "consumed"))],
            "units",
        ),
    )
}

/// Denials per day, one line per code.
pub fn denials_by_day(table: &Table) -> String {
    let mut days: Vec<String> = (0..table.rows.len())
        .map(|row| text(table, row, "day"))
        .collect();
    days.dedup();
    let mut codes: Vec<String> = (0..table.rows.len())
        .map(|row| text(table, row, "code"))
        .collect();
    codes.sort();
    codes.dedup();
    let series: Vec<(String, Vec<f64>)> = codes
        .iter()
        .map(|code| {
            let mut values = vec![0.0; days.len()];
            for row in 0..table.rows.len() {
                if text(table, row, "code") == *code {
                    if let Some(at) = days.iter().position(|day| *day == text(table, row, "day")) {
                        values[at] = number(table, row, "denials");
                    }
                }
            }
            (code.clone(), values)
        })
        .collect();
    figure(
        "denials-by-day",
        "Denials per day by reason",
        lines(&days, &series, "denials"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_chart_is_svg_with_its_bars_and_labels() {
        let table = Table::new(
            "paywall",
            "P",
            &["feature", "plan", "code", "denials", "accounts"],
            vec![vec![
                Cell::Text("Feature:pdf-export".to_string()),
                Cell::Text("free".to_string()),
                Cell::Text("tier_too_low".to_string()),
                Cell::Int(7),
                Cell::Int(1),
            ]],
        );
        let html = paywall(&table);
        assert!(
            html.contains("<svg class=\"chart\" id=\"chart-paywall\""),
            "{html}"
        );
        assert!(html.contains("pdf-export · free · tier_too_low"), "{html}");
        assert!(html.contains("<rect"), "{html}");
    }
}
