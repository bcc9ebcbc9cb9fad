//! Discovery documents: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/G`, `/apis/G/V`.
//!
//! Only the legacy (unaggregated) form is served: client-go asks for aggregated discovery
//! first and falls back to these documents when the response is plain `application/json`.
//! Everything is generated from the registry, so a new CRD shows up here at once.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::api::ApiState;
use crate::registry::ResourceType;

/// The Kubernetes version the emulator claims to be.
pub const GIT_VERSION: &str = "v1.34.0";

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "34",
        "emulationMajor": "1",
        "emulationMinor": "34",
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// Group name → its versions, preferred first.
fn groups(types: &[ResourceType]) -> BTreeMap<String, Vec<(String, bool)>> {
    let mut out: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
    for t in types.iter().filter(|t| !t.group.is_empty()) {
        let versions = out.entry(t.group.clone()).or_default();
        match versions.iter_mut().find(|(v, _)| *v == t.version) {
            Some(e) => e.1 |= t.preferred,
            None => versions.push((t.version.clone(), t.preferred)),
        }
    }
    for versions in out.values_mut() {
        versions.sort_by_key(|(_, preferred)| !preferred);
    }
    out
}

fn group_doc(name: &str, versions: &[(String, bool)]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|(v, _)| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

fn resource_list(group: &str, version: &str, types: &[ResourceType]) -> Value {
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let mut resources = vec![];
    for t in types
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        let mut r = json!({
            "name": t.plural,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": t.verbs(),
        });
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        resources.push(r);
        if t.status {
            resources.push(json!({
                "name": format!("{}/status", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if t.group.is_empty() && t.plural == "pods" {
            resources.push(json!({
                "name": "pods/log",
                "singularName": "",
                "namespaced": true,
                "kind": "Pod",
                "verbs": ["get"],
            }));
        }
        if t.scale {
            resources.push(json!({
                "name": format!("{}/scale", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    })
}

/// The discovery document at `segs`, if it is a discovery path.
pub fn serve(state: &ApiState, segs: &[&str]) -> Option<Value> {
    let types = state.registry.all();
    match segs {
        ["api"] => {
            let addr = state
                .server_address
                .lock()
                .map(|a| a.clone())
                .unwrap_or_default();
            Some(json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}],
            }))
        }
        ["api", v] if *v == "v1" => Some(resource_list("", v, &types)),
        ["apis"] => {
            let list: Vec<Value> = groups(&types)
                .iter()
                .map(|(name, versions)| group_doc(name, versions))
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list}))
        }
        ["apis", g] => {
            let all = groups(&types);
            let versions = all.get(*g)?;
            let mut doc = group_doc(g, versions);
            doc["kind"] = json!("APIGroup");
            doc["apiVersion"] = json!("v1");
            Some(doc)
        }
        ["apis", g, v] if state.registry.has_group_version(g, v) => {
            Some(resource_list(g, v, &types))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Behaviour;
    use std::time::Duration;

    fn state() -> std::sync::Arc<ApiState> {
        ApiState::new(
            "t",
            Behaviour {
                readiness_delay: Duration::from_millis(1),
                never_ready_image: ":broken".into(),
            },
        )
    }

    #[test]
    fn apps_v1_lists_deployments_with_status_and_scale() {
        let s = state();
        let doc = serve(&s, &["apis", "apps", "v1"]).expect("served");
        let names: Vec<&str> = doc["resources"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(names.contains(&"deployments"));
        assert!(names.contains(&"deployments/status"));
        assert!(names.contains(&"deployments/scale"));
        assert!(serve(&s, &["apis", "example.com", "v1"]).is_none());
    }

    #[test]
    fn apis_lists_groups_with_preferred_version() {
        let s = state();
        let doc = serve(&s, &["apis"]).expect("served");
        let apps = doc["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .find(|g| g["name"] == "apps")
            .expect("apps");
        assert_eq!(apps["preferredVersion"]["groupVersion"], "apps/v1");
    }
}
