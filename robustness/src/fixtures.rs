//! Operations for unit tests, written in one line each.

use crate::history::{Nanos, Operation, Outcome, Request};

/// `request` by client 1, called at `call`, returning 10 ns later.
pub fn op(call: Nanos, request: Request, outcome: Outcome) -> Operation {
    Operation {
        client: 1,
        call,
        ret: call + 10,
        request,
        outcome,
    }
}

/// A put of `value` on key "a".
pub fn put_a(call: Nanos, value: &str, outcome: Outcome) -> Operation {
    op(
        call,
        Request::Put {
            key: "a".into(),
            value: value.into(),
        },
        outcome,
    )
}
