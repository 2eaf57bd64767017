//! A minimal push SSE event finder for the first-token gate: only what the gate needs
//! (where events end, whether an event carries data, its data). It mirrors the subset of
//! `crate::sse::SseScanner` used here so the gate can switch to it without changes.

use bytes::{Buf, Bytes, BytesMut};

/// One complete event (the subset of `SseEvent` the gate reads).
#[derive(Debug)]
pub(crate) struct Event {
    /// Data lines joined with `\n`.
    pub data: Bytes,
    /// False for comment-only / keep-alive blocks.
    pub has_data: bool,
}

/// Push bytes in, take complete events out. Lines may end in `\n`, `\r\n` or `\r`.
#[derive(Debug, Default)]
pub(crate) struct Scanner {
    buf: BytesMut,
    data: Vec<u8>,
    has_data: bool,
    fields: bool,
    bom_checked: bool,
}

impl Scanner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, chunk: &Bytes) {
        self.buf.extend_from_slice(chunk);
        if !self.bom_checked && self.buf.len() >= 3 {
            self.bom_checked = true;
            if self.buf.starts_with(b"\xEF\xBB\xBF") {
                self.buf.advance(3);
            }
        }
    }

    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            let end = memchr::memchr2(b'\n', b'\r', &self.buf)?;
            // A trailing '\r' may be the first half of "\r\n": wait for the next byte.
            let term = if self.buf[end] == b'\r' {
                match self.buf.get(end + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    None => return None,
                }
            } else {
                1
            };
            let line = self.buf.split_to(end + term);
            let line = &line[..end];
            if line.is_empty() {
                if self.fields {
                    let ev = Event {
                        data: Bytes::from(std::mem::take(&mut self.data)),
                        has_data: self.has_data,
                    };
                    self.has_data = false;
                    self.fields = false;
                    return Some(ev);
                }
                continue;
            }
            self.fields = true;
            if line[0] == b':' {
                continue;
            }
            let (name, value) = match memchr::memchr(b':', line) {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &b""[..]),
            };
            if name == b"data" {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_events_split_anywhere() {
        let src = b": keep-alive\r\n\r\ndata: {\"a\":1}\r\n\r\ndata: [DONE]\n\n";
        for split in 0..src.len() {
            let mut s = Scanner::new();
            let mut out = Vec::new();
            s.push(&Bytes::copy_from_slice(&src[..split]));
            while let Some(e) = s.next_event() {
                out.push(e);
            }
            s.push(&Bytes::copy_from_slice(&src[split..]));
            while let Some(e) = s.next_event() {
                out.push(e);
            }
            assert_eq!(out.len(), 3, "split {split}");
            assert!(!out[0].has_data);
            assert_eq!(&out[1].data[..], b"{\"a\":1}");
            assert_eq!(&out[2].data[..], b"[DONE]");
        }
    }
}
