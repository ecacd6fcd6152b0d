//! Finds the workspace's binaries next to the test executable, building them first with the same profile and
//! target dir, so `cargo test`/`cargo nextest run` work from a clean clone and never test a stale binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, bail};

/// The packages whose binaries the system tests run. They are always built together, in one command that the
/// Makefile's `nextest` target and scripts/check-deploy.sh run too: cargo unifies features per command, so a
/// build of one of them alone would make different artefacts and each caller would build again.
pub const PACKAGES: [&str; 3] = ["comet-nameserver", "comet-broker", "comet"];

/// Whether this test process has run the build (cargo itself serialises builds across processes).
static BUILT: Mutex<bool> = Mutex::new(false);

/// Path of binary `bin` of package `package` (one of [`PACKAGES`]), built if needed.
pub fn cargo_bin(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(PACKAGES.contains(&package), "{package} is not among the harness's packages {PACKAGES:?}");
    // The test executable is <target>/<profile>/deps/<name>-<hash>.
    let exe = std::env::current_exe().context("locating the test executable")?;
    let profile_dir = exe.parent().and_then(Path::parent).context("test executable has no profile dir")?;
    let target_dir = profile_dir.parent().context("profile dir has no parent")?;
    let path = profile_dir.join(bin);

    let mut built = BUILT.lock().map_err(|_| anyhow::anyhow!("binary lock poisoned"))?;
    if !*built {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet"]);
        for p in PACKAGES {
            cmd.args(["-p", p]);
        }
        cmd.args(["--bins", "--target-dir"]).arg(target_dir).current_dir(workspace_root());
        // Not the variables cargo sets for this test process: build scripts that track one (ring's tracks
        // CARGO_MANIFEST_DIR) would see it changed and rebuild their crate and everything above it.
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(set_for_tests) {
                cmd.env_remove(key);
            }
        }
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(other) => {
                cmd.args(["--profile", other]);
            }
            None => bail!("odd profile dir {}", profile_dir.display()),
        }
        let status = cmd.status().with_context(|| format!("running cargo build for {bin}"))?;
        if !status.success() {
            bail!("cargo build of {PACKAGES:?} failed: {status}");
        }
        *built = true;
    }
    if !path.exists() {
        bail!("{} missing after cargo build", path.display());
    }
    Ok(path)
}

/// Whether cargo sets `key` for a test process (package metadata, binary paths, scratch dirs).
fn set_for_tests(key: &str) -> bool {
    matches!(
        key,
        "CARGO_MANIFEST_DIR"
            | "CARGO_MANIFEST_PATH"
            | "CARGO_CRATE_NAME"
            | "CARGO_PRIMARY_PACKAGE"
            | "CARGO_TARGET_TMPDIR"
            | "OUT_DIR"
    ) || key.starts_with("CARGO_PKG_")
        || key.starts_with("CARGO_BIN_")
}

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// grpcurl from the project venv (`make setup` installs it).
pub fn grpcurl() -> anyhow::Result<PathBuf> {
    let path = workspace_root().join(".venv/bin/grpcurl");
    if !path.exists() {
        bail!("{} not found: run `make setup` (scripts/setup.sh) first", path.display());
    }
    Ok(path)
}
