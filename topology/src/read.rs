//! Reads the TOML text into a [`Draft`]: syntax, known keys, value types and the form of each
//! value (node id, role, address, key), each problem at the position of its value.
//!
//! Walks the spanned document rather than deriving `Deserialize`, so that every unknown key,
//! missing key and wrong type is reported in one pass (serde stops at the first).

use std::net::SocketAddr;

use protocol::{NodeId, PublicKey};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::Role;
use crate::TopologyError;
use crate::validate::{At, Draft, Entry, ParentField, Pos, check_address, check_name, error};

/// The keys of the top level. A later section (`legacy_link`, `revoked_keys`, `schedule`) is
/// added here and read in [`read`]; files without it stay valid.
const TOP_LEVEL_KEYS: &[&str] = &["version", "node"];

/// The keys of a `[[node]]` table, in the order [`crate::Topology::render`] writes them.
const NODE_KEYS: &[&str] = &["id", "name", "role", "parent", "address", "public_key"];

/// Reads `text` into a draft and the problems found so far. Syntax errors end the reading: the
/// document after one cannot be trusted, so they are returned alone.
pub(crate) fn read(text: &str) -> Result<(Draft, Vec<TopologyError>), Vec<TopologyError>> {
    let lines = LineIndex::new(text);
    let (root, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        let mut errors: Vec<TopologyError> = syntax_errors
            .iter()
            .map(|problem| syntax_error(text, &lines, problem))
            .collect();
        errors.sort_by_key(|e| (e.line, e.column));
        return Err(errors);
    }
    let mut reader = Reader {
        lines: &lines,
        errors: Vec::new(),
    };
    let root = root.get_ref();
    reader.unknown_keys(root, TOP_LEVEL_KEYS, "at the top level of the file");

    let version = match lookup(root, "version") {
        None => {
            reader.report(
                Pos::START,
                "the file has no version: add `version = 1` as its first line, and raise it on every edit",
            );
            None
        }
        Some(value) => reader.version(value),
    };

    let mut entries = Vec::new();
    if let Some(nodes) = lookup(root, "node") {
        match nodes.get_ref() {
            DeValue::Array(array) => {
                for element in array.iter() {
                    match element.get_ref() {
                        DeValue::Table(table) => {
                            entries.push(reader.node(table, reader.pos(element.span().start)));
                        }
                        other => reader.report(
                            reader.pos(element.span().start),
                            format!(
                                "each node must be a table, found {}: write each node as a [[node]] table",
                                a_type(other)
                            ),
                        ),
                    }
                }
            }
            other => reader.report(
                reader.pos(nodes.span().start),
                format!(
                    "`node` must be an array of tables, found {}: write each node under its own [[node]] header (two brackets)",
                    a_type(other)
                ),
            ),
        }
    }
    let draft = Draft {
        file: Pos::START,
        version,
        entries,
    };
    Ok((draft, reader.errors))
}

fn syntax_error(text: &str, lines: &LineIndex, problem: &toml::de::Error) -> TopologyError {
    let span = problem.span().unwrap_or(0..0);
    let pos = lines.pos(span.start);
    let mut message = format!("TOML syntax: {}", problem.message());
    if problem.message() == "duplicate key"
        && let Some(key) = text.get(span)
    {
        message = format!("TOML syntax: duplicate key `{key}`: a key appears once in each table");
    }
    error(pos, message)
}

fn lookup<'a, 'i>(table: &'a DeTable<'i>, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
    table
        .iter()
        .find(|(name, _)| name.get_ref() == key)
        .map(|(_, value)| value)
}

/// "a string", "an integer", … for messages.
fn a_type(value: &DeValue<'_>) -> String {
    let name = value.type_str();
    let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {name}")
}

struct Reader<'a> {
    lines: &'a LineIndex<'a>,
    errors: Vec<TopologyError>,
}

impl Reader<'_> {
    fn pos(&self, offset: usize) -> Pos {
        self.lines.pos(offset)
    }

    fn report(&mut self, pos: Pos, message: impl Into<String>) {
        self.errors.push(error(pos, message));
    }

    /// Refuses every key of `table` that is not in `known`, suggesting the closest known key.
    fn unknown_keys(&mut self, table: &DeTable<'_>, known: &[&str], place: &str) {
        for (key, _) in table.iter() {
            let name = key.get_ref().as_ref();
            if known.contains(&name) {
                continue;
            }
            let hint = match closest(name, known) {
                Some(suggestion) => format!("did you mean `{suggestion}`? "),
                None => String::new(),
            };
            let pos = self.pos(key.span().start);
            self.report(
                pos,
                format!(
                    "unknown key `{name}` {place}: {hint}the keys here are {}",
                    known
                        .iter()
                        .map(|key| format!("`{key}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }

    fn version(&mut self, value: &Spanned<DeValue<'_>>) -> Option<At<u64>> {
        let pos = self.pos(value.span().start);
        let number = match value.get_ref() {
            DeValue::Integer(integer) => {
                u64::from_str_radix(integer.as_str(), integer.radix()).ok()
            }
            _ => None,
        };
        match number {
            Some(number) => Some(At { value: number, pos }),
            None => {
                self.report(
                    pos,
                    "version must be a whole number of 1 or more, such as `version = 1`, raised on every edit",
                );
                None
            }
        }
    }

    /// A string value of `key` in a node table, or a report that it is missing or not a string.
    fn string<'t>(
        &mut self,
        table: &'t DeTable<'_>,
        table_pos: Pos,
        key: &str,
        required: bool,
    ) -> Option<(&'t str, Pos)> {
        let Some(value) = lookup(table, key) else {
            if required {
                self.report(
                    table_pos,
                    format!("this [[node]] has no `{key}`: add {}", example(key)),
                );
            }
            return None;
        };
        let pos = self.pos(value.span().start);
        match value.get_ref() {
            DeValue::String(text) => Some((text.as_ref(), pos)),
            other => {
                self.report(
                    pos,
                    format!(
                        "`{key}` must be a string in quotes, found {}: write {}",
                        a_type(other),
                        example(key)
                    ),
                );
                None
            }
        }
    }

    fn node(&mut self, table: &DeTable<'_>, table_pos: Pos) -> Entry {
        self.unknown_keys(table, NODE_KEYS, "in [[node]]");

        let id = self
            .string(table, table_pos, "id", true)
            .and_then(|(text, pos)| match NodeId::parse(text) {
                Ok(id) => Some(At { value: id, pos }),
                Err(problem) => {
                    self.report(pos, problem.to_string());
                    None
                }
            });
        let name = self
            .string(table, table_pos, "name", true)
            .and_then(|(text, pos)| match check_name(text) {
                Ok(()) => Some(At {
                    value: text.to_owned(),
                    pos,
                }),
                Err(message) => {
                    self.report(pos, message);
                    None
                }
            });
        let role = self
            .string(table, table_pos, "role", true)
            .and_then(|(text, pos)| match text.parse::<Role>() {
                Ok(role) => Some(At { value: role, pos }),
                Err(problem) => {
                    self.report(pos, problem.to_string());
                    None
                }
            });
        let parent = match lookup(table, "parent") {
            None => ParentField::Absent,
            Some(value) => {
                let pos = self.pos(value.span().start);
                match self.string(table, table_pos, "parent", false) {
                    None => ParentField::Invalid(pos),
                    Some((text, pos)) => match NodeId::parse(text) {
                        Ok(id) => ParentField::Given(At { value: id, pos }),
                        Err(problem) => {
                            self.report(pos, format!("parent: {problem}"));
                            ParentField::Invalid(pos)
                        }
                    },
                }
            }
        };
        let address = self
            .string(table, table_pos, "address", true)
            .and_then(|(text, pos)| {
                let checked = text
                    .parse::<SocketAddr>()
                    .map_err(|_| {
                        format!(
                            "address {text:?} must be an IP address and port, such as 127.0.0.1:7000 or [::1]:7000 (host names are not looked up)"
                        )
                    })
                    .and_then(|address| check_address(address).map(|()| address));
                match checked {
                    Ok(address) => Some(At {
                        value: address,
                        pos,
                    }),
                    Err(message) => {
                        self.report(pos, message);
                        None
                    }
                }
            });
        let public_key =
            self.string(table, table_pos, "public_key", true)
                .and_then(|(text, pos)| match PublicKey::parse_hex(text) {
                    Ok(key) => Some(At { value: key, pos }),
                    Err(problem) => {
                        self.report(pos, problem.to_string());
                        None
                    }
                });
        Entry {
            table: table_pos,
            id,
            name,
            role,
            parent,
            address,
            public_key,
        }
    }
}

/// How to write `key`, for messages.
fn example(key: &str) -> &'static str {
    match key {
        "id" => {
            "id = \"445281\" (the six-digit division code; \"000000\" for the national platform)"
        }
        "name" => "name = \"普宁市\" (the division's name)",
        "role" => "role = \"county\" (county, city, province or national)",
        "parent" => "parent = \"445200\" (the id of the node above this one)",
        "address" => "address = \"127.0.0.1:7000\" (the IP address and port the node listens on)",
        "public_key" => {
            "public_key = \"...\" (the 64 hexadecimal characters `credit-node init` printed on that node)"
        }
        _ => "a value",
    }
}

/// The known key closest to a misspelt one, if it is close enough to be a typo.
fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    let name = name.to_lowercase();
    known
        .iter()
        .map(|candidate| (edit_distance(&name, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= 2.max(candidate.len() / 3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// Byte offsets to 1-based lines and columns. Columns count characters, not bytes, so a
/// position after Chinese text matches what an editor shows.
struct LineIndex<'t> {
    text: &'t str,
    /// Byte offset where each line starts.
    starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    fn new(text: &'t str) -> LineIndex<'t> {
        // A byte order mark (Windows Notepad writes one) is not a column an editor shows.
        let first = if text.starts_with('\u{feff}') { 3 } else { 0 };
        let starts = std::iter::once(first)
            .chain(text.match_indices('\n').map(|(offset, _)| offset + 1))
            .collect();
        LineIndex { text, starts }
    }

    fn pos(&self, offset: usize) -> Pos {
        let mut offset = offset.clamp(self.starts[0], self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&start| start <= offset);
        let start = self.starts[line - 1];
        Pos {
            line,
            column: self.text[start..offset].chars().count() + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_characters() {
        let text = "a = 1\n名 = \"揭阳\"\n\nx";
        let index = LineIndex::new(text);
        assert_eq!(index.pos(0), Pos { line: 1, column: 1 });
        assert_eq!(index.pos(4), Pos { line: 1, column: 5 });
        assert_eq!(index.pos(6), Pos { line: 2, column: 1 });
        let quote = text.find('"').unwrap();
        assert_eq!(index.pos(quote), Pos { line: 2, column: 5 });
        assert_eq!(index.pos(text.len()), Pos { line: 4, column: 2 });
        // Inside a character: the character's own column.
        assert_eq!(index.pos(7), Pos { line: 2, column: 1 });

        let index = LineIndex::new("\u{feff}v = 1");
        assert_eq!(index.pos(0), Pos { line: 1, column: 1 });
        assert_eq!(index.pos(3), Pos { line: 1, column: 1 });
        assert_eq!(index.pos(7), Pos { line: 1, column: 5 });
    }

    #[test]
    fn suggestions() {
        assert_eq!(closest("adress", NODE_KEYS), Some("address"));
        assert_eq!(closest("publickey", NODE_KEYS), Some("public_key"));
        assert_eq!(closest("Parent", NODE_KEYS), Some("parent"));
        assert_eq!(closest("versoin", TOP_LEVEL_KEYS), Some("version"));
        assert_eq!(closest("schedule", TOP_LEVEL_KEYS), None);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
