//! The ingest parser's row reader: the csv crate's records (its default dialect: `,`
//! between cells, `"` quoting with `""` inside, `\r`, `\n` or `\r\n` ending a record, empty
//! lines skipped), each with the line it starts on.
//!
//! A record is split where it stands: one `memchr` for its line's end, then the places of
//! the line's commas, quotes and `\r` as bit masks of 32 bytes, taken bit by bit. Cells may
//! be quoted (a quoted cell's commas and `\r` are characters like any other). A record with a
//! quote anywhere else — a doubled quote, a line end inside quotes, text after a closing
//! quote, a quote inside an unquoted cell — is read by `csv_core` itself, from its start.
//! `csv_core`'s state machine takes a step per byte: on the 200 MB water-fee export it was
//! 13 % of ingestion's samples, about the whole bare parse. With this reader the parsing
//! thread runs 34 % fewer instructions (callgrind, 100,000 rows). The masks are computed
//! without a branch ([`word_marks`]): a first version testing byte by byte ran 30 % fewer
//! instructions but took more CPU time than `csv_core` (a mispredicted branch at every mark).
//! `the_reader_reads_what_csv_reads` holds it to the csv crate's records and to the lines
//! the reader before it (`LineTracker`) gave them, on random text of quotes, commas, line
//! ends, long cells and multi-byte characters, through buffers of every size.

use std::io::{self, Read};

use csv_core::ReadRecordResult;

/// Bytes read from the input at a time (the buffer grows only for a longer line).
const BUFFER_BYTES: usize = 64 * 1024;
/// The longest line searched for its end: a longer one (no legitimate row is; a file with no
/// line ends is) goes to `csv_core`, which reads it as it comes, so that the buffer stays
/// this small whatever the input (the record itself grows as it did in the csv crate).
const LINE_BYTES_MAX: usize = 1 << 20;

/// One record: its bytes, where each cell lies in them, the line it starts on.
///
/// The bytes are the record as read — its line up to where it ends, cells with the commas
/// and quotes between them, copied once — or, for a record `csv_core` read (its cells
/// unescaped), the cells back to back. Either way every byte outside a cell is ASCII, so the bytes are UTF-8 exactly when
/// every cell is and every cell starts and ends on a character boundary.
#[derive(Debug, Default, Clone)]
pub(super) struct Row {
    bytes: Vec<u8>,
    cells: Vec<(usize, usize)>,
    line: u64,
    /// The cells are the record's bytes as read, an ASCII comma or quote before every cell
    /// but the first ([`split_plain`]); not so for a record `csv_core` read, whose cells lie
    /// back to back.
    as_read: bool,
}

impl Row {
    fn clear(&mut self) {
        self.bytes.clear();
        self.cells.clear();
        self.as_read = false;
    }

    fn push_field(&mut self, cell: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(cell);
        self.cells.push((start, self.bytes.len()));
    }

    /// How many cells.
    pub(super) fn len(&self) -> usize {
        self.cells.len()
    }

    /// The record's bytes, every cell among them.
    pub(super) fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    /// Where each cell is in [`Row::as_slice`], in order.
    pub(super) fn ranges(&self) -> &[(usize, usize)] {
        &self.cells
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.cells
            .iter()
            .map(|&(start, end)| &self.bytes[start..end])
    }

    /// The line the record starts on (from 1).
    pub(super) fn line(&self) -> u64 {
        self.line
    }

    /// Whether every cell but the first comes right after an ASCII byte of the record (a
    /// comma or a quote). Then, when the record's bytes are UTF-8, every cell starts on a
    /// character boundary: a character's continuation bytes never follow an ASCII byte.
    pub(super) fn cells_follow_ascii(&self) -> bool {
        self.as_read
    }

    /// The record as the csv crate's, for the header's `StringRecord`.
    pub(super) fn to_byte_record(&self) -> csv::ByteRecord {
        self.iter().collect()
    }
}

/// Reads the records of a CSV stream, each with its line.
pub(super) struct Rows<R> {
    inner: R,
    /// Bytes `start..end` are read and not yet consumed.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes before this place in `buf` were searched for a `\n` and hold none: a file whose
    /// records end with `\r` alone (Excel's "CSV (Macintosh)") has no `\n` at all, and each
    /// record would otherwise search the whole megabyte ahead of it again.
    searched_to: usize,
    /// Bytes moved to the buffer's start and bytes searched for a `\n`, in all (each should
    /// be about the input's size, whatever its line ends).
    #[cfg(test)]
    work: (u64, u64),
    /// The input has ended (nothing more to read after `end`).
    eof: bool,
    /// `\n` bytes before `buf[start]`, plus one: the line `buf[start]` is on.
    line: u64,
    /// Lines longer than this are not searched for their end ([`LINE_BYTES_MAX`]).
    line_bytes_max: usize,
    /// For records with a quote: the state machine and its output.
    core: csv_core::Reader,
    fields: Vec<u8>,
    ends: Vec<usize>,
}

impl<R: Read> Rows<R> {
    pub(super) fn new(inner: R) -> Rows<R> {
        Rows::with_capacity(inner, BUFFER_BYTES, LINE_BYTES_MAX)
    }

    fn with_capacity(inner: R, capacity: usize, line_bytes_max: usize) -> Rows<R> {
        Rows {
            inner,
            line_bytes_max,
            buf: vec![0; capacity.max(1)],
            start: 0,
            end: 0,
            searched_to: 0,
            #[cfg(test)]
            work: (0, 0),
            eof: false,
            line: 1,
            core: csv_core::Reader::new(),
            fields: vec![0; 1024],
            ends: vec![0; 64],
        }
    }

    /// Reads more of the input after `end`; when the buffer is full, first moves the
    /// unconsumed bytes to its start, and doubles it when they fill more than half of it.
    /// False once the input has ended.
    fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        // Moved only when there is no room after them, and then given as much room again as
        // they take: the megabyte kept ahead of records with no `\n` is moved once per
        // megabyte read, not once per record.
        if self.end == self.buf.len() {
            if self.start > 0 {
                #[cfg(test)]
                {
                    self.work.0 += (self.end - self.start) as u64;
                }
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.searched_to = self.searched_to.saturating_sub(self.start);
                self.start = 0;
            }
            if self.end > self.buf.len() / 2 {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Consumes `n` bytes, counting their line ends.
    fn consume(&mut self, n: usize) {
        let taken = &self.buf[self.start..self.start + n];
        self.line += memchr::memchr_iter(b'\n', taken).count() as u64;
        self.start += n;
    }

    /// Reads the next record into `row`, with the line it starts on; false at the end of the
    /// input.
    pub(super) fn read(&mut self, row: &mut Row) -> io::Result<bool> {
        row.clear();
        // Empty lines are no records: skip line ends before the record.
        loop {
            let skip = self.buf[self.start..self.end]
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            self.consume(skip);
            if self.start < self.end {
                break;
            }
            if !self.fill()? {
                return Ok(false);
            }
        }
        row.line = self.line;
        // The whole line in the buffer (a record without line ends inside is on one).
        let mut searched = self
            .searched_to
            .saturating_sub(self.start)
            .min(self.end - self.start);
        let line_end = loop {
            #[cfg(test)]
            {
                self.work.1 += (self.end - self.start - searched) as u64;
            }
            match memchr::memchr(b'\n', &self.buf[self.start + searched..self.end]) {
                Some(at) => break Some(searched + at),
                None => {
                    searched = self.end - self.start;
                    self.searched_to = self.end;
                    if searched >= self.line_bytes_max {
                        return self.read_quoted(row);
                    }
                    if !self.fill()? {
                        break None;
                    }
                    searched = self.searched_to - self.start;
                }
            }
        };
        let line = &self.buf[self.start..self.start + line_end.unwrap_or(self.end - self.start)];
        match split_plain(line, row) {
            Some(cells) => {
                // The record's terminator: `\r\n`, `\n`, a `\r` alone, or the input's end.
                let terminator = match (line.get(cells), line_end) {
                    (Some(b'\r'), Some(end)) if cells + 1 == end => 2,
                    (Some(b'\r'), _) => 1,
                    (_, Some(_)) => 1,
                    (_, None) => 0,
                };
                let taken = cells + terminator;
                if terminator > 0 && line_end == Some(taken - 1) {
                    self.line += 1;
                }
                self.start += taken;
                Ok(true)
            }
            None => self.read_quoted(row),
        }
    }

    /// Reads a record through `csv_core`, from the record's start: one with a quote
    /// [`split_plain`] does not take, or on a line too long to search.
    fn read_quoted(&mut self, row: &mut Row) -> io::Result<bool> {
        // Whatever `split_plain` pushed before it gave up goes.
        row.clear();
        self.core.reset();
        let (mut out, mut ends) = (0, 0);
        loop {
            let input = &self.buf[self.start..self.end];
            let (result, read, written, ended) =
                self.core
                    .read_record(input, &mut self.fields[out..], &mut self.ends[ends..]);
            self.consume(read);
            out += written;
            ends += ended;
            match result {
                // Once the input has ended, the next round gives the machine no bytes,
                // which tells it so (it ends the record).
                ReadRecordResult::InputEmpty => {
                    self.fill()?;
                }
                ReadRecordResult::OutputFull => self.grow_fields(),
                ReadRecordResult::OutputEndsFull => self.grow_ends(),
                ReadRecordResult::Record | ReadRecordResult::End => break,
            }
        }
        let mut from = 0;
        for &end in &self.ends[..ends] {
            row.push_field(&self.fields[from..end]);
            from = end;
        }
        Ok(true)
    }

    fn grow_fields(&mut self) {
        self.fields.resize(self.fields.len() * 2, 0);
    }

    fn grow_ends(&mut self) {
        self.ends.resize(self.ends.len() * 2, 0);
    }
}

/// Splits the record at the start of `line` (a line without its `\n`) into `row`'s cells,
/// if it is plain: cells without a quote, or quoted with no quote or `\n` inside (a `\r`
/// inside is a character like any other) and a comma, `\r` or the line's end right after.
/// Returns where its cells end (at a `\r` that ends the record, or the line's end); `None`
/// for any other record, left to `csv_core`.
fn split_plain(line: &[u8], row: &mut Row) -> Option<usize> {
    debug_assert!(row.bytes.is_empty(), "a row read afresh");
    let end = split_cells(line, &mut row.cells)?;
    // The cells are placed in the record's bytes, copied once (not cell by cell) — only
    // the record's: after a `\r` that ends it, the line goes on with the next record.
    row.bytes.extend_from_slice(&line[..end]);
    row.as_read = true;
    Some(end)
}

/// [`split_plain`]'s split: each cell's place in `line`, into `cells`.
fn split_cells(line: &[u8], cells: &mut Vec<(usize, usize)>) -> Option<usize> {
    let mut marks = Marks::new(line);
    let mut at = 0;
    loop {
        if line.get(at) == Some(&b'"') {
            // Quoted: to the next quote (commas and `\r` inside are characters).
            let close = marks.find(|&mark| mark > at && line[mark] == b'"')?;
            cells.push((at + 1, close));
            let after = close + 1;
            match line.get(after) {
                Some(b',') => at = after + 1,
                Some(b'\r') | None => return Some(after),
                Some(_) => return None,
            }
        } else {
            match marks.find(|&mark| mark >= at) {
                Some(mark) if line[mark] == b'"' => return None,
                Some(mark) => {
                    cells.push((at, mark));
                    if line[mark] == b'\r' {
                        return Some(mark);
                    }
                    at = mark + 1;
                }
                None => {
                    cells.push((at, line.len()));
                    return Some(line.len());
                }
            }
        }
    }
}

/// The places of every `,`, `"` and `\r` of a line, in order: each 32 bytes' places found
/// as one bit mask ([`block_marks`]), then taken bit by bit.
struct Marks<'a> {
    line: &'a [u8],
    /// Where the current 32 bytes start, and their places not yet taken.
    block: usize,
    mask: u32,
}

impl<'a> Marks<'a> {
    fn new(line: &'a [u8]) -> Marks<'a> {
        Marks {
            line,
            block: 0,
            mask: block_marks(line),
        }
    }
}

/// The bit mask of the `,`, `"` and `\r` among the first 32 bytes of `bytes` (fewer at the
/// end of the line: the rest are no marks).
fn block_marks(bytes: &[u8]) -> u32 {
    let mut padded = [0u8; 32];
    let block = match bytes.first_chunk::<32>() {
        Some(whole) => whole,
        None => {
            padded[..bytes.len()].copy_from_slice(bytes);
            &padded
        }
    };
    let mut mask = 0;
    for (n, word) in block.chunks_exact(8).enumerate() {
        let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        mask |= word_marks(word) << (8 * n);
    }
    mask
}

/// The bit mask of the `,`, `"` and `\r` among the 8 bytes of `word` (little-endian), without
/// a branch: each byte equal to a mark is made zero by an exclusive or, a zero byte's high
/// bit is set exactly (no carry crosses bytes), and the eight high bits are gathered into one
/// byte by a multiply.
fn word_marks(word: u64) -> u32 {
    const LOW: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let zero = |x: u64| !(((x & LOW) + LOW) | x | LOW);
    let high = zero(word ^ 0x2c2c_2c2c_2c2c_2c2c)
        | zero(word ^ 0x2222_2222_2222_2222)
        | zero(word ^ 0x0d0d_0d0d_0d0d_0d0d);
    ((high >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u32
}

impl Iterator for Marks<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            self.block += 32;
            if self.block >= self.line.len() {
                return None;
            }
            self.mask = block_marks(&self.line[self.block..]);
        }
        let place = self.block + self.mask.trailing_zeros() as usize;
        self.mask &= self.mask - 1;
        Some(place)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::count_newlines;

    /// The reader before [`Rows`], kept as the reference: the input stream under the csv
    /// crate's reader, keeping the bytes it has been given but no row has been placed past yet,
    /// to turn a row's byte offset into its line. (The csv crate's own line count is one short
    /// after CRLF line endings, which every Excel export has.)
    struct LineTracker<R> {
        inner: R,
        /// Bytes from stream offset `pending_at`; those before `consumed` are counted.
        pending: Vec<u8>,
        pending_at: u64,
        consumed: usize,
        /// Newlines before `pending_at + consumed`.
        newlines: u64,
    }

    impl<R> LineTracker<R> {
        fn new(inner: R) -> LineTracker<R> {
            LineTracker {
                inner,
                pending: Vec::new(),
                pending_at: 0,
                consumed: 0,
                newlines: 0,
            }
        }

        /// The line of the record starting at stream offset `offset` (offsets must not
        /// decrease).
        fn line_at(&mut self, offset: u64) -> u64 {
            // A record may be reported as starting on the terminator of the line before it.
            let mut start =
                (offset.saturating_sub(self.pending_at) as usize).min(self.pending.len());
            while start < self.pending.len() && matches!(self.pending[start], b'\r' | b'\n') {
                start += 1;
            }
            debug_assert!(start >= self.consumed, "records arrive in file order");
            let start = start.max(self.consumed);
            self.newlines += count_newlines(&self.pending[self.consumed..start]);
            self.consumed = start;
            self.newlines + 1
        }
    }

    impl<R: Read> Read for LineTracker<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.consumed >= 64 * 1024 && self.consumed * 2 >= self.pending.len() {
                self.pending.drain(..self.consumed);
                self.pending_at += self.consumed as u64;
                self.consumed = 0;
            }
            let n = self.inner.read(buf)?;
            self.pending.extend_from_slice(&buf[..n]);
            Ok(n)
        }
    }

    /// A reader handing out at most `piece` bytes a call, to cross every boundary.
    struct Pieces<'a> {
        text: &'a [u8],
        piece: usize,
    }

    impl Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.piece.min(buf.len()).min(self.text.len());
            buf[..n].copy_from_slice(&self.text[..n]);
            self.text = &self.text[n..];
            Ok(n)
        }
    }

    type Read_ = Vec<(Vec<Vec<u8>>, u64)>;

    /// The records and lines the csv crate's reader and `LineTracker` gave.
    fn as_csv_reads(text: &[u8], capacity: usize) -> Read_ {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(capacity)
            .from_reader(LineTracker::new(text));
        let mut row = csv::ByteRecord::new();
        let mut out = Vec::new();
        while reader.read_byte_record(&mut row).unwrap() {
            let offset = row.position().unwrap().byte();
            let line = reader.get_mut().line_at(offset);
            out.push((row.iter().map(<[u8]>::to_vec).collect(), line));
        }
        out
    }

    fn as_rows_read(text: &[u8], capacity: usize, piece: usize, line_bytes_max: usize) -> Read_ {
        let mut rows = Rows::with_capacity(Pieces { text, piece }, capacity, line_bytes_max);
        let mut row = Row::default();
        let mut out = Vec::new();
        while rows.read(&mut row).unwrap() {
            // Between and around the cells only what delimits them: the record's own bytes,
            // none of the next record's (a lone `\r` ends a record inside a line).
            let mut outside = row.as_slice().to_vec();
            for &(start, end) in row.ranges().iter().rev() {
                outside.drain(start..end);
            }
            assert!(
                outside.iter().all(|b| matches!(b, b',' | b'"' | b'\r')),
                "{:?} outside the cells of {:?}",
                String::from_utf8_lossy(&outside),
                String::from_utf8_lossy(row.as_slice())
            );
            out.push((row.iter().map(<[u8]>::to_vec).collect(), row.line()));
        }
        // The end stays the end.
        assert!(!rows.read(&mut row).unwrap());
        out
    }

    #[test]
    fn records_keep_the_line_they_start_on() {
        let text = b"h1,h2\r\na,\"b\r\nc\"\r\n\r\nd,e\r\n";
        for capacity in [1, 3, 64] {
            let read = as_rows_read(text, capacity, 2, LINE_BYTES_MAX);
            let lines: Vec<u64> = read.iter().map(|(_, line)| *line).collect();
            assert_eq!(lines, [1, 2, 5], "capacity {capacity}");
            assert_eq!(read[1].0, [b"a".to_vec(), b"b\r\nc".to_vec()]);
        }
        assert_eq!(
            as_csv_reads(text, 3),
            as_rows_read(text, 3, 2, LINE_BYTES_MAX)
        );
    }

    /// A line longer than the reader searches (a file without line ends) is read by
    /// `csv_core` as it comes: the record is the csv crate's, and the buffer stays small.
    #[test]
    fn a_line_without_end_does_not_grow_the_buffer() {
        let cell = "揭阳市榕江纺织有限公司,".repeat(LINE_BYTES_MAX / 16);
        let text = format!("a,b\n{cell}\"x\"\"y\",{cell}end");
        let mut rows = Rows::new(Pieces {
            text: text.as_bytes(),
            piece: 100_000,
        });
        let mut row = Row::default();
        let mut read = Vec::new();
        while rows.read(&mut row).unwrap() {
            read.push((
                row.iter().map(<[u8]>::to_vec).collect::<Vec<_>>(),
                row.line(),
            ));
            assert!(
                rows.buf.len() <= 2 * LINE_BYTES_MAX,
                "buffer {} bytes",
                rows.buf.len()
            );
        }
        assert_eq!(read, as_csv_reads(text.as_bytes(), 3));
        assert!(read[1].0.len() > 100_000, "{} cells", read[1].0.len());
    }

    /// Records ended by `\r` alone (Excel's "CSV (Macintosh)") put no `\n` in the file: the
    /// reader keeps a long line's worth of bytes ahead of each record, and before it
    /// remembered where it had searched it moved and searched all of them again for every
    /// record (a 4.7 MB export took 0.86 s, the csv crate 0.10 s). Now each byte is moved
    /// and searched about once.
    #[test]
    fn records_without_line_feeds_are_read_in_linear_work() {
        let record = "揭阳市榕江物流有限公司,\"粤东路289号, 8栋\",13950094539,1629.41\r";
        let text = record.repeat(5_000);
        let line_bytes_max = 4096;
        let mut rows = Rows::with_capacity(
            Pieces {
                text: text.as_bytes(),
                piece: 700,
            },
            512,
            line_bytes_max,
        );
        let mut row = Row::default();
        let mut read = 0;
        while rows.read(&mut row).unwrap() {
            assert_eq!(row.len(), 4);
            read += 1;
        }
        assert_eq!(read, 5_000);
        let input = text.len() as u64;
        let (moved, searched) = rows.work;
        assert!(moved <= 2 * input, "{moved} bytes moved for {input}");
        assert!(
            searched <= 2 * input,
            "{searched} bytes searched for {input}"
        );
        assert!(rows.buf.len() <= 2 * line_bytes_max, "{}", rows.buf.len());
    }

    /// Every byte value, at every place of a word, among other bytes that are marks or not:
    /// the word's mask has the place's bit exactly when the byte is a mark.
    #[test]
    fn word_marks_finds_exactly_the_marks() {
        for filler in [b'a', b',', b'"', b'\r', 0, 0xff, b'-', b'#', 0x0c] {
            for place in 0..8 {
                for byte in 0..=255u8 {
                    let mut bytes = [filler; 8];
                    bytes[place] = byte;
                    let expected: u32 = (0..8)
                        .filter(|&n| matches!(bytes[n], b',' | b'"' | b'\r'))
                        .map(|n| 1 << n)
                        .sum();
                    assert_eq!(word_marks(u64::from_le_bytes(bytes)), expected, "{bytes:?}");
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3_000))]
        /// On text made of what CSV is made of — cells with and without quotes, doubled
        /// quotes, commas, every kind of line end, empty lines, multi-byte characters, long
        /// cells, a last record with no line end — the reader gives the csv crate's records,
        /// each on the line `LineTracker` gave it, whatever the buffer's size, however the
        /// input arrives, and whether a line is split in place or (too long to search) read
        /// by `csv_core`.
        #[test]
        fn the_reader_reads_what_csv_reads(
            tokens in proptest::collection::vec(
                proptest::sample::select(vec![
                    "a", "bc", "12.50", "中文", "é", " ", ",", ",,", "\"", "\"\"",
                    "\"x,y\"", "\r", "\n", "\r\n", "\n\n", "\r\r\n",
                    // Long cells, so that lines cross the 32-byte blocks of `Marks`.
                    "揭阳市榕江纺织有限公司", "\"南海路220号, 17栋\"", "0123456789abcdefghij",
                ]),
                0..40,
            ),
            capacity in proptest::prop_oneof![1usize..8, proptest::strategy::Just(BUFFER_BYTES)],
            piece in 1usize..9,
            line_bytes_max in proptest::prop_oneof![1usize..40, proptest::strategy::Just(LINE_BYTES_MAX)],
        ) {
            let text = tokens.concat();
            proptest::prop_assert_eq!(
                as_rows_read(text.as_bytes(), capacity, piece, line_bytes_max),
                as_csv_reads(text.as_bytes(), 3),
                "{:?}",
                text
            );
        }
    }
}
