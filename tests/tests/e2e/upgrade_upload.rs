//! "No upgrade without an uploaded backup", helm 3 and 4: with an upload hook, the backup is
//! handed over after it is stored and before the upgrade starts (the progress event carries it
//! too); a failing upload fails the operation before anything else changes.

use std::sync::{Arc, Mutex};

use skoala_e2e::charts::{UpgradeFixture, custom_values, repo_source, start_repo};
use skoala_e2e::tools::helm_versions;
use skoala_upgrade::{
    Backup, BackupUpload, Executor, Helm, Operation, Outcome, Phase, ProgressEvent, ReleaseSpec,
    Step,
};

async fn run(
    exec: &Executor,
    op: &str,
    spec: &ReleaseSpec,
) -> anyhow::Result<(skoala_upgrade::Report, Vec<ProgressEvent>)> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let collect = tokio::spawn(async move {
        let mut v = Vec::new();
        while let Some(e) = rx.recv().await {
            v.push(e);
        }
        v
    });
    let report = exec.run(&Operation::new(op), spec, tx).await?;
    Ok((report, collect.await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backup_is_uploaded_before_the_upgrade() -> anyhow::Result<()> {
    let repo = start_repo().await?;
    for (label, helm) in helm_versions() {
        let fx = UpgradeFixture::start(
            label,
            &helm,
            skoala_sim::ClusterConfig::new(format!("upload-{label}")),
        )
        .await?;
        fx.install(&repo, "skoala-init", "0.19.0", &custom_values())
            .await?;
        let before = fx.release("skoala-init").await?;
        let spec = ReleaseSpec::skoala_init(repo_source(&repo), "0.19.2");
        let helm_for = || Helm::detect(&helm, fx.cluster.kubeconfig_path());

        // A coordinator that is unreachable: the upgrade must not start.
        let failing: BackupUpload =
            Arc::new(|_| Box::pin(async { Err("coordinator unreachable".to_string()) }));
        let exec = Executor::new(fx.client.clone(), helm_for().await?).with_backup_upload(failing);
        let (r, events) = run(&exec, "op-upload-fails", &spec).await?;
        assert_eq!(
            (r.outcome, r.failed_step),
            (Outcome::Failed, Some(Step::Backup)),
            "{label}: {r:#?}"
        );
        assert!(
            r.message.contains("coordinator unreachable"),
            "{label}: {}",
            r.message
        );
        assert!(
            !events.iter().any(|e| e.step == Step::Upgrade),
            "{label}: no upgrade started"
        );
        assert_eq!(fx.release("skoala-init").await?, before, "{label}");

        // A working upload: called once, with the stored backup, before the upgrade started.
        let uploaded: Arc<Mutex<Vec<(Backup, jiff_free::Stamp)>>> = Arc::default();
        let sink = uploaded.clone();
        let upload: BackupUpload = Arc::new(move |b| {
            let sink = sink.clone();
            Box::pin(async move {
                sink.lock()
                    .expect("lock")
                    .push((b, jiff_free::Stamp::now()));
                Ok(())
            })
        });
        let exec = Executor::new(fx.client.clone(), helm_for().await?).with_backup_upload(upload);
        let (r, events) = run(&exec, "op-upload", &spec).await?;
        assert_eq!(r.outcome, Outcome::Succeeded, "{label}: {r:#?}");
        let uploaded = uploaded.lock().expect("lock").clone();
        assert_eq!(uploaded.len(), 1, "{label}");
        assert_eq!(Some(&uploaded[0].0), r.backup.as_ref(), "{label}");
        let backup_event = events
            .iter()
            .find(|e| e.step == Step::Backup && e.phase == Phase::Finished)
            .expect("backup finished");
        assert_eq!(
            backup_event.backup.as_ref(),
            r.backup.as_ref(),
            "{label}: the event carries it"
        );
        let upgrade_started = events
            .iter()
            .position(|e| e.step == Step::Upgrade && e.phase == Phase::Started)
            .expect("upgrade started");
        let backup_done = events
            .iter()
            .position(|e| e.step == Step::Backup && e.phase == Phase::Finished)
            .expect("backup finished");
        assert!(backup_done < upgrade_started, "{label}");
        assert!(
            uploaded[0].1 <= jiff_free::Stamp::of(&events[upgrade_started]),
            "{label}: uploaded before the upgrade started"
        );
    }
    Ok(())
}

/// Wall-clock stamps comparable with the events' timestamps (this crate has no time crate).
mod jiff_free {
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    pub struct Stamp(pub std::time::SystemTime);
    impl Stamp {
        pub fn now() -> Self {
            Stamp(std::time::SystemTime::now())
        }
        pub fn of(e: &skoala_upgrade::ProgressEvent) -> Self {
            let nanos = e.at.as_nanosecond();
            let since = std::time::Duration::from_nanos(u64::try_from(nanos).expect("after 1970"));
            Stamp(std::time::UNIX_EPOCH + since)
        }
    }
}
