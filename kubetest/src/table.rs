//! Server-side printing: the `meta.k8s.io/v1` `Table` that `kubectl get` asks for (`Accept: ...;as=Table`) and
//! prints as it is. Nodes get kubectl's usual columns; other types get NAME and AGE.

use serde_json::{json, Value};

use crate::clock;
use crate::resources::ResourceType;

/// What each row carries besides its cells (`includeObject`): kubectl asks for metadata by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(value: Option<&str>) -> IncludeObject {
        match value {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

fn column(name: &str, kind: &str, description: &str, priority: u8) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": kind, "format": format, "description": description, "priority": priority})
}

fn columns(resource: &ResourceType) -> Vec<Value> {
    let name = column("Name", "string", "Name must be unique within a namespace.", 0);
    let age = column(
        "Age",
        "string",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
        0,
    );
    if resource.kind == "Node" {
        vec![
            name,
            column("Status", "string", "The status of the node", 0),
            column("Roles", "string", "The roles of the node", 0),
            age,
            column("Version", "string", "Kubelet Version reported by the node.", 0),
            column("Internal-IP", "string", "List of addresses reachable to the node.", 1),
            column("External-IP", "string", "List of addresses reachable to the node.", 1),
        ]
    } else {
        vec![name, age]
    }
}

fn age(object: &Value) -> String {
    object
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(clock::parse_rfc3339)
        .map(|created| clock::human_age(clock::now_unix() - created))
        .unwrap_or_else(|| "<unknown>".to_string())
}

fn node_status(node: &Value) -> String {
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|conditions| conditions.iter().find(|c| c.get("type").and_then(Value::as_str) == Some("Ready")));
    let mut status = match ready.and_then(|c| c.get("status")).and_then(Value::as_str) {
        Some("True") => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

fn node_roles(node: &Value) -> String {
    let mut roles: Vec<&str> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| labels.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/")).collect())
        .unwrap_or_default();
    roles.sort_unstable();
    if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.join(",")
    }
}

fn node_address(node: &Value, kind: &str) -> String {
    node.pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|addresses| addresses.iter().find(|a| a.get("type").and_then(Value::as_str) == Some(kind)))
        .and_then(|a| a.get("address"))
        .and_then(Value::as_str)
        .unwrap_or("<none>")
        .to_string()
}

fn cells(resource: &ResourceType, object: &Value) -> Vec<Value> {
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    if resource.kind == "Node" {
        let version = object.pointer("/status/nodeInfo/kubeletVersion").and_then(Value::as_str).unwrap_or("");
        vec![
            json!(name),
            json!(node_status(object)),
            json!(node_roles(object)),
            json!(age(object)),
            json!(version),
            json!(node_address(object, "InternalIP")),
            json!(node_address(object, "ExternalIP")),
        ]
    } else {
        vec![json!(name), json!(age(object))]
    }
}

fn row(resource: &ResourceType, object: &Value, include: IncludeObject) -> Value {
    let mut row = json!({"cells": cells(resource, object)});
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
            });
        }
        IncludeObject::Object => row["object"] = object.clone(),
    }
    row
}

/// A Table of `objects`; `with_columns` false leaves out the column definitions (watch events after the first,
/// as the real server sends them).
pub fn table<'a>(
    resource: &ResourceType,
    objects: impl IntoIterator<Item = &'a Value>,
    include: IncludeObject,
    metadata: Value,
    with_columns: bool,
) -> Value {
    let rows: Vec<Value> = objects.into_iter().map(|o| row(resource, o, include)).collect();
    let columns = if with_columns { columns(resource) } else { Vec::new() };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

/// Whether an Accept header asks for a Table (kubectl: `application/json;as=Table;v=v1;g=meta.k8s.io,...`).
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|media| {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io") && params.contains(&"v=v1")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::nodes;

    #[test]
    fn node_rows_show_status_roles_and_addresses() {
        let node = json!({
            "metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "InternalIP", "address": "198.18.0.1"}],
                       "nodeInfo": {"kubeletVersion": "v1.31.0"}},
        });
        let t = table(nodes(), [&node], IncludeObject::Metadata, json!({}), true);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "n1");
        assert_eq!(cells[1], "Ready,SchedulingDisabled");
        assert_eq!(cells[2], "control-plane");
        assert_eq!(cells[3], "<unknown>");
        assert_eq!(cells[5], "198.18.0.1");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["columnDefinitions"].as_array().map(Vec::len), Some(7));
    }

    #[test]
    fn table_accept_header_detection() {
        assert!(wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"));
        assert!(!wants_table("application/json"));
        assert!(!wants_table("application/json;as=Table;v=v1beta1;g=meta.k8s.io"));
    }
}
