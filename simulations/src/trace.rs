//! A replay check for simulations: a running BLAKE3 over the events of a run, each stamped
//! with the simulated time at which it happened.
//!
//! Two runs from the same seed must give the same [`Trace::digest`]; any difference in what
//! happened, in what order, or when (to the nanosecond of virtual time) changes it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Shared by every host of one simulation (they run on one thread, in a fixed order).
#[derive(Clone, Default)]
pub struct Trace(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    hasher: blake3::Hasher,
    events: u64,
}

impl Trace {
    pub fn new() -> Trace {
        Trace::default()
    }

    /// Adds `(virtual time, event, data)`; the time is turmoil's elapsed simulated time (zero
    /// outside a host).
    pub fn record(&self, event: &str, data: &[u8]) {
        let at = turmoil::sim_elapsed().unwrap_or(Duration::ZERO);
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        state.hasher.update(&at.as_nanos().to_le_bytes());
        for part in [event.as_bytes(), data] {
            state.hasher.update(&(part.len() as u64).to_le_bytes());
            state.hasher.update(part);
        }
        state.events += 1;
    }

    /// The digest of every event so far.
    pub fn digest(&self) -> blake3::Hash {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .hasher
            .finalize()
    }

    /// How many events were recorded.
    pub fn events(&self) -> u64 {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).events
    }
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Trace({} events, {})", self.events(), self.digest())
    }
}
