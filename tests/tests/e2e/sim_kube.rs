//! Issue 2, "Done when", kube-rs part: server-side apply a CRD, then create/list/watch objects of
//! that kind; a Lease update with a stale resourceVersion is a 409 `kube::Error::Api`. Plus the
//! cluster identity, label selectors and namespace deletion that the product relies on.

use std::time::Duration;

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use skoala_e2e::wait;
use skoala_sim::{Cluster, ClusterConfig};

fn widget_crd() -> serde_json::Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.skoala.io"},
        "spec": {
            "group": "example.skoala.io",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}
                }}}
            }]
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_applied_server_side_serves_create_list_watch() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterConfig::new("kube-crd")).await?;
    let client = cluster.client().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let ssa = PatchParams::apply("sim-test").force();
    crds.patch(
        "widgets.example.skoala.io",
        &ssa,
        &Patch::Apply(widget_crd()),
    )
    .await
    .context("server-side apply of the CRD")?;
    let crd = crds.get("widgets.example.skoala.io").await?;
    let established = crd
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(established, "the CRD is Established");

    // Discovery knows the new kind.
    let discovery = kube::Discovery::new(client.clone()).run().await?;
    let (ar, _caps) = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(ar, _)| ar.kind == "Widget")
        .context("Widget is discoverable")?;
    assert_eq!(ar.plural, "widgets");

    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let mut events = watcher(widgets.clone(), watcher::Config::default()).boxed();
    // The watcher's initial list completes (InitDone) before anything exists.
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = events.try_next().await? {
            if matches!(ev, watcher::Event::InitDone) {
                return anyhow::Ok(());
            }
        }
        anyhow::bail!("watch ended before its initial list")
    })
    .await
    .context("watcher init")??;

    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.skoala.io/v1", "kind": "Widget",
        "metadata": {"name": "w1"}, "spec": {"size": 3}
    }))?;
    widgets
        .create(&PostParams::default(), &obj)
        .await
        .context("create a Widget")?;
    let list = widgets.list(&ListParams::default()).await?;
    assert_eq!(list.items.len(), 1);
    assert_eq!(list.items[0].data["spec"]["size"], 3);

    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = events.try_next().await? {
            if let watcher::Event::Apply(o) = ev
                && o.metadata.name.as_deref() == Some("w1")
            {
                return anyhow::Ok(o);
            }
        }
        anyhow::bail!("watch ended")
    })
    .await
    .context("no watch event for the new Widget")??;
    assert_eq!(seen.data["spec"]["size"], 3);

    // Deleting the CRD stops serving the kind.
    crds.delete("widgets.example.skoala.io", &DeleteParams::default())
        .await?;
    let err = widgets
        .list(&ListParams::default())
        .await
        .expect_err("kind is gone");
    match err {
        kube::Error::Api(ae) => assert_eq!(ae.code, 404),
        other => panic!("unexpected error: {other}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_lease_update_is_a_409_api_error() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterConfig::new("kube-lease")).await?;
    let leases: Api<Lease> = Api::namespaced(cluster.client().await?, "kube-system");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "skoala-coordinator"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}
    }))?;
    let created = leases.create(&PostParams::default(), &lease).await?;
    let mut first = created.clone();
    first.spec.as_mut().context("spec")?.holder_identity = Some("b".into());
    leases
        .replace("skoala-coordinator", &PostParams::default(), &first)
        .await?;
    // `created` still carries the old resourceVersion.
    let mut stale = created;
    stale.spec.as_mut().context("spec")?.holder_identity = Some("c".into());
    let err = leases
        .replace("skoala-coordinator", &PostParams::default(), &stale)
        .await
        .expect_err("a stale update must fail");
    match err {
        kube::Error::Api(ae) => {
            assert_eq!(ae.code, 409);
            assert_eq!(ae.reason, "Conflict");
        }
        other => panic!("expected kube::Error::Api, got {other}"),
    }
    let current = leases.get("skoala-coordinator").await?;
    assert_eq!(
        current.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("b")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_selectors_and_namespace_deletion() -> anyhow::Result<()> {
    let clusters = skoala_sim::start_clusters(2, "kube-id").await?;
    let client = clusters[0].client().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ks = namespaces.get("kube-system").await?;
    assert_eq!(
        ks.metadata.uid.as_deref(),
        Some(clusters[0].kube_system_uid())
    );
    assert_ne!(clusters[0].kube_system_uid(), clusters[1].kube_system_uid());

    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team"}}))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    for (name, tier) in [("a", "web"), ("b", "db"), ("c", "cache")] {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"tier": tier, "owner": "me"}}
        }))?;
        cms.create(&PostParams::default(), &cm).await?;
    }
    let names = |l: kube::core::ObjectList<ConfigMap>| {
        let mut v: Vec<String> = l
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("tier in (web,db)"))
                .await?
        ),
        ["a", "b"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("tier notin (web),owner=me"))
                .await?
        ),
        ["b", "c"]
    );
    assert_eq!(
        names(cms.list(&ListParams::default().labels("tier!=db")).await?),
        ["a", "c"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().fields("metadata.name=c"))
                .await?
        ),
        ["c"]
    );
    let missing = cms.get("zzz").await.expect_err("absent");
    assert!(
        matches!(missing, kube::Error::Api(ref ae) if ae.code == 404 && ae.reason == "NotFound")
    );

    namespaces.delete("team", &DeleteParams::default()).await?;
    assert!(namespaces.get_opt("team").await?.is_none());
    let all: Api<ConfigMap> = Api::all(client);
    let left = all.list(&ListParams::default().labels("owner=me")).await?;
    assert!(left.items.is_empty(), "namespace deletion cascades");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_get_ready_and_broken_images_never_do() -> anyhow::Result<()> {
    let cluster = Cluster::start(
        ClusterConfig::new("kube-workloads").readiness_delay(Duration::from_millis(100)),
    )
    .await?;
    let client = cluster.client().await?;
    let deploys: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "default");
    for (name, tag) in [("good", "v1"), ("bad", "broken")] {
        let d = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}},
                             "spec": {"containers": [{"name": "c", "image": format!("example/app:{tag}")}]}}
            }
        }))?;
        deploys.create(&PostParams::default(), &d).await?;
    }
    wait::until("good deployment available", Duration::from_secs(10), || {
        let deploys = deploys.clone();
        async move {
            let s = deploys.get("good").await.ok()?.status?;
            (s.available_replicas == Some(2) && s.observed_generation == Some(1)).then_some(())
        }
    })
    .await?;
    let bad = deploys.get("bad").await?.status.context("status")?;
    assert_eq!(bad.available_replicas, None);
    assert_eq!(bad.updated_replicas, Some(2));
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, "default");
    let bad_pods = pods.list(&ListParams::default().labels("app=bad")).await?;
    assert_eq!(bad_pods.items.len(), 2);
    let waiting = bad_pods.items[0]
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c[0].state.as_ref())
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.clone());
    assert_eq!(waiting.as_deref(), Some("ImagePullBackOff"));
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(cluster.client().await?, "default");
    let pulled = events.list(&ListParams::default()).await?;
    assert!(
        pulled
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Failed")
                && e.involved_object.name == bad_pods.items[0].metadata.name),
        "the kubelet's pull failure is an Event"
    );

    // A rolling update to an image that never becomes ready surges one new pod and keeps
    // the old ones serving (maxUnavailable 25% of 2 is 0), as a real cluster does.
    let broken = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "example/app:broken"}]}}}});
    deploys
        .patch("good", &PatchParams::default(), &Patch::Strategic(&broken))
        .await?;
    let stuck = wait::until("surge pod created", Duration::from_secs(10), || {
        let deploys = deploys.clone();
        async move {
            let s = deploys.get("good").await.ok()?.status?;
            (s.observed_generation == Some(2) && s.updated_replicas == Some(1)).then_some(s)
        }
    })
    .await?;
    assert_eq!(
        stuck.available_replicas,
        Some(2),
        "old pods keep serving: {stuck:?}"
    );
    assert_eq!(stuck.replicas, Some(3));
    let available = stuck
        .conditions
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Available" && c.status == "True");
    assert!(available, "still Available");

    // A rollout that cannot finish reports ProgressDeadlineExceeded (kstatus: Failed).
    let quick = json!({"spec": {"progressDeadlineSeconds": 1}});
    deploys
        .patch("bad", &PatchParams::default(), &Patch::Merge(&quick))
        .await?;
    wait::until(
        "progress deadline exceeded",
        Duration::from_secs(15),
        || {
            let deploys = deploys.clone();
            async move {
                let conds = deploys.get("bad").await.ok()?.status?.conditions?;
                conds
                    .iter()
                    .any(|c| {
                        c.type_ == "Progressing"
                            && c.status == "False"
                            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
                    })
                    .then_some(())
            }
        },
    )
    .await?;

    // StatefulSets and DaemonSets report what Helm's readiness checks read.
    let template = json!({"metadata": {"labels": {"app": "x"}},
                          "spec": {"containers": [{"name": "c", "image": "example/app:v1"}]}});
    let sts_api: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::namespaced(cluster.client().await?, "default");
    let sts = serde_json::from_value(json!({"metadata": {"name": "db"}, "spec": {
        "replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "x"}}, "template": template}}))?;
    sts_api.create(&PostParams::default(), &sts).await?;
    let ds_api: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(cluster.client().await?, "default");
    let ds = serde_json::from_value(json!({"metadata": {"name": "agent"}, "spec": {
        "selector": {"matchLabels": {"app": "x"}}, "template": template}}))?;
    ds_api.create(&PostParams::default(), &ds).await?;
    wait::until("statefulset ready", Duration::from_secs(10), || {
        let api = sts_api.clone();
        async move {
            let s = api.get("db").await.ok()?.status?;
            (s.ready_replicas == Some(2)
                && s.updated_replicas == Some(2)
                && s.current_revision.is_some()
                && s.current_revision == s.update_revision)
                .then_some(())
        }
    })
    .await?;
    // A rolling update of a StatefulSet replaces the highest ordinal first and stops there
    // when the new pod never becomes ready.
    let broken = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "example/app:broken"}]}}}});
    sts_api
        .patch("db", &PatchParams::default(), &Patch::Strategic(&broken))
        .await?;
    let stuck = wait::until(
        "statefulset rollout started",
        Duration::from_secs(10),
        || {
            let api = sts_api.clone();
            async move {
                let s = api.get("db").await.ok()?.status?;
                (s.observed_generation == Some(2) && s.updated_replicas == Some(1)).then_some(s)
            }
        },
    )
    .await?;
    assert_eq!(
        stuck.ready_replicas,
        Some(1),
        "db-0 keeps serving: {stuck:?}"
    );
    assert_ne!(stuck.current_revision, stuck.update_revision);
    let pods_api: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(cluster.client().await?, "default");
    let db1 = pods_api.get("db-1").await?;
    assert_eq!(
        db1.spec.map(|s| s.containers[0].image.clone()),
        Some(Some("example/app:broken".into())),
        "the highest ordinal is replaced first"
    );
    wait::until("daemonset ready", Duration::from_secs(10), || {
        let api = ds_api.clone();
        async move {
            let s = api.get("agent").await.ok()?.status?;
            (s.number_ready == 1
                && s.updated_number_scheduled == Some(1)
                && s.observed_generation == Some(1))
            .then_some(())
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_selector_watch_sees_objects_enter_and_leave() -> anyhow::Result<()> {
    use kube::api::{WatchEvent, WatchParams};
    let cluster = Cluster::start(ClusterConfig::new("kube-watch")).await?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client().await?, "default");
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "rel", "labels": {"status": "deployed"}}
    }))?;
    let created = cms.create(&PostParams::default(), &cm).await?;
    let rv = created.metadata.resource_version.clone().context("rv")?;
    let mut stream = cms
        .watch(
            &WatchParams::default().labels("status=deployed").timeout(30),
            &rv,
        )
        .await?
        .boxed();
    // Helm relabels a superseded release; a watcher on `status=deployed` sees it leave.
    for status in ["superseded", "deployed"] {
        let patch = json!({"metadata": {"labels": {"status": status}}});
        cms.patch("rel", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let mut kinds = vec![];
    while kinds.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .context("watch event")??
            .context("watch ended")?;
        kinds.push(match ev {
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Modified(_) => "MODIFIED",
            WatchEvent::Deleted(_) => "DELETED",
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => anyhow::bail!("watch error {e:?}"),
        });
    }
    assert_eq!(kinds, ["DELETED", "ADDED"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_errors_and_patch_flavours_as_kube_rs_sees_them() -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    let cluster = Cluster::start(ClusterConfig::new("kube-errors")).await?;
    let client = cluster.client().await?;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let code = |r: Result<Deployment, kube::Error>| match r {
        Err(kube::Error::Api(ae)) => (ae.code, ae.reason),
        other => panic!("expected an API error, got {other:?}"),
    };
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
                {"name": "b", "image": "b:1"}
            ]}}
        }
    }))?;
    deploys.create(&PostParams::default(), &d).await?;
    assert_eq!(
        code(deploys.create(&PostParams::default(), &d).await),
        (409, "AlreadyExists".into())
    );
    let mut invalid = d.clone();
    invalid.metadata.name = Some("invalid".into());
    invalid.spec.as_mut().context("spec")?.selector.match_labels =
        Some([("app".to_string(), "other".to_string())].into());
    assert_eq!(
        code(deploys.create(&PostParams::default(), &invalid).await),
        (422, "Invalid".into())
    );
    let raw = http::Request::patch("/apis/apps/v1/namespaces/default/deployments/web")
        .header("Content-Type", "text/plain")
        .body(b"nonsense".to_vec())?;
    match client.request::<Deployment>(raw).await {
        Err(kube::Error::Api(ae)) => {
            assert_eq!((ae.code, ae.reason.as_str()), (415, "UnsupportedMediaType"))
        }
        other => panic!("expected 415, got {other:?}"),
    }

    // Strategic merge: containers merge by name, env by name.
    let smp = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]}
    ]}}}});
    let after = deploys
        .patch("web", &PatchParams::default(), &Patch::Strategic(&smp))
        .await?;
    let pod = after
        .spec
        .context("spec")?
        .template
        .spec
        .context("pod spec")?;
    assert_eq!(pod.containers.len(), 2);
    assert_eq!(pod.containers[0].image.as_deref(), Some("a:2"));
    assert_eq!(pod.containers[0].env.as_ref().map(Vec::len), Some(2));
    assert_eq!(
        after.metadata.generation,
        Some(2),
        "a spec change bumps generation"
    );
    // JSON patch, and a JSON merge patch that only touches metadata (generation stays).
    let jp = http::Request::patch("/apis/apps/v1/namespaces/default/deployments/web")
        .header("Content-Type", "application/json-patch+json")
        .body(serde_json::to_vec(
            &json!([{"op": "replace", "path": "/spec/replicas", "value": 3}]),
        )?)?;
    let after: Deployment = client.request(jp).await?;
    assert_eq!(after.spec.as_ref().and_then(|s| s.replicas), Some(3));
    let merge = json!({"metadata": {"labels": {"team": "a"}}});
    let after = deploys
        .patch("web", &PatchParams::default(), &Patch::Merge(&merge))
        .await?;
    assert_eq!(after.metadata.generation, Some(3));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_http_cluster_still_requires_the_token() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterConfig::new("kube-http").insecure_http(true)).await?;
    assert!(cluster.url().starts_with("http://"), "{}", cluster.url());
    let namespaces: Api<Namespace> = Api::all(cluster.client().await?);
    assert!(namespaces.get_opt("kube-system").await?.is_some());
    // Without the bearer token: 401 as a Status.
    let anonymous = kube::Client::try_from(kube::Config::new(cluster.url().parse()?))?;
    match Api::<Namespace>::all(anonymous).get("kube-system").await {
        Err(kube::Error::Api(ae)) => assert_eq!(ae.code, 401),
        other => panic!("expected 401, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_watch_ends_its_initial_events_with_a_bookmark() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterConfig::new("kube-stream")).await?;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client().await?, "default");
    make_cm(&cms, "one").await?;
    let config = watcher::Config::default().streaming_lists();
    let mut events = watcher(cms.clone(), config).boxed();
    let mut initial = vec![];
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = events.try_next().await? {
            match ev {
                watcher::Event::InitApply(o) => initial.push(o.metadata.name.unwrap_or_default()),
                watcher::Event::InitDone => return anyhow::Ok(()),
                _ => {}
            }
        }
        anyhow::bail!("watch ended before the initial-events-end bookmark")
    })
    .await
    .context("streaming list")??;
    assert_eq!(initial, ["one"]);
    make_cm(&cms, "two").await?;
    let next = tokio::time::timeout(Duration::from_secs(10), events.try_next())
        .await
        .context("event after the initial list")??;
    assert!(
        matches!(next, Some(watcher::Event::Apply(ref o)) if o.metadata.name.as_deref() == Some("two"))
    );
    Ok(())
}

async fn make_cm(api: &Api<ConfigMap>, name: &str) -> anyhow::Result<()> {
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    api.create(&PostParams::default(), &cm).await?;
    Ok(())
}
