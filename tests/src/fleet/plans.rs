//! A fleet ready for upgrade plans: a control-plane cluster with `skoala`, N working clusters
//! with `skoala-init` (both at one version, installed by helm from the test chart repository
//! the way an operator did), a coordinator that upgrades the control plane with the real helm,
//! and an agent per working cluster.
//!
//! Faults are cluster properties of the emulator: a cluster built with
//! [`PlanFleetOptions::broken`] never readies the target version's images (so its upgrade
//! fails and is rolled back); the clock can be driven through a file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use super::{Agent, AgentOptions, Coordinator, CoordinatorOptions, Fleet, prepare_cluster};
use crate::charts::{ChartRepo, HelmHome, start_repo};
use crate::netns::{Link, NetNs};
use crate::tools::tool;
use crate::wait;

/// How a plan fleet is built.
#[derive(Debug, Clone)]
pub struct PlanFleetOptions {
    /// How many working clusters (with an agent each).
    pub workers: usize,
    /// Version installed everywhere before the test.
    pub from: String,
    /// Image tag the emulator never readies in the *broken* clusters, e.g. `:v0.19.2`.
    pub broken_tag: String,
    /// Working clusters (1-based) whose `broken_tag` images never become ready.
    pub broken: Vec<usize>,
    /// The control plane never readies `broken_tag` images either.
    pub broken_control_plane: bool,
    /// Start the coordinator with a driven clock at this RFC 3339 time.
    pub clock: Option<String>,
    /// `--helm-timeout` of plan upgrades.
    pub helm_timeout: String,
    /// More `serve` flags for the coordinator.
    pub coordinator_args: Vec<String>,
    /// The coordinator's data dir on a tmpfs of this many bytes.
    pub data_dir_bytes: Option<u64>,
    /// Working clusters (1-based) that live in a network namespace of their own, joined to
    /// the host by a veth link ([`PlanFleet::link`]): their emulated API server listens
    /// there (still served by this process), their agent runs there and dials the coordinator
    /// over the link. Their agents cannot reach the test chart repository: plan with
    /// `chartSource: relay`. Needs root and iproute2.
    pub linked: Vec<usize>,
    /// How long after creation the working clusters' workloads become ready (the emulator's
    /// default otherwise): a longer `helm upgrade --wait`.
    pub worker_readiness_delay: Option<Duration>,
    /// Keep the fleet on the control-plane cluster (`serve --store kube`, namespace
    /// [`KUBE_STORE_NAMESPACE`]), with the fleet's CRDs installed there first.
    pub kube_store: bool,
}

/// The coordinator's namespace on the control-plane cluster with [`PlanFleetOptions::kube_store`].
pub const KUBE_STORE_NAMESPACE: &str = "skoala-fleet";

impl Default for PlanFleetOptions {
    fn default() -> Self {
        PlanFleetOptions {
            workers: 3,
            from: "0.19.0".into(),
            broken_tag: ":v0.19.2".into(),
            broken: Vec::new(),
            broken_control_plane: false,
            clock: None,
            helm_timeout: "60s".into(),
            coordinator_args: Vec::new(),
            data_dir_bytes: None,
            linked: Vec::new(),
            worker_readiness_delay: None,
            kube_store: false,
        }
    }
}

/// The fleet, the control plane, the chart repository.
pub struct PlanFleet {
    /// The coordinator, the working clusters and their agents.
    pub fleet: Fleet,
    /// The coordinator's own cluster, where it upgrades `skoala`.
    pub control_plane: skoala_sim::Cluster,
    /// The test chart repository every plan installs from.
    pub repo: ChartRepo,
    /// The driven clock's file (used only with `PlanFleetOptions::clock`): the coordinator's
    /// clock reads the RFC 3339 time written there.
    pub clock_file: PathBuf,
    /// Holds the clock file.
    _scratch: tempfile::TempDir,
    /// The namespaces of [`PlanFleetOptions::linked`] workers, by cluster name.
    links: Vec<(String, NetNs, Link)>,
}

/// Installs `chart` `version` into `skoala-system` of the cluster at `kubeconfig`, as an
/// operator did, and waits for it.
pub async fn install(
    repo: &ChartRepo,
    kubeconfig: &Path,
    chart: &str,
    version: &str,
) -> anyhow::Result<()> {
    let home = HelmHome::new()?;
    let url = repo.url();
    home.run(
        &tool("helm"),
        Some(kubeconfig),
        &[
            "upgrade",
            "--install",
            "--create-namespace",
            "-n",
            "skoala-system",
            chart,
            chart,
            "--repo",
            &url,
            "--version",
            version,
            "--wait",
            "--timeout",
            "120s",
        ],
    )
    .await
    .with_context(|| format!("installing {chart} {version}"))?;
    Ok(())
}

/// `helm history` of `release` in `skoala-system` as JSON rows.
pub async fn history(kubeconfig: &Path, release: &str) -> anyhow::Result<Vec<Value>> {
    let home = HelmHome::new()?;
    let out = home
        .run(
            &tool("helm"),
            Some(kubeconfig),
            &[
                "history",
                release,
                "-n",
                "skoala-system",
                "-o",
                "json",
                "--max",
                "100",
            ],
        )
        .await?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

impl PlanFleet {
    /// Installs `opts.from` everywhere, then starts the coordinator and the agents, and waits
    /// until every agent is connected and every cluster reports `opts.from`.
    pub async fn start(opts: PlanFleetOptions) -> anyhow::Result<PlanFleet> {
        let repo = start_repo().await?;
        let scratch = tempfile::Builder::new().prefix("plan-fleet-").tempdir()?;
        let clock_file = scratch.path().join("now");
        if let Some(t) = &opts.clock {
            std::fs::write(&clock_file, t)?;
        }
        let config = |name: String, broken: bool| {
            let c = skoala_sim::ClusterConfig::new(name);
            if broken {
                c.never_ready_image(opts.broken_tag.clone())
            } else {
                c
            }
        };
        let control_plane =
            skoala_sim::Cluster::start(config("control-plane".into(), opts.broken_control_plane))
                .await
                .context("starting the control-plane cluster")?;
        let mut clusters = Vec::new();
        let mut links = Vec::new();
        for i in 1..=opts.workers {
            let name = format!("work-{i}");
            let mut c = config(name.clone(), opts.broken.contains(&i));
            if let Some(d) = opts.worker_readiness_delay {
                c = c.readiness_delay(d);
            }
            let cluster = if opts.linked.contains(&i) {
                let (ns, link) = NetNs::create_linked()?;
                let listener = ns.bind_tcp(&format!("{}:0", link.ns_ip))?;
                let cluster = skoala_sim::Cluster::start_on(c, listener).await;
                links.push((name, ns, link));
                cluster
            } else {
                skoala_sim::Cluster::start(c).await
            };
            clusters.push(cluster.context("starting a working cluster")?);
        }
        // Install everywhere at once: seven `helm --wait`s one after another are slow.
        let mut installs = vec![install(
            &repo,
            control_plane.kubeconfig_path(),
            "skoala",
            &opts.from,
        )];
        for c in &clusters {
            installs.push(install(
                &repo,
                c.kubeconfig_path(),
                "skoala-init",
                &opts.from,
            ));
        }
        futures::future::try_join_all(installs).await?;

        let kube_store = if opts.kube_store {
            let client = crate::kubeapi::client(control_plane.kubeconfig_path()).await?;
            crate::kstore::install_crds(&client).await?;
            crate::kstore::create_namespace(&client, KUBE_STORE_NAMESPACE).await?;
            Some(KUBE_STORE_NAMESPACE.to_string())
        } else {
            None
        };
        let coordinator = Coordinator::start_with(CoordinatorOptions {
            metrics: true,
            kubeconfig: Some(control_plane.kubeconfig_path().to_path_buf()),
            helm: Some(tool("helm")),
            helm_timeout: Some(opts.helm_timeout.clone()),
            clock_file: opts.clock.as_ref().map(|_| clock_file.clone()),
            args: opts.coordinator_args.clone(),
            data_dir_bytes: opts.data_dir_bytes,
            // Linked agents dial the host end of their link.
            listen_ip: (!links.is_empty()).then_some(std::net::Ipv4Addr::UNSPECIFIED.into()),
            sans: links
                .iter()
                .map(|(_, _, l)| l.host_ip.to_string())
                .collect(),
            kube_store,
            ..Default::default()
        })
        .await?;
        let token = coordinator
            .ctl()
            .token(opts.workers as u32, "1h")
            .await
            .context("creating the fleet's join token")?;
        let mut agents = Vec::new();
        for (i, cluster) in clusters.iter().enumerate() {
            prepare_cluster(cluster).await?;
            let mut a = AgentOptions::named(cluster.name())
                .label("fleet", "test")
                .label("index", &(i + 1).to_string());
            if let Some((_, ns, link)) = links.iter().find(|(n, _, _)| n == cluster.name()) {
                a.netns = Some(ns.name().to_string());
                a.coordinator_url = Some(format!(
                    "https://{}:{}",
                    link.host_ip,
                    coordinator.addr().port()
                ));
            }
            agents.push(Agent::start(&coordinator, cluster, Some(&token), a)?);
        }
        let pf = PlanFleet {
            fleet: Fleet {
                coordinator,
                clusters,
                agents,
            },
            control_plane,
            repo,
            clock_file,
            _scratch: scratch,
            links,
        };
        pf.fleet.wait_connected(opts.workers).await?;
        pf.wait_versions(&opts.from, super::FLEET_TIMEOUT).await?;
        Ok(pf)
    }

    /// `skoalactl` with the operator credential.
    pub fn ctl(&self) -> super::Ctl {
        self.fleet.coordinator.ctl()
    }

    /// The link of a [`PlanFleetOptions::linked`] worker, and its namespace.
    pub fn link(&self, name: &str) -> anyhow::Result<(&NetNs, &Link)> {
        self.links
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, ns, link)| (ns, link))
            .with_context(|| format!("{name} is not a linked worker"))
    }

    /// Sets the driven clock (RFC 3339).
    pub fn set_clock(&self, t: &str) -> anyhow::Result<()> {
        // Write then rename: the coordinator never reads a half-written time.
        let tmp = self.clock_file.with_extension("tmp");
        std::fs::write(&tmp, t)?;
        std::fs::rename(&tmp, &self.clock_file)?;
        Ok(())
    }
}

impl PlanView for PlanFleet {
    fn ctl(&self) -> super::Ctl {
        self.fleet.coordinator.ctl()
    }

    fn repo(&self) -> &ChartRepo {
        &self.repo
    }

    fn scratch(&self) -> &Path {
        self._scratch.path()
    }

    fn coordinator_log(&self) -> String {
        self.fleet.coordinator.log()
    }

    fn cluster_names(&self) -> Vec<String> {
        let mut names = vec!["control-plane".to_string()];
        names.extend(self.fleet.clusters.iter().map(|c| c.name().to_string()));
        names
    }

    fn kubeconfig(&self, name: &str) -> anyhow::Result<PathBuf> {
        if name == "control-plane" {
            return Ok(self.control_plane.kubeconfig_path().to_path_buf());
        }
        self.fleet
            .clusters
            .iter()
            .find(|c| c.name() == name)
            .map(|c| c.kubeconfig_path().to_path_buf())
            .with_context(|| format!("no cluster {name}"))
    }
}

/// What the plan helpers need of a fleet, emulated ([`PlanFleet`]) or real
/// (`crate::real::RealFleet`): its CLI, its chart repository, its clusters by name.
#[allow(
    async_fn_in_trait,
    reason = "used in tests only, never behind `dyn` or across threads"
)]
pub trait PlanView {
    /// `skoalactl` with the operator credential.
    fn ctl(&self) -> super::Ctl;
    /// The test chart repository (plain http: plans pin its digests).
    fn repo(&self) -> &ChartRepo;
    /// The test chart repository's URL.
    fn repo_url(&self) -> String {
        self.repo().url()
    }
    /// A folder for plan files.
    fn scratch(&self) -> &Path;
    /// The coordinator's log, for failure messages.
    fn coordinator_log(&self) -> String;
    /// `control-plane`, then every working cluster.
    fn cluster_names(&self) -> Vec<String>;
    /// An admin kubeconfig of a cluster by name, for the test's own checks.
    fn kubeconfig(&self, name: &str) -> anyhow::Result<PathBuf>;

    /// A plan document upgrading every cluster to `version` from the test repository.
    fn plan_yaml(&self, name: &str, version: &str, extra_spec: &str) -> String {
        let mut doc = format!(
            "apiVersion: fleet.skoala.io/v1alpha1\nkind: UpgradePlan\nmetadata:\n  name: {name}\nspec:\n  version: {version}\n  chartSource: repo\n  repository:\n    name: skoala\n    url: {}\n    digests: {}\n",
            self.repo_url(),
            crate::charts::digests_yaml(self.repo(), version)
        );
        for line in extra_spec.lines() {
            doc.push_str("  ");
            doc.push_str(line);
            doc.push('\n');
        }
        doc
    }

    /// `skoalactl plan apply -f` of `yaml`.
    async fn apply(&self, yaml: &str) -> anyhow::Result<super::ctl::CtlOutput> {
        let path = self.plan_file(yaml)?;
        let p = path.to_str().context("utf-8 path")?.to_string();
        self.ctl().run(&["plan", "apply", "-f", &p]).await
    }

    /// `plan apply -f` of `yaml`, retried while refused (see [`super::Ctl::apply_when_ready`]).
    async fn apply_when_ready(&self, yaml: &str, timeout: Duration) -> anyhow::Result<()> {
        let path = self.plan_file(yaml)?;
        self.ctl().apply_when_ready(&path, timeout).await
    }

    /// Writes `yaml` to a new file in the scratch folder.
    fn plan_file(&self, yaml: &str) -> anyhow::Result<PathBuf> {
        let path = self.scratch().join(format!(
            "plan-{}.yaml",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        ));
        std::fs::write(&path, yaml)?;
        Ok(path)
    }

    /// `plan get NAME -o json`.
    async fn plan(&self, name: &str) -> anyhow::Result<Value> {
        self.ctl().json(&["plan", "get", name]).await
    }

    /// Waits until the plan's phase is one of `phases`; returns the plan.
    async fn wait_phase(
        &self,
        name: &str,
        phases: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let last = std::sync::Mutex::new(Value::Null);
        let r = wait::until(&format!("plan {name} in {phases:?}"), timeout, || async {
            let p = self.plan(name).await.ok()?;
            *last.lock().ok()? = p.clone();
            phases.contains(&p["phase"].as_str()?).then_some(p)
        })
        .await;
        match r {
            Ok(p) => Ok(p),
            Err(e) => bail!(
                "{e:#}\nlast plan: {:#}\n{}",
                last.lock().map(|v| v.clone()).unwrap_or_default(),
                self.coordinator_log()
            ),
        }
    }

    /// The engine release of every cluster (`skoalactl clusters -o json`), by name.
    async fn releases(&self) -> anyhow::Result<Vec<(String, Value)>> {
        let clusters = self.ctl().clusters().await?;
        Ok(clusters
            .into_iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or_default().to_string(),
                    c["release"].clone(),
                )
            })
            .collect())
    }

    /// Waits until every cluster of [`PlanView::cluster_names`] (control plane included)
    /// reports its engine release at `version`, deployed. Other clusters (simulated agents)
    /// are not waited for.
    async fn wait_versions(&self, version: &str, timeout: Duration) -> anyhow::Result<()> {
        let names = self.cluster_names();
        let known = |all: Vec<(String, Value)>| {
            all.into_iter()
                .filter(|(n, _)| names.contains(n))
                .collect::<Vec<_>>()
        };
        let r = wait::until(&format!("every release at {version}"), timeout, || async {
            let all = known(self.releases().await.ok()?);
            let ok = all.iter().filter(|(_, r)| {
                r["version"].as_str() == Some(version) && r["status"].as_str() == Some("deployed")
            });
            (ok.count() == names.len()).then_some(())
        })
        .await;
        if let Err(e) = r {
            let now = known(self.releases().await.unwrap_or_default());
            bail!("{e:#}; releases now: {now:?}");
        }
        Ok(())
    }

    /// The end state of a plan that upgraded every cluster once to `version`: `skew` exits 0,
    /// every release reports `version` with every image tag `v<version>`, and helm's own
    /// history of each release holds the install and exactly one upgrade, to that chart,
    /// deployed.
    async fn assert_upgraded_once_to(&self, version: &str) -> anyhow::Result<()> {
        let skew = self.ctl().run(&["skew"]).await?;
        anyhow::ensure!(
            skew.success,
            "skew after the plan: {}{}",
            skew.stdout,
            skew.stderr
        );
        self.wait_versions(version, Duration::from_secs(60)).await?;
        let tag = format!("v{version}");
        for (name, release) in self.releases().await? {
            let tags = release["imageTags"].as_object().context("imageTags")?;
            anyhow::ensure!(!tags.is_empty(), "{name}: no image tags: {release:#}");
            for (key, t) in tags {
                anyhow::ensure!(*t == tag.as_str(), "{name}: {key} is {t}, not {tag}");
            }
        }
        for name in self.cluster_names() {
            let h = self.history(&name).await?;
            anyhow::ensure!(h.len() == 2, "{name}: install + one upgrade, got {h:#?}");
            let chart = if name == "control-plane" {
                "skoala"
            } else {
                "skoala-init"
            };
            anyhow::ensure!(
                h[1]["chart"] == format!("{chart}-{version}").as_str()
                    && h[1]["status"] == "deployed",
                "{name}: the upgrade in helm's history: {:#}",
                h[1]
            );
        }
        Ok(())
    }

    /// `helm history` of the engine release of cluster `name`.
    async fn history(&self, name: &str) -> anyhow::Result<Vec<Value>> {
        let release = if name == "control-plane" {
            "skoala"
        } else {
            "skoala-init"
        };
        history(&self.kubeconfig(name)?, release).await
    }

    /// The plan's events (`events --plan NAME -o json`), oldest first.
    async fn events(&self, plan: &str) -> anyhow::Result<Vec<Value>> {
        let out = self
            .ctl()
            .ok(&["events", "--plan", plan, "-o", "json"])
            .await?;
        out.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
    }

    /// The fault campaign's "nothing lost" for the clusters this view knows (helm history
    /// needs a kubeconfig): each target's state agrees with its release, and no release was
    /// upgraded more than once in the plan. A succeeded target's history is the install plus
    /// one upgrade to the plan's version, deployed; a failed or pending one's is the install
    /// alone. Targets in any other state fail the check: the plan was meant to have settled.
    async fn assert_consistent_with_clusters(&self, plan: &Value) -> anyhow::Result<()> {
        let version = plan["version"].as_str().context("the plan's version")?;
        let known = self.cluster_names();
        for t in plan["targets"].as_array().context("targets")? {
            let name = t["name"].as_str().context("target name")?;
            if !known.iter().any(|k| k == name) {
                continue;
            }
            let h = self.history(name).await?;
            anyhow::ensure!(h.len() <= 2, "{name}: at most one upgrade per plan: {h:#?}");
            match t["state"].as_str() {
                Some("succeeded") => {
                    anyhow::ensure!(h.len() == 2, "{name} succeeded, helm disagrees: {h:#?}");
                    let chart = h[1]["chart"].as_str().unwrap_or_default();
                    anyhow::ensure!(
                        chart.ends_with(&format!("-{version}")) && h[1]["status"] == "deployed",
                        "{name}: the upgrade in helm's history: {h:#?}"
                    );
                }
                Some("failed") | Some("pending") => {
                    anyhow::ensure!(h.len() == 1, "{name} not upgraded, helm disagrees: {h:#?}");
                }
                other => bail!("{name}: unexpected state {other:?}: {t:#}"),
            }
        }
        Ok(())
    }
}

/// A plan document (`PlanView::plan_yaml`) with `annotations` (one `key: value` line) under
/// its `metadata`, as a git repository would hold the object.
pub fn annotated(yaml: &str, annotations: &str) -> String {
    yaml.replacen(
        "metadata:\n",
        &format!("metadata:\n  annotations:\n    {annotations}\n"),
        1,
    )
}

/// The target called `name` of `plan get -o json`.
pub fn target<'a>(plan: &'a Value, name: &str) -> anyhow::Result<&'a Value> {
    plan["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == name))
        .with_context(|| format!("no target {name} in {plan:#}"))
}

/// The `task.sent` events of target `name` among a plan's `events`.
pub fn sent_to<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["kind"] == "task.sent" && e["targetName"] == name)
        .collect()
}

/// Reads back every values backup a coordinator stored under its data dir (`backups/`), each
/// parsed as YAML; returns how many. Fails on the first unreadable one.
pub fn read_backups(data_dir: &Path) -> anyhow::Result<usize> {
    fn walk(dir: &Path, read: &mut usize) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, read)?;
            } else {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                serde_yaml::from_str::<serde_yaml::Value>(&text)
                    .with_context(|| format!("{} is not YAML", path.display()))?;
                *read += 1;
            }
        }
        Ok(())
    }
    let mut read = 0;
    walk(&data_dir.join("backups"), &mut read)?;
    Ok(read)
}
