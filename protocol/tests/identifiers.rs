//! Identifier algorithms against every published test vector in
//! `tests/data/identifier-test-vectors.csv` (a copy of `shared/data/identifier-test-vectors.csv`).

use protocol::ids::{
    BirthDate, BirthDateProblem, IdError, Period, Placeholder, ResidentId, Uscc,
    org_code_check_char, registration_number_check_digit, resident_id_check_char, uscc_check_char,
};

const VECTORS: &str = include_str!("data/identifier-test-vectors.csv");

struct Vector {
    kind: String,
    value: String,
    computed_check: char,
    expected_valid: bool,
}

/// The file is simple CSV; the only quoted column is the last free-text ones, which we skip.
fn vectors() -> Vec<Vector> {
    VECTORS
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.splitn(5, ',').collect();
            Vector {
                kind: cols[0].to_owned(),
                value: cols[1].to_owned(),
                computed_check: cols[2].chars().next().expect("check column"),
                expected_valid: match cols[3] {
                    "true" => true,
                    "false" => false,
                    other => panic!("expected_valid column holds {other:?}"),
                },
            }
        })
        .collect()
}

#[test]
fn every_vector_matches() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 27, "the vector file has 27 rows");
    let mut by_kind = std::collections::BTreeMap::new();
    for v in &vectors {
        *by_kind.entry(v.kind.as_str()).or_insert(0) += 1;
        let bytes = v.value.as_bytes();
        match v.kind.as_str() {
            "USCC" => {
                assert_eq!(
                    uscc_check_char(&bytes[..17]),
                    Some(v.computed_check),
                    "{}",
                    v.value
                );
                match Uscc::parse(&v.value) {
                    Ok(code) => {
                        assert_eq!(code.check_char_ok(), v.expected_valid, "{}", v.value);
                        if v.expected_valid {
                            assert!(code.org_code_ok(), "embedded org code of {}", v.value);
                        }
                    }
                    // The standard's invalid example ends in Z, outside the alphabet: malformed.
                    Err(_) => assert!(!v.expected_valid, "valid {} refused", v.value),
                }
            }
            "ORG9" => {
                assert_eq!(
                    org_code_check_char(&bytes[..8]),
                    Some(v.computed_check),
                    "{}",
                    v.value
                );
                assert_eq!(char::from(bytes[8]) == v.computed_check, v.expected_valid);
            }
            "ID18" => {
                assert_eq!(
                    resident_id_check_char(&bytes[..17]),
                    v.computed_check,
                    "{}",
                    v.value
                );
                assert_eq!(
                    ResidentId::parse(&v.value).is_ok(),
                    v.expected_valid,
                    "{}",
                    v.value
                );
            }
            "REG15" => {
                assert_eq!(
                    registration_number_check_digit(&bytes[..14]),
                    Some(v.computed_check),
                    "{}",
                    v.value
                );
                assert_eq!(char::from(bytes[14]) == v.computed_check, v.expected_valid);
            }
            other => panic!("unknown vector kind {other}"),
        }
    }
    assert_eq!(
        by_kind.into_iter().collect::<Vec<_>>(),
        [("ID18", 3), ("ORG9", 5), ("REG15", 3), ("USCC", 16)]
    );
}

#[test]
fn standard_worked_example() {
    // GB 32100-2015: for 91350100M000100Y4 the weighted sum is 1640, check value 3.
    assert_eq!(uscc_check_char(b"91350100M000100Y4"), Some('3'));
}

#[test]
fn malformed_codes_are_errors_not_warnings() {
    for bad in [
        "",
        "91440300708461136",   // 17 characters
        "9144030070846113600", // 19
        "91440300708461136I",  // I is not in the alphabet
        "9144A300708461136T",  // region code must be digits
        "91440300708461136😀",
    ] {
        assert!(Uscc::parse(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(
        Uscc::parse("91440300708461136t").unwrap().as_str(),
        "91440300708461136T"
    );
}

#[test]
fn resident_id_errors_never_echo_the_number() {
    let error = ResidentId::parse("110105194912310021")
        .unwrap_err()
        .to_string();
    assert!(!error.contains("110105194912310021"), "{error}");
    assert!(error.contains("110105***********1"), "{error}");
}

/// The copy in this crate must equal the reference file when the reference is present (on
/// developer machines and in CI; a user's checkout has only the copy).
#[test]
fn vector_copy_matches_shared_reference() {
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/identifier-test-vectors.csv");
    match std::fs::read_to_string(&shared) {
        Ok(reference) => assert_eq!(reference, VECTORS, "re-copy {}", shared.display()),
        Err(_) => eprintln!("{} not present; checked the copy only", shared.display()),
    }
}

/// `first17` completed with its GB 32100 check character, so that a placeholder passes the
/// check and only the placeholder rule can refuse it.
fn with_check(first17: &str) -> String {
    format!("{first17}{}", uscc_check_char(first17.as_bytes()).unwrap())
}

#[test]
fn placeholder_credit_codes_are_named_as_such() {
    let cases: Vec<(String, Placeholder)> = vec![
        // 000000000000000000 passes its check character: (31 - 0) mod 31 = 0.
        ("000000000000000000".into(), Placeholder::Repeated('0')),
        ("00000000000000000X".into(), Placeholder::Repeated('0')),
        ("111111111111111111".into(), Placeholder::Repeated('1')),
        (with_check("11111111111111111"), Placeholder::Repeated('1')),
        (with_check("99999999999999999"), Placeholder::Repeated('9')),
        ("91445281MA00000000".into(), Placeholder::ZeroSubject),
        (with_check("91445281MA0000000"), Placeholder::ZeroSubject),
        (with_check("91445281000000000"), Placeholder::ZeroSubject),
        (
            with_check("91445281111111111"),
            Placeholder::RepeatedSubject('1'),
        ),
        (with_check("01440300192203821"), Placeholder::Authority('0')),
        (with_check("B1440300192203821"), Placeholder::Authority('B')),
        (with_check("90440300192203821"), Placeholder::Category('0')),
        (with_check("9A440300192203821"), Placeholder::Category('A')),
        (with_check("91000000192203821"), Placeholder::Region),
        (with_check("91001234192203821"), Placeholder::Region),
    ];
    for (code, expected) in cases {
        let uscc = Uscc::parse(&code).unwrap_or_else(|e| panic!("{code}: {e}"));
        assert_eq!(uscc.placeholder(), Some(expected), "{code}");
        assert!(
            expected
                .to_string()
                .starts_with("a placeholder, not a code: "),
            "{expected}"
        );
    }
}

#[test]
fn real_credit_codes_are_not_placeholders() {
    for v in vectors()
        .iter()
        .filter(|v| v.kind == "USCC" && v.expected_valid)
    {
        let uscc = Uscc::parse(&v.value).unwrap();
        assert_eq!(uscc.placeholder(), None, "{}", v.value);
    }
    // Central registrations (region 100000), MA-series and letter-only bodies are real forms.
    for code in [
        "911000001000013428",
        "91310115MA1K3BTP2B",
        "91350100M000100Y43",
    ] {
        assert_eq!(Uscc::parse(code).unwrap().placeholder(), None, "{code}");
    }
    assert_eq!(
        Uscc::parse(&with_check("91440300MABCDEFG0"))
            .unwrap()
            .placeholder(),
        None
    );
}

/// 17 digits completed with their GB 11643 check character.
fn resident(first17: &str) -> String {
    format!("{first17}{}", resident_id_check_char(first17.as_bytes()))
}

#[test]
fn resident_ids_with_impossible_birth_dates_are_refused_despite_their_check_character() {
    for (first17, problem) in [
        ("11010519491331002", BirthDateProblem::NoSuchMonth), // month 13
        ("11010519490031002", BirthDateProblem::NoSuchMonth), // month 00
        ("11010520230230002", BirthDateProblem::NoSuchDay),   // 30 February
        ("11010519490229002", BirthDateProblem::NoSuchDay),   // 1949 is no leap year
        ("11010519490100002", BirthDateProblem::NoSuchDay),   // day 0
        ("11010519490432002", BirthDateProblem::NoSuchDay),   // 32 April
        ("11010506490101002", BirthDateProblem::TooEarly),    // year 0649
    ] {
        let id = resident(first17);
        match ResidentId::parse(&id) {
            Err(IdError::ResidentIdBirthDate {
                value,
                problem: got,
            }) => {
                assert_eq!(got, problem, "{id}");
                assert!(!value.contains(&id[6..14]), "the date is masked: {value}");
            }
            other => panic!("{id}: {other:?}"),
        }
        let message = ResidentId::parse(&id).unwrap_err().to_string();
        assert!(!message.contains(&id), "{message}");
        assert!(message.contains("check it with its owner"), "{message}");
    }
    // Real dates, including 29 February of a leap year and the standard's 1880 example.
    for first17 in [
        "11010520000229002",
        "44052418800101001",
        "11010519491231002",
    ] {
        let id = resident(first17);
        ResidentId::parse(&id).unwrap_or_else(|e| panic!("{id}: {e}"));
    }
    assert_eq!(
        ResidentId::parse("11010519491231002X")
            .unwrap()
            .birth_date(),
        BirthDate {
            year: 1949,
            month: 12,
            day: 31
        }
    );
}

#[test]
fn a_birth_date_after_the_records_period_is_refused() {
    let id = ResidentId::parse(&resident("11010520220531002")).unwrap();
    let may = Period::parse("2022-05").unwrap();
    assert_eq!(
        id.check_born_by(may),
        Ok(()),
        "born on the last day of the month"
    );
    assert_eq!(
        id.check_born_by(Period::parse("2022-05-30").unwrap()),
        Err(BirthDateProblem::After(
            Period::parse("2022-05-30").unwrap()
        ))
    );
    assert_eq!(
        id.check_born_by(Period::parse("2022-04").unwrap()),
        Err(BirthDateProblem::After(
            Period::parse("2022-04-30").unwrap()
        ))
    );
}

#[test]
fn days_since_the_epoch_become_calendar_days() {
    for (days, day) in [
        (0, "1970-01-01"),
        (-1, "1969-12-31"),
        (11_016, "2000-02-29"),
        (20_789, "2026-12-02"),
        (-7_670, "1949-01-01"),
    ] {
        assert_eq!(
            Period::from_days_since_epoch(days),
            Some(Period::parse(day).unwrap()),
            "{days}"
        );
    }
    assert_eq!(
        Period::from_days_since_epoch(-7_671),
        None,
        "1948 is before YEAR_MIN"
    );
    assert_eq!(Period::from_days_since_epoch(i64::MAX), None);
    assert_eq!(Period::from_days_since_epoch(i64::MIN), None);
}
