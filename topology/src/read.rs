//! Reads the TOML text into a [`Draft`]: syntax, known keys, value types and the form of each
//! value (node id, role, address, key), each problem at the position of its value.
//!
//! Walks the spanned document rather than deriving `Deserialize`, so that every unknown key,
//! missing key and wrong type is reported in one pass (serde stops at the first).

use std::net::SocketAddr;

use protocol::{Category, NodeId, PublicKey, Registry};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::admission::{Date, KeyEnd, datetime_ms};
use crate::validate::{
    AllocationEntry, AssessmentEntry, At, Draft, Entry, Field, LinkEntry, OldKeyEntry, ParentField,
    Pos, ProfileEntry, ScheduleEntry, check_address, check_name, check_text, error,
    unknown_category,
};
use crate::{Role, TopologyError, parse_cadence};

/// The keys of the top level. A new section is added here and read in [`read`]; files
/// without it stay valid.
const TOP_LEVEL_KEYS: &[&str] = &[
    "version",
    "require_assessment",
    "revoked_keys",
    "node",
    "old_key",
    "legacy_link",
    "assessment",
    "schedule",
    "profile",
];

/// The keys of an `[[old_key]]` table, in the order they are rendered (one of the two times).
const OLD_KEY_KEYS: &[&str] = &["node", "public_key", "retired_at", "revoked_at"];

/// The keys of an `[[assessment]]` table, in the order they are rendered.
const ASSESSMENT_KEYS: &[&str] = &[
    "node",
    "assessor",
    "reference",
    "assessed_on",
    "valid_until",
];

/// The keys of a `[[profile]]` table, in the order they are rendered.
const PROFILE_KEYS: &[&str] = &["category", "fields"];

/// The keys of a `[[node]]` table, in the order [`crate::Topology::render`] writes them.
const NODE_KEYS: &[&str] = &["id", "name", "role", "parent", "address", "public_key"];

/// The keys of a `[[legacy_link]]` table, in the order they are rendered.
const LEGACY_LINK_KEYS: &[&str] = &["node", "migrate", "verify_window_s", "rollback_window_s"];

/// The keys of a `[[schedule]]` table, in the order they are rendered.
const SCHEDULE_KEYS: &[&str] = &["category", "cadence", "due_day", "reporters", "allocation"];

/// The keys of a `[[schedule.allocation]]` table, in the order they are rendered.
const ALLOCATION_KEYS: &[&str] = &[
    "reporter",
    "covers",
    "data_source",
    "responsible",
    "contact",
];

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

    let require_assessment = match lookup(root, "require_assessment") {
        None => Field::Absent,
        Some(value) => reader.boolean(value, "require_assessment", "require_assessment = true"),
    };
    let revoked_keys = match lookup(root, "revoked_keys") {
        None => Vec::new(),
        Some(value) => reader.revoked_keys(value),
    };
    let entries = reader.tables(root, "node", |reader, table, pos| reader.node(table, pos));
    let links = reader.tables(root, "legacy_link", |reader, table, pos| {
        reader.legacy_link(table, pos)
    });
    let old_keys = reader.tables(root, "old_key", |reader, table, pos| {
        reader.old_key(table, pos)
    });
    let assessments = reader.tables(root, "assessment", |reader, table, pos| {
        reader.assessment(table, pos)
    });
    let schedules = reader.tables(root, "schedule", |reader, table, pos| {
        reader.schedule(table, pos)
    });
    let profiles = reader.tables(root, "profile", |reader, table, pos| {
        reader.profile(table, pos)
    });
    let draft = Draft {
        file: Pos::START,
        version,
        require_assessment,
        revoked_keys,
        entries,
        old_keys,
        links,
        assessments,
        schedules,
        profiles,
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

    /// Reads the array of tables `[[name]]` with `read`, reporting anything else.
    fn tables<T>(
        &mut self,
        root: &DeTable<'_>,
        name: &str,
        read: impl FnMut(&mut Self, &DeTable<'_>, Pos) -> T,
    ) -> Vec<T> {
        self.tables_as(root, name, name, read)
    }

    /// Reads the array of tables under `key` of `root`, written `[[name]]`, with `read`.
    fn tables_as<T>(
        &mut self,
        root: &DeTable<'_>,
        key: &str,
        name: &str,
        mut read: impl FnMut(&mut Self, &DeTable<'_>, Pos) -> T,
    ) -> Vec<T> {
        let mut items = Vec::new();
        let Some(value) = lookup(root, key) else {
            return items;
        };
        match value.get_ref() {
            DeValue::Array(array) => {
                for element in array.iter() {
                    let pos = self.pos(element.span().start);
                    match element.get_ref() {
                        DeValue::Table(table) => items.push(read(self, table, pos)),
                        other => self.report(
                            pos,
                            format!(
                                "each {name} must be a table, found {}: write each {name} as a [[{name}]] table",
                                a_type(other)
                            ),
                        ),
                    }
                }
            }
            other => {
                let pos = self.pos(value.span().start);
                self.report(
                    pos,
                    format!(
                        "`{key}` must be an array of tables, found {}: write each {key} under its own [[{name}]] header (two brackets)",
                        a_type(other)
                    ),
                );
            }
        }
        items
    }

    /// A string value of `key` in a `[[table_name]]` table, or a report that it is missing or
    /// not a string.
    fn string<'t>(
        &mut self,
        table: &'t DeTable<'_>,
        table_pos: Pos,
        table_name: &str,
        key: &str,
        required: bool,
    ) -> Option<(&'t str, Pos)> {
        let Some(value) = lookup(table, key) else {
            if required {
                self.report(
                    table_pos,
                    format!(
                        "this [[{table_name}]] has no `{key}`: add {}",
                        example(table_name, key)
                    ),
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
                        example(table_name, key)
                    ),
                );
                None
            }
        }
    }

    /// An optional whole number, as written (range checks come later).
    fn integer(&mut self, table: &DeTable<'_>, table_name: &str, key: &str) -> Field<i128> {
        let Some(value) = lookup(table, key) else {
            return Field::Absent;
        };
        let pos = self.pos(value.span().start);
        let number = match value.get_ref() {
            DeValue::Integer(integer) => {
                i128::from_str_radix(integer.as_str(), integer.radix()).ok()
            }
            _ => None,
        };
        match number {
            Some(value) => Field::Given(At { value, pos }),
            None => {
                let found = a_type(value.get_ref());
                self.report(
                    pos,
                    format!(
                        "`{key}` must be a whole number, found {found}: write {}",
                        example(table_name, key)
                    ),
                );
                Field::Invalid
            }
        }
    }

    fn revoked_keys(&mut self, value: &Spanned<DeValue<'_>>) -> Vec<At<PublicKey>> {
        let mut keys = Vec::new();
        let DeValue::Array(array) = value.get_ref() else {
            let pos = self.pos(value.span().start);
            let found = a_type(value.get_ref());
            self.report(
                pos,
                format!(
                    "`revoked_keys` must be an array of keys, found {found}: write revoked_keys = [\"<64 hexadecimal characters>\", …]"
                ),
            );
            return keys;
        };
        for element in array.iter() {
            let pos = self.pos(element.span().start);
            match element.get_ref() {
                DeValue::String(text) => match PublicKey::parse_hex(text) {
                    Ok(key) => keys.push(At { value: key, pos }),
                    Err(problem) => self.report(pos, format!("revoked_keys: {problem}")),
                },
                other => self.report(
                    pos,
                    format!(
                        "each revoked key must be a string in quotes, found {}: write the key's 64 hexadecimal characters in quotes",
                        a_type(other)
                    ),
                ),
            }
        }
        keys
    }

    /// A node id at `key`; a malformed one is reported, prefixed with `label`.
    fn node_id(
        &mut self,
        table: &DeTable<'_>,
        table_pos: Pos,
        name: &str,
        key: &str,
        label: &str,
    ) -> Option<At<NodeId>> {
        let (text, pos) = self.string(table, table_pos, name, key, true)?;
        match NodeId::parse(text) {
            Ok(id) => Some(At { value: id, pos }),
            Err(problem) => {
                self.report(pos, format!("{label}{problem}"));
                None
            }
        }
    }

    /// The node ids of an array at `key`, each bad element reported where it stands.
    fn node_id_elements(
        &mut self,
        array: &toml::de::DeArray<'_>,
        key: &str,
        each: &str,
        example: &str,
    ) -> Vec<At<NodeId>> {
        let mut ids = Vec::new();
        for element in array.iter() {
            let element_pos = self.pos(element.span().start);
            match element.get_ref() {
                DeValue::String(text) => match NodeId::parse(text) {
                    Ok(id) => ids.push(At {
                        value: id,
                        pos: element_pos,
                    }),
                    Err(problem) => self.report(element_pos, format!("{key}: {problem}")),
                },
                other => self.report(
                    element_pos,
                    format!(
                        "{each} must be a node id in quotes, found {}: write {example}",
                        a_type(other)
                    ),
                ),
            }
        }
        ids
    }

    /// A `true` or `false` at `key`.
    fn boolean(&mut self, value: &Spanned<DeValue<'_>>, key: &str, example: &str) -> Field<bool> {
        let pos = self.pos(value.span().start);
        match value.get_ref() {
            DeValue::Boolean(flag) => Field::Given(At { value: *flag, pos }),
            other => {
                self.report(
                    pos,
                    format!(
                        "`{key}` must be true or false (no quotes), found {}: write {example}",
                        a_type(other)
                    ),
                );
                Field::Invalid
            }
        }
    }

    /// A one-line text at `key` (see `check_text`); absent is fine unless `required`.
    fn text(
        &mut self,
        table: &DeTable<'_>,
        table_pos: Pos,
        name: &str,
        key: &str,
        required: bool,
    ) -> Field<String> {
        if lookup(table, key).is_none() && !required {
            return Field::Absent;
        }
        match self.string(table, table_pos, name, key, required) {
            None => Field::Invalid,
            Some((text, pos)) => match check_text(key, text) {
                Ok(()) => Field::Given(At {
                    value: text.to_owned(),
                    pos,
                }),
                Err(message) => {
                    self.report(pos, message);
                    Field::Invalid
                }
            },
        }
    }

    /// A public key at `key`, required.
    fn public_key(
        &mut self,
        table: &DeTable<'_>,
        table_pos: Pos,
        name: &str,
        key: &str,
    ) -> Option<At<PublicKey>> {
        self.string(table, table_pos, name, key, true)
            .and_then(|(text, pos)| match PublicKey::parse_hex(text) {
                Ok(key) => Some(At { value: key, pos }),
                Err(problem) => {
                    self.report(pos, problem.to_string());
                    None
                }
            })
    }

    /// A TOML date-time (or date) at `key` as Unix milliseconds; without an offset, Beijing
    /// time (+08:00) is meant; a date alone means 00:00 of that day.
    fn instant(&mut self, value: &Spanned<DeValue<'_>>, key: &str) -> Option<At<u64>> {
        let pos = self.pos(value.span().start);
        let write = format!(
            "write {key} = 2026-06-01T10:00:00+08:00 (a TOML date-time, no quotes; Beijing time if the offset is left out)"
        );
        let DeValue::Datetime(datetime) = value.get_ref() else {
            let found = a_type(value.get_ref());
            self.report(
                pos,
                format!("`{key}` must be a date-time, found {found}: {write}"),
            );
            return None;
        };
        if datetime.date.is_none() {
            self.report(pos, format!("`{key}` has no date: {write}"));
            return None;
        }
        match datetime_ms(datetime) {
            Some(ms) => Some(At { value: ms, pos }),
            None => {
                self.report(
                    pos,
                    format!("`{key}` is not a valid date-time after 1970: {write}"),
                );
                None
            }
        }
    }

    /// A TOML date (no time) at `key`, required.
    fn date(
        &mut self,
        table: &DeTable<'_>,
        table_pos: Pos,
        name: &str,
        key: &str,
    ) -> Option<At<Date>> {
        let write = format!("write {}", example(name, key));
        let Some(value) = lookup(table, key) else {
            self.report(
                table_pos,
                format!("this [[{name}]] has no `{key}`: {write}"),
            );
            return None;
        };
        let pos = self.pos(value.span().start);
        let date = match value.get_ref() {
            DeValue::Datetime(datetime) if datetime.time.is_none() => datetime
                .date
                .and_then(|d| Date::new(d.year, d.month, d.day)),
            _ => None,
        };
        if date.is_none() {
            let found = match value.get_ref() {
                DeValue::Datetime(_) => "a date-time or an impossible date".to_owned(),
                other => a_type(other),
            };
            self.report(
                pos,
                format!(
                    "`{key}` must be a calendar date (no quotes, no time), found {found}: {write}"
                ),
            );
        }
        date.map(|value| At { value, pos })
    }

    fn old_key(&mut self, table: &DeTable<'_>, table_pos: Pos) -> OldKeyEntry {
        const NAME: &str = "old_key";
        self.unknown_keys(table, OLD_KEY_KEYS, "in [[old_key]]");
        let node = self.node_id(table, table_pos, NAME, "node", "old_key node: ");
        let public_key = self.public_key(table, table_pos, NAME, "public_key");
        let retired = lookup(table, "retired_at").map(|v| (KeyEnd::Retired, v));
        let revoked = lookup(table, "revoked_at").map(|v| (KeyEnd::Revoked, v));
        let end = match (retired, revoked) {
            (Some(_), Some((_, value))) => {
                let pos = self.pos(value.span().start);
                self.report(
                    pos,
                    "an [[old_key]] has retired_at (rotation) or revoked_at (compromise), not both: keep the one that happened",
                );
                None
            }
            (None, None) => {
                self.report(
                    table_pos,
                    "this [[old_key]] has neither retired_at nor revoked_at: write retired_at = 2026-06-01T10:00:00+08:00 for a key replaced on schedule, or revoked_at = … for a key that was stolen or lost",
                );
                None
            }
            (Some((end, value)), None) | (None, Some((end, value))) => {
                let key = match end {
                    KeyEnd::Retired => "retired_at",
                    KeyEnd::Revoked => "revoked_at",
                };
                self.instant(value, key).map(|at| (end, at))
            }
        };
        OldKeyEntry {
            node,
            public_key,
            end,
        }
    }

    fn assessment(&mut self, table: &DeTable<'_>, table_pos: Pos) -> AssessmentEntry {
        const NAME: &str = "assessment";
        self.unknown_keys(table, ASSESSMENT_KEYS, "in [[assessment]]");
        let node = self.node_id(table, table_pos, NAME, "node", "assessment node: ");
        let text = |reader: &mut Self, key: &str, required: bool| {
            reader.text(table, table_pos, NAME, key, required)
        };
        let assessor = text(self, "assessor", true);
        let reference = text(self, "reference", false);
        let assessed_on = self.date(table, table_pos, NAME, "assessed_on");
        let valid_until = self.date(table, table_pos, NAME, "valid_until");
        AssessmentEntry {
            node,
            assessor,
            reference,
            assessed_on,
            valid_until,
        }
    }

    fn legacy_link(&mut self, table: &DeTable<'_>, table_pos: Pos) -> LinkEntry {
        const NAME: &str = "legacy_link";
        self.unknown_keys(table, LEGACY_LINK_KEYS, "in [[legacy_link]]");
        let node = self.node_id(table, table_pos, NAME, "node", "legacy_link node: ");
        let migrate = match lookup(table, "migrate") {
            None => Field::Absent,
            Some(value) => self.boolean(value, "migrate", example(NAME, "migrate")),
        };
        let verify_window_s = self.integer(table, NAME, "verify_window_s");
        let rollback_window_s = self.integer(table, NAME, "rollback_window_s");
        LinkEntry {
            node,
            migrate,
            verify_window_s,
            rollback_window_s,
        }
    }

    /// A `category` with a compiled-in schema, required.
    fn category(
        &mut self,
        table: &DeTable<'_>,
        table_pos: Pos,
        name: &str,
    ) -> Option<At<Category>> {
        self.string(table, table_pos, name, "category", true)
            .and_then(|(text, pos)| {
                match Category::parse(text)
                    .ok()
                    .filter(|category| Registry::builtin().get(category).is_some())
                {
                    Some(category) => Some(At {
                        value: category,
                        pos,
                    }),
                    None => {
                        self.report(pos, unknown_category(text));
                        None
                    }
                }
            })
    }

    fn profile(&mut self, table: &DeTable<'_>, table_pos: Pos) -> ProfileEntry {
        const NAME: &str = "profile";
        self.unknown_keys(table, PROFILE_KEYS, "in [[profile]]");
        let category = self.category(table, table_pos, NAME);
        let fields = match lookup(table, "fields") {
            None => {
                self.report(
                    table_pos,
                    format!(
                        "this [[profile]] has no `fields`: add {}",
                        example(NAME, "fields")
                    ),
                );
                None
            }
            Some(value) => {
                let pos = self.pos(value.span().start);
                match value.get_ref() {
                    DeValue::Array(array) => {
                        let mut names = Vec::new();
                        for element in array.iter() {
                            let at = self.pos(element.span().start);
                            match element.get_ref() {
                                DeValue::String(text) => names.push(At {
                                    value: text.as_ref().to_owned(),
                                    pos: at,
                                }),
                                other => self.report(
                                    at,
                                    format!(
                                        "each field of a profile must be a field's machine name in quotes, found {}: write {}",
                                        a_type(other),
                                        example(NAME, "fields")
                                    ),
                                ),
                            }
                        }
                        Some(At { value: names, pos })
                    }
                    other => {
                        self.report(
                            pos,
                            format!(
                                "`fields` must be an array of field names, found {}: write {}",
                                a_type(other),
                                example(NAME, "fields")
                            ),
                        );
                        None
                    }
                }
            }
        };
        ProfileEntry { category, fields }
    }

    fn schedule(&mut self, table: &DeTable<'_>, table_pos: Pos) -> ScheduleEntry {
        const NAME: &str = "schedule";
        self.unknown_keys(table, SCHEDULE_KEYS, "in [[schedule]]");
        let category = self.category(table, table_pos, NAME);
        let cadence = self
            .string(table, table_pos, NAME, "cadence", true)
            .and_then(|(text, pos)| match parse_cadence(text) {
                Some(cadence) => Some(At {
                    value: cadence,
                    pos,
                }),
                None => {
                    self.report(
                        pos,
                        format!("cadence {text:?} must be one of monthly, daily, event"),
                    );
                    None
                }
            });
        let due_day = self.integer(table, NAME, "due_day");
        let reporters = match lookup(table, "reporters") {
            None => Field::Absent,
            Some(value) => {
                let pos = self.pos(value.span().start);
                match value.get_ref() {
                    DeValue::Array(array) => {
                        if array.is_empty() {
                            let of = category.as_ref().map_or_else(
                                || "this category".to_owned(),
                                |category| category.value.to_string(),
                            );
                            self.report(
                                pos,
                                format!(
                                    "reporters of {of} is empty: list the nodes that owe {of}, or remove `reporters` to mean every county-level node"
                                ),
                            );
                        }
                        let ids = self.node_id_elements(
                            array,
                            "reporters",
                            "each reporter",
                            "reporters = [\"445281\", \"445202\"]",
                        );
                        Field::Given(At { value: ids, pos })
                    }
                    other => {
                        self.report(
                            pos,
                            format!(
                                "`reporters` must be an array of node ids, found {}: write {}",
                                a_type(other),
                                example(NAME, "reporters")
                            ),
                        );
                        Field::Invalid
                    }
                }
            }
        };
        let allocation = self.tables_as(
            table,
            "allocation",
            "schedule.allocation",
            |reader, table, pos| reader.allocation(table, pos),
        );
        ScheduleEntry {
            table: table_pos,
            category,
            cadence,
            due_day,
            reporters,
            allocation,
        }
    }

    fn allocation(&mut self, table: &DeTable<'_>, table_pos: Pos) -> AllocationEntry {
        const NAME: &str = "schedule.allocation";
        self.unknown_keys(table, ALLOCATION_KEYS, "in [[schedule.allocation]]");
        let reporter = self.node_id(table, table_pos, NAME, "reporter", "reporter: ");
        let covers = match lookup(table, "covers") {
            None => Field::Absent,
            Some(value) => {
                let pos = self.pos(value.span().start);
                match value.get_ref() {
                    DeValue::Array(array) => {
                        if array.is_empty() {
                            self.report(
                                pos,
                                "covers is empty: list the districts whose data this reporter reports, or remove `covers` if it reports only its own",
                            );
                        }
                        let ids = self.node_id_elements(
                            array,
                            "covers",
                            "each covered node",
                            example(NAME, "covers"),
                        );
                        Field::Given(At { value: ids, pos })
                    }
                    other => {
                        self.report(
                            pos,
                            format!(
                                "`covers` must be an array of node ids, found {}: write {}",
                                a_type(other),
                                example(NAME, "covers")
                            ),
                        );
                        Field::Invalid
                    }
                }
            }
        };
        let text = |reader: &mut Self, key: &str, required: bool| {
            reader.text(table, table_pos, NAME, key, required)
        };
        let data_source = text(self, "data_source", true).given().cloned();
        let responsible = text(self, "responsible", true).given().cloned();
        let contact = text(self, "contact", false);
        AllocationEntry {
            reporter,
            covers,
            data_source,
            responsible,
            contact,
        }
    }

    fn node(&mut self, table: &DeTable<'_>, table_pos: Pos) -> Entry {
        self.unknown_keys(table, NODE_KEYS, "in [[node]]");

        let id = self.node_id(table, table_pos, "node", "id", "");
        let name = self
            .string(table, table_pos, "node", "name", true)
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
            .string(table, table_pos, "node", "role", true)
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
                match self.string(table, table_pos, "node", "parent", false) {
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
            .string(table, table_pos, "node", "address", true)
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
        let public_key = self.public_key(table, table_pos, "node", "public_key");
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

/// How to write `key` of a `[[table]]`, for messages.
fn example(table: &str, key: &str) -> &'static str {
    match (table, key) {
        ("node", "id") => {
            "id = \"445281\" (the six-digit division code; \"000000\" for the national platform)"
        }
        ("node", "name") => "name = \"普宁市\" (the division's name)",
        ("node", "role") => "role = \"county\" (county, city, province or national)",
        ("node", "parent") => "parent = \"445200\" (the id of the node above this one)",
        ("node", "address") => {
            "address = \"127.0.0.1:7000\" (the IP address and port the node listens on)"
        }
        ("node", "public_key") => {
            "public_key = \"...\" (the 64 hexadecimal characters `credit-node init` printed on that node)"
        }
        ("legacy_link", "node") => {
            "node = \"445281\" (the id of the node connected straight to the national platform)"
        }
        ("legacy_link", "migrate") => {
            "migrate = true (move onto the node's parent) or migrate = false (stay on the legacy link)"
        }
        ("legacy_link", "verify_window_s") => {
            "verify_window_s = 60 (seconds the new path must stay healthy in verify)"
        }
        ("legacy_link", "rollback_window_s") => {
            "rollback_window_s = 300 (seconds the legacy link stays open and idle after cut-over)"
        }
        ("schedule", "category") => "category = \"water_fee\" (a category with a schema)",
        ("schedule", "cadence") => "cadence = \"monthly\" (monthly, daily or event)",
        ("schedule", "due_day") => {
            "due_day = 10 (monthly: day of the following month, 1 to 28; event: days after the event, 1 to 365)"
        }
        ("schedule", "reporters") => {
            "reporters = [\"445281\", \"445202\"] (node ids; leave it out to mean every county-level node)"
        }
        ("profile", "category") => "category = \"water_fee\" (a category with a schema)",
        ("profile", "fields") => {
            "fields = [\"subject_name\", \"account_no\", …] (the machine names of the fields that may travel upstream)"
        }
        ("old_key", "node") => "node = \"445281\" (the id of the node the key belonged to)",
        ("old_key", "public_key") => {
            "public_key = \"...\" (the 64 hexadecimal characters of the earlier key)"
        }
        ("assessment", "node") => "node = \"445281\" (the id of the assessed node)",
        ("assessment", "assessor") => {
            "assessor = \"广东省网络安全等级保护测评中心\" (who carried out the assessment)"
        }
        ("assessment", "reference") => "reference = \"GD-2026-0113\" (the report's number)",
        ("assessment", "assessed_on") => "assessed_on = 2026-01-15 (a date, no quotes)",
        ("assessment", "valid_until") => {
            "valid_until = 2027-01-14 (the last valid day, a date, no quotes)"
        }
        ("schedule.allocation", "reporter") => {
            "reporter = \"445200\" (the id of the node that reports this category)"
        }
        ("schedule.allocation", "covers") => {
            "covers = [\"445202\", \"445203\"] (the ids of the nodes below the reporter whose data it reports)"
        }
        ("schedule.allocation", "data_source") => {
            "data_source = \"揭阳市水务集团有限公司\" (the unit that provides the data)"
        }
        ("schedule.allocation", "responsible") => {
            "responsible = \"揭阳市发展改革局\" (the unit that answers for the report)"
        }
        ("schedule.allocation", "contact") => {
            "contact = \"0663-8xxxxxx\" (whom to call, as free text)"
        }
        _ => "a value",
    }
}

/// The known key closest to a misspelt one, if it is close enough to be a typo.
pub(crate) fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
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
        assert_eq!(closest("schedules", TOP_LEVEL_KEYS), Some("schedule"));
        assert_eq!(closest("colour", TOP_LEVEL_KEYS), None);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
