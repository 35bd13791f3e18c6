//! Failures as the API server reports them: a `meta.k8s.io/v1` `Status` object with an HTTP code and a reason
//! clients branch on (kubectl prints the message; kube-rs reads `code` and `reason`).

use serde_json::{json, Value};

/// One failed request, rendered as a `Status` body.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// `details.name` and `details.kind` (plural resource name, as the real server fills it).
    pub details: Option<(String, String)>,
    /// `details.causes` for Invalid: (field, message).
    pub causes: Vec<(String, String)>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String) -> Self {
        ApiError { code, reason, message, details: None, causes: Vec::new() }
    }

    fn with_details(mut self, kind: &str, name: &str) -> Self {
        self.details = Some((name.to_string(), kind.to_string()));
        self
    }

    pub fn not_found(plural: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{plural} \"{name}\" not found")).with_details(plural, name)
    }

    pub fn already_exists(plural: &str, name: &str) -> Self {
        Self::new(409, "AlreadyExists", format!("{plural} \"{name}\" already exists")).with_details(plural, name)
    }

    /// A write whose precondition (`metadata.resourceVersion`) no longer holds.
    pub fn conflict(plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {plural} \"{name}\": the object has been modified; please apply \
                 your changes to the latest version and try again"
            ),
        )
        .with_details(plural, name)
    }

    /// A resourceVersion older than the retained history (etcd's compaction).
    pub fn expired(message: String) -> Self {
        Self::new(410, "Expired", message)
    }

    /// A rejected object: `kind "name" is invalid: field: message` with one cause per field.
    pub fn invalid(kind: &str, name: &str, causes: Vec<(String, String)>) -> Self {
        let summary: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let display_name = if name.is_empty() { "<unnamed>" } else { name };
        let mut err =
            Self::new(422, "Invalid", format!("{kind} \"{display_name}\" is invalid: {}", summary.join(", ")))
                .with_details(kind, name);
        err.causes = causes;
        err
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message.into())
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message.into())
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format: {content_type}"),
        )
    }

    pub fn unavailable() -> Self {
        Self::new(503, "ServiceUnavailable", "the test API server is in a simulated outage".to_string())
    }

    pub fn too_large_resource_version(requested: u64, current: u64) -> Self {
        let mut err = Self::new(504, "Timeout", format!("Too large resource version: {requested}, current: {current}"));
        err.causes = vec![("".to_string(), "ResourceVersionTooLarge".to_string())];
        err
    }

    pub fn path_not_found(path: &str) -> Self {
        Self::new(404, "NotFound", format!("the server could not find the requested resource ({path})"))
    }

    /// The `Status` object the server answers with.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if self.details.is_some() || !self.causes.is_empty() {
            let mut details = json!({});
            if let Some((name, kind)) = &self.details {
                details["name"] = json!(name);
                details["kind"] = json!(kind);
            }
            if !self.causes.is_empty() {
                let causes: Vec<Value> = self
                    .causes
                    .iter()
                    .map(|(field, message)| {
                        let reason =
                            if message.starts_with("Required") { "FieldValueRequired" } else { "FieldValueInvalid" };
                        let mut cause = json!({"reason": reason, "message": message});
                        if !field.is_empty() {
                            cause["field"] = json!(field);
                        }
                        cause
                    })
                    .collect();
                details["causes"] = Value::Array(causes);
            }
            status["details"] = details;
        }
        status
    }
}

/// The `Status` a successful DELETE answers with.
pub fn success(plural: &str, name: &str, uid: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "kind": plural, "uid": uid},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_status_carries_code_reason_and_details() {
        let s = ApiError::conflict("nodes", "n1").to_status();
        assert_eq!(s["kind"], "Status");
        assert_eq!(s["code"], 409);
        assert_eq!(s["reason"], "Conflict");
        assert_eq!(s["details"]["name"], "n1");
        assert_eq!(s["details"]["kind"], "nodes");
    }

    #[test]
    fn invalid_status_lists_causes() {
        let s = ApiError::invalid("ConfigMap", "", vec![("metadata.name".into(), "Required value".into())]).to_status();
        assert_eq!(s["code"], 422);
        assert_eq!(s["details"]["causes"][0]["field"], "metadata.name");
        assert_eq!(s["details"]["causes"][0]["reason"], "FieldValueRequired");
    }
}
