//! Errors about the config file's text that name the file, the line and the field, and never
//! echo the file's content.
//!
//! `toml`'s own `Display` prints the offending source line; that line may hold a literal API
//! key, so the message is rebuilt here from the error's span: line, column, the table and key
//! the line belongs to, and toml's reason with every quoted fragment that occurs among the
//! file's values replaced by `[redacted]`.

use super::ConfigError;

/// A refusal of the file's raw bytes before parsing: empty or binary.
pub(super) fn check_text(file: &str, text: &str) -> Result<(), ConfigError> {
    if text.trim().is_empty() {
        return Err(ConfigError(format!("{file}: the file is empty")));
    }
    if let Some(i) = text.find('\0') {
        let (line, _) = position(text, i);
        return Err(ConfigError(format!(
            "{file}: line {line}: the file holds binary data (a NUL byte), not TOML text"
        )));
    }
    Ok(())
}

/// A file that is not UTF-8 text.
pub(super) fn not_utf8(file: &str, e: &std::string::FromUtf8Error) -> ConfigError {
    let valid = e.utf8_error().valid_up_to();
    let line = e.as_bytes()[..valid]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1;
    ConfigError(format!(
        "{file}: line {line}: the file holds binary data (not UTF-8), not TOML text"
    ))
}

/// The message for a TOML syntax or schema error.
pub(super) fn parse_error(file: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let values = value_text(text);
    let reason = redact(&one_line(e.message()), &values);
    match e.span() {
        Some(span) => {
            let (line, column) = position(text, span.start);
            let field = field_at(text, line)
                .map(|f| format!(", in {f}"))
                .unwrap_or_default();
            ConfigError(format!(
                "{file}: line {line}, column {column}{field}: {reason}"
            ))
        }
        None => ConfigError(format!("{file}: {reason}")),
    }
}

/// 1-based line and column of byte `offset`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every value of the file, roughly: the contents of quoted strings (also unterminated ones),
/// the bare token after each `=`, and whole lines that are neither headers, comments nor
/// `key = ...` lines (stray text).
fn value_text(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for l in text.lines() {
        let t = l.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with('[') && t.ends_with(']') {
            continue;
        }
        if !t.contains('=') && !t.starts_with(['{', '}', ']', ',']) {
            out.push(t);
        }
        quoted_strings(l, &mut out);
        for (i, _) in l.match_indices('=') {
            let v = l[i + 1..].trim_start();
            let end = v.find([',', '}', ']', '#']).unwrap_or(v.len());
            let v = v[..end].trim();
            if !v.is_empty() && !v.starts_with(['"', '\'', '{', '[']) {
                out.push(v);
            }
        }
    }
    out
}

fn quoted_strings<'a>(line: &'a str, out: &mut Vec<&'a str>) {
    let mut rest = line;
    while let Some(open) = rest.find(['"', '\'']) {
        let q = rest.as_bytes()[open];
        let after = &rest[open + 1..];
        let mut end = after.len();
        let mut escaped = false;
        for (i, b) in after.bytes().enumerate() {
            if b == q && !escaped {
                end = i;
                break;
            }
            escaped = q == b'"' && b == b'\\' && !escaped;
        }
        if end > 0 {
            out.push(&after[..end]);
        }
        rest = after.get(end + 1..).unwrap_or("");
    }
}

fn is_value(fragment: &str, values: &[&str]) -> bool {
    !fragment.is_empty()
        && values.iter().any(|v| {
            *v == fragment
                || fragment.len() >= 6 && v.contains(fragment)
                || v.len() >= 6 && fragment.contains(v)
        })
}

/// Replace every `` `quoted` `` or `"quoted"` fragment of `reason` that occurs among the values.
fn redact(reason: &str, values: &[&str]) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut rest = reason;
    loop {
        let Some(open) = rest.find(['`', '"']) else {
            out.push_str(rest);
            return out;
        };
        let q = rest.as_bytes()[open] as char;
        let after = &rest[open + 1..];
        let Some(close) = after.find(q) else {
            // an unmatched quote: keep what precedes it, drop the rest (it may be a value)
            out.push_str(&rest[..open]);
            return out;
        };
        let inner = &after[..close];
        out.push_str(&rest[..open]);
        out.push(q);
        out.push_str(if is_value(inner, values) {
            "[redacted]"
        } else {
            inner
        });
        out.push(q);
        rest = &after[close + 1..];
    }
}

/// `[table] key` of 1-based `line`: the last table header at or above it, and the key of the
/// line when it has one that looks like a key.
fn field_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().take(line).collect();
    let header = lines.iter().rev().map(|l| l.trim()).find_map(|l| {
        let l = l.strip_prefix('[')?;
        let l = l.strip_prefix('[').unwrap_or(l);
        let end = l.find(']')?;
        let name = l[..end].trim();
        is_key(name).then_some(name)
    });
    let key = lines
        .last()
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim())
        .filter(|k| is_key(k));
    match (header, key) {
        (Some(h), Some(k)) => Some(format!("[{h}] {k}")),
        (Some(h), None) => Some(format!("[{h}]")),
        (None, Some(k)) => Some(k.to_owned()),
        (None, None) => None,
    }
}

fn is_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 80
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.\" ".contains(c))
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn err(text: &str) -> String {
        Config::parse(text, "gw.toml").unwrap_err().to_string()
    }

    #[test]
    fn a_secret_on_a_bad_line_is_never_echoed() {
        let cases = [
            // a syntax error on the line holding the key
            "[providers.o]\nkind = \"openai\"\napi_key = \"sk-live-SECRET123\" oops\n",
            // an unquoted key
            "[providers.o]\nkind = \"openai\"\napi_key = sk-live-SECRET123\n",
            // a type error quoting the value
            "[server]\nworkers = \"sk-live-SECRET123\"\n",
            // an unknown enum variant quoting the value
            "[server]\nruntime = \"sk-live-SECRET123\"\n",
            // a stray line with only the key
            "[server]\nsk-live-SECRET123\n",
            // an unterminated string
            "[providers.o]\napi_key = \"sk-live-SECRET123\n",
        ];
        for text in cases {
            let e = err(text);
            assert!(!e.contains("SECRET123"), "{e}");
            assert!(e.starts_with("gw.toml: line "), "{e}");
        }
    }

    #[test]
    fn the_message_names_file_line_and_field() {
        let e = err("[server]\nlisten = \"x\"\nlisen = 1\n");
        assert!(e.starts_with("gw.toml: line 3"), "{e}");
        assert!(
            e.contains("[server] lisen") && e.contains("unknown field"),
            "{e}"
        );
        let e = err("[server]\nworkers = \"many\"\n");
        assert!(
            e.contains("line 2") && e.contains("[server] workers"),
            "{e}"
        );
        assert!(!e.contains("many"), "{e}");
    }

    #[test]
    fn empty_and_binary_text_is_refused() {
        assert!(err("").contains("empty"));
        assert!(err("  \n\n").contains("empty"));
        let e = err("[server]\nlisten = \"a\0b\"\n");
        assert!(e.contains("binary") && e.contains("line 2"), "{e}");
    }
}
