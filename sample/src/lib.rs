//! Deterministic sample data: realistic CSV exports for any category schema, with valid
//! credit codes and identity numbers, and a chosen number of bad rows whose lines and fields
//! are known. Used by the demo and `credit-node sample`, the tests, the benchmarks and the
//! simulator (whose runs also draw every choice from [`Rng`]); the same seed gives the same
//! file.
//!
//! A crate of its own, outside the node library, because only the demo and the tests need it;
//! it depends on nothing but `protocol` (and `csv`), so the node's own unit tests can use it
//! without a dependency cycle.

use protocol::NodeId;
use protocol::Period;
use protocol::ids::{
    org_code_check_char, registration_number_check_digit, resident_id_check_char, uscc_check_char,
};
use protocol::schema::{FieldKind, Required, Schema};

/// SplitMix64: small, fast, and the same everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A valid unified social credit code registered at `region` (the national platform's
/// `000000` is no division: such codes are registered centrally, at `100000`). Never a
/// placeholder validation refuses (`Uscc::placeholder`).
pub fn uscc(rng: &mut Rng, kind: &str, region: NodeId) -> String {
    let mut body: Vec<u8> = (0..8).map(|_| b'0' + rng.below(10) as u8).collect();
    // A body of one repeated digit (zeros included) is a placeholder: change its last digit,
    // without drawing from `rng`, so every other code stays what it was.
    if body.iter().all(|&b| b == body[0]) {
        body[7] = if body[0] == b'1' { b'2' } else { b'1' };
    }
    let body = String::from_utf8(body).expect("digits");
    let org_check = org_code_check_char(body.as_bytes()).expect("digits");
    let region = if region.is_national() {
        "100000".to_owned()
    } else {
        region.to_string()
    };
    let first17 = format!("{kind}{region}{body}{org_check}");
    let check = uscc_check_char(first17.as_bytes()).expect("alphabet");
    format!("{first17}{check}")
}

/// A valid resident identity number (GB 11643) of someone born in `region`.
pub fn resident_id(rng: &mut Rng, region: NodeId) -> String {
    let year = 1950 + rng.below(55);
    let month = 1 + rng.below(12);
    let day = 1 + rng.below(28);
    let first17 = format!("{region}{year:04}{month:02}{day:02}{:03}", rng.below(1000));
    let check = resident_id_check_char(first17.as_bytes());
    format!("{first17}{check}")
}

fn org_code(rng: &mut Rng) -> String {
    let body: String = (0..8)
        .map(|_| char::from(b'0' + rng.below(10) as u8))
        .collect();
    let check = org_code_check_char(body.as_bytes()).expect("digits");
    format!("{body}{check}")
}

fn registration_number(rng: &mut Rng, region: NodeId) -> String {
    let first14 = format!("{region}{:08}", rng.below(100_000_000));
    let check = registration_number_check_digit(first14.as_bytes()).expect("digits");
    format!("{first14}{check}")
}

const NAME_PARTS: &[&str] = &[
    "榕江", "揭岭", "普宁", "惠来", "南海", "韩江", "潮汕", "粤东", "仙梅", "梅林",
];
const BUSINESS_KINDS: &[&str] = &[
    "纺织", "五金", "食品", "塑料", "电子", "印刷", "物流", "贸易", "医药", "陶瓷",
];
const SURNAMES: &[&str] = &["陈", "林", "黄", "张", "李", "王", "吴", "刘", "蔡", "郑"];

/// A sample export and what is wrong with it.
#[derive(Debug, Clone)]
pub struct SampleFile {
    pub text: String,
    pub rows: usize,
    /// The bad rows: file line and the machine name of the field made bad.
    pub bad_rows: Vec<(u64, String)>,
}

/// A CSV export for `schema` with `rows` data rows of which `bad` are invalid (spread through
/// the file). The header uses the Chinese labels, as real exports do.
pub fn sample_csv(
    schema: &Schema,
    origin: NodeId,
    period: Period,
    rows: usize,
    bad: usize,
    seed: u64,
) -> SampleFile {
    let mut text = Vec::new();
    let bad_rows = write_sample_csv(&mut text, schema, origin, period, rows, bad, seed)
        .expect("writing to memory");
    SampleFile {
        text: String::from_utf8(text).expect("UTF-8 fields"),
        rows,
        bad_rows,
    }
}

/// The export of [`sample_csv`], written to `out` as it is made (for files larger than
/// memory); returns the bad rows (file line, field).
pub fn write_sample_csv(
    out: impl std::io::Write,
    schema: &Schema,
    origin: NodeId,
    period: Period,
    rows: usize,
    bad: usize,
    seed: u64,
) -> std::io::Result<Vec<(u64, String)>> {
    let mut rng = Rng::new(seed ^ u64::from(origin.code()));
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(out);
    writer.write_record(schema.fields.iter().map(|f| f.label.as_str()))?;
    let source_unit_uscc = uscc(&mut rng, "91", origin);
    let bad_every = rows
        .checked_div(bad)
        .map_or(usize::MAX, |every| every.max(1));
    let mut bad_rows = Vec::new();
    let (year, month) = match period {
        Period::Month { year, month } | Period::Day { year, month, .. } => (year, month),
    };
    for i in 0..rows {
        let mut values: Vec<String> = Vec::with_capacity(schema.fields.len());
        for (index, field) in schema.fields.iter().enumerate() {
            let is_key = schema.key.contains(&index);
            let value = match &field.kind {
                FieldKind::Text { max_chars } => {
                    let text = if is_key {
                        format!(
                            "{}{:08}",
                            &field
                                .name
                                .chars()
                                .take(2)
                                .collect::<String>()
                                .to_uppercase(),
                            i
                        )
                    } else if field.name.contains("source_unit") || field.label.contains("来源单位")
                    {
                        format!("{origin}自来水公司")
                    } else if field.label.contains("名称")
                        || field.label.contains("户名")
                        || field.label.contains("权利人")
                    {
                        format!(
                            "揭阳市{}{}有限公司",
                            rng.pick(NAME_PARTS),
                            rng.pick(BUSINESS_KINDS)
                        )
                    } else if field.label.contains("地址")
                        || field.label.contains("坐落")
                        || field.label.contains("住所")
                    {
                        format!(
                            "{}路{}号, {}栋",
                            rng.pick(NAME_PARTS),
                            1 + rng.below(300),
                            1 + rng.below(20)
                        )
                    } else if field.label.contains("法定代表人") {
                        format!(
                            "{}{}",
                            rng.pick(SURNAMES),
                            rng.pick(&["伟", "芳", "强", "敏", "静"])
                        )
                    } else {
                        format!("{}{}", field.label, 1 + rng.below(99))
                    };
                    text.chars().take(*max_chars).collect()
                }
                FieldKind::Uscc
                    if field.name.contains("source") || field.label.contains("来源单位") =>
                {
                    source_unit_uscc.clone()
                }
                FieldKind::Uscc => {
                    let kind = if rng.below(10) == 0 { "92" } else { "91" };
                    uscc(&mut rng, kind, origin)
                }
                FieldKind::ResidentId | FieldKind::IdNumber => resident_id(&mut rng, origin),
                FieldKind::OrgCode => org_code(&mut rng),
                FieldKind::RegNo => registration_number(&mut rng, origin),
                FieldKind::Phone => format!("13{}{:08}", rng.below(10), rng.below(100_000_000)),
                FieldKind::Date => {
                    let day = 1 + rng.below(u64::from(protocol::ids::days_in_month(year, month)));
                    format!("{year:04}-{month:02}-{day:02}")
                }
                FieldKind::Month => format!("{year:04}-{month:02}"),
                FieldKind::Decimal { scale, .. } => {
                    let whole = rng.below(5000);
                    match scale {
                        0 => whole.to_string(),
                        1 => format!("{whole}.{}", rng.below(10)),
                        _ => format!("{whole}.{:02}", rng.below(100)),
                    }
                }
                FieldKind::Integer { min, max } => {
                    let low = min.unwrap_or(0).max(0);
                    let high = max.unwrap_or(low + 12).min(low + 12);
                    (low + rng.below((high - low + 1) as u64) as i64).to_string()
                }
                FieldKind::Enum { values } => {
                    // Mostly the first value (organizations), sometimes another.
                    if rng.below(10) < 8 {
                        values[0].clone()
                    } else {
                        rng.pick(values).clone()
                    }
                }
            };
            values.push(value);
        }
        // Conditional fields whose condition does not hold stay empty, as in real exports;
        // subject fields after the first one given are left empty too.
        for (index, field) in schema.fields.iter().enumerate() {
            if let Required::When {
                field: other,
                values: when,
            } = &field.required
                && !when.contains(&values[*other])
            {
                values[index].clear();
            }
        }
        keep_audit_rules(schema, &mut values);
        let line = i as u64 + 2;
        if bad > 0 && i % bad_every == bad_every / 2 && bad_rows.len() < bad {
            let field = make_bad(schema, &mut values, bad_rows.len());
            bad_rows.push((line, field));
        }
        writer.write_record(&values)?;
    }
    writer.flush()?;
    Ok(bad_rows)
}

/// Makes a row of random values keep the category's audit rules, as clean data does: no
/// amount far below the usual ones (a value under 50 is raised by 100) and no amount above
/// the one it may not exceed (paid no more than billed). No random draws, so the rows stay
/// what the seed made them otherwise.
fn keep_audit_rules(schema: &Schema, values: &mut [String]) {
    use protocol::audit::Check;
    for rule in &schema.audit {
        if let Check::UsualRange { field, .. } = rule.check
            && let Some((whole, fraction)) =
                values[field].split_once('.').or(Some((&values[field], "")))
            && let Ok(whole) = whole.parse::<u64>()
            && whole < 50
        {
            values[field] = if fraction.is_empty() {
                (whole + 100).to_string()
            } else {
                format!("{}.{fraction}", whole + 100)
            };
        }
    }
    for rule in &schema.audit {
        if let Check::NotGreater { field, than } = rule.check {
            let number = |text: &str| text.parse::<f64>().ok();
            if let (Some(a), Some(b)) = (number(&values[field]), number(&values[than]))
                && a > b
            {
                values[field] = values[than].clone();
            }
        }
    }
}

/// Breaks one field of a row, cycling through kinds of defect; returns the field's name.
fn make_bad(schema: &Schema, values: &mut [String], n: usize) -> String {
    let find = |pred: &dyn Fn(&FieldKind, &Required) -> bool| {
        schema
            .fields
            .iter()
            .position(|f| pred(&f.kind, &f.required))
    };
    let uscc = find(&|k, r| *k == FieldKind::Uscc && *r == Required::Always);
    let decimal = find(&|k, r| matches!(k, FieldKind::Decimal { .. }) && *r == Required::Always);
    let required_text = schema
        .key
        .iter()
        .copied()
        .find(|&i| matches!(schema.fields[i].kind, FieldKind::Text { .. }));
    let choices: Vec<(usize, &str)> = [
        (uscc, "9144O30O"),
        (decimal, "十二点五"),
        (required_text, ""),
    ]
    .into_iter()
    .filter_map(|(index, value)| index.map(|i| (i, value)))
    .collect();
    let (index, value) = choices[n % choices.len()];
    values[index] = value.to_owned();
    schema.fields[index].name.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ids::{ResidentId, Uscc};

    #[test]
    fn generated_identifiers_pass_validation_rules() {
        let regions = [NodeId::NATIONAL, NodeId::parse("445281").expect("division")];
        for region in regions {
            let mut rng = Rng::new(7);
            for _ in 0..20_000 {
                let code = uscc(&mut rng, "91", region);
                let parsed = Uscc::parse(&code).expect("well formed");
                assert!(parsed.check_char_ok(), "{code}");
                assert_eq!(parsed.placeholder(), None, "{code}");
                let id = resident_id(&mut rng, region);
                ResidentId::parse(&id).expect("valid resident id");
            }
        }
    }
}
