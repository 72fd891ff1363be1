//! The operator figures file of a provincial node: the figures of the progress report (工作通报)
//! that only the province's operators know, kept in a small TOML file they edit each period.
//!
//! ```toml
//! registered_enterprises = 1234567     # enterprises registered on the platform
//! financial_institutions = 321         # financial institutions connected to it
//! financing_loans = 45678              # loans made with the platform's support
//! financing_amount_wan_yuan = 9876543  # their amount, in 万元 (whole numbers)
//! notes = "optional free text"
//! ```
//!
//! Every problem is reported at once, each with the file, its line and column, and the field;
//! unknown keys are refused (a misspelt key would otherwise silently leave a figure out).

use std::fmt;
use std::path::{Path, PathBuf};

use protocol::OperatorFigures;
use protocol::progress::PROGRESS_NOTES_BYTES_MAX;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The whole-number keys, in the order they are written.
const NUMBER_KEYS: [&str; 4] = [
    "registered_enterprises",
    "financial_institutions",
    "financing_loans",
    "financing_amount_wan_yuan",
];
const NOTES_KEY: &str = "notes";
/// Largest figures file read.
const FILE_BYTES_MAX: u64 = 64 * 1024;

/// One problem of a figures file, at its line and column (1-based, in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiguresProblem {
    pub line: usize,
    pub column: usize,
    /// The key it is about, if any.
    pub field: Option<String>,
    pub message: String,
}

/// Why a figures file was not read.
#[derive(Debug, thiserror::Error)]
pub enum FiguresError {
    #[error("cannot read the figures file {path}: {io}")]
    Read { path: PathBuf, io: std::io::Error },
    #[error("the figures file {path} is {bytes} bytes, more than the limit of {FILE_BYTES_MAX}")]
    TooLarge { path: PathBuf, bytes: u64 },
    #[error("{} problem(s) in the figures file {}:\n{}", .problems.len(), .path.display(), Lines(.path, .problems))]
    Problems {
        path: PathBuf,
        problems: Vec<FiguresProblem>,
    },
}

/// The problems as `file:line:column: field: message` lines.
struct Lines<'a>(&'a Path, &'a [FiguresProblem]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.1.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: ", self.0.display(), p.line, p.column)?;
            if let Some(field) = &p.field {
                write!(f, "{field}: ")?;
            }
            write!(f, "{}", p.message)?;
        }
        Ok(())
    }
}

/// Reads and checks the figures file at `path`.
pub fn read(path: &Path) -> Result<OperatorFigures, FiguresError> {
    let read_error = |io| FiguresError::Read {
        path: path.to_owned(),
        io,
    };
    let bytes = std::fs::metadata(path).map_err(read_error)?.len();
    if bytes > FILE_BYTES_MAX {
        return Err(FiguresError::TooLarge {
            path: path.to_owned(),
            bytes,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    parse(&text, path)
}

/// Checks the text of a figures file; `path` names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<OperatorFigures, FiguresError> {
    let fail = |problems: Vec<FiguresProblem>| FiguresError::Problems {
        path: path.to_owned(),
        problems,
    };
    let lines = LineIndex::new(text);
    let problem = |offset: usize, field: Option<&str>, message: String| {
        let (line, column) = lines.pos(offset);
        FiguresProblem {
            line,
            column,
            field: field.map(str::to_owned),
            message,
        }
    };
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        return Err(fail(
            syntax
                .iter()
                .map(|e| {
                    problem(
                        e.span().map_or(0, |s| s.start),
                        None,
                        format!("TOML syntax: {}", e.message()),
                    )
                })
                .collect(),
        ));
    }
    let root = root.get_ref();
    let mut problems = Vec::new();
    for (key, _) in root.iter() {
        let name = key.get_ref().as_ref();
        if !NUMBER_KEYS.contains(&name) && name != NOTES_KEY {
            problems.push(problem(
                key.span().start,
                Some(name),
                format!(
                    "unknown key: the figures file holds {} and optionally `{NOTES_KEY}`",
                    NUMBER_KEYS.map(|k| format!("`{k}`")).join(", ")
                ),
            ));
        }
    }
    let lookup = |key: &str| -> Option<&Spanned<DeValue<'_>>> {
        root.iter()
            .find(|(name, _)| name.get_ref() == key)
            .map(|(_, value)| value)
    };
    let mut numbers = [0u64; 4];
    for (slot, key) in numbers.iter_mut().zip(NUMBER_KEYS) {
        match lookup(key) {
            None => problems.push(problem(
                text.len(),
                Some(key),
                format!("missing: add `{key} = 0` (a whole number; 0 if there is none)"),
            )),
            Some(value) => {
                let number = match value.get_ref() {
                    DeValue::Integer(integer) => {
                        u64::from_str_radix(integer.as_str(), integer.radix()).ok()
                    }
                    _ => None,
                };
                match number {
                    Some(n) => *slot = n,
                    None => problems.push(problem(
                        value.span().start,
                        Some(key),
                        format!(
                            "must be a whole number of 0 or more, found {}: write e.g. `{key} = 120`",
                            describe(value.get_ref())
                        ),
                    )),
                }
            }
        }
    }
    let notes = match lookup(NOTES_KEY) {
        None => None,
        Some(value) => match value.get_ref() {
            DeValue::String(s) if s.len() <= PROGRESS_NOTES_BYTES_MAX => Some(s.to_string()),
            DeValue::String(s) => {
                problems.push(problem(
                    value.span().start,
                    Some(NOTES_KEY),
                    format!(
                        "is {} bytes, more than the limit of {PROGRESS_NOTES_BYTES_MAX}: shorten it",
                        s.len()
                    ),
                ));
                None
            }
            other => {
                problems.push(problem(
                    value.span().start,
                    Some(NOTES_KEY),
                    format!(
                        "must be a string, found {}: write `notes = \"…\"`",
                        describe(other)
                    ),
                ));
                None
            }
        },
    };
    if !problems.is_empty() {
        problems.sort_by_key(|p| (p.line, p.column));
        return Err(fail(problems));
    }
    Ok(OperatorFigures {
        registered_enterprises: numbers[0],
        financial_institutions: numbers[1],
        financing_loans: numbers[2],
        financing_amount_wan_yuan: numbers[3],
        notes,
    })
}

fn describe(value: &DeValue<'_>) -> String {
    match value {
        DeValue::Integer(i) => format!("the number {}", i.as_str()),
        DeValue::Float(f) => format!("the number {}", f.as_str()),
        other => format!("a {}", other.type_str()),
    }
}

/// Byte offsets to line and column (characters), as editors count them.
struct LineIndex<'t> {
    text: &'t str,
    starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    fn new(text: &'t str) -> LineIndex<'t> {
        let first = if text.starts_with('\u{feff}') { 3 } else { 0 };
        let starts = std::iter::once(first)
            .chain(text.match_indices('\n').map(|(offset, _)| offset + 1))
            .collect();
        LineIndex { text, starts }
    }

    fn pos(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.clamp(self.starts[0], self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&start| start <= offset);
        let start = self.starts[line - 1];
        (line, self.text[start..offset].chars().count() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "registered_enterprises = 1234567\nfinancial_institutions = 321\nfinancing_loans = 45678\nfinancing_amount_wan_yuan = 9876543\nnotes = \"含三家农商行\"\n";

    fn problems(text: &str) -> (String, Vec<FiguresProblem>) {
        match parse(text, Path::new("figures.toml")) {
            Err(e @ FiguresError::Problems { .. }) => {
                let message = e.to_string();
                let FiguresError::Problems { problems, .. } = e else {
                    unreachable!()
                };
                (message, problems)
            }
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn a_good_file_reads() {
        let figures = parse(GOOD, Path::new("figures.toml")).unwrap();
        assert_eq!(figures.registered_enterprises, 1_234_567);
        assert_eq!(figures.financial_institutions, 321);
        assert_eq!(figures.financing_loans, 45_678);
        assert_eq!(figures.financing_amount_wan_yuan, 9_876_543);
        assert_eq!(figures.notes.as_deref(), Some("含三家农商行"));
        let without_notes = GOOD.replace("notes = \"含三家农商行\"\n", "");
        assert_eq!(
            parse(&without_notes, Path::new("f")).unwrap().notes,
            None,
            "notes are optional"
        );
    }

    #[test]
    fn every_problem_names_file_line_and_field() {
        let text = "registered_enterprises = 12.5\nfinancial_institution = 3\nfinancing_loans = -4\nfinancing_amount_wan_yuan = \"many\"\nnotes = 7\n";
        let (message, found) = problems(text);
        let at: Vec<(usize, Option<&str>)> =
            found.iter().map(|p| (p.line, p.field.as_deref())).collect();
        assert_eq!(
            at,
            vec![
                (1, Some("registered_enterprises")),
                (2, Some("financial_institution")),
                (3, Some("financing_loans")),
                (4, Some("financing_amount_wan_yuan")),
                (5, Some("notes")),
                (6, Some("financial_institutions")),
            ],
            "{message}"
        );
        assert!(
            message.contains("figures.toml:2:1: financial_institution: unknown key"),
            "{message}"
        );
        assert!(
            message.contains("figures.toml:1:26: registered_enterprises: must be a whole number"),
            "{message}"
        );
        assert!(
            message.contains("financial_institutions: missing"),
            "{message}"
        );
    }

    #[test]
    fn syntax_errors_name_their_line() {
        let (message, found) = problems("registered_enterprises = 1\nfinancing_loans = = 3\n");
        assert!(!found.is_empty(), "{message}");
        assert!(found.iter().all(|p| p.line == 2), "{message}");
        assert!(
            message.contains("figures.toml:2:19: TOML syntax"),
            "{message}"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let error = read(Path::new("/nonexistent/figures.toml")).unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/figures.toml"),
            "{error}"
        );
    }
}
