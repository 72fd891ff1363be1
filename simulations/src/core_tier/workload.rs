//! What the simulated nodes submit: real batches of real records (made by the `sample`
//! generator and the node's ingestion, so every hop's validation passes), re-dated per period
//! and sealed with the simulation's signer.
//!
//! Ingestion is slow next to the simulation, so records are made (and encoded) once per
//! (category, period) and reused across origins: a batch's bytes differ by origin anyway, and
//! so do their ids.
//!
//! An origin also changes what it published: a [`correction`] carries new versions of some
//! current records (an amount changed) and supersedes the batch of the chain holding their
//! current versions; a [`withdrawal`] removes 1–3 current records with a reason, superseding
//! the batch holding them too.

use std::collections::HashMap;
use std::path::Path;

use node::ingest::{Encoding, IngestOptions, ingest_bytes};
use protocol::batch::{BATCH_FORMAT, Batch, BatchHeader, Withdrawal, WithdrawalReason};
use protocol::{
    BatchId, Category, DesensitizeKey, NodeId, NodeKey, Period, PublicKey, Record, RecordKey,
    Registry, Signature, SignedBatch, Signer, Value,
};
use sample::{Rng, sample_csv};

/// Records per simulated batch.
pub const RECORDS_PER_BATCH: usize = 3;

/// Makes batches, caching a template for each (category, period, salt): its records, and
/// the bytes they encode to.
#[derive(Default)]
pub struct Workload {
    templates: HashMap<(String, Period, u32), Template>,
    /// The context [`SignedBatch::seal_with`] signs batch ids under, as seen on the first seal.
    context: Option<Vec<u8>>,
}

/// The batches of one (category, period, salt): only the origin in the header differs.
struct Template {
    /// With the origin of the last batch made from it.
    batch: Batch,
    /// The encoded records, when a batch's bytes are its header's then these (checked when
    /// the template is made; otherwise every batch is encoded whole).
    records: Option<Vec<u8>>,
}

impl Workload {
    /// A sealed batch of `category` for `period` from `origin`, and how many records it
    /// holds; `salt` makes two batches of the same origin, category and period differ (a
    /// second submission the same day).
    ///
    /// The same bytes and signature as `SignedBatch::seal_with` on the batch (checked on
    /// each template's first batch), made faster: the records, the bulk of a batch, are
    /// encoded once per template.
    pub fn batch(
        &mut self,
        category: &str,
        period: Period,
        origin: NodeId,
        salt: u32,
        signer: &dyn Signer,
    ) -> (SignedBatch, usize) {
        let key = (category.to_owned(), period, salt);
        if !self.templates.contains_key(&key) {
            let (schema_version, records) = make_records(category, period, salt);
            let header = BatchHeader {
                format: BATCH_FORMAT,
                origin,
                category: Category::parse(category).expect("a built-in category"),
                schema_version,
                period,
                supersedes: None,
                withdrawals: Vec::new(),
            };
            let batch = Batch::new(header, records).expect("records valid by construction");
            let recording = Recording {
                inner: signer,
                context: std::cell::RefCell::new(None),
            };
            let sealed = SignedBatch::seal_with(&batch, &recording).expect("a small batch seals");
            if let Some(context) = recording.context.into_inner() {
                self.context.get_or_insert(context);
            }
            let header_len = header_bytes(&batch.header).len();
            let records = sealed.bytes[header_len..].to_vec();
            let template = Template {
                records: Some(records).filter(|_| {
                    let rebuilt = assemble(&batch.header, &sealed.bytes[header_len..]);
                    rebuilt == sealed.bytes
                }),
                batch,
            };
            let records = template.batch.records.len();
            self.templates.insert(key, template);
            return (sealed, records);
        }
        let template = self.templates.get_mut(&key).expect("just checked");
        template.batch.header.origin = origin;
        let records = template.batch.records.len();
        let sealed = match (&template.records, &self.context) {
            (Some(records), Some(context)) => {
                let bytes = assemble(&template.batch.header, records);
                let id = BatchId::of(&bytes);
                SignedBatch {
                    id,
                    signature: signer.sign(context, id.as_bytes()),
                    bytes,
                }
            }
            // Records stay in canonical order, as `Batch::new` left them.
            _ => SignedBatch::seal_with(&template.batch, signer).expect("a small batch seals"),
        };
        (sealed, records)
    }
}

/// A header's encoding: a batch's encoding is its header's, then its records'.
fn header_bytes(header: &BatchHeader) -> Vec<u8> {
    let mut bytes = Batch {
        header: header.clone(),
        records: Vec::new(),
    }
    .encode()
    .expect("a header encodes");
    // An empty record list is one byte, its length.
    bytes.pop();
    bytes
}

/// A batch's bytes from its header and its encoded records.
fn assemble(header: &BatchHeader, records: &[u8]) -> Vec<u8> {
    let header = header_bytes(header);
    let mut bytes = Vec::with_capacity(header.len() + records.len());
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(records);
    bytes
}

/// A signer that notes the context it was asked to sign under.
struct Recording<'a> {
    inner: &'a dyn Signer,
    context: std::cell::RefCell<Option<Vec<u8>>>,
}

impl Signer for Recording<'_> {
    fn public(&self) -> PublicKey {
        self.inner.public()
    }

    fn sign(&self, context: &[u8], message: &[u8]) -> Signature {
        self.context.replace(Some(context.to_vec()));
        self.inner.sign(context, message)
    }
}

/// The keys whose current version, among `versions` (one chain: the original, then each
/// batch superseding the one before), is a record rather than a withdrawal.
/// The batch of the chain holding current records to change, chosen by `rng`, and those
/// records' keys: a correction or withdrawal names the batch holding the versions it
/// changes, as `credit-node correct` and `withdraw` do (one batch per holder).
fn current_records(
    versions: &[(BatchId, Batch)],
    rng: &mut Rng,
) -> Option<(BatchId, Vec<RecordKey>)> {
    let all: Vec<(BatchId, &Batch)> = versions.iter().map(|(id, b)| (*id, b)).collect();
    let mut by_holder: std::collections::BTreeMap<BatchId, Vec<RecordKey>> = Default::default();
    for (key, version) in protocol::audit::current(&all) {
        if version.record().is_some() {
            by_holder
                .entry(version.batch)
                .or_default()
                .push(key.clone());
        }
    }
    let pick = rng.below(by_holder.len().max(1) as u64) as usize;
    by_holder.into_iter().nth(pick)
}

/// `count` of `keys`, chosen by `rng`, in key order.
fn choose(keys: &[RecordKey], count: usize, rng: &mut Rng) -> Vec<RecordKey> {
    let mut left = keys.to_vec();
    let mut chosen = Vec::new();
    while chosen.len() < count && !left.is_empty() {
        chosen.push(left.swap_remove(rng.below(left.len() as u64) as usize));
    }
    chosen.sort();
    chosen
}

/// A decimal written as `text` with its last digit changed (the same scale and sign, so it
/// still validates), or one more than `above` in its last place when given (paid more than
/// billed: a record an audit rule flags).
fn changed_amount(text: &str, above: Option<&str>, rng: &mut Rng) -> Option<String> {
    if let Some(above) = above {
        return raised(above).map(normal);
    }
    let (i, c) = text
        .char_indices()
        .rev()
        .find(|(_, c)| c.is_ascii_digit())?;
    let digit = (c.to_digit(10)? + 1 + rng.below(8) as u32) % 10;
    let mut out = text.to_owned();
    out.replace_range(i..i + 1, &digit.to_string());
    Some(normal(out))
}

/// A decimal in the normal form validation requires: no trailing zeros after the point, no
/// point without digits after it.
fn normal(mut text: String) -> String {
    if text.contains('.') {
        let kept = text.trim_end_matches('0').trim_end_matches('.').len();
        text.truncate(kept);
    }
    text
}

/// `text` (a non-negative decimal) plus one in its last place.
fn raised(text: &str) -> Option<String> {
    if !text.chars().any(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut digits: Vec<char> = text.chars().collect();
    for i in (0..digits.len()).rev() {
        match digits[i] {
            '9' => digits[i] = '0',
            d @ '0'..='8' => {
                digits[i] = char::from(d as u8 + 1);
                return Some(digits.into_iter().collect());
            }
            _ => {}
        }
    }
    let mut out = String::from("1");
    out.extend(digits);
    Some(out)
}

/// A correction of the chain `versions` (the original first, each later batch superseding
/// the one before): new versions of 1–3 of its current records, each with an amount changed
/// (for fees, sometimes a paid amount above the billed one, which the parent's audit flags),
/// superseding the batch holding their current versions; `None` if no record is current any
/// more. `pick` makes the
/// choices, so a correction made again (its first try lost in a crash) is the same batch.
pub fn correction(versions: &[(BatchId, Batch)], pick: u64) -> Option<Batch> {
    let (_, head) = versions.last()?;
    let mut rng = Rng::new(pick);
    let (holder, keys) = current_records(versions, &mut rng)?;
    let count = rng.between(1, keys.len().min(3) as u64) as usize;
    let chosen = choose(&keys, count, &mut rng);
    let registry = Registry::builtin();
    let schema = registry.get(&head.header.category)?;
    let (field, above) = match (
        schema.field_index("paid_amount"),
        schema.field_index("billed_amount"),
        schema.field_index("CF_NR_FK"),
    ) {
        (Some(paid), Some(billed), _) => (paid, rng.coin().then_some(billed)),
        (_, _, Some(fine)) => (fine, None),
        _ => return None,
    };
    let all: Vec<(BatchId, &Batch)> = versions.iter().map(|(id, b)| (*id, b)).collect();
    let view = protocol::audit::current(&all);
    let mut records = Vec::new();
    for key in &chosen {
        let mut record = view.get(key)?.record()?.clone();
        let Value::Text(text) = &record.values[field] else {
            continue;
        };
        let above = match above {
            Some(billed) => match &record.values[billed] {
                Value::Text(billed) => Some(billed.clone()),
                _ => None,
            },
            None => None,
        };
        let Some(new) = changed_amount(text, above.as_deref(), &mut rng) else {
            continue;
        };
        record.values[field] = Value::Text(new.into());
        records.push(record);
    }
    if records.is_empty() {
        return None;
    }
    let header = BatchHeader {
        supersedes: Some(holder),
        withdrawals: Vec::new(),
        ..head.header.clone()
    };
    Some(Batch::new(header, records).expect("current records of one batch chain, each once"))
}

/// A withdrawal of 1–3 current records of the chain `versions`, with a reason fitting the
/// category (a penalty's display period ended or its subject was repaired; a fee record
/// published in error), superseding the batch holding their current versions; `None` if no
/// record is current.
pub fn withdrawal(versions: &[(BatchId, Batch)], pick: u64) -> Option<Batch> {
    let (_, head) = versions.last()?;
    let mut rng = Rng::new(pick);
    let (holder, keys) = current_records(versions, &mut rng)?;
    let count = rng.between(1, keys.len().min(3) as u64) as usize;
    let reason = |rng: &mut Rng| match head.header.category.as_str() {
        "admin_penalty" if rng.coin() => WithdrawalReason::DisplayExpired,
        "admin_penalty" => WithdrawalReason::CreditRepair,
        _ => WithdrawalReason::Error,
    };
    let withdrawals = choose(&keys, count, &mut rng)
        .into_iter()
        .map(|key| Withdrawal {
            key,
            reason: reason(&mut rng),
        })
        .collect();
    let header = BatchHeader {
        supersedes: Some(holder),
        withdrawals,
        ..head.header.clone()
    };
    Some(Batch::new(header, Vec::new()).expect("distinct keys, at least one"))
}

fn make_records(category: &str, period: Period, salt: u32) -> (u32, Vec<Record>) {
    let registry = Registry::builtin();
    let schema = registry.by_name(category).expect("a built-in category");
    let origin = NodeId::parse("445281").expect("a valid id");
    let file = sample_csv(
        schema,
        origin,
        period,
        RECORDS_PER_BATCH,
        0,
        7 + u64::from(salt),
    );
    let key = NodeKey::from_seed([7; 32]);
    let options = IngestOptions {
        schema,
        origin,
        period,
        encoding: Encoding::Utf8,
        desensitize_key: &DesensitizeKey([3; 32]),
        node_key: &key,
        batch_records_max: RECORDS_PER_BATCH,
        left_out: &[],
    };
    let report = ingest_bytes(Path::new("sim.csv"), file.text.as_bytes(), &options, |_| {})
        .expect("sample data ingests");
    let signed = report.batches.into_iter().next().expect("one batch");
    let batch = Batch::decode(&signed.bytes).expect("a batch we just made");
    (batch.header.schema_version, batch.records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core_tier::keys::{SimSigner, public_of, secret};

    /// The fast path makes exactly what sealing the whole batch makes.
    #[test]
    fn batches_are_what_sealing_the_whole_batch_makes() {
        let mut workload = Workload::default();
        let period = Period::parse("2026-03-05").unwrap();
        for (i, code) in ["445281", "445202", "440000", "445200", "445281"]
            .iter()
            .enumerate()
        {
            let origin = NodeId::parse(code).unwrap();
            let secret = secret(1, origin, 0);
            let signer = SimSigner::new(secret, public_of(&secret));
            let (made, records) = workload.batch("admin_penalty", period, origin, 0, &signer);
            assert_eq!(records, RECORDS_PER_BATCH, "batch {i}");
            let mut batch = Batch::decode(&made.bytes).unwrap();
            assert_eq!(batch.header.origin, origin, "batch {i}");
            batch.header.origin = origin;
            let sealed = SignedBatch::seal_with(&batch, &signer).unwrap();
            assert_eq!(made, sealed, "batch {i}");
            let template = &workload.templates[&("admin_penalty".to_owned(), period, 0)];
            assert!(template.records.is_some(), "the fast path is taken");
        }
    }
}
