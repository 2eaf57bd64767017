//! The order check shared by the layers: each checked layer marks the request as it goes by, and
//! refuses it (500 `misconfigured_stack`, naming both layers) when a layer that belongs
//! *inside* it has already run — so any two checked layers in the wrong order fail closed on the
//! first request, whichever they are, instead of serving without a layer's protection.
//!
//! The documented order, outside in: Parse, UsageMeter, Auth, RateLimit, StreamPassthrough,
//! Route, Fallback, Timeout. Two layers need no mark: [`ErrorResponse`](crate::error::ErrorResponse),
//! whose `Error = Infallible` cannot be the inner service of any other layer (that does not
//! compile), and Timeout, the innermost, which refuses to run without the
//! [`Attempt`](crate::ext::Attempt) only Fallback adds — so a layer placed inside Timeout is
//! inside Fallback too, and sees Fallback's mark.
//!
//! The marks live in one small request extension ([`Passed`], a bit set): one insert per
//! request and one lookup per layer.

use std::sync::atomic::{AtomicBool, Ordering};

use http::Extensions;

use crate::error::{ErrorKind, GatewayError};

/// A layer whose place in the stack is checked, in the documented order (outside in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Checked {
    Parse = 0,
    UsageMeter,
    Auth,
    RateLimit,
    StreamPassthrough,
    Route,
    Fallback,
}

const NAMES: [&str; 7] = [
    "ParseLayer",
    "UsageMeterLayer",
    "AuthLayer",
    "RateLimitLayer",
    "StreamPassthroughLayer",
    "RouteLayer",
    "FallbackLayer",
];

/// One "logged already" flag per checking layer: a misorder is logged once, not per request.
static LOGGED: [AtomicBool; 7] = [const { AtomicBool::new(false) }; 7];

impl Checked {
    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// The bits of every layer that belongs inside `self`.
    fn inner_mask(self) -> u8 {
        // Layers with a larger rank; `self as u8` < 8, so the shift cannot overflow.
        !((self.bit() << 1).wrapping_sub(1))
    }

    /// The type name of the layer, as a user writes it.
    pub(crate) fn name(self) -> &'static str {
        NAMES[self as usize]
    }
}

/// Request extension: the checked layers this request has passed, outside in (a bit per
/// [`Checked`] layer). Private to the crate: only the layers write it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Passed(u8);

/// Mark `ext` as passing `me`. Fails when a layer that belongs inside `me` has already run
/// (it was placed outside `me`).
pub(crate) fn enter(ext: &mut Extensions, me: Checked) -> Result<(), GatewayError> {
    let passed = match ext.get_mut::<Passed>() {
        Some(p) => p,
        None => {
            ext.insert(Passed(me.bit()));
            return Ok(());
        }
    };
    let misplaced = passed.0 & me.inner_mask();
    if misplaced == 0 {
        passed.0 |= me.bit();
        return Ok(());
    }
    // The outermost of the misplaced layers: the lowest rank among them.
    let rank = misplaced.trailing_zeros() as usize;
    Err(misordered(me, NAMES[rank]))
}

/// 500 `misconfigured_stack`: `inner`, which belongs inside `me`, ran before it.
fn misordered(me: Checked, inner: &'static str) -> GatewayError {
    let layer = me.name();
    if !LOGGED[me as usize].swap(true, Ordering::Relaxed) {
        tracing::error!(
            layer,
            inner,
            "misconfigured stack: {inner} is placed outside {layer} but belongs inside it; \
             refusing requests"
        );
    }
    GatewayError::new(
        ErrorKind::MisconfiguredStack,
        format!(
            "Misconfigured gateway: {inner} is placed outside {layer}, but belongs inside it \
             (the order is Parse, UsageMeter, Auth, RateLimit, StreamPassthrough, Route, \
             Fallback, Timeout)."
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Checked; 7] = [
        Checked::Parse,
        Checked::UsageMeter,
        Checked::Auth,
        Checked::RateLimit,
        Checked::StreamPassthrough,
        Checked::Route,
        Checked::Fallback,
    ];

    #[test]
    fn the_documented_order_passes() {
        let mut ext = Extensions::new();
        for l in ALL {
            enter(&mut ext, l).unwrap();
        }
        assert_eq!(ext.get::<Passed>().unwrap().0, 0x7f);
        // An inner mask never includes the layer itself or one outside it.
        assert_eq!(Checked::Parse.inner_mask() & 0x7f, 0x7e);
        assert_eq!(Checked::Fallback.inner_mask() & 0x7f, 0);
    }

    #[test]
    fn every_swapped_pair_is_refused_naming_both() {
        for (i, outer) in ALL.iter().enumerate() {
            for inner in &ALL[i + 1..] {
                let mut ext = Extensions::new();
                enter(&mut ext, *inner).unwrap();
                let e = enter(&mut ext, *outer).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::MisconfiguredStack);
                let msg = e.message().to_string();
                assert!(
                    msg.contains(inner.name()) && msg.contains(outer.name()),
                    "{msg}"
                );
            }
        }
    }

    #[test]
    fn a_layer_twice_or_a_layer_left_out_is_not_a_misorder() {
        let mut ext = Extensions::new();
        for l in [
            Checked::Parse,
            Checked::Parse,
            Checked::Route,
            Checked::Fallback,
        ] {
            enter(&mut ext, l).unwrap();
        }
    }
}
