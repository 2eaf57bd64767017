//! A small push-based SSE scanner with the API of `crate::sse` (plan: helper A's
//! `SseScanner`), used here until that module is merged; swap the `use` in `translate/mod.rs`
//! when it is. Splits anywhere; `\n`, `\r\n`, `\r`; a leading BOM; comments.

use bytes::{Bytes, BytesMut};

/// One scanned event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The exact bytes of the event, including its terminating blank line.
    pub raw: Bytes,
    /// The `data:` lines joined with `\n`.
    pub data: Bytes,
    /// The `event:` field.
    pub event: Option<Bytes>,
    /// Whether the event had at least one `data:` line.
    pub has_data: bool,
}

impl SseEvent {
    /// `data: [DONE]`.
    pub fn is_done(&self) -> bool {
        self.has_data && &self.data[..] == b"[DONE]"
    }
}

/// Push-based SSE scanner: bytes in, events out.
#[derive(Debug, Default)]
pub struct SseScanner {
    buf: BytesMut,
    /// Offset of the next unparsed line of the current event.
    pos: usize,
    data: Vec<u8>,
    event: Option<Bytes>,
    has_data: bool,
    lines: usize,
    started: bool,
}

impl SseScanner {
    /// An empty scanner.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add bytes.
    pub fn push(&mut self, chunk: Bytes) {
        self.buf.extend_from_slice(&chunk);
        if !self.started && self.buf.len() >= 3 {
            self.started = true;
            if self.buf.starts_with(b"\xEF\xBB\xBF") {
                let _ = self.buf.split_to(3);
            }
        }
    }

    /// Bytes held for an incomplete event.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }

    /// The next complete event, if any.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        self.scan(false)
    }

    /// At end of input: a trailing unterminated event, if any.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.started {
            self.started = true;
            if self.buf.starts_with(b"\xEF\xBB\xBF") {
                let _ = self.buf.split_to(3);
            }
        }
        if let Some(ev) = self.scan(true) {
            return Some(ev);
        }
        if self.lines > 0 {
            return Some(self.dispatch());
        }
        None
    }

    fn scan(&mut self, eof: bool) -> Option<SseEvent> {
        if !self.started && !eof {
            return None;
        }
        loop {
            let rest = &self.buf[self.pos..];
            let (line_end, term) = match memchr::memchr2(b'\r', b'\n', rest) {
                Some(i) if rest[i] == b'\n' => (i, 1),
                Some(i) if i + 1 < rest.len() => (i, if rest[i + 1] == b'\n' { 2 } else { 1 }),
                Some(i) if eof => (i, 1),
                Some(_) => return None,
                None if eof && !rest.is_empty() => (rest.len(), 0),
                None => return None,
            };
            let line_start = self.pos;
            self.pos += line_end + term;
            let line = &self.buf[line_start..line_start + line_end];
            if line.is_empty() {
                if self.lines == 0 {
                    // stray blank line between events
                    let _ = self.buf.split_to(self.pos);
                    self.pos = 0;
                    continue;
                }
                return Some(self.dispatch());
            }
            self.lines += 1;
            if line[0] == b':' {
                continue;
            }
            let (field, value) = match memchr::memchr(b':', line) {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &b""[..]),
            };
            match field {
                b"data" => {
                    if self.has_data {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value);
                    self.has_data = true;
                }
                b"event" => self.event = Some(Bytes::copy_from_slice(value)),
                _ => {}
            }
            if term == 0 {
                return None;
            }
        }
    }

    fn dispatch(&mut self) -> SseEvent {
        let raw = self.buf.split_to(self.pos).freeze();
        self.pos = 0;
        self.lines = 0;
        SseEvent {
            raw,
            data: Bytes::from(std::mem::take(&mut self.data)),
            event: self.event.take(),
            has_data: std::mem::take(&mut self.has_data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_any_split() {
        let input =
            b"\xEF\xBB\xBFevent: a\r\ndata: x\r\ndata:y\r\n\r\n: ping\n\ndata: z\r\rdata: w";
        for split in 0..input.len() {
            let mut s = SseScanner::new();
            s.push(Bytes::copy_from_slice(&input[..split]));
            let mut evs = Vec::new();
            while let Some(e) = s.next_event() {
                evs.push(e);
            }
            s.push(Bytes::copy_from_slice(&input[split..]));
            while let Some(e) = s.next_event() {
                evs.push(e);
            }
            if let Some(e) = s.finish() {
                evs.push(e);
            }
            let got: Vec<_> = evs
                .iter()
                .map(|e| (e.has_data, String::from_utf8_lossy(&e.data).into_owned()))
                .collect();
            assert_eq!(
                got,
                vec![
                    (true, "x\ny".to_owned()),
                    (false, String::new()),
                    (true, "z".to_owned()),
                    (true, "w".to_owned())
                ],
                "split {split}"
            );
            assert_eq!(evs[0].event.as_deref(), Some(&b"a"[..]));
        }
    }
}
