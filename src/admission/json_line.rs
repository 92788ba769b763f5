//! A JSON writer for the decision record, which is written for every decision. The record's
//! shape is known, so its keys are written as they are, without the escaping a general
//! serialiser applies to every key, and a string with nothing to escape (nearly all of them) is
//! copied after one check of 16 bytes at a time. The output is the JSON `serde_json` writes for
//! the same values; the tests hold it to that.

use wide::u8x16;

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

    /// The text written.
    pub fn into_bytes(self) -> Vec<u8> {
        self.out
    }

    /// A comma, unless this is the first member of an object or array.
    fn separate(&mut self) {
        if !matches!(self.out.last(), None | Some(b'{' | b'[' | b':')) {
            self.out.push(b',');
        }
    }

    /// Starts an object (as a value or an array element).
    pub fn begin_object(&mut self) {
        self.separate();
        self.out.push(b'{');
    }

    pub fn end_object(&mut self) {
        self.out.push(b'}');
    }

    /// Starts an array (as a value or an array element).
    pub fn begin_array(&mut self) {
        self.separate();
        self.out.push(b'[');
    }

    pub fn end_array(&mut self) {
        self.out.push(b']');
    }

    /// Writes a key; `key` is one of the record's own names, which need no escaping.
    pub fn key(&mut self, key: &str) {
        debug_assert!(!needs_escape(key.as_bytes()), "{key}");
        self.separate();
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    pub fn string(&mut self, value: &str) {
        self.separate();
        self.out.push(b'"');
        escape_into(&mut self.out, value.as_bytes());
        self.out.push(b'"');
    }

    pub fn bool(&mut self, value: bool) {
        self.separate();
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

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

    /// A value written by its `Display`, as a string: timestamps, whose text needs no escaping.
    pub fn display(&mut self, value: impl std::fmt::Display) {
        use std::io::Write;
        self.separate();
        self.out.push(b'"');
        // Writing to a Vec cannot fail.
        let _ = write!(self.out, "{value}");
        self.out.push(b'"');
    }

    /// `key: value`.
    pub fn string_field(&mut self, key: &str, value: &str) {
        self.key(key);
        self.string(value);
    }

    /// `key: value`, or `key: null`.
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
    let quote = u8x16::splat(b'"');
    let backslash = u8x16::splat(b'\\');
    let control = u8x16::splat(0x1f);
    let mut clean = 0;
    // Whole 16-byte chunks with nothing to escape are passed at once.
    while let Some(chunk) = bytes.get(clean..clean + 16) {
        let v = u8x16::new(chunk.try_into().unwrap_or([0; 16]));
        let special = v.simd_eq(quote) | v.simd_eq(backslash) | v.max(control).simd_eq(control);
        if special.to_bitmask() != 0 {
            break;
        }
        clean += 16;
    }
    if !needs_escape(&bytes[clean..]) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate().skip(clean) {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..0x20 => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
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

    proptest! {
        #[test]
        fn any_string_is_escaped_as_serde_json_escapes_it(value in any::<String>()) {
            prop_assert_eq!(written(&value), serde_json::to_string(&value).unwrap());
        }

        #[test]
        fn strings_with_json_specials_are_escaped_as_serde_json_escapes_them(
            value in "[a-z\"\\\\\u{0}-\u{1f}é]{0,60}",
        ) {
            prop_assert_eq!(written(&value), serde_json::to_string(&value).unwrap());
        }
    }
}
