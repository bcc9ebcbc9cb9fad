//! Locating the external tools (`helm`, `helm3`, `kubectl`) and our own binaries.
//!
//! The external tools are installed by `scripts/install-tools.sh` into `.tools/bin` (or wherever
//! `SKOALA_TOOLS_BIN` points). A missing tool is a loud test failure, never a silent skip: CI
//! must not go green because it could not run the real thing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root (the folder holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The folder with the pinned external tools.
pub fn tools_bin() -> PathBuf {
    std::env::var_os("SKOALA_TOOLS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".tools/bin"))
}

/// Path of an external tool, panicking with instructions when it is not installed.
pub fn tool(name: &str) -> PathBuf {
    let path = tools_bin().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/install-tools.sh (or set SKOALA_TOOLS_BIN)",
        path.display()
    );
    path
}

/// The two helm majors every helm-facing test runs with: `(label, binary)`.
pub fn helm_versions() -> [(&'static str, PathBuf); 2] {
    [("helm4", tool("helm")), ("helm3", tool("helm3"))]
}

/// Path of one of our own binaries (`skoala-sim`, `skoala-coordinator`, `skoala-agent`,
/// `skoalactl`), built fresh on first use in this test process.
///
/// `cargo test -p skoala-e2e` does not rebuild other packages' binaries, so without this a test
/// could run a stale binary. `cargo build` is a no-op when nothing changed.
pub fn our_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(workspace_root())
            .args(["build", "--quiet", "--bins", "--workspace"]);
        // cargo gives a test process the variables of the crate under test; a build script
        // that tracks one (ring tracks CARGO_MANIFEST_DIR) would see it change between this
        // build and the next plain `cargo`, and both would rebuild half the dependency tree.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_BIN_EXE_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                ]
                .contains(&key.as_ref())
            {
                build.env_remove(key.as_ref());
            }
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build --bins failed");
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = target.join("debug").join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}
