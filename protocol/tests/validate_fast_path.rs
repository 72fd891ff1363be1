//! Ingestion's fast path agrees with the slow one: for arbitrary rows of every compiled-in
//! schema, `Schema::validate_encoded` (each value written straight into its encoding) refuses
//! exactly the rows `Schema::validate` refuses, with the same problems, and for the others
//! gives the same warnings and the bytes of `validate`'s record encoded.

use proptest::prelude::*;
use protocol::batch::{BATCH_FORMAT, BatchHeader, EncodedRecords};
use protocol::ids::{NodeId, Period};
use protocol::record::{DesensitizeKey, Staging};
use protocol::schema::{FieldKind, Registry, Schema};

const KEY: DesensitizeKey = DesensitizeKey([7; 32]);

fn period() -> Period {
    Period::parse("2022-05").unwrap()
}

/// Values that pass, values in a form that normalizes, and values that fail, for a field of
/// `kind`; whatever the kind, the cell may also be empty, padded, or arbitrary text.
fn cell(kind: &FieldKind) -> BoxedStrategy<String> {
    let typed: Vec<&'static str> = match kind {
        FieldKind::Text { .. } => vec![
            "揭阳市潮汕纺织有限公司",
            "南海路145号, 10栋",
            "line\r\nbreak",
            "bell\u{7}",
            "c1\u{85}control",
            "王",
        ],
        FieldKind::Uscc => vec![
            "914403001922038216",
            "914403001922038217",
            "91440300192203821x",
            "９１４４０３００１９２２０３８２１６",
            "000000000000000000",
            "91445281MA00000000",
            "91440300192203821",
        ],
        FieldKind::ResidentId | FieldKind::IdNumber => vec![
            "11010519491231002X",
            "11010519491231002x",
            "110105194912310021",
            "110105202912310029",
            "AB-1234",
            "ab 12",
        ],
        FieldKind::OrgCode => vec!["192203821", "19220382-1", "192203822", "19220382"],
        FieldKind::RegNo => vec!["440301103448669", "440301103448660", "44030110344866"],
        FieldKind::Phone => vec![
            "13812345678",
            "138 1234 5678",
            "0663-8888888",
            "+8613812345678",
            "1381234567a",
            "123",
        ],
        FieldKind::Date => vec![
            "2022-05-03",
            "2022/05/03",
            "20220503",
            "2022-05-03 00:00:00",
            "2022-05-03T00:00",
            "２０２２-05-03",
            "2022-02-30",
            "2022-5-3",
        ],
        FieldKind::Month => vec![
            "2022-05",
            "202205",
            "2022/05",
            "2022-04",
            "2022-13",
            "2022-05-03",
        ],
        FieldKind::Decimal { .. } => vec![
            "12.5",
            "167.70",
            "100.00",
            "0.0",
            "1,234.50",
            "007.00",
            "-0.0",
            "-3",
            "0.05",
            "1.234",
            "12,34",
            "1e5",
            "１２.５",
        ],
        FieldKind::Integer { .. } => vec![
            "1",
            "0",
            "-0",
            "+3",
            "007",
            "-5",
            "12a",
            "99999999999999999999",
        ],
        FieldKind::Enum { values } => {
            let mut own: Vec<&'static str> = values
                .iter()
                .map(|v| &*Box::leak(v.clone().into_boxed_str()))
                .collect();
            own.push("其他");
            own
        }
    };
    let typed = prop::sample::select(typed).prop_map(str::to_owned);
    prop_oneof![
        6 => typed.clone(),
        1 => Just(String::new()),
        1 => typed.prop_map(|v| format!(" \u{3000}{v}\u{a0}")),
        1 => "[ -~\u{3000}\u{a0}\u{feff}\u{200b}揭阳０-９]{0,24}",
    ]
    .boxed()
}

/// A schema and a row of it: a valid row (the first of each field's values above) with up to
/// four cells replaced by arbitrary ones or left out (a missing column).
fn schema_and_row() -> impl Strategy<Value = (&'static Schema, Vec<Option<String>>)> {
    let registry = Registry::builtin();
    let names: Vec<&'static str> = registry.names().into_iter().collect();
    prop::sample::select(names).prop_flat_map(move |name| {
        let schema = registry.by_name(name).unwrap();
        let valid: Vec<_> = schema
            .fields
            .iter()
            .map(|field| first(&field.kind))
            .collect();
        let changes: Vec<_> = schema
            .fields
            .iter()
            .map(|field| prop::option::weighted(0.95, cell(&field.kind)))
            .collect();
        let width = schema.fields.len();
        (
            Just(schema),
            Just(valid),
            changes,
            prop::collection::vec(0..width, 0..=4),
        )
            .prop_map(|(schema, mut row, changes, at)| {
                for i in at {
                    row[i] = changes[i].clone();
                }
                (schema, row)
            })
    })
}

/// The first value [`cell`] lists for `kind`: one that passes.
fn first(kind: &FieldKind) -> Option<String> {
    Some(match kind {
        FieldKind::Text { .. } => "揭阳市潮汕纺织有限公司".to_owned(),
        FieldKind::Uscc => "914403001922038216".to_owned(),
        FieldKind::ResidentId | FieldKind::IdNumber => "11010519491231002X".to_owned(),
        FieldKind::OrgCode => "192203821".to_owned(),
        FieldKind::RegNo => "440301103448669".to_owned(),
        FieldKind::Phone => "13812345678".to_owned(),
        FieldKind::Date => "2022-05-03".to_owned(),
        FieldKind::Month => "2022-05".to_owned(),
        FieldKind::Decimal { .. } => "12.5".to_owned(),
        FieldKind::Integer { .. } => "1".to_owned(),
        FieldKind::Enum { values } => values[0].clone(),
    })
}

fn one_record_batch(records: &mut EncodedRecords, schema: &Schema) -> Vec<u8> {
    let header = BatchHeader {
        format: BATCH_FORMAT,
        origin: NodeId::parse("445281").unwrap(),
        category: schema.category.clone(),
        schema_version: schema.version,
        period: period(),
        supersedes: None,
        withdrawals: Vec::new(),
    };
    records.encode_batch(header).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn validate_encoded_agrees_with_validate((schema, row) in schema_and_row()) {
        let raw: Vec<Option<&str>> = row.iter().map(Option::as_deref).collect();
        let slow = schema.validate(&raw, period(), &KEY);
        let mut staging = Staging::new();
        let mut fast_records = EncodedRecords::default();
        // Twice into the same staging room: what one row leaves there must not reach the next.
        for _ in 0..2 {
            fast_records.clear();
            let fast = schema.validate_encoded(&raw, period(), &KEY, &mut staging, &mut fast_records);
            match (&slow, fast) {
                (Err(slow), Err(fast)) => prop_assert_eq!(slow, &fast),
                (Ok(slow), Ok(warnings)) => {
                    prop_assert_eq!(&slow.warnings, &warnings);
                    let mut slow_records = EncodedRecords::default();
                    slow_records.push(&slow.record);
                    prop_assert_eq!(
                        one_record_batch(&mut slow_records, schema),
                        one_record_batch(&mut fast_records, schema)
                    );
                }
                (slow, fast) => prop_assert!(false, "slow {slow:?}, fast {fast:?}"),
            }
        }
    }
}

/// Records about a natural person (the subject a token): for every schema whose subject can
/// be a person, the valid row made a person's — every subject field but the last left empty,
/// a kind-of-subject field set to 自然人 — encodes alike on both paths. (The rows above
/// nearly always name an organization.)
#[test]
fn a_persons_record_encodes_alike_on_both_paths() {
    let registry = Registry::builtin();
    let mut persons = 0;
    for name in registry.names() {
        let schema = registry.by_name(name).unwrap();
        let others = &schema.subject[..schema.subject.len().saturating_sub(1)];
        let mut row: Vec<Option<String>> = schema
            .fields
            .iter()
            .map(|field| first(&field.kind))
            .collect();
        for &i in others {
            row[i] = None;
        }
        for (i, field) in schema.fields.iter().enumerate() {
            if let FieldKind::Enum { values } = &field.kind
                && values.iter().any(|v| v == "自然人")
            {
                row[i] = Some("自然人".to_owned());
            }
        }
        let raw: Vec<Option<&str>> = row.iter().map(Option::as_deref).collect();
        let Ok(slow) = schema.validate(&raw, period(), &KEY) else {
            continue;
        };
        if !matches!(slow.record.subject, protocol::record::Subject::Person(_)) {
            continue;
        }
        persons += 1;
        let mut fast_records = EncodedRecords::default();
        schema
            .validate_encoded(&raw, period(), &KEY, &mut Staging::new(), &mut fast_records)
            .unwrap();
        let mut slow_records = EncodedRecords::default();
        slow_records.push(&slow.record);
        assert_eq!(
            one_record_batch(&mut slow_records, schema),
            one_record_batch(&mut fast_records, schema),
            "{name}"
        );
    }
    assert!(
        persons >= 3,
        "only {persons} schemas gave a person's record"
    );
}
