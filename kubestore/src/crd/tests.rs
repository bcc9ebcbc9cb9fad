use serde_json::{Value, json};
use skoala_plan::{PhaseKind, TargetPhase, UpgradePlan as PlanDocument};

use super::*;

/// The `openAPIV3Schema` of `kind`'s CRD, as JSON.
fn root(kind: Kind) -> Value {
    let crd = &crds()[Kind::ALL.iter().position(|k| *k == kind).unwrap()];
    assert_eq!(crd.spec.names.kind, kind.name());
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

/// Where `schema` breaks the API server's rules for a structural schema, or leaves a string,
/// list or map without an upper bound (which the CEL cost estimate then takes as the request
/// size limit).
fn violations(schema: &Value, path: &str, out: &mut Vec<String>) {
    let node = schema.as_object().expect("a schema node is an object");
    for forbidden in [
        "$ref",
        "$defs",
        "definitions",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "title",
    ] {
        if node.contains_key(forbidden) {
            out.push(format!("{path}: {forbidden}"));
        }
    }
    let opaque = node.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    let int_or_string = node.get("x-kubernetes-int-or-string") == Some(&json!(true));
    match node.get("type").and_then(Value::as_str) {
        None if int_or_string || (opaque && !node.contains_key("properties")) => {}
        None => out.push(format!("{path}: no type")),
        Some("string") if !node.contains_key("maxLength") && !node.contains_key("enum") => {
            out.push(format!("{path}: string without maxLength"))
        }
        Some("array") if !node.contains_key("maxItems") => {
            out.push(format!("{path}: list without maxItems"))
        }
        Some("object") if node.contains_key("additionalProperties") => {
            if node.contains_key("properties") {
                out.push(format!("{path}: properties and additionalProperties"));
            }
            if !node.contains_key("maxProperties") {
                out.push(format!("{path}: map without maxProperties"));
            }
        }
        _ => {}
    }
    if let Some(format) = node.get("format").and_then(Value::as_str)
        && !["int32", "int64", "byte", "date-time"].contains(&format)
    {
        out.push(format!("{path}: format {format}"));
    }
    if let Some(Value::Object(properties)) = node.get("properties") {
        for (name, child) in properties {
            violations(child, &format!("{path}.{name}"), out);
        }
    }
    for (key, suffix) in [("items", "[]"), ("additionalProperties", "{}")] {
        match node.get(key) {
            Some(child @ Value::Object(_)) => violations(child, &format!("{path}{suffix}"), out),
            Some(other) => out.push(format!("{path}: {key}: {other}")),
            None => {}
        }
    }
}

/// Paths in `value` that `schema` does not declare: the API server would prune them (unless
/// an object above keeps unknown fields).
fn undeclared(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true))
        && schema.get("properties").is_none()
    {
        return;
    }
    match value {
        Value::Object(fields) => {
            for (name, child) in fields {
                let declared = schema
                    .get("properties")
                    .and_then(|p| p.get(name))
                    .or_else(|| schema.get("additionalProperties"));
                match declared {
                    Some(s) => undeclared(s, child, &format!("{path}.{name}"), out),
                    None => out.push(format!("{path}.{name}")),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                undeclared(&schema["items"], item, &format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

/// The complete example of `docs/plan-reference.md`, every field set.
fn full_plan() -> PlanDocument {
    let mut doc = PlanDocument::from_yaml(
        r#"
apiVersion: fleet.skoala.io/v1alpha1
kind: UpgradePlan
metadata: {name: p}
spec:
  version: 0.19.2
  repository: {name: skoala, url: https://charts.example.com, digests: {skoala: "sha256:00"}}
  chartSource: relay
  window: {schedule: "0 2 * * SAT", duration: 4h, timeZone: Asia/Shanghai}
  windows:
    emea: {days: [Sat, Sun], startTime: "02:00", endTime: "06:00", timeZone: Europe/Berlin}
  windowLabel: fleet.skoala.io/window
  strategy: {canary: 1, maxConcurrency: 10%, maxFailures: 2, rollbackOnFailure: true}
  requireApproval: beforeWorkers
  convergence: auto
  expectedDuration: 10m
  clusters: {matchLabels: {env: prod}, names: [a, b]}
"#,
    )
    .unwrap();
    doc.spec.windows.get_mut("emea").unwrap().schedule = Some("0 2 * * SUN".into());
    doc
}

fn at(seconds: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(seconds).unwrap()
}

#[test]
fn every_schema_is_structural_and_bounded() {
    for kind in Kind::ALL {
        let mut out = Vec::new();
        violations(&root(kind), kind.name(), &mut out);
        assert!(out.is_empty(), "{out:#?}");
    }
}

#[test]
fn the_structural_check_catches_what_schemars_emits_unprocessed() {
    let mut out = Vec::new();
    violations(
        &schema::generate::<skoala_plan::document::PlanSpec>(),
        "",
        &mut out,
    );
    assert!(out.iter().any(|v| v.contains("anyOf")), "{out:#?}");
    assert!(
        out.iter().any(|v| v.contains("without maxLength")),
        "{out:#?}"
    );
}

#[test]
fn every_field_of_a_full_plan_is_declared_and_every_object_keeps_unknown_fields() {
    let spec = &root(Kind::UpgradePlan)["properties"]["spec"];
    let mut out = Vec::new();
    undeclared(
        spec,
        &serde_json::to_value(&full_plan().spec).unwrap(),
        "spec",
        &mut out,
    );
    assert!(out.is_empty(), "{out:#?}");
    for path in ["", ".repository", ".window", ".strategy", ".clusters"] {
        let mut node = spec;
        for part in path.split('.').skip(1) {
            node = &node["properties"][part];
        }
        assert_eq!(
            node["x-kubernetes-preserve-unknown-fields"],
            json!(true),
            "spec{path}"
        );
    }
    let window = &spec["properties"]["windows"]["additionalProperties"];
    assert_eq!(window["x-kubernetes-preserve-unknown-fields"], json!(true));
}

#[test]
fn max_concurrency_is_an_int_or_string() {
    let spec = &root(Kind::UpgradePlan)["properties"]["spec"];
    let node = &spec["properties"]["strategy"]["properties"]["maxConcurrency"];
    assert_eq!(node["x-kubernetes-int-or-string"], json!(true), "{node}");
    assert!(
        node.get("type").is_none() && node.get("anyOf").is_none(),
        "{node}"
    );
    assert!(node["description"].as_str().unwrap().contains("10%"));
}

#[test]
fn explicit_cluster_names_are_bounded_for_the_cel_cost_estimate() {
    let spec = &root(Kind::UpgradePlan)["properties"]["spec"];
    let names = &spec["properties"]["clusters"]["properties"]["names"];
    assert_eq!(names["maxItems"], json!(20_000));
    assert_eq!(names["items"]["maxLength"], json!(253));
}

#[test]
fn every_field_of_a_full_plan_status_is_declared() {
    let status = UpgradePlanStatus {
        observed_generation: Some(3),
        writer: Some(Writer {
            identity: "coordinator-0_3f2a".into(),
            term: 7,
        }),
        accepted: Some(Accepted {
            generation: 1,
            at: at(1_800_000_000),
        }),
        active: true,
        phase: Some(PhaseKind::Workers),
        reason: "r".into(),
        stage: Some(3),
        counts: Some(Counts::default()),
        waiting: "w".into(),
        failures: vec![Failure {
            cluster: "c".into(),
            name: "n".into(),
            step: "verify".into(),
            message: "m".into(),
        }],
        history: Some(History::default()),
        control: Some(Control {
            observed_resume: Some("x".into()),
            approved_through: Some(2),
        }),
        rollout: Some(json!({"anything": {"nested": [1]}})),
        conditions: vec![Condition {
            type_: PlanCondition::Accepted,
            status: ConditionStatus::True,
            observed_generation: Some(1),
            last_transition_time: at(1_800_000_000),
            reason: "Accepted".into(),
            message: String::new(),
        }],
    };
    let value = serde_json::to_value(&status).unwrap();
    assert_eq!(value["phase"], json!("workers"));
    assert_eq!(value["counts"]["rollingBack"], json!(0));
    assert_eq!(value["conditions"][0]["type"], json!("Accepted"));
    assert_eq!(value["accepted"]["at"], json!("2027-01-15T08:00:00Z"));
    let mut out = Vec::new();
    undeclared(
        &root(Kind::UpgradePlan)["properties"]["status"],
        &value,
        "status",
        &mut out,
    );
    assert!(out.is_empty(), "{out:#?}");
    let back: UpgradePlanStatus = serde_json::from_value(value).unwrap();
    assert_eq!(back, status);
}

#[test]
fn every_field_of_a_full_cluster_status_is_declared() {
    let status = FleetClusterStatus {
        writer: None,
        registration: Some(Registration {
            registered_at: at(1),
            token_id: Some("a1b2c3d4e5f6".into()),
            tokens_used: vec!["a1b2c3d4e5f6".into()],
        }),
        revoked_at: Some(at(2)),
        certificates: vec![CertificateRecord {
            serial: "01".into(),
            issued_at: at(1),
            not_after: at(3),
            revoked_at: Some(at(2)),
            first_session_at: Some(at(1)),
        }],
        agent: Some(Agent {
            agent_version: "0.1.0".into(),
            helm_version: "v4.0.0".into(),
        }),
        inventory: Some("AAAA".into()),
        release: Some(Release {
            chart_version: "0.19.2".into(),
            status: skoala_plan::ReleaseStatus::PendingUpgrade,
            revision: 4,
        }),
        proposed: Some(Proposed {
            name: Some("n".into()),
            labels: [("env".to_string(), "prod".to_string())].into(),
        }),
        connection: Some(Connection {
            state: ConnectionState::Online,
            since: at(1),
        }),
        plans: vec![ClusterPlan {
            plan: "p".into(),
            order: 17,
            state: TargetPhase::Running,
            progress: json!({"state": {"state": "running"}, "attempts": 1}),
        }],
        conditions: vec![Condition {
            type_: ClusterCondition::IdentityProposed,
            status: ConditionStatus::True,
            observed_generation: None,
            last_transition_time: at(1),
            reason: "Proposed".into(),
            message: String::new(),
        }],
    };
    let value = serde_json::to_value(&status).unwrap();
    assert_eq!(value["release"]["status"], json!("pending-upgrade"));
    assert_eq!(value["connection"]["state"], json!("Online"));
    assert_eq!(value["plans"][0]["state"], json!("running"));
    let mut out = Vec::new();
    undeclared(
        &root(Kind::FleetCluster)["properties"]["status"],
        &value,
        "status",
        &mut out,
    );
    assert!(out.is_empty(), "{out:#?}");
    assert_eq!(
        serde_json::from_value::<FleetClusterStatus>(value).unwrap(),
        status
    );
}

#[test]
fn the_phase_enum_lists_every_phase_name() {
    let status = &root(Kind::UpgradePlan)["properties"]["status"];
    let names: Vec<&str> = PhaseKind::ALL.iter().map(|p| p.as_str()).collect();
    assert_eq!(status["properties"]["phase"]["enum"], json!(names));
    for phase in PhaseKind::ALL {
        let status = UpgradePlanStatus {
            phase: Some(phase),
            ..Default::default()
        };
        let value = serde_json::to_value(&status).unwrap();
        assert_eq!(value["phase"], json!(phase.as_str()));
        assert_eq!(
            serde_json::from_value::<UpgradePlanStatus>(value).unwrap(),
            status
        );
    }
}

#[test]
fn a_log_segment_round_trips_with_its_encoding_spelled_as_documented() {
    let spec = FleetLogSpec {
        stream: Stream::Events,
        plan: Some("p".into()),
        first_id: 1,
        last_id: 2,
        from_ms: 3,
        to_ms: 4,
        sealed: true,
        encoding: Encoding::GzipJsonl,
        data: "AAAA".into(),
    };
    let value = serde_json::to_value(&spec).unwrap();
    assert_eq!(value["encoding"], json!("gzip+jsonl"));
    assert_eq!(value["stream"], json!("events"));
    let mut out = Vec::new();
    undeclared(
        &root(Kind::FleetLog)["properties"]["spec"],
        &value,
        "spec",
        &mut out,
    );
    assert!(out.is_empty(), "{out:#?}");
    assert_eq!(serde_json::from_value::<FleetLogSpec>(value).unwrap(), spec);
}

#[test]
fn the_immutable_message_is_the_coordinators_refusal() {
    let rules = &root(Kind::UpgradePlan)["x-kubernetes-validations"];
    let expression = rules[1]["messageExpression"].as_str().unwrap();
    assert_eq!(
        expression,
        format!(
            "'plan ' + self.metadata.name + ' {}'",
            skoala_plan::IMMUTABLE_PLAN
        )
    );
    assert!(
        !skoala_plan::IMMUTABLE_PLAN.contains('\''),
        "it is quoted in CEL"
    );
}

#[test]
fn each_kind_is_namespaced_with_a_status_subresource_where_it_has_a_status() {
    for crd in crds() {
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, VERSION);
        let subresources = serde_json::to_value(&version.subresources).unwrap();
        if crd.spec.names.kind == "FleetLog" {
            assert_eq!(subresources, Value::Null);
        } else {
            assert_eq!(
                subresources,
                json!({"status": {}}),
                "{}",
                crd.spec.names.kind
            );
        }
    }
}

/// `full_plan()` as the API server returns it after `kubectl apply`: JSON spec, the tools'
/// annotations added.
fn stored(spec: Value) -> UpgradePlan {
    let mut object = UpgradePlan::new("p", &Kind::UpgradePlan.api_resource(), spec);
    object.metadata.namespace = Some("skoala-fleet".into());
    object.metadata.labels = Some([("team".to_string(), "platform".to_string())].into());
    object.metadata.annotations = Some(
        [
            ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
            ("fleet.skoala.io/paused", "true"),
            ("kustomize.toolkit.fluxcd.io/prune", "disabled"),
            ("argocd.argoproj.io/sync-options", "Prune=false"),
            ("owner", "team-a"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into(),
    );
    object
}

#[test]
fn a_stored_plan_is_read_back_by_the_plan_crates_parser_without_the_tools_annotations() {
    let plan = full_plan();
    let read = document(&stored(serde_json::to_value(&plan.spec).unwrap())).unwrap();
    assert_eq!(read.spec, plan.spec);
    assert_eq!(read.metadata.name, "p");
    assert_eq!(read.metadata.labels["team"], "platform");
    assert_eq!(
        read.metadata.annotations.keys().collect::<Vec<_>>(),
        ["owner"],
        "only the plan's own annotations"
    );
}

#[test]
fn a_typo_the_api_server_kept_is_refused_naming_the_field() {
    let mut spec = serde_json::to_value(&full_plan().spec).unwrap();
    spec["strategy"]["maxConcurency"] = json!(5);
    let refused = document(&stored(spec)).unwrap_err();
    assert!(refused.to_string().contains("maxConcurency"), "{refused}");
}
