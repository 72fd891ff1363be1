//! Category schemas as data: each category is one TOML file in `protocol/schemas/`, compiled in
//! and parsed once. A field has a Chinese label (as in the standard), a stable machine name, a
//! type, whether it is required, its sensitivity and the desensitization rule applied before a
//! record leaves its origin. Adding a category is adding a file; no code changes.
//!
//! Guarantees: every compiled-in schema is checked by [`Registry::builtin`] tests (unique names,
//! known types, keys and subject fields that exist), so a bad schema file fails CI, not a node.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

use crate::ids::Category;

/// The schema files compiled into every node, in a fixed order.
pub const BUILTIN_SCHEMA_FILES: &[(&str, &str)] = &[
    ("water_fee.toml", include_str!("../schemas/water_fee.toml")),
    (
        "electricity_fee.toml",
        include_str!("../schemas/electricity_fee.toml"),
    ),
    ("gas_fee.toml", include_str!("../schemas/gas_fee.toml")),
    (
        "admin_license.toml",
        include_str!("../schemas/admin_license.toml"),
    ),
    (
        "admin_penalty.toml",
        include_str!("../schemas/admin_penalty.toml"),
    ),
    (
        "admin_enforcement.toml",
        include_str!("../schemas/admin_enforcement.toml"),
    ),
    (
        "tax_abnormal.toml",
        include_str!("../schemas/tax_abnormal.toml"),
    ),
    (
        "tax_arrears.toml",
        include_str!("../schemas/tax_arrears.toml"),
    ),
    (
        "env_credit_rating.toml",
        include_str!("../schemas/env_credit_rating.toml"),
    ),
    (
        "real_estate_registration.toml",
        include_str!("../schemas/real_estate_registration.toml"),
    ),
    (
        "real_estate_mortgage.toml",
        include_str!("../schemas/real_estate_mortgage.toml"),
    ),
    (
        "market_entity_registration.toml",
        include_str!("../schemas/market_entity_registration.toml"),
    ),
    (
        "sci_tech_rd.toml",
        include_str!("../schemas/sci_tech_rd.toml"),
    ),
    (
        "agri_new_entity.toml",
        include_str!("../schemas/agri_new_entity.toml"),
    ),
];

/// How often a category is reported, for the timeliness ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cadence {
    /// One batch set per month, due on `due_day` of the following month.
    Monthly,
    /// One batch set per day.
    Daily,
    /// Reported as events happen (licences, penalties), within `due_days` of the decision.
    Event,
}

/// Who may see a field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sensitivity {
    Public,
    /// Personal information: never leaves the origin in clear.
    Personal,
    /// A trade secret: never leaves the origin in clear.
    TradeSecret,
}

/// What is done to a field's value before a record leaves its origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Desensitize {
    /// Sent as validated.
    None,
    /// An identity number: replaced by a keyed BLAKE3 token plus a masked display form.
    Token,
    /// A name or other text: only the first character is kept (`张**`).
    MaskName,
    /// A phone number: middle digits starred (`138****5678`).
    MaskPhone,
    /// Any identifier: first six and last characters kept.
    MaskMiddle,
    /// Not sent at all.
    Drop,
}

/// The type of a field's value; each has its own validation and normalization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldKind {
    Text {
        max_chars: usize,
    },
    /// Unified social credit code (GB 32100). A failing check character is a warning.
    Uscc,
    /// Resident identity number (GB 11643): the check digit must pass.
    ResidentId,
    /// An identity document number of any type: an 18-character resident id must pass its
    /// check; other documents (passports, permits) are 1 to 64 letters and digits.
    IdNumber,
    /// Organization code (GB 11714), 9 characters with check.
    OrgCode,
    /// Legacy 15-digit business registration number with ISO 7064 check.
    RegNo,
    /// A phone number: 7 to 20 digits, `+`, `-` and spaces.
    Phone,
    /// A calendar date, normalized to `YYYY-MM-DD`; `2099-12-31` means indefinite.
    Date,
    /// A month, normalized to `YYYY-MM`.
    Month,
    /// A decimal number with at most `scale` fraction digits, normalized (no leading zeros,
    /// no trailing fraction zeros, no thousands separators).
    Decimal {
        scale: u8,
        min: Option<i64>,
    },
    Integer {
        min: Option<i64>,
        max: Option<i64>,
    },
    /// One of a fixed list of values.
    Enum {
        values: Vec<String>,
    },
}

/// A field is required always, never, or when another field holds one of some values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Required {
    Always,
    Never,
    When { field: usize, values: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Stable machine name (`account_no`, `CF_WSH`), used in batches and reports.
    pub name: String,
    /// The Chinese name as in the standard (`水务户号`, `行政处罚决定书文号`).
    pub label: String,
    /// Other header names seen in real exports.
    pub aliases: Vec<String>,
    pub kind: FieldKind,
    pub required: Required,
    pub sensitivity: Sensitivity,
    pub desensitize: Desensitize,
}

/// One category's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    pub category: Category,
    pub label: String,
    pub version: u32,
    pub cadence: Cadence,
    /// Day of the following month by which a monthly period is due; days after the event for
    /// event data.
    pub due_day: u8,
    pub fields: Vec<Field>,
    /// Fields naming the subject, in preference order; the first non-empty one is the subject.
    pub subject: Vec<usize>,
    /// Fields whose values, joined, make the record key unique within the category.
    pub key: Vec<usize>,
    /// A field that must equal the batch's period (the month for monthly data), if any.
    pub period_field: Option<usize>,
    /// What a receiving node checks beyond each record (`[[audit]]` tables; see
    /// [`crate::audit`]).
    pub audit: Vec<crate::audit::AuditRule>,
}

/// A schema file that cannot be used, with the file and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schema file {file}: {message}")]
pub struct SchemaError {
    pub file: String,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    category: String,
    label: String,
    version: u32,
    cadence: Cadence,
    due_day: u8,
    subject: Vec<String>,
    key: Vec<String>,
    period_field: Option<String>,
    #[serde(rename = "field")]
    fields: Vec<FieldFile>,
    #[serde(default, rename = "audit")]
    audit: Vec<crate::audit::AuditFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldFile {
    name: String,
    label: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    required: bool,
    required_if: Option<RequiredIfFile>,
    sensitivity: Sensitivity,
    #[serde(default = "default_desensitize")]
    desensitize: Desensitize,
    max_chars: Option<usize>,
    scale: Option<u8>,
    min: Option<i64>,
    max: Option<i64>,
    values: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequiredIfFile {
    field: String,
    #[serde(rename = "in")]
    values: Vec<String>,
}

fn default_desensitize() -> Desensitize {
    Desensitize::None
}

impl Schema {
    /// Parses and checks one schema file.
    pub fn parse(file: &str, text: &str) -> Result<Schema, SchemaError> {
        let err = |message: String| SchemaError {
            file: file.to_owned(),
            message,
        };
        let raw: SchemaFile = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let category = Category::parse(&raw.category).map_err(|e| err(e.to_string()))?;
        let index: HashMap<&str, usize> = raw
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.as_str(), i))
            .collect();
        if index.len() != raw.fields.len() {
            return Err(err("two fields share a name".into()));
        }
        let lookup = |name: &str, what: &str| {
            index
                .get(name)
                .copied()
                .ok_or_else(|| err(format!("{what} names field {name:?}, which is not defined")))
        };
        let mut fields = Vec::with_capacity(raw.fields.len());
        for f in &raw.fields {
            let at = |m: &str| err(format!("field {:?}: {m}", f.name));
            let kind = match f.kind.as_str() {
                "text" => FieldKind::Text {
                    max_chars: f.max_chars.ok_or_else(|| at("type text needs max_chars"))?,
                },
                "uscc" => FieldKind::Uscc,
                "resident_id" => FieldKind::ResidentId,
                "id_number" => FieldKind::IdNumber,
                "org_code" => FieldKind::OrgCode,
                "reg_no" => FieldKind::RegNo,
                "phone" => FieldKind::Phone,
                "date" => FieldKind::Date,
                "month" => FieldKind::Month,
                "decimal" => FieldKind::Decimal {
                    scale: f.scale.ok_or_else(|| at("type decimal needs scale"))?,
                    min: f.min,
                },
                "integer" => FieldKind::Integer {
                    min: f.min,
                    max: f.max,
                },
                "enum" => FieldKind::Enum {
                    values: f
                        .values
                        .clone()
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| at("type enum needs a non-empty values list"))?,
                },
                other => return Err(at(&format!("unknown type {other:?}"))),
            };
            let required = match (&f.required_if, f.required) {
                (Some(_), true) => return Err(at("give either required or required_if")),
                (Some(cond), false) => Required::When {
                    field: lookup(&cond.field, "required_if")?,
                    values: cond.values.clone(),
                },
                (None, true) => Required::Always,
                (None, false) => Required::Never,
            };
            let personal = f.sensitivity != Sensitivity::Public;
            if personal && f.desensitize == Desensitize::None {
                return Err(at(
                    "a personal or trade-secret field needs a desensitize rule",
                ));
            }
            if f.desensitize == Desensitize::Token
                && !matches!(kind, FieldKind::ResidentId | FieldKind::IdNumber)
            {
                return Err(at("desensitize = token applies to identity numbers only"));
            }
            fields.push(Field {
                name: f.name.clone(),
                label: f.label.clone(),
                aliases: f.aliases.clone(),
                kind,
                required,
                sensitivity: f.sensitivity,
                desensitize: f.desensitize,
            });
        }
        let subject = raw
            .subject
            .iter()
            .map(|n| lookup(n, "subject"))
            .collect::<Result<Vec<_>, _>>()?;
        let key = raw
            .key
            .iter()
            .map(|n| lookup(n, "key"))
            .collect::<Result<Vec<_>, _>>()?;
        if subject.is_empty() || key.is_empty() {
            return Err(err(
                "subject and key must each name at least one field".into()
            ));
        }
        for &k in &key {
            if fields[k].desensitize == Desensitize::Drop {
                return Err(err(format!("key field {:?} is dropped", fields[k].name)));
            }
        }
        let period_field = raw
            .period_field
            .as_deref()
            .map(|n| lookup(n, "period_field"))
            .transpose()?;
        let audit = raw
            .audit
            .iter()
            .enumerate()
            .map(|(n, table)| {
                table
                    .rule(&|name| {
                        index.get(name).copied().ok_or_else(|| {
                            format!("audit names field {name:?}, which is not defined")
                        })
                    })
                    .map_err(|message| err(format!("[[audit]] number {}: {message}", n + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Schema {
            audit,
            category,
            label: raw.label,
            version: raw.version,
            cadence: raw.cadence,
            due_day: raw.due_day,
            fields,
            subject,
            key,
            period_field,
        })
    }

    /// The field a CSV header names: its machine name, Chinese label or an alias, ignoring
    /// surrounding whitespace (including the full-width space) and ASCII case.
    pub fn field_by_header(&self, header: &str) -> Option<usize> {
        let header = trim_value(header);
        self.fields.iter().position(|f| {
            f.name.eq_ignore_ascii_case(header)
                || f.label == header
                || f.aliases.iter().any(|a| a == header)
        })
    }

    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    /// Why field `index` must travel with every record that leaves its origin, in words for
    /// an operator ("it is part of the record key"), or `None` if a minimum-necessary profile
    /// (最小必要) may leave it out. A field is needed when it is part of the record key, names
    /// the subject, is required (always or under a condition), is the period field, or is the
    /// field another field's condition looks at: a receiver checks and keys every record by
    /// these. Several reasons are joined with "and".
    pub fn why_needed(&self, index: usize) -> Option<String> {
        let field = self.fields.get(index)?;
        let mut reasons = Vec::new();
        if self.key.contains(&index) {
            reasons.push("it is part of the record key".to_owned());
        }
        if self.subject.contains(&index) {
            reasons.push("it names the subject".to_owned());
        }
        match &field.required {
            Required::Always => reasons.push("every record must have it".to_owned()),
            Required::When {
                field: condition,
                values,
            } => reasons.push(format!(
                "a record must have it when {} is {}",
                self.fields[*condition].name,
                values.join(" or ")
            )),
            Required::Never => {}
        }
        if self.period_field == Some(index) {
            reasons.push("it must equal the batch's period".to_owned());
        }
        let conditioned: Vec<&str> = self
            .fields
            .iter()
            .filter(
                |other| matches!(&other.required, Required::When { field, .. } if *field == index),
            )
            .map(|other| other.name.as_str())
            .collect();
        if !conditioned.is_empty() {
            reasons.push(format!(
                "whether {} is required depends on it",
                conditioned.join(", ")
            ));
        }
        (!reasons.is_empty()).then(|| reasons.join(" and "))
    }

    /// The machine names of the fields no minimum-necessary profile may leave out (see
    /// [`Schema::why_needed`]), in field order.
    pub fn needed_fields(&self) -> Vec<&str> {
        (0..self.fields.len())
            .filter(|&index| self.why_needed(index).is_some())
            .map(|index| self.fields[index].name.as_str())
            .collect()
    }
}

/// Trims ASCII whitespace, the full-width space U+3000, no-break spaces and a zero-width BOM.
pub fn trim_value(value: &str) -> &str {
    value.trim_matches(|c: char| {
        c.is_ascii_whitespace() || matches!(c, '\u{3000}' | '\u{a0}' | '\u{feff}' | '\u{200b}')
    })
}

/// All schemas compiled into the binary, by category.
#[derive(Debug)]
pub struct Registry {
    schemas: Vec<Schema>,
}

impl Registry {
    /// The compiled-in schemas. Panics only if a compiled-in file is broken, which the schema
    /// tests catch before any release.
    pub fn builtin() -> &'static Registry {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(|| {
            Registry::from_files(BUILTIN_SCHEMA_FILES).unwrap_or_else(|e| panic!("{e}"))
        })
    }

    pub fn from_files(files: &[(&str, &str)]) -> Result<Registry, SchemaError> {
        let mut schemas: Vec<Schema> = Vec::with_capacity(files.len());
        for (file, text) in files {
            let schema = Schema::parse(file, text)?;
            if schemas.iter().any(|s| s.category == schema.category) {
                return Err(SchemaError {
                    file: (*file).to_owned(),
                    message: format!("category {} is defined twice", schema.category),
                });
            }
            schemas.push(schema);
        }
        Ok(Registry { schemas })
    }

    pub fn get(&self, category: &Category) -> Option<&Schema> {
        self.schemas.iter().find(|s| &s.category == category)
    }

    pub fn by_name(&self, name: &str) -> Option<&Schema> {
        self.schemas.iter().find(|s| s.category.as_str() == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Schema> {
        self.schemas.iter()
    }

    /// The category names, for error messages ("known categories: …").
    pub fn names(&self) -> Vec<&str> {
        self.schemas.iter().map(|s| s.category.as_str()).collect()
    }
}
