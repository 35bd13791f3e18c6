//! What a person at a terminal sees and a pipe does not: colour, and progress lines for long-running commands.
//!
//! Colour only when the stream is a terminal, `NO_COLOR` is unset or empty (no-color.org) and `TERM` is not `dumb`.
//! Progress goes to stderr, only when stderr is a terminal, as one line rewritten in place; in a pipe or a log
//! file it writes nothing, so output there stays what it was.

use std::io::{IsTerminal, Write};

/// Whether to colour a stream: a terminal, no `NO_COLOR`, no dumb `TERM`. Pure, so the rule is tested.
pub fn colour_wanted(is_terminal: bool, no_color: Option<&str>, term: Option<&str>) -> bool {
    is_terminal && no_color.is_none_or(str::is_empty) && term != Some("dumb")
}

fn env_says_colour(is_terminal: bool) -> bool {
    let no_color = std::env::var("NO_COLOR").ok();
    let term = std::env::var("TERM").ok();
    colour_wanted(is_terminal, no_color.as_deref(), term.as_deref())
}

/// Colours for one output stream (ANSI SGR codes), or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    colour: bool,
}

impl Style {
    /// For stdout as it is now.
    pub fn stdout() -> Style {
        Style { colour: env_says_colour(std::io::stdout().is_terminal()) }
    }

    /// Without colour (tests, JSON).
    pub fn plain() -> Style {
        Style { colour: false }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub fn good(&self, text: &str) -> String {
        self.paint("32", text)
    }

    pub fn warn(&self, text: &str) -> String {
        self.paint("33", text)
    }

    pub fn bad(&self, text: &str) -> String {
        self.paint("1;31", text)
    }

    pub fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }

    pub fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }
}

/// A progress line on stderr for `total` steps: `[3/10] starting weftd on h3`, rewritten in place. Silent unless
/// stderr is a terminal.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    total: usize,
    done: usize,
    what: String,
    /// The step under way, redrawn after a note.
    current: String,
}

impl Progress {
    /// Progress over `total` steps of `what` ("hosts up").
    pub fn new(what: impl Into<String>, total: usize) -> Progress {
        Progress::with_terminal(std::io::stderr().is_terminal(), what, total)
    }

    /// Progress that shows nothing (for callers that are not watched, such as tests).
    pub fn hidden(what: impl Into<String>, total: usize) -> Progress {
        Progress::with_terminal(false, what, total)
    }

    fn with_terminal(enabled: bool, what: impl Into<String>, total: usize) -> Progress {
        Progress { enabled, total, done: 0, what: what.into(), current: String::new() }
    }

    /// The line for the step now under way.
    pub fn line(&self, step: &str) -> String {
        format!("[{}/{}] {}: {step}", self.done.min(self.total), self.total, self.what)
    }

    /// Shows `step` as under way.
    pub fn step(&mut self, step: &str) {
        self.current = step.to_string();
        if self.enabled {
            let mut err = std::io::stderr().lock();
            // \r and "erase to end of line": the next line replaces this one.
            let _ = write!(err, "\r\x1b[K{}", self.line(step));
            let _ = err.flush();
        }
    }

    /// Counts one step as done and shows `step` (an empty `step` keeps the current text).
    pub fn advance(&mut self, step: &str) {
        self.done += 1;
        let step = if step.is_empty() { self.current.clone() } else { step.to_string() };
        self.step(&step);
    }

    /// Prints `text` as a line of its own on stderr (always, in pipes too), above the progress line, which is
    /// drawn again below it.
    pub fn note(&mut self, text: &str) {
        let mut err = std::io::stderr().lock();
        if self.enabled {
            let _ = write!(err, "\r\x1b[K");
        }
        let _ = writeln!(err, "{text}");
        if self.enabled {
            let _ = write!(err, "{}", self.line(&self.current));
            let _ = err.flush();
        }
    }

    /// Clears the line, so what follows starts on a clean one.
    pub fn finish(&mut self) {
        if self.enabled {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
            self.enabled = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_wanted(true, None, Some("xterm-256color")));
        assert!(colour_wanted(true, Some(""), None), "an empty NO_COLOR does not count (no-color.org)");
        assert!(!colour_wanted(false, None, Some("xterm")), "a pipe");
        assert!(!colour_wanted(true, Some("1"), Some("xterm")));
        assert!(!colour_wanted(true, None, Some("dumb")));
        assert_eq!(Style::plain().bad("x"), "x");
        assert_eq!(Style { colour: true }.good("ok"), "\x1b[32mok\x1b[0m");
    }

    #[test]
    fn progress_counts_and_stays_silent_off_a_terminal() {
        let mut p = Progress::with_terminal(false, "hosts up", 3);
        assert_eq!(p.line("starting etcd"), "[0/3] hosts up: starting etcd");
        p.advance("h1");
        p.advance("h2");
        assert_eq!(p.line("h3"), "[2/3] hosts up: h3");
        p.finish();
    }
}
