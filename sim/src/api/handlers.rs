//! The generic verbs: get, list, watch, create, update, patch, delete, deletecollection, for
//! every type in the registry, plus the `/status` and `/scale` subresources.
//!
//! Every write is one [`Store::write`](crate::store::Store::write) call whose closure sees the
//! current object, so read-modify-write (patches, optimistic concurrency) is atomic.

use std::sync::Arc;

use http::{Method, Response};
use serde_json::{Value, json};

use crate::api::object::{self, name_of};
use crate::api::{ApiState, Body, Req, Target, json_response, patch, table, watch};
use crate::error::{ApiError, ApiResult, success_status};
use crate::store::{Write, meta_mut};
use crate::util;

pub async fn dispatch(
    state: &Arc<ApiState>,
    req: &Req,
    target: Target,
    legacy_watch: bool,
) -> ApiResult<Response<Body>> {
    let rt = &target.rt;
    if rt.create_only {
        return if req.method == Method::POST && target.name.is_none() {
            review(req, &target)
        } else {
            Err(ApiError::method_not_allowed(format!(
                "{} only supports create",
                rt.plural
            )))
        };
    }
    match (&req.method, target.name.is_some()) {
        (&Method::GET, false) if legacy_watch || req.flag("watch") => {
            watch::serve(state.clone(), req, &target)
        }
        (&Method::GET, false) => list(state, req, &target),
        (&Method::GET, true) => get(state, req, &target),
        (&Method::POST, false) => create(state, req, &target),
        (&Method::PUT, true) => update(state, req, &target),
        (&Method::PATCH, true) => patch_object(state, req, &target),
        (&Method::DELETE, true) => delete(state, req, &target),
        (&Method::DELETE, false) => delete_collection(state, req, &target),
        (m, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({m})"
        ))),
    }
}

fn ns_key(target: &Target) -> &str {
    target.namespace.as_deref().unwrap_or("")
}

fn get(state: &ApiState, req: &Req, target: &Target) -> ApiResult<Response<Body>> {
    let rt = &target.rt;
    let name = target.name.as_deref().unwrap_or_default();
    let obj = state
        .store
        .get(&rt.group, &rt.plural, ns_key(target), name)
        .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
    if target.subresource.as_deref() == Some("scale") {
        return Ok(json_response(200, &scale_view(&obj)));
    }
    if target.subresource.as_deref() == Some("log") {
        return pod_log(&obj, req.q("container"));
    }
    let obj = object::output(rt, obj);
    if table::wanted(&req.accept) {
        let rv = obj["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        return Ok(json_response(
            200,
            &table::render(rt, &[obj], &rv, req.q("includeObject")),
        ));
    }
    if table::metadata_wanted(&req.accept) {
        return Ok(json_response(200, &table::partial(&obj)));
    }
    Ok(json_response(200, &obj))
}

/// `pods/{name}/log`: a line per start for a running container; a waiting container has no
/// logs yet (400, as from a real kubelet).
fn pod_log(pod: &Value, container: Option<&str>) -> ApiResult<Response<Body>> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let containers = pod["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let c = match container {
        Some(want) => containers.iter().find(|c| c["name"] == want),
        None if containers.len() == 1 => containers.first(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}"
            )));
        }
    }
    .ok_or_else(|| ApiError::bad_request(format!("container not found in pod {name}")))?;
    let cname = c["name"].as_str().unwrap_or_default();
    let status = pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == cname));
    if let Some(reason) = status.and_then(|s| s["state"]["waiting"]["reason"].as_str()) {
        return Err(ApiError::bad_request(format!(
            "container \"{cname}\" in pod \"{name}\" is waiting to start: {reason}"
        )));
    }
    let text = format!(
        "skoala-sim: container {cname} ({}) started on sim-node-1\n",
        c["image"].as_str().unwrap_or_default()
    );
    Ok(Response::builder()
        .status(200)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(crate::api::full_body(text))
        .unwrap_or_else(|_| Response::new(crate::api::full_body(""))))
}

/// The `autoscaling/v1` Scale view of a workload.
fn scale_view(obj: &Value) -> Value {
    let m = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
            "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"]},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0)},
    })
}

fn list(state: &ApiState, req: &Req, target: &Target) -> ApiResult<Response<Body>> {
    let rt = &target.rt;
    let (labels, fields) = req.selectors()?;
    let (items, rv) = state
        .store
        .list(&rt.group, &rt.plural, target.namespace.as_deref());
    let items: Vec<Value> = items
        .into_iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
        .map(|o| object::output(rt, o))
        .collect();
    if table::wanted(&req.accept) {
        return Ok(json_response(
            200,
            &table::render(rt, &items, &rv.to_string(), req.q("includeObject")),
        ));
    }
    if table::metadata_wanted(&req.accept) {
        let items: Vec<Value> = items.iter().map(table::partial).collect();
        return Ok(json_response(
            200,
            &json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": {"resourceVersion": rv.to_string()},
                "items": items,
            }),
        ));
    }
    Ok(json_response(
        200,
        &json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        }),
    ))
}

fn dry_run(req: &Req) -> bool {
    req.q("dryRun").is_some()
}

/// Adds or refreshes this request's field manager in `metadata.managedFields`.
fn record_manager(obj: &mut Value, req: &Req, operation: &str) {
    let manager = req.q("fieldManager").unwrap_or(match operation {
        "Apply" => "",
        _ => "unknown",
    });
    if manager.is_empty() {
        return;
    }
    let api_version = obj["apiVersion"].clone();
    let meta = meta_mut(obj);
    let entries = meta.entry("managedFields").or_insert_with(|| json!([]));
    let Some(list) = entries.as_array_mut() else {
        return;
    };
    list.retain(|e| !(e["manager"] == manager && e["operation"] == operation));
    list.push(json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": util::now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": {},
    }));
}

/// Side effects of a CRD write on the registry (run inside the store write, before the
/// object is stored, so a CRD is never stored without its types being served).
fn sync_crd(state: &ApiState, target: &Target, obj: &Value) -> ApiResult<()> {
    if target.rt.group == "apiextensions.k8s.io" && target.rt.plural == "customresourcedefinitions"
    {
        let name = name_of(obj);
        state.registry.sync_crd(&name, Some(obj)).map_err(|why| {
            ApiError::invalid(
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                &name,
                why,
            )
        })?;
    }
    Ok(())
}

fn create(state: &ApiState, req: &Req, target: &Target) -> ApiResult<Response<Body>> {
    let rt = &target.rt;
    object::check_namespace(state, target)?;
    let body = object::decode_body(req)?;
    let mut obj = object::prepare_create(target, body, &req.validation)?;
    record_manager(&mut obj, req, "Update");
    let name = name_of(&obj);
    let dry = dry_run(req);
    let mut preview = None;
    let stored = state
        .store
        .write(&rt.group, &rt.plural, ns_key(target), &name, |cur| {
            if cur.is_some() {
                return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
            }
            if dry {
                preview = Some(obj);
                return Ok(Write::Keep);
            }
            sync_crd(state, target, &obj)?;
            Ok(Write::Create(obj))
        })?;
    let out = preview.or(stored).unwrap_or(Value::Null);
    Ok(json_response(201, &object::output(rt, out)))
}

/// Decides what an update of `cur` to `new` becomes: a store update, or the final delete of an
/// object whose last finalizer was just removed. For the delete, `answer` gets what the client
/// is answered: like a real server, the object as updated (finalizers gone) at its last
/// `resourceVersion`, while watchers see it deleted as it was last stored.
fn finish_update(new: Value, answer: &mut Option<Value>) -> Write {
    let deleting = !new["metadata"]["deletionTimestamp"].is_null();
    let finalizers = new["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if deleting && !finalizers {
        *answer = Some(new);
        Write::Delete
    } else {
        Write::Update(new)
    }
}

fn update(state: &Arc<ApiState>, req: &Req, target: &Target) -> ApiResult<Response<Body>> {
    let rt = &target.rt;
    let name = target.name.clone().unwrap_or_default();
    let body = object::decode_body(req)?;
    if target.subresource.as_deref() == Some("scale") {
        let replicas = body["spec"]["replicas"].clone();
        return write_scale(state, target, &name, replicas);
    }
    object::require_resource_version(target, &body)?;
    let status_only = target.subresource.as_deref() == Some("status");
    let fv = &req.validation;
    let dry = dry_run(req);
    let mut preview = None;
    let mut deleted = false;
    let stored = state
        .store
        .write(&rt.group, &rt.plural, ns_key(target), &name, |cur| {
            let Some(cur) = cur else {
                return Err(ApiError::not_found(&rt.group, &rt.plural, &name));
            };
            let mut new = if status_only {
                object::prepare_status_update(target, cur, &body, fv)?
            } else {
                object::prepare_update(target, cur, body, fv)?
            };
            if new == *cur {
                return Ok(Write::Keep);
            }
            record_manager(&mut new, req, "Update");
            if dry {
                preview = Some(new);
                return Ok(Write::Keep);
            }
            sync_crd(state, target, &new)?;
            let w = finish_update(new, &mut preview);
            deleted = matches!(w, Write::Delete);
            Ok(w)
        })?;
    if deleted {
        after_delete(state, target, stored.as_ref());
    }
    let out = preview.or(stored).unwrap_or(Value::Null);
    Ok(json_response(200, &object::output(rt, out)))
}

fn write_scale(
    state: &ApiState,
    target: &Target,
    name: &str,
    replicas: Value,
) -> ApiResult<Response<Body>> {
    let rt = &target.rt;
    let stored = state
        .store
        .write(&rt.group, &rt.plural, ns_key(target), name, |cur| {
            let Some(cur) = cur else {
                return Err(ApiError::not_found(&rt.group, &rt.plural, name));
            };
            let mut new = cur.clone();
            if !replicas.is_i64() {
                return Err(ApiError::invalid(
                    &rt.group,
                    &rt.kind,
                    name,
                    "spec.replicas: Required value",
                ));
            }
            new["spec"]["replicas"] = replicas;
            let g = cur["metadata"]["generation"].as_i64().unwrap_or(1);
            if new != *cur {
                meta_mut(&mut new).insert("generation".into(), json!(g + 1));
            }
            Ok(Write::Update(new))
        })?;
    Ok(json_response(
        200,
        &scale_view(&stored.unwrap_or(Value::Null)),
    ))
}

fn patch_object(state: &Arc<ApiState>, req: &Req, target: &Target) -> ApiResult<Response<Body>> {
    let rt = &target.rt;
    let name = target.name.clone().unwrap_or_default();
    let ct = req
        .content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let is_apply = ct == "application/apply-patch+yaml";
    let patch_body: Value = match ct.as_str() {
        "application/apply-patch+yaml" => serde_yaml::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("invalid apply configuration: {e}")))?,
        "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "application/json-patch+json" => serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("invalid patch body: {e}")))?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if ct == "application/strategic-merge-patch+json" && rt.crd.is_some() {
        return Err(ApiError::unsupported_media_type(
            "application/strategic-merge-patch+json is not supported for custom resources",
        ));
    }
    if is_apply && req.q("fieldManager").is_none() {
        return Err(ApiError::bad_request(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    }
    if target.subresource.as_deref() == Some("scale") {
        let mut view = match state
            .store
            .get(&rt.group, &rt.plural, ns_key(target), &name)
        {
            Some(o) => scale_view(&o),
            None => return Err(ApiError::not_found(&rt.group, &rt.plural, &name)),
        };
        match ct.as_str() {
            "application/json-patch+json" => patch::json_patch(&mut view, &patch_body)?,
            _ => patch::merge_patch(&mut view, &patch_body),
        }
        return write_scale(state, target, &name, view["spec"]["replicas"].clone());
    }
    object::check_namespace(state, target)?;
    let status_only = target.subresource.as_deref() == Some("status");
    let fv = &req.validation;
    let manager = req.q("fieldManager").unwrap_or_default().to_string();
    let dry = dry_run(req);
    let mut preview = None;
    let mut created = false;
    let mut deleted = false;
    let mut applied_uid = None;
    let stored = state
        .store
        .write(&rt.group, &rt.plural, ns_key(target), &name, |cur| {
            let Some(cur) = cur else {
                if !is_apply || status_only {
                    return Err(ApiError::not_found(&rt.group, &rt.plural, &name));
                }
                // Server-side apply creates what is absent (Helm 4 installs this way).
                let mut obj = object::prepare_create(target, patch_body.clone(), fv)?;
                record_manager(&mut obj, req, "Apply");
                if dry {
                    preview = Some(obj);
                    return Ok(Write::Keep);
                }
                sync_crd(state, target, &obj)?;
                created = true;
                return Ok(Write::Create(obj));
            };
            let mut new = cur.clone();
            match ct.as_str() {
                "application/merge-patch+json" => patch::merge_patch(&mut new, &patch_body),
                "application/strategic-merge-patch+json" => {
                    patch::strategic_merge(&mut new, &patch_body)
                }
                "application/json-patch+json" => patch::json_patch(&mut new, &patch_body)?,
                _ => {
                    let uid = cur["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let previous = state
                        .applied
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&(uid.clone(), manager.clone()))
                        .cloned();
                    let mut applied = patch_body.clone();
                    if status_only {
                        // Only status is applied through /status.
                        applied = json!({"status": applied["status"]});
                    }
                    patch::apply(&mut new, &applied, previous.as_ref());
                    // An apply does not carry a resourceVersion precondition unless the
                    // configuration names one.
                    if patch_body["metadata"]["resourceVersion"].is_null() {
                        new["metadata"]["resourceVersion"] =
                            cur["metadata"]["resourceVersion"].clone();
                    }
                    applied_uid = Some(uid);
                }
            }
            let mut new = if status_only {
                object::prepare_status_update(target, cur, &new, fv)?
            } else {
                object::prepare_update(target, cur, new, fv)?
            };
            if new == *cur {
                return Ok(Write::Keep);
            }
            record_manager(&mut new, req, if is_apply { "Apply" } else { "Update" });
            if dry {
                preview = Some(new);
                return Ok(Write::Keep);
            }
            sync_crd(state, target, &new)?;
            let w = finish_update(new, &mut preview);
            deleted = matches!(w, Write::Delete);
            Ok(w)
        })?;
    if is_apply && !dry {
        let uid = applied_uid.or_else(|| {
            stored
                .as_ref()
                .and_then(|o| o["metadata"]["uid"].as_str().map(String::from))
        });
        if let Some(uid) = uid {
            state
                .applied
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((uid, manager), patch_body);
        }
    }
    if deleted {
        after_delete(state, target, stored.as_ref());
    }
    let out = preview.or(stored).unwrap_or(Value::Null);
    Ok(json_response(
        if created { 201 } else { 200 },
        &object::output(rt, out),
    ))
}

fn delete(state: &Arc<ApiState>, req: &Req, target: &Target) -> ApiResult<Response<Body>> {
    let rt = &target.rt;
    let name = target.name.clone().unwrap_or_default();
    let opts: Value = if req.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&req.body).unwrap_or(Value::Null)
    };
    let want_rv = opts["preconditions"]["resourceVersion"]
        .as_str()
        .map(String::from);
    let want_uid = opts["preconditions"]["uid"].as_str().map(String::from);
    let dry = dry_run(req);
    let mut deleted = false;
    let stored = state
        .store
        .write(&rt.group, &rt.plural, ns_key(target), &name, |cur| {
            let Some(cur) = cur else {
                return Err(ApiError::not_found(&rt.group, &rt.plural, &name));
            };
            let m = &cur["metadata"];
            if want_rv
                .as_deref()
                .is_some_and(|rv| m["resourceVersion"] != rv)
                || want_uid.as_deref().is_some_and(|u| m["uid"] != u)
            {
                return Err(ApiError::conflict(&rt.group, &rt.plural, &name));
            }
            if dry {
                return Ok(Write::Keep);
            }
            let has_finalizers = m["finalizers"].as_array().is_some_and(|f| !f.is_empty());
            if has_finalizers {
                if m["deletionTimestamp"].is_null() {
                    // As a real server: the object's controllers must notice that it is going
                    // away, so its generation moves; the grace period is over at once.
                    let mut new = cur.clone();
                    let generation = m["generation"].as_i64();
                    let meta = meta_mut(&mut new);
                    meta.insert("deletionTimestamp".into(), json!(util::now()));
                    meta.insert("deletionGracePeriodSeconds".into(), json!(0));
                    if let Some(g) = generation {
                        meta.insert("generation".into(), json!(g + 1));
                    }
                    return Ok(Write::Update(new));
                }
                return Ok(Write::Keep);
            }
            deleted = true;
            Ok(Write::Delete)
        })?;
    if deleted {
        let orphan =
            opts["propagationPolicy"] == "Orphan" || req.q("propagationPolicy") == Some("Orphan");
        if orphan {
            forget(state, stored.as_ref());
        } else {
            after_delete(state, target, stored.as_ref());
        }
    }
    let out = stored.unwrap_or(Value::Null);
    // Like a real server: an object still being finalized comes back as the object; one
    // deleted at once as a Success Status (custom resources too, checked by `sim_parity`).
    if !deleted {
        return Ok(json_response(200, &object::output(rt, out)));
    }
    let uid = out["metadata"]["uid"].as_str().unwrap_or_default();
    Ok(json_response(
        200,
        &success_status(&rt.group, &rt.plural, &name, uid),
    ))
}

/// Drops server-side bookkeeping for a deleted object.
fn forget(state: &ApiState, obj: Option<&Value>) {
    if let Some(uid) = obj.and_then(|o| o["metadata"]["uid"].as_str()) {
        state
            .applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(u, _), _| u != uid);
    }
}

/// What deleting an object implies: a namespace takes its contents, a CRD its types and
/// objects, and every object its dependents (garbage collection by ownerReferences).
pub fn after_delete(state: &ApiState, target: &Target, obj: Option<&Value>) {
    let Some(obj) = obj else { return };
    forget(state, Some(obj));
    let rt = &target.rt;
    let name = name_of(obj);
    if rt.group.is_empty() && rt.plural == "namespaces" {
        for (g, p, n) in state.store.keys_in_namespace(&name) {
            delete_cascading(state, &g, &p, &name, &n);
        }
    }
    if rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions" {
        let group = obj["spec"]["group"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let plural = obj["spec"]["names"]["plural"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let _ = state.registry.sync_crd(&name, None);
        let (items, _) = state.store.list(&group, &plural, None);
        for o in items {
            let ns = o["metadata"]["namespace"].as_str().unwrap_or_default();
            delete_cascading(state, &group, &plural, ns, &name_of(&o));
        }
    }
    if let Some(uid) = obj["metadata"]["uid"].as_str() {
        for (g, p, ns, n) in state.store.dependents_of(uid) {
            delete_cascading(state, &g, &p, &ns, &n);
        }
    }
}

/// Deletes one object (ignoring finalizers: this is the server cleaning up) and its dependents.
pub fn delete_cascading(state: &ApiState, group: &str, plural: &str, ns: &str, name: &str) {
    let Ok(Some(obj)) = state.store.write(group, plural, ns, name, |cur| {
        Ok(if cur.is_some() {
            Write::Delete
        } else {
            Write::Keep
        })
    }) else {
        return;
    };
    forget(state, Some(&obj));
    if let Some(uid) = obj["metadata"]["uid"].as_str() {
        for (g, p, ns, n) in state.store.dependents_of(uid) {
            delete_cascading(state, &g, &p, &ns, &n);
        }
    }
}

fn delete_collection(
    state: &Arc<ApiState>,
    req: &Req,
    target: &Target,
) -> ApiResult<Response<Body>> {
    let rt = &target.rt;
    let (labels, fields) = req.selectors()?;
    let (items, _) = state
        .store
        .list(&rt.group, &rt.plural, target.namespace.as_deref());
    let mut out = vec![];
    for o in items
        .into_iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
    {
        let ns = o["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = name_of(&o);
        let t = Target {
            rt: rt.clone(),
            namespace: Some(ns.clone()),
            name: Some(name.clone()),
            subresource: None,
        };
        if let Ok(Some(obj)) = state.store.write(&rt.group, &rt.plural, &ns, &name, |cur| {
            Ok(if cur.is_some() {
                Write::Delete
            } else {
                Write::Keep
            })
        }) {
            after_delete(state, &t, Some(&obj));
            out.push(object::output(rt, obj));
        }
    }
    Ok(json_response(
        200,
        &json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": {"resourceVersion": state.store.current_rv().to_string()},
            "items": out,
        }),
    ))
}

/// Access reviews: the emulated cluster's single user may do everything.
fn review(req: &Req, target: &Target) -> ApiResult<Response<Body>> {
    let mut obj = object::decode_body(req)?;
    let status = if target.rt.kind == "SelfSubjectRulesReview" {
        json!({
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": false,
        })
    } else {
        json!({"allowed": true, "reason": "skoala-sim grants its single user everything"})
    };
    obj["status"] = status;
    meta_mut(&mut obj);
    Ok(json_response(201, &object::output(&target.rt, obj)))
}
