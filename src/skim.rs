//! A fast reader for the few fields of a large JSON document that a decision needs.
//!
//! An AdmissionReview body is mostly what no decision looks at: `managedFields`, the
//! `last-applied-configuration` annotation, probes, resources, status. A general JSON reader
//! visits every byte of it token by token, and that was most of the cost of a request.
//! [`Skim`] first indexes the whole text in one pass, 64 bytes at a time with SIMD compares
//! (AVX2 where the CPU has it, else the `wide` crate: SSE2 on x86-64, NEON on arm64, a portable
//! fallback elsewhere): one bit per byte for the quotes that open or close strings, for the
//! brackets outside strings, and for backslashes. It then walks only the objects on the way to
//! the wanted fields; every other value is passed by looking up bits, a string by its closing
//! quote, an object or array by counting brackets, whole words at a time.
//!
//! The contract that makes this safe to use on the decision path: on well-formed JSON the
//! readers built on `Skim` either produce exactly what `serde_json` reads from the same text
//! into the same shapes, or give up with [`Decline`], and the caller then reads the body with
//! `serde_json`. They give up on anything unusual: an escaped or repeated key among the wanted
//! ones, an unexpected type, the end of the input. Skipped values are not validated: a body
//! that is not JSON may be read where it is well-formed around the wanted fields. The API server
//! only sends JSON it encoded itself, so this changes nothing it can ask; the differential tests
//! here and in the callers, and the `review_skim` fuzz target, hold the contract.

use std::borrow::Cow;
use std::cell::Cell;

use wide::u8x64;

/// The largest index kept for the next text of a thread: that of a 512 KiB text (the index is
/// half the size of its text). Indexes of larger texts, up to the 8 MiB body limit, are freed
/// with their reader, so a thread holds at most 256 KiB between requests.
const KEPT_INDEX_BLOCKS: usize = 512 * 1024 / BLOCK;

thread_local! {
    /// The index of the thread's last text, kept so that the next one reuses its memory rather
    /// than allocating and zeroing its own (a request is read by one thread from start to end).
    static SPARE_INDEX: Cell<Vec<Block>> = const { Cell::new(Vec::new()) };
}

/// The fast reader gives up on this input; read it with `serde_json` instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decline;

/// What a skimming step gives.
pub type Skimmed<T> = Result<T, Decline>;

/// A position in a JSON text; see the module documentation.
pub struct Skim<'a> {
    text: &'a str,
    pos: usize,
    index: Vec<Block>,
}

impl<'a> Skim<'a> {
    /// Indexes `text` and starts at its beginning.
    pub fn new(text: &'a str) -> Self {
        // A thread that has gone away has no spare index: a fresh one is made.
        let mut index = SPARE_INDEX.try_with(Cell::take).unwrap_or_default();
        build_index(text.as_bytes(), &mut index);
        Skim {
            text,
            pos: 0,
            index,
        }
    }

    /// Succeeds when only whitespace is left.
    pub fn finish(mut self) -> Skimmed<()> {
        match self.peek() {
            Err(Decline) => Ok(()),
            Ok(_) => Err(Decline),
        }
    }

    /// The next byte that is not whitespace, left unread.
    pub fn peek(&mut self) -> Skimmed<u8> {
        let bytes = self.text.as_bytes();
        // The API server writes no whitespace between tokens.
        if let Some(&c) = bytes.get(self.pos)
            && c > b' '
        {
            return Ok(c);
        }
        while let Some(&c) = bytes.get(self.pos) {
            if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                return Ok(c);
            }
            self.pos += 1;
        }
        Err(Decline)
    }

    fn expect(&mut self, c: u8) -> Skimmed<()> {
        if self.peek()? == c {
            self.pos += 1;
            Ok(())
        } else {
            Err(Decline)
        }
    }

    /// Reads `null` if it comes next, and says whether it did.
    pub fn null(&mut self) -> Skimmed<bool> {
        if self.peek()? != b'n' {
            return Ok(false);
        }
        self.literal("null")?;
        Ok(true)
    }

    fn literal(&mut self, word: &str) -> Skimmed<()> {
        if self.text.as_bytes()[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(Decline)
        }
    }

    /// Reads `true` or `false`.
    pub fn bool(&mut self) -> Skimmed<bool> {
        match self.peek()? {
            b't' => self.literal("true").map(|()| true),
            b'f' => self.literal("false").map(|()| false),
            _ => Err(Decline),
        }
    }

    /// Reads a string. One with escapes is decoded by `serde_json`.
    pub fn string(&mut self) -> Skimmed<Cow<'a, str>> {
        self.expect(b'"')?;
        let start = self.pos;
        let end = self.string_end(start)?;
        self.pos = end + 1;
        if self.escaped(start, end) {
            let quoted = &self.text[start - 1..end + 1];
            return serde_json::from_str::<String>(quoted)
                .map(Cow::Owned)
                .map_err(|_| Decline);
        }
        let raw = &self.text[start..end];
        // Control characters must be escaped in JSON: a string with one is not read here.
        // Folded rather than searched: without an early exit, several bytes are checked at once.
        if raw.bytes().fold(false, |control, c| control | (c < 0x20)) {
            return Err(Decline);
        }
        Ok(Cow::Borrowed(raw))
    }

    /// Reads an object, calling `field` with each key; `field` reads or skips the value.
    /// A key with escapes makes the reader give up: no wanted key has any.
    pub fn object(
        &mut self,
        mut field: impl FnMut(&mut Self, &'a str) -> Skimmed<()>,
    ) -> Skimmed<()> {
        self.expect(b'{')?;
        if self.peek()? == b'}' {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.expect(b'"')?;
            let start = self.pos;
            let end = self.string_end(start)?;
            if self.escaped(start, end) {
                return Err(Decline);
            }
            let key = &self.text[start..end];
            self.pos = end + 1;
            self.expect(b':')?;
            field(self, key)?;
            if !self.more(b'}')? {
                return Ok(());
            }
        }
    }

    /// Reads an object for the values of `keys` (at most 64): calls `field` with the index of
    /// each wanted key met, and skips every other value. A wanted key met twice makes the
    /// reader give up, as `serde` refuses a struct field given twice.
    pub fn fields(
        &mut self,
        keys: &[&str],
        mut field: impl FnMut(&mut Self, usize) -> Skimmed<()>,
    ) -> Skimmed<()> {
        let mut seen = 0u64;
        self.object(|s, key| match keys.iter().position(|k| same_key(k, key)) {
            Some(i) => {
                let bit = 1u64.checked_shl(i as u32).ok_or(Decline)?;
                if seen & bit != 0 {
                    return Err(Decline);
                }
                seen |= bit;
                field(s, i)
            }
            None => s.skip(),
        })
    }

    /// Reads an array, calling `item` for each element; `item` reads or skips it.
    pub fn array(&mut self, mut item: impl FnMut(&mut Self) -> Skimmed<()>) -> Skimmed<()> {
        self.expect(b'[')?;
        if self.peek()? == b']' {
            self.pos += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            if !self.more(b']')? {
                return Ok(());
            }
        }
    }

    /// After a member of an object or array that `close` ends: reads the comma before the next
    /// member (`true`) or the closing bracket (`false`).
    fn more(&mut self, close: u8) -> Skimmed<bool> {
        let c = self.peek()?;
        if c == b',' || c == close {
            self.pos += 1;
            Ok(c == b',')
        } else {
            Err(Decline)
        }
    }

    /// Reads an array, each element with `read`.
    pub fn list<T>(&mut self, mut read: impl FnMut(&mut Self) -> Skimmed<T>) -> Skimmed<Vec<T>> {
        let mut out = Vec::new();
        self.array(|s| {
            out.push(read(s)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Passes over the next value without reading it.
    pub fn skip(&mut self) -> Skimmed<()> {
        let bytes = self.text.as_bytes();
        match self.peek()? {
            b'"' => {
                self.pos = self.string_end(self.pos + 1)? + 1;
            }
            b'{' | b'[' => self.pos = self.container_end(self.pos)?,
            _ => {
                // A number or literal: the characters they are written with.
                let start = self.pos;
                while bytes
                    .get(self.pos)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.'))
                {
                    self.pos += 1;
                }
                if self.pos == start {
                    return Err(Decline);
                }
            }
        }
        Ok(())
    }

    /// Reads a value with `read` unless it is `null`, which gives `T::default()`.
    pub fn or_default<T: Default>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Skimmed<T>,
    ) -> Skimmed<T> {
        if self.null()? {
            Ok(T::default())
        } else {
            read(self)
        }
    }

    /// Reads a value with `read` unless it is `null`, which gives `None`.
    pub fn optional<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Skimmed<T>,
    ) -> Skimmed<Option<T>> {
        if self.null()? {
            Ok(None)
        } else {
            read(self).map(Some)
        }
    }

    /// Reads a string as owned.
    pub fn owned_string(&mut self) -> Skimmed<String> {
        self.string().map(Cow::into_owned)
    }
}

const BLOCK: usize = 64;

impl Drop for Skim<'_> {
    fn drop(&mut self) {
        if self.index.capacity() <= KEPT_INDEX_BLOCKS {
            let index = std::mem::take(&mut self.index);
            // Leaving a thread that is exiting, the index is simply freed.
            let _ = SPARE_INDEX.try_with(|spare| spare.set(index));
        }
    }
}

/// The index of 64 bytes of text: bit `i` stands for byte `i`.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Block {
    /// Quotes that open or close a string (not escaped ones).
    quotes: u64,
    /// `{` and `[` outside strings.
    opens: u64,
    /// `}` and `]` outside strings.
    closes: u64,
    /// Backslashes.
    backslashes: u64,
}

/// The bytes of one 64-byte block that the index is built from, one bit per byte.
#[derive(Clone, Copy)]
struct Found {
    quotes: u64,
    backslashes: u64,
    /// `{` and `[`, in strings or not.
    opens: u64,
    /// `}` and `]`, in strings or not.
    closes: u64,
}

/// Indexes `bytes` (see [`Block`]), finding the bytes of each block with the widest compares
/// the CPU has: AVX2 where it is there (nearly every x86-64 server since 2013), else the `wide`
/// crate's portable ones. `out` is overwritten.
fn build_index(bytes: &[u8], out: &mut Vec<Block>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("pclmulqdq")
    {
        // SAFETY: the CPU has both features `avx2::index` is compiled for, checked just above.
        return unsafe { avx2::index(bytes, out) };
    }
    index_with(bytes, out, find_portable, prefix_xor);
}

/// Builds the index from what `find` finds in each block. Escaped quotes are removed; the bytes
/// inside strings are found by a running XOR over the quote bits (`prefix_xor`), carried from
/// block to block.
#[inline(always)]
fn index_with(
    bytes: &[u8],
    out: &mut Vec<Block>,
    find: impl Fn(&[u8; BLOCK]) -> Found,
    prefix_xor: impl Fn(u64) -> u64,
) {
    // Filled in place: cheaper than a `push` per block.
    out.clear();
    out.resize(bytes.len().div_ceil(BLOCK), Block::default());
    // All ones when the previous block ended inside a string.
    let mut in_string: u64 = 0;
    // Whether the first byte of the next block is escaped by a backslash ending this one.
    let mut escape_carry = false;
    for (i, slot) in out.iter_mut().enumerate() {
        let found = find(&load(bytes, i * BLOCK));
        let escaped = if found.backslashes == 0 && !escape_carry {
            0
        } else {
            escaped_bytes(found.backslashes, &mut escape_carry)
        };
        let quotes = found.quotes & !escaped;
        let inside = prefix_xor(quotes) ^ in_string;
        in_string = if inside >> 63 == 1 { u64::MAX } else { 0 };
        *slot = Block {
            quotes,
            opens: found.opens & !inside,
            closes: found.closes & !inside,
            backslashes: found.backslashes,
        };
    }
}

/// [`Found`] with the `wide` crate: SSE2 on x86-64, NEON on arm64, portable code elsewhere.
#[inline(always)]
fn find_portable(block: &[u8; BLOCK]) -> Found {
    let v = u8x64::new(*block);
    // `{` and `[` differ only in bit 5, as do `}` and `]`.
    let folded = v | u8x64::splat(0x20);
    Found {
        quotes: v.simd_eq(u8x64::splat(b'"')).to_bitmask(),
        backslashes: v.simd_eq(u8x64::splat(b'\\')).to_bitmask(),
        opens: folded.simd_eq(u8x64::splat(b'{')).to_bitmask(),
        closes: folded.simd_eq(u8x64::splat(b'}')).to_bitmask(),
    }
}

/// [`Found`] with AVX2, two 32-byte halves of four compares each, and the running XOR as one
/// carry-less multiplication. The `wide` crate chooses its instructions when it is compiled, so
/// a binary built for any x86-64 gets SSE2 from it; these are chosen when the program runs.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256i, _mm_clmulepi64_si128, _mm_cvtsi128_si64, _mm_set_epi64x, _mm_set1_epi8,
        _mm256_cmpeq_epi8, _mm256_movemask_epi8, _mm256_or_si256, _mm256_set1_epi8,
    };

    use super::{BLOCK, Block, Found, index_with};

    /// [`super::build_index`] with [`find`] and [`prefix_xor`].
    #[target_feature(enable = "avx2,pclmulqdq")]
    pub(super) fn index(bytes: &[u8], out: &mut Vec<Block>) {
        index_with(bytes, out, |block| find(block), |x| prefix_xor(x));
    }

    /// [`super::prefix_xor`]: multiplying by all ones without carries XORs each bit into every
    /// bit above it.
    #[target_feature(enable = "pclmulqdq")]
    #[inline]
    fn prefix_xor(x: u64) -> u64 {
        let product = _mm_clmulepi64_si128(_mm_set_epi64x(0, x as i64), _mm_set1_epi8(-1), 0);
        _mm_cvtsi128_si64(product) as u64
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    fn find(block: &[u8; BLOCK]) -> Found {
        let [low, high]: [[u8; 32]; 2] = bytemuck::cast(*block);
        let (low, high) = (half(low), half(high));
        Found {
            quotes: low.quotes | high.quotes << 32,
            backslashes: low.backslashes | high.backslashes << 32,
            opens: low.opens | high.opens << 32,
            closes: low.closes | high.closes << 32,
        }
    }

    /// [`Found`] for 32 bytes, in the low half of each mask.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn half(bytes: [u8; 32]) -> Found {
        let v: __m256i = bytemuck::cast(bytes);
        let mask = |c: u8, v: __m256i| {
            // `movemask` gives the top bit of each byte, as an `i32`: its 32 bits are the mask.
            u64::from(_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, _mm256_set1_epi8(c as i8))) as u32)
        };
        // `{` and `[` differ only in bit 5, as do `}` and `]`.
        let folded = _mm256_or_si256(v, _mm256_set1_epi8(0x20));
        Found {
            quotes: mask(b'"', v),
            backslashes: mask(b'\\', v),
            opens: mask(b'{', folded),
            closes: mask(b'}', folded),
        }
    }
}

impl Skim<'_> {
    /// The position of the quote that closes the string whose content starts at `start`.
    fn string_end(&self, start: usize) -> Skimmed<usize> {
        let mut word = start / BLOCK;
        let mut quotes = self.index.get(word).ok_or(Decline)?.quotes & (!0u64 << (start % BLOCK));
        while quotes == 0 {
            word += 1;
            quotes = self.index.get(word).ok_or(Decline)?.quotes;
        }
        Ok(word * BLOCK + quotes.trailing_zeros() as usize)
    }

    /// Whether bytes `start..end` have a backslash.
    fn escaped(&self, start: usize, end: usize) -> bool {
        let (first, last) = (start / BLOCK, end / BLOCK);
        if first == last {
            let Some(block) = self.index.get(first) else {
                return false;
            };
            let within = (!0u64 << (start % BLOCK)) & ((1u64 << (end % BLOCK)) - 1);
            return block.backslashes & within != 0;
        }
        (first..=last).any(|word| {
            let Some(block) = self.index.get(word) else {
                return false;
            };
            let mut bits = block.backslashes;
            if word == first {
                bits &= !0u64 << (start % BLOCK);
            }
            if word == last {
                bits &= (1u64 << (end % BLOCK)) - 1;
            }
            bits != 0
        })
    }

    /// The position just past the bracket that closes the object or array opening at `start`.
    fn container_end(&self, start: usize) -> Skimmed<usize> {
        // A build for any x86-64 counts bits with a dozen instructions; the CPU's own
        // instruction (nearly every x86-64 since 2008) is chosen when the program runs.
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU has the feature `container_end_popcnt` is compiled for, checked
            // just above.
            return unsafe { self.container_end_popcnt(start) };
        }
        self.container_end_with(start)
    }

    /// [`Skim::container_end`] with the `popcnt` instruction.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "popcnt")]
    fn container_end_popcnt(&self, start: usize) -> Skimmed<usize> {
        self.container_end_with(start)
    }

    /// [`Skim::container_end`]: a block whose closing brackets are fewer than the depth cannot
    /// end the value and is passed with two popcounts.
    #[inline(always)]
    fn container_end_with(&self, start: usize) -> Skimmed<usize> {
        let mut depth: u64 = 1;
        let mut word = start / BLOCK;
        // Only the brackets after the opening one.
        let mut from = (!0u64).checked_shl((start % BLOCK + 1) as u32).unwrap_or(0);
        while let Some(block) = self.index.get(word) {
            let opens = block.opens & from;
            let closes = block.closes & from;
            if u64::from(closes.count_ones()) < depth {
                depth = depth + u64::from(opens.count_ones()) - u64::from(closes.count_ones());
            } else {
                let mut brackets = opens | closes;
                while brackets != 0 {
                    let at = brackets.trailing_zeros();
                    if opens >> at & 1 == 1 {
                        depth += 1;
                    } else {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(word * BLOCK + at as usize + 1);
                        }
                    }
                    brackets &= brackets - 1;
                }
            }
            from = !0;
            word += 1;
        }
        Err(Decline)
    }
}

/// Whether two keys are the same. Keys are short, so the bytes are compared as one or two
/// overlapping words, without the call to `memcmp` that `==` makes: with several wanted keys
/// for each key met, that call was a twentieth of the reading.
#[inline]
fn same_key(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    // Indexes below `n`, so never out of bounds; `try_into` of an 8 or 4 byte slice cannot fail.
    let w8 = |x: &[u8], at: usize| u64::from_le_bytes(x[at..at + 8].try_into().unwrap_or([0; 8]));
    let w4 = |x: &[u8], at: usize| u32::from_le_bytes(x[at..at + 4].try_into().unwrap_or([0; 4]));
    match n {
        // Two words that overlap cover all the bytes.
        8..=16 => w8(a, 0) == w8(b, 0) && w8(a, n - 8) == w8(b, n - 8),
        4..8 => w4(a, 0) == w4(b, 0) && w4(a, n - 4) == w4(b, n - 4),
        // The first, middle and last bytes are all of them.
        1..4 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        _ => a == b,
    }
}

/// The `N` bytes from `offset`, padded with zeros (which no JSON structure uses) past the end.
fn load<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    match bytes.get(offset..offset + N) {
        Some(full) => full.try_into().unwrap_or([0; N]),
        None => {
            let mut block = [0; N];
            let rest = &bytes[offset..];
            block[..rest.len()].copy_from_slice(rest);
            block
        }
    }
}

/// The bytes of a block escaped by a backslash: each backslash that is not itself escaped
/// escapes the byte after it. `carry` comes in as whether byte 0 is escaped and goes out as
/// whether the next block's byte 0 is.
fn escaped_bytes(backslashes: u64, carry: &mut bool) -> u64 {
    let mut escaped = 0u64;
    let mut pending = backslashes;
    if *carry {
        escaped |= 1;
        pending &= !1;
    }
    *carry = false;
    while pending != 0 {
        let at = pending.trailing_zeros();
        pending &= pending - 1;
        if at == 63 {
            *carry = true;
        } else {
            let next = 1u64 << (at + 1);
            escaped |= next;
            pending &= !next;
        }
    }
    escaped
}

/// Bit `i` of the result is the XOR of bits `0..=i` of `x`: with quote bits in, the bits of
/// an opening quote and of the bytes up to (not including) the closing one.
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Where `serde_json` ends the first value of `text`, for comparison.
    fn serde_end(text: &str) -> Option<usize> {
        let mut stream =
            serde_json::Deserializer::from_str(text).into_iter::<serde::de::IgnoredAny>();
        stream.next()?.ok()?;
        Some(stream.byte_offset())
    }

    fn skim_end(text: &str) -> Skimmed<usize> {
        let mut skim = Skim::new(text);
        skim.skip()?;
        Ok(skim.pos)
    }

    #[test]
    fn skipping_ends_each_value_where_a_full_reader_does() {
        let long = format!("{{\"a\":\"{}\"}}", "x".repeat(200));
        let escapes = format!(
            "{{\"a\":\"{}\\\\\",\"b\":[\"}}\\\"]\"],\"c\":{{}}}}",
            "\\\"".repeat(40)
        );
        let cases = [
            "{}",
            "[]",
            "{\"a\":1}",
            "[1,2,[3,{\"b\":[]}]]",
            "\"plain\"",
            "\"with \\\" quote\"",
            "\"ends in backslash \\\\\"",
            "{\"brackets in strings\":\"}]{[\"}",
            "{\"k\":\"\\\\\"}",
            "{\"k\":\"\\\\\\\"}\"}",
            "-12.5e+3",
            "true",
            "null",
            long.as_str(),
            escapes.as_str(),
        ];
        for case in cases {
            let padded = format!("{case} ,\"after\"");
            assert_eq!(
                skim_end(&padded),
                Ok(serde_end(case).expect("valid")),
                "{case}"
            );
        }
    }

    #[test]
    fn a_value_that_never_closes_is_declined() {
        for text in ["{", "[1,2", "{\"a\":\"}", "\"open", "{\"a\":\"\\\"}", ""] {
            assert_eq!(skim_end(text), Err(Decline), "{text:?}");
        }
    }

    #[test]
    fn a_backslash_run_across_a_block_boundary_is_counted() {
        // `["xx…\\…"]"]`: after an even run of backslashes the quote closes the string and
        // the first `]` the array; after an odd run the quote is escaped and the last `]`
        // closes it. Runs of every length end at every position around the first boundary.
        for run in 1..6 {
            for filler in 50..70 {
                let text = format!("[\"{}{}\"]\"]", "x".repeat(filler), "\\".repeat(run));
                let end = serde_end(&text).expect("valid either way");
                assert_eq!(skim_end(&text), Ok(end), "{text}");
                assert_eq!(end == text.len(), run % 2 == 1, "{text}");
            }
        }
    }

    #[test]
    fn strings_are_decoded_as_json_reads_them() {
        for (text, want) in [
            ("\"plain\"", "plain"),
            ("\"a\\u00e9b\"", "aéb"),
            ("\"tab\\tquote\\\"\"", "tab\tquote\""),
            ("\"\\u0026\"", "&"),
        ] {
            assert_eq!(Skim::new(text).string().as_deref(), Ok(want), "{text}");
        }
        // Raw control characters are not JSON.
        assert_eq!(Skim::new("\"a\u{1}b\"").string(), Err(Decline));
        assert_eq!(Skim::new("\"bad \\x escape\"").string(), Err(Decline));
    }

    #[test]
    fn objects_and_arrays_visit_every_member_and_refuse_escaped_keys() {
        let mut keys = Vec::new();
        let mut skim = Skim::new(" { \"a\" : [1, {\"x\":2}] , \"b\":\"c\" } ");
        skim.object(|s, key| {
            keys.push(key.to_owned());
            s.skip()
        })
        .unwrap();
        skim.finish().unwrap();
        assert_eq!(keys, ["a", "b"]);

        let mut count = 0;
        Skim::new("[1, \"two\", [3], {\"four\":4}]")
            .array(|s| {
                count += 1;
                s.skip()
            })
            .unwrap();
        assert_eq!(count, 4);

        let escaped_key = Skim::new("{\"im\\u0061ge\":1}").object(|s, _| s.skip());
        assert_eq!(escaped_key, Err(Decline));

        let mut got = Vec::new();
        Skim::new("{\"b\":1,\"x\":{\"a\":9},\"a\":true}")
            .fields(&["a", "b"], |s, i| {
                got.push(i);
                s.skip()
            })
            .unwrap();
        assert_eq!(got, [1, 0], "wanted keys in document order, others skipped");
        let repeated = Skim::new("{\"a\":1,\"a\":2}").fields(&["a"], |s, _| s.skip());
        assert_eq!(repeated, Err(Decline));
    }

    #[test]
    fn keys_are_the_same_exactly_when_their_bytes_are() {
        let keys = [
            "",
            "a",
            "ab",
            "abc",
            "axc",
            "abcd",
            "abcdefg",
            "abcXefg",
            "abcdefghijkl",
            "abcdefgXijkl",
            "image",
            "images",
            "imagePullPolicy",
            "initContainers",
            "abcdefgh",
            "abcdefghi",
            "0123456789abcdef",
            "0123456789abcdeg",
            "ephemeralContainers",
            "ephemeralContainerz",
            "namespace",
            "namespacf",
            "nbmespace",
            "metadata",
        ];
        for a in keys {
            for b in keys {
                assert_eq!(same_key(a, b), a == b, "{a:?} against {b:?}");
            }
        }
    }

    /// Arbitrary JSON values, with strings drawn to be hard for a skipper: quotes, backslashes
    /// and brackets.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| serde_json::json!(f)),
            "[\"\\\\{}\\[\\]a-z0-9 é\u{1}]{0,80}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(6, 96, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[\"\\\\{}a-z]{0,12}", inner, 0..8)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn skipping_any_value_ends_where_a_full_reader_does(
            value in json_value(),
            pretty in any::<bool>(),
        ) {
            let text = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            let padded = format!("{text}]");
            prop_assert_eq!(skim_end(&padded), Ok(text.len()));
        }

        /// The AVX2 index is the portable one, for any bytes: mostly the ones that matter,
        /// in runs long enough to cross blocks. Both are built over the index of another
        /// text, as readers reuse their thread's last index, and nothing of it may remain.
        #[cfg(target_arch = "x86_64")]
        #[test]
        fn the_avx2_index_is_the_portable_one(
            bytes in prop::collection::vec(
                prop_oneof![
                    4 => prop::sample::select(b"\"\\{}[]:,a ".to_vec()),
                    1 => any::<u8>(),
                ],
                0..400,
            ),
        ) {
            if !(std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("pclmulqdq"))
            {
                eprintln!("skipped: this CPU has no AVX2, so only the portable index is used");
                return Ok(());
            }
            let stale = Block { quotes: !0, opens: !0, closes: !0, backslashes: !0 };
            let mut fresh = Vec::new();
            index_with(&bytes, &mut fresh, find_portable, prefix_xor);
            let mut portable = vec![stale; 3];
            index_with(&bytes, &mut portable, find_portable, prefix_xor);
            prop_assert_eq!(&portable, &fresh);
            let mut fast = vec![stale; 9];
            // SAFETY: both features were checked just above.
            unsafe { avx2::index(&bytes, &mut fast) };
            prop_assert_eq!(&fast, &fresh);
        }

        /// Keys of every length, differing in any one byte or not at all.
        #[test]
        fn same_key_is_byte_equality(
            a in prop::collection::vec(prop::sample::select(b"ab\0".to_vec()), 0..24),
            flip in any::<prop::sample::Index>(),
            differ in any::<bool>(),
        ) {
            let mut b = a.clone();
            if differ && !b.is_empty() {
                let i = flip.index(b.len());
                b[i] = if b[i] == b'a' { b'b' } else { b'a' };
            }
            let (a, b) = (String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
            prop_assert_eq!(same_key(&a, &b), a == b);
        }

        #[test]
        fn any_bytes_are_skipped_or_declined_without_panicking(text in ".{0,300}") {
            let _ = skim_end(&text);
            let _ = Skim::new(&text).string();
            let _ = Skim::new(&text).object(|s, _| s.skip());
        }
    }
}
