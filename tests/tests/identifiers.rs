//! Identifier rules as an operator meets them, through the real binary's `ingest` (the check
//! before `submit`): placeholder credit codes and resident ids born on no date or after the
//! period are refused rows with a reason, and a period that has not begun is refused whole.

use std::path::Path;
use std::process::{Command, Output};

fn ingest(file: &Path, period: &str) -> Output {
    Command::new(credit_e2e::binary())
        .args([
            "ingest",
            file.to_str().unwrap(),
            "--category",
            "water_fee",
            "--period",
            period,
            "--json",
        ])
        .output()
        .unwrap()
}

/// The cells of one line of the sample's CSV (quoted cells hold commas, never quotes).
fn split_csv_line(line: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut quoted = false;
    for c in line.trim_end_matches('\r').chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => cells.push(String::new()),
            c => cells.last_mut().unwrap().push(c),
        }
    }
    cells
}

fn join_csv_line(cells: &[String]) -> String {
    cells
        .iter()
        .map(|c| {
            if c.contains(',') {
                format!("\"{c}\"")
            } else {
                c.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// 17 digits completed with their GB 11643 check character.
fn resident(first17: &str) -> String {
    format!(
        "{first17}{}",
        protocol::ids::resident_id_check_char(first17.as_bytes())
    )
}

#[test]
fn placeholder_codes_and_impossible_birth_dates_are_refused_rows() {
    let period = protocol::Period::parse("2022-05").unwrap();
    let schema = protocol::Registry::builtin().by_name("water_fee").unwrap();
    let sample = sample::sample_csv(
        schema,
        protocol::NodeId::parse("445281").unwrap(),
        period,
        6,
        0,
        3,
    );
    let mut lines: Vec<String> = sample.text.lines().map(str::to_owned).collect();
    let header = split_csv_line(&lines[0]);
    let column = |label: &str| {
        let field = &schema.fields[schema.field_index(label).unwrap()];
        header
            .iter()
            .position(|h| *h == field.label || *h == field.name)
            .unwrap_or_else(|| panic!("{label} not in header {header:?}"))
    };
    let (kind, uscc, id) = (
        column("subject_kind"),
        column("subject_uscc"),
        column("subject_id_number"),
    );
    let set = |line: &mut String, changes: &[(usize, &str)]| {
        let mut cells = split_csv_line(line);
        for (index, value) in changes {
            cells[*index] = (*value).to_owned();
        }
        *line = join_csv_line(&cells);
    };
    // Rows 2 and 3 (file lines 3 and 4): placeholder codes; rows 4 and 5: resident ids with a
    // valid check character, born in month 13 and after the period.
    set(
        &mut lines[2],
        &[(kind, "法人及非法人组织"), (uscc, "000000000000000000")],
    );
    set(
        &mut lines[3],
        &[(kind, "法人及非法人组织"), (uscc, "91445281MA00000000")],
    );
    let month_13 = resident("44528119901301002");
    let unborn = resident("44528120220601002");
    set(
        &mut lines[4],
        &[(kind, "自然人"), (uscc, ""), (id, &month_13)],
    );
    set(
        &mut lines[5],
        &[(kind, "自然人"), (uscc, ""), (id, &unborn)],
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("water.csv");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();

    let output = ingest(&file, "2022-05");
    assert_eq!(
        output.status.code(),
        Some(1),
        "1: some rows refused; {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let refused: Vec<(u64, String, String)> = report["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["line"].as_u64().unwrap(),
                p["rule"].as_str().unwrap().to_owned(),
                p["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let rules: Vec<(u64, &str)> = refused.iter().map(|(l, r, _)| (*l, r.as_str())).collect();
    assert_eq!(
        rules,
        [
            (3, "placeholder"),
            (4, "placeholder"),
            (5, "format"),
            (6, "out_of_range")
        ],
        "{refused:#?}"
    );
    assert!(
        refused[0].2.contains("ask the source unit"),
        "{}",
        refused[0].2
    );
    assert!(refused[2].2.contains("month"), "{}", refused[2].2);
    assert!(
        refused[3].2.contains("later than 2022-05-31"),
        "{}",
        refused[3].2
    );
    assert_eq!(report["records"], 2, "{report:#}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    for number in [&month_13, &unborn] {
        assert!(!stdout.contains(number.as_str()), "{number} in the report");
    }
}

#[test]
fn a_period_that_has_not_begun_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("water.csv");
    let schema = protocol::Registry::builtin().by_name("water_fee").unwrap();
    let period = protocol::Period::parse("2199-01").unwrap();
    let sample = sample::sample_csv(
        schema,
        protocol::NodeId::parse("445281").unwrap(),
        period,
        3,
        0,
        1,
    );
    std::fs::write(&file, sample.text).unwrap();
    let output = ingest(&file, "2199-01");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--period 2199-01 has not begun") && stderr.contains("check --period"),
        "{stderr}"
    );
}
