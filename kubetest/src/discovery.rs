//! Discovery documents: what `kubectl` and kube-rs read to learn which groups, versions and resources exist.
//! Served in the legacy (unaggregated) form; a client asking for aggregated discovery first (kubectl 1.26+) gets
//! plain `application/json` and falls back to these, as with an older server.

use serde_json::{json, Value};

use crate::resources::{groups, ResourceType, RESOURCES};

/// The version the server claims: a release kube-rs and kubectl of this era both support.
pub const SERVER_MAJOR: &str = "1";
pub const SERVER_MINOR: &str = "31";

pub fn version() -> Value {
    json!({
        "major": SERVER_MAJOR,
        "minor": SERVER_MINOR,
        "gitVersion": format!("v{SERVER_MAJOR}.{SERVER_MINOR}.0-weft-testserver"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.22.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`: the core group's versions.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group(name: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/{version}"), "version": version});
    json!({"name": name, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `/apis`: the named groups.
pub fn group_list() -> Value {
    let groups: Vec<Value> = groups().into_iter().map(|(name, version)| group(name, version)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`, if the group is served.
pub fn group_document(name: &str) -> Option<Value> {
    groups().into_iter().find(|(g, _)| *g == name).map(|(name, version)| {
        let mut doc = group(name, version);
        doc["kind"] = json!("APIGroup");
        doc["apiVersion"] = json!("v1");
        doc
    })
}

/// Every served type supports the same verbs (no deletecollection).
const VERBS: &[&str] = &["create", "delete", "get", "list", "patch", "update", "watch"];

/// `/api/v1` or `/apis/<group>/<version>`, if served: each resource and its status subresource.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let served: Vec<&ResourceType> = RESOURCES.iter().filter(|r| r.group == group && r.version == version).collect();
    if served.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in served {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
            "shortNames": r.short_names,
        }));
        if r.has_status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_list_has_nodes_and_their_status() {
        let list = resource_list("", "v1").unwrap();
        let names: Vec<&str> =
            list["resources"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
        assert!(names.contains(&"nodes") && names.contains(&"nodes/status") && names.contains(&"configmaps"));
        assert!(resource_list("batch", "v1").is_none());
        assert_eq!(group_document("apps").unwrap()["preferredVersion"]["groupVersion"], "apps/v1");
        assert_eq!(group_list()["groups"].as_array().map(Vec::len), Some(2));
    }
}
