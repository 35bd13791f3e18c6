//! `WEFT_CNI_TRACE=1`: the time of each ADD phase on stderr (stdout belongs to the result). Off by default; the
//! check is one environment lookup per process.

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Option<Instant>> = OnceLock::new();

/// Starts the clock (when tracing is on).
pub fn start() {
    START.get_or_init(|| std::env::var_os("WEFT_CNI_TRACE").map(|_| Instant::now()));
}

/// Prints `phase` with the time since [`start`].
pub fn mark(phase: &str) {
    if let Some(Some(start)) = START.get() {
        eprintln!("weft-cni: {:>7} us  {phase}", start.elapsed().as_micros());
    }
}
