//! Identifiers that can only hold valid values: node ids (GB/T 2260 division codes), unified
//! social credit codes (GB 32100-2015), resident identity numbers (GB 11643-1999), periods,
//! categories, record keys and content hashes.
//!
//! Every parser here takes untrusted text and never panics; a value that exists is valid.

use std::fmt;

use bincode::{Decode, Encode};

/// Why an identifier was refused. Each variant says what was wrong with the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error(
        "node id {0:?} must be six digits (a GB/T 2260 division code such as 445281, or 000000 for the national platform)"
    )]
    NodeId(String),
    #[error(
        "unified social credit code {0:?} must be 18 characters from 0-9 and A-Y without I, O, S, V, Z; positions 3-8 must be digits"
    )]
    UsccFormat(String),
    #[error("resident id {0:?} must be 17 digits followed by a digit or X")]
    ResidentIdFormat(String),
    #[error(
        "resident id {value:?} has check character {found:?}, the GB 11643 check gives {expected:?}: check the number with its owner"
    )]
    ResidentIdCheck {
        value: String,
        expected: char,
        found: char,
    },
    #[error(
        "resident id {value:?}: {problem}; the check character matches, so the number was probably made up or copied wrong: check it with its owner"
    )]
    ResidentIdBirthDate {
        value: String,
        problem: BirthDateProblem,
    },
    #[error(
        "period {0:?} must be a month YYYY-MM (or YYYYMM) or a day YYYY-MM-DD, with a real calendar date between 1949 and 2199"
    )]
    Period(String),
    #[error("category {0:?} must be 1 to 32 characters of a-z, 0-9 and _")]
    Category(String),
    #[error("batch id {0:?} must be 64 hexadecimal characters")]
    BatchId(String),
}

/// A node of the network: its GB/T 2260 six-digit division code, `000000` for the national
/// platform. Stored as the number so that big-endian keys sort in code order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode)]
pub struct NodeId(u32);

impl NodeId {
    pub const NATIONAL: NodeId = NodeId(0);

    pub fn parse(text: &str) -> Result<NodeId, IdError> {
        let bytes = text.as_bytes();
        if bytes.len() != 6 || !bytes.iter().all(u8::is_ascii_digit) {
            return Err(IdError::NodeId(text.to_owned()));
        }
        let code = bytes
            .iter()
            .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0'));
        NodeId::from_code(code).ok_or_else(|| IdError::NodeId(text.to_owned()))
    }

    /// The node with this numeric code, if it is a plausible division code: `0` (national) or a
    /// code whose province part (first two digits) is 11 to 99.
    pub fn from_code(code: u32) -> Option<NodeId> {
        (code == 0 || (110_000..=999_999).contains(&code)).then_some(NodeId(code))
    }

    pub fn code(self) -> u32 {
        self.0
    }

    pub fn is_national(self) -> bool {
        self.0 == 0
    }

    /// The division level the code itself implies (`XX0000` province, `XXXX00` city, else county).
    pub fn level(self) -> DivisionLevel {
        match self.0 {
            0 => DivisionLevel::National,
            c if c % 10_000 == 0 => DivisionLevel::Province,
            c if c % 100 == 0 => DivisionLevel::City,
            _ => DivisionLevel::County,
        }
    }

    pub fn to_be_bytes(self) -> [u8; 4] {
        self.0.to_be_bytes()
    }
}

impl<C> Decode<C> for NodeId {
    fn decode<D: bincode::de::Decoder<Context = C>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        NodeId::from_code(u32::decode(decoder)?).ok_or(bincode::error::DecodeError::Other(
            "node id is not a division code",
        ))
    }
}
bincode::impl_borrow_decode!(NodeId);

/// The level a division code implies by its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DivisionLevel {
    National,
    Province,
    City,
    County,
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:06}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({:06})", self.0)
    }
}

impl std::str::FromStr for NodeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeId::parse(s)
    }
}

/// The 31 symbols of GB 32100-2015, in value order 0..=30.
const USCC_ALPHABET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
/// Weights 3^(i-1) mod 31 for positions 1..=17.
const USCC_WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

/// Each byte's value in [`USCC_ALPHABET`], `u8::MAX` for bytes not in it: a table, as every
/// character of every code is looked up (twice) during ingestion.
const USCC_VALUES: [u8; 256] = {
    let mut values = [u8::MAX; 256];
    let mut i = 0;
    while i < USCC_ALPHABET.len() {
        values[USCC_ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    values
};

fn uscc_value(byte: u8) -> Option<u32> {
    match USCC_VALUES[usize::from(byte)] {
        u8::MAX => None,
        value => Some(u32::from(value)),
    }
}

/// The GB 32100 check character for the first 17 characters. `None` if a character is not in
/// the alphabet.
pub fn uscc_check_char(first17: &[u8]) -> Option<char> {
    if first17.len() != 17 {
        return None;
    }
    let mut sum = 0u32;
    for (byte, weight) in first17.iter().zip(USCC_WEIGHTS) {
        sum += uscc_value(*byte)? * weight;
    }
    Some(char::from(USCC_ALPHABET[((31 - sum % 31) % 31) as usize]))
}

/// The GB 11714 check character of an organization code's 8 body characters.
pub fn org_code_check_char(body8: &[u8]) -> Option<char> {
    const WEIGHTS: [u32; 8] = [3, 7, 9, 10, 5, 8, 4, 2];
    if body8.len() != 8 {
        return None;
    }
    let mut sum = 0u32;
    for (byte, weight) in body8.iter().zip(WEIGHTS) {
        let value = match byte {
            b'0'..=b'9' => u32::from(byte - b'0'),
            b'A'..=b'Z' => u32::from(byte - b'A') + 10,
            _ => return None,
        };
        sum += value * weight;
    }
    Some(match 11 - sum % 11 {
        10 => 'X',
        11 => '0',
        digit => char::from_digit(digit, 10)?,
    })
}

/// The ISO 7064 MOD 11,10 check digit of a legacy 15-digit business registration number.
pub fn registration_number_check_digit(first14: &[u8]) -> Option<char> {
    if first14.len() != 14 {
        return None;
    }
    let mut p = 10u32;
    for byte in first14 {
        if !byte.is_ascii_digit() {
            return None;
        }
        let mut s = (p + u32::from(byte - b'0')) % 10;
        if s == 0 {
            s = 10;
        }
        p = (2 * s) % 11;
    }
    char::from_digit((11 - p) % 10, 10)
}

/// A unified social credit code whose form is valid. The check character may still fail:
/// legal early pilot codes do, so that is reported by [`Uscc::check_char_ok`] and treated as a
/// warning by validation, never as a rejection. A well-formed code may still be a placeholder
/// no organization holds ([`Uscc::placeholder`]); validation refuses those.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode)]
pub struct Uscc([u8; 18]);

impl<C> Decode<C> for Uscc {
    fn decode<D: bincode::de::Decoder<Context = C>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let bytes = <[u8; 18]>::decode(decoder)?;
        Uscc::from_encoded(bytes).ok_or(bincode::error::DecodeError::Other(
            "malformed unified social credit code",
        ))
    }
}
bincode::impl_borrow_decode!(Uscc);

impl Uscc {
    /// The code whose encoding is `bytes` (its 18 characters), if they are one in normal
    /// form: what decoding accepts.
    pub(crate) fn from_encoded(bytes: [u8; 18]) -> Option<Uscc> {
        std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| Uscc::parse(text).ok())
            .filter(|uscc| uscc.0 == bytes)
    }

    /// Parses the form: 18 characters of the GB 32100 alphabet, positions 3–8 digits (the
    /// region code). Lower-case letters are accepted and upper-cased.
    pub fn parse(text: &str) -> Result<Uscc, IdError> {
        let Ok(bytes) = <&[u8; 18]>::try_from(text.as_bytes()) else {
            return Err(IdError::UsccFormat(text.to_owned()));
        };
        // Every position checked, the verdict taken once at the end, without a branch per
        // character (codes are nearly always valid, and this runs for every code of every
        // row): a byte outside the alphabet looks up `u8::MAX`, whose high bit no value has.
        let mut code = *bytes;
        code.make_ascii_uppercase();
        let outside = code
            .iter()
            .fold(0, |outside, &byte| outside | USCC_VALUES[usize::from(byte)]);
        if outside & 0x80 != 0 || !code[2..8].iter().all(u8::is_ascii_digit) {
            return Err(IdError::UsccFormat(text.to_owned()));
        }
        Ok(Uscc(code))
    }

    /// The code `text` is, if it is one in normal form (upper case) with the right check
    /// character and no placeholder: what [`Uscc::parse`] returns unchanged with
    /// [`Uscc::check_char_ok`] and no [`Uscc::placeholder`], told in one pass over the bytes
    /// (the usual code of an export; validation asks this first).
    pub(crate) fn normal(text: &str) -> Option<Uscc> {
        let bytes = <&[u8; 18]>::try_from(text.as_bytes()).ok()?;
        // Lower-case letters are outside the table: not in normal form.
        let mut outside = 0u8;
        let mut sum = 0u32;
        for (&byte, weight) in bytes[..17].iter().zip(USCC_WEIGHTS) {
            let value = USCC_VALUES[usize::from(byte)];
            outside |= value;
            sum += u32::from(value) * weight;
        }
        let check = USCC_VALUES[usize::from(bytes[17])];
        let uscc = Uscc(*bytes);
        (outside & 0x80 == 0
            && bytes[2..8].iter().all(u8::is_ascii_digit)
            && u32::from(check) == (31 - sum % 31) % 31
            && uscc.placeholder().is_none())
        .then_some(uscc)
    }

    /// Its 18 characters' bytes (ASCII), without [`Uscc::as_str`]'s UTF-8 check.
    pub fn as_bytes(&self) -> &[u8; 18] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII bytes from USCC_ALPHABET are ever stored.
        std::str::from_utf8(&self.0).expect("USCC holds ASCII")
    }

    /// The check character the code should end with.
    pub fn expected_check_char(&self) -> char {
        char::from(USCC_ALPHABET[usize::from(self.expected_check_value())])
    }

    pub fn check_char_ok(&self) -> bool {
        USCC_VALUES[usize::from(self.0[17])] == self.expected_check_value()
    }

    /// [`uscc_check_char`]'s value for the code's first 17 characters, which parsing has
    /// already found in the alphabet.
    fn expected_check_value(&self) -> u8 {
        let mut sum = 0u32;
        for (byte, weight) in self.0[..17].iter().zip(USCC_WEIGHTS) {
            sum += u32::from(USCC_VALUES[usize::from(*byte)]) * weight;
        }
        ((31 - sum % 31) % 31) as u8
    }

    /// Whether the embedded GB 11714 organization code (positions 9–17) passes its own check.
    pub fn org_code_ok(&self) -> bool {
        org_code_check_char(&self.0[8..16]).is_some_and(|c| c == char::from(self.0[16]))
    }

    /// The registration-authority and entity-category characters, e.g. `"92"` for an
    /// individual business (个体工商户), whose records usually carry personal data.
    pub fn kind(&self) -> &str {
        &self.as_str()[..2]
    }

    /// Why this code is a placeholder that no organization can hold, if it is one: export
    /// systems fill a required code column with `000000000000000000`, `00000000000000000X`,
    /// `111111111111111111` or a real prefix with a zero body (`91445281MA00000000`), and
    /// some of those even pass the check character. A code is a placeholder when
    /// - its first 17 characters are one character repeated;
    /// - position 1 is not a registration-authority code (GB 32100 and the later
    ///   assignments: 1–9, A, N, Y);
    /// - position 2 is not an entity-category code (every authority numbers its categories
    ///   from 1: never 0, never a letter);
    /// - positions 3–8 start with `00` (no GB/T 2260 division does; central registrations use
    ///   `100000`);
    /// - its subject identifier (positions 9–17, the GB 11714 organization code) has a body
    ///   (positions 9–16) that is all zeros after its leading letters (`00000000`,
    ///   `MA000000`) or one character repeated (`11111111`).
    pub fn placeholder(&self) -> Option<Placeholder> {
        let code = &self.0;
        let first = code[0];
        if code[1..17].iter().all(|&b| b == first) {
            return Some(Placeholder::Repeated(char::from(first)));
        }
        if !matches!(first, b'1'..=b'9' | b'A' | b'N' | b'Y') {
            return Some(Placeholder::Authority(char::from(first)));
        }
        if !matches!(code[1], b'1'..=b'9') {
            return Some(Placeholder::Category(char::from(code[1])));
        }
        if code[2..4] == *b"00" {
            return Some(Placeholder::Region);
        }
        let body = &code[8..16];
        let digits = &body[body.iter().take_while(|b| b.is_ascii_uppercase()).count()..];
        if !digits.is_empty() && digits.iter().all(|&b| b == b'0') {
            return Some(Placeholder::ZeroSubject);
        }
        if body.iter().all(|&b| b == body[0]) {
            return Some(Placeholder::RepeatedSubject(char::from(body[0])));
        }
        None
    }
}

/// What makes a well-formed unified social credit code a placeholder; see
/// [`Uscc::placeholder`]. Displays as what is wrong, in words for an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    Repeated(char),
    Authority(char),
    Category(char),
    Region,
    ZeroSubject,
    RepeatedSubject(char),
}

impl fmt::Display for Placeholder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placeholder::Repeated(c) => write!(
                f,
                "a placeholder, not a code: the first 17 characters are all {c:?}"
            ),
            Placeholder::Authority(c) => write!(
                f,
                "a placeholder, not a code: position 1 is {c:?}, which is not a registration-authority code (GB 32100 assigns 1-9, A, N and Y)"
            ),
            Placeholder::Category(c) => write!(
                f,
                "a placeholder, not a code: position 2 is {c:?}, which is not an entity-category code (1-9)"
            ),
            Placeholder::Region => f.write_str(
                "a placeholder, not a code: positions 3-8 start with 00, which is no GB/T 2260 division",
            ),
            Placeholder::ZeroSubject => f.write_str(
                "a placeholder, not a code: the subject identifier (positions 9-16) is all zeros after its letters",
            ),
            Placeholder::RepeatedSubject(c) => write!(
                f,
                "a placeholder, not a code: the subject identifier (positions 9-16) is all {c:?}"
            ),
        }
    }
}

impl fmt::Display for Uscc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Uscc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uscc({})", self.as_str())
    }
}

/// A resident identity number (GB 11643-1999, 18 characters) whose check digit is correct.
/// Never leaves its origin: desensitization turns it into a [`PersonToken`] and a masked form.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResidentId([u8; 18]);

impl ResidentId {
    pub fn parse(text: &str) -> Result<ResidentId, IdError> {
        let bytes = text.as_bytes();
        let well_formed = bytes.len() == 18
            && bytes[..17].iter().all(u8::is_ascii_digit)
            && (bytes[17].is_ascii_digit() || bytes[17] == b'X' || bytes[17] == b'x');
        if !well_formed {
            return Err(IdError::ResidentIdFormat(mask_middle(text)));
        }
        let mut id = [0u8; 18];
        id.copy_from_slice(bytes);
        id[17] = id[17].to_ascii_uppercase();
        let expected = resident_id_check_char(&id[..17]);
        let found = char::from(id[17]);
        if expected != found {
            return Err(IdError::ResidentIdCheck {
                value: mask_middle(text),
                expected,
                found,
            });
        }
        let resident = ResidentId(id);
        read_birth_date(&resident.0).map_err(|problem| IdError::ResidentIdBirthDate {
            value: mask_middle(text),
            problem,
        })?;
        Ok(resident)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("resident id holds ASCII")
    }

    /// The birth date of positions 7–14 (`YYYYMMDD`): a calendar date from
    /// [`ResidentId::BIRTH_YEAR_MIN`] on ([`ResidentId::parse`] refuses others). Whether it
    /// lies in the future is for the caller to say (this crate has no clock): see
    /// [`ResidentId::check_born_by`].
    pub fn birth_date(&self) -> BirthDate {
        read_birth_date(&self.0).expect("a parsed resident id has a calendar birth date")
    }

    /// Refuses a birth date after the last day of `latest`: someone born after it cannot be
    /// the subject of a record about that period.
    pub fn check_born_by(&self, latest: Period) -> Result<(), BirthDateProblem> {
        let (year, month, day) = match latest {
            Period::Month { year, month } => (year, month, days_in_month(year, month)),
            Period::Day { year, month, day } => (year, month, day),
        };
        if self.birth_date() > (BirthDate { year, month, day }) {
            return Err(BirthDateProblem::After(latest.last_day()));
        }
        Ok(())
    }

    /// The earliest birth year accepted. GB 11643's own example is born in 1880; nobody born
    /// before 1800 holds a number.
    pub const BIRTH_YEAR_MIN: u16 = 1800;

    /// The display form kept after desensitization: region code and check character only.
    pub fn masked(&self) -> String {
        mask_middle(self.as_str())
    }
}

/// The birth date in positions 7–14 of 18 ASCII digits (and a check character).
fn read_birth_date(id: &[u8; 18]) -> Result<BirthDate, BirthDateProblem> {
    let number = |range: std::ops::Range<usize>| {
        id[range]
            .iter()
            .fold(0u16, |acc, d| acc * 10 + u16::from(d.wrapping_sub(b'0')))
    };
    let (year, month, day) = (number(6..10), number(10..12) as u8, number(12..14) as u8);
    if year < ResidentId::BIRTH_YEAR_MIN {
        return Err(BirthDateProblem::TooEarly);
    }
    if !(1..=12).contains(&month) {
        return Err(BirthDateProblem::NoSuchMonth);
    }
    if day == 0 || day > days_in_month(year, month) {
        return Err(BirthDateProblem::NoSuchDay);
    }
    Ok(BirthDate { year, month, day })
}

/// A birth date read from a resident id: a calendar date, ordered in time. (Not a [`Period`]:
/// birth years reach back before [`Period::YEAR_MIN`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BirthDate {
    pub year: u16,
    pub month: u8,
    pub day: u8,
}

/// What is wrong with the birth date of a resident id. Never shows the date itself (it is the
/// most sensitive part of the number): it says which part is impossible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BirthDateProblem {
    TooEarly,
    NoSuchMonth,
    NoSuchDay,
    /// Later than this day (the last day the record can be about).
    After(Period),
}

impl fmt::Display for BirthDateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BirthDateProblem::TooEarly => write!(
                f,
                "the birth date (positions 7-14) is before {}",
                ResidentId::BIRTH_YEAR_MIN
            ),
            BirthDateProblem::NoSuchMonth => {
                f.write_str("the birth month (positions 11-12) is not 01 to 12")
            }
            BirthDateProblem::NoSuchDay => {
                f.write_str("the birth day (positions 13-14) does not exist in its month")
            }
            BirthDateProblem::After(day) => write!(
                f,
                "the birth date (positions 7-14) is later than {day}, the last day this record can be about"
            ),
        }
    }
}

impl fmt::Debug for ResidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the number itself, not even in a debug log.
        write!(f, "ResidentId({})", self.masked())
    }
}

/// The GB 11643 (ISO 7064 MOD 11-2) check character for 17 digits.
pub fn resident_id_check_char(first17: &[u8]) -> char {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    assert_eq!(first17.len(), 17, "resident id body is 17 digits");
    let sum: u32 = first17
        .iter()
        .zip(WEIGHTS)
        .map(|(d, w)| u32::from(d.wrapping_sub(b'0')) * w)
        .sum();
    char::from(CHECK[(sum % 11) as usize])
}

/// Keeps the first six and the last character of an identifier and stars the rest
/// (`11010519491231002X` → `110105***********X`). Short values are starred whole but for the
/// first character.
pub fn mask_middle(text: &str) -> String {
    mask_middle_parts(text).to_text()
}

/// [`mask_middle`] as its parts, to be written where it goes without a `String` first.
pub(crate) fn mask_middle_parts(text: &str) -> Masked<'_> {
    let chars = char_count(text);
    let (head, tail) = match chars {
        0 => return Masked::EMPTY,
        n if n <= 4 => (1, 0),
        n if n <= 10 => (2, 1),
        _ => (6, 1),
    };
    mask_parts(text, chars, head, tail, 0)
}

/// The number of characters of `text`, without decoding an ASCII one.
pub(crate) fn char_count(text: &str) -> usize {
    if text.is_ascii() {
        text.len()
    } else {
        text.chars().count()
    }
}

/// A masked value: `head`, then `stars` asterisks, then `tail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Masked<'t> {
    pub head: &'t str,
    pub stars: usize,
    pub tail: &'t str,
}

impl Masked<'_> {
    pub const EMPTY: Masked<'static> = Masked {
        head: "",
        stars: 0,
        tail: "",
    };

    /// Its length in bytes (a star is one byte).
    pub fn len(self) -> usize {
        self.head.len() + self.stars + self.tail.len()
    }

    /// It as one `String`, allocated at its exact size.
    pub fn to_text(self) -> String {
        let mut masked = String::with_capacity(self.len());
        masked.push_str(self.head);
        masked.extend(std::iter::repeat_n('*', self.stars));
        masked.push_str(self.tail);
        masked
    }

    /// Appends it to `out`.
    pub fn write_to(self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.head.as_bytes());
        out.resize(out.len() + self.stars, b'*');
        out.extend_from_slice(self.tail.as_bytes());
    }
}

/// `text`, of `chars` characters ([`char_count`], which every caller has counted already),
/// with all but its first `head` and last `tail` characters replaced by `*`, plus
/// `extra_stars` more, as parts borrowing `text` (it runs for every personal field of every
/// row: written where it goes, no `String` first). `head + tail` must not exceed `chars`.
pub(crate) fn mask_parts(
    text: &str,
    chars: usize,
    head: usize,
    tail: usize,
    extra_stars: usize,
) -> Masked<'_> {
    debug_assert_eq!(chars, char_count(text));
    debug_assert!(
        head + tail <= chars,
        "{head} + {tail} of {chars} characters"
    );
    if text.is_ascii() {
        // Characters are bytes: no decoding (phones and identity numbers are ASCII).
        let head_end = head.min(text.len());
        let tail_start = text.len().saturating_sub(tail).max(head_end);
        return Masked {
            head: &text[..head_end],
            stars: tail_start - head_end + extra_stars,
            tail: &text[tail_start..],
        };
    }
    let head_end = text.char_indices().nth(head).map_or(text.len(), |(i, _)| i);
    let tail_start = match tail {
        0 => text.len(),
        _ => text.char_indices().nth_back(tail - 1).map_or(0, |(i, _)| i),
    };
    Masked {
        head: &text[..head_end],
        // Saturating: a caller breaking the precondition gets a short mask, never a huge one.
        stars: chars.saturating_sub(head + tail) + extra_stars,
        tail: &text[tail_start..],
    }
}

/// The period a batch covers: a month for monthly data, a day for daily data.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode)]
pub enum Period {
    Month { year: u16, month: u8 },
    Day { year: u16, month: u8, day: u8 },
}

impl Period {
    pub const YEAR_MIN: u16 = 1949;
    pub const YEAR_MAX: u16 = 2199;

    /// The period `text` writes in its normal form, `YYYY-MM` or `YYYY-MM-DD` in ASCII
    /// digits, if it is written so and is a valid period; `None` for any other text (which
    /// [`Period::parse`] may still accept, in another form). What nearly every date cell of
    /// an export holds, checked without [`Period::parse`]'s general scan.
    pub fn parse_normal(text: &str) -> Option<Period> {
        let bytes = text.as_bytes();
        let digit = |i: usize| bytes[i].wrapping_sub(b'0');
        let number = |at: usize, n: usize| {
            (at..at + n).try_fold(0u16, |acc, i| {
                let d = digit(i);
                (d < 10).then(|| acc * 10 + u16::from(d))
            })
        };
        let (year, month) = match bytes.len() {
            7 | 10 if bytes[4] == b'-' => (number(0, 4)?, number(5, 2)? as u8),
            _ => return None,
        };
        let period = match bytes.len() {
            7 => Period::Month { year, month },
            _ if bytes[7] == b'-' => Period::Day {
                year,
                month,
                day: number(8, 2)? as u8,
            },
            _ => return None,
        };
        period.is_valid().then_some(period)
    }

    /// Accepts `YYYY-MM`, `YYYYMM`, `YYYY/MM`, `YYYY-MM-DD`, `YYYY/MM/DD` and `YYYYMMDD`.
    pub fn parse(text: &str) -> Result<Period, IdError> {
        let err = || IdError::Period(text.to_owned());
        // The digits, on the stack: more than 8 is no period, so they stop there.
        let mut digits = [0u8; 8];
        let mut count = 0;
        for byte in text.bytes() {
            match byte {
                b'-' | b'/' => {}
                b'0'..=b'9' if count < digits.len() => {
                    digits[count] = byte - b'0';
                    count += 1;
                }
                _ => return Err(err()),
            }
        }
        let separators = text.len() - count;
        let num = |range: std::ops::Range<usize>| {
            digits[range]
                .iter()
                .fold(0u16, |acc, d| acc * 10 + u16::from(*d))
        };
        // Separators, when present, must sit exactly where a date puts them.
        let shaped = |len: usize| {
            separators == 0
                || (text.len() == len
                    && text
                        .bytes()
                        .enumerate()
                        .all(|(i, b)| matches!(i, 4 | 7) == (b == b'-' || b == b'/')))
        };
        let period = match count {
            6 if separators <= 1 && shaped(7) => Period::Month {
                year: num(0..4),
                month: num(4..6) as u8,
            },
            8 if separators == 0 || separators == 2 && shaped(10) => Period::Day {
                year: num(0..4),
                month: num(4..6) as u8,
                day: num(6..8) as u8,
            },
            _ => return Err(err()),
        };
        if period.is_valid() {
            Ok(period)
        } else {
            Err(err())
        }
    }

    fn is_valid(self) -> bool {
        let (year, month, day) = match self {
            Period::Month { year, month } => (year, month, 1),
            Period::Day { year, month, day } => (year, month, day),
        };
        (Self::YEAR_MIN..=Self::YEAR_MAX).contains(&year)
            && (1..=12).contains(&month)
            && day >= 1
            && day <= days_in_month(year, month)
    }

    /// The first day of the period (itself for a day).
    pub fn first_day(self) -> Period {
        match self {
            Period::Month { year, month } => Period::Day {
                year,
                month,
                day: 1,
            },
            day @ Period::Day { .. } => day,
        }
    }

    /// The last day of the period (itself for a day).
    pub fn last_day(self) -> Period {
        match self {
            Period::Month { year, month } => Period::Day {
                year,
                month,
                day: days_in_month(year, month),
            },
            day @ Period::Day { .. } => day,
        }
    }

    /// The day `days` days after 1970-01-01 (negative: before), if it lies between
    /// [`Period::YEAR_MIN`] and [`Period::YEAR_MAX`]. The caller brings the clock: e.g.
    /// `(unix_ms + 8 h) / 1 day` for today in China Standard Time.
    pub fn from_days_since_epoch(days: i64) -> Option<Period> {
        // Howard Hinnant's civil_from_days, in proleptic Gregorian.
        let z = days.checked_add(719_468)?;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        let period = Period::Day {
            year: u16::try_from(year).ok()?,
            month: month as u8,
            day: day as u8,
        };
        period.is_valid().then_some(period)
    }

    /// The month a period falls in (itself for a monthly period).
    pub fn month(self) -> Period {
        match self {
            Period::Month { .. } => self,
            Period::Day { year, month, .. } => Period::Month { year, month },
        }
    }

    /// Big-endian key bytes that sort in time order: year, month, day (0 for a month).
    pub fn key_bytes(self) -> [u8; 4] {
        let (year, month, day) = match self {
            Period::Month { year, month } => (year, month, 0),
            Period::Day { year, month, day } => (year, month, day),
        };
        let y = year.to_be_bytes();
        [y[0], y[1], month, day]
    }
}

/// Decodes through the variant layout and then checks the calendar, so a decoded period is as
/// valid as a parsed one.
#[derive(Decode)]
enum PeriodWire {
    Month { year: u16, month: u8 },
    Day { year: u16, month: u8, day: u8 },
}

impl<C> Decode<C> for Period {
    fn decode<D: bincode::de::Decoder<Context = C>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let period = match PeriodWire::decode(decoder)? {
            PeriodWire::Month { year, month } => Period::Month { year, month },
            PeriodWire::Day { year, month, day } => Period::Day { year, month, day },
        };
        if period.is_valid() {
            Ok(period)
        } else {
            Err(bincode::error::DecodeError::Other(
                "period is not a calendar month or day",
            ))
        }
    }
}
bincode::impl_borrow_decode!(Period);

pub fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        _ => 0,
    }
}

/// The canonical text of a [`Period`] (`YYYY-MM` or `YYYY-MM-DD`), made on the stack: what
/// `to_string` gives, without an allocation, for comparing and copying per row.
#[derive(Clone, Copy)]
pub struct PeriodText {
    /// Room for the widest fields a `u16` year and `u8` month and day can print.
    bytes: [u8; 13],
    len: usize,
}

impl PeriodText {
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and '-' are ever written.
        std::str::from_utf8(&self.bytes[..self.len]).expect("period text is ASCII")
    }

    /// Appends `n` in decimal, zero-padded to `width` digits (as `{n:0width$}` would).
    fn push_number(&mut self, n: u16, width: usize) {
        let digits = match n {
            0..=9 => 1,
            10..=99 => 2,
            100..=999 => 3,
            1000..=9999 => 4,
            _ => 5,
        };
        let end = self.len + digits.max(width);
        let mut rest = n;
        for byte in self.bytes[self.len..end].iter_mut().rev() {
            *byte = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        self.len = end;
    }
}

impl Period {
    /// The canonical text, as `Display` writes it.
    pub fn text(self) -> PeriodText {
        let mut text = PeriodText {
            bytes: [b'-'; 13],
            len: 0,
        };
        let (year, month, day) = match self {
            Period::Month { year, month } => (year, month, None),
            Period::Day { year, month, day } => (year, month, Some(day)),
        };
        text.push_number(year, 4);
        text.len += 1; // '-'
        text.push_number(month.into(), 2);
        if let Some(day) = day {
            text.len += 1; // '-'
            text.push_number(day.into(), 2);
        }
        text
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

impl fmt::Debug for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Period({self})")
    }
}

impl std::str::FromStr for Period {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Period::parse(s)
    }
}

/// A record category's stable machine name (`water_fee`, `admin_penalty`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Encode)]
pub struct Category(String);

impl Category {
    pub const LEN_MAX: usize = 32;

    pub fn parse(text: &str) -> Result<Category, IdError> {
        let ok = !text.is_empty()
            && text.len() <= Self::LEN_MAX
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(Category(text.to_owned()))
        } else {
            Err(IdError::Category(text.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The reserved category under which progress reports (工作通报) are offered and indexed.
    /// It is not a record category: no schema may take this name (a test keeps it so), so no
    /// data batch or manifest can carry it.
    pub fn progress_report() -> Category {
        Category(Category::PROGRESS_REPORT.to_owned())
    }

    /// The name of [`Category::progress_report`].
    pub const PROGRESS_REPORT: &'static str = "progress_report";
}

impl<C> Decode<C> for Category {
    fn decode<D: bincode::de::Decoder<Context = C>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let text = String::decode(decoder)?;
        Category::parse(&text).map_err(|_| bincode::error::DecodeError::Other("invalid category"))
    }
}
bincode::impl_borrow_decode!(Category);

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Category({})", self.0)
    }
}

/// A 32-byte BLAKE3 digest, shown as lower-case hex.
macro_rules! digest_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            pub fn to_hex(&self) -> String {
                hex(&self.0)
            }

            pub fn parse_hex(text: &str) -> Result<$name, IdError> {
                parse_hex32(text).map($name).ok_or_else(|| IdError::BatchId(text.to_owned()))
            }

            /// The first 8 bytes in hex, for logs and tables.
            pub fn short(&self) -> String {
                hex(&self.0[..8])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }
    };
}

digest_newtype!(
    /// `BLAKE3(canonical batch bytes)`: the content address of a batch.
    BatchId
);
digest_newtype!(
    /// BLAKE3 of an audit-log entry or a receipt body.
    Digest
);

pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// Appends `bytes` in lower-case hex to `out`.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
}

pub fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        out[i] = (high * 16 + low) as u8;
    }
    Some(out)
}

/// A keyed BLAKE3 token standing for one person's identity number: the same number under the
/// same network key gives the same token, so upstream nodes can join one person's records
/// without ever seeing the number. 16 bytes (128 bits) is far beyond collision range for the
/// population.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct PersonToken(pub [u8; 16]);

impl fmt::Display for PersonToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for PersonToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PersonToken({})", hex(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        assert_eq!(NodeId::parse("445281").unwrap().to_string(), "445281");
        assert_eq!(NodeId::parse("000000").unwrap(), NodeId::NATIONAL);
        assert_eq!(
            NodeId::parse("440000").unwrap().level(),
            DivisionLevel::Province
        );
        assert_eq!(
            NodeId::parse("445200").unwrap().level(),
            DivisionLevel::City
        );
        assert_eq!(
            NodeId::parse("445281").unwrap().level(),
            DivisionLevel::County
        );
        for bad in [
            "",
            "44528",
            "4452811",
            "44528a",
            "001234",
            "+44528",
            "４４５２８１",
        ] {
            assert!(NodeId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn periods() {
        let may = Period::Month {
            year: 2022,
            month: 5,
        };
        for text in ["2022-05", "202205", "2022/05"] {
            assert_eq!(Period::parse(text).unwrap(), may, "{text}");
        }
        let day = Period::parse("2024/02/29").unwrap();
        assert_eq!(day.to_string(), "2024-02-29");
        assert_eq!(
            day.month(),
            Period::Month {
                year: 2024,
                month: 2
            }
        );
        for bad in [
            "2022-13",
            "2022-00",
            "2023-02-29",
            "1900-01",
            "2022-5",
            "22-05",
            "2022--05",
            "2022-05-",
            "2022-0505",
            "",
            "２０２２-05",
            "2022-05-32",
            "20220-5",
        ] {
            assert!(Period::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            Period::parse("2022-05").unwrap().key_bytes()
                < Period::parse("2022-06").unwrap().key_bytes()
        );
    }

    #[test]
    fn categories() {
        assert!(Category::parse("water_fee").is_ok());
        for bad in ["", "Water", "water-fee", "水费", &"a".repeat(33)] {
            assert!(Category::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn masking_keeps_region_and_check_only() {
        assert_eq!(mask_middle("11010519491231002X"), "110105***********X");
        assert_eq!(mask_middle("13812345678"), "138123****8");
        assert_eq!(mask_middle("abc"), "a**");
        assert_eq!(mask_middle(""), "");
    }

    proptest::proptest! {
        /// `Uscc::normal` is `Uscc::parse` of a code written as it parses, with its check
        /// character right and no placeholder — on codes whose check character is computed
        /// half the time (by the weighted sum over whatever bytes are there, letters outside
        /// the alphabet too), some in lower case, some placeholders, some not codes at all.
        #[test]
        fn uscc_normal_is_parse_with_its_checks(
            first17 in proptest::prop_oneof![
                "[1-9ANY][1-9][1-9][0-9]{5}[0-9A-HJ-NP-RTUW-Y]{9}",
                "[0-9A-HJ-NP-RTUW-Y]{17}",
                "[1-9][1-9][1-9][0-9]{5}[0-9A-Za-z]{9}",
                "[0-9A-Z]{2}00[0-9]{4}[0-9A-Z]{9}",
                proptest::strategy::Just("00000000000000000".to_owned()),
                proptest::strategy::Just("91445281MA0000000".to_owned()),
                "[0-9A-Z]{0,18}",
            ],
            computed in proptest::bool::ANY,
            last in "[0-9A-Za-z]",
        ) {
            let text = if computed && first17.len() == 17 {
                let sum: u32 = first17
                    .bytes()
                    .zip(USCC_WEIGHTS)
                    .map(|(byte, weight)| u32::from(USCC_VALUES[usize::from(byte)]) * weight)
                    .sum();
                let check = USCC_ALPHABET[((31 - sum % 31) % 31) as usize];
                format!("{first17}{}", char::from(check))
            } else {
                format!("{first17}{last}")
            };
            let expected = Uscc::parse(&text).ok().filter(|uscc| {
                uscc.as_bytes() == text.as_bytes()
                    && uscc.check_char_ok()
                    && uscc.placeholder().is_none()
            });
            proptest::prop_assert_eq!(Uscc::normal(&text), expected, "{}", text);
        }

        /// `mask_parts` counts the stars from the character count it is given: the same mask
        /// as counting the masked characters, for any text and any head and tail that fit.
        #[test]
        fn mask_parts_agrees_with_counting_the_masked_characters(
            text in "[a-z0-9揭阳张三丰é*]{0,14}",
            head in 0usize..8,
            tail in 0usize..8,
            extra in 0usize..2,
        ) {
            let chars = text.chars().count();
            proptest::prop_assume!(head + tail <= chars);
            let masked = mask_parts(&text, chars, head, tail, extra);
            let shown: String = text.chars().take(head).collect();
            let kept: String = text.chars().skip(chars - tail).collect();
            proptest::prop_assert_eq!(masked.head, shown.as_str());
            proptest::prop_assert_eq!(masked.tail, kept.as_str());
            let middle = &text[masked.head.len()..text.len() - masked.tail.len()];
            proptest::prop_assert_eq!(masked.stars, middle.chars().count() + extra);
        }

        /// `Uscc::parse` (every position checked, one verdict) and the check character agree
        /// with the rules read one character at a time, on codes near valid ones: one to
        /// three characters replaced by any ASCII or a Chinese character.
        #[test]
        fn uscc_parse_agrees_with_a_character_by_character_reading(
            base in proptest::sample::select(vec![
                "91445281214550059P", "914452812205143025", "11100000000013127H",
                "92445200MA4W1XYZ0G", "914403001922038216",
            ]),
            changes in proptest::collection::vec(
                (0..18usize, proptest::prop_oneof![
                    proptest::char::range('\u{0}', '\u{7f}'),
                    proptest::sample::select(vec!['a', 'i', 'o', 'z', '0', '9', '揭']),
                ]),
                0..3,
            ),
        ) {
            let mut chars: Vec<char> = base.chars().collect();
            for (at, c) in changes {
                chars[at] = c;
            }
            let text: String = chars.into_iter().collect();
            let reference = (text.len() == 18
                && text.bytes().enumerate().all(|(i, b)| {
                    let upper = b.to_ascii_uppercase();
                    if (2..8).contains(&i) {
                        upper.is_ascii_digit()
                    } else {
                        USCC_ALPHABET.contains(&upper)
                    }
                }))
            .then(|| text.to_ascii_uppercase());
            let parsed = Uscc::parse(&text);
            proptest::prop_assert_eq!(parsed.as_ref().ok().map(Uscc::as_str), reference.as_deref());
            if let Ok(code) = parsed {
                let expected = uscc_check_char(&code.as_str().as_bytes()[..17]).unwrap();
                proptest::prop_assert_eq!(code.expected_check_char(), expected);
                proptest::prop_assert_eq!(
                    code.check_char_ok(),
                    char::from(code.as_str().as_bytes()[17]) == expected
                );
            }
        }
    }

    #[test]
    fn hex_round_trip() {
        let id = BatchId([0xab; 32]);
        assert_eq!(BatchId::parse_hex(&id.to_hex()).unwrap(), id);
        assert!(BatchId::parse_hex("zz").is_err());
    }
}
