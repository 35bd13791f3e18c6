//! A pass's failed operations, told in a few lines however many there are. One device that cannot be created
//! (its underlay interface went away) fails every route, neighbour and FDB entry through it: 30,000 failures at
//! 10,000 peers, again on every retry. Logged one by one they were hundreds of thousands of lines a minute, and
//! the status kept a string for each.

use std::collections::BTreeMap;
use std::fmt::Display;

/// Failures told one by one, in the log and in the status; the rest are counted by cause.
pub const SHOWN: usize = 5;

/// The failures of one kind of operation (kernel or firewall) in one pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassFailures {
    pub total: usize,
    /// "operation: cause" for the first [`SHOWN`] failures.
    pub shown: Vec<String>,
    /// The causes of the failures not shown, each with how many it failed, most frequent first.
    pub more: Vec<(String, usize)>,
}

impl PassFailures {
    /// Digests `failures`, each an operation and its cause (the error without the operation).
    pub fn of<O: Display>(failures: impl IntoIterator<Item = (O, String)>) -> PassFailures {
        let mut digest = PassFailures::default();
        let mut causes: BTreeMap<String, usize> = BTreeMap::new();
        for (op, cause) in failures {
            digest.total += 1;
            if digest.shown.len() < SHOWN {
                digest.shown.push(format!("{op}: {cause}"));
            } else {
                *causes.entry(cause).or_default() += 1;
            }
        }
        digest.more = causes.into_iter().collect();
        // Stable: equal counts stay in the causes' order.
        digest.more.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        digest
    }

    /// One line for all the failures not shown, naming their causes; None when every failure is shown.
    pub fn more_line(&self) -> Option<String> {
        let hidden = self.total - self.shown.len();
        if hidden == 0 {
            return None;
        }
        let causes: Vec<String> = self.more.iter().map(|(cause, n)| format!("{cause} ({n})")).collect();
        Some(format!("{hidden} more failed: {}", causes.join("; ")))
    }

    /// The shown failures and the line for the rest, for the status.
    pub fn lines(&self) -> impl Iterator<Item = String> + '_ {
        self.shown.iter().cloned().chain(self.more_line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failures(n: usize, cause: &str) -> Vec<(String, String)> {
        (0..n).map(|i| (format!("replace route 10.1.{i}.0/24"), cause.to_string())).collect()
    }

    #[test]
    fn few_failures_are_all_shown() {
        let digest = PassFailures::of(failures(2, "device flannel.1 does not exist"));
        assert_eq!(digest.total, 2);
        assert_eq!(digest.shown[1], "replace route 10.1.1.0/24: device flannel.1 does not exist");
        assert_eq!(digest.more_line(), None);
        assert_eq!(digest.lines().count(), 2);
    }

    #[test]
    fn thirty_thousand_failures_are_six_lines_counted_by_cause() {
        let mut all = failures(29_000, "device flannel.1 does not exist");
        all.extend(failures(1_000, "File exists (os error 17)"));
        let digest = PassFailures::of(all);
        assert_eq!(digest.total, 30_000);
        let lines: Vec<String> = digest.lines().collect();
        assert_eq!(lines.len(), SHOWN + 1);
        assert_eq!(
            lines[SHOWN],
            "29995 more failed: device flannel.1 does not exist (28995); File exists (os error 17) (1000)"
        );
    }

    #[test]
    fn no_failures_is_empty() {
        let digest = PassFailures::of(Vec::<(String, String)>::new());
        assert_eq!(digest.total, 0);
        assert_eq!(digest.lines().count(), 0);
    }
}
