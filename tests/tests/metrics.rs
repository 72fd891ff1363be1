//! `/metrics` end to end, with real processes on 127.0.0.1 (province, city, one county): the
//! node's HTTP address comes from its `status`; a scrape is a plain HTTP/1.1 GET. Batches
//! submitted at the county move the city's received counters and the county's sent counters
//! by exactly what moved, the receipt latency is a histogram, the city's ledger gauges move
//! the county's report from pending to on time, and every line is Prometheus text exposition.
//!
//! The city's wall clock is set (`CREDIT_NODE_CLOCK_OFFSET_MS`) to the middle of the month
//! reported, so "the current month" of its ledger gauges is that month whatever day the test
//! runs.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster::{Cluster, wait_until};
use protocol::{NodeId, Period, Registry};

const TIMEOUT: Duration = Duration::from_secs(90);
/// A month that has begun on any day the test runs (`submit` refuses future periods).
const PERIOD: &str = "2025-05";
const BATCHES: usize = 4;

fn id(text: &str) -> NodeId {
    NodeId::parse(text).unwrap()
}

/// `GET /metrics`; returns the body, checked to be a 200 with a text content type.
fn scrape(address: &str) -> anyhow::Result<String> {
    let response = credit_e2e::http_get(address, "/metrics")?;
    anyhow::ensure!(
        response.status == 200,
        "GET /metrics answered {}: {}",
        response.status,
        response.body
    );
    let content_type = response.header("content-type").unwrap_or_default();
    anyhow::ensure!(
        content_type.starts_with("text/plain"),
        "GET /metrics answered content type {content_type:?}"
    );
    Ok(response.body)
}

/// One sample line: `name{label="value",...} value`, labels sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
}

/// Parses Prometheus text exposition (format 0.0.4) strictly: comments are `# HELP name text`,
/// `# TYPE name kind` or other `#` lines; every other non-empty line is one sample, its value a
/// float. Fails on anything else.
fn parse(text: &str) -> anyhow::Result<BTreeMap<Series, f64>> {
    let mut samples = BTreeMap::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.trim_start().splitn(3, ' ').collect();
            match words.as_slice() {
                ["TYPE", name, kind] => {
                    anyhow::ensure!(valid_name(name), "bad metric name at {}", at());
                    anyhow::ensure!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(kind),
                        "unknown type at {}",
                        at()
                    );
                    types.insert((*name).to_owned(), (*kind).to_owned());
                }
                ["HELP", name, ..] => {
                    anyhow::ensure!(valid_name(name), "bad metric name at {}", at())
                }
                _ => {}
            }
            continue;
        }
        let (series, rest) = parse_series(line).map_err(|e| anyhow::anyhow!("{e} at {}", at()))?;
        let mut parts = rest.split(' ').filter(|p| !p.is_empty());
        let value = parts
            .next()
            .ok_or_else(|| anyhow::anyhow!("no value at {}", at()))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .map_err(|e| anyhow::anyhow!("value {v:?}: {e} at {}", at()))?,
        };
        if let Some(timestamp) = parts.next() {
            timestamp
                .parse::<i64>()
                .map_err(|e| anyhow::anyhow!("timestamp: {e} at {}", at()))?;
        }
        anyhow::ensure!(parts.next().is_none(), "trailing text at {}", at());
        anyhow::ensure!(
            samples.insert(series, value).is_none(),
            "a series given twice at {}",
            at()
        );
    }
    // Every sample belongs to a declared metric (a histogram's through its suffixes).
    for series in samples.keys() {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| series.name.strip_suffix(s))
            .filter(|base| {
                types
                    .get(*base)
                    .is_some_and(|k| k == "histogram" || k == "summary")
            })
            .unwrap_or(&series.name);
        anyhow::ensure!(
            types.contains_key(base),
            "{} has no # TYPE line",
            series.name
        );
    }
    Ok(samples)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name` or `name{labels}`, and what follows it.
fn parse_series(line: &str) -> Result<(Series, &str), String> {
    let end = line.find(['{', ' ']).ok_or_else(|| "no value".to_owned())?;
    let name = &line[..end];
    if !valid_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = inner
                .split_once("=\"")
                .ok_or_else(|| "a label without =\"".to_owned())?;
            if !valid_name(label) || label.contains(':') {
                return Err(format!("bad label name {label:?}"));
            }
            // The value runs to the first quote not escaped by a backslash.
            let mut value = String::new();
            let mut chars = after.char_indices();
            let close = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        _ => return Err("a bad escape in a label value".to_owned()),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => return Err("an unterminated label value".to_owned()),
                }
            };
            if labels.insert(label.to_owned(), value).is_some() {
                return Err(format!("label {label} twice"));
            }
            inner = &after[close + 1..];
            inner = inner.strip_prefix(',').unwrap_or(inner);
        }
    }
    if !rest.starts_with(' ') {
        return Err("no space before the value".to_owned());
    }
    Ok((
        Series {
            name: name.to_owned(),
            labels,
        },
        rest,
    ))
}

/// The value of a series (0 when the node does not show it yet).
fn value(samples: &BTreeMap<Series, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    samples
        .get(&Series {
            name: name.to_owned(),
            labels,
        })
        .copied()
        .unwrap_or(0.0)
}

/// How much a series rose from `before` to `now`.
fn counted(
    now: &BTreeMap<Series, f64>,
    before: &BTreeMap<Series, f64>,
    name: &str,
    labels: &[(&str, &str)],
) -> f64 {
    value(now, name, labels) - value(before, name, labels)
}

#[test]
fn counters_move_when_batches_move_and_the_text_is_prometheus_exposition() {
    let root = tempfile::tempdir().unwrap();
    let (province, city, county) = (id("440000"), id("445200"), id("445281"));
    let mut cluster =
        Cluster::init(&credit_e2e::binary(), root.path(), cluster::PUNING_CHAIN).unwrap();
    // Water fees are owed monthly, due on the 10th of the next month.
    cluster.schedules.push(topology::Schedule::new(
        protocol::Category::parse("water_fee").unwrap(),
        topology::Cadence::Monthly,
        10,
        Vec::new(),
    ));
    cluster.write_topology().unwrap();
    let mid_month = topology::admission::Date::new(2025, 5, 15)
        .unwrap()
        .start_ms() as i64;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    cluster.members.get_mut(&city).unwrap().clock_offset_ms = Some(mid_month - now_ms);
    for node in [province, city, county] {
        cluster.start(node).unwrap();
    }
    let (city_http, county_http) = (
        cluster.http_address(city).unwrap(),
        cluster.http_address(county).unwrap(),
    );
    let (city_peer, county_peer) = (city.to_string(), county.to_string());
    let received = [("direction", "down"), ("peer", county_peer.as_str())];
    let sent = [("direction", "up"), ("peer", city_peer.as_str())];

    // Both links up before anything moves (the county dials the city on start).
    wait_until("the county's uplink to be up", TIMEOUT, || {
        let county_now = parse(&scrape(&county_http)?)?;
        let city_now = parse(&scrape(&city_http)?)?;
        Ok(value(&county_now, "credit_link_up", &sent) == 1.0
            && value(&city_now, "credit_link_up", &received) == 1.0)
    })
    .unwrap_or_else(|e| panic!("{e}\ncounty log:\n{}", cluster.log(county)));
    let city_before = parse(&scrape(&city_http).unwrap()).unwrap();
    let county_before = parse(&scrape(&county_http).unwrap()).unwrap();
    assert_eq!(
        value(
            &county_before,
            "credit_node_info",
            &[("node", "445281"), ("role", "county")]
        ),
        1.0,
        "the county's endpoint is the county's"
    );
    let ledger = |state| [("period", "current"), ("state", state)];
    assert!(
        value(&city_before, "credit_ledger_reports", &ledger("pending")) >= 1.0,
        "the county owes this month's water fees"
    );

    // Four batches at the county.
    let schema = Registry::builtin().by_name("water_fee").unwrap();
    let file = sample::sample_csv(schema, county, Period::parse(PERIOD).unwrap(), 200, 0, 7);
    let path = cluster.root().join("water.csv");
    std::fs::write(&path, &file.text).unwrap();
    let report = cluster
        .submit(county, &path, "water_fee", PERIOD, 200 / BATCHES)
        .unwrap();
    let batches = report["batches"].as_array().unwrap();
    assert_eq!(batches.len(), BATCHES, "{report}");
    let bytes: u64 = batches.iter().map(|b| b["bytes"].as_u64().unwrap()).sum();

    wait_until(
        "the city to count the county's batches received and the county its batches sent",
        TIMEOUT,
        || {
            let city_now = parse(&scrape(&city_http)?)?;
            let county_now = parse(&scrape(&county_http)?)?;
            Ok(counted(
                &city_now,
                &city_before,
                "credit_batches_received_total",
                &received,
            ) >= BATCHES as f64
                && counted(
                    &county_now,
                    &county_before,
                    "credit_batches_sent_total",
                    &sent,
                ) >= BATCHES as f64)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\ncity log:\n{}", cluster.log(city)));

    let city_after = parse(&scrape(&city_http).unwrap()).unwrap();
    let county_after = parse(&scrape(&county_http).unwrap()).unwrap();
    // Sent counts each receipted batch once: exactly what was submitted.
    assert_eq!(
        counted(
            &county_after,
            &county_before,
            "credit_batches_sent_total",
            &sent
        ),
        BATCHES as f64
    );
    assert_eq!(
        counted(
            &county_after,
            &county_before,
            "credit_batch_bytes_sent_total",
            &sent
        ),
        bytes as f64
    );
    // Received counts each arrival: at least the batches (more only if one was sent again).
    let arrived = counted(
        &city_after,
        &city_before,
        "credit_batches_received_total",
        &received,
    );
    let arrived_bytes = counted(
        &city_after,
        &city_before,
        "credit_batch_bytes_received_total",
        &received,
    );
    assert!(arrived >= BATCHES as f64);
    assert!(arrived_bytes >= bytes as f64, "{arrived_bytes} < {bytes}");
    if arrived == BATCHES as f64 {
        assert_eq!(arrived_bytes, bytes as f64);
    }
    // Every arrival went through the three receive stages (recorded once the core let it
    // go, so the last may come a moment after its count), and the core held each a while.
    wait_until(
        "the city to record each arrival's receive stages",
        TIMEOUT,
        || {
            let city_now = parse(&scrape(&city_http)?)?;
            Ok(["check", "wait", "core"].iter().all(|stage| {
                counted(
                    &city_now,
                    &city_before,
                    "credit_batch_receive_seconds_count",
                    &[("stage", stage)],
                ) == arrived
            }))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\ncity log:\n{}", cluster.log(city)));
    let city_staged = parse(&scrape(&city_http).unwrap()).unwrap();
    assert!(
        counted(
            &city_staged,
            &city_before,
            "credit_batch_receive_seconds_sum",
            &[("stage", "core")],
        ) > 0.0
    );
    // Nothing but batches from children is counted there: the county received none.
    assert_eq!(
        value(
            &county_after,
            "credit_batch_receive_seconds_count",
            &[("stage", "core")]
        ),
        0.0
    );
    // The receipt latency is a histogram: a sample per receipt, cumulative buckets.
    assert_eq!(
        counted(
            &county_after,
            &county_before,
            "credit_receipt_latency_seconds_count",
            &sent
        ),
        BATCHES as f64
    );
    let mut buckets: Vec<(f64, f64)> = county_after
        .iter()
        .filter(|(s, _)| {
            s.name == "credit_receipt_latency_seconds_bucket"
                && s.labels.get("peer") == Some(&city_peer)
        })
        .map(|(s, v)| {
            let le = &s.labels["le"];
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (le, *v)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 10, "{buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(
        buckets.last().unwrap(),
        &(
            f64::INFINITY,
            value(&county_after, "credit_receipt_latency_seconds_count", &sent)
        )
    );
    // Receipted batches leave the county's outbox; nothing was refused.
    wait_until("the county's outbox to the city to empty", TIMEOUT, || {
        Ok(value(
            &parse(&scrape(&county_http)?)?,
            "credit_outbox_batches",
            &sent,
        ) == 0.0)
    })
    .unwrap();
    let refused: f64 = city_after
        .iter()
        .filter(|(s, _)| {
            s.name == "credit_batches_refused_total" && s.labels.get("peer") == Some(&county_peer)
        })
        .map(|(_, v)| v)
        .sum();
    assert_eq!(refused, 0.0);
    assert!(
        city_after
            .keys()
            .any(|s| s.name == "credit_batches_refused_total"
                && s.labels.get("reason").map(String::as_str) == Some("records")),
        "refusal reasons are shown from zero"
    );
    // The link came up with a reconciliation of batches.
    assert!(value(&county_after, "credit_reconcile_sessions_total", &sent) >= 1.0);
    // The county's report for the month arrived before its deadline.
    assert_eq!(
        counted(
            &city_after,
            &city_before,
            "credit_ledger_reports",
            &ledger("on_time")
        ),
        1.0
    );
    assert_eq!(
        counted(
            &city_after,
            &city_before,
            "credit_ledger_reports",
            &ledger("pending")
        ),
        -1.0
    );
}

#[test]
fn the_exposition_parser_refuses_what_prometheus_would() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{peer=\"445281\",direction=\"down\"} 3\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n";
    let samples = parse(good).unwrap();
    assert_eq!(
        value(
            &samples,
            "a_total",
            &[("direction", "down"), ("peer", "445281")]
        ),
        3.0
    );
    for bad in [
        "a_total 3\n",                                      // no TYPE
        "# TYPE a_total counter\na_total{peer=445281} 3\n", // unquoted
        "# TYPE a_total counter\na_total{peer=\"x\"}3\n",   // no space
        "# TYPE a_total counter\na_total three\n",          // not a number
        "# TYPE a_total counter\na_total 3 4 5\n",          // trailing text
        "# TYPE a-total counter\na-total 3\n",              // bad name
        "# TYPE a_total counter\na_total 1\na_total 2\n",   // twice
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
}
