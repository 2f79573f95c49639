//! The built host and plugins the figures measure, in this binary's own profile directory.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Artifacts {
    pub host: PathBuf,
    pub fake: PathBuf,
    pub local: PathBuf,
}

/// Builds the host and the plugins with the profile this binary was built with.
pub fn build() -> Artifacts {
    let exe = std::env::current_exe().expect("own path");
    let profile_dir = exe.parent().expect("profile dir").to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let target = profile_dir.parent().expect("target dir");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace)
        .args([
            "build",
            "--quiet",
            "-p",
            "host",
            "-p",
            "fake",
            "-p",
            "local",
            "--target-dir",
        ])
        .arg(target);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo");
    assert!(
        status.success(),
        "cargo build of the host and plugins failed"
    );
    Artifacts {
        host: profile_dir.join("host"),
        fake: profile_dir.join("libfake.so"),
        local: profile_dir.join("liblocal.so"),
    }
}

/// A fresh plugin directory holding copies of `files` (name, source).
pub fn plugin_dir(files: &[(String, &Path)]) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "bench-plugins-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("plugin dir");
    for (name, src) in files {
        std::fs::copy(src, dir.join(name)).expect("copy plugin");
    }
    dir
}
