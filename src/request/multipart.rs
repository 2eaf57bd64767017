//! The few `multipart/form-data` facts the gateway needs of an audio upload
//! (`/v1/audio/transcriptions`, `/v1/audio/translations`): the `model` field, read and
//! rewritten in place. Not a multipart library: the body is walked part by part (the delimiter
//! found with a SIMD search, file contents never copied or inspected), every other byte is
//! forwarded as received.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use memchr::memmem;

use super::{Api, BodyLayout, MAX_MODEL_BYTES, ParsedRequest, validate};
use crate::error::GatewayError;
use crate::usage::Units;

/// Longest boundary RFC 2046 allows.
const MAX_BOUNDARY: usize = 70;

/// Most bytes of one part's headers.
const MAX_PART_HEADERS: usize = 16 * 1024;

fn bad(
    msg: impl Into<std::borrow::Cow<'static, str>>,
    param: Option<&'static str>,
) -> GatewayError {
    GatewayError::bad_request(msg, param)
}

/// The boundary of a `Content-Type: multipart/form-data; boundary=...` header value; `None`
/// when the value is not `multipart/form-data` with a usable boundary.
pub(crate) fn boundary_of_header(content_type: &str) -> Option<&str> {
    let mut params = content_type.split(';');
    let mime = params.next()?.trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim().trim_matches('"');
        (!v.is_empty() && v.len() <= MAX_BOUNDARY).then_some(v)
    })
}

/// One form field: its name, whether it is a file, and where its content lies in the body.
struct Part<'a> {
    name: Option<&'a [u8]>,
    file: bool,
    content: (usize, usize),
}

/// The parts of `body`, in order, up to the closing delimiter.
fn parts(body: &[u8]) -> Result<Vec<Part<'_>>, GatewayError> {
    let malformed = |why: &str| bad(format!("malformed multipart/form-data body: {why}"), None);
    let first = memmem::find(body, b"\r\n").ok_or_else(|| malformed("no delimiter line"))?;
    let boundary = body[..first]
        .strip_prefix(b"--")
        .filter(|b| !b.is_empty() && b.len() <= MAX_BOUNDARY)
        .ok_or_else(|| malformed("the body must start with --boundary"))?;
    let mut delim = Vec::with_capacity(boundary.len() + 4);
    delim.extend_from_slice(b"\r\n--");
    delim.extend_from_slice(boundary);
    let finder = memmem::Finder::new(&delim);
    let mut out = Vec::new();
    let mut pos = first + 2;
    loop {
        let window = &body[pos..body.len().min(pos + MAX_PART_HEADERS)];
        let head_len = memmem::find(window, b"\r\n\r\n")
            .ok_or_else(|| malformed("a part has no end of headers"))?;
        let (name, file) = disposition(&body[pos..pos + head_len]);
        let start = pos + head_len + 4;
        let end = finder
            .find(&body[start..])
            .map(|i| start + i)
            .ok_or_else(|| malformed("no closing delimiter"))?;
        out.push(Part {
            name,
            file,
            content: (start, end),
        });
        let after = end + delim.len();
        match body.get(after..after + 2) {
            Some(b"--") => return Ok(out),
            Some(b"\r\n") => pos = after + 2,
            _ => return Err(malformed("a delimiter is not followed by CRLF")),
        }
    }
}

/// The `name` of a part's `Content-Disposition: form-data; name="..."`, and whether it has a
/// `filename`.
fn disposition(head: &[u8]) -> (Option<&[u8]>, bool) {
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon].eq_ignore_ascii_case(b"content-disposition") {
            continue;
        }
        let mut name = None;
        let mut file = false;
        for param in line[colon + 1..].split(|&b| b == b';').skip(1) {
            let Some(eq) = param.iter().position(|&b| b == b'=') else {
                continue;
            };
            let key = param[..eq].trim_ascii();
            let value = param[eq + 1..].trim_ascii();
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            if key.eq_ignore_ascii_case(b"name") {
                name = Some(value);
            } else if key.eq_ignore_ascii_case(b"filename")
                || key.eq_ignore_ascii_case(b"filename*")
            {
                file = true;
            }
        }
        return (name, file);
    }
    (None, false)
}

/// The content span of the last non-file field called `name`.
fn field<'a>(parts: &[Part<'a>], name: &str) -> Option<(usize, usize)> {
    parts
        .iter()
        .rev()
        .find(|p| !p.file && p.name == Some(name.as_bytes()))
        .map(|p| p.content)
}

/// Parse an audio upload for `api`: the `model` field (required), `stream` refused.
pub(super) fn parse(api: Api, body: Bytes) -> Result<ParsedRequest, GatewayError> {
    let received_at = Instant::now();
    let parts = parts(&body)?;
    if !parts.iter().any(|p| p.file && p.name == Some(b"file")) {
        return Err(bad("'file' is a required property", Some("file")));
    }
    let Some((start, end)) = field(&parts, "model") else {
        return Err(bad("you must provide a model parameter", Some("model")));
    };
    let model = std::str::from_utf8(&body[start..end])
        .map_err(|_| bad("'model' must be UTF-8 text", Some("model")))?
        .trim();
    if model.is_empty() {
        return Err(bad("'model' must not be empty", Some("model")));
    }
    if model.len() > MAX_MODEL_BYTES {
        return Err(bad(
            format!(
                "'model' is too long ({} bytes, at most {MAX_MODEL_BYTES}): {}",
                model.len(),
                validate::echo(model)
            ),
            Some("model"),
        ));
    }
    if let Some((s, e)) = field(&parts, "stream") {
        if body[s..e].trim_ascii().eq_ignore_ascii_case(b"true") {
            return Err(bad(
                "streamed transcriptions are not served by the gateway; leave 'stream' unset",
                Some("stream"),
            ));
        }
    }
    Ok(ParsedRequest {
        api,
        model: Arc::from(model),
        stream: false,
        wants_usage: false,
        max_tokens: None,
        has_tools: false,
        has_images: false,
        json_mode: false,
        fallback_models: None,
        base64_embeddings: false,
        upstream_include_usage: false,
        units: Units::default(),
        body,
        layout: BodyLayout::default(),
        received_at,
    })
}

/// `body` with the content of its `model` field replaced by `model`: the same buffer (no
/// copy) when it already says so, else one copy with the field's bytes spliced.
pub(super) fn with_model(body: &Bytes, model: &str) -> Result<Bytes, GatewayError> {
    let parts = parts(body)?;
    let Some((start, end)) = field(&parts, "model") else {
        return Err(bad("you must provide a model parameter", Some("model")));
    };
    if &body[start..end] == model.as_bytes() {
        return Ok(body.clone());
    }
    let mut out = Vec::with_capacity(body.len() + model.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(model.as_bytes());
    out.extend_from_slice(&body[end..]);
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(model: &str, file: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.mp3\"\r\nContent-Type: audio/mpeg\r\n\r\n");
        b.extend_from_slice(file);
        b.extend_from_slice(b"\r\n--XyZ\r\ncontent-disposition: form-data; name=\"model\"\r\n\r\n");
        b.extend_from_slice(model.as_bytes());
        b.extend_from_slice(b"\r\n--XyZ--\r\n");
        b
    }

    #[test]
    fn reads_and_rewrites_the_model_field_only() {
        // The file holds a look-alike of the delimiter without its CRLF, and a `name="model"`.
        let file = b"\x00\xffID3--XyZ name=\"model\"\r\n\r\nnot-this";
        let body = Bytes::from(form("whisper-alias", file));
        let p = parse(Api::AudioTranscriptions, body.clone()).unwrap();
        assert_eq!(&*p.model, "whisper-alias");
        assert_eq!(p.prompt_tokens_estimate(), 0);
        let out = with_model(&body, "whisper-1").unwrap();
        assert_eq!(&out[..], &form("whisper-1", file)[..]);
        // Same model: the very buffer, no copy.
        let same = with_model(&body, "whisper-alias").unwrap();
        assert_eq!(same.as_ptr(), body.as_ptr());
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let cases: [(&[u8], Option<&str>); 4] = [
            (b"not multipart", None),
            (b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm", None),
            (
                b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm\r\n--XyZ--",
                Some("file"),
            ),
            (
                b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nx\r\n--XyZ--",
                Some("model"),
            ),
        ];
        for (body, param) in cases {
            let e = parse(Api::AudioTranscriptions, Bytes::from_static(body)).unwrap_err();
            assert_eq!(e.status(), 400);
            assert_eq!(e.to_json()["error"]["param"].as_str(), param);
        }
    }

    #[test]
    fn boundary_from_the_header() {
        assert_eq!(
            boundary_of_header("multipart/form-data; boundary=\"ab c\""),
            Some("ab c")
        );
        assert_eq!(
            boundary_of_header("Multipart/Form-Data;boundary=x"),
            Some("x")
        );
        assert_eq!(boundary_of_header("application/json"), None);
        assert_eq!(boundary_of_header("multipart/form-data"), None);
    }
}
