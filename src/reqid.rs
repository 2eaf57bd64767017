//! [`RequestIds`]: request ids for `x-request-id` without a system call per request.
//!
//! Each id is `req_` + a random 64-bit prefix drawn once per process + a 64-bit counter, in hex:
//! unique across replicas (the prefixes differ) and cheap (an atomic add and a format). A UUID
//! v4 per request asks the kernel for randomness every time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderValue, Request};
use rand::{RngCore, SeedableRng};
use tower_http::request_id::{MakeRequestId, RequestId};

/// Makes `x-request-id` values; clones share one counter.
#[derive(Debug, Clone)]
pub(crate) struct RequestIds {
    prefix: u64,
    counter: Arc<AtomicU64>,
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds {
            prefix: rand::rngs::StdRng::from_os_rng().next_u64(),
            counter: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl RequestIds {
    /// A maker with a fresh random prefix.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The next id.
    pub(crate) fn next_id(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // `req_` + 16 + 16 lower-case hex digits, written by hand (no formatter on this path).
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 4 + 32];
        buf[..4].copy_from_slice(b"req_");
        for (i, word) in [self.prefix, n].into_iter().enumerate() {
            for j in 0..16 {
                buf[4 + i * 16 + j] = HEX[((word >> (60 - 4 * j)) & 0xf) as usize];
            }
        }
        HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("req_unknown"))
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        Some(RequestId::new(self.next_id()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_share_a_counter_across_clones() {
        let a = RequestIds::new();
        let b = a.clone();
        let x = a.next_id();
        let y = b.next_id();
        assert_ne!(x, y);
        assert!(x.to_str().unwrap().starts_with("req_"));
        assert_eq!(x.len(), 4 + 32);
        assert_ne!(RequestIds::new().prefix, RequestIds::new().prefix);
        let c = RequestIds {
            prefix: 0x0123_4567_89ab_cdef,
            counter: Arc::new(AtomicU64::new(0xfe)),
        };
        assert_eq!(c.next_id(), "req_0123456789abcdef00000000000000fe");
        assert_eq!(c.next_id(), "req_0123456789abcdef00000000000000ff");
    }
}
