//! Problems found while loading files, each with file, line and Cedar's message.

use std::fmt;

use miette::Diagnostic;

/// One problem in one file: what `tollgate validate` prints and reloads log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    /// The file, as given by the directory it was loaded from.
    pub file: String,
    /// 1-based line, when the problem has a location.
    pub line: Option<usize>,
    /// 1-based column, when the problem has a location.
    pub column: Option<usize>,
    /// What is wrong, in Cedar's words where Cedar found it.
    pub message: String,
}

impl FileProblem {
    /// A problem with an optional line and no column.
    pub fn new(file: &str, line: Option<usize>, message: String) -> Self {
        Self {
            file: file.to_string(),
            line,
            column: None,
            message,
        }
    }

    /// A problem from a Cedar diagnostic whose labels point into `text`.
    pub fn from_diagnostic(file: &str, text: &str, diagnostic: &dyn Diagnostic) -> Self {
        let position = first_label_offset(diagnostic).map(|offset| line_col(text, offset));
        Self {
            file: file.to_string(),
            line: position.map(|(line, _)| line),
            column: position.map(|(_, column)| column),
            message: describe(diagnostic),
        }
    }
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, "{}:{line}:{column}: ", self.file)?,
            (Some(line), None) => write!(f, "{}:{line}: ", self.file)?,
            (None, _) => write!(f, "{}: ", self.file)?,
        }
        f.write_str(&self.message)
    }
}

/// `1 problem`, `2 problems`.
pub fn problems(count: usize) -> String {
    if count == 1 {
        "1 problem".to_string()
    } else {
        format!("{count} problems")
    }
}

/// A diagnostic's message with its related errors and help, on one line.
pub fn describe(diagnostic: &dyn Diagnostic) -> String {
    let mut message = diagnostic.to_string();
    let mut source = diagnostic.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    if let Some(related) = diagnostic.related() {
        for other in related {
            let text = other.to_string();
            if !message.contains(&text) {
                message.push_str("; ");
                message.push_str(&text);
            }
        }
    }
    if let Some(help) = diagnostic.help() {
        message.push_str(" (help: ");
        message.push_str(&help.to_string());
        message.push(')');
    }
    message
}

/// Byte offset of the first labelled span of `diagnostic` or its related errors.
pub fn first_label_offset(diagnostic: &dyn Diagnostic) -> Option<usize> {
    if let Some(mut labels) = diagnostic.labels() {
        if let Some(label) = labels.next() {
            return Some(label.offset());
        }
    }
    diagnostic
        .related()
        .into_iter()
        .flatten()
        .find_map(first_label_offset)
}

/// 1-based (line, column) of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.chars().count(), |nl| {
        before[nl + 1..].chars().count()
    }) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        let text = "ab\ncd\nef";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 4), (2, 2));
        assert_eq!(line_col(text, 6), (3, 1));
        assert_eq!(line_col(text, 100), (3, 3));
    }
}
