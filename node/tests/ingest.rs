//! Ingestion of real-looking exports: good rows survive bad ones, every bad row is named by
//! line and field, personal numbers never reach a batch, and the quirks of Excel and
//! government-system exports (BOM, CRLF, quoting, full-width spaces, GBK) are handled.

use std::path::Path;

use node::ingest::{Encoding, IngestError, IngestOptions, IngestReport, ingest_bytes, ingest_file};
use node::sample::{Rng, resident_id, sample_csv};
use protocol::record::Rule;
use protocol::{Batch, DesensitizeKey, NodeId, NodeKey, Period, Registry, Schema};

const NETWORK_KEY: DesensitizeKey = DesensitizeKey([3; 32]);

fn water() -> &'static Schema {
    Registry::builtin().by_name("water_fee").unwrap()
}

fn origin() -> NodeId {
    NodeId::parse("445281").unwrap()
}

fn period() -> Period {
    Period::parse("2022-05").unwrap()
}

fn options(node_key: &NodeKey, batch_records_max: usize, encoding: Encoding) -> IngestOptions<'_> {
    IngestOptions {
        schema: water(),
        origin: origin(),
        period: period(),
        encoding,
        desensitize_key: &NETWORK_KEY,
        node_key,
        batch_records_max,
    }
}

fn ingest(bytes: &[u8], encoding: Encoding) -> Result<IngestReport, IngestError> {
    let node_key = NodeKey::from_seed([5; 32]);
    ingest_bytes(
        Path::new("export.csv"),
        bytes,
        &options(&node_key, 50_000, encoding),
        |_| {},
    )
}

#[test]
fn a_thousand_rows_with_three_bad_ones_keep_the_good_997() {
    let file = sample_csv(water(), origin(), period(), 1000, 3, 11);
    assert_eq!(file.bad_rows.len(), 3);
    let report = ingest(file.text.as_bytes(), Encoding::Utf8).unwrap();
    assert_eq!(report.rows, 1000);
    assert_eq!(report.records, 997);
    let in_batches: usize = report
        .batches
        .iter()
        .map(|b| Batch::decode(&b.bytes).unwrap().records.len())
        .sum();
    assert_eq!(in_batches, 997);
    let refused: Vec<(u64, String)> = report
        .rejected
        .iter()
        .map(|r| {
            assert_eq!(r.problems.len(), 1, "line {}: {:?}", r.line, r.problems);
            assert!(!r.problems[0].message.is_empty());
            (r.line, r.problems[0].field.clone())
        })
        .collect();
    assert_eq!(
        refused, file.bad_rows,
        "the report names the lines and fields made bad"
    );
    for batch in &report.batches {
        let decoded = batch.verify(&NodeKey::from_seed([5; 32]).public()).unwrap();
        assert_eq!(decoded.header.origin, origin());
        assert_eq!(decoded.header.period, period());
    }
}

#[test]
fn a_resident_id_in_a_personal_field_never_appears_in_batch_bytes() {
    let mut rng = Rng::new(99);
    let mut text = String::from(
        "企业名称,用户类型,统一社会信用代码,证件号码,水务户号,联系电话,用水所属期,用水量（吨）,应缴金额（元）,实缴金额（元）,数据来源单位,数据来源单位统一社会信用代码\n",
    );
    let mut ids = Vec::new();
    for i in 0..200 {
        let id = resident_id(&mut rng, origin());
        text.push_str(&format!(
            "个体户{i},自然人,,{id},AC{i:05},13812345678,2022-05,10,20,20,普宁市自来水公司,914403001922038216\n"
        ));
        ids.push(id);
    }
    let report = ingest(text.as_bytes(), Encoding::Utf8).unwrap();
    assert_eq!(report.records, 200, "{:?}", report.rejected.first());
    for batch in &report.batches {
        for id in &ids {
            assert!(
                !contains(&batch.bytes, id.as_bytes()),
                "{id} found in batch bytes"
            );
            // Nor its 17-digit body (e.g. with the check character cut off).
            assert!(
                !contains(&batch.bytes, &id.as_bytes()[..17]),
                "body of {id} found"
            );
        }
        assert!(!contains(&batch.bytes, b"13812345678"), "phone in clear");
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn excel_quirks_bom_crlf_quotes_and_full_width_spaces() {
    let plain = sample_csv(water(), origin(), period(), 50, 0, 5).text;
    let reference = ingest(plain.as_bytes(), Encoding::Utf8).unwrap();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(plain.as_bytes());
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(vec![]);
    for (n, record) in reader.records().enumerate() {
        let record = record.unwrap();
        let cells: Vec<String> = record
            .iter()
            .map(|c| {
                if n == 0 || c.is_empty() {
                    c.to_owned()
                } else {
                    format!("\u{3000}{c} ")
                }
            })
            .collect();
        writer.write_record(&cells).unwrap();
    }
    let mut quirky = b"\xEF\xBB\xBF".to_vec();
    quirky.extend(writer.into_inner().unwrap());
    assert!(
        contains(&quirky, b"\r\n") && contains(&quirky, "\"".as_bytes()),
        "the file has CRLF and quoted cells"
    );
    let report = ingest(&quirky, Encoding::Utf8).unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert_eq!(
        report.batches[0].id, reference.batches[0].id,
        "same records, same batch id"
    );
}

#[test]
fn quoted_newlines_keep_line_numbers_right() {
    let text = "企业名称,用户类型,统一社会信用代码,水务户号,用水地址,用水所属期,用水量（吨）,应缴金额（元）,实缴金额（元）,数据来源单位,数据来源单位统一社会信用代码\r\n\
        甲公司,法人及非法人组织,914403001922038216,A1,\"榕城区\r\n新兴路, 3号\",2022-05,1,2,2,水司,914403001922038216\r\n\
        乙公司,法人及非法人组织,914403001922038216,A2,\"x\",2022-05,abc,2,2,水司,914403001922038216\r\n";
    let report = ingest(text.as_bytes(), Encoding::Utf8).unwrap();
    assert_eq!(report.records, 1, "{:?}", report.rejected);
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(
        report.rejected[0].line, 4,
        "the second record starts on line 4"
    );
    assert_eq!(report.rejected[0].problems[0].field, "consumption");
}

#[test]
fn gbk_gives_a_clear_error_then_works_with_the_flag() {
    let plain = sample_csv(water(), origin(), period(), 20, 0, 8).text;
    let (gbk, _, unmappable) = encoding_rs::GBK.encode(&plain);
    assert!(!unmappable);
    let error = ingest(&gbk, Encoding::Utf8).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, IngestError::LooksLikeGbk { line: 1, .. }),
        "{message}"
    );
    assert!(
        message.contains("--encoding gbk") && message.contains("export.csv"),
        "{message}"
    );
    let from_gbk = ingest(&gbk, Encoding::Gbk).unwrap();
    let from_utf8 = ingest(plain.as_bytes(), Encoding::Utf8).unwrap();
    assert_eq!(from_gbk.records, 20);
    assert_eq!(from_gbk.batches[0].id, from_utf8.batches[0].id);
}

#[test]
fn a_missing_required_column_is_one_clear_error() {
    let text = "企业名称,统一社会信用代码\n甲,914403001922038216\n";
    let message = ingest(text.as_bytes(), Encoding::Utf8)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("line 1") && message.contains("水务户号 (account_no)"),
        "{message}"
    );
}

#[test]
fn ragged_rows_and_duplicate_keys_are_refused_and_the_rest_kept() {
    let plain = sample_csv(water(), origin(), period(), 10, 0, 9).text;
    let lines: Vec<&str> = plain.lines().collect();
    let mut text = lines.join("\n");
    text.push('\n');
    text.push_str(lines[3]); // line 12 repeats the account and month of line 4
    text.push_str("\nonly,three,cells\n"); // line 13
    let report = ingest(text.as_bytes(), Encoding::Utf8).unwrap();
    assert_eq!(report.records, 10);
    let rules: Vec<(u64, Rule)> = report
        .rejected
        .iter()
        .map(|r| (r.line, r.problems[0].rule))
        .collect();
    assert_eq!(rules, [(12, Rule::DuplicateKey), (13, Rule::Format)]);
    assert!(report.rejected[0].problems[0].message.contains("line 4"));
}

#[test]
fn large_files_split_into_deterministic_batches() {
    let text = sample_csv(water(), origin(), period(), 2500, 0, 10).text;
    let node_key = NodeKey::from_seed([5; 32]);
    let options = options(&node_key, 1000, Encoding::Utf8);
    let a = ingest_bytes(Path::new("a"), text.as_bytes(), &options, |_| {}).unwrap();
    let sizes: Vec<usize> = a
        .batches
        .iter()
        .map(|b| Batch::decode(&b.bytes).unwrap().records.len())
        .collect();
    assert_eq!(sizes, [1000, 1000, 500]);
    let mut lines: Vec<&str> = text.lines().collect();
    lines[1..].reverse();
    let reversed = lines.join("\n");
    let b = ingest_bytes(Path::new("b"), reversed.as_bytes(), &options, |_| {}).unwrap();
    let ids = |r: &IngestReport| r.batches.iter().map(|b| b.id).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b), "row order does not change the batches");
}

#[test]
fn unreadable_and_empty_files_name_the_file() {
    let node_key = NodeKey::from_seed([5; 32]);
    let options = options(&node_key, 1000, Encoding::Utf8);
    let missing = ingest_file(Path::new("/nonexistent/water.csv"), &options, |_| {}).unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/water.csv"),
        "{missing}"
    );
    let empty = ingest(b"", Encoding::Utf8).unwrap_err();
    assert!(matches!(empty, IngestError::Empty { .. }), "{empty}");
}
