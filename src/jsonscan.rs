//! A validating scanner for the top level of a JSON object: finds one top-level member and
//! hands its value to a reader, without building anything else, and says so when it cannot be
//! sure.
//!
//! It exists to read a small member (the `usage` of an upstream answer) out of a larger
//! document without walking the rest through serde. Its callers must give the same answer as
//! `serde_json::from_slice` of a struct with that one field, so the scanner accepts a document
//! only when serde_json would accept it too:
//!
//! - the grammar is serde_json's (`ignore_value`): whitespace is space, `\t`, `\n`, `\r`; no
//!   trailing commas; numbers `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`; strings without
//!   raw control characters, escapes `\" \\ \/ \b \f \n \r \t \uXXXX` (any four hex digits);
//!   nothing but whitespace after the object;
//! - strings are not checked for UTF-8 (serde_json does not check the strings it skips), but
//!   the top-level keys are (serde_json reads them as `&str`);
//! - a top-level key with a backslash escape (it might decode to the key), the key twice (serde
//!   says "duplicate field"), anything that is not an object, or nesting deeper than
//!   [`MAX_DEPTH`] give [`Lookup::Unsure`]: the caller then asks serde_json itself.
//!
//! Anything malformed is `Unsure` too, never `Missing`: the scanner only has to be right when
//! it answers; the caller's serde fallback reproduces every error.

/// Containers deeper than this inside a top-level value make the scan [`Lookup::Unsure`]
/// (the depth is kept as a bit stack in a `u128`).
pub(crate) const MAX_DEPTH: u32 = 128;

/// What [`read_top_level`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup<T> {
    /// The document is a well-formed JSON object holding the key exactly once at the top
    /// level: its value, as the reader read it.
    Found(T),
    /// The document is a well-formed JSON object without the key at the top level.
    Missing,
    /// The members before the key are well-formed, and the reader refused its value (the rest
    /// of the document is not looked at).
    Refused,
    /// Not known: malformed, not an object, an escaped or non-UTF-8 top-level key, the key
    /// twice, or nested too deep. Parse it with serde_json.
    Unsure,
}

/// Find the top-level member `key` of the JSON object `doc` and read its value with `read`.
///
/// Only members of the object itself count: a `key` inside a nested object, or the text
/// `"key":` inside a string, is never taken. `key` must need no escaping in JSON (no `"`, `\`
/// or control characters). `read` gets the document from the value's first byte on and
/// returns what it read and the value's length in bytes, or `None` to refuse it: a reader
/// that deserializes with serde_json fails exactly where a serde_json parse of the whole
/// document would (it reaches the value after the same, well-formed, members), so the scan
/// stops there with [`Lookup::Refused`]. After a read value, the rest of the document is
/// still checked.
pub(crate) fn read_top_level<'a, T>(
    doc: &'a [u8],
    key: &str,
    read: impl FnOnce(&'a [u8]) -> Option<(T, usize)>,
) -> Lookup<T> {
    debug_assert!(!key.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20));
    let mut read = Some(read);
    let mut found = None;
    let scan = scan_object(doc, key.as_bytes(), &mut |rest: &'a [u8]| {
        let (value, len) = read.take()?(rest)?;
        found = Some(value);
        Some(len)
    });
    match (scan, found) {
        (Scan::Done, Some(value)) => Lookup::Found(value),
        (Scan::Done, None) => Lookup::Missing,
        (Scan::Refused, _) => Lookup::Refused,
        (Scan::Unsure, _) => Lookup::Unsure,
    }
}

enum Scan {
    Done,
    Refused,
    Unsure,
}

/// Check the object `d`, calling `read` on the value of the (single) top-level `key`.
fn scan_object<'a>(
    d: &'a [u8],
    key: &[u8],
    read: &mut dyn FnMut(&'a [u8]) -> Option<usize>,
) -> Scan {
    let mut i = ws(d, 0);
    if d.get(i) != Some(&b'{') {
        return Scan::Unsure;
    }
    i = ws(d, i + 1);
    let mut hits = 0;
    if d.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            if d.get(i) != Some(&b'"') {
                return Scan::Unsure;
            }
            let start = i + 1;
            let end = string_stop(d, start);
            if d.get(end) != Some(&b'"') {
                // An escaped key may decode to `key`: serde's call. (Or a control character,
                // or the end: malformed.)
                return Scan::Unsure;
            }
            let Some(name) = d.get(start..end) else {
                return Scan::Unsure;
            };
            let hit = name == key;
            if !hit && !name.is_ascii() && std::str::from_utf8(name).is_err() {
                return Scan::Unsure;
            }
            i = ws(d, end + 1);
            if d.get(i) != Some(&b':') {
                return Scan::Unsure;
            }
            i = ws(d, i + 1);
            if hit {
                hits += 1;
                if hits > 1 {
                    return Scan::Unsure;
                }
                let rest = d.get(i..).unwrap_or_default();
                match read(rest) {
                    Some(n) if n > 0 && n <= rest.len() => i += n,
                    Some(_) => return Scan::Unsure,
                    None => return Scan::Refused,
                }
            } else {
                match skip_value(d, i) {
                    Some(j) => i = j,
                    None => return Scan::Unsure,
                }
            }
            i = ws(d, i);
            match d.get(i) {
                Some(b',') => i = ws(d, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return Scan::Unsure,
            }
        }
    }
    if ws(d, i) == d.len() {
        Scan::Done
    } else {
        Scan::Unsure
    }
}

/// Skip JSON whitespace from `i`.
#[inline]
fn ws(d: &[u8], mut i: usize) -> usize {
    // Compact JSON has none: one comparison for that.
    if d.get(i).is_some_and(|&b| b > b' ') {
        return i;
    }
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = d.get(i) {
        i += 1;
    }
    i
}

/// From `i` inside a string, the index of the first byte that ends a run of plain string
/// bytes: `"`, `\` or a control character (`0x00..=0x1F`, which serde_json refuses raw);
/// `d.len()` if none.
#[inline]
fn string_stop(d: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES << 7;
    // Eight bytes at a time: a byte is flagged when it is below 0x20 or equal to `"` or `\`
    // (the lowest flag is exact; higher ones may be false, and are never used).
    while let Some(chunk) = d.get(i..i + 8) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let w = u64::from_le_bytes(bytes);
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let flags = (w.wrapping_sub(ONES * 0x20) & !w
            | quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash)
            & HIGH;
        if flags != 0 {
            return i + (flags.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = d.get(i) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            return i;
        }
        i += 1;
    }
    d.len()
}

/// Skip the value starting at `i` (whitespace already skipped); the index just past it.
fn skip_value(d: &[u8], mut i: usize) -> Option<usize> {
    // Bit n set: the container at depth n + 1 (counting from the innermost) is an object.
    let mut stack: u128 = 0;
    let mut depth: u32 = 0;
    'value: loop {
        // At a value.
        let c = *d.get(i)?;
        i += 1;
        match c {
            b'"' => i = skip_str(d, i)?,
            b'{' | b'[' => {
                let mut next = *d.get(i)?;
                if next <= b' ' {
                    i = ws(d, i);
                    next = *d.get(i)?;
                }
                if next == c + 2 {
                    // `{}` or `[]` (`}` is `{` + 2, `]` is `[` + 2).
                    i += 1;
                } else {
                    if depth == MAX_DEPTH {
                        return None;
                    }
                    depth += 1;
                    stack = (stack << 1) | u128::from(c == b'{');
                    if c == b'{' {
                        i = member_key(d, i)?;
                    }
                    continue 'value;
                }
            }
            b'0'..=b'9' | b'-' => i = skip_number(d, i - 1)?,
            b't' => i = literal(d, i - 1, b"true")?,
            b'f' => i = literal(d, i - 1, b"false")?,
            b'n' => i = literal(d, i - 1, b"null")?,
            _ => return None,
        }
        // A value ended at `i`: a comma, or close containers.
        while depth > 0 {
            let mut c = *d.get(i)?;
            if c <= b' ' {
                i = ws(d, i);
                c = *d.get(i)?;
            }
            i += 1;
            let in_object = stack & 1 == 1;
            match c {
                b',' => {
                    if in_object {
                        i = member_key(d, ws(d, i))?;
                    } else {
                        i = ws(d, i);
                    }
                    continue 'value;
                }
                b'}' if in_object => {}
                b']' if !in_object => {}
                _ => return None,
            }
            stack >>= 1;
            depth -= 1;
        }
        return Some(i);
    }
}

/// Skip `"key" :` of a member at `i`; the index of its value (whitespace skipped).
#[inline]
fn member_key(d: &[u8], i: usize) -> Option<usize> {
    if d.get(i) != Some(&b'"') {
        return None;
    }
    let i = ws(d, skip_str(d, i + 1)?);
    if d.get(i) != Some(&b':') {
        return None;
    }
    Some(ws(d, i + 1))
}

/// Skip the rest of a string whose opening quote is just before `i`; the index past its
/// closing quote.
#[inline]
fn skip_str(d: &[u8], mut i: usize) -> Option<usize> {
    loop {
        i = string_stop(d, i);
        match *d.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => {}
            _ => return None,
        }
        i = match *d.get(i + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i + 2,
            b'u' => {
                let hex = d.get(i + 2..i + 6)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                i + 6
            }
            _ => return None,
        };
    }
}

/// Skip the literal `lit` at `i`.
#[inline]
fn literal(d: &[u8], i: usize, lit: &[u8]) -> Option<usize> {
    (d.get(i..i + lit.len())? == lit).then_some(i + lit.len())
}

/// Skip the digits from `i`.
#[inline]
fn digits(d: &[u8], mut i: usize) -> usize {
    while let Some(b'0'..=b'9') = d.get(i) {
        i += 1;
    }
    i
}

/// Skip the number at `i` (serde_json's grammar; what follows is the caller's to check).
fn skip_number(d: &[u8], mut i: usize) -> Option<usize> {
    if d.get(i) == Some(&b'-') {
        i += 1;
    }
    match *d.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(d, i + 1),
        _ => return None,
    }
    if d.get(i) == Some(&b'.') {
        let j = digits(d, i + 1);
        if j == i + 1 {
            return None;
        }
        i = j;
    }
    if let Some(b'e' | b'E') = d.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = d.get(i) {
            i += 1;
        }
        let j = digits(d, i);
        if j == i {
            return None;
        }
        i = j;
    }
    Some(i)
}

/// The raw value of the top-level member `key` (the scanner alone: its value is skipped,
/// not read); a value it cannot skip is [`Lookup::Unsure`].
#[cfg(test)]
pub(crate) fn top_level_value<'a>(doc: &'a [u8], key: &str) -> Lookup<&'a [u8]> {
    let skip = |rest: &'a [u8]| {
        let n = skip_value(rest, 0)?;
        Some((rest.get(..n)?, n))
    };
    match read_top_level(doc, key, skip) {
        Lookup::Refused => Lookup::Unsure,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(doc: &str) -> Lookup<&[u8]> {
        top_level_value(doc.as_bytes(), "usage")
    }

    fn found(doc: &str) -> Option<&str> {
        match find(doc) {
            Lookup::Found(v) => Some(std::str::from_utf8(v).unwrap()),
            _ => None,
        }
    }

    #[test]
    fn finds_only_top_level_members() {
        assert_eq!(found(r#"{"usage":{"a":1}}"#), Some(r#"{"a":1}"#));
        assert_eq!(found(" {\n\"usage\" :\t null \r}\n"), Some("null"));
        assert_eq!(
            found(r#"{"x":{"usage":1},"y":[{"usage":2}],"usage":3}"#),
            Some("3")
        );
        assert_eq!(
            find(r#"{"x":{"usage":1},"y":[{"usage":2}]}"#),
            Lookup::Missing
        );
        assert_eq!(
            find(r#"{"s":"\"usage\":{\"prompt_tokens\":1}","t":"usage"}"#),
            Lookup::Missing
        );
        assert_eq!(find(r#"{"s":"a\\","usage":[]}"#), Lookup::Found(&b"[]"[..]));
        assert_eq!(find("{}"), Lookup::Missing);
        assert_eq!(find(r#"{"usagex":1,"xusage":2}"#), Lookup::Missing);
    }

    #[test]
    fn is_unsure_when_serde_must_decide() {
        for doc in [
            r#"{"us\u0061ge":1}"#,
            r#"{"usage":1,"usage":2}"#,
            r#"[{"usage":1}]"#,
            r#"{"usage":1,}"#,
            r#"{"usage":1} x"#,
            r#"{"usage":1"#,
            r#"{"a":[1,],"usage":1}"#,
            r#"{"a":01,"usage":1}"#,
            r#"{"a":1.,"usage":1}"#,
            r#"{"a":-,"usage":1}"#,
            r#"{"a":tru,"usage":1}"#,
            r#"{"a":"\x","usage":1}"#,
            r#"{"a":"\u12g4","usage":1}"#,
            "{\"a\":\"tab\there\",\"usage\":1}",
            r#"{"a":{"b" 1},"usage":1}"#,
            r#"{"a":[1 2],"usage":1}"#,
            r#"{"a":{"b":1]},"usage":1}"#,
            r#"{"a":{],"usage":1}"#,
            r#"{"a":[ },"usage":1}"#,
            r#"{"a":{1:2},"usage":1}"#,
            "",
            "  ",
            "null",
            "x{\"usage\":1}",
            "\u{feff}{\"usage\":1}",
            "{\"usage\":1}\u{0}",
            "{\"usage\":1}\u{b}",
        ] {
            assert_eq!(find(doc), Lookup::Unsure, "{doc}");
        }
        // A top-level key that is not UTF-8 (serde reads keys as str).
        assert_eq!(
            top_level_value(b"{\"\xff\":1,\"usage\":2}", "usage"),
            Lookup::Unsure
        );
        // A nested string that is not UTF-8 is fine (serde skips it unchecked).
        assert_eq!(
            top_level_value(b"{\"a\":\"\xff\",\"usage\":2}", "usage"),
            Lookup::Found(&b"2"[..])
        );
        let deep = format!(
            "{{\"a\":{}{},\"usage\":1}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(find(&deep), Lookup::Unsure);
        let ok = format!(
            "{{\"a\":{}{},\"usage\":1}}",
            "[".repeat(128),
            "]".repeat(128)
        );
        assert_eq!(find(&ok), Lookup::Found(&b"1"[..]));
    }

    #[test]
    fn reads_numbers_and_escapes_like_serde() {
        assert_eq!(
            found(
                r#"{"n":[0,-0,1.5,-2e10,3E+2,4.0e-1],"s":"\"\\\/\b\f\n\r\t\u00e9\uD83D","usage":true}"#
            ),
            Some("true")
        );
    }
}

/// Cursors over JSON text that serde_json has already accepted: they only follow its
/// structure (nothing is checked again), skipping strings with `memchr`. Parse uses them to
/// check the members of known fields and the nesting depth of a request body without a
/// second full parse.
pub(crate) mod valid {
    use std::borrow::Cow;

    /// Past the string whose opening quote is just before `i`: the first 64 bytes of a run
    /// eight at a time inline (a valid string has no raw control characters), the rest of a
    /// long one with `memchr`.
    #[inline]
    fn skip_str(d: &[u8], mut i: usize) -> usize {
        const SHORT: usize = 64;
        loop {
            let window = d.get(i..d.len().min(i + SHORT)).unwrap_or_default();
            let k = super::string_stop(window, 0);
            let j = if k < window.len() {
                i + k
            } else if window.len() < SHORT {
                return d.len();
            } else {
                let rest = d.get(i + SHORT..).unwrap_or_default();
                match memchr::memchr2(b'"', b'\\', rest) {
                    Some(k) => i + SHORT + k,
                    None => return d.len(),
                }
            };
            match d.get(j) {
                Some(b'"') => return j + 1,
                Some(b'\\') => i = j + 2,
                Some(_) => i = j + 1,
                None => return d.len(),
            }
        }
    }

    #[inline]
    fn ws(d: &[u8], i: usize) -> usize {
        super::ws(d, i)
    }

    /// Past the value starting at `i`.
    fn skip(d: &[u8], mut i: usize) -> usize {
        match d.get(i) {
            Some(b'"') => skip_str(d, i + 1),
            Some(b'[' | b'{') => {
                let mut depth = 0u32;
                while let Some(&c) = d.get(i) {
                    i += 1;
                    match c {
                        b'"' => i = skip_str(d, i),
                        b'[' | b'{' => depth += 1,
                        b']' | b'}' => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                return i;
                            }
                        }
                        _ => {}
                    }
                }
                i
            }
            _ => {
                while let Some(&c) = d.get(i) {
                    if matches!(c, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    i += 1;
                }
                i
            }
        }
    }

    /// Whether `doc` nests containers more than `max` levels deep (the outermost is level 1).
    pub(crate) fn nests_deeper_than(doc: &str, max: u32) -> bool {
        let d = doc.as_bytes();
        let mut depth: u32 = 0;
        let mut i = 0;
        while let Some(&c) = d.get(i) {
            i += 1;
            match c {
                b'"' => i = skip_str(d, i),
                b'[' | b'{' => {
                    depth += 1;
                    if depth > max {
                        return true;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        false
    }

    /// The elements of the array `v` (empty if `v` is not an array).
    pub(crate) fn elements(v: &str) -> Elements<'_> {
        Elements {
            d: v,
            i: if v.starts_with('[') { 1 } else { v.len() },
        }
    }

    /// The members of the object `v`, keys decoded (empty if `v` is not an object).
    pub(crate) fn members(v: &str) -> Members<'_> {
        Members {
            d: v,
            i: if v.starts_with('{') { 1 } else { v.len() },
        }
    }

    /// See [`elements`].
    pub(crate) struct Elements<'a> {
        d: &'a str,
        i: usize,
    }

    impl<'a> Iterator for Elements<'a> {
        type Item = &'a str;
        fn next(&mut self) -> Option<&'a str> {
            let d = self.d.as_bytes();
            let start = ws(d, self.i);
            if matches!(d.get(start), None | Some(b']')) {
                self.i = d.len();
                return None;
            }
            let end = skip(d, start);
            let after = ws(d, end);
            self.i = after + usize::from(d.get(after) == Some(&b','));
            self.d.get(start..end)
        }
    }

    /// See [`members`].
    pub(crate) struct Members<'a> {
        d: &'a str,
        i: usize,
    }

    impl Members<'_> {
        /// Once the iterator is exhausted: the offset just past the object's `}`.
        pub(crate) fn end(&self) -> usize {
            self.i
        }
    }

    impl<'a> Iterator for Members<'a> {
        type Item = (Cow<'a, str>, &'a str);
        fn next(&mut self) -> Option<Self::Item> {
            let d = self.d.as_bytes();
            let k = ws(d, self.i);
            if d.get(k) != Some(&b'"') {
                // `}` (or the end): past it.
                self.i = (k + 1).min(d.len());
                return None;
            }
            let k_end = skip_str(d, k + 1);
            let raw = self.d.get(k + 1..k_end.saturating_sub(1))?;
            let key = if raw.contains('\\') {
                // An escaped key: what serde (and so the upstream) reads.
                Cow::Owned(serde_json::from_str(self.d.get(k..k_end)?).unwrap_or_default())
            } else {
                Cow::Borrowed(raw)
            };
            let colon = ws(d, k_end);
            let start = ws(d, colon + 1);
            let end = skip(d, start);
            let after = ws(d, end);
            self.i = after + usize::from(d.get(after) == Some(&b','));
            Some((key, self.d.get(start..end)?))
        }
    }

    /// The members named in `names` of the object at the start of `v` (the last of each),
    /// and the object's length: one pass over it.
    pub(crate) fn pick<'a, const N: usize>(
        v: &'a str,
        names: [&str; N],
    ) -> ([Option<&'a str>; N], usize) {
        let mut out = [None; N];
        let mut m = members(v);
        for (key, value) in &mut m {
            if let Some(at) = names.iter().position(|n| *n == key) {
                out[at] = Some(value);
            }
        }
        (out, m.end())
    }

    /// The offset of the first element of the array `v`, if it has one.
    pub(crate) fn first_element(v: &str) -> Option<usize> {
        let d = v.as_bytes();
        let i = ws(d, 1);
        (v.starts_with('[') && !matches!(d.get(i), None | Some(b']'))).then_some(i)
    }

    /// The offset of the element after the one that ends at `end` in the array `v`, if any.
    pub(crate) fn next_element(v: &str, end: usize) -> Option<usize> {
        let d = v.as_bytes();
        let after = ws(d, end);
        (d.get(after) == Some(&b',')).then(|| ws(d, after + 1))
    }

    /// The length of the value at the start of `v`.
    pub(crate) fn value_len(v: &str) -> usize {
        skip(v.as_bytes(), 0)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn walks_members_and_elements() {
            let doc = r#" { "a" : [1, "x\"]", {"b":[]} ,true] , "k\u0065y":null,"s":"{[" } "#;
            let m: Vec<_> = members(doc.trim()).collect();
            assert_eq!(m.len(), 3);
            assert_eq!(m[0].0, "a");
            assert_eq!(m[1], (Cow::Owned("key".to_owned()), "null"));
            assert_eq!(m[2].1, r#""{[""#);
            let e: Vec<_> = elements(m[0].1).collect();
            assert_eq!(e, ["1", r#""x\"]""#, r#"{"b":[]}"#, "true"]);
            assert_eq!(elements("[ ]").count(), 0);
            assert_eq!(members("{}").count(), 0);
            assert_eq!(elements("5").count(), 0);
            let arr = r#"[ {"a":1,"b":[2],"a":3} , 4 ]"#;
            let first = first_element(arr).unwrap();
            let (picked, len) = pick(&arr[first..], ["a", "b", "c"]);
            assert_eq!(picked, [Some("3"), Some("[2]"), None]);
            assert_eq!(&arr[first..first + len], r#"{"a":1,"b":[2],"a":3}"#);
            let second = next_element(arr, first + len).unwrap();
            assert_eq!(value_len(&arr[second..]), 1);
            assert_eq!(next_element(arr, second + 1), None);
            assert_eq!(first_element("[ ]"), None);
        }

        #[test]
        fn measures_nesting_outside_strings() {
            assert!(!nests_deeper_than(r#"{"a":[1,{"b":[]}]}"#, 4));
            assert!(nests_deeper_than(r#"{"a":[1,{"b":[]}]}"#, 3));
            // Brackets inside strings (also after escaped quotes) do not count.
            assert!(!nests_deeper_than(r#"{"a":"[[[[\"[[[[","b":[]}"#, 2));
            let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
            assert!(nests_deeper_than(&deep, 64));
            let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
            assert!(!nests_deeper_than(&ok, 64));
            assert!(nests_deeper_than(&ok, 63));
        }
    }
}

/// Generators of JSON-ish text for the property tests of the scanner's users: values with
/// chosen keys, rendered with whitespace wherever JSON allows it, and byte-level damage.
#[cfg(test)]
pub(crate) mod testgen {
    use proptest::prelude::*;

    /// A JSON value as text pieces: strings and numbers are kept as written.
    #[derive(Debug, Clone)]
    pub(crate) enum J {
        /// `null`, `true`, `false` (or anything else written as is).
        Lit(&'static str),
        /// A number as written.
        Num(String),
        /// The content of a string, already escaped.
        Str(String),
        Arr(Vec<J>),
        /// Keys are the escaped content of a string.
        Obj(Vec<(String, J)>),
    }

    const WS: [&str; 7] = ["", "", "", " ", "\n", "\t", " \r\n "];

    struct Out<'a> {
        s: String,
        ws: &'a [usize],
        n: usize,
    }

    impl Out<'_> {
        fn ws(&mut self) {
            if !self.ws.is_empty() {
                self.s
                    .push_str(WS[self.ws[self.n % self.ws.len()] % WS.len()]);
                self.n += 1;
            }
        }

        fn value(&mut self, j: &J) {
            match j {
                J::Lit(l) => self.s.push_str(l),
                J::Num(n) => self.s.push_str(n),
                J::Str(c) => {
                    self.s.push('"');
                    self.s.push_str(c);
                    self.s.push('"');
                }
                J::Arr(items) => {
                    self.s.push('[');
                    for (i, v) in items.iter().enumerate() {
                        if i > 0 {
                            self.s.push(',');
                        }
                        self.ws();
                        self.value(v);
                        self.ws();
                    }
                    self.s.push(']');
                }
                J::Obj(members) => {
                    self.s.push('{');
                    for (i, (k, v)) in members.iter().enumerate() {
                        if i > 0 {
                            self.s.push(',');
                        }
                        self.ws();
                        self.s.push('"');
                        self.s.push_str(k);
                        self.s.push('"');
                        self.ws();
                        self.s.push(':');
                        self.ws();
                        self.value(v);
                        self.ws();
                    }
                    self.s.push('}');
                }
            }
        }
    }

    /// `j` as JSON text; the whitespace around tokens is taken from `ws` in turn (none when
    /// empty).
    pub(crate) fn render(j: &J, ws: &[usize]) -> String {
        let mut out = Out {
            s: String::new(),
            ws,
            n: 0,
        };
        out.ws();
        out.value(j);
        out.ws();
        out.s
    }

    /// Numbers as JSON writes them, some out of `u64` range or not integers. (None near
    /// `u64::MAX`: `Usage::from_anthropic` adds counts unchecked.)
    pub(crate) fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => any::<u16>().prop_map(|n| n.to_string()),
            1 => prop::sample::select(vec![
                "0", "-0", "-1", "1.5", "2.0", "1e3", "1E+2", "-2e-3",
                "4294967296", "18446744073709551616",
            ])
            .prop_map(str::to_owned),
        ]
    }

    /// The escaped content of a string: quotes, braces, backslashes, escapes, non-ASCII, and
    /// text that looks like a `usage` or `model` member.
    pub(crate) fn string() -> impl Strategy<Value = String> {
        let escaped = |s: String| {
            let q = serde_json::to_string(&s).unwrap_or_default();
            q[1..q.len() - 1].to_owned()
        };
        prop_oneof![
            3 => "[a-z \"{}:,\\[\\]\\\\é]{0,12}".prop_map(escaped),
            1 => Just(r#"\"usage\":{\"prompt_tokens\":5,\"total_tokens\":5}"#.to_owned()),
            1 => Just(r#"{\"model\":\"x\",\"stream_options\":{}}"#.to_owned()),
            1 => Just(r"\u0075sage\/\b\f\n\r\t\uD83D\uDE00 caf\u00e9".to_owned()),
        ]
    }

    /// Any value, objects keyed by `key()`, nested a few levels.
    pub(crate) fn value(key: BoxedStrategy<String>) -> BoxedStrategy<J> {
        let leaf = prop_oneof![
            Just(J::Lit("null")),
            Just(J::Lit("true")),
            Just(J::Lit("false")),
            number().prop_map(J::Num),
            string().prop_map(J::Str),
        ];
        leaf.prop_recursive(4, 40, 5, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(J::Arr),
                prop::collection::vec((key.clone(), inner), 0..5).prop_map(J::Obj),
            ]
        })
        .boxed()
    }

    /// Text that is not a JSON value by serde_json's rules (each one thing wrong), and a few
    /// odd ones that are.
    pub(crate) fn defect() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            // Not valid.
            "[1,]",
            "{\"a\":1,}",
            "{\"a\":1]",
            "[1}",
            "{]",
            "[ }",
            "{\"a\" 1}",
            "{\"a\"::1}",
            "[1 2]",
            "{1:2}",
            "{\"a\"}",
            "[,1]",
            "{,}",
            "01",
            "-01",
            "00",
            "1.",
            "1.e5",
            "-",
            "1e",
            "1e+",
            "1e.5",
            ".5",
            "+1",
            "0x1",
            "tru",
            "nul",
            "falsey",
            "True",
            "\"\\a\"",
            "\"\\u12g4\"",
            "\"\\u12\"",
            "\"\\\"",
            "\"tab\there\"",
            "\"\x01\"",
            "\"\x1f\"",
            "\"open",
            "{",
            "[",
            "]",
            "}",
            ",",
            ":",
            "",
            "1 2",
            "{\"a\":1}}",
            "[[1]",
            "x",
            "'a'",
            "NaN",
            "Infinity",
            "\u{feff}1",
            "\x0b1",
            "\x0c1",
            "[1\x0c]",
            // Valid.
            "-0.0e-0",
            "0E+00",
            "\"\\/\\u00E9\"",
            "1.5E3",
            "[ ]",
            "{ }",
            "\"\"",
            "\"\u{7f}\"",
            "\"\u{2028}\"",
        ])
    }

    fn nodes(j: &J) -> usize {
        1 + match j {
            J::Arr(items) => items.iter().map(nodes).sum(),
            J::Obj(members) => members.iter().map(|(_, v)| nodes(v)).sum(),
            _ => 0,
        }
    }

    fn replace(j: &mut J, n: &mut usize, with: &'static str) -> bool {
        if *n == 0 {
            *j = J::Lit(with);
            return true;
        }
        *n -= 1;
        match j {
            J::Arr(items) => items.iter_mut().any(|v| replace(v, n, with)),
            J::Obj(members) => members.iter_mut().any(|(_, v)| replace(v, n, with)),
            _ => false,
        }
    }

    /// `j` with one of its values (any depth, `at` in pre-order, never the root) replaced by
    /// the text `with`.
    pub(crate) fn plant(j: &J, at: prop::sample::Index, with: &'static str) -> J {
        let mut j = j.clone();
        let count = nodes(&j);
        if count > 1 {
            let mut n = 1 + at.index(count - 1);
            replace(&mut j, &mut n, with);
        }
        j
    }

    /// One change to a document's bytes.
    #[derive(Debug, Clone)]
    pub(crate) enum Mutation {
        /// Set any byte.
        Set(prop::sample::Index, u8),
        /// Set a byte of the syntax (a quote, backslash, bracket, comma, colon, or a byte of a
        /// number or literal), or the byte just after one (`true`).
        Poke(prop::sample::Index, bool, u8),
        Insert(prop::sample::Index, u8),
        Remove(prop::sample::Index),
        Truncate(prop::sample::Index),
    }

    fn byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            4 => prop::sample::select(b"\"\\{}[],: \n\t0-+.eEuatx\x01\x1f\xff\xc3".to_vec()),
            1 => any::<u8>(),
        ]
    }

    /// Damage: a byte set (mostly one of the syntax), inserted or removed, or the end cut off.
    pub(crate) fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            1 => (any::<prop::sample::Index>(), byte()).prop_map(|(i, b)| Mutation::Set(i, b)),
            3 => (any::<prop::sample::Index>(), any::<bool>(), byte())
                .prop_map(|(i, after, b)| Mutation::Poke(i, after, b)),
            1 => (any::<prop::sample::Index>(), byte()).prop_map(|(i, b)| Mutation::Insert(i, b)),
            1 => any::<prop::sample::Index>().prop_map(Mutation::Remove),
            1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        ]
    }

    /// `doc` with `ms` applied in turn.
    pub(crate) fn mutate(mut doc: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
        for m in ms {
            let n = doc.len();
            match m {
                Mutation::Set(i, b) if n > 0 => doc[i.index(n)] = *b,
                Mutation::Poke(i, after, b) => {
                    let syntax: Vec<usize> = (0..n)
                        .filter(|&j| b"\"\\{}[],:0123456789-+.eEtrufalsn".contains(&doc[j]))
                        .collect();
                    if !syntax.is_empty() {
                        let j = syntax[i.index(syntax.len())] + usize::from(*after);
                        if j < n {
                            doc[j] = *b;
                        }
                    }
                }
                Mutation::Insert(i, b) => doc.insert(i.index(n + 1), *b),
                Mutation::Remove(i) if n > 0 => {
                    doc.remove(i.index(n));
                }
                Mutation::Truncate(i) => doc.truncate(i.index(n + 1)),
                _ => {}
            }
        }
        doc
    }
}
