//! Finds the workspace's binaries next to the test executable, building them first with the same profile and
//! target dir, so `cargo test`/`cargo nextest run` work from a clean clone and never test a stale binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, bail};

/// Binaries already built by this test process (cargo itself serialises builds across processes).
static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Path of binary `bin` of package `package`, built if needed.
pub fn cargo_bin(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    // The test executable is <target>/<profile>/deps/<name>-<hash>.
    let exe = std::env::current_exe().context("locating the test executable")?;
    let profile_dir = exe.parent().and_then(Path::parent).context("test executable has no profile dir")?;
    let target_dir = profile_dir.parent().context("profile dir has no parent")?;
    let path = profile_dir.join(bin);

    let mut built = BUILT.lock().map_err(|_| anyhow::anyhow!("binary lock poisoned"))?;
    if !built.iter().any(|b| b == bin) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // The Makefile's `nextest` target runs this same command before the tests, so here it is a no-op there.
        cmd.args(["build", "--quiet", "-p", package, "--bin", bin, "--target-dir"])
            .arg(target_dir)
            .current_dir(workspace_root());
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
            bail!("cargo build of {bin} failed: {status}");
        }
        built.push(bin.to_owned());
    }
    if !path.exists() {
        bail!("{} missing after cargo build", path.display());
    }
    Ok(path)
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
