//! Identifier algorithms against every published test vector in
//! `tests/data/identifier-test-vectors.csv` (a copy of `shared/data/identifier-test-vectors.csv`).

use protocol::ids::{
    ResidentId, Uscc, org_code_check_char, registration_number_check_digit, resident_id_check_char,
    uscc_check_char,
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
