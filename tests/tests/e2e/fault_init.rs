//! Issue 14, finding 9: `skoala-coordinator init` is atomic. Its data dir is a tmpfs too small
//! for what `init` writes, so the kernel refuses a write half-way (ENOSPC), a real fault. A
//! half-written data dir made `serve` fail on every restart and a second `init` refuse ("already
//! holds a fleet CA"); now `init` says what failed, leaves the data dir as it found it, and once
//! the disk has room a plain `init` succeeds and `serve` runs, clearing what an interrupted
//! `init` left.

use skoala_e2e::fleet::{CoordinatorOptions, DataDirSetup};

/// Room for two of the files `init` writes (tmpfs counts a page per small file), not for all.
const TOO_SMALL: u64 = 2 * 4096;

fn entries(dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let mut names = std::fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_on_a_full_disk_leaves_nothing_behind_and_succeeds_once_there_is_room()
-> anyhow::Result<()> {
    let setup = DataDirSetup::new(Some(TOO_SMALL))?;
    let failed = setup.init(&[])?;
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "init on a full disk: {stderr}");
    assert_eq!(
        entries(&setup.path())?,
        Vec::<String>::new(),
        "init left a partial data dir behind; stderr: {stderr}"
    );
    assert!(
        stderr.contains("No space left on device"),
        "the error names the cause: {stderr}"
    );
    assert!(
        stderr.contains("nothing was published"),
        "the error says the data dir is unchanged: {stderr}"
    );

    setup.resize(1024 * 1024)?;
    let ok = setup.init(&[])?;
    assert!(
        ok.status.success(),
        "init once there is room: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        entries(&setup.path())?,
        [
            "admin.yaml",
            "ca-key.pem",
            "ca.pem",
            "server-key.pem",
            "server.pem"
        ],
    );
    // What an `init --overwrite-ca` killed half-way would leave: a staged key, never
    // published. `serve` clears it, says so, and serves the CA that was there.
    let staging = setup.path().join(".init");
    std::fs::create_dir(&staging)?;
    std::fs::write(staging.join("ca-key.pem"), "half a key")?;
    let ca = std::fs::read(setup.path().join("ca.pem"))?;
    let coord = setup
        .serve(CoordinatorOptions {
            metrics: true,
            ..Default::default()
        })
        .await?;
    assert!(
        coord.log().contains("removing a partial init"),
        "{}",
        coord.log()
    );
    assert!(!staging.exists());
    assert_eq!(std::fs::read(coord.ca_file())?, ca);
    let clusters = coord.ctl().clusters().await?;
    assert_eq!(clusters, Vec::<serde_json::Value>::new());
    Ok(())
}
