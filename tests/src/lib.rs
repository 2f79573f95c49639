//! Support for the black-box tests: builds the real artifacts (the `host` binary, the plugin
//! libraries, the test fixtures) and runs the binary the way a person would.
//!
//! The workspace's own plugins and the host are built with `cargo build` into the normal
//! target directory (cargo does not hold its lock while tests run). Test-only fixture
//! plugins are built into `<target>/fixtures`, so they never land beside the real host
//! binary, where its default plugin search would find them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

/// Paths of the built artifacts.
#[derive(Debug)]
pub struct Artifacts {
    /// The `host` binary.
    pub host: PathBuf,
    /// The fake backend's library.
    pub fake: PathBuf,
    /// The local backend's library.
    pub local: PathBuf,
    /// The target directory (`target/`).
    pub target: PathBuf,
    /// `debug` or `release`.
    pub profile: String,
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace());
    c
}

/// The shared-library file name of crate `name` on this platform.
pub fn dylib_name(name: &str) -> String {
    format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// Builds (once per test process) and returns the host binary and the workspace plugins.
pub fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<Artifacts> = OnceLock::new();
    ARTIFACTS.get_or_init(|| {
        // <target>/<profile>/deps/<test binary>
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in <target>/<profile>/deps");
        let target = profile_dir.parent().expect("target dir").to_path_buf();
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_owned();
        let mut cmd = cargo();
        cmd.args([
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
        .arg(&target);
        if profile == "release" {
            cmd.arg("--release");
        }
        run_cargo(cmd, "build the host and its plugins");
        Artifacts {
            host: profile_dir.join(format!("host{}", std::env::consts::EXE_SUFFIX)),
            fake: profile_dir.join(dylib_name("fake")),
            local: profile_dir.join(dylib_name("local")),
            target,
            profile,
        }
    })
}

fn run_cargo(mut cmd: Command, what: &str) {
    let out = cmd
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to {what}: {e}"));
    assert!(
        out.status.success(),
        "cargo failed to {what}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the fixture crate `tests/fixtures/<name>` (once per test process) into
/// `<target>/fixtures` and returns its library.
pub fn fixture(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let a = artifacts();
    let dir = a.target.join("fixtures");
    let lib = dir.join(&a.profile).join(dylib_name(name));
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let mut cmd = cargo();
        cmd.args(["build", "--quiet", "-p", name, "--target-dir"])
            .arg(&dir);
        if a.profile == "release" {
            cmd.arg("--release");
        }
        run_cargo(cmd, &format!("build fixture {name}"));
        built.push(name.to_owned());
    }
    lib
}

/// A temporary plugin directory holding copies of the given files under the given names.
pub fn plugin_dir(files: &[(&str, &Path)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, src) in files {
        std::fs::copy(src, dir.path().join(name))
            .unwrap_or_else(|e| panic!("copy {} to {name}: {e}", src.display()));
    }
    dir
}

/// The host binary with `--plugin-dir dir`, and an environment free of backend config and
/// plugin paths inherited from whoever runs the tests.
pub fn host(dir: &Path) -> Command {
    let mut cmd = Command::new(&artifacts().host);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("BACKEND_") || k.starts_with("HOST_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.arg("--plugin-dir").arg(dir);
    cmd.stdin(Stdio::null());
    cmd
}

/// Output decoded for assertions.
pub struct Ran {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
    /// Standard output, raw.
    pub raw_stdout: Vec<u8>,
}

impl From<Output> for Ran {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            raw_stdout: o.stdout,
        }
    }
}

/// Runs `cmd` to completion.
pub fn run(mut cmd: Command) -> Ran {
    cmd.output().expect("run host").into()
}

/// A temporary script file with `content`.
pub fn script(content: &str) -> tempfile::NamedTempFile {
    use std::io::Write as _;
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(content.as_bytes()).expect("write script");
    f
}
