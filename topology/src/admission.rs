//! Who may connect, and with which keys, over time: the earlier keys of each node (retired by
//! rotation, or revoked after a compromise, each from a moment on) and the security
//! assessment (接入前安全评估) a node must hold before it may connect.
//!
//! Times in the file are Beijing time (UTC+08:00): a date-time with an offset
//! (`2026-06-01T10:00:00+08:00`), or without one (then +08:00 is meant); dates are calendar
//! days in Beijing.

use protocol::{NodeId, PublicKey};

/// Milliseconds of the UTC+08:00 offset: the network runs on Beijing time.
pub const BEIJING_OFFSET_MS: i64 = 8 * 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// How one of a node's earlier keys ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEnd {
    /// Rotation: batches the key signed while it was current stay valid, proven by their
    /// first arrival before the retirement.
    Retired,
    /// Compromise: batches first received after the revocation are quarantined (kept, never
    /// forwarded); earlier ones stay valid.
    Revoked,
}

impl KeyEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyEnd::Retired => "retired",
            KeyEnd::Revoked => "revoked",
        }
    }
}

/// An earlier key of a node: `[[old_key]]` in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldKey {
    pub node: NodeId,
    pub public_key: PublicKey,
    pub end: KeyEnd,
    /// When the key stopped being current, in Unix milliseconds.
    pub at_ms: u64,
}

/// A minimum-necessary profile (最小必要): `[[profile]]` in the file. Of a record of
/// `category` only `fields` travel upstream; origins leave the others out and receivers refuse
/// batches that carry them. See the crate documentation, "Minimum-necessary profiles".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub category: protocol::Category,
    /// Machine names of the fields that may travel upstream, in the schema's field order.
    pub fields: Vec<String>,
}

impl Profile {
    /// Whether field `name` may travel upstream.
    pub fn allows(&self, name: &str) -> bool {
        self.fields.iter().any(|field| field == name)
    }
}

/// The state of a key of a node at a moment: what a receiver needs to judge a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Current,
    Retired { at_ms: u64 },
    Revoked { at_ms: u64 },
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Current => "current",
            KeyState::Retired { .. } => "retired",
            KeyState::Revoked { .. } => "revoked",
        }
    }

    /// When the key stopped being current; `None` for the current key.
    pub fn ended_at_ms(self) -> Option<u64> {
        match self {
            KeyState::Current => None,
            KeyState::Retired { at_ms } | KeyState::Revoked { at_ms } => Some(at_ms),
        }
    }

    /// Whether a batch this key signed is valid when its first arrival (the first receiver's
    /// signed receipt time) is `first_arrival_ms`; `None` means no proof of an arrival.
    pub fn signs_validly(self, first_arrival_ms: Option<u64>) -> bool {
        match self.ended_at_ms() {
            None => true,
            Some(end) => first_arrival_ms.is_some_and(|at| at < end),
        }
    }
}

/// A calendar day in Beijing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    pub year: u16,
    pub month: u8,
    pub day: u8,
}

impl Date {
    /// The day, if it exists in the Gregorian calendar (years 1970 to 9999).
    pub fn new(year: u16, month: u8, day: u8) -> Option<Date> {
        let days_in_month = match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if year.is_multiple_of(4)
                && (!year.is_multiple_of(100) || year.is_multiple_of(400)) =>
            {
                29
            }
            2 => 28,
            _ => return None,
        };
        (1970..=9999)
            .contains(&year)
            .then_some(())
            .filter(|()| (1..=days_in_month).contains(&day))
            .map(|()| Date { year, month, day })
    }

    /// 00:00 Beijing time of this day, in Unix milliseconds.
    pub fn start_ms(self) -> u64 {
        let days = days_from_civil(
            i64::from(self.year),
            u32::from(self.month),
            u32::from(self.day),
        );
        u64::try_from(days * DAY_MS - BEIJING_OFFSET_MS).unwrap_or(0)
    }

    /// 24:00 Beijing time of this day (the start of the next), in Unix milliseconds.
    pub fn end_ms(self) -> u64 {
        self.start_ms() + DAY_MS as u64
    }

    /// The Beijing day that holds `ms`.
    pub fn of_ms(ms: u64) -> Date {
        let local = ms as i64 + BEIJING_OFFSET_MS;
        let (year, month, day) = civil_from_days(local.div_euclid(DAY_MS));
        Date {
            year: year as u16,
            month: month as u8,
            day: day as u8,
        }
    }
}

impl std::fmt::Display for Date {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// `ms` as `YYYY-MM-DDTHH:MM:SS+08:00` (Beijing time, whole seconds).
pub fn beijing_time(ms: u64) -> String {
    let local = ms as i64 + BEIJING_OFFSET_MS;
    let date = Date::of_ms(ms);
    let seconds = local.rem_euclid(DAY_MS) / 1000;
    format!(
        "{date}T{:02}:{:02}:{:02}+08:00",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// `ms` as a TOML date-time in Beijing time that reads back to exactly `ms`: whole seconds
/// as [`beijing_time`], else with milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    let text = beijing_time(ms);
    if ms.is_multiple_of(1000) {
        return text;
    }
    let (seconds, offset) = text.split_at(text.len() - "+08:00".len());
    format!("{seconds}.{:03}{offset}", ms % 1000)
}

/// A TOML date-time (or date) as Unix milliseconds: without an offset Beijing time is meant,
/// a date alone means 00:00 of that day. `None` for an impossible date or one before 1970.
pub fn datetime_ms(datetime: &toml::value::Datetime) -> Option<u64> {
    let date = datetime
        .date
        .and_then(|d| Date::new(d.year, d.month, d.day))?;
    let (seconds, nanos) = datetime.time.map_or((0, 0), |t| {
        (
            i64::from(t.hour) * 3600 + i64::from(t.minute) * 60 + i64::from(t.second),
            i64::from(t.nanosecond),
        )
    });
    let offset_ms = match datetime.offset {
        None => BEIJING_OFFSET_MS,
        Some(toml::value::Offset::Z) => 0,
        Some(toml::value::Offset::Custom { minutes }) => i64::from(minutes) * 60_000,
    };
    let days = days_from_civil(
        i64::from(date.year),
        u32::from(date.month),
        u32::from(date.day),
    );
    u64::try_from(days * DAY_MS + seconds * 1000 + nanos / 1_000_000 - offset_ms).ok()
}

/// A date-time as written in the file (`2026-06-01T09:30:00+08:00`) as Unix milliseconds.
pub fn parse_instant(text: &str) -> Option<u64> {
    datetime_ms(&text.trim().parse::<toml::value::Datetime>().ok()?)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The security assessment (接入前安全评估) of one node: `[[assessment]]` in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub node: NodeId,
    /// Who assessed, such as 广东省网络安全等级保护测评中心.
    pub assessor: String,
    /// The assessment report's reference, if given.
    pub reference: Option<String>,
    pub assessed_on: Date,
    /// The last day the assessment is valid (inclusive, Beijing time).
    pub valid_until: Date,
}

/// Days before expiry from which a node warns about its assessment.
pub const ASSESSMENT_WARN_DAYS: u64 = 30;

/// Whether a node may hold sessions now, by its security assessment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The topology does not require assessments (`require_assessment` is absent or false).
    NotRequired,
    /// Valid; `days_left` whole days until it expires.
    Valid { until: Date, days_left: u64 },
    /// Required, and the node has none.
    Missing,
    /// Assessed on a day still to come.
    NotYet { from: Date },
    /// Expired at the end of `on`.
    Expired { on: Date },
}

impl Admission {
    pub fn admits(&self) -> bool {
        matches!(self, Admission::NotRequired | Admission::Valid { .. })
    }

    /// Whether the operator should be warned that the assessment ends soon.
    pub fn expiring(&self) -> bool {
        matches!(self, Admission::Valid { days_left, .. } if *days_left < ASSESSMENT_WARN_DAYS)
    }

    /// Why `node` is refused, and what to do; `None` when it is admitted.
    pub fn refusal(&self, node: NodeId) -> Option<String> {
        match self {
            Admission::NotRequired | Admission::Valid { .. } => None,
            Admission::Missing => Some(format!(
                "{node} has no security assessment (接入前安全评估) in the topology, which requires one: have the platform assessed, then add an [[assessment]] for node \"{node}\" with assessor, assessed_on and valid_until, raise the version and reload; nothing is deleted, its data waits in its outbox"
            )),
            Admission::NotYet { from } => Some(format!(
                "{node}'s security assessment is dated {from}, a day still to come: fix assessed_on in its [[assessment]] (the date of the assessment report)"
            )),
            Admission::Expired { on } => Some(format!(
                "{node}'s security assessment (接入前安全评估) expired at the end of {on}: have the platform re-assessed, then update valid_until in its [[assessment]], raise the version and reload; nothing is deleted, its data waits in its outbox"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times_are_beijing_time() {
        let day = Date::new(2026, 6, 1).unwrap();
        // 2026-06-01T00:00:00+08:00 = 2026-05-31T16:00:00Z = 1_780_243_200_000 ms.
        assert_eq!(day.start_ms(), 1_780_243_200_000);
        assert_eq!(day.end_ms() - day.start_ms(), 86_400_000);
        assert_eq!(Date::of_ms(day.start_ms()), day);
        assert_eq!(
            Date::of_ms(day.start_ms() - 1),
            Date::new(2026, 5, 31).unwrap()
        );
        assert_eq!(
            beijing_time(day.start_ms() + 3_723_000),
            "2026-06-01T01:02:03+08:00"
        );
        assert_eq!(Date::new(2026, 2, 29), None);
        assert!(Date::new(2028, 2, 29).is_some());
        assert_eq!(Date::new(2026, 13, 1), None);
        assert_eq!(Date::new(2026, 4, 31), None);
    }

    #[test]
    fn an_ended_key_signs_validly_only_before_its_end() {
        assert!(KeyState::Current.signs_validly(None));
        let retired = KeyState::Retired { at_ms: 1000 };
        assert!(retired.signs_validly(Some(999)));
        assert!(!retired.signs_validly(Some(1000)));
        assert!(!retired.signs_validly(None));
        let revoked = KeyState::Revoked { at_ms: 1000 };
        assert!(revoked.signs_validly(Some(1)));
        assert!(!revoked.signs_validly(Some(5000)));
    }
}
