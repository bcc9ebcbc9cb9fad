//! A stand-in kubelet for our own two pods: runs the container of a Deployment that our install
//! chart created in a real cluster, as that pod would run, but as a local process.
//!
//! kwok marks the chart's pods Running without running anything; this module runs the one
//! container that matters (our binary) with what the pod spec gives it, read back from the API
//! server: the container's `args` and `env` (values, Secret and ConfigMap references, field
//! references), its volumes (ConfigMap and Secret files, emptyDirs, a PersistentVolumeClaim as a
//! folder that outlives restarts) mounted at their `mountPath`s, the ServiceAccount token, CA and
//! namespace at `/var/run/secrets/kubernetes.io/serviceaccount`, `KUBERNETES_SERVICE_HOST/PORT`,
//! and the pod's `runAsUser`/`runAsGroup`. The mounts live in a private mount namespace of the
//! process, so the host sees none of them.
//!
//! What it changes, and only on request ([`PodSpec::rewrite`]): listen addresses. All "pods"
//! share the host's network here, so `0.0.0.0:7443` becomes `127.0.0.1:0`.
//!
//! [`Pod::start`] runs one process for a single-replica Deployment, named `<deployment>-0`
//! (the coordinator's SQLite Pod may wait for its volume and never be scheduled);
//! [`Pod::start_replicas`] runs one process per Pod object the Deployment's ReplicaSet made
//! (kwok marks them Running), each with that Pod's real name as `metadata.name`, so what a
//! process does to "its own" Pod (the coordinator leader's label) lands on a real Pod object.
//!
//! The image is mapped to our binary by its repository's last path segment
//! (`ghcr.io/skoala-fleet/skoala-agent` → `skoala-agent`), built fresh by [`our_bin`].

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::Value;
use skoala_realkube::RealCluster;

use crate::tools::our_bin;

/// Which Deployment to run, and how.
#[derive(Clone, Debug)]
pub struct PodSpec {
    /// The Deployment's namespace.
    pub namespace: String,
    /// The Deployment whose pod template is run.
    pub deployment: String,
    /// The helm the image would carry, put on `PATH` as `helm`.
    pub helm: PathBuf,
    /// `(prefix, replacement)`: an argument starting with `prefix` is replaced whole.
    pub rewrite: Vec<(String, String)>,
    /// Extra environment, e.g. `RUST_LOG`.
    pub env: Vec<(String, String)>,
}

impl PodSpec {
    /// The Deployment `namespace/deployment`, with helm 4.
    pub fn new(namespace: &str, deployment: &str) -> Self {
        PodSpec {
            namespace: namespace.into(),
            deployment: deployment.into(),
            helm: crate::tools::tool("helm"),
            rewrite: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Another helm than helm 4.
    pub fn helm(mut self, helm: PathBuf) -> Self {
        self.helm = helm;
        self
    }

    /// Replaces the argument that starts with `prefix` by `with`.
    pub fn rewrite(mut self, prefix: &str, with: &str) -> Self {
        self.rewrite.push((prefix.into(), with.into()));
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
}

/// One "pod": its folder (volumes, ServiceAccount files, log) and its running container.
pub struct Pod {
    spec: PodSpec,
    root: tempfile::TempDir,
    child: Option<tokio::process::Child>,
    starts: u32,
    /// `metadata.name` as the container sees it (the downward API).
    name: String,
    /// Port of the API server, for `KUBERNETES_SERVICE_PORT`.
    api_port: u16,
    template: Value,
}

/// Where Kubernetes mounts a pod's ServiceAccount files.
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl Pod {
    /// Reads the Deployment, materialises its volumes and ServiceAccount token, runs its init
    /// containers to completion, then starts its first container.
    pub async fn start(cluster: &RealCluster, spec: PodSpec) -> anyhow::Result<Pod> {
        let deploy = deployment(cluster, &spec).await?;
        let name = format!("{}-0", spec.deployment);
        Self::start_as(cluster, spec, deploy["spec"]["template"].clone(), name).await
    }

    /// One process per Pod object of the Deployment, once its `replicas` Pods exist and kwok
    /// marked them Running, each named after its Pod; in the Pods' name order. Each pod's
    /// init containers run before its main container starts; the pods start one after the
    /// other.
    pub async fn start_replicas(cluster: &RealCluster, spec: PodSpec) -> anyhow::Result<Vec<Pod>> {
        let deploy = deployment(cluster, &spec).await?;
        let replicas = deploy["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        let selector = deploy["spec"]["selector"]["matchLabels"]
            .as_object()
            .context("a Deployment without matchLabels")?
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(",");
        let names = crate::wait::until(
            &format!("{replicas} running Pods of {}", spec.deployment),
            Duration::from_secs(120),
            || async {
                let out = cluster
                    .kubectl(&[
                        "get",
                        "pods",
                        "-n",
                        &spec.namespace,
                        "-l",
                        &selector,
                        "--field-selector=status.phase=Running",
                        "-o",
                        "jsonpath={.items[*].metadata.name}",
                    ])
                    .await
                    .ok()?;
                let mut names: Vec<String> = out.split_whitespace().map(String::from).collect();
                names.sort();
                (names.len() == replicas).then_some(names)
            },
        )
        .await?;
        let mut pods = Vec::new();
        for name in names {
            let template = deploy["spec"]["template"].clone();
            pods.push(Self::start_as(cluster, spec.clone(), template, name).await?);
        }
        Ok(pods)
    }

    async fn start_as(
        cluster: &RealCluster,
        spec: PodSpec,
        template: Value,
        name: String,
    ) -> anyhow::Result<Pod> {
        // Not under /tmp (nor under a checkout that may live there): the pod mounts an
        // emptyDir on /tmp, which would hide its binary, its helm and its volumes' sources.
        let parent = PathBuf::from("/var/tmp/skoala-e2e-pods");
        std::fs::create_dir_all(&parent)?;
        let root = tempfile::Builder::new()
            .prefix(&format!("{}-", spec.deployment))
            .tempdir_in(&parent)?;
        // The pod's user (65532) must reach its binary and helm in here.
        std::fs::set_permissions(
            root.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let mut pod = Pod {
            spec,
            root,
            child: None,
            starts: 0,
            name,
            api_port: cluster.port(),
            template,
        };
        pod.materialise(cluster).await?;
        let inits = pod.template["spec"]["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for init in &inits {
            let mut child = pod.spawn(cluster, init).await?;
            let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
                .await
                .context("init container did not finish in 120 s")??;
            if !status.success() {
                bail!(
                    "init container {} failed ({status}): {}",
                    init["name"],
                    pod.log()
                );
            }
        }
        pod.restart(cluster).await?;
        Ok(pod)
    }

    /// (Re)starts the main container, as the kubelet does after a crash: same volumes, same
    /// ServiceAccount, a fresh process.
    pub async fn restart(&mut self, cluster: &RealCluster) -> anyhow::Result<()> {
        self.kill().await;
        let container = self.template["spec"]["containers"][0].clone();
        self.child = Some(self.spawn(cluster, &container).await?);
        self.starts += 1;
        Ok(())
    }

    /// SIGKILLs the container (a crash, an evicted pod) and reaps it.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// The Pod object's name (`metadata.name` in the container).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id of the running container.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Whether the container still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The folder standing in for a volume (e.g. the coordinator's data PVC).
    pub fn volume(&self, name: &str) -> PathBuf {
        self.root.path().join("volumes").join(name)
    }

    /// Everything every container of this pod wrote (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("pod.log")
    }

    /// Waits until the log contains `needle`; returns the line that does.
    pub async fn wait_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return Ok(line.to_string());
            }
            if !self.is_running() {
                bail!(
                    "{} exited before logging {needle:?}: {}",
                    self.spec.deployment,
                    self.log()
                );
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "{} did not log {needle:?} within {timeout:?}: {}",
                    self.spec.deployment,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pod_security(&self) -> (Option<u32>, Option<u32>) {
        let sc = &self.template["spec"]["securityContext"];
        (
            sc["runAsUser"].as_u64().map(|u| u as u32),
            sc["runAsGroup"].as_u64().map(|g| g as u32),
        )
    }

    /// Writes every volume and the ServiceAccount files into the pod's folder.
    async fn materialise(&self, cluster: &RealCluster) -> anyhow::Result<()> {
        let ns = &self.spec.namespace;
        let (uid, gid) = self.pod_security();
        let volumes = self.template["spec"]["volumes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for v in &volumes {
            let name = v["name"].as_str().context("a volume without a name")?;
            let dir = self.volume(name);
            std::fs::create_dir_all(&dir)?;
            if let Some(cm) = v["configMap"]["name"].as_str() {
                let obj = get_json(cluster, "configmap", ns, cm).await?;
                for (k, val) in obj["data"].as_object().into_iter().flatten() {
                    std::fs::write(dir.join(k), val.as_str().unwrap_or_default())?;
                }
            } else if let Some(secret) = v["secret"]["secretName"].as_str() {
                let obj = get_json(cluster, "secret", ns, secret).await?;
                for (k, val) in obj["data"].as_object().into_iter().flatten() {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(val.as_str().unwrap_or_default())?;
                    std::fs::write(dir.join(k), bytes)?;
                }
            } else if v.get("emptyDir").is_none() && v.get("persistentVolumeClaim").is_none() {
                bail!("the stand-in kubelet cannot mount volume {v}");
            }
            chown_tree(&dir, uid, gid)?;
        }
        let sa_name = self.template["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default");
        let sa = self.root.path().join("serviceaccount");
        std::fs::create_dir_all(&sa)?;
        let token = cluster.service_account_token(ns, sa_name).await?;
        std::fs::write(sa.join("token"), token)?;
        std::fs::write(sa.join("ca.crt"), cluster.ca_pem())?;
        std::fs::write(sa.join("namespace"), ns)?;
        chown_tree(&sa, uid, gid)?;
        let bin = self.root.path().join("bin");
        std::fs::create_dir_all(&bin)?;
        // Copies, not links: the originals may sit under a path the pod's mounts hide.
        install_copy(&self.spec.helm, &bin.join("helm"))?;
        let container = &self.template["spec"]["containers"][0];
        let image = container["image"]
            .as_str()
            .context("a container without an image")?;
        let name = image_binary(image);
        install_copy(&our_bin(name), &bin.join(name))?;
        Ok(())
    }

    /// Starts one container of the pod in its own mount namespace.
    async fn spawn(
        &self,
        cluster: &RealCluster,
        container: &Value,
    ) -> anyhow::Result<tokio::process::Child> {
        let image = container["image"]
            .as_str()
            .context("a container without an image")?;
        let binary = self.root.path().join("bin").join(image_binary(image));

        let mut args: Vec<String> = container["command"]
            .as_array()
            .into_iter()
            .flatten()
            .skip(1)
            .chain(container["args"].as_array().into_iter().flatten())
            .filter_map(|a| a.as_str().map(String::from))
            .collect();
        for a in &mut args {
            if let Some((_, with)) = self.spec.rewrite.iter().find(|(p, _)| a.starts_with(p)) {
                *a = with.clone();
            }
        }

        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert(
            "PATH".into(),
            format!("{}:/usr/bin:/bin", self.root.path().join("bin").display()),
        );
        env.insert("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into());
        env.insert("KUBERNETES_SERVICE_PORT".into(), self.api_port.to_string());
        for e in container["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().context("an env var without a name")?;
            if let Some(v) = self.env_value(cluster, e).await? {
                env.insert(name.to_string(), v);
            }
        }
        env.extend(self.spec.env.iter().cloned());

        let mounts = self.mounts(container)?;

        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = std::process::Command::new(&binary);
        cmd.args(&args)
            .env_clear()
            .envs(&env)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let (uid, gid) = self.pod_security();
        enter_pod(&mut cmd, &mounts, uid, gid)?;
        tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} for {}", binary.display(), self.spec.deployment))
    }

    /// The container's volumeMounts, then the ServiceAccount folder, as (source, mountPath).
    fn mounts(&self, container: &Value) -> anyhow::Result<Vec<(PathBuf, PathBuf)>> {
        let mut mounts: Vec<(PathBuf, PathBuf)> = Vec::new();
        for m in container["volumeMounts"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().context("a volumeMount without a name")?;
            let path = m["mountPath"]
                .as_str()
                .context("a volumeMount without a path")?;
            mounts.push((self.volume(name), PathBuf::from(path)));
        }
        mounts.push((
            self.root.path().join("serviceaccount"),
            PathBuf::from(SA_DIR),
        ));
        // Mount points must exist; they are empty folders, and the mounts stay private.
        for (_, target) in &mounts {
            std::fs::create_dir_all(target)
                .with_context(|| format!("creating mount point {}", target.display()))?;
        }
        Ok(mounts)
    }

    /// `kubectl exec <pod> -- <binary> <args>`: the main container's binary with `args`, its
    /// mounts and user; returns what it printed.
    pub async fn exec(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let container = &self.template["spec"]["containers"][0];
        let image = container["image"]
            .as_str()
            .context("a container without an image")?;
        let binary = self.root.path().join("bin").join(image_binary(image));
        let mut cmd = std::process::Command::new(&binary);
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .env("KUBERNETES_SERVICE_PORT", self.api_port.to_string())
            .current_dir("/")
            .stdin(Stdio::null());
        let (uid, gid) = self.pod_security();
        enter_pod(&mut cmd, &self.mounts(container)?, uid, gid)?;
        let out = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "exec {} {args:?} failed ({}): {}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out)
    }

    /// One env var's value: literal, or from a Secret, ConfigMap or the pod's own fields;
    /// `None` for an optional reference that does not resolve.
    async fn env_value(&self, cluster: &RealCluster, e: &Value) -> anyhow::Result<Option<String>> {
        if let Some(v) = e["value"].as_str() {
            return Ok(Some(v.to_string()));
        }
        let from = &e["valueFrom"];
        let ns = &self.spec.namespace;
        for (kind, field) in [("secret", "secretKeyRef"), ("configmap", "configMapKeyRef")] {
            let r = &from[field];
            if r.is_null() {
                continue;
            }
            let name = r["name"].as_str().context("a reference without a name")?;
            let key = r["key"].as_str().context("a reference without a key")?;
            let optional = r["optional"].as_bool().unwrap_or(false);
            let obj = match get_json(cluster, kind, ns, name).await {
                Ok(o) => o,
                Err(_) if optional => return Ok(None),
                Err(e) => return Err(e),
            };
            let raw = match kind {
                "secret" => obj["data"][key].as_str().map(|b| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b)
                        .map(|v| String::from_utf8_lossy(&v).into_owned())
                }),
                _ => obj["data"][key].as_str().map(|s| Ok(s.to_string())),
            };
            return match raw {
                Some(v) => Ok(Some(v?)),
                None if optional => Ok(None),
                None => bail!("{kind} {ns}/{name} has no key {key}"),
            };
        }
        if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
            return Ok(Some(match path {
                "metadata.namespace" => ns.clone(),
                "metadata.name" => self.name.clone(),
                "spec.serviceAccountName" => self.template["spec"]["serviceAccountName"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string(),
                other => bail!("the stand-in kubelet does not resolve fieldRef {other}"),
            }));
        }
        bail!("the stand-in kubelet cannot resolve env {e}")
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

/// Our binary for an image: its repository's last path segment (`…/skoala-agent:tag`).
fn image_binary(image: &str) -> &str {
    let repo = image.rsplit_once(':').map_or(image, |(r, _)| r);
    repo.rsplit('/').next().unwrap_or(repo)
}

/// Puts an executable copy of `from` at `to` (a hard link where the file system allows).
fn install_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    }
    Ok(())
}

/// The Deployment `spec` names, as the API server holds it.
async fn deployment(cluster: &RealCluster, spec: &PodSpec) -> anyhow::Result<Value> {
    get_json(cluster, "deployment", &spec.namespace, &spec.deployment).await
}

async fn get_json(
    cluster: &RealCluster,
    kind: &str,
    ns: &str,
    name: &str,
) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(
        &cluster
            .kubectl(&["get", kind, name, "-n", ns, "-o", "json"])
            .await?,
    )?)
}

fn chown_tree(dir: &Path, uid: Option<u32>, gid: Option<u32>) -> anyhow::Result<()> {
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    std::os::unix::fs::chown(dir, uid, gid)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            chown_tree(&entry.path(), uid, gid)?;
        } else {
            std::os::unix::fs::chown(entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// In the child, before exec: a private mount namespace with the pod's mounts, the pod's user
/// and group, and death with the test (set last: changing credentials clears it).
#[allow(
    unsafe_code,
    reason = "libc has the only unshare, mount, setgid and setuid; Command::pre_exec is unsafe"
)]
fn enter_pod(
    cmd: &mut std::process::Command,
    mounts: &[(PathBuf, PathBuf)],
    uid: Option<u32>,
    gid: Option<u32>,
) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let cstr = |p: &Path| CString::new(p.as_os_str().as_bytes()).context("a path with a NUL");
    let mounts: Vec<(CString, CString)> = mounts
        .iter()
        .map(|(s, t)| Ok((cstr(s)?, cstr(t)?)))
        .collect::<anyhow::Result<_>>()?;
    let root = CString::new("/").expect("no NUL");
    // SAFETY: only async-signal-safe system calls on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc != 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for (src, target) in &mounts {
                check(libc::mount(
                    src.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
            }
            if let Some(g) = gid {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(g))?;
            }
            if let Some(u) = uid {
                check(libc::setuid(u))?;
            }
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
            Ok(())
        });
    }
    Ok(())
}
