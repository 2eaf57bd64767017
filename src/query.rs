//! URL query strings, read one way everywhere: `key=value` pairs split on `&`, `%XX` escapes and
//! `+` (a space) decoded strictly, and values echoed in error messages only as a short prefix.

/// The `key=value` pairs of `query` (a leading `?` allowed; empty pairs skipped; a key without
/// `=` has the empty value). Each value is decoded; `None` when an escape is malformed or the
/// decoded bytes are not UTF-8.
pub(crate) fn pairs(query: &str) -> impl Iterator<Item = (&str, Option<String>)> {
    query
        .trim_start_matches('?')
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k, decode(v))
        })
}

/// `%XX` escapes and `+` decoded; `None` when an escape is malformed or the result not UTF-8.
pub(crate) fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// `s` quoted for an error message, cut to a short prefix (with `…` when cut): a query value is
/// the client's, of any length.
pub(crate) fn echo(s: &str) -> String {
    crate::request::echo(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_strictly() {
        assert_eq!(decode("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(decode("%E2%82%AC").as_deref(), Some("€"));
        for bad in ["%", "%4", "%zz", "%+1", "%-1", "%FF"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn splits_pairs() {
        let got: Vec<_> = pairs("?a=1&&b&c=%41%42&d=%x").collect();
        assert_eq!(
            got,
            [
                ("a", Some("1".to_owned())),
                ("b", Some(String::new())),
                ("c", Some("AB".to_owned())),
                ("d", None),
            ]
        );
    }

    #[test]
    fn echoes_a_short_prefix() {
        let long = "x".repeat(10_000);
        assert!(echo(&long).len() < 100);
        assert_eq!(echo("asc "), "\"asc \"");
    }
}
