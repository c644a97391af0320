//! [`Ticket`]: a request's place in the count of requests not yet admitted
//! (what `EngineConfig::max_waiting` bounds), given out by the client.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One request's place in the count of requests not yet admitted. The
/// count drops when the ticket does: when the scheduler first admits the
/// request, or whenever the request leaves the engine (or never reaches
/// it) without having run, however that happens, so it cannot leak.
#[derive(Debug)]
pub(crate) struct Ticket(Arc<AtomicUsize>);

impl Ticket {
    /// A ticket already counted in `count` (the caller has added it).
    pub fn new(count: Arc<AtomicUsize>) -> Ticket {
        Ticket(count)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
