//! A JSON writer for the two texts written for every request: the decision record and the
//! AdmissionReview answer. Their shapes are known, so keys are written as they are, without the
//! escaping a general serialiser applies to every key; strings are searched 16 bytes at a time
//! for the bytes JSON escapes, and the runs between them are copied whole. The output is the
//! JSON `serde_json` writes for the same values; the tests hold it to that.

use std::cell::RefCell;

use wide::u8x16;

thread_local! {
    /// The last second [`JsonLine::timestamp`] wrote, and its text up to the `Z`.
    static SECOND: RefCell<(Option<i64>, Vec<u8>)> = const { RefCell::new((None, Vec::new())) };
}

/// A JSON text being written.
pub struct JsonLine {
    out: Vec<u8>,
}

impl JsonLine {
    /// An empty text with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        JsonLine {
            out: Vec::with_capacity(capacity),
        }
    }

    /// A text written after the whole lines `lines` holds (each ending in a newline).
    pub fn after(lines: Vec<u8>) -> Self {
        JsonLine { out: lines }
    }

    /// The text written.
    pub fn into_bytes(self) -> Vec<u8> {
        self.out
    }

    /// A comma, unless this is the first member of an object or array or the first value of a
    /// line (a raw newline is never inside a JSON text, whose strings escape it).
    #[inline]
    fn separate(&mut self) {
        if !matches!(self.out.last(), None | Some(b'{' | b'[' | b':' | b'\n')) {
            self.out.push(b',');
        }
    }

    /// Starts an object (as a value or an array element).
    #[inline]
    pub fn begin_object(&mut self) {
        self.separate();
        self.out.push(b'{');
    }

    #[inline]
    pub fn end_object(&mut self) {
        self.out.push(b'}');
    }

    /// Starts an array (as a value or an array element).
    #[inline]
    pub fn begin_array(&mut self) {
        self.separate();
        self.out.push(b'[');
    }

    #[inline]
    pub fn end_array(&mut self) {
        self.out.push(b']');
    }

    /// Writes a key; `key` is one of the record's own names, which need no escaping.
    #[inline]
    pub fn key(&mut self, key: &str) {
        debug_assert!(!needs_escape(key.as_bytes()), "{key}");
        self.separate();
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    #[inline]
    pub fn string(&mut self, value: &str) {
        self.separate();
        self.out.push(b'"');
        escape_into(&mut self.out, value.as_bytes());
        self.out.push(b'"');
    }

    /// One string made of `pieces`.
    pub fn string_of(&mut self, pieces: &[&str]) {
        self.separate();
        self.out.push(b'"');
        for piece in pieces {
            escape_into(&mut self.out, piece.as_bytes());
        }
        self.out.push(b'"');
    }

    #[inline]
    pub fn bool(&mut self, value: bool) {
        self.separate();
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    #[inline]
    pub fn null(&mut self) {
        self.separate();
        self.out.extend_from_slice(b"null");
    }

    pub fn u64(&mut self, value: u64) {
        self.separate();
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    pub fn i64(&mut self, value: i64) {
        self.separate();
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// A timestamp as a string, exactly as `jiff` displays it: RFC 3339 in UTC, the fraction of
    /// the second without trailing zeros (`2026-11-22T13:27:32.595974729Z`). The date and time
    /// to the second are formatted once per second and thread, and the fraction by hand: every
    /// record has two timestamps, and the general formatter was a tenth of the record's cost.
    pub fn timestamp(&mut self, value: jiff::Timestamp) {
        use std::io::Write;
        self.separate();
        self.out.push(b'"');
        let second = value.as_second();
        // Before 1970 the fraction counts back from the second: left to `jiff`.
        let nanos = u32::try_from(value.subsec_nanosecond())
            .ok()
            .filter(|_| second >= 0);
        let cached = nanos.is_some()
            && SECOND.with_borrow_mut(|(cached, text)| {
                if *cached != Some(second) {
                    // Whole seconds of a timestamp are one too; `None` is never expected.
                    let Ok(whole) = jiff::Timestamp::from_second(second) else {
                        return false;
                    };
                    text.clear();
                    // Writing to a Vec cannot fail.
                    let _ = write!(text, "{whole}");
                    text.pop(); // the `Z`
                    *cached = Some(second);
                }
                self.out.extend_from_slice(text);
                true
            });
        match nanos {
            Some(nanos) if cached => {
                if nanos > 0 {
                    let mut fraction = *b".000000000";
                    let mut rest = nanos;
                    for digit in fraction[1..].iter_mut().rev() {
                        *digit = b'0' + (rest % 10) as u8;
                        rest /= 10;
                    }
                    let end = fraction.iter().rposition(|&d| d != b'0').unwrap_or(0);
                    self.out.extend_from_slice(&fraction[..=end]);
                }
                self.out.push(b'Z');
            }
            _ => {
                let _ = write!(self.out, "{value}");
            }
        }
        self.out.push(b'"');
    }

    /// `key: value`.
    #[inline]
    pub fn string_field(&mut self, key: &str, value: &str) {
        self.key(key);
        self.string(value);
    }

    /// `key: value`, or `key: null`.
    #[inline]
    pub fn optional_string_field(&mut self, key: &str, value: Option<&str>) {
        self.key(key);
        match value {
            Some(v) => self.string(v),
            None => self.null(),
        }
    }

    /// `key: [strings]`.
    pub fn strings_field<'s>(&mut self, key: &str, values: impl IntoIterator<Item = &'s str>) {
        self.key(key);
        self.begin_array();
        for v in values {
            self.string(v);
        }
        self.end_array();
    }

    /// `key: value`, the value written by `serde_json` (for the rare, nested parts of a record
    /// whose shape is serde's to keep, such as the evidence read back by `check --evidence`).
    pub fn serialized_field(&mut self, key: &str, value: &impl serde::Serialize) {
        self.key(key);
        let mark = self.out.len();
        if serde_json::to_writer(&mut self.out, value).is_err() {
            // Derived serialisations of plain data do not fail; should one, the record still
            // parses.
            self.out.truncate(mark);
            self.null();
        }
    }

    /// `key: {name: value, …}`.
    pub fn map_field<'s>(
        &mut self,
        key: &str,
        entries: impl IntoIterator<Item = (&'s String, &'s String)>,
    ) {
        self.key(key);
        self.begin_object();
        for (k, v) in entries {
            // Map keys are data (label and annotation names), so they are escaped.
            self.string(k);
            self.out.push(b':');
            self.string(v);
        }
        self.end_object();
    }
}

/// Whether any byte must be escaped in a JSON string: `"`, `\` and control characters.
fn needs_escape(bytes: &[u8]) -> bool {
    bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// Appends `bytes` escaped as `serde_json` escapes them.
fn escape_into(out: &mut Vec<u8>, bytes: &[u8]) {
    // Most strings have nothing to escape: one check, one copy.
    if is_clean(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    // The bytes to escape are found 16 at a time, and the runs between them are copied whole.
    let mut chunk_start = 0;
    // Bytes already written.
    let mut start = 0;
    while let Some(chunk) = bytes.get(chunk_start..chunk_start + 16) {
        let mut special = special_bytes(chunk);
        while special != 0 {
            let at = chunk_start + special.trailing_zeros() as usize;
            special &= special - 1;
            out.extend_from_slice(&bytes[start..at]);
            escape_byte(out, bytes[at]);
            start = at + 1;
        }
        chunk_start += 16;
    }
    // The last bytes, fewer than 16, one at a time.
    for (at, &b) in bytes.iter().enumerate().skip(chunk_start) {
        if needs_escape(&[b]) {
            out.extend_from_slice(&bytes[start..at]);
            escape_byte(out, b);
            start = at + 1;
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Whether `bytes` has no byte to escape, checked without going byte by byte: 16 bytes at a
/// time, the last 16 overlapping those before; shorter strings as two overlapping words.
fn is_clean(bytes: &[u8]) -> bool {
    let n = bytes.len();
    if n >= 16 {
        let mut chunks = bytes.chunks_exact(16);
        if chunks.any(|chunk| special_bytes(chunk) != 0) {
            return false;
        }
        return special_bytes(&bytes[n - 16..]) == 0;
    }
    let word = |at: usize, len: usize| {
        let mut w = [b' '; 8];
        w[..len].copy_from_slice(&bytes[at..at + len]);
        u64::from_le_bytes(w)
    };
    let (first, last) = match n {
        8.. => (word(0, 8), word(n - 8, 8)),
        4.. => (word(0, 4), word(n - 4, 4)),
        _ => return !needs_escape(bytes),
    };
    !word_has_special(first) && !word_has_special(last)
}

/// Whether any of the 8 bytes of `w` must be escaped. A byte below 0x20 is found by the borrow
/// it makes when 0x20 is subtracted; `"` and `\` by the zero they leave after an XOR. Exact
/// as a yes or no (the borrow can mark bytes above a found one, never a word with none).
fn word_has_special(w: u64) -> bool {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    (below(w, 0x20)
        | below(w ^ (ONES * u64::from(b'"')), 1)
        | below(w ^ (ONES * u64::from(b'\\')), 1))
        != 0
}

/// One bit for each byte of `chunk` that must be escaped.
fn special_bytes(chunk: &[u8]) -> u32 {
    let v = u8x16::new(chunk.try_into().unwrap_or([0; 16]));
    let control = u8x16::splat(0x1f);
    let special = v.simd_eq(u8x16::splat(b'"'))
        | v.simd_eq(u8x16::splat(b'\\'))
        | v.max(control).simd_eq(control);
    special.to_bitmask()
}

/// Appends the escape of `b`, a quote, a backslash or a control character.
fn escape_byte(out: &mut Vec<u8>, b: u8) {
    let short: &[u8] = match b {
        b'"' => b"\\\"",
        b'\\' => b"\\\\",
        b'\n' => b"\\n",
        b'\r' => b"\\r",
        b'\t' => b"\\t",
        0x08 => b"\\b",
        0x0c => b"\\f",
        _ => {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
            return;
        }
    };
    out.extend_from_slice(short);
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn written(value: &str) -> String {
        let mut line = JsonLine::with_capacity(0);
        line.string(value);
        String::from_utf8(line.into_bytes()).unwrap()
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let long = "x".repeat(40);
        for value in [
            "",
            "plain",
            "quote \" and backslash \\",
            "\u{0}\u{1}\u{8}\u{9}\u{a}\u{b}\u{c}\u{d}\u{1f}\u{7f}",
            "é and 日本 and 🦀",
            &format!("{long}\"{long}"),
            &format!("{long}\n"),
            &long,
        ] {
            assert_eq!(
                written(value),
                serde_json::to_string(value).unwrap(),
                "{value:?}"
            );
        }
    }

    #[test]
    fn members_are_separated_by_commas_only_between_them() {
        let mut line = JsonLine::with_capacity(0);
        line.begin_object();
        line.string_field("a", "x");
        line.key("b");
        line.begin_array();
        line.begin_object();
        line.end_object();
        line.begin_object();
        line.key("n");
        line.u64(7);
        line.end_object();
        line.null();
        line.end_array();
        line.optional_string_field("c", None);
        line.map_field("d", [(&"k\"".to_owned(), &"v".to_owned())]);
        line.strings_field("e", ["1", "2"]);
        line.key("f");
        line.i64(-3);
        line.key("g");
        line.bool(true);
        line.end_object();
        let text = String::from_utf8(line.into_bytes()).unwrap();
        assert_eq!(
            text,
            r#"{"a":"x","b":[{},{"n":7},null],"c":null,"d":{"k\"":"v"},"e":["1","2"],"f":-3,"g":true}"#
        );
    }

    fn timestamp_written(value: jiff::Timestamp) -> String {
        let mut line = JsonLine::with_capacity(0);
        line.timestamp(value);
        String::from_utf8(line.into_bytes()).unwrap()
    }

    #[test]
    fn timestamps_are_written_as_jiff_displays_them() {
        for text in [
            "2026-11-22T13:27:32.595974729Z",
            "2026-11-22T13:27:32.5Z",
            "2026-11-22T13:27:32.000000001Z",
            "2026-11-22T13:27:32Z",
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.5Z",
            "9999-12-30T12:00:00.999999999Z",
            "-009999-01-03T00:00:00.5Z",
        ] {
            let value: jiff::Timestamp = text.parse().unwrap();
            assert_eq!(timestamp_written(value), format!("\"{text}\""));
        }
        // The same second again, from what the thread remembers, with another fraction.
        let a: jiff::Timestamp = "2026-11-22T13:27:32.1Z".parse().unwrap();
        let b: jiff::Timestamp = "2026-11-22T13:27:32.25Z".parse().unwrap();
        assert_eq!(timestamp_written(a), "\"2026-11-22T13:27:32.1Z\"");
        assert_eq!(timestamp_written(b), "\"2026-11-22T13:27:32.25Z\"");
    }

    proptest! {
        #[test]
        fn any_timestamp_is_written_as_jiff_displays_it(
            second in jiff::Timestamp::MIN.as_second()..=jiff::Timestamp::MAX.as_second(),
            nanos in prop_oneof![Just(0), 0..1_000_000_000i32, (0..1000i32).prop_map(|n| n * 1_000_000)],
        ) {
            let Ok(value) = jiff::Timestamp::new(second, nanos) else { return Ok(()) };
            prop_assert_eq!(timestamp_written(value), format!("\"{value}\""));
        }

        #[test]
        fn any_string_is_escaped_as_serde_json_escapes_it(value in any::<String>()) {
            prop_assert_eq!(written(&value), serde_json::to_string(&value).unwrap());
        }

        #[test]
        fn clean_strings_are_told_from_the_others_at_every_length(
            value in prop::collection::vec(
                prop_oneof![
                    8 => prop::sample::select(b"a ~\x7f\x80\xff\x21\x1f".to_vec()),
                    1 => prop::sample::select(b"\"\\\x00\n".to_vec()),
                    1 => any::<u8>(),
                ],
                0..40,
            ),
        ) {
            prop_assert_eq!(is_clean(&value), !needs_escape(&value));
        }

        #[test]
        fn strings_with_json_specials_are_escaped_as_serde_json_escapes_them(
            value in "[a-z\"\\\\\u{0}-\u{1f}é]{0,60}",
        ) {
            prop_assert_eq!(written(&value), serde_json::to_string(&value).unwrap());
        }
    }
}
