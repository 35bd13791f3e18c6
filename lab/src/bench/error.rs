//! One error type for the whole suite: every failure is a message that says what was being done.

use std::fmt::Display;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BenchError(pub String);

pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// Adds what was being done to any displayable error.
pub trait Context<T> {
    fn context(self, what: impl Display) -> Result<T>;
}

impl<T, E: Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Display) -> Result<T> {
        self.map_err(|e| BenchError(format!("{what}: {e}")))
    }
}

pub fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(BenchError(msg.into()))
}
