//! The three PATCH bodies the API server accepts for built-in types: JSON merge patch (RFC 7386), strategic merge
//! patch (Kubernetes' own, with merge keys for lists), and JSON patch (RFC 6902).
//!
//! A real server takes strategic-merge keys from the Go struct tags of each type. This server has no schemas, so
//! the merge keys come from a table by field name ([`merge_key`]) covering the lists of the types it serves: a list
//! not in the table is replaced whole, as a list without a patch strategy is.

use serde_json::{Map, Value};

/// A patch that cannot be applied, named by what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("the patch is not a JSON object")]
    NotAnObject,
    #[error("the JSON patch is not an array of operations")]
    NotAnArray,
    #[error("JSON patch operation {index} is malformed: {reason}")]
    BadOperation { index: usize, reason: String },
    #[error("JSON patch operation {index}: path {path:?} does not exist")]
    MissingPath { index: usize, path: String },
    #[error("JSON patch operation {index}: test of {path:?} failed")]
    TestFailed { index: usize, path: String },
    #[error("strategic merge patch: list {field:?} item lacks its merge key {key:?}")]
    MissingMergeKey { field: String, key: String },
    #[error("strategic merge patch: unknown directive {0:?}")]
    UnknownDirective(String),
}

/// RFC 7386: objects merge key by key, `null` deletes a key, anything else (lists included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target_map = target.as_object_mut().expect("made an object above");
    for (key, value) in patch_map {
        if value.is_null() {
            target_map.remove(key);
        } else {
            merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// How a list field merges in a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Items are objects merged by this key (`conditions` by `type`).
    MergeByKey(&'static str),
    /// Items are scalars; the patch's items are added to the set (`finalizers`, `podCIDRs`).
    MergePrimitives,
    /// No strategy: the patch's list replaces the target's.
    Replace,
}

/// The strategy of the list field `field`, after the patch-strategy tags of the Kubernetes types served here.
pub fn merge_key(field: &str) -> ListStrategy {
    match field {
        "conditions" | "addresses" => ListStrategy::MergeByKey("type"),
        "containers" | "initContainers" | "ephemeralContainers" | "env" | "volumes" | "imagePullSecrets" => {
            ListStrategy::MergeByKey("name")
        }
        "volumeMounts" => ListStrategy::MergeByKey("mountPath"),
        "volumeDevices" => ListStrategy::MergeByKey("devicePath"),
        "ports" => ListStrategy::MergeByKey("containerPort"),
        "ownerReferences" => ListStrategy::MergeByKey("uid"),
        "hostAliases" => ListStrategy::MergeByKey("ip"),
        "finalizers" | "podCIDRs" => ListStrategy::MergePrimitives,
        _ => ListStrategy::Replace,
    }
}

const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";

/// Applies a strategic merge patch: objects merge as in a merge patch, lists follow [`merge_key`], and the
/// directives `$patch` (`replace`, `delete`, `merge`), `$deleteFromPrimitiveList/<field>`, `$retainKeys` and
/// `$setElementOrder/<field>` are honoured (the last one only orders, so it is accepted and dropped).
pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Object(patch_map) = patch else { return Err(PatchError::NotAnObject) };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    merge_object(target.as_object_mut().expect("made an object above"), patch_map)
}

fn merge_object(target: &mut Map<String, Value>, patch: &Map<String, Value>) -> Result<(), PatchError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replacement = patch.clone();
            replacement.remove("$patch");
            strip_directives(&mut replacement);
            *target = replacement;
            return Ok(());
        }
        Some("delete") => {
            target.clear();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(PatchError::UnknownDirective(other.to_string())),
    }
    if let Some(Value::Array(retain)) = patch.get("$retainKeys") {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" || key.starts_with(SET_ELEMENT_ORDER) {
            continue;
        }
        if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            if let (Some(Value::Array(items)), Value::Array(remove)) = (target.get_mut(field), value) {
                items.retain(|item| !remove.contains(item));
            }
            continue;
        }
        if key.starts_with('$') {
            return Err(PatchError::UnknownDirective(key.clone()));
        }
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(patch_child) => {
                let slot = target.entry(key.clone()).or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                merge_object(slot.as_object_mut().expect("made an object above"), patch_child)?;
            }
            Value::Array(patch_items) => {
                let merged = match (merge_key(key), target.get(key)) {
                    (ListStrategy::MergeByKey(merge_key), Some(Value::Array(current))) => {
                        merge_keyed_list(key, merge_key, current.clone(), patch_items)?
                    }
                    (ListStrategy::MergeByKey(merge_key), _) => {
                        merge_keyed_list(key, merge_key, Vec::new(), patch_items)?
                    }
                    (ListStrategy::MergePrimitives, Some(Value::Array(current))) => {
                        let mut merged = current.clone();
                        for item in patch_items {
                            if !merged.contains(item) {
                                merged.push(item.clone());
                            }
                        }
                        merged
                    }
                    _ => patch_items.iter().map(strip_directives_value).collect(),
                };
                target.insert(key.clone(), Value::Array(merged));
            }
            scalar => {
                target.insert(key.clone(), scalar.clone());
            }
        }
    }
    Ok(())
}

fn merge_keyed_list(
    field: &str,
    merge_key: &str,
    mut current: Vec<Value>,
    patch_items: &[Value],
) -> Result<Vec<Value>, PatchError> {
    // `[{"$patch": "replace"}, ...]` replaces the whole list with the other items.
    if patch_items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace") && i.get(merge_key).is_none())
    {
        return Ok(patch_items.iter().filter(|i| i.get("$patch").is_none()).map(strip_directives_value).collect());
    }
    for item in patch_items {
        let Value::Object(item_map) = item else {
            // Scalars in a keyed list: the patch cannot be matched by key, so it replaces (as the server does
            // for a list of the wrong shape).
            return Ok(patch_items.to_vec());
        };
        let Some(key_value) = item_map.get(merge_key) else {
            return Err(PatchError::MissingMergeKey { field: field.to_string(), key: merge_key.to_string() });
        };
        let position = current.iter().position(|c| c.get(merge_key) == Some(key_value));
        if item_map.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(p) = position {
                current.remove(p);
            }
            continue;
        }
        match position {
            Some(p) => {
                let slot = &mut current[p];
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                merge_object(slot.as_object_mut().expect("made an object above"), item_map)?;
            }
            None => current.push(strip_directives_value(item)),
        }
    }
    Ok(current)
}

fn strip_directives_value(value: &Value) -> Value {
    let mut value = value.clone();
    if let Value::Object(map) = &mut value {
        strip_directives(map);
    }
    value
}

fn strip_directives(map: &mut Map<String, Value>) {
    map.retain(|k, _| !k.starts_with('$'));
    for value in map.values_mut() {
        match value {
            Value::Object(child) => strip_directives(child),
            Value::Array(items) => {
                for item in items {
                    if let Value::Object(child) = item {
                        strip_directives(child);
                    }
                }
            }
            _ => {}
        }
    }
}

/// RFC 6902: `add`, `remove`, `replace`, `move`, `copy` and `test`, all or nothing.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Array(operations) = patch else { return Err(PatchError::NotAnArray) };
    let mut working = target.clone();
    for (index, operation) in operations.iter().enumerate() {
        let bad = |reason: &str| PatchError::BadOperation { index, reason: reason.to_string() };
        let op = operation.get("op").and_then(Value::as_str).ok_or_else(|| bad("no \"op\""))?;
        let path = operation.get("path").and_then(Value::as_str).ok_or_else(|| bad("no \"path\""))?;
        let value = || operation.get("value").cloned().ok_or_else(|| bad("no \"value\""));
        let from = || operation.get("from").and_then(Value::as_str).ok_or_else(|| bad("no \"from\""));
        let missing = |p: &str| PatchError::MissingPath { index, path: p.to_string() };
        match op {
            "add" => pointer_add(&mut working, path, value()?).ok_or_else(|| missing(path))?,
            "remove" => {
                pointer_remove(&mut working, path).ok_or_else(|| missing(path))?;
            }
            "replace" => {
                let slot = working.pointer_mut(path).ok_or_else(|| missing(path))?;
                *slot = value()?;
            }
            "move" => {
                let from = from()?;
                let moved = pointer_remove(&mut working, from).ok_or_else(|| missing(from))?;
                pointer_add(&mut working, path, moved).ok_or_else(|| missing(path))?;
            }
            "copy" => {
                let from = from()?;
                let copied = working.pointer(from).cloned().ok_or_else(|| missing(from))?;
                pointer_add(&mut working, path, copied).ok_or_else(|| missing(path))?;
            }
            "test" => {
                if working.pointer(path) != Some(&value()?) {
                    return Err(PatchError::TestFailed { index, path: path.to_string() });
                }
            }
            other => return Err(bad(&format!("unknown op {other:?}"))),
        }
    }
    *target = working;
    Ok(())
}

/// Splits a JSON pointer into its parent pointer and its last token, unescaped (`~1` is `/`, `~0` is `~`).
fn split_pointer(path: &str) -> Option<(&str, String)> {
    let cut = path.rfind('/')?;
    Some((&path[..cut], path[cut + 1..].replace("~1", "/").replace("~0", "~")))
}

fn pointer_add(target: &mut Value, path: &str, value: Value) -> Option<()> {
    if path.is_empty() {
        *target = value;
        return Some(());
    }
    let (parent, token) = split_pointer(path)?;
    match target.pointer_mut(parent)? {
        Value::Object(map) => {
            map.insert(token, value);
        }
        Value::Array(items) => {
            if token == "-" {
                items.push(value);
            } else {
                let index: usize = token.parse().ok()?;
                if index > items.len() {
                    return None;
                }
                items.insert(index, value);
            }
        }
        _ => return None,
    }
    Some(())
}

fn pointer_remove(target: &mut Value, path: &str) -> Option<Value> {
    let (parent, token) = split_pointer(path)?;
    match target.pointer_mut(parent)? {
        Value::Object(map) => map.remove(&token),
        Value::Array(items) => {
            let index: usize = token.parse().ok()?;
            (index < items.len()).then(|| items.remove(index))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_null_deletes_and_objects_merge() {
        let mut node = json!({"metadata": {"annotations": {"a": "1", "b": "2"}, "labels": {"x": "y"}}});
        merge_patch(&mut node, &json!({"metadata": {"annotations": {"a": null, "c": "3"}}}));
        assert_eq!(node, json!({"metadata": {"annotations": {"b": "2", "c": "3"}, "labels": {"x": "y"}}}));
    }

    #[test]
    fn merge_patch_replaces_lists_and_scalars_whole() {
        let mut node = json!({"spec": {"podCIDRs": ["10.244.1.0/24"], "podCIDR": "10.244.1.0/24"}});
        merge_patch(&mut node, &json!({"spec": {"podCIDRs": ["10.244.2.0/24", "fd00::/64"]}}));
        assert_eq!(node["spec"]["podCIDRs"], json!(["10.244.2.0/24", "fd00::/64"]));
        assert_eq!(node["spec"]["podCIDR"], "10.244.1.0/24");
        merge_patch(&mut node, &json!({"spec": null}));
        assert_eq!(node, json!({}));
    }

    #[test]
    fn strategic_merge_merges_conditions_by_type() {
        let mut node = json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady"},
            {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated"},
        ]}});
        let patch = json!({"status": {"conditions": [
            {"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp"},
            {"type": "MemoryPressure", "status": "False"},
        ]}});
        strategic_merge(&mut node, &patch).unwrap();
        assert_eq!(
            node["status"]["conditions"],
            json!([
                {"type": "Ready", "status": "True", "reason": "KubeletReady"},
                {"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp"},
                {"type": "MemoryPressure", "status": "False"},
            ])
        );
    }

    #[test]
    fn strategic_merge_deletes_list_items_and_keys() {
        let mut node = json!({"metadata": {"annotations": {"a": "1"}}, "status": {"conditions": [
            {"type": "Ready", "status": "True"}, {"type": "NetworkUnavailable", "status": "True"},
        ]}});
        let patch = json!({"metadata": {"annotations": {"a": null}}, "status": {"conditions": [
            {"type": "NetworkUnavailable", "$patch": "delete"},
        ]}});
        strategic_merge(&mut node, &patch).unwrap();
        assert_eq!(
            node,
            json!({"metadata": {"annotations": {}}, "status": {"conditions": [
                {"type": "Ready", "status": "True"},
            ]}})
        );
    }

    #[test]
    fn strategic_merge_primitive_lists_are_sets_and_other_lists_replace() {
        let mut obj = json!({"spec": {"podCIDRs": ["10.244.1.0/24"], "taints": [{"key": "a"}]}, "metadata": {"finalizers": ["x", "y"]}});
        let patch = json!({
            "spec": {"podCIDRs": ["10.244.1.0/24", "fd00:1::/64"], "taints": [{"key": "b"}]},
            "metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]},
        });
        strategic_merge(&mut obj, &patch).unwrap();
        assert_eq!(obj["spec"]["podCIDRs"], json!(["10.244.1.0/24", "fd00:1::/64"]));
        assert_eq!(obj["spec"]["taints"], json!([{"key": "b"}]));
        assert_eq!(obj["metadata"]["finalizers"], json!(["y"]));
    }

    #[test]
    fn strategic_merge_replace_directive_and_set_element_order() {
        let mut obj = json!({"data": {"a": "1", "b": "2"}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        let patch = json!({
            "data": {"$patch": "replace", "c": "3"},
            "spec": {"$setElementOrder/containers": [{"name": "c"}], "containers": [{"name": "c", "image": "y"}]},
        });
        strategic_merge(&mut obj, &patch).unwrap();
        assert_eq!(obj, json!({"data": {"c": "3"}, "spec": {"containers": [{"name": "c", "image": "y"}]}}));
    }

    #[test]
    fn strategic_merge_rejects_a_keyed_item_without_its_key() {
        let mut obj = json!({});
        let err = strategic_merge(&mut obj, &json!({"status": {"conditions": [{"status": "True"}]}})).unwrap_err();
        assert_eq!(err, PatchError::MissingMergeKey { field: "conditions".into(), key: "type".into() });
        assert_eq!(strategic_merge(&mut obj, &json!([1])).unwrap_err(), PatchError::NotAnObject);
    }

    #[test]
    fn json_patch_operations_apply_all_or_nothing() {
        let mut node = json!({"metadata": {"annotations": {"a/b": "1"}}, "spec": {"podCIDRs": ["x"]}});
        let patch = json!([
            {"op": "add", "path": "/spec/podCIDRs/-", "value": "y"},
            {"op": "replace", "path": "/metadata/annotations/a~1b", "value": "2"},
            {"op": "copy", "from": "/spec/podCIDRs/0", "path": "/spec/podCIDR"},
            {"op": "test", "path": "/spec/podCIDR", "value": "x"},
        ]);
        json_patch(&mut node, &patch).unwrap();
        assert_eq!(
            node,
            json!({"metadata": {"annotations": {"a/b": "2"}}, "spec": {"podCIDRs": ["x", "y"], "podCIDR": "x"}})
        );

        let before = node.clone();
        let failing = json!([{"op": "remove", "path": "/spec/podCIDR"}, {"op": "remove", "path": "/nope"}]);
        assert_eq!(
            json_patch(&mut node, &failing).unwrap_err(),
            PatchError::MissingPath { index: 1, path: "/nope".into() }
        );
        assert_eq!(node, before);
    }
}
