//! The page check `tollgate report`'s HTML is held to, run against small
//! hand-written pages in a real headless Chromium (Debian's `chromium`, or
//! `$CHROMIUM`) through `tests/browser/check_page.py`, at a phone's size:
//!
//! * a clean page with two inline SVG charts and a table passes, both charts
//!   have a size and something drawn, and the full-page screenshot is a PNG;
//! * a script that throws, a fetch from outside the file, an empty chart and
//!   an element wider than the phone each fail it, and the output says why.
//!
//! Each run's screenshot is kept under `$CARGO_TARGET_TMPDIR/browser/`.
//! Without Chromium the tests fail (never skip): scripts/test.sh installs it.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The script's own bound on one check, in seconds.
const CHECK_TIMEOUT: &str = "45";
/// The test's bound on the script, its cleanup included.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// The head every page shares: phone-width layout, a title.
const HEAD: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tollgate report</title>
<style>
  body { font-family: sans-serif; margin: 8px; }
  svg.chart { display: block; width: 100%; height: auto; }
  table { border-collapse: collapse; }
  td, th { padding: 2px 6px; border: 1px solid #999; }
</style>
</head>
<body>
"#;

/// A chart as the report draws one: bars and labels in inline SVG.
const BAR_CHART: &str = r##"<svg class="chart" id="decisions" viewBox="0 0 300 120" role="img">
  <rect x="20" y="20" width="60" height="90" fill="#36c"/>
  <rect x="120" y="50" width="60" height="60" fill="#c63"/>
  <text x="20" y="14">allow</text>
  <text x="120" y="44">deny</text>
</svg>
"##;

/// `$CHROMIUM`, else `chromium` or `chromium-browser` on the PATH; fails
/// (never skips) when there is none.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(path);
    }
    let paths = std::env::var_os("PATH").unwrap_or_default();
    ["chromium", "chromium-browser"]
        .iter()
        .find_map(|name| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|path| path.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "no chromium on the PATH and $CHROMIUM is not set: run scripts/test.sh, which \
                 installs Debian's chromium package"
            )
        })
}

/// What one run of the script said.
struct Checked {
    code: i32,
    output: Value,
    stderr: String,
    screenshot: PathBuf,
}

impl Checked {
    fn strings(&self, key: &str) -> Vec<String> {
        self.output[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key} list in {:#}", self.output))
            .iter()
            .map(|value| value.as_str().unwrap().to_string())
            .collect()
    }

    /// Panics, showing everything the script said, unless it exited `code`.
    fn assert_exit(&self, code: i32) {
        assert_eq!(
            self.code, code,
            "check_page.py exited {} (expected {code})\nstdout: {:#}\nstderr: {}",
            self.code, self.output, self.stderr
        );
    }
}

/// Writes `html` into a fresh directory and runs check_page.py on it at the
/// default phone size; the screenshot goes to the test's artifacts as
/// `name.png`.
fn check(name: &str, html: &str) -> Checked {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join(format!("{name}.html"));
    std::fs::write(&page, html).unwrap();
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join(format!("{name}.png"));
    let _ = std::fs::remove_file(&screenshot);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/check_page.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg("--html")
        .arg(&page)
        .arg("--screenshot")
        .arg(&screenshot)
        .arg("--chromium")
        .arg(chromium())
        .args(["--timeout", CHECK_TIMEOUT])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run python3 {}: {error}", script.display()));
    let mut stdout_pipe = child.stdout.take().unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        stdout_pipe.read_to_string(&mut text).map(|_| text)
    });
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        stderr_pipe.read_to_string(&mut text).map(|_| text)
    });

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("check_page.py on {name} ran past {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = stdout.join().unwrap().unwrap();
    let stderr = stderr.join().unwrap().unwrap();
    let code = status
        .code()
        .unwrap_or_else(|| panic!("check_page.py died: {status}; stderr: {stderr}"));
    assert_ne!(
        code, 2,
        "check_page.py could not drive Chromium (exit 2): {stderr}"
    );
    let output: Value = serde_json::from_str(&stdout).unwrap_or_else(|error| {
        panic!("check_page.py printed no JSON ({error}): {stdout}\nstderr: {stderr}")
    });
    Checked {
        code,
        output,
        stderr,
        screenshot,
    }
}

fn page(body: &str) -> String {
    format!("{HEAD}{body}</body>\n</html>\n")
}

#[test]
fn a_clean_report_passes_with_every_chart_drawn_and_a_screenshot() {
    let html = page(&format!(
        r##"<h1>Decisions</h1>
{BAR_CHART}
<svg class="chart" id="latency" viewBox="0 0 300 120" role="img">
  <line x1="20" y1="110" x2="290" y2="110" stroke="#999"/>
  <rect x="20" y="30" width="8" height="80" fill="#393"/>
  <polyline points="20,100 90,60 160,80 230,20" fill="none" stroke="#000"/>
  <text x="20" y="20">p99 latency</text>
</svg>
<table>
  <tr><th>tenant</th><th>allow</th><th>deny</th></tr>
  <tr><td>acme</td><td>90</td><td>60</td></tr>
</table>
"##
    ));
    let checked = check("clean", &html);
    checked.assert_exit(0);
    let output = &checked.output;
    assert_eq!(checked.strings("errors"), Vec::<String>::new());
    assert_eq!(checked.strings("problems"), Vec::<String>::new());
    assert_eq!(output["title"], "tollgate report");
    assert_eq!(output["tables"], 1);
    assert_eq!(output["horizontal_scroll"], false);
    let charts = output["charts"].as_array().unwrap();
    let ids: Vec<&str> = charts
        .iter()
        .map(|chart| chart["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["decisions", "latency"]);
    for chart in charts {
        assert!(chart["width"].as_f64().unwrap() > 0.0, "{chart}");
        assert!(chart["height"].as_f64().unwrap() > 0.0, "{chart}");
        assert!(chart["drawn"].as_u64().unwrap() > 0, "{chart}");
    }
    assert_eq!(charts[0]["drawn"], 4, "two bars and two labels");
    assert_eq!(charts[1]["drawn"], 4, "axis, bar, line and label");
    assert_eq!(
        output["screenshot"].as_str().map(PathBuf::from),
        Some(checked.screenshot.clone())
    );
    let png = std::fs::read(&checked.screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        checked.screenshot.display()
    );
}

#[test]
fn a_script_that_throws_fails_the_page() {
    let html = page(&format!(
        "{BAR_CHART}<script>throw new Error(\"the report threw\");</script>\n"
    ));
    let checked = check("throws", &html);
    checked.assert_exit(1);
    let errors = checked.strings("errors");
    assert!(
        errors
            .iter()
            .any(|error| error.contains("the report threw")),
        "{errors:?}"
    );
}

#[test]
fn a_fetch_from_outside_the_file_fails_the_page() {
    let html = page(&format!(
        "{BAR_CHART}<img src=\"http://127.0.0.1:9/x.png\" alt=\"\">\n"
    ));
    let checked = check("outside", &html);
    checked.assert_exit(1);
    let errors = checked.strings("errors");
    assert!(
        errors
            .iter()
            .any(|error| error == "fetched from outside: http://127.0.0.1:9/x.png"),
        "{errors:?}"
    );
}

#[test]
fn an_empty_chart_fails_the_page_by_name() {
    let html = page(&format!(
        "{BAR_CHART}<svg class=\"chart\" id=\"empty\" viewBox=\"0 0 300 120\"></svg>\n"
    ));
    let checked = check("empty", &html);
    checked.assert_exit(1);
    assert_eq!(checked.strings("errors"), Vec::<String>::new());
    let charts = checked.output["charts"].as_array().unwrap();
    assert_eq!(charts.len(), 2);
    assert_eq!(charts[1]["id"], "empty");
    assert_eq!(charts[1]["drawn"], 0);
    let problems = checked.strings("problems");
    assert!(
        problems
            .iter()
            .any(|problem| problem.contains("chart empty is empty")),
        "{problems:?}"
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
}

#[test]
fn an_element_wider_than_the_phone_fails_the_page() {
    let html = page(&format!(
        "{BAR_CHART}<div style=\"width: 2000px\">a fixed 2000 px wide row</div>\n"
    ));
    let checked = check("wide", &html);
    checked.assert_exit(1);
    assert_eq!(checked.output["horizontal_scroll"], true);
    assert!(checked.output["scroll_width"].as_u64().unwrap() >= 2000);
    let problems = checked.strings("problems");
    assert!(
        problems
            .iter()
            .any(|problem| problem.contains("scrolls horizontally")),
        "{problems:?}"
    );
}
