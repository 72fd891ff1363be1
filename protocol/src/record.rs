//! Credit records and their validation against a category [`Schema`].
//!
//! [`Schema::validate`] turns one row of raw text into a normalized, desensitized [`Record`],
//! or returns *every* problem of the row at once (field, value, rule, message). It never
//! panics, whatever the input. [`Schema::check_record`] re-checks a record that arrived from a
//! peer, so a node never stores a record its schema would not have produced.
//!
//! Invariant: a personal field never reaches a [`Record`] in clear. Identity numbers become a
//! [`PersonToken`] (keyed BLAKE3 under the network's [`DesensitizeKey`]) plus a masked form;
//! names, phones and addresses are masked; trade secrets are dropped. Problem reports show
//! personal values masked too, because feedback travels upstream.

use std::borrow::Cow;
use std::fmt;

use bincode::{Decode, Encode};

use crate::batch::EncodedRecords;
use crate::ids::{
    Masked, Period, PeriodText, PersonToken, ResidentId, Uscc, char_count, mask_middle,
    mask_middle_parts, mask_parts, push_hex,
};
use crate::schema::{Desensitize, Field, FieldKind, Required, Schema, Sensitivity, trim_value};

/// Longest record key, in bytes; keys are built from key fields joined with `|`.
pub const RECORD_KEY_BYTES_MAX: usize = 512;
/// Longest value of any text field, in bytes, whatever the schema says; bounds memory per row.
pub const VALUE_BYTES_MAX: usize = 16 * 1024;

/// The key of a record, unique within its category and period (a penalty decision number;
/// an account number and billing month for a fee).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct RecordKey(pub String);

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordKey({})", self.0)
    }
}

/// Whom a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub enum Subject {
    Organization(Uscc),
    /// A natural person, known upstream only by token.
    Person(PersonToken),
}

/// One field's value in a record, after normalization and desensitization.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Value {
    Absent,
    Text(Text),
    /// An identity number replaced by its token and a masked display form.
    Token {
        masked: Text,
        token: PersonToken,
    },
}

/// A field's text, held inline up to 24 bytes — nearly all of a record's texts (dates,
/// amounts, codes, masked names) — and on the heap beyond. Decoding a batch allocated a
/// `String` for each text of a record's values (~17), a third of decoding's instructions,
/// and dropping the batch freed them all, costing nearly as much again (issue 12). Encoded
/// as a `String` is. (Keys stay `String`s: as `Text` they measured slower in one bench.)
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text(compact_str::CompactString);

impl Text {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl std::borrow::Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Text {
        Text(compact_str::CompactString::new(text))
    }
}

impl From<String> for Text {
    /// Keeps the string's allocation when it is too long to be held inline.
    fn from(text: String) -> Text {
        Text(compact_str::CompactString::from(text))
    }
}

impl From<Cow<'_, str>> for Text {
    fn from(text: Cow<'_, str>) -> Text {
        match text {
            Cow::Borrowed(text) => Text::from(text),
            Cow::Owned(text) => Text::from(text),
        }
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl serde::Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self)
    }
}

impl Encode for Text {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        self.as_str().encode(encoder)
    }
}

impl<Context> Decode<Context> for Text {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Text, bincode::error::DecodeError> {
        String::decode(decoder).map(Text::from)
    }
}

impl<'de, Context> bincode::BorrowDecode<'de, Context> for Text {
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Text, bincode::error::DecodeError> {
        <&str>::borrow_decode(decoder).map(Text::from)
    }
}

/// One credit fact. Category and period are the batch's; `values` follow the schema's field
/// order.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Record {
    pub key: RecordKey,
    pub subject: Subject,
    pub values: Vec<Value>,
}

/// A record read in place from a batch's bytes ([`crate::Batch::read_each`]): its key and
/// texts borrow from the bytes, its values from the reader's buffer; nothing is allocated
/// for it. `Record::from` builds the [`Record`] that [`crate::Batch::decode`] gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'b, 'v> {
    pub key: &'b str,
    pub subject: Subject,
    pub values: &'v [ValueRef<'b>],
}

/// A [`Value`] read in place: its texts borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueRef<'b> {
    Absent,
    Text(&'b str),
    Token { masked: &'b str, token: PersonToken },
}

impl<'a> From<&'a Value> for ValueRef<'a> {
    fn from(value: &'a Value) -> ValueRef<'a> {
        match value {
            Value::Absent => ValueRef::Absent,
            Value::Text(text) => ValueRef::Text(text),
            Value::Token { masked, token } => ValueRef::Token {
                masked,
                token: *token,
            },
        }
    }
}

impl From<ValueRef<'_>> for Value {
    #[inline]
    fn from(value: ValueRef<'_>) -> Value {
        match value {
            ValueRef::Absent => Value::Absent,
            ValueRef::Text(text) => Value::Text(Text::from(text)),
            ValueRef::Token { masked, token } => Value::Token {
                masked: Text::from(masked),
                token,
            },
        }
    }
}

impl From<RecordRef<'_, '_>> for Record {
    fn from(record: RecordRef<'_, '_>) -> Record {
        Record {
            key: RecordKey(record.key.to_owned()),
            subject: record.subject,
            values: record
                .values
                .iter()
                .map(|&value| Value::from(value))
                .collect(),
        }
    }
}

/// The length of `n` as a varint of the batch format (bincode's standard configuration: one
/// byte below 251, else a marker byte and 2, 4 or 8 bytes).
pub(crate) fn varint_len(n: usize) -> usize {
    match n as u64 {
        0..=250 => 1,
        251..=0xFFFF => 3,
        0x1_0000..=0xFFFF_FFFF => 5,
        _ => 9,
    }
}

impl Record {
    /// The length of this record's canonical encoding, counted rather than encoded: its key,
    /// its subject (variant and id), its values (each a variant and its texts).
    pub fn canonical_len(&self) -> usize {
        let text = |text: &str| varint_len(text.len()) + text.len();
        let subject = match self.subject {
            Subject::Organization(_) => 1 + 18,
            Subject::Person(_) => 1 + 16,
        };
        let values: usize = self
            .values
            .iter()
            .map(|value| match value {
                Value::Absent => 1,
                Value::Text(t) => 1 + text(t),
                Value::Token { masked, .. } => 1 + text(masked) + 16,
            })
            .sum();
        text(&self.key.0) + subject + varint_len(self.values.len()) + values
    }
}

/// The network-wide secret under which identity numbers become tokens. Every node of one
/// network holds the same key, so tokens join across counties; nobody without it can test a
/// guessed number against a token.
#[derive(Clone)]
pub struct DesensitizeKey(pub [u8; 32]);

impl DesensitizeKey {
    pub fn token(&self, identity: &str) -> PersonToken {
        let hash = blake3::keyed_hash(&self.0, identity.as_bytes());
        let mut token = [0u8; 16];
        token.copy_from_slice(&hash.as_bytes()[..16]);
        PersonToken(token)
    }
}

impl fmt::Debug for DesensitizeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DesensitizeKey(..)")
    }
}

/// Which rule a value broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Rule {
    Required,
    TooLong,
    Format,
    CheckCharacter,
    NotInList,
    OutOfRange,
    PeriodMismatch,
    Subject,
    Key,
    Desensitization,
    DuplicateKey,
    /// A well-formed identifier that is a placeholder no one holds (`000000000000000000`).
    Placeholder,
    /// A field the topology's minimum-necessary profile (最小必要) does not let travel
    /// upstream.
    NotInProfile,
    /// Audit: a key published again without superseding the version held.
    Republished,
    /// Audit: fields that belong to one record appear in two.
    Unique,
    /// Audit: a field greater than the field it may not exceed.
    NotGreater,
    /// Audit: a value far outside the origin's usual range.
    UsualRange,
    /// Audit: one credit code under two names.
    SameName,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Required => "required",
            Rule::TooLong => "too_long",
            Rule::Format => "format",
            Rule::CheckCharacter => "check_character",
            Rule::NotInList => "not_in_list",
            Rule::OutOfRange => "out_of_range",
            Rule::PeriodMismatch => "period_mismatch",
            Rule::Subject => "subject",
            Rule::Key => "key",
            Rule::Desensitization => "desensitization",
            Rule::DuplicateKey => "duplicate_key",
            Rule::Placeholder => "placeholder",
            Rule::NotInProfile => "not_in_profile",
            Rule::Republished => "republished",
            Rule::Unique => "unique",
            Rule::NotGreater => "not_greater",
            Rule::UsualRange => "usual_range",
            Rule::SameName => "same_name",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum Severity {
    /// The record is refused.
    Error,
    /// The record is accepted; an operator should look (e.g. a USCC check character that
    /// fails, as legal early pilot codes do).
    Warning,
}

/// One thing wrong with one field of one record, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Problem {
    /// Machine name of the field (`account_no`), or `(record)` for whole-record rules.
    pub field: String,
    /// Chinese label of the field (`水务户号`).
    pub label: String,
    /// The offending value as given, masked if the field is personal, cut to 64 characters.
    pub value: String,
    pub rule: Rule,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({}) = {:?}: {} [{}]",
            match self.severity {
                Severity::Error => "error:",
                Severity::Warning => "warning:",
            },
            self.field,
            self.label,
            self.value,
            self.message,
            self.rule
        )
    }
}

/// A record that passed validation, with the warnings it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    pub record: Record,
    pub warnings: Vec<Problem>,
}

/// A value that passed its field's checks: the normalized text and maybe a warning. The
/// text borrows the input when that is already in normal form (the usual case), so a field
/// costs at most the one allocation of the value it becomes.
struct Normalized<'a> {
    text: Cow<'a, str>,
    warning: Option<(Rule, String)>,
}

impl<'a> Normalized<'a> {
    fn ok(text: impl Into<Cow<'a, str>>) -> Normalized<'a> {
        Normalized {
            text: text.into(),
            warning: None,
        }
    }

    fn into_owned(self) -> Normalized<'static> {
        Normalized {
            text: Cow::Owned(self.text.into_owned()),
            warning: self.warning,
        }
    }
}

type FieldResult<'a> = Result<Normalized<'a>, (Rule, String)>;

impl Schema {
    /// Validates, normalizes and desensitizes one row. `raw[i]` is the text given for
    /// `self.fields[i]` (`None` if the file has no such column). `period` is the batch's.
    pub fn validate(
        &self,
        raw: &[Option<&str>],
        period: Period,
        key: &DesensitizeKey,
    ) -> Result<Validated, Vec<Problem>> {
        let mut values = Vec::with_capacity(self.fields.len());
        let mut record_key = String::new();
        let texts = PeriodTexts::of(period);
        let (subject, warnings) = self.stage(raw, &texts, key, &mut values, &mut record_key)?;
        Ok(Validated {
            record: Record {
                key: RecordKey(record_key),
                subject,
                values: values.into_iter().map(Staged::into_value).collect(),
            },
            warnings,
        })
    }

    /// [`Schema::validate`], appending the record to `out` in its canonical encoding rather
    /// than building it: the same problems, the same warnings (returned), and the bytes
    /// [`EncodedRecords::push`] of [`Schema::validate`]'s record would add. No allocation
    /// per field and no value built: each value is written in its encoding as it passes its
    /// checks (a value in normal form copied once, from the row; masks written in place), and
    /// the period check, the subject and the key read it back from there (or, for a cell
    /// that was already in normal form and is not desensitized, from the row). `staging` is room
    /// reused from row to row. `tests/validate_fast_path.rs` checks it against
    /// [`Schema::validate`] on arbitrary rows of every schema.
    pub fn validate_encoded(
        &self,
        raw: &[Option<&str>],
        period: Period,
        key: &DesensitizeKey,
        staging: &mut Staging,
        out: &mut EncodedRecords,
    ) -> Result<Vec<Problem>, Vec<Problem>> {
        staging.values.clear();
        staging.key.clear();
        let texts = match staging.period {
            Some(texts) if texts.period == period => texts,
            _ => *staging.period.insert(PeriodTexts::of(period)),
        };
        let (subject, warnings) =
            self.stage(raw, &texts, key, &mut staging.values, &mut staging.key)?;
        let values = &staging.values;
        out.push_bytes(&staging.key, |bytes| {
            // `Subject`'s derived encoding: the variant index, then the id's bytes (a fixed
            // array: no length); then the values as a `Vec`: their count, each value.
            match subject {
                Subject::Organization(uscc) => {
                    bytes.push(0);
                    bytes.extend_from_slice(uscc.as_bytes());
                }
                Subject::Person(token) => {
                    bytes.push(1);
                    bytes.extend_from_slice(&token.0);
                }
            }
            put_len(bytes, values.starts.len());
            bytes.extend_from_slice(&values.bytes);
        });
        Ok(warnings)
    }

    /// The work of [`Schema::validate`]: each field's value into `values` (in field order),
    /// the record key into `record_key`; the subject and the warnings, or every problem.
    /// `texts` are the batch period's.
    fn stage<'a>(
        &self,
        raw: &[Option<&'a str>],
        texts: &PeriodTexts,
        key: &DesensitizeKey,
        values: &mut impl Values<'a>,
        record_key: &mut String,
    ) -> Result<(Subject, Vec<Problem>), Vec<Problem>> {
        assert_eq!(
            raw.len(),
            self.fields.len(),
            "one raw value per schema field"
        );
        let mut problems = Vec::new();
        let mut warnings = Vec::new();
        let trimmed = |i: usize| raw[i].map_or("", trim);
        // The fields (of the first 64) whose value is their trimmed cell as given: the period
        // check, the subject and the key read those from the row rather than from `values`.
        let mut verbatim = 0u64;
        for (index, field) in self.fields.iter().enumerate() {
            // Not `trimmed(index)`: its call is not inlined, and this runs for every cell.
            let text = match raw[index] {
                Some(cell) => trim(cell),
                None => "",
            };
            if text.is_empty() {
                if self.is_required(index, trimmed) {
                    problems.push(self.problem(
                        field,
                        text,
                        Rule::Required,
                        required_message(self, field),
                    ));
                }
                values.push(Staged::Absent);
                continue;
            }
            // The cell in normal form, or an amount written with its zeros (`167.70`,
            // `100.00`), whose start is its normal form (then not verbatim: the value is not
            // the whole cell).
            let normal = if already_normal(&field.kind, text) {
                Some(text)
            } else if let FieldKind::Decimal { scale, min } = field.kind {
                decimal_normal_start(text, scale, min)
            } else {
                None
            };
            if let Some(normal) = normal {
                if field.desensitize == Desensitize::None {
                    if index < 64 && normal.len() == text.len() {
                        verbatim |= 1 << index;
                    }
                    values.push_text(normal);
                } else {
                    values.push(desensitize(field, Cow::Borrowed(normal), key));
                }
                continue;
            }
            match normalize(&field.kind, text, texts.period) {
                Err((rule, message)) => {
                    problems.push(self.problem(field, text, rule, message));
                    values.push(Staged::Absent);
                }
                Ok(normalized) => {
                    if let Some((rule, message)) = normalized.warning {
                        let mut warning = self.problem(field, text, rule, message);
                        warning.severity = Severity::Warning;
                        warnings.push(warning);
                    }
                    values.push(desensitize(field, normalized.text, key));
                }
            }
        }
        let view = |i: usize| {
            if i < 64 && verbatim >> i & 1 == 1 {
                View::Text(Cow::Borrowed(trimmed(i)))
            } else {
                values.view(i)
            }
        };
        if let Some(index) = self.period_field
            && let View::Text(text) = view(index)
            && *text != *texts.month.as_str()
            && *text != *texts.own.as_str()
        {
            let field = &self.fields[index];
            problems.push(self.problem(
                field,
                &text,
                Rule::PeriodMismatch,
                format!("the row is for {text} but the batch is for {}: put this row in a file for {text}, or fix the period", texts.period),
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        match self.identify(view, record_key) {
            Ok(subject) => Ok((subject, warnings)),
            Err(problem) => Err(vec![problem]),
        }
    }

    /// Re-checks a record that arrived from a peer: the right number of values, each one what
    /// this schema's validation would have produced, personal fields desensitized, and subject
    /// and key consistent with the values. Returns every problem found.
    pub fn check_record(&self, record: &Record, period: Period) -> Vec<Problem> {
        let values: Vec<ValueRef<'_>> = record.values.iter().map(ValueRef::from).collect();
        self.check_read(
            RecordRef {
                key: &record.key.0,
                subject: record.subject,
                values: &values,
            },
            period,
        )
    }

    /// [`Schema::check_record`] of a record read in place ([`crate::Batch::read_each`]).
    pub fn check_read(&self, record: RecordRef<'_, '_>, period: Period) -> Vec<Problem> {
        let mut problems = Vec::new();
        if record.values.len() != self.fields.len() {
            problems.push(record_problem(
                Rule::Format,
                format!(
                    "the record has {} values, schema {} version {} has {} fields",
                    record.values.len(),
                    self.category,
                    self.version,
                    self.fields.len()
                ),
            ));
            return problems;
        }
        let text_of = |i: usize| match record.values[i] {
            ValueRef::Text(text) | ValueRef::Token { masked: text, .. } => text,
            ValueRef::Absent => "",
        };
        for (index, (field, &value)) in self.fields.iter().zip(record.values).enumerate() {
            let shown = text_of(index);
            let problem = match (value, field.desensitize) {
                (ValueRef::Absent, _) => self
                    .is_required(index, text_of)
                    .then(|| (Rule::Required, required_message(self, field))),
                (ValueRef::Text(_), Desensitize::Drop)
                | (ValueRef::Token { .. }, Desensitize::Drop) => Some((
                    Rule::Desensitization,
                    "a dropped field carries a value".to_owned(),
                )),
                (ValueRef::Text(_), Desensitize::Token) => Some((
                    Rule::Desensitization,
                    "an identity number arrived in clear instead of as a token".to_owned(),
                )),
                (ValueRef::Token { .. }, rule) if rule != Desensitize::Token => Some((
                    Rule::Format,
                    "a token in a field that is not tokenized".to_owned(),
                )),
                (ValueRef::Token { masked, .. }, _) if masked.len() > 64 => {
                    Some((Rule::TooLong, "masked form longer than 64 bytes".to_owned()))
                }
                (ValueRef::Token { masked, .. }, rule) => reveals_too_much(masked, rule),
                (ValueRef::Text(text), Desensitize::None) if already_normal(&field.kind, text) => {
                    None
                }
                (ValueRef::Text(text), Desensitize::None) => {
                    match normalize(&field.kind, text, period) {
                        Ok(n) if n.text == text => None,
                        Ok(_) => Some((Rule::Format, "value is not in normalized form".to_owned())),
                        Err(e) => Some(e),
                    }
                }
                (ValueRef::Text(text), _) if text.len() > VALUE_BYTES_MAX => {
                    Some((Rule::TooLong, "masked value too long".to_owned()))
                }
                (ValueRef::Text(text), masked) => reveals_too_much(text, masked),
            };
            if let Some((rule, message)) = problem {
                problems.push(self.problem(field, shown, rule, message));
            }
        }
        if let Some(index) = self.period_field {
            let text = text_of(index);
            if !text.is_empty()
                && text != period.month().text().as_str()
                && text != period.text().as_str()
            {
                problems.push(self.problem(
                    &self.fields[index],
                    text,
                    Rule::PeriodMismatch,
                    format!("the record is for {text} but its batch is for {period}"),
                ));
            }
        }
        if problems.is_empty() {
            let mut key = String::new();
            match self.identify(|i| record.values[i].view(), &mut key) {
                Ok(subject) if subject == record.subject && key == record.key => {}
                Ok(_) => problems.push(record_problem(
                    Rule::Key,
                    "subject or record key does not match the record's values".to_owned(),
                )),
                Err(problem) => problems.push(problem),
            }
        }
        problems
    }

    fn is_required<'a>(&self, index: usize, text_of: impl Fn(usize) -> &'a str) -> bool {
        match &self.fields[index].required {
            Required::Always => true,
            Required::Never => false,
            Required::When { field, values } => {
                let other = text_of(*field);
                values.iter().any(|v| v == other)
            }
        }
    }

    /// The subject a record's values give; its record key is written into `key` (empty).
    /// `value(i)` is field `i`'s value.
    fn identify<'v>(
        &self,
        value: impl Fn(usize) -> View<'v>,
        key: &mut String,
    ) -> Result<Subject, Problem> {
        let subject = self
            .subject
            .iter()
            .find_map(|&i| match value(i) {
                View::Absent => None,
                View::Token(token) => Some(Ok(Subject::Person(token))),
                View::Text(text) => Some(
                    Uscc::parse(&text)
                        .map(Subject::Organization)
                        .map_err(|e| e.to_string()),
                ),
            })
            .unwrap_or_else(|| {
                let names: Vec<String> = self
                    .subject
                    .iter()
                    .map(|&i| format!("{} ({})", self.fields[i].label, self.fields[i].name))
                    .collect();
                Err(format!("no subject: fill in one of {}", names.join(" or ")))
            })
            .map_err(|message| record_problem(Rule::Subject, message))?;
        for (n, &i) in self.key.iter().enumerate() {
            if n > 0 {
                key.push('|');
            }
            match value(i) {
                View::Text(text) => key.push_str(&text),
                // The token's Display form, written in place.
                View::Token(token) => push_hex(key, &token.0),
                View::Absent => {}
            }
        }
        if key.len() > RECORD_KEY_BYTES_MAX {
            return Err(record_problem(
                Rule::Key,
                format!(
                    "record key is {} bytes, at most {RECORD_KEY_BYTES_MAX}",
                    key.len()
                ),
            ));
        }
        if key.bytes().all(|b| b == b'|') {
            return Err(record_problem(
                Rule::Key,
                "record key is empty: fill in the key fields".to_owned(),
            ));
        }
        Ok(subject)
    }

    fn problem(&self, field: &Field, value: &str, rule: Rule, message: String) -> Problem {
        // At most the first 64 characters.
        let cut = value
            .char_indices()
            .nth(64)
            .map_or(value, |(i, _)| &value[..i]);
        let shown = if field.sensitivity == Sensitivity::Public {
            cut.to_owned()
        } else {
            mask_middle(cut)
        };
        Problem {
            field: field.name.clone(),
            label: field.label.clone(),
            value: shown,
            rule,
            severity: Severity::Error,
            message,
        }
    }
}

/// [`trim_value`], without its work for the usual cell that starts and ends with a visible
/// ASCII character, which it would leave as it is.
#[inline(always)]
fn trim(value: &str) -> &str {
    // The characters `trim_value` removes: ASCII whitespace, and U+00A0, U+200B, U+3000 and
    // U+FEFF, whose UTF-8 forms start with 0xC2, 0xE2, 0xE3 and 0xEF. Any other lead byte
    // starts a character that stays (most Chinese text starts and ends with one).
    let kept_first = |byte: u8| {
        byte.is_ascii_graphic() || (byte >= 0xc0 && !matches!(byte, 0xc2 | 0xe2 | 0xe3 | 0xef))
    };
    let bytes = value.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return value;
    };
    // Those four end with 0xA0, 0x8B, 0x80 and 0xBF: any other last byte ends a character
    // that stays.
    let kept_last = if last.is_ascii() {
        last.is_ascii_graphic()
    } else {
        !matches!(last, 0xa0 | 0x8b | 0x80 | 0xbf)
            || !["\u{a0}", "\u{200b}", "\u{3000}", "\u{feff}"]
                .iter()
                .any(|space| value.ends_with(space))
    };
    if kept_first(first) && kept_last {
        value
    } else {
        trim_value(value)
    }
}

fn record_problem(rule: Rule, message: String) -> Problem {
    Problem {
        field: "(record)".to_owned(),
        label: String::new(),
        value: String::new(),
        rule,
        severity: Severity::Error,
        message,
    }
}

fn required_message(schema: &Schema, field: &Field) -> String {
    match &field.required {
        Required::When {
            field: other,
            values,
        } => format!(
            "required when {} is {}: fill it in",
            schema.fields[*other].name,
            values.join(" or ")
        ),
        _ => "required but empty: fill it in (or check that the file has this column)".to_owned(),
    }
}

/// What a normalized text becomes under its field's rule: masking is left for when the
/// value is written (see [`Staged`]); the token is made here.
fn desensitize<'a>(field: &Field, text: Cow<'a, str>, key: &DesensitizeKey) -> Staged<'a> {
    match field.desensitize {
        Desensitize::None => Staged::Text(text),
        Desensitize::Token => {
            let token = key.token(&text);
            Staged::Token(text, token)
        }
        rule @ (Desensitize::MaskName | Desensitize::MaskPhone | Desensitize::MaskMiddle) => {
            Staged::Masked(rule, text)
        }
        Desensitize::Drop => Staged::Absent,
    }
}

/// A field's value as validation leaves it, before it is copied anywhere: the normalized text
/// (borrowing the row when it is already in normal form) and what desensitization makes of
/// it. [`Staged::into_value`] gives the [`Value`]; [`Staged::encode`] writes that value's
/// encoding without building it.
enum Staged<'a> {
    Absent,
    /// Sent as validated: `Value::Text`.
    Text(Cow<'a, str>),
    /// Masked by the rule (a name, a phone, an identifier): `Value::Text` of [`masked`].
    Masked(Desensitize, Cow<'a, str>),
    /// An identity number and its token: `Value::Token` with the number masked.
    Token(Cow<'a, str>, PersonToken),
}

/// What the subject, the key and the period check look at in a value.
enum View<'v> {
    Absent,
    Text(Cow<'v, str>),
    Token(PersonToken),
}

impl<'v> ValueRef<'v> {
    fn view(self) -> View<'v> {
        match self {
            ValueRef::Absent => View::Absent,
            ValueRef::Text(text) => View::Text(Cow::Borrowed(text)),
            ValueRef::Token { token, .. } => View::Token(token),
        }
    }
}

impl Staged<'_> {
    fn view(&self) -> View<'_> {
        match self {
            Staged::Absent => View::Absent,
            Staged::Text(text) => View::Text(Cow::Borrowed(text)),
            // Masked fields are hardly ever a subject, key or period: a mask made then.
            Staged::Masked(rule, text) => View::Text(Cow::Owned(masked(*rule, text).to_text())),
            Staged::Token(_, token) => View::Token(*token),
        }
    }

    fn into_value(self) -> Value {
        match self {
            Staged::Absent => Value::Absent,
            Staged::Text(text) => Value::Text(Text::from(text)),
            Staged::Masked(rule, text) => Value::Text(masked(rule, &text).to_text().into()),
            Staged::Token(text, token) => Value::Token {
                masked: mask_middle(&text).into(),
                token,
            },
        }
    }

    /// Writes the encoding of [`Staged::into_value`]: `Value`'s variant index, then its
    /// fields, as its derived `Encode` does (the variant index and each length a varint).
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Staged::Absent => out.push(0),
            Staged::Text(text) => {
                out.push(1);
                put_len(out, text.len());
                out.extend_from_slice(text.as_bytes());
            }
            Staged::Masked(rule, text) => {
                out.push(1);
                let masked = masked(*rule, text);
                put_len(out, masked.len());
                masked.write_to(out);
            }
            Staged::Token(text, token) => {
                out.push(2);
                let masked = mask_middle_parts(text);
                put_len(out, masked.len());
                masked.write_to(out);
                // A fixed-size array: its bytes, no length.
                out.extend_from_slice(&token.0);
            }
        }
    }
}

/// Writes `len` as bincode's varint (a `u64`): one byte below 251, else a marker byte and
/// the little-endian `u16`, `u32` or `u64`.
#[inline]
pub(crate) fn put_len(out: &mut Vec<u8>, len: usize) {
    let len = len as u64;
    if len < 251 {
        out.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(251);
        out.extend_from_slice(&len.to_le_bytes());
    } else if let Ok(len) = u32::try_from(len) {
        out.push(252);
        out.extend_from_slice(&len.to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&len.to_le_bytes());
    }
}

/// Where [`Schema::stage`] puts each field's value as it is checked: [`Schema::validate`]
/// keeps them as [`Staged`] values to build a [`Record`] from; [`Schema::validate_encoded`]
/// writes each straight into its encoding ([`EncodedValues`]). Either way, the period check,
/// the subject and the key see the values as [`View`]s.
trait Values<'a> {
    fn push(&mut self, value: Staged<'a>);
    /// Pushes `Staged::Text(Cow::Borrowed(text))`.
    fn push_text(&mut self, text: &'a str) {
        self.push(Staged::Text(Cow::Borrowed(text)));
    }
    fn view(&self, index: usize) -> View<'_>;
}

impl<'a> Values<'a> for Vec<Staged<'a>> {
    fn push(&mut self, value: Staged<'a>) {
        Vec::push(self, value);
    }

    fn view(&self, index: usize) -> View<'_> {
        self[index].view()
    }
}

/// The values of a row as [`Staged::encode`] writes them, back to back: the record's
/// encoding after its subject and value count.
#[derive(Default)]
struct EncodedValues {
    bytes: Vec<u8>,
    /// Where each value's encoding starts in `bytes`.
    starts: Vec<usize>,
}

impl EncodedValues {
    fn clear(&mut self) {
        self.bytes.clear();
        self.starts.clear();
    }
}

impl<'a> Values<'a> for EncodedValues {
    fn push(&mut self, value: Staged<'a>) {
        self.starts.push(self.bytes.len());
        value.encode(&mut self.bytes);
    }

    /// What `push` writes for the text, without the variants' match.
    #[inline]
    fn push_text(&mut self, text: &'a str) {
        self.starts.push(self.bytes.len());
        match u8::try_from(text.len()) {
            // The variant index and a one-byte length in one write (the usual cell).
            Ok(len) if len < 251 => self.bytes.extend_from_slice(&[1, len]),
            _ => {
                self.bytes.push(1);
                put_len(&mut self.bytes, text.len());
            }
        }
        self.bytes.extend_from_slice(text.as_bytes());
    }

    /// Read back from the encoding: the variant index, then a text's length and bytes, or
    /// the token's bytes, which end a token's encoding.
    fn view(&self, index: usize) -> View<'_> {
        let end = self
            .starts
            .get(index + 1)
            .copied()
            .unwrap_or(self.bytes.len());
        let bytes = &self.bytes[self.starts[index]..end];
        match bytes[0] {
            0 => View::Absent,
            1 => {
                let (len, at) = get_len(&bytes[1..]);
                let text =
                    std::str::from_utf8(&bytes[1 + at..1 + at + len]).expect("written from a str");
                View::Text(Cow::Borrowed(text))
            }
            _ => {
                let mut token = PersonToken([0; 16]);
                let width = token.0.len();
                token.0.copy_from_slice(&bytes[bytes.len() - width..]);
                View::Token(token)
            }
        }
    }
}

/// Reads a length [`put_len`] wrote at the start of `bytes`: the length and the bytes it
/// took.
fn get_len(bytes: &[u8]) -> (usize, usize) {
    let wide = |n: usize| {
        let mut le = [0u8; 8];
        le[..n].copy_from_slice(&bytes[1..1 + n]);
        (u64::from_le_bytes(le) as usize, 1 + n)
    };
    match bytes[0] {
        251 => wide(2),
        252 => wide(4),
        253 => wide(8),
        len => (usize::from(len), 1),
    }
}

/// Room [`Schema::validate_encoded`] reuses from row to row (the values of the row in their
/// encoding, its record key), so that a row allocates nothing of its own, and the texts of
/// the last row's period.
#[derive(Default)]
pub struct Staging {
    values: EncodedValues,
    key: String,
    period: Option<PeriodTexts>,
}

/// The texts a row's period field may hold for a batch of `period`: its month's, its own.
#[derive(Clone, Copy)]
struct PeriodTexts {
    period: Period,
    month: PeriodText,
    own: PeriodText,
}

impl PeriodTexts {
    fn of(period: Period) -> PeriodTexts {
        PeriodTexts {
            period,
            month: period.month().text(),
            own: period.text(),
        }
    }
}

impl Staging {
    pub fn new() -> Self {
        Staging::default()
    }
}

/// `text` masked by `rule` (one of the masks; a token's display form is
/// [`Desensitize::MaskMiddle`]'s).
fn masked(rule: Desensitize, text: &str) -> Masked<'_> {
    match rule {
        Desensitize::MaskName => match char_count(text) {
            0 => Masked::EMPTY,
            // A one-character name still shows that something was masked.
            1 => mask_parts(text, 1, 1, 0, 1),
            n => mask_parts(text, n, 1, 0, 0),
        },
        Desensitize::MaskPhone => {
            let n = char_count(text);
            let (head, tail) = if n == 11 {
                (3, 4)
            } else {
                (3.min(n), 2.min(n.saturating_sub(3)))
            };
            mask_parts(text, n, head, tail, 0)
        }
        _ => mask_middle_parts(text),
    }
}

/// Whether a masked value shows more than its mask keeps: every character the mask stars
/// (by the masked form's own length, which the mask keeps) must be a star. A receiver checks
/// this, so an origin that masks wrongly — or not at all — cannot pass a number upstream.
fn reveals_too_much(masked: &str, rule: Desensitize) -> Option<(Rule, String)> {
    let n = masked.chars().count();
    let (head, tail, what) = match rule {
        Desensitize::Token | Desensitize::MaskMiddle => match n {
            0 => return None,
            n if n <= 4 => (1, 0, "the first character"),
            n if n <= 10 => (2, 1, "the first two and the last character"),
            _ => (6, 1, "the first six and the last character"),
        },
        Desensitize::MaskPhone if n == 11 => (3, 4, "the first three and last four digits"),
        Desensitize::MaskPhone => (
            3.min(n),
            2.min(n.saturating_sub(3)),
            "the first three and last two digits",
        ),
        Desensitize::MaskName => (1.min(n), 0, "the first character"),
        Desensitize::None | Desensitize::Drop => return None,
    };
    let shown = masked
        .chars()
        .enumerate()
        .filter(|&(i, c)| i >= head && i < n.saturating_sub(tail) && c != '*')
        .count();
    (shown > 0).then(|| {
        (
            Rule::Desensitization,
            format!(
                "the masked form shows {shown} character(s) its mask stars: only {what} may be shown"
            ),
        )
    })
}

/// `张三丰` → `张**`.
pub fn mask_name(name: &str) -> String {
    masked(Desensitize::MaskName, name).to_text()
}

/// `13812345678` → `138****5678`; other lengths keep the first three and last two digits.
pub fn mask_phone(phone: &str) -> String {
    masked(Desensitize::MaskPhone, phone).to_text()
}

/// Full-width ASCII forms (as typed with a Chinese input method) become ASCII; returns the
/// input unchanged (no allocation) when it is already ASCII.
fn to_half_width(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| match c {
                '\u{ff01}'..='\u{ff5e}' => char::from_u32(c as u32 - 0xfee0).unwrap_or(c),
                '\u{3000}' => ' ',
                _ => c,
            })
            .collect(),
    )
}

/// Whether [`normalize`] would return `text` (trimmed, not empty) as it is, with no warning,
/// for a field of `kind`: the usual cell of an export, told without building a result.
/// `false` decides nothing (`normalize` then does). Validation asks this first, so the usual
/// cell builds no [`Normalized`]; a property test holds it to `normalize` (both validation
/// paths take it, so `tests/validate_fast_path.rs` cannot).
#[inline(always)]
fn already_normal(kind: &FieldKind, text: &str) -> bool {
    if text.len() > VALUE_BYTES_MAX {
        return false;
    }
    // Each kind's check out of line: this stays a jump to it, inlined where it is asked.
    match kind {
        FieldKind::Text { max_chars } => text_is_normal(text, *max_chars),
        FieldKind::Decimal { scale, min } => decimal_is_normal(text, *scale, *min),
        FieldKind::Date => date_is_normal(text),
        FieldKind::Month => month_is_normal(text),
        FieldKind::Enum { values } => values.iter().any(|v| v == text),
        FieldKind::Uscc => Uscc::normal(text).is_some(),
        FieldKind::Integer { min, max } => integer_is_normal(text, *min, *max),
        FieldKind::Phone => phone_is_normal(text),
        _ => false,
    }
}

#[inline(never)]
fn text_is_normal(text: &str, max_chars: usize) -> bool {
    (text.len() <= max_chars || char_count(text) <= max_chars)
        && scan_controls(text) == (false, false)
}

#[inline(never)]
fn date_is_normal(text: &str) -> bool {
    matches!(Period::parse_normal(text), Some(Period::Day { .. }))
}

#[inline(never)]
fn month_is_normal(text: &str) -> bool {
    matches!(Period::parse_normal(text), Some(Period::Month { .. }))
}

#[inline(never)]
fn integer_is_normal(text: &str, min: Option<i64>, max: Option<i64>) -> bool {
    // What `value.to_string()` writes: no '+', no leading zero, no "-0".
    let digits = text.strip_prefix('-').unwrap_or(text);
    let shaped = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (!digits.starts_with('0') || text == "0");
    shaped
        && text.len() <= 19
        && text
            .parse::<i64>()
            .is_ok_and(|value| min.is_none_or(|m| value >= m) && max.is_none_or(|m| value <= m))
}

#[inline(never)]
fn phone_is_normal(text: &str) -> bool {
    let digits = text.strip_prefix('+').unwrap_or(text);
    (7..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Checks and normalizes one value of a field of `kind`, for a record of `period` (a resident
/// id's birth date must not be later than the period's last day).
fn normalize<'a>(kind: &FieldKind, text: &'a str, period: Period) -> FieldResult<'a> {
    if text.len() > VALUE_BYTES_MAX {
        return Err((
            Rule::TooLong,
            format!("value is {} bytes, at most {VALUE_BYTES_MAX}", text.len()),
        ));
    }
    match kind {
        FieldKind::Text { max_chars } => {
            if text.len() > *max_chars && text.chars().count() > *max_chars {
                return Err((
                    Rule::TooLong,
                    format!("{} characters, at most {max_chars}", text.chars().count()),
                ));
            }
            let (control, carriage_return) = scan_controls(text);
            if control {
                return Err((
                    Rule::Format,
                    "contains a control character: remove it".to_owned(),
                ));
            }
            // Line breaks inside a cell are canonically LF, whatever the exporting system wrote.
            if carriage_return {
                return Ok(Normalized::ok(
                    text.replace("\r\n", "\n").replace('\r', "\n"),
                ));
            }
            Ok(Normalized::ok(text))
        }
        FieldKind::Uscc => {
            let uscc = Uscc::parse(&to_half_width(text)).map_err(|_| {
                (
                    Rule::Format,
                    "not a unified social credit code: 18 characters of 0-9 and A-Y without I, O, S, V, Z".to_owned(),
                )
            })?;
            if let Some(placeholder) = uscc.placeholder() {
                return Err((
                    Rule::Placeholder,
                    format!(
                        "{placeholder}; no organization holds it: ask the source unit for the organization's real code (a column with no code must be left empty, where the schema allows)"
                    ),
                ));
            }
            let mut normalized = normal_form(text, uscc.as_str());
            if !uscc.check_char_ok() {
                normalized.warning = Some((
                    Rule::CheckCharacter,
                    format!(
                        "check character is {} but GB 32100 gives {}: accepted (early pilot codes fail the check), confirm the code with the source unit",
                        &uscc.as_str()[17..],
                        uscc.expected_check_char()
                    ),
                ));
            }
            Ok(normalized)
        }
        FieldKind::ResidentId => resident_id(text, &to_half_width(text), period),
        FieldKind::IdNumber => {
            let given = text;
            let text = match to_half_width(text) {
                half if half.bytes().any(|b| b.is_ascii_lowercase()) => {
                    Cow::Owned(half.to_ascii_uppercase())
                }
                half => half,
            };
            let looks_resident =
                text.len() == 18 && text.as_bytes()[..17].iter().all(u8::is_ascii_digit);
            if looks_resident {
                return resident_id(given, &text, period);
            }
            if text.is_empty()
                || text.len() > 64
                || !text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err((
                    Rule::Format,
                    "not an identity document number: letters, digits and '-', at most 64"
                        .to_owned(),
                ));
            }
            Ok(Normalized::ok(text))
        }
        FieldKind::OrgCode => {
            let text = to_half_width(text).to_ascii_uppercase().replace('-', "");
            let bytes = text.as_bytes();
            if bytes.len() != 9 || !bytes.iter().all(u8::is_ascii_alphanumeric) {
                return Err((
                    Rule::Format,
                    "an organization code is 8 letters or digits and a check character".to_owned(),
                ));
            }
            let expected = crate::ids::org_code_check_char(&bytes[..8]);
            if expected != Some(char::from(bytes[8])) {
                return Err((
                    Rule::CheckCharacter,
                    format!(
                        "GB 11714 check character should be {}",
                        expected.unwrap_or('?')
                    ),
                ));
            }
            Ok(Normalized::ok(text))
        }
        FieldKind::RegNo => {
            let text = to_half_width(text);
            let bytes = text.as_bytes();
            if bytes.len() != 15 || !bytes.iter().all(u8::is_ascii_digit) {
                return Err((
                    Rule::Format,
                    "a business registration number is 15 digits".to_owned(),
                ));
            }
            let expected = crate::ids::registration_number_check_digit(&bytes[..14]);
            if expected != Some(char::from(bytes[14])) {
                return Err((
                    Rule::CheckCharacter,
                    format!("check digit should be {}", expected.unwrap_or('?')),
                ));
            }
            Ok(Normalized::ok(text))
        }
        FieldKind::Phone => {
            let text = to_half_width(text);
            let kept = if text.bytes().any(|b| b == b' ' || b == b'-') {
                Cow::Owned(text.chars().filter(|c| !matches!(c, ' ' | '-')).collect())
            } else {
                text
            };
            let digits = kept.bytes().filter(u8::is_ascii_digit).count();
            let shaped = kept
                .bytes()
                .enumerate()
                .all(|(i, b)| b.is_ascii_digit() || (i == 0 && b == b'+'));
            if !shaped || !(7..=20).contains(&digits) {
                return Err((
                    Rule::Format,
                    "a phone number is 7 to 20 digits, optionally starting with +".to_owned(),
                ));
            }
            Ok(Normalized::ok(kept))
        }
        FieldKind::Date => {
            if let Some(Period::Day { .. }) = Period::parse_normal(text) {
                return Ok(Normalized::ok(text));
            }
            let half = to_half_width(text);
            // Excel and database exports often append a midnight time: drop a time part.
            let date = half
                .bytes()
                .position(|b| b == b' ' || b == b'T')
                .map_or(&*half, |end| &half[..end]);
            match Period::parse(date) {
                Ok(day @ Period::Day { .. }) => Ok(period_form(text, day)),
                _ => Err((
                    Rule::Format,
                    "not a date: use YYYY-MM-DD (or YYYY/MM/DD, YYYYMMDD)".to_owned(),
                )),
            }
        }
        FieldKind::Month if matches!(Period::parse_normal(text), Some(Period::Month { .. })) => {
            Ok(Normalized::ok(text))
        }
        FieldKind::Month => match Period::parse(&to_half_width(text)) {
            Ok(month @ Period::Month { .. }) => Ok(period_form(text, month)),
            _ => Err((
                Rule::Format,
                "not a month: use YYYY-MM (or YYYYMM)".to_owned(),
            )),
        },
        FieldKind::Decimal { scale, min } => match to_half_width(text) {
            Cow::Borrowed(text) => normalize_decimal(text, *scale, *min),
            Cow::Owned(text) => normalize_decimal(&text, *scale, *min).map(Normalized::into_owned),
        },
        FieldKind::Integer { min, max } => {
            let half = to_half_width(text);
            let value: i64 = half
                .parse()
                .ok()
                .filter(|_| half.len() <= 19)
                .ok_or((Rule::Format, "not a whole number".to_owned()))?;
            if min.is_some_and(|m| value < m) || max.is_some_and(|m| value > m) {
                return Err((
                    Rule::OutOfRange,
                    format!(
                        "must be between {} and {}",
                        min.map_or("-∞".into(), |m| m.to_string()),
                        max.map_or("∞".into(), |m| m.to_string())
                    ),
                ));
            }
            // The text is `value.to_string()` already unless it has a '+', a leading zero, a
            // '-' on zero or full-width digits.
            let unsigned = text.strip_prefix('-');
            let digits = unsigned.unwrap_or(text);
            let normal = text.is_ascii()
                && !digits.starts_with('+')
                && (!digits.starts_with('0') || (digits == "0" && unsigned.is_none()));
            if normal {
                Ok(Normalized::ok(text))
            } else {
                Ok(Normalized::ok(value.to_string()))
            }
        }
        FieldKind::Enum { values } => {
            if values.iter().any(|v| v == text) {
                Ok(Normalized::ok(text))
            } else {
                Err((
                    Rule::NotInList,
                    format!("must be one of: {}", values.join(", ")),
                ))
            }
        }
    }
}

/// Whether `text` holds a control character other than '\n', '\t' and '\r' (Unicode
/// category Cc: C0 and DEL as single bytes, C1 U+0080..=U+009F as 0xC2 0x80..=0x9F), and
/// whether it holds a '\r'. One pass over the bytes; text cells are most of the bytes of a
/// file.
fn scan_controls(text: &str) -> (bool, bool) {
    let bytes = text.as_bytes();
    // Nearly always there is none of these bytes: a test the compiler vectorizes (a fold
    // over 32 bytes at a time, with no early exit inside a block).
    let suspect = |b: u8| b < 0x20 || b == 0x7f || b == 0xc2;
    if !bytes
        .chunks(32)
        .any(|block| block.iter().fold(false, |seen, &b| seen | suspect(b)))
    {
        return (false, false);
    }
    let mut carriage_return = false;
    for (i, &byte) in bytes.iter().enumerate() {
        match byte {
            b'\r' => carriage_return = true,
            b'\n' | b'\t' => {}
            0..=0x1f | 0x7f => return (true, carriage_return),
            // In UTF-8, 0xC2 is always a lead byte.
            0xc2 if bytes
                .get(i + 1)
                .is_some_and(|next| (0x80..=0x9f).contains(next)) =>
            {
                return (true, carriage_return);
            }
            _ => {}
        }
    }
    (false, carriage_return)
}

/// The normal form of `period`, parsed from `given`: `given` itself (no allocation) if it is
/// written that way already, `YYYY-MM` or `YYYY-MM-DD` in ASCII digits. (A parsed period's
/// year has four digits, so those digits are exactly what `Display` writes.)
fn period_form(given: &str, period: Period) -> Normalized<'_> {
    let len = match period {
        Period::Month { .. } => 7,
        Period::Day { .. } => 10,
    };
    let shaped = given.len() == len
        && given.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    if shaped {
        Normalized::ok(given)
    } else {
        Normalized::ok(period.to_string())
    }
}

/// `given` if it is already the normal form `normal` (no allocation), else a copy of `normal`.
fn normal_form<'a>(given: &'a str, normal: &str) -> Normalized<'a> {
    if given == normal {
        Normalized::ok(given)
    } else {
        Normalized::ok(normal.to_owned())
    }
}

/// A resident id (`half`: `given` in half-width form) born by the last day of `period`, in
/// normal form.
fn resident_id<'a>(given: &'a str, half: &str, period: Period) -> FieldResult<'a> {
    let id = ResidentId::parse(half).map_err(resident_id_error)?;
    id.check_born_by(period).map_err(|problem| {
        (
            Rule::OutOfRange,
            format!("{problem}: check the number with its owner (or the record's period)"),
        )
    })?;
    Ok(normal_form(given, id.as_str()))
}

fn resident_id_error(error: crate::ids::IdError) -> (Rule, String) {
    match error {
        crate::ids::IdError::ResidentIdCheck {
            expected, found, ..
        } => (
            Rule::CheckCharacter,
            format!(
                "GB 11643 check character is {found} but should be {expected}: the number is mistyped"
            ),
        ),
        crate::ids::IdError::ResidentIdBirthDate { problem, .. } => (
            Rule::Format,
            format!(
                "{problem}: no such person can hold this number, although its check character matches; check the number with its owner"
            ),
        ),
        _ => (
            Rule::Format,
            "a resident id is 17 digits and a digit or X".to_owned(),
        ),
    }
}

/// Whether `text` is a decimal that [`normalize_decimal`] would accept and leave as it is,
/// for the form nearly every amount in an export has: ASCII digits with no sign, no leading
/// zero (but for a lone `0` before the point), and if a point, 1 to `scale` digits after it,
/// the last not `0`; at least `min` when that is above 0. One pass; `false` sends the text
/// to the general path, which decides.
#[inline(never)]
fn decimal_is_normal(text: &str, scale: u8, min: Option<i64>) -> bool {
    let bytes = text.as_bytes();
    let int_len = bytes.iter().position(|&b| b == b'.').unwrap_or(bytes.len());
    let (int, frac) = (&bytes[..int_len], bytes.get(int_len + 1..).unwrap_or(&[]));
    let int_ok = match int {
        [] => false,
        [b'0'] => true,
        [first, ..] => *first != b'0' && int.len() <= 18 && int.iter().all(u8::is_ascii_digit),
    };
    let frac_ok = int_len == bytes.len()
        || (!frac.is_empty()
            && frac.len() <= usize::from(scale)
            && frac.last() != Some(&b'0')
            && frac.iter().all(u8::is_ascii_digit));
    if !(int_ok && frac_ok) {
        return false;
    }
    // Digits only now; at most 18 of them fit an i64 whatever they are.
    match min {
        Some(min) if min > 0 => {
            int.iter()
                .fold(0i64, |acc, &b| acc * 10 + i64::from(b - b'0'))
                >= min
        }
        _ => true,
    }
}

/// The normal form of a decimal written in it but for zeros ending its fraction (`167.70`,
/// `100.00`, `0.0`, as exports often write amounts), which is the text without them (and
/// without the point when nothing is left after it); `None` for any other text, which
/// [`normalize_decimal`] decides. What `normalize` returns for such a text, with no warning,
/// without building it.
#[inline(never)]
fn decimal_normal_start(text: &str, scale: u8, min: Option<i64>) -> Option<&str> {
    let bytes = text.as_bytes();
    let dot = bytes.iter().position(|&b| b == b'.')?;
    let fraction = &bytes[dot + 1..];
    let kept = fraction.iter().rposition(|&b| b != b'0');
    // Nothing after the point, or no zero at its end (already normal or not a number).
    if fraction.is_empty() || kept == Some(fraction.len() - 1) {
        return None;
    }
    let normal = &text[..kept.map_or(dot, |at| dot + 2 + at)];
    decimal_is_normal(normal, scale, min).then_some(normal)
}

/// Normalizes `-1,234.50` to `-1234.5`; at most `scale` fraction digits and 24 integer digits.
fn normalize_decimal(text: &str, scale: u8, min: Option<i64>) -> FieldResult<'_> {
    if decimal_is_normal(text, scale, min) {
        return Ok(Normalized::ok(text));
    }
    normalize_any_decimal(text, scale, min)
}

/// [`normalize_decimal`] for any text.
fn normalize_any_decimal(text: &str, scale: u8, min: Option<i64>) -> FieldResult<'_> {
    let format_error = || {
        (
            Rule::Format,
            format!("not a number with at most {scale} decimal places (e.g. 1234.56)"),
        )
    };
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    // Byte scans rather than `split_once` and `contains`: cells are short, and decimals are
    // most of the cells of a fee export.
    let dot = unsigned.bytes().position(|b| b == b'.');
    let (int_part, frac_part) = match dot {
        Some(i) => (&unsigned[..i], &unsigned[i + 1..]),
        None => (unsigned, ""),
    };
    let grouped = int_part.bytes().any(|b| b == b',');
    let int_digits = if grouped {
        Cow::Owned(int_part.chars().filter(|c| *c != ',').collect())
    } else {
        Cow::Borrowed(int_part)
    };
    let grouping_ok = !grouped
        || int_part.split(',').enumerate().all(|(i, g)| {
            if i == 0 {
                (1..=3).contains(&g.len())
            } else {
                g.len() == 3
            }
        });
    if int_digits.is_empty()
        || !grouping_ok
        || !int_digits.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
        || (dot.is_some() && frac_part.is_empty())
    {
        return Err(format_error());
    }
    // Both parts are ASCII digits now.
    let frac = &frac_part[..frac_part
        .bytes()
        .rposition(|b| b != b'0')
        .map_or(0, |i| i + 1)];
    if frac.len() > usize::from(scale) {
        return Err((Rule::Format, format!("more than {scale} decimal places")));
    }
    let int = &int_digits[int_digits
        .bytes()
        .position(|b| b != b'0')
        .unwrap_or(int_digits.len())..];
    if int.len() > 24 {
        return Err((Rule::OutOfRange, "more than 24 integer digits".to_owned()));
    }
    let is_zero = int.is_empty() && frac.is_empty();
    let negative = negative && !is_zero;
    if let Some(min) = min {
        let below = if negative {
            // -x < min when min >= 0, or when x exceeds -min.
            min >= 0
                || int.len() > 19
                || int
                    .parse::<i64>()
                    .map_or(true, |v| -v < min || (-v == min && !frac.is_empty()))
        } else {
            min > 0 && int.len() < 19 && int.parse::<i64>().unwrap_or(0) < min
        };
        if below {
            return Err((Rule::OutOfRange, format!("must be at least {min}")));
        }
    }
    // Normalizing only removes characters (separators, leading and trailing zeros, the '-'
    // of a zero, a '.' with no digits after it left), but for the "0" of an all-zero
    // integer part, which stands where at least one zero was: so the text is in normal form
    // exactly when it is as long as the normal form.
    let normal_len =
        usize::from(negative) + int.len().max(1) + if frac.is_empty() { 0 } else { 1 + frac.len() };
    if normal_len == text.len() {
        return Ok(Normalized::ok(text));
    }
    // Trailing zeros (`167.70`, `100.00`: exports often write every amount with two places)
    // leave the normal form at the start of the text: borrowed, not built.
    let int_as_written = if int.is_empty() { "0" } else { int };
    if !grouped && negative == text.starts_with('-') && *int_digits == *int_as_written {
        return Ok(Normalized::ok(&text[..normal_len]));
    }
    let mut out = String::with_capacity(normal_len);
    if negative {
        out.push('-');
    }
    out.push_str(if int.is_empty() { "0" } else { int });
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    Ok(Normalized::ok(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decimals_normalize() {
        let ok = |t: &str| {
            normalize_decimal(t, 2, None)
                .map(|n| n.text.into_owned())
                .ok()
        };
        assert_eq!(ok("1,234.50").as_deref(), Some("1234.5"));
        assert_eq!(ok("007.00").as_deref(), Some("7"));
        assert_eq!(ok("-0.0").as_deref(), Some("0"));
        assert_eq!(ok("0.05").as_deref(), Some("0.05"));
        for bad in [
            "", "-", "1.", ".5", "1.234", "12,34", "1e5", "abc", "1..2", "--1",
        ] {
            assert!(ok(bad).is_none(), "{bad:?} accepted");
        }
        assert!(normalize_decimal("-1", 2, Some(0)).is_err());
        assert!(normalize_decimal("0", 2, Some(0)).is_ok());
        // Trailing zeros only: the normal form is the start of the text, borrowed.
        for (given, normal) in [
            ("167.70", "167.7"),
            ("100.00", "100"),
            ("-5.50", "-5.5"),
            ("0.00", "0"),
            ("0.0", "0"),
        ] {
            let n = normalize_decimal(given, 2, None).unwrap();
            assert!(
                matches!(n.text, Cow::Borrowed(t) if t == normal),
                "{given:?} gave {:?}",
                n.text
            );
        }
        // Anything else removed (a sign, a separator, a leading zero) is built.
        for (given, normal) in [("-0.00", "0"), ("007.50", "7.5"), ("1,000.10", "1000.1")] {
            let n = normalize_decimal(given, 2, None).unwrap();
            assert!(
                matches!(&n.text, Cow::Owned(t) if t == normal),
                "{given:?} gave {:?}",
                n.text
            );
        }
    }

    proptest::proptest! {
        /// A decimal the fast check passes is one the general path accepts as it is.
        #[test]
        fn decimals_the_fast_check_passes_are_normal(
            text in "-?[0-9,]{0,6}(\\.[0-9]{0,4})?",
            scale in 0u8..4,
            min in prop_oneof![Just(None), (-5i64..120).prop_map(Some)],
        ) {
            if decimal_is_normal(&text, scale, min) {
                let general = normalize_any_decimal(&text, scale, min);
                proptest::prop_assert!(
                    matches!(&general, Ok(n) if n.text == text && n.warning.is_none()),
                    "{text:?} scale {scale} min {min:?}: {:?}",
                    general.map(|n| n.text)
                );
            }
        }

        /// A normal form borrowed from a decimal's text is where the text starts, the rest
        /// of it only zeros after the point (and the point), and is normal itself.
        #[test]
        fn decimals_borrowed_normal_forms_only_drop_trailing_zeros(
            text in "-?0{0,2}[0-9,]{0,5}(\\.[0-9]{0,3}0{0,2})?",
            scale in 0u8..4,
        ) {
            if let Ok(Normalized { text: Cow::Borrowed(normal), .. }) =
                normalize_any_decimal(&text, scale, None)
            {
                let rest = text.strip_prefix(normal);
                proptest::prop_assert!(rest.is_some(), "{text:?} gave {normal:?}");
                let rest = rest.unwrap_or_default();
                proptest::prop_assert!(
                    rest.is_empty()
                        || (text.contains('.') && rest.trim_start_matches('.').bytes().all(|b| b == b'0')
                            && normal.contains('.') != rest.starts_with('.')),
                    "{text:?} gave {normal:?}"
                );
                proptest::prop_assert!(
                    matches!(normalize_any_decimal(normal, scale, None), Ok(n) if n.text == normal),
                    "{text:?} gave {normal:?}, which is not normal"
                );
            }
        }

        /// A period in normal form is the period `Period::parse` reads, and `period_form`
        /// leaves it as written.
        #[test]
        fn periods_in_normal_form_parse_alike(
            text in "(19[4-9][0-9]|2[01][0-9][0-9]|[0-9]{4})[-/]?[0-1]?[0-9]([-/]?[0-3]?[0-9])?"
        ) {
            if let Some(period) = Period::parse_normal(&text) {
                proptest::prop_assert_eq!(Period::parse(&text).ok(), Some(period));
                proptest::prop_assert!(matches!(period_form(&text, period).text, Cow::Borrowed(_)));
            }
            if let Ok(period) = Period::parse(&text) && period_form(&text, period).text == text {
                proptest::prop_assert_eq!(Period::parse_normal(&text), Some(period));
            }
        }

        /// `trim` skips `trim_value` only where it would change nothing. Among the characters:
        /// some that end with the same byte as one of the spaces (U+8000 and U+3080 with
        /// U+3000's 0x80, U+BF with U+FEFF's 0xBF, U+200A next to U+200B).
        #[test]
        fn trim_agrees_with_trim_value(value in "[ -~\t\r\n\u{7}\u{3000}\u{a0}\u{feff}\u{200b}\u{2002}\u{e9}揭阳\u{8000}\u{3080}\u{bf}\u{200a}]{0,6}") {
            proptest::prop_assert_eq!(trim(&value), trim_value(&value));
        }
    }

    /// A masked field in the record key is keyed by its masked form, on both validation
    /// paths: the key never holds a personal value in clear, however the key's fields are
    /// read back (a cell in normal form is read from the row, which must not apply here).
    #[test]
    fn a_masked_key_field_is_keyed_masked() {
        let schema = Schema::parse(
            "masked_key.toml",
            r#"
category = "masked_key"
label = "a licence keyed by its holder's name"
version = 1
cadence = "event"
due_day = 7
subject = ["code"]
key = ["number", "holder"]

[[field]]
name = "number"
label = "编号"
type = "text"
max_chars = 20
required = true
sensitivity = "public"

[[field]]
name = "code"
label = "统一社会信用代码"
type = "uscc"
required = true
sensitivity = "public"

[[field]]
name = "holder"
label = "法定代表人"
type = "text"
max_chars = 50
required = true
sensitivity = "personal"
desensitize = "mask_name"
"#,
        )
        .unwrap();
        let period = Period::parse("2022-05").unwrap();
        let raw = [Some("XK-1"), Some("914403001922038216"), Some("张三丰")];
        let key = DesensitizeKey([7; 32]);
        let validated = schema.validate(&raw, period, &key).unwrap();
        assert_eq!(validated.record.key.0, "XK-1|张**");
        let mut records = EncodedRecords::new();
        schema
            .validate_encoded(&raw, period, &key, &mut Staging::new(), &mut records)
            .unwrap();
        assert_eq!(records.key(0), "XK-1|张**".as_bytes());
    }

    proptest::proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// A cell `already_normal` passes is one `normalize` returns as it is, borrowed, with
        /// no warning — for every kind it answers for, on cells near their normal forms.
        #[test]
        fn cells_already_normal_are_what_normalize_leaves_alone(
            kind in prop_oneof![
                (1usize..8).prop_map(|max_chars| FieldKind::Text { max_chars }),
                (0u8..4, prop_oneof![Just(None), (-5i64..120).prop_map(Some)])
                    .prop_map(|(scale, min)| FieldKind::Decimal { scale, min }),
                Just(FieldKind::Date),
                Just(FieldKind::Month),
                Just(FieldKind::Uscc),
                Just(FieldKind::Enum { values: vec!["居民".to_owned(), "非居民".to_owned()] }),
                Just(FieldKind::Phone),
                (prop::option::of(-20i64..20), prop::option::of(-20i64..20))
                    .prop_map(|(min, max)| FieldKind::Integer { min, max }),
                Just(FieldKind::Integer { min: None, max: None }),
            ],
            text in prop_oneof![
                "[0-9A-Z]{17}[0-9A-Z]",
                Just("914403001922038216".to_owned()),
                Just("914403001922038217".to_owned()),
                Just("000000000000000000".to_owned()),
                "(19|20)[0-9]{2}-[01][0-9](-[0-3][0-9])?",
                "-?[0-9,]{0,6}(\\.[0-9]{0,4})?",
                "[ -~\r\n\t\u{7}\u{85}揭阳居民非]{1,9}",
                "[+-]?0?[0-9]{0,21}",
                "\\+?[0-9]{5,22}",
                Just("9223372036854775807".to_owned()),
                Just("-9223372036854775808".to_owned()),
                Just("9223372036854775808".to_owned()),
            ],
        ) {
            let period = Period::parse("2022-05").unwrap();
            if already_normal(&kind, &text) {
                let normalized = normalize(&kind, &text, period);
                proptest::prop_assert!(
                    matches!(
                        &normalized,
                        Ok(Normalized { text: Cow::Borrowed(t), warning: None }) if *t == text
                    ),
                    "{kind:?} {text:?}: {:?}",
                    normalized.map(|n| (n.text, n.warning))
                );
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// An amount with zeros ending its fraction: `decimal_normal_start` gives what
        /// `normalize` gives for it (with no warning), and nothing for a text `normalize`
        /// would change otherwise, refuse, or warn about.
        #[test]
        fn a_decimals_normal_start_is_what_normalize_gives(
            scale in 0u8..4,
            min in prop_oneof![Just(None), (-5i64..120).prop_map(Some)],
            text in prop_oneof![
                "-?[0-9]{0,5}\\.[0-9]{0,3}0{0,4}",
                "0{0,2}[0-9]{0,3}\\.0{0,5}",
                "[0-9,.]{0,8}",
                "[0-9]{1,3}\\.[0-9]{0,2}0[ a]?",
            ],
        ) {
            let kind = FieldKind::Decimal { scale, min };
            let period = Period::parse("2022-05").unwrap();
            if let Some(start) = decimal_normal_start(&text, scale, min) {
                proptest::prop_assert!(text.starts_with(start) && start.len() < text.len());
                let normalized = normalize(&kind, &text, period);
                proptest::prop_assert!(
                    matches!(&normalized, Ok(Normalized { text, warning: None }) if *text == start),
                    "{text:?} -> {start:?}: {:?}",
                    normalized.map(|n| (n.text, n.warning))
                );
            }
        }
    }

    /// Amounts as exports write them: with their zeros, the normal start; otherwise nothing.
    #[test]
    fn decimals_written_with_their_zeros_have_a_normal_start() {
        for (text, start) in [
            ("167.70", Some("167.7")),
            ("100.00", Some("100")),
            ("0.0", Some("0")),
            ("0.50", Some("0.5")),
            ("167.7", None),
            ("100", None),
            ("100.", None),
            ("-1.50", None),
            ("007.10", None),
            ("1,234.50", None),
        ] {
            assert_eq!(decimal_normal_start(text, 2, None), start, "{text}");
        }
        // Below the minimum, or too many places once the zeros go: the general path decides.
        assert_eq!(decimal_normal_start("0.50", 2, Some(1)), None);
        assert_eq!(decimal_normal_start("1.2340", 2, None), None);
    }

    #[test]
    fn put_len_writes_bincodes_varint() {
        for len in [
            0usize,
            1,
            250,
            251,
            252,
            65_535,
            65_536,
            u32::MAX as usize,
            u32::MAX as usize + 1,
        ] {
            let mut ours = Vec::new();
            put_len(&mut ours, len);
            let theirs = bincode::encode_to_vec(len as u64, bincode::config::standard()).unwrap();
            assert_eq!(ours, theirs, "{len}");
        }
    }

    #[test]
    fn masks() {
        assert_eq!(mask_phone("13812345678"), "138****5678");
        assert_eq!(mask_phone("0663123456"), "066*****56");
        assert_eq!(mask_name("张三丰"), "张**");
        assert_eq!(mask_name("李"), "李*");
    }

    #[test]
    fn full_width_digits_become_ascii() {
        assert_eq!(
            to_half_width("９１４４０３００１９２２０３８２１６"),
            "914403001922038216"
        );
    }
}
