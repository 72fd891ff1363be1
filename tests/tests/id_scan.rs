//! No raw resident identity number (居民身份证号, GB 11643) anywhere on disk after an end-to-end
//! run with personal records, real processes on 127.0.0.1 (national 000000, province 440000,
//! city 445200, county 445281).
//!
//! The county submits a sample export of every category with an identity-number field
//! (admin_penalty, admin_license, admin_enforcement, water_fee, gas_fee, …), with refused rows
//! among them: rows broken elsewhere (their ids are valid) and one row whose id has a wrong
//! check character. The input files live outside every node directory. Once every batch has
//! reached the national platform all nodes are stopped (logs and stores flushed), and every
//! file under every node directory — sled files, batch files, `node.log`, `api.toml`, keys,
//! everything, recursively, as raw bytes — is searched for each id in three forms: the 18
//! characters, the 17-digit body without its check character, and the 11 digits the masked
//! form hides (birth date and sequence number).
//!
//! The refusal report `submit --json` prints is searched too (it shows personal values masked).
//!
//! The scan is shown to work before it is trusted: it must find ids planted in a scratch file
//! (in binary surroundings) inside a node directory and every id in the input files, and every
//! masked form (`445281***********X`) must be found in the county's and the national
//! platform's directories, which shows that records are stored there in plain bytes a leak
//! could not hide in.
//!
//! What the county keeps: its store holds the same desensitized records it sends up (token and
//! masked form per id), no raw id; the submit's refusal report goes to the operator's terminal
//! and is not stored. So the county's directory is held to the same rule as the upstream ones:
//! desensitization happens at ingest, before anything is written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster::{Cluster, wait_until};
use protocol::ids::{ResidentId, mask_middle};
use protocol::schema::FieldKind;
use protocol::{NodeId, Period, Registry, Schema};

const TIMEOUT: Duration = Duration::from_secs(120);
const PERIOD: &str = "2026-11";
const ROWS: usize = 60;
const BAD_ROWS: usize = 3;

fn id(text: &str) -> NodeId {
    NodeId::parse(text).unwrap()
}

/// Which part of an identity number a needle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Form {
    /// The 11 digits the masked form hides (birth date and sequence number).
    Hidden,
    /// The 17-digit body, without the check character.
    Body,
    /// All 18 characters.
    Full,
}

/// Every form of every identity number looked for.
struct Needles {
    ids: Vec<String>,
    by_bytes: HashMap<Vec<u8>, (usize, Form)>,
}

impl Needles {
    fn new(ids: &BTreeSet<String>) -> Needles {
        let ids: Vec<String> = ids.iter().cloned().collect();
        let mut by_bytes = HashMap::new();
        for (index, id) in ids.iter().enumerate() {
            assert_eq!(id.len(), 18, "{id}");
            for (form, part) in [
                (Form::Full, &id[..]),
                (Form::Body, &id[..17]),
                (Form::Hidden, &id[6..17]),
            ] {
                by_bytes.insert(part.as_bytes().to_vec(), (index, form));
            }
        }
        Needles { ids, by_bytes }
    }
}

/// Where an id was found.
#[derive(Debug)]
struct Hit {
    path: PathBuf,
    offset: usize,
    id: String,
    form: Form,
}

#[derive(Debug, Default)]
struct Scan {
    files: usize,
    bytes: u64,
    hits: Vec<Hit>,
}

/// Searches every regular file under `dir` (recursively, raw bytes) for every needle, except
/// the files `skip` names.
fn scan(dir: &Path, needles: &Needles, skip: &dyn Fn(&Path) -> bool, into: &mut Scan) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
        if kind.is_dir() {
            scan(&path, needles, skip, into);
        } else if kind.is_file() && !skip(&path) {
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            into.files += 1;
            into.bytes += bytes.len() as u64;
            scan_bytes(&path, &bytes, needles, &mut into.hits);
        } else {
            // The operator API's Unix socket holds no bytes of its own.
            assert!(
                kind.is_file() || std::os::unix::fs::FileTypeExt::is_socket(&kind),
                "{} is neither file, directory nor socket",
                path.display()
            );
        }
    }
}

/// Every needle is made of digits and `X`: look only inside runs of those, at every window of
/// a needle's length.
fn scan_bytes(path: &Path, bytes: &[u8], needles: &Needles, hits: &mut Vec<Hit>) {
    let id_byte = |b: &u8| b.is_ascii_digit() || *b == b'X';
    let mut start = 0;
    while start < bytes.len() {
        if !id_byte(&bytes[start]) {
            start += 1;
            continue;
        }
        let end = start + bytes[start..].iter().take_while(|b| id_byte(b)).count();
        for length in [11, 17, 18] {
            for at in start..(end + 1).saturating_sub(length) {
                if let Some(&(index, form)) = needles.by_bytes.get(&bytes[at..at + length]) {
                    hits.push(Hit {
                        path: path.to_owned(),
                        offset: at,
                        id: needles.ids[index].clone(),
                        form,
                    });
                }
            }
        }
        start = end;
    }
}

/// Whether the bytes `needle` occur in any file under `dir`.
fn contains(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            contains(&path, needle)
        } else if !path.is_file() {
            false // the operator API's socket
        } else {
            std::fs::read(&path)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
        }
    })
}

/// The values of `schema`'s identity-number columns in `text` (a CSV with a header row) that
/// have the form of an 18-character resident id, valid or not.
fn id_values(schema: &Schema, text: &str) -> Vec<String> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let columns: Vec<usize> = reader
        .headers()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(_, header)| {
            schema.field_by_header(header).is_some_and(|f| {
                matches!(
                    schema.fields[f].kind,
                    FieldKind::ResidentId | FieldKind::IdNumber
                )
            })
        })
        .map(|(column, _)| column)
        .collect();
    assert!(!columns.is_empty(), "{} has no id column", schema.category);
    let mut values = Vec::new();
    for row in reader.records() {
        let row = row.unwrap();
        for &column in &columns {
            let value = row.get(column).unwrap_or_default();
            let b = value.as_bytes();
            if b.len() == 18
                && b[..17].iter().all(u8::is_ascii_digit)
                && (b[17].is_ascii_digit() || b[17] == b'X')
            {
                values.push(value.to_owned());
            }
        }
    }
    values
}

#[test]
fn no_raw_resident_id_is_stored_in_any_node_directory() {
    let started = Instant::now();
    let phase = |name: &str| eprintln!("{:>6.1}s {name}", started.elapsed().as_secs_f64());
    let root = tempfile::tempdir().unwrap();
    let (national, province, city, county) =
        (id("000000"), id("440000"), id("445200"), id("445281"));
    let mut cluster =
        Cluster::create(&credit_e2e::binary(), root.path(), cluster::PUNING_CHAIN).unwrap();
    // The exports live outside every node directory.
    let inputs = root.path().join("inputs");
    std::fs::create_dir(&inputs).unwrap();
    cluster.start_all().unwrap();
    phase("started");

    let categories: Vec<&Schema> = Registry::builtin()
        .iter()
        .filter(|s| {
            s.fields
                .iter()
                .any(|f| matches!(f.kind, FieldKind::ResidentId | FieldKind::IdNumber))
        })
        .collect();
    let names: BTreeSet<&str> = categories.iter().map(|s| s.category.as_str()).collect();
    for expected in [
        "admin_penalty",
        "admin_license",
        "admin_enforcement",
        "water_fee",
    ] {
        assert!(names.contains(expected), "{names:?}");
    }

    let period = Period::parse(PERIOD).unwrap();
    let mut valid = BTreeSet::new();
    let mut invalid = BTreeSet::new();
    let mut batches = Vec::new();
    let mut reports = String::new();
    for (n, schema) in categories.iter().enumerate() {
        let category = schema.category.as_str();
        let file = sample::sample_csv(schema, county, period, ROWS, BAD_ROWS, 9 + n as u64);
        let mut text = file.text;
        let corrupt = category == "admin_penalty";
        if corrupt {
            // One id with a wrong check character: its row is refused, and its digits are a
            // real person's number with a typo, as sensitive as a valid one.
            let first = id_values(schema, &text)[0].clone();
            let check = first.as_bytes()[17];
            let wrong = if check == b'0' { '1' } else { '0' };
            text = text.replacen(&first, &format!("{}{wrong}", &first[..17]), 1);
        }
        for value in id_values(schema, &text) {
            if ResidentId::parse(&value).is_ok() {
                valid.insert(value);
            } else {
                invalid.insert(value);
            }
        }
        let path = inputs.join(format!("{category}.csv"));
        std::fs::write(&path, &text).unwrap();
        let report = cluster.submit(county, &path, category, PERIOD, 25).unwrap();
        let refused = report["refused"].as_array().unwrap();
        let lines: BTreeSet<u64> = refused
            .iter()
            .map(|p| p["line"].as_u64().unwrap())
            .collect();
        assert!(lines.len() >= BAD_ROWS, "{category}: {report}");
        if corrupt {
            assert!(
                refused.iter().any(|p| p["rule"] == "check_character"),
                "{category}: the wrong check character was not refused: {report}"
            );
        }
        // The refusal report an operator reads (and may save) shows personal values masked.
        reports.push_str(&report.to_string());
        let ids: Vec<String> = report["batches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_owned())
            .collect();
        assert!(!ids.is_empty(), "{category}: {report}");
        batches.extend(ids);
    }
    assert_eq!(invalid.len(), 1, "{invalid:?}");
    assert!(
        valid.len() >= 100,
        "only {} ids in the exports",
        valid.len()
    );
    phase(&format!(
        "submitted {} batches of {} categories, {} valid ids and {} invalid",
        batches.len(),
        categories.len(),
        valid.len(),
        invalid.len()
    ));

    let expected: BTreeSet<String> = batches.iter().cloned().collect();
    wait_until(
        "every batch to reach the national platform",
        TIMEOUT,
        || {
            let held: BTreeSet<String> = cluster.batches(national)?["batches"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["id"].as_str().unwrap().to_owned())
                .collect();
            Ok(held.is_superset(&expected))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.log(national)));
    phase("all at the national platform");
    for node in [county, city, province, national] {
        cluster.stop(node).unwrap();
    }
    phase("stopped");

    let all: BTreeSet<String> = valid.union(&invalid).cloned().collect();
    let needles = Needles::new(&all);
    let dir = |node: NodeId| cluster.member(node).dir.clone();
    let no_skip = |_: &Path| false;

    // The scanner finds what is there: ids planted in binary surroundings, one in each form.
    let planted = dir(province).join("store").join("scan-self-check");
    let mut samples = all.iter();
    let (a, b, c) = (
        samples.next().unwrap(),
        samples.next().unwrap(),
        samples.next().unwrap(),
    );
    let mut bytes = vec![0u8, 0xff, b'9'];
    bytes.extend_from_slice(a.as_bytes());
    bytes.extend_from_slice(&[0x01, 0x02]);
    bytes.extend_from_slice(&b.as_bytes()[..17]);
    bytes.push(b'*');
    bytes.extend_from_slice(&c.as_bytes()[6..17]);
    bytes.push(0);
    std::fs::write(&planted, &bytes).unwrap();
    let mut check = Scan::default();
    scan(&dir(province), &needles, &no_skip, &mut check);
    std::fs::remove_file(&planted).unwrap();
    let found: BTreeSet<(String, Form)> = check
        .hits
        .iter()
        .filter(|h| h.path == planted)
        .map(|h| (h.id.clone(), h.form))
        .collect();
    for expected in [
        (a.clone(), Form::Full),
        (a.clone(), Form::Body),
        (a.clone(), Form::Hidden),
        (b.clone(), Form::Body),
        (b.clone(), Form::Hidden),
        (c.clone(), Form::Hidden),
    ] {
        assert!(
            found.contains(&expected),
            "the scanner missed a planted {expected:?}: {found:?}"
        );
    }

    // Every id is found, whole, in the input files the ids were read from.
    let mut source = Scan::default();
    scan(&inputs, &needles, &no_skip, &mut source);
    let in_inputs: BTreeSet<&str> = source
        .hits
        .iter()
        .filter(|h| h.form == Form::Full)
        .map(|h| h.id.as_str())
        .collect();
    assert_eq!(in_inputs.len(), all.len(), "ids missed in the input files");

    // The real scan: upstream nodes whole, the county whole (its inputs are elsewhere), and
    // the submit reports.
    let mut report = BTreeMap::new();
    let mut hits = Vec::new();
    scan_bytes(
        Path::new("(submit --json output)"),
        reports.as_bytes(),
        &needles,
        &mut hits,
    );
    for node in [city, province, national, county] {
        let mut result = Scan::default();
        scan(&dir(node), &needles, &no_skip, &mut result);
        eprintln!(
            "{node}: {} files, {} bytes, {} hits",
            result.files,
            result.bytes,
            result.hits.len()
        );
        report.insert(node, (result.files, result.bytes));
        hits.extend(result.hits);
    }
    let (files, bytes): (usize, u64) = report
        .values()
        .fold((0, 0), |(f, b), (files, bytes)| (f + files, b + bytes));
    phase(&format!(
        "scanned {files} files, {bytes} bytes for {} ids",
        all.len()
    ));
    // One line per file and id, its most complete form.
    let mut worst: BTreeMap<(PathBuf, String), (Form, usize)> = BTreeMap::new();
    for hit in hits {
        let entry = worst
            .entry((hit.path, hit.id))
            .or_insert((hit.form, hit.offset));
        if hit.form > entry.0 {
            *entry = (hit.form, hit.offset);
        }
    }
    let files_with_ids: BTreeSet<&PathBuf> = worst.keys().map(|(path, _)| path).collect();
    assert!(
        worst.is_empty(),
        "raw resident ids found: {} (file, id) pairs in {} files; the first 40:\n{}",
        worst.len(),
        files_with_ids.len(),
        worst
            .iter()
            .take(40)
            .map(|((path, id), (form, offset))| format!(
                "{} at byte {offset}: {id} ({form:?})",
                path.display()
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Records are stored at the origin and arrive at the national platform in plain bytes:
    // every masked form is there, so a raw id stored beside it could not have hidden from the
    // scan.
    let masked: BTreeSet<String> = valid.iter().map(|id| mask_middle(id)).collect();
    for node in [county, national] {
        for form in &masked {
            assert!(
                contains(&dir(node), form.as_bytes()),
                "masked form {form} not found under {node}'s directory"
            );
        }
    }
    phase(&format!("{} masked forms seen", masked.len()));
}
