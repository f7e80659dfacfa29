//! The environment as the configuration reads it: a variable that is set
//! to bytes that are not UTF-8 is reported, never taken for one not set.
//!
//! The lookup the configuration is given answers `None` for both (the
//! process environment's is `std::env::var(name).ok()`). Taken for not
//! set, a `MOONSHOT_BASE_URL` with a stray byte would send the provider's
//! traffic, and its key, to the preset's public address without a word.

use super::ConfigProblem;
use std::cell::RefCell;

/// Reads through `lookup` and notes each name it found no text for.
pub struct EnvReads<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    not_found: RefCell<Vec<String>>,
}

impl<'a> EnvReads<'a> {
    pub fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        EnvReads {
            lookup,
            not_found: RefCell::new(Vec::new()),
        }
    }

    pub fn get(&self, name: &str) -> Option<String> {
        let value = (self.lookup)(name);
        if value.is_none() {
            self.not_found.borrow_mut().push(name.to_owned());
        }
        value
    }

    /// A problem for each name read that the process environment sets to
    /// something that is not UTF-8.
    pub fn not_text(self) -> Vec<ConfigProblem> {
        self.not_text_by(is_set_but_not_text)
    }

    fn not_text_by(self, not_text: impl Fn(&str) -> bool) -> Vec<ConfigProblem> {
        let mut names = self.not_found.into_inner();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter(|name| not_text(name))
            .map(|name| {
                ConfigProblem::new(
                    name,
                    "set, but not valid UTF-8: the gateway reads its environment as text \
                     (it is not taken for unset, which would fall back to a default)",
                )
            })
            .collect()
    }
}

fn is_set_but_not_text(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|value| value.to_str().is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only names the lookup had no text for are looked at, each once.
    #[test]
    fn names_without_text_are_reported_once_when_they_are_set() {
        let lookup = |name: &str| (name == "GIVEN").then(|| "text".to_string());
        let reads = EnvReads::new(&lookup);
        assert_eq!(reads.get("GIVEN").as_deref(), Some("text"));
        assert_eq!(reads.get("BYTES"), None);
        assert_eq!(reads.get("BYTES"), None);
        assert_eq!(reads.get("UNSET"), None);
        let asked = RefCell::new(Vec::new());
        let problems = reads.not_text_by(|name| {
            asked.borrow_mut().push(name.to_owned());
            name == "BYTES"
        });
        assert_eq!(asked.into_inner(), ["BYTES", "UNSET"]);
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["BYTES"], "{problems:?}");
        assert!(problems[0].message.contains("not valid UTF-8"));
    }
}
