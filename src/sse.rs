//! A push-based Server-Sent Events scanner (bytes in, events out) and a tiny encoder.
//!
//! [`SseScanner`] takes the body of an SSE response chunk by chunk, exactly as the network
//! delivers it, and yields each event as soon as its terminating blank line has arrived. It is
//! correct for any split of the input: in the middle of a line, in the middle of a UTF-8
//! character, between the `\r` and `\n` of a `\r\n`. It accepts the three line endings of the
//! [SSE grammar](https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation)
//! (`\n`, `\r\n`, lone `\r`), strips one leading byte-order mark, and ignores comment lines
//! (`: ping`) when it reads fields.
//!
//! It is zero-copy where it can be: an event that lies inside one pushed chunk is handed out as
//! a [`Bytes::slice`] of that chunk (`raw`, and `data` when the event has one `data` line). Only
//! the unfinished tail of a chunk is copied, into a buffer that the next chunks complete.
//!
//! ```
//! use bytes::Bytes;
//! use tollgate::sse::SseScanner;
//!
//! let mut scanner = SseScanner::new();
//! scanner.push(Bytes::from_static(b"data: {\"a\":1}\n\ndata: [DO"));
//! let ev = scanner.next_event().unwrap();
//! assert_eq!(&ev.data[..], b"{\"a\":1}");
//! assert!(scanner.next_event().is_none()); // `[DO` is not an event yet
//! scanner.push(Bytes::from_static(b"NE]\n\n"));
//! assert!(scanner.next_event().unwrap().is_done());
//! ```

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

/// The `[DONE]` event that ends an OpenAI stream.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// The UTF-8 byte-order mark, stripped once at the start of a stream.
const BOM: &[u8; 3] = b"\xEF\xBB\xBF";

/// The default cap on one event (and so on one line) a gateway scanner holds: 4 MiB. An
/// upstream that sends more without a blank line (or without any line break) is broken.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 4 << 20;

/// Encode `json` as one SSE event: `data: {json}\n\n`.
///
/// `json` must not contain a line break (serialized JSON never does: breaks inside strings are
/// escaped).
pub(crate) fn data_event(json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// One SSE event (a block of lines ended by a blank line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The exact bytes of the event, including its terminating blank line.
    ///
    /// One exception keeps events flowing without waiting: when the blank line ends with a `\r`
    /// that is the last byte pushed so far, the event is handed out at once; if the next chunk
    /// then starts with the `\n` of that `\r\n`, the scanner drops that `\n`. A lone `\r` is a
    /// complete line ending, so the forwarded stream means the same.
    pub raw: Bytes,
    /// The `data` lines joined with `\n` (`data:x` and `data: x` both give `x`).
    pub data: Bytes,
    /// The `event` field, if any (the last one, if several).
    pub event: Option<Bytes>,
    /// Whether the event has at least one `data` line: false for comment-only (keep-alive) blocks.
    pub has_data: bool,
}

impl SseEvent {
    /// Whether this is the end-of-stream marker: its data is exactly `[DONE]`.
    pub fn is_done(&self) -> bool {
        self.has_data && &self.data[..] == b"[DONE]"
    }

    /// Read the fields of one complete event held in `raw`.
    fn parse(raw: Bytes) -> SseEvent {
        let mut data: Option<Bytes> = None;
        let mut joined: Option<Vec<u8>> = None;
        let mut event = None;
        let mut has_data = false;
        let len = raw.len();
        let mut i = 0;
        while i < len {
            let (end, next) = match memchr::memchr2(b'\n', b'\r', &raw[i..]) {
                Some(j) => {
                    let end = i + j;
                    let crlf = raw[end] == b'\r' && raw.get(end + 1) == Some(&b'\n');
                    (end, end + 1 + usize::from(crlf))
                }
                None => (len, len),
            };
            let start = i;
            i = next;
            if start == end || raw[start] == b':' {
                continue; // blank line or comment
            }
            let line = &raw[start..end];
            let (name, value) = match memchr::memchr(b':', line) {
                Some(c) => {
                    let v = start + c + 1;
                    let v = if raw.get(v) == Some(&b' ') && v < end {
                        v + 1
                    } else {
                        v
                    };
                    (&line[..c], v..end)
                }
                None => (line, end..end),
            };
            match name {
                b"data" => {
                    has_data = true;
                    match (&mut joined, data.take()) {
                        (Some(buf), _) => {
                            buf.push(b'\n');
                            buf.extend_from_slice(&raw[value]);
                        }
                        (None, None) => data = Some(raw.slice(value)),
                        (None, Some(first)) => {
                            let mut buf = Vec::with_capacity(first.len() + 1 + value.len());
                            buf.extend_from_slice(&first);
                            buf.push(b'\n');
                            buf.extend_from_slice(&raw[value]);
                            joined = Some(buf);
                        }
                    }
                }
                b"event" => event = Some(raw.slice(value)),
                // `id`, `retry` and unknown fields stay in `raw`; nothing here needs them.
                _ => {}
            }
        }
        let data = match joined {
            Some(buf) => Bytes::from(buf),
            None => data.unwrap_or_default(),
        };
        SseEvent {
            raw,
            data,
            event,
            has_data,
        }
    }
}

/// What to do with a `\n` that starts the next chunk, after a chunk that ended in `\r`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendingLf {
    /// The last byte was not a line-ending `\r`.
    No,
    /// The `\r` ended a line inside the current event: a `\n` completes it and belongs to it.
    Keep,
    /// The `\r` ended an event that was already handed out: a `\n` completes it and is dropped.
    Drop,
}

/// A push-based SSE scanner: [`push`](Self::push) chunks as they arrive, then take events with
/// [`next_event`](Self::next_event) until it returns `None`.
#[derive(Debug)]
pub struct SseScanner {
    /// Scanned bytes of the event in progress that came from earlier chunks (copied).
    buf: BytesMut,
    /// The chunk being scanned: `cur[..pos]` belongs to the event in progress (after `buf`),
    /// `cur[pos..]` is not scanned yet.
    cur: Bytes,
    pos: usize,
    /// Chunks pushed while `cur` still had unscanned bytes.
    queue: VecDeque<Bytes>,
    /// The next byte scanned starts a line (so a line ending there is a blank line).
    at_line_start: bool,
    pending_lf: PendingLf,
    /// How many bytes of a BOM the stream started with so far, while undecided.
    bom_seen: u8,
    /// Whether the start of the stream has been checked for a BOM.
    bom_done: bool,
    /// The most bytes the event in progress may hold (see [`SseScanner::with_max_event`]).
    max_event: usize,
}

impl Default for SseScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl SseScanner {
    /// A scanner at the start of a stream.
    pub fn new() -> Self {
        SseScanner {
            buf: BytesMut::new(),
            cur: Bytes::new(),
            pos: 0,
            queue: VecDeque::new(),
            at_line_start: true,
            pending_lf: PendingLf::No,
            bom_seen: 0,
            bom_done: false,
            max_event: usize::MAX,
        }
    }

    /// A scanner whose event in progress may hold at most `bytes` bytes: past that,
    /// [`event_too_large`](Self::event_too_large) says so, and the caller stops pushing (a
    /// line without a line break is part of the event in progress, so this caps lines too).
    pub fn with_max_event(bytes: usize) -> Self {
        SseScanner {
            max_event: bytes,
            ..Self::new()
        }
    }

    /// Whether the unfinished event (the bytes after the last complete one, a line without
    /// its line break included) holds more than the cap of
    /// [`with_max_event`](Self::with_max_event). Meaningful after
    /// [`next_event`](Self::next_event) returned `None`; the caller then fails the stream
    /// instead of pushing more (and drops the scanner, which frees what it held).
    pub fn event_too_large(&self) -> bool {
        self.buf.len() + self.pos > self.max_event
    }

    /// Add the next chunk of the stream. Nothing is copied here.
    pub fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        if self.cur.is_empty() && self.queue.is_empty() {
            self.cur = chunk;
            self.pos = 0;
        } else {
            self.queue.push_back(chunk);
        }
    }

    /// The next complete event, if one has arrived.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if self.pos == self.cur.len() {
                // The current chunk is scanned: keep its bytes (the event in progress) and move on.
                if self.pos > 0 {
                    self.buf.extend_from_slice(&self.cur);
                }
                self.cur = Bytes::new();
                self.pos = 0;
                self.cur = self.queue.pop_front()?;
            }
            if !self.bom_done && !self.check_bom() {
                continue;
            }
            if self.pending_lf != PendingLf::No {
                let pending = std::mem::replace(&mut self.pending_lf, PendingLf::No);
                if self.cur[self.pos] == b'\n' {
                    if pending == PendingLf::Drop && self.pos == 0 && self.buf.is_empty() {
                        self.cur.advance(1);
                    } else {
                        self.pos += 1;
                    }
                    continue;
                }
            }
            if let Some(end) = self.scan() {
                return Some(SseEvent::parse(self.take(end)));
            }
        }
    }

    /// End of stream: the next complete event if any is left, else the trailing unterminated
    /// event (bytes after the last blank line), if any. Call until it returns `None`.
    ///
    /// A conforming SSE client discards an unterminated event; callers decide what to do with it.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if let Some(ev) = self.next_event() {
            return Some(ev);
        }
        let mut raw = std::mem::take(&mut self.buf);
        if !self.bom_done && self.bom_seen > 0 {
            // The stream was only a prefix of a BOM: those bytes are content after all.
            let mut all = BytesMut::from(&BOM[..usize::from(self.bom_seen)]);
            all.extend_from_slice(&raw);
            raw = all;
            self.bom_seen = 0;
        }
        self.at_line_start = true;
        self.pending_lf = PendingLf::No;
        if raw.is_empty() {
            return None;
        }
        Some(SseEvent::parse(raw.freeze()))
    }

    /// Bytes pushed but not handed out in an event yet (the partial tail, and unscanned chunks).
    pub fn pending_bytes(&self) -> usize {
        let queued: usize = self.queue.iter().map(Bytes::len).sum();
        let bom = if self.bom_done {
            0
        } else {
            usize::from(self.bom_seen)
        };
        self.buf.len() + self.cur.len() + queued + bom
    }

    /// Look for a BOM at the start of the stream. `cur` is non-empty and unscanned.
    /// Returns false when `cur` was used up and more bytes are needed to decide.
    fn check_bom(&mut self) -> bool {
        let seen = usize::from(self.bom_seen);
        let need = BOM.len() - seen;
        let avail = self.cur.len().min(need);
        if self.cur[..avail] == BOM[seen..seen + avail] {
            if avail == need {
                self.cur.advance(need);
                self.bom_done = true;
                self.bom_seen = 0;
            } else {
                // Only the start of a BOM so far: remember how much (its bytes are known).
                self.bom_seen += avail as u8;
                self.cur = Bytes::new();
            }
            return false;
        }
        self.bom_done = true;
        if seen > 0 {
            // Not a BOM after all: the bytes held back are content.
            let mut all = BytesMut::with_capacity(seen + self.cur.len());
            all.extend_from_slice(&BOM[..seen]);
            all.extend_from_slice(&self.cur);
            self.cur = all.freeze();
            self.bom_seen = 0;
        }
        true
    }

    /// Scan `cur` from `pos`. Returns the end of the event in `cur` when its blank line is
    /// complete; otherwise scans to the end of `cur` and returns `None`.
    fn scan(&mut self) -> Option<usize> {
        let bytes = &self.cur[..];
        let len = bytes.len();
        let mut pos = self.pos;
        while pos < len {
            if self.at_line_start {
                let b = bytes[pos];
                if b == b'\n' || b == b'\r' {
                    // A blank line: the event is complete.
                    let mut end = pos + 1;
                    if b == b'\r' {
                        if end < len {
                            end += usize::from(bytes[end] == b'\n');
                        } else {
                            self.pending_lf = PendingLf::Drop;
                        }
                    }
                    self.pos = pos;
                    return Some(end);
                }
                self.at_line_start = false;
            }
            match memchr::memchr2(b'\n', b'\r', &bytes[pos..]) {
                None => pos = len,
                Some(i) => {
                    let t = pos + i;
                    pos = t + 1;
                    if bytes[t] == b'\r' {
                        if pos < len {
                            pos += usize::from(bytes[pos] == b'\n');
                        } else {
                            self.pending_lf = PendingLf::Keep;
                        }
                    }
                    self.at_line_start = true;
                }
            }
        }
        self.pos = pos;
        None
    }

    /// Hand out the event in progress, which ends at `end` in `cur`.
    fn take(&mut self, end: usize) -> Bytes {
        self.pos = 0;
        if self.buf.is_empty() {
            self.cur.split_to(end)
        } else {
            self.buf.extend_from_slice(&self.cur[..end]);
            self.cur.advance(end);
            self.buf.split().freeze()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scan_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut s = SseScanner::new();
        let mut out = Vec::new();
        for c in chunks {
            s.push(Bytes::copy_from_slice(c));
            while let Some(ev) = s.next_event() {
                out.push(ev);
            }
        }
        while let Some(ev) = s.finish() {
            out.push(ev);
        }
        out
    }

    fn datas(evs: &[SseEvent]) -> Vec<&[u8]> {
        evs.iter()
            .filter(|e| e.has_data)
            .map(|e| &e.data[..])
            .collect()
    }

    #[test]
    fn single_event_in_one_chunk_is_zero_copy() {
        let chunk = Bytes::from_static(b"data: {\"x\":1}\n\ndata: y\n\n");
        let base = chunk.as_ptr() as usize;
        let mut s = SseScanner::new();
        s.push(chunk.clone());
        let a = s.next_event().unwrap();
        let b = s.next_event().unwrap();
        assert!(s.next_event().is_none());
        assert_eq!(&a.raw[..], b"data: {\"x\":1}\n\n");
        assert_eq!(&a.data[..], b"{\"x\":1}");
        assert_eq!(&b.raw[..], b"data: y\n\n");
        // Both `raw` and `data` point into the pushed chunk: nothing was copied.
        assert_eq!(a.raw.as_ptr() as usize, base);
        assert_eq!(a.data.as_ptr() as usize, base + 6);
        assert_eq!(b.raw.as_ptr() as usize, base + 15);
        assert_eq!(s.pending_bytes(), 0);
    }

    #[test]
    fn split_mid_line_buffers_only_the_tail() {
        let mut s = SseScanner::new();
        s.push(Bytes::from_static(b"data: one\n\ndata: tw"));
        assert_eq!(&s.next_event().unwrap().data[..], b"one");
        assert!(s.next_event().is_none());
        assert_eq!(s.pending_bytes(), 8);
        s.push(Bytes::from_static(b"o\n"));
        assert!(s.next_event().is_none());
        s.push(Bytes::from_static(b"\n"));
        let ev = s.next_event().unwrap();
        assert_eq!(&ev.data[..], b"two");
        assert_eq!(&ev.raw[..], b"data: two\n\n");
        assert_eq!(s.pending_bytes(), 0);
    }

    #[test]
    fn split_mid_utf8_character() {
        let text = "data: h\u{e9}llo \u{1F600}\n\n".as_bytes();
        // Split inside the two-byte é and inside the four-byte emoji.
        let evs = scan_all(&[&text[..8], &text[8..15], &text[15..]]);
        assert_eq!(evs.len(), 1);
        assert_eq!(
            std::str::from_utf8(&evs[0].data).unwrap(),
            "h\u{e9}llo \u{1F600}"
        );
        assert_eq!(&evs[0].raw[..], text);
    }

    #[test]
    fn crlf_line_endings() {
        let evs = scan_all(&[b"data: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n"]);
        assert_eq!(datas(&evs), vec![&b"a\nb"[..], b"c"]);
        assert_eq!(&evs[0].raw[..], b"data: a\r\ndata: b\r\n\r\n");
    }

    #[test]
    fn lone_cr_line_endings() {
        let evs = scan_all(&[b"data: a\rdata: b\r\rdata: c\r\r"]);
        assert_eq!(datas(&evs), vec![&b"a\nb"[..], b"c"]);
        assert_eq!(&evs[1].raw[..], b"data: c\r\r");
    }

    #[test]
    fn cr_at_chunk_end_then_lf_inside_an_event() {
        // The `\n` that starts the second chunk completes the `\r\n` of a line, so it is not
        // a blank line: the event is not over yet.
        let evs = scan_all(&[b"data: a\r", b"\ndata: b\r\n\r\n"]);
        assert_eq!(evs.len(), 1);
        assert_eq!(&evs[0].data[..], b"a\nb");
        assert_eq!(&evs[0].raw[..], b"data: a\r\ndata: b\r\n\r\n");
        // Same with the split between the `\r\n` of the blank line's predecessor.
        let evs = scan_all(&[b"data: a\r\ndata: b\r", b"\n\r\n"]);
        assert_eq!(datas(&evs), vec![&b"a\nb"[..]]);
    }

    #[test]
    fn cr_ending_an_event_at_chunk_end_does_not_wait() {
        let mut s = SseScanner::new();
        s.push(Bytes::from_static(b"data: a\r\n\r"));
        // Complete already: handed out without waiting for a possible `\n`.
        let ev = s.next_event().unwrap();
        assert_eq!(&ev.data[..], b"a");
        assert_eq!(&ev.raw[..], b"data: a\r\n\r");
        // The `\n` of that `\r\n` arrives: it is dropped, not read as a blank line.
        s.push(Bytes::from_static(b"\ndata: b\r\n\r\n"));
        let ev = s.next_event().unwrap();
        assert_eq!(&ev.raw[..], b"data: b\r\n\r\n");
        assert!(s.next_event().is_none());
        // A lone `\r` stream: the next chunk starts with a field, nothing is dropped.
        let evs = scan_all(&[b"data: a\r\r", b"data: b\r\r"]);
        assert_eq!(datas(&evs), vec![&b"a"[..], b"b"]);
        assert_eq!(&evs[1].raw[..], b"data: b\r\r");
    }

    #[test]
    fn data_with_and_without_space() {
        let evs = scan_all(&[b"data:x\n\ndata: y\n\ndata:  z\n\ndata\n\ndata:\n\n"]);
        // Only one space is removed; a bare `data` line is an empty data line.
        assert_eq!(datas(&evs), vec![&b"x"[..], b"y", b" z", b"", b""]);
        assert!(evs.iter().all(|e| e.has_data));
    }

    #[test]
    fn multiple_data_lines_join_with_newline() {
        let evs = scan_all(&[b"data: {\ndata: \"a\": 1\ndata: }\n\n"]);
        assert_eq!(&evs[0].data[..], b"{\n\"a\": 1\n}");
    }

    #[test]
    fn event_id_retry_fields() {
        let evs =
            scan_all(&[b"event: message_start\nid: 7\nretry: 1000\ndata: {}\n\nevent:ping\n\n"]);
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].event.as_deref(), Some(&b"message_start"[..]));
        assert_eq!(&evs[0].data[..], b"{}");
        assert!(evs[0].has_data);
        assert_eq!(evs[1].event.as_deref(), Some(&b"ping"[..]));
        assert!(!evs[1].has_data);
    }

    #[test]
    fn comment_lines_are_not_data() {
        let evs = scan_all(&[b": ping\n\ndata: a\n: inside\ndata: b\n\n"]);
        assert_eq!(evs.len(), 2);
        assert!(!evs[0].has_data);
        assert_eq!(&evs[0].raw[..], b": ping\n\n");
        assert_eq!(&evs[1].data[..], b"a\nb");
    }

    #[test]
    fn leading_bom_is_stripped_once() {
        let evs = scan_all(&[b"\xEF\xBB\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n"]);
        assert_eq!(&evs[0].raw[..], b"data: a\n\n");
        assert_eq!(&evs[0].data[..], b"a");
        // A second BOM is not at the start of the stream: it is part of a field name.
        assert!(!evs[1].has_data);
        // Split inside the BOM.
        let evs = scan_all(&[b"\xEF", b"\xBB", b"\xBFdata: a\n\n"]);
        assert_eq!(datas(&evs), vec![&b"a"[..]]);
        assert_eq!(&evs[0].raw[..], b"data: a\n\n");
        // Something that starts like a BOM but is not one is kept.
        let evs = scan_all(&[b"\xEF", b"data: a\n\n"]);
        assert_eq!(&evs[0].raw[..], b"\xEFdata: a\n\n");
    }

    #[test]
    fn done_marker() {
        let evs = scan_all(&[b"data: [DONE]\n\n"]);
        assert!(evs[0].is_done());
        assert!(!scan_all(&[b"data: [DONE] \n\n"])[0].is_done());
        assert!(!scan_all(&[b": [DONE]\n\n"])[0].is_done());
        assert_eq!(&data_event(b"{\"a\":1}")[..], b"data: {\"a\":1}\n\n");
        let ev = scan_all(&[DONE]);
        assert!(ev[0].is_done());
    }

    #[test]
    fn finish_returns_the_unterminated_tail() {
        let mut s = SseScanner::new();
        s.push(Bytes::from_static(b"data: a\n\ndata: [DONE]\n"));
        assert_eq!(&s.next_event().unwrap().data[..], b"a");
        assert!(s.next_event().is_none());
        let tail = s.finish().unwrap();
        assert!(tail.is_done());
        assert_eq!(&tail.raw[..], b"data: [DONE]\n");
        assert!(s.finish().is_none());
        // A tail cut mid-line.
        let evs = scan_all(&[b"data: {\"a\""]);
        assert_eq!(&evs[0].data[..], b"{\"a\"");
        // No tail.
        let mut s = SseScanner::new();
        s.push(Bytes::from_static(b"data: a\n\n"));
        assert!(s.finish().is_some());
        assert!(s.finish().is_none());
    }

    #[test]
    fn an_event_over_the_cap_is_reported() {
        let mut s = SseScanner::with_max_event(16);
        s.push(Bytes::from_static(b"data: 0123456789\n\n"));
        assert!(
            s.next_event().is_some(),
            "a complete event is handed out whatever its size"
        );
        assert!(!s.event_too_large());
        s.push(Bytes::from_static(b"data: 01234"));
        assert!(s.next_event().is_none());
        assert!(!s.event_too_large());
        // A line without a line break grows the event in progress past the cap.
        s.push(Bytes::from_static(b"567890abcdef"));
        assert!(s.next_event().is_none());
        assert!(s.event_too_large());
        // Many short lines without the blank line: the event is over the cap too.
        let mut s = SseScanner::with_max_event(16);
        for _ in 0..4 {
            s.push(Bytes::from_static(b"data: x\n"));
            assert!(s.next_event().is_none());
        }
        assert!(s.event_too_large());
        assert!(!SseScanner::new().event_too_large());
    }

    #[test]
    fn pushes_queue_until_scanned() {
        let mut s = SseScanner::new();
        s.push(Bytes::from_static(b"data: a\n\nda"));
        s.push(Bytes::from_static(b"ta: b\n"));
        s.push(Bytes::from_static(b"\ndata: c\n\n"));
        assert_eq!(s.pending_bytes(), 27);
        let got: Vec<_> = std::iter::from_fn(|| s.next_event()).collect();
        assert_eq!(datas(&got), vec![&b"a"[..], b"b", b"c"]);
        assert_eq!(s.pending_bytes(), 0);
    }

    #[test]
    fn stray_blank_lines_are_empty_blocks() {
        let evs = scan_all(&[b"\n\ndata: a\n\n\n"]);
        assert_eq!(evs.len(), 4);
        assert_eq!(datas(&evs), vec![&b"a"[..]]);
        let raw: Vec<u8> = evs.iter().flat_map(|e| e.raw.to_vec()).collect();
        assert_eq!(raw, b"\n\ndata: a\n\n\n");
    }

    // --- property tests -----------------------------------------------------------------

    /// One generated event: its bytes, and what the scanner must read from it.
    #[derive(Debug, Clone)]
    struct GenEvent {
        bytes: Vec<u8>,
        data: Option<Vec<u8>>,
        event: Option<Vec<u8>>,
    }

    fn value() -> impl Strategy<Value = String> {
        // Values never hold a line break; they may hold ':' and spaces and multi-byte UTF-8.
        "[a-z0-9 :{}\"\\[\\]é€😀]{0,12}"
    }

    fn eol() -> impl Strategy<Value = &'static [u8]> {
        prop_oneof![Just(&b"\n"[..]), Just(&b"\r\n"[..]), Just(&b"\r"[..])]
    }

    #[derive(Debug, Clone)]
    enum Line {
        Data(bool, String),
        Event(String),
        Id(String),
        Retry(u32),
        Comment(String),
        Unknown(String),
    }

    fn line() -> impl Strategy<Value = Line> {
        prop_oneof![
            4 => (any::<bool>(), value()).prop_map(|(sp, v)| Line::Data(sp, v)),
            1 => "[a-z_]{1,8}".prop_map(Line::Event),
            1 => "[0-9]{1,4}".prop_map(Line::Id),
            1 => (0u32..10_000).prop_map(Line::Retry),
            1 => value().prop_map(Line::Comment),
            // Starts with `x`, so never a known field name.
            1 => "x[a-z]{0,4}".prop_map(Line::Unknown),
        ]
    }

    fn gen_event() -> impl Strategy<Value = GenEvent> {
        (prop::collection::vec((line(), eol()), 1..5), eol()).prop_map(|(lines, end)| {
            let mut bytes = Vec::new();
            let mut data: Option<Vec<u8>> = None;
            let mut event = None;
            let mut last_eol: &[u8] = b"\n";
            for (l, e) in lines {
                match l {
                    Line::Data(sp, v) => {
                        // A value starting with a space after "data:" would lose it; keep the
                        // model simple by always writing the separator space when needed.
                        let sp = sp || v.starts_with(' ');
                        bytes.extend_from_slice(if sp { b"data: " } else { b"data:" });
                        bytes.extend_from_slice(v.as_bytes());
                        match &mut data {
                            Some(d) => {
                                d.push(b'\n');
                                d.extend_from_slice(v.as_bytes());
                            }
                            None => data = Some(v.into_bytes()),
                        }
                    }
                    Line::Event(v) => {
                        bytes.extend_from_slice(b"event: ");
                        bytes.extend_from_slice(v.as_bytes());
                        event = Some(v.into_bytes());
                    }
                    Line::Id(v) => {
                        bytes.extend_from_slice(b"id: ");
                        bytes.extend_from_slice(v.as_bytes());
                    }
                    Line::Retry(n) => bytes.extend_from_slice(format!("retry: {n}").as_bytes()),
                    Line::Comment(v) => {
                        bytes.push(b':');
                        bytes.extend_from_slice(v.as_bytes());
                    }
                    Line::Unknown(v) => bytes.extend_from_slice(v.as_bytes()),
                }
                bytes.extend_from_slice(e);
                last_eol = e;
            }
            // A lone `\r` followed by a lone `\n` would read as one `\r\n`: avoid it.
            let end = if last_eol == b"\r" && end == b"\n" {
                &b"\r\n"[..]
            } else {
                end
            };
            bytes.extend_from_slice(end);
            GenEvent { bytes, data, event }
        })
    }

    fn gen_stream() -> impl Strategy<Value = (Vec<u8>, Vec<GenEvent>, Vec<u8>)> {
        (
            any::<bool>(),
            prop::collection::vec(gen_event(), 0..8),
            prop_oneof![
                Just(String::new()),
                value().prop_map(|v| format!("data: {v}"))
            ],
        )
            .prop_map(|(bom, events, tail)| {
                let mut bytes = Vec::new();
                if bom {
                    bytes.extend_from_slice(BOM);
                }
                for e in &events {
                    bytes.extend_from_slice(&e.bytes);
                }
                bytes.extend_from_slice(tail.as_bytes());
                (bytes, events, tail.into_bytes())
            })
    }

    fn split_at(bytes: &[u8], mut cuts: Vec<usize>) -> Vec<&[u8]> {
        cuts.retain(|&c| c <= bytes.len());
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut prev = 0;
        for c in cuts {
            out.push(&bytes[prev..c]);
            prev = c;
        }
        out.push(&bytes[prev..]);
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn unsplit_scan_reads_what_was_written((bytes, events, tail) in gen_stream()) {
            let evs = scan_all(&[&bytes]);
            let n = events.len() + usize::from(!tail.is_empty());
            prop_assert_eq!(evs.len(), n);
            for (got, want) in evs.iter().zip(&events) {
                prop_assert_eq!(&got.raw[..], &want.bytes[..]);
                prop_assert_eq!(got.has_data, want.data.is_some());
                prop_assert_eq!(&got.data[..], want.data.as_deref().unwrap_or(b""));
                prop_assert_eq!(got.event.as_deref(), want.event.as_deref());
            }
            // Every byte but the BOM is in exactly one event, in order.
            let all: Vec<u8> = evs.iter().flat_map(|e| e.raw.to_vec()).collect();
            let body = bytes.strip_prefix(&BOM[..]).unwrap_or(&bytes);
            prop_assert_eq!(&all[..], body);
        }

        #[test]
        fn any_split_gives_the_same_events(
            (bytes, _events, _tail) in gen_stream(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let whole = scan_all(&[&bytes]);
            let cuts = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            let pieces = split_at(&bytes, cuts);
            let split = scan_all(&pieces);
            prop_assert_eq!(split.len(), whole.len());
            for (s, w) in split.iter().zip(&whole) {
                prop_assert_eq!(&s.data, &w.data);
                prop_assert_eq!(&s.event, &w.event);
                prop_assert_eq!(s.has_data, w.has_data);
                // Identical, except a `\r\n` that ends an event split between `\r` and `\n`.
                let same = s.raw == w.raw
                    || (w.raw.ends_with(b"\r\n") && s.raw[..] == w.raw[..w.raw.len() - 1]);
                prop_assert!(same, "{:?} vs {:?}", s.raw, w.raw);
            }
        }

        #[test]
        fn byte_by_byte_gives_the_same_events((bytes, _events, _tail) in gen_stream()) {
            let whole = scan_all(&[&bytes]);
            let pieces: Vec<&[u8]> = bytes.chunks(1).collect();
            let split = scan_all(&pieces);
            prop_assert_eq!(split.len(), whole.len());
            for (s, w) in split.iter().zip(&whole) {
                prop_assert_eq!(&s.data, &w.data);
                prop_assert_eq!(&s.event, &w.event);
                prop_assert_eq!(s.has_data, w.has_data);
            }
        }
    }
}
