//! `labelSelector` and `fieldSelector` query parameters: parsed once per request, matched per object.

use serde_json::Value;

/// A selector the server cannot parse, with the text it was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse selector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed label or field selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// Splits at commas that are not inside a `(...)` value set.
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

fn parse_set(selector: &str, text: &str) -> Result<Vec<String>, SelectorError> {
    let inner = text.trim().strip_prefix('(').and_then(|t| t.strip_suffix(')')).ok_or_else(|| SelectorError {
        selector: selector.to_string(),
        reason: format!("expected (values), got {text:?}"),
    })?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
}

impl Selector {
    /// Parses `a=b,c!=d,e in (f,g),h notin (i),j,!k`; set-based forms only when `set_based` (field selectors
    /// allow equality only).
    pub fn parse(text: &str, set_based: bool) -> Result<Selector, SelectorError> {
        let err = |reason: String| SelectorError { selector: text.to_string(), reason };
        let mut requirements = Vec::new();
        for term in split_terms(text).into_iter().map(str::trim).filter(|t| !t.is_empty()) {
            let requirement = if let Some((key, value)) = term.split_once("!=") {
                Requirement::NotEquals(key.trim().to_string(), value.trim().to_string())
            } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Requirement::Equals(key.trim().to_string(), value.trim().to_string())
            } else if !set_based {
                return Err(err(format!("{term:?} is not key=value or key!=value")));
            } else if let Some((key, set)) = term.split_once(" notin ") {
                Requirement::NotIn(key.trim().to_string(), parse_set(text, set)?)
            } else if let Some((key, set)) = term.split_once(" in ") {
                Requirement::In(key.trim().to_string(), parse_set(text, set)?)
            } else if let Some(key) = term.strip_prefix('!') {
                Requirement::DoesNotExist(key.trim().to_string())
            } else if term.contains(|c: char| c.is_whitespace() || c == '(' || c == ')') {
                return Err(err(format!("cannot understand {term:?}")));
            } else {
                Requirement::Exists(term.to_string())
            };
            requirements.push(requirement);
        }
        Ok(Selector { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether the values `lookup` gives for the selector's keys satisfy every requirement.
    pub fn matches(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => lookup(k).as_deref() == Some(v.as_str()),
            Requirement::NotEquals(k, v) => lookup(k).as_deref() != Some(v.as_str()),
            Requirement::In(k, set) => lookup(k).is_some_and(|v| set.contains(&v)),
            Requirement::NotIn(k, set) => lookup(k).is_none_or(|v| !set.contains(&v)),
            Requirement::Exists(k) => lookup(k).is_some(),
            Requirement::DoesNotExist(k) => lookup(k).is_none(),
        })
    }
}

/// The label selector and field selector of one list or watch.
#[derive(Debug, Clone, Default)]
pub struct ObjectFilter {
    pub labels: Selector,
    pub fields: Selector,
}

impl ObjectFilter {
    pub fn matches(&self, object: &Value) -> bool {
        self.labels.matches(|key| object.pointer("/metadata/labels").and_then(|l| l.get(key)).and_then(string_of))
            && self.fields.matches(|key| field_value(object, key))
    }
}

fn string_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The value a field selector key names: `metadata.name`, `metadata.namespace`, or any dotted path to a scalar
/// (`spec.unschedulable`). A missing `metadata.namespace` is the empty string, as for cluster-scoped objects.
fn field_value(object: &Value, key: &str) -> Option<String> {
    let pointer = format!("/{}", key.replace('.', "/"));
    match object.pointer(&pointer).and_then(string_of) {
        Some(v) => Some(v),
        None if key == "metadata.namespace" => Some(String::new()),
        None if key == "spec.unschedulable" => Some("false".to_string()),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> Value {
        json!({"metadata": {"name": "n1", "labels": {"role": "worker", "zone": "a"}}, "spec": {}})
    }

    #[test]
    fn label_selectors_equality_sets_and_existence() {
        let matches =
            |s: &str| ObjectFilter { labels: Selector::parse(s, true).unwrap(), ..Default::default() }.matches(&node());
        assert!(matches(""));
        assert!(matches("role=worker"));
        assert!(matches("role==worker,zone"));
        assert!(!matches("role!=worker"));
        assert!(matches("zone in (a,b),role notin (master)"));
        assert!(!matches("zone in (b, c)"));
        assert!(matches("!gpu"));
        assert!(!matches("gpu"));
    }

    #[test]
    fn field_selectors_name_namespace_and_paths() {
        let matches = |s: &str| {
            ObjectFilter { fields: Selector::parse(s, false).unwrap(), ..Default::default() }.matches(&node())
        };
        assert!(matches("metadata.name=n1"));
        assert!(!matches("metadata.name=n2"));
        assert!(matches("metadata.name!=n2,metadata.namespace="));
        assert!(matches("spec.unschedulable=false"));
        assert!(Selector::parse("zone in (a)", false).is_err());
        assert!(Selector::parse("a b", true).is_err());
    }
}
