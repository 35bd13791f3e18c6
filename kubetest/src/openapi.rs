//! A minimal OpenAPI v3 description: the paths and operations of each served group/version with their query
//! parameters, and no schemas.
//!
//! kubectl (1.27 and later) reads it for one thing before `create` and `apply`: whether the PATCH operation of
//! the object's kind takes the `fieldValidation` parameter. When it does, kubectl leaves validation to the server
//! (`fieldValidation=Strict`) and needs no schema; without this document it refuses to send anything unless run
//! with `--validate=false`. No schema is served, so kubectl computes apply patches from its compiled-in types,
//! as it does for any built-in kind.
//!
//! Older kubectl (Debian 12's 1.20) reads OpenAPI v2 instead, in gnostic's protobuf encoding, before `apply`:
//! to check that each kind's PATCH takes `dryRun` (server-side dry run), and to find schemas (absent ones mean
//! no client-side validation and patches computed from compiled-in types). [`v2_protobuf`] serves the same paths
//! in that encoding, written by hand with the field numbers of gnostic's `OpenAPIv2.proto`; [`v2_json`] is the
//! same document as JSON for clients that ask for it.

use serde_json::{json, Map, Value};

use crate::resources::{ResourceType, RESOURCES};

/// The group/version paths (`api/v1`, `apis/apps/v1`) the index lists.
fn group_version_paths() -> Vec<(String, &'static str, &'static str)> {
    let mut out: Vec<(String, &str, &str)> = Vec::new();
    for r in RESOURCES {
        let path =
            if r.group.is_empty() { format!("api/{}", r.version) } else { format!("apis/{}/{}", r.group, r.version) };
        if !out.iter().any(|(p, _, _)| *p == path) {
            out.push((path, r.group, r.version));
        }
    }
    out
}

/// `/openapi/v3`: where each group/version's document is.
pub fn index() -> Value {
    let paths: Map<String, Value> = group_version_paths()
        .into_iter()
        .map(|(path, _, _)| {
            let url = format!("/openapi/v3/{path}?hash={}", document_hash(&path));
            (path, json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}

/// The served documents never change, so their hash is a fixed label per path (clients only echo it back).
fn document_hash(path: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in path.bytes() {
        hash = (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016X}")
}

fn query_parameter(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(resource: &ResourceType, action: &str, parameters: &[&str]) -> Value {
    let gvk = json!({"group": resource.group, "version": resource.version, "kind": resource.kind});
    let parameters: Vec<Value> = parameters.iter().map(|p| query_parameter(p)).collect();
    json!({
        "operationId": format!("{action}{}", resource.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
        "parameters": parameters,
        "responses": {"200": {"description": "OK"}, "401": {"description": "Unauthorized"}},
    })
}

const WRITE_PARAMETERS: &[&str] = &["dryRun", "fieldManager", "fieldValidation"];
const LIST_PARAMETERS: &[&str] = &[
    "allowWatchBookmarks",
    "continue",
    "fieldSelector",
    "labelSelector",
    "limit",
    "resourceVersion",
    "resourceVersionMatch",
    "sendInitialEvents",
    "timeoutSeconds",
    "watch",
];

/// The v3 path items of one type, from the same operation list as v2.
fn paths_of(resource: &ResourceType) -> Vec<(String, Value)> {
    operations_of(resource)
        .into_iter()
        .map(|(path, operations)| {
            let item: Map<String, Value> = operations
                .into_iter()
                .map(|op| (op.method.to_string(), operation(resource, op.action, &op.parameters)))
                .collect();
            (path, Value::Object(item))
        })
        .collect()
}

/// One operation of a path: its HTTP method, Kubernetes action and query parameters.
struct OperationSpec {
    method: &'static str,
    action: &'static str,
    parameters: Vec<&'static str>,
}

fn op(method: &'static str, action: &'static str, parameters: &[&'static str]) -> OperationSpec {
    OperationSpec { method, action, parameters: parameters.to_vec() }
}

/// Every path of one type with its operations: the collection, the item, and the item's status.
fn operations_of(resource: &ResourceType) -> Vec<(String, Vec<OperationSpec>)> {
    let prefix = if resource.group.is_empty() {
        format!("/api/{}", resource.version)
    } else {
        format!("/apis/{}/{}", resource.group, resource.version)
    };
    let scope = if resource.namespaced { "/namespaces/{namespace}" } else { "" };
    let collection = format!("{prefix}{scope}/{}", resource.plural);
    let item = format!("{collection}/{{name}}");
    let patch_parameters = [WRITE_PARAMETERS, &["force"]].concat();
    let mut paths = vec![
        (collection, vec![op("get", "list", LIST_PARAMETERS), op("post", "post", WRITE_PARAMETERS)]),
        (
            item.clone(),
            vec![
                op("get", "get", &[]),
                op("put", "put", WRITE_PARAMETERS),
                op("patch", "patch", &patch_parameters),
                op("delete", "delete", &["dryRun"]),
            ],
        ),
    ];
    if resource.has_status {
        paths.push((
            format!("{item}/status"),
            vec![op("get", "get", &[]), op("put", "put", WRITE_PARAMETERS), op("patch", "patch", &patch_parameters)],
        ));
    }
    paths
}

/// `/openapi/v2` as JSON (Swagger 2.0), no definitions.
pub fn v2_json() -> Value {
    let mut paths = Map::new();
    for resource in RESOURCES {
        for (path, operations) in operations_of(resource) {
            let mut item = Map::new();
            for OperationSpec { method, action, parameters } in operations {
                let parameters: Vec<Value> = parameters
                    .iter()
                    .map(|p| json!({"name": p, "in": "query", "type": "string", "uniqueItems": true}))
                    .collect();
                item.insert(
                    method.to_string(),
                    json!({
                        "operationId": format!("{action}{}", resource.kind),
                        "parameters": parameters,
                        "responses": {"200": {"description": "OK"}},
                        "x-kubernetes-action": action,
                        "x-kubernetes-group-version-kind":
                            {"group": resource.group, "version": resource.version, "kind": resource.kind},
                    }),
                );
            }
            paths.insert(path, Value::Object(item));
        }
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes (weft test API server)", "version": "v1.31.0"},
        "paths": paths,
        "definitions": {},
    })
}

/// Protocol buffers, the few wire forms the v2 document needs: length-delimited fields and varint booleans.
mod pb {
    fn varint(out: &mut Vec<u8>, mut value: u64) {
        while value >= 0x80 {
            out.push((value as u8) | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    /// A length-delimited field: a string or an embedded message.
    pub fn bytes(out: &mut Vec<u8>, field: u32, payload: &[u8]) {
        varint(out, (u64::from(field) << 3) | 2);
        varint(out, payload.len() as u64);
        out.extend_from_slice(payload);
    }

    pub fn boolean(out: &mut Vec<u8>, field: u32, value: bool) {
        if value {
            varint(out, u64::from(field) << 3);
            out.push(1);
        }
    }
}

/// The media type `/openapi/v2` answers protobuf in. Clients ask for `...spec.v2@v1.0+protobuf`, but `@` is not
/// allowed in a media type (Go's parser rejects it), so the answer spells the version with a dot, as
/// kube-apiserver does.
pub const V2_PROTOBUF_MEDIA_TYPE: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// `/openapi/v2` in gnostic's `openapi.v2.Document` protobuf encoding.
pub fn v2_protobuf() -> Vec<u8> {
    // Field numbers from gnostic's OpenAPIv2.proto: Document{swagger=1, info=2, paths=8}, Info{title=1,
    // version=2}, Paths{path=2}, NamedPathItem{name=1, value=2}, PathItem{get=2, put=3, post=4, delete=5,
    // patch=8}, Operation{operation_id=5, parameters=8, responses=9, vendor_extension=13},
    // ParametersItem{parameter=1}, Parameter{non_body_parameter=2}, NonBodyParameter{query_parameter_sub_schema=3},
    // QueryParameterSubSchema{in=2, name=4, type=6, unique_items=20}, NamedAny{name=1, value=2}, Any{yaml=2},
    // Responses{response_code=1}, NamedResponseValue{name=1, value=2}, ResponseValue{response=1},
    // Response{description=1}.
    let mut paths = Vec::new();
    for resource in RESOURCES {
        for (path, operations) in operations_of(resource) {
            let mut path_item = Vec::new();
            for OperationSpec { method, action, parameters } in operations {
                let mut op = Vec::new();
                pb::bytes(&mut op, 5, format!("{action}{}", resource.kind).as_bytes());
                for name in parameters {
                    let mut query = Vec::new();
                    pb::bytes(&mut query, 2, b"query");
                    pb::bytes(&mut query, 4, name.as_bytes());
                    pb::bytes(&mut query, 6, b"string");
                    pb::boolean(&mut query, 20, true);
                    let mut non_body = Vec::new();
                    pb::bytes(&mut non_body, 3, &query);
                    let mut parameter = Vec::new();
                    pb::bytes(&mut parameter, 2, &non_body);
                    let mut item = Vec::new();
                    pb::bytes(&mut item, 1, &parameter);
                    pb::bytes(&mut op, 8, &item);
                }
                let mut response = Vec::new();
                pb::bytes(&mut response, 1, b"OK");
                let mut response_value = Vec::new();
                pb::bytes(&mut response_value, 1, &response);
                let mut named_response = Vec::new();
                pb::bytes(&mut named_response, 1, b"200");
                pb::bytes(&mut named_response, 2, &response_value);
                let mut responses = Vec::new();
                pb::bytes(&mut responses, 1, &named_response);
                pb::bytes(&mut op, 9, &responses);
                let gvk_yaml =
                    format!("group: \"{}\"\nkind: {}\nversion: {}\n", resource.group, resource.kind, resource.version);
                for (name, yaml) in
                    [("x-kubernetes-action", format!("{action}\n")), ("x-kubernetes-group-version-kind", gvk_yaml)]
                {
                    let mut any = Vec::new();
                    pb::bytes(&mut any, 2, yaml.as_bytes());
                    let mut named = Vec::new();
                    pb::bytes(&mut named, 1, name.as_bytes());
                    pb::bytes(&mut named, 2, &any);
                    pb::bytes(&mut op, 13, &named);
                }
                let field = match method {
                    "get" => 2,
                    "put" => 3,
                    "post" => 4,
                    "delete" => 5,
                    _ => 8,
                };
                pb::bytes(&mut path_item, field, &op);
            }
            let mut named = Vec::new();
            pb::bytes(&mut named, 1, path.as_bytes());
            pb::bytes(&mut named, 2, &path_item);
            pb::bytes(&mut paths, 2, &named);
        }
    }
    let mut info = Vec::new();
    pb::bytes(&mut info, 1, b"Kubernetes (weft test API server)");
    pb::bytes(&mut info, 2, b"v1.31.0");
    let mut document = Vec::new();
    pb::bytes(&mut document, 1, b"2.0");
    pb::bytes(&mut document, 2, &info);
    pb::bytes(&mut document, 8, &paths);
    document
}

/// `/openapi/v3/<group/version path>`, if that group/version is served.
pub fn document(path: &str) -> Option<Value> {
    let (_, group, version) = group_version_paths().into_iter().find(|(p, _, _)| p == path)?;
    let paths: Map<String, Value> =
        RESOURCES.iter().filter(|r| r.group == group && r.version == version).flat_map(paths_of).collect();
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (weft test API server)", "version": "v1.31.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_points_at_documents_whose_patch_operations_take_field_validation() {
        let index = index();
        let url = index["paths"]["api/v1"]["serverRelativeURL"].as_str().unwrap();
        assert!(url.starts_with("/openapi/v3/api/v1?hash="));
        let doc = document("api/v1").unwrap();
        let patch = &doc["paths"]["/api/v1/nodes/{name}"]["patch"];
        assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Node");
        assert!(patch["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"));
        assert!(doc["paths"].get("/api/v1/namespaces/{namespace}/configmaps/{name}").is_some());
        assert!(document("apis/rbac.authorization.k8s.io/v1").is_some());
        assert!(document("apis/batch/v1").is_none());
    }

    #[test]
    fn v2_documents_describe_the_same_patch_operations() {
        let json = v2_json();
        let patch = &json["paths"]["/api/v1/nodes/{name}"]["patch"];
        assert!(patch["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "dryRun"));
        let proto = v2_protobuf();
        // Document.swagger (field 1, length-delimited) comes first: tag 0x0a, length 3, "2.0".
        assert_eq!(&proto[..5], b"\x0a\x032.0");
        let text = String::from_utf8_lossy(&proto);
        assert!(text.contains("/api/v1/nodes/{name}") && text.contains("kind: Node") && text.contains("dryRun"));
    }
}
