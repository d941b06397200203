//! Writing the tables: JSON and CSV per table, and one self-contained HTML
//! page with inline SVG charts.

use std::fmt::Write as _;
use std::path::Path;

use super::{charts, Format, Options, ReportError, Summary, Tables};

/// Rows an HTML table shows; the JSON and CSV files have all of them.
const HTML_ROWS: usize = 100;

/// One value of a table.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Text.
    Text(String),
    /// A whole number.
    Int(i64),
    /// A share, 0 to 1 (shown as a percentage in HTML).
    Share(f64),
    /// Nothing.
    Empty,
}

impl Cell {
    /// The cell as CSV and tests see it.
    pub fn text(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::Int(number) => number.to_string(),
            Self::Share(share) => format!("{}", (share * 10_000.0).round() / 10_000.0),
            Self::Empty => String::new(),
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Self::Text(text) => serde_json::Value::String(text.clone()),
            Self::Int(number) => serde_json::Value::from(*number),
            Self::Share(share) => serde_json::Value::from((share * 10_000.0).round() / 10_000.0),
            Self::Empty => serde_json::Value::Null,
        }
    }

    fn html(&self) -> String {
        match self {
            Self::Share(share) => format!("{:.1}%", share * 100.0),
            other => escape(&other.text()),
        }
    }

    /// The number in a cell (0 for text).
    pub fn number(&self) -> f64 {
        match self {
            Self::Int(number) => *number as f64,
            Self::Share(share) => *share,
            Self::Text(_) | Self::Empty => 0.0,
        }
    }
}

/// A table: a name (its file's), a title, columns and rows.
#[derive(Debug, Clone)]
pub struct Table {
    /// File name, without extension.
    pub name: &'static str,
    /// Heading.
    pub title: &'static str,
    /// Column names.
    pub columns: Vec<&'static str>,
    /// Rows, each as long as `columns`.
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    /// A table.
    pub fn new(
        name: &'static str,
        title: &'static str,
        columns: &[&'static str],
        rows: Vec<Vec<Cell>>,
    ) -> Self {
        Self {
            name,
            title,
            columns: columns.to_vec(),
            rows,
        }
    }

    /// The rows as JSON objects.
    pub fn json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.rows
                .iter()
                .map(|row| {
                    serde_json::Value::Object(
                        self.columns
                            .iter()
                            .zip(row)
                            .map(|(column, cell)| ((*column).to_string(), cell.json()))
                            .collect(),
                    )
                })
                .collect(),
        )
    }

    /// The table as CSV (RFC 4180), with a header line.
    pub fn csv(&self) -> String {
        let mut text = String::new();
        let line = |text: &mut String, cells: &mut dyn Iterator<Item = String>| {
            let quoted: Vec<String> = cells.map(|cell| csv_field(&cell)).collect();
            text.push_str(&quoted.join(","));
            text.push_str("\r\n");
        };
        line(
            &mut text,
            &mut self.columns.iter().map(|c| (*c).to_string()),
        );
        for row in &self.rows {
            line(&mut text, &mut row.iter().map(Cell::text));
        }
        text
    }

    /// The value of `column` in `row`.
    pub fn cell(&self, row: usize, column: &str) -> Option<&Cell> {
        let index = self.columns.iter().position(|c| *c == column)?;
        self.rows.get(row)?.get(index)
    }
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// `text` with HTML's special characters escaped.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

fn write_file(path: &Path, contents: &[u8], summary: &mut Summary) -> Result<(), ReportError> {
    std::fs::write(path, contents)
        .map_err(|error| ReportError::Output(format!("{}: {error}", path.display())))?;
    summary.files.push(path.to_path_buf());
    Ok(())
}

/// Writes the formats `options` asks for into its `out` directory.
pub fn write(options: &Options, tables: &Tables, summary: &mut Summary) -> Result<(), ReportError> {
    for format in &options.formats {
        match format {
            Format::Json => {
                for table in tables.all() {
                    let text = serde_json::to_vec_pretty(&table.json())
                        .map_err(|error| ReportError::Output(error.to_string()))?;
                    write_file(
                        &options.out.join(format!("{}.json", table.name)),
                        &text,
                        summary,
                    )?;
                }
            }
            Format::Csv => {
                for table in tables.all() {
                    write_file(
                        &options.out.join(format!("{}.csv", table.name)),
                        table.csv().as_bytes(),
                        summary,
                    )?;
                }
            }
            Format::Html => {
                let page = html(tables, summary)?;
                write_file(&options.out.join("report.html"), page.as_bytes(), summary)?;
            }
        }
    }
    Ok(())
}

/// Writes `summary.json` when JSON is asked for.
pub fn write_summary(options: &Options, summary: &mut Summary) -> Result<(), ReportError> {
    if !options.formats.contains(&Format::Json) {
        return Ok(());
    }
    let mut described = summary.clone();
    described.files.clear();
    let text = serde_json::to_vec_pretty(&described)
        .map_err(|error| ReportError::Output(error.to_string()))?;
    write_file(&options.out.join("summary.json"), &text, summary)
}

const STYLE: &str = "
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 0;
  padding: 1rem; color: #1f2933; background: #f7f8fa; line-height: 1.45; }
main { max-width: 64rem; margin: 0 auto; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
h2 { font-size: 1.15rem; margin: 2rem 0 .5rem; }
p { margin: .25rem 0 .75rem; }
.summary { display: grid; grid-template-columns: repeat(auto-fit, minmax(9rem, 1fr)); gap: .5rem; }
.summary div { background: #fff; border: 1px solid #d9dee5; border-radius: .5rem; padding: .5rem .75rem; }
.summary b { display: block; font-size: 1.2rem; }
figure { margin: .5rem 0; background: #fff; border: 1px solid #d9dee5; border-radius: .5rem; padding: .5rem; }
figcaption { font-size: .85rem; color: #52606d; }
svg.chart { width: 100%; height: auto; display: block; }
.scroll { overflow-x: auto; max-width: 100%; background: #fff; border: 1px solid #d9dee5; border-radius: .5rem; }
table { border-collapse: collapse; width: 100%; font-size: .85rem; }
th, td { padding: .35rem .5rem; text-align: left; border-bottom: 1px solid #eef1f4; white-space: nowrap; }
th { background: #eef1f4; position: sticky; top: 0; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.note { font-size: .85rem; color: #52606d; }
";

fn html(tables: &Tables, summary: &Summary) -> Result<String, ReportError> {
    let mut page = String::with_capacity(256 * 1024);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\n\
         <title>tollgate usage report {} to {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n",
        escape(&summary.since),
        escape(&summary.until)
    );
    let _ = write!(
        page,
        "<h1>Usage report</h1>\n<p class=\"note\">{} to {} (UTC), from {}.</p>\n<div class=\"summary\">",
        escape(&summary.since),
        escape(&summary.until),
        escape(&summary.decision_sources.join(", "))
    );
    for (label, value) in [
        ("decisions", summary.decision_records),
        ("usage events", summary.usage_events),
        ("accounts with meters", summary.usage_tenants.len() as u64),
        ("what-if left out", summary.what_if),
        ("unreadable", summary.unreadable),
    ] {
        let _ = write!(page, "<div><b>{value}</b>{label}</div>");
    }
    page.push_str("</div>\n");
    let sections: [(&super::Table, &str, Vec<String>); 7] = [
        (
            &tables.adoption,
            "For each feature, the share of the accounts on each plan with at least one ALLOW, and the principals allowed it.",
            vec![charts::adoption(&tables.adoption)],
        ),
        (
            &tables.paywall,
            "DENYs by reason code, per feature and plan, and how many accounts were denied.",
            vec![charts::paywall(&tables.paywall)],
        ),
        (
            &tables.paywall_accounts,
            "The accounts denied most often, with the offer that would unlock the request (when the report was given the policies or a server to ask).",
            Vec::new(),
        ),
        (
            &tables.cap_pressure,
            "Meter windows whose count passed 50, 80 or 100% of the limit, and the day each reached (or, at its rate so far, will reach) its limit.",
            vec![charts::cap_pressure(&tables.cap_pressure)],
        ),
        (
            &tables.unused,
            "Features an account's plan includes (another account on the plan was allowed it) that the account never used.",
            Vec::new(),
        ),
        (
            &tables.trends,
            "Decisions, denials and units consumed per day (UTC).",
            vec![charts::trends(&tables.trends), charts::consumption(&tables.trends)],
        ),
        (
            &tables.denials_by_day,
            "Denials per day by reason code.",
            vec![charts::denials_by_day(&tables.denials_by_day)],
        ),
    ];
    for (table, description, figures) in sections {
        let _ = write!(
            page,
            "<section id=\"{}\">\n<h2>{}</h2>\n<p>{}</p>\n",
            table.name,
            escape(table.title),
            escape(description)
        );
        for figure in figures {
            page.push_str(&figure);
        }
        table_html(&mut page, table);
        page.push_str("</section>\n");
    }
    page.push_str("</main>\n</body>\n</html>\n");
    Ok(page)
}

fn table_html(page: &mut String, table: &super::Table) {
    if table.rows.is_empty() {
        page.push_str("<p class=\"note\">Nothing in this window.</p>\n");
        return;
    }
    page.push_str("<div class=\"scroll\"><table>\n<thead><tr>");
    for column in &table.columns {
        let _ = write!(page, "<th>{}</th>", escape(&column.replace('_', " ")));
    }
    page.push_str("</tr></thead>\n<tbody>\n");
    for row in table.rows.iter().take(HTML_ROWS) {
        page.push_str("<tr>");
        for cell in row {
            let class = if matches!(cell, Cell::Int(_) | Cell::Share(_)) {
                " class=\"n\""
            } else {
                ""
            };
            let _ = write!(page, "<td{class}>{}</td>", cell.html());
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</tbody></table></div>\n");
    if table.rows.len() > HTML_ROWS {
        let _ = writeln!(
            page,
            "<p class=\"note\">{} more rows in {}.csv and {}.json.</p>",
            table.rows.len() - HTML_ROWS,
            table.name,
            table.name
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let table = Table::new(
            "t",
            "T",
            &["a", "b"],
            vec![vec![
                Cell::Text("Feature::\"x\"".to_string()),
                Cell::Share(0.5),
            ]],
        );
        assert_eq!(table.csv(), "a,b\r\n\"Feature::\"\"x\"\"\",0.5\r\n");
        assert_eq!(table.json()[0]["a"], "Feature::\"x\"");
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape("<a href='x'>&</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;"
        );
    }
}
