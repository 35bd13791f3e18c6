//! The resource types the server knows: what discovery lists and what a URL may name.
//!
//! A fixed table rather than a registry: the server serves exactly what weft's client and its DaemonSet deployment
//! use, and discovery must describe the same set the router accepts.

/// One served resource type (a `kind` under a group/version, plus its plural URL name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group (`/api/v1`).
    pub group: &'static str,
    pub version: &'static str,
    /// The plural name in URLs (`nodes`).
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Whether the type has a `status` subresource.
    pub has_status: bool,
}

impl ResourceType {
    /// `v1` for the core group, `group/version` otherwise: the `apiVersion` field of its objects.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const fn core(
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    has_status: bool,
) -> ResourceType {
    ResourceType { group: "", version: "v1", plural, singular, kind, namespaced, short_names, has_status }
}

/// Every resource type the server serves.
pub const RESOURCES: &[ResourceType] = &[
    core("nodes", "node", "Node", false, &["no"], true),
    core("namespaces", "namespace", "Namespace", false, &["ns"], true),
    core("serviceaccounts", "serviceaccount", "ServiceAccount", true, &["sa"], false),
    core("configmaps", "configmap", "ConfigMap", true, &["cm"], false),
    core("secrets", "secret", "Secret", true, &[], false),
    ResourceType {
        group: "apps",
        version: "v1",
        plural: "daemonsets",
        singular: "daemonset",
        kind: "DaemonSet",
        namespaced: true,
        short_names: &["ds"],
        has_status: true,
    },
    ResourceType {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterroles",
        singular: "clusterrole",
        kind: "ClusterRole",
        namespaced: false,
        short_names: &[],
        has_status: false,
    },
    ResourceType {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterrolebindings",
        singular: "clusterrolebinding",
        kind: "ClusterRoleBinding",
        namespaced: false,
        short_names: &[],
        has_status: false,
    },
    ResourceType {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "roles",
        singular: "role",
        kind: "Role",
        namespaced: true,
        short_names: &[],
        has_status: false,
    },
    ResourceType {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "rolebindings",
        singular: "rolebinding",
        kind: "RoleBinding",
        namespaced: true,
        short_names: &[],
        has_status: false,
    },
];

/// The named API groups (everything but core), each with its one served version.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.iter().any(|(g, _)| *g == r.group) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// The resource type a URL names by group, version and plural.
pub fn by_plural(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource type of an object's `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.kind == kind && r.api_version() == api_version)
}

/// The resource type named `Node`/`nodes` in the core group.
pub fn nodes() -> &'static ResourceType {
    by_plural("", "v1", "nodes").expect("nodes are in the resource table")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_agree_with_the_table() {
        assert_eq!(nodes().kind, "Node");
        assert_eq!(by_kind("apps/v1", "DaemonSet").map(|r| r.plural), Some("daemonsets"));
        assert_eq!(by_kind("v1", "DaemonSet"), None);
        assert_eq!(by_plural("", "v1", "configmaps").map(|r| r.api_version()), Some("v1".to_string()));
        assert_eq!(groups(), vec![("apps", "v1"), ("rbac.authorization.k8s.io", "v1")]);
    }
}
