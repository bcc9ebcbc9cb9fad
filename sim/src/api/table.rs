//! Server-side printing: `meta.k8s.io/v1` `Table` responses for `kubectl get`.
//!
//! kubectl asks for `application/json;as=Table;v=v1;g=meta.k8s.io` and prints whatever columns
//! the server returns, so without this an operator would see only names. The columns follow
//! the real server's printers for the types an operator looks at during an upgrade; custom
//! resources use their CRD's `additionalPrinterColumns` (simple `.a.b` paths).

use serde_json::{Value, json};

use crate::registry::ResourceType;

/// Whether the `Accept` header asks for a Table.
pub fn wanted(accept: &str) -> bool {
    accept.contains("as=Table")
}

/// Whether the `Accept` header asks for metadata only (`as=PartialObjectMetadata` or
/// `as=PartialObjectMetadataList`, what kube-rs' `list_metadata` and metadata watches send):
/// a client that needs only names, labels and versions of thousands of objects is not sent
/// their specs and statuses.
pub fn metadata_wanted(accept: &str) -> bool {
    !wanted(accept) && accept.contains("as=PartialObjectMetadata")
}

/// An object reduced to its metadata, as `meta.k8s.io/v1` `PartialObjectMetadata`.
pub fn partial(o: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": o["metadata"],
    })
}

/// Age as kubectl prints it (`45s`, `5m30s`, `3h`, `2d`).
fn age(created: &Value) -> String {
    let Some(ts) = created
        .as_str()
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
    else {
        return "<unknown>".into();
    };
    let secs = (jiff::Timestamp::now().as_second() - ts.as_second()).max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{m}m{}s", s % 60),
        s if s < 3 * 3600 => format!("{m}m"),
        s if s < 8 * 3600 => format!("{h}h{}m", m % 60),
        s if s < 48 * 3600 => format!("{h}h"),
        _ => format!("{d}d"),
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn col(name: &str, ty: &str) -> Value {
    json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" }, "description": "", "priority": 0})
}

fn dotted<'a>(obj: &'a Value, path: &str) -> &'a Value {
    let mut cur = obj;
    for seg in path.trim_start_matches('.').split('.') {
        cur = &cur[seg];
    }
    cur
}

fn cell(v: &Value) -> Value {
    match v {
        Value::Null => json!("<none>"),
        Value::String(_) | Value::Number(_) | Value::Bool(_) => v.clone(),
        other => json!(other.to_string()),
    }
}

fn pod_status(p: &Value) -> String {
    for c in p["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(r) = c["state"]["waiting"]["reason"].as_str() {
            return r.into();
        }
    }
    if !p["metadata"]["deletionTimestamp"].is_null() {
        return "Terminating".into();
    }
    match p["status"]["phase"].as_str() {
        Some("Succeeded") => "Completed".into(),
        Some(phase) => phase.into(),
        None => "Pending".into(),
    }
}

/// Column definitions and the cells of one object, by kind.
fn columns(rt: &ResourceType) -> Vec<Value> {
    let names: &[(&str, &str)] = match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment") => &[
            ("Name", "string"),
            ("Ready", "string"),
            ("Up-to-date", "integer"),
            ("Available", "integer"),
            ("Age", "date"),
        ],
        ("apps", "ReplicaSet") => &[
            ("Name", "string"),
            ("Desired", "integer"),
            ("Current", "integer"),
            ("Ready", "integer"),
            ("Age", "date"),
        ],
        ("apps", "StatefulSet") => &[("Name", "string"), ("Ready", "string"), ("Age", "date")],
        ("apps", "DaemonSet") => &[
            ("Name", "string"),
            ("Desired", "integer"),
            ("Current", "integer"),
            ("Ready", "integer"),
            ("Up-to-date", "integer"),
            ("Available", "integer"),
            ("Age", "date"),
        ],
        ("batch", "Job") => &[
            ("Name", "string"),
            ("Status", "string"),
            ("Completions", "string"),
            ("Age", "date"),
        ],
        ("", "Pod") => &[
            ("Name", "string"),
            ("Ready", "string"),
            ("Status", "string"),
            ("Restarts", "string"),
            ("Age", "date"),
        ],
        ("", "Service") => &[
            ("Name", "string"),
            ("Type", "string"),
            ("Cluster-IP", "string"),
            ("External-IP", "string"),
            ("Port(s)", "string"),
            ("Age", "date"),
        ],
        ("", "Namespace") => &[("Name", "string"), ("Status", "string"), ("Age", "date")],
        ("", "Secret") => &[
            ("Name", "string"),
            ("Type", "string"),
            ("Data", "string"),
            ("Age", "date"),
        ],
        ("", "ConfigMap") => &[("Name", "string"), ("Data", "string"), ("Age", "date")],
        ("", "Node") => &[
            ("Name", "string"),
            ("Status", "string"),
            ("Roles", "string"),
            ("Age", "date"),
            ("Version", "string"),
        ],
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            &[("Name", "string"), ("Created At", "date")]
        }
        _ => &[],
    };
    if !names.is_empty() {
        return names.iter().map(|(n, t)| col(n, t)).collect();
    }
    let mut cols = vec![col("Name", "string")];
    if let Some(crd) = &rt.crd {
        for c in crd.printer_columns.as_array().into_iter().flatten() {
            let name = c["name"].as_str().unwrap_or_default();
            if !name.is_empty() {
                cols.push(col(name, c["type"].as_str().unwrap_or("string")));
            }
        }
    }
    cols.push(col("Age", "date"));
    cols
}

fn cells(rt: &ResourceType, o: &Value) -> Vec<Value> {
    let name = o["metadata"]["name"].clone();
    let age = json!(age(&o["metadata"]["creationTimestamp"]));
    let s = &o["status"];
    let spec = &o["spec"];
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("apps", "Deployment") => vec![
            name,
            json!(format!(
                "{}/{}",
                int(&s["readyReplicas"]),
                int(&spec["replicas"])
            )),
            json!(int(&s["updatedReplicas"])),
            json!(int(&s["availableReplicas"])),
            age,
        ],
        ("apps", "ReplicaSet") => vec![
            name,
            json!(int(&spec["replicas"])),
            json!(int(&s["replicas"])),
            json!(int(&s["readyReplicas"])),
            age,
        ],
        ("apps", "StatefulSet") => vec![
            name,
            json!(format!(
                "{}/{}",
                int(&s["readyReplicas"]),
                int(&spec["replicas"])
            )),
            age,
        ],
        ("apps", "DaemonSet") => vec![
            name,
            json!(int(&s["desiredNumberScheduled"])),
            json!(int(&s["currentNumberScheduled"])),
            json!(int(&s["numberReady"])),
            json!(int(&s["updatedNumberScheduled"])),
            json!(int(&s["numberAvailable"])),
            age,
        ],
        ("batch", "Job") => {
            let complete = s["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Complete" && c["status"] == "True")
            });
            vec![
                name,
                json!(if complete { "Complete" } else { "Running" }),
                json!(format!(
                    "{}/{}",
                    int(&s["succeeded"]),
                    spec["completions"].as_i64().unwrap_or(1)
                )),
                age,
            ]
        }
        ("", "Pod") => {
            let statuses = s["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let total = spec["containers"].as_array().map(Vec::len).unwrap_or(0);
            let ready = statuses.iter().filter(|c| c["ready"] == true).count();
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(o)),
                json!("0"),
                age,
            ]
        }
        ("", "Service") => {
            let ports: Vec<String> = spec["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    format!(
                        "{}/{}",
                        int(&p["port"]),
                        p["protocol"].as_str().unwrap_or("TCP")
                    )
                })
                .collect();
            let external = s["loadBalancer"]["ingress"][0]["ip"]
                .as_str()
                .unwrap_or("<none>");
            vec![
                name,
                cell(&spec["type"]),
                cell(&spec["clusterIP"]),
                json!(external),
                json!(if ports.is_empty() {
                    "<none>".into()
                } else {
                    ports.join(",")
                }),
                age,
            ]
        }
        ("", "Namespace") => vec![name, cell(&s["phase"]), age],
        ("", "Secret") => {
            let n = o["data"].as_object().map(|m| m.len()).unwrap_or(0);
            vec![name, cell(&o["type"]), json!(n.to_string()), age]
        }
        ("", "ConfigMap") => {
            let n = o["data"].as_object().map(|m| m.len()).unwrap_or(0)
                + o["binaryData"].as_object().map(|m| m.len()).unwrap_or(0);
            vec![name, json!(n.to_string()), age]
        }
        ("", "Node") => vec![
            name,
            json!("Ready"),
            json!("<none>"),
            age,
            cell(&s["nodeInfo"]["kubeletVersion"]),
        ],
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            vec![name, o["metadata"]["creationTimestamp"].clone()]
        }
        _ => {
            let mut out = vec![name];
            if let Some(crd) = &rt.crd {
                for c in crd.printer_columns.as_array().into_iter().flatten() {
                    if c["name"].as_str().is_some_and(|n| !n.is_empty()) {
                        out.push(cell(dotted(o, c["jsonPath"].as_str().unwrap_or_default())));
                    }
                }
            }
            out.push(age);
            out
        }
    }
}

/// The Table for `items` (already converted for `rt`'s version).
pub fn render(
    rt: &ResourceType,
    items: &[Value],
    resource_version: &str,
    include_object: Option<&str>,
) -> Value {
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let object = match include_object {
                Some("Object") => o.clone(),
                Some("None") => Value::Null,
                _ => partial(o),
            };
            json!({"cells": cells(rt, o), "object": object})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns(rt),
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn metadata_only_is_asked_for_by_its_own_accept_header_not_by_a_tables() {
        assert!(metadata_wanted(
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
        ));
        assert!(!metadata_wanted(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!metadata_wanted("application/json"));
        let p = partial(&json!({"kind": "ConfigMap", "metadata": {"name": "a"}, "data": {}}));
        assert_eq!(
            p,
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": {"name": "a"}})
        );
    }

    #[test]
    fn deployment_rows_show_readiness() {
        let rt = Registry::new()
            .lookup("apps", "v1", "deployments")
            .expect("served");
        let d = json!({"metadata": {"name": "web", "creationTimestamp": crate::util::now()},
                       "spec": {"replicas": 2}, "status": {"readyReplicas": 1, "updatedReplicas": 2, "availableReplicas": 1}});
        let t = render(&rt, &[d], "5", None);
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["columnDefinitions"][1]["name"], "Ready");
        assert_eq!(t["rows"][0]["cells"][0], "web");
        assert_eq!(t["rows"][0]["cells"][1], "1/2");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let ten_min_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(600);
        assert_eq!(
            age(&json!(
                ten_min_ago.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
            )),
            "10m"
        );
    }
}
