//! One plugin policy for every command that opens a library, a checked file that is the file
//! loaded, one table of exit statuses, and a library API without ABI types.

use std::path::Path;
use std::process::Command;

use blackbox::{artifacts, host, plugin_dir, run, sha256, workspace};

/// A directory with fake and local, and a lock beside it pinning only fake.
fn fake_and_local_with_a_lock_for_fake() -> (tempfile::TempDir, tempfile::TempDir) {
    let dir = plugin_dir(&[
        ("libfake.so", &artifacts().fake),
        ("liblocal.so", &artifacts().local),
    ]);
    let lock_dir = tempfile::tempdir().unwrap();
    let fake_hash = sha256(&dir.path().join("libfake.so"));
    std::fs::write(
        lock_dir.path().join("only-fake.lock"),
        format!("{fake_hash}  libfake.so\n"),
    )
    .unwrap();
    (dir, lock_dir)
}

#[test]
fn help_loads_only_what_the_lock_allows() {
    let (dir, lock_dir) = fake_and_local_with_a_lock_for_fake();
    let lock = lock_dir.path().join("only-fake.lock");
    for how in ["env", "flag"] {
        let mut cmd = host(dir.path());
        match how {
            "env" => cmd.env("HOST_PLUGIN_LOCK", &lock).arg("--help"),
            _ => cmd.arg("--plugin-lock").arg(&lock).arg("--help"),
        };
        let out = run(cmd);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert!(
            out.stdout.contains("fake (Fake) config keys"),
            "{how}: {}",
            out.stdout
        );
        assert!(
            !out.stdout.contains("SCRIPTS_DIR"),
            "{how}: local was opened: {}",
            out.stdout
        );
    }
}

#[test]
fn inspect_applies_the_directorys_own_lock() {
    let (dir, lock_dir) = fake_and_local_with_a_lock_for_fake();
    std::fs::copy(
        lock_dir.path().join("only-fake.lock"),
        dir.path().join("plugins.lock"),
    )
    .unwrap();
    let mut cmd = host(dir.path());
    cmd.arg("inspect").arg(dir.path().join("liblocal.so"));
    let out = run(cmd);
    assert_eq!(out.code, Some(4), "{}", out.stdout);
    assert!(
        out.stdout.contains("not listed in the plugin lock"),
        "{}",
        out.stdout
    );
    let mut cmd = host(dir.path());
    cmd.arg("inspect").arg(dir.path().join("libfake.so"));
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert!(
        out.stdout.contains("sha256 pinned by the lock"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_file_swapped_after_its_check_is_not_the_one_loaded() {
    let dir = plugin_dir(&[("libx.so", &artifacts().fake)]);
    let path = dir.path().join("libx.so");
    let lock = tempfile::tempdir().unwrap();
    let lock_path = lock.path().join("x.lock");
    std::fs::write(&lock_path, format!("{}  libx.so\n", sha256(&path))).unwrap();
    let policy = host::PluginPolicy::new(
        vec![host::plugins::loader::PluginDir {
            path: dir.path().to_owned(),
            explicit: true,
        }],
        Some(lock_path),
    );
    let checked = policy
        .check(&path)
        .expect("fake passes the checks and the lock");
    // Between the check and the load, another library is renamed over the checked path.
    let other = dir.path().join("swap.tmp");
    std::fs::copy(&artifacts().local, &other).unwrap();
    std::fs::rename(&other, &path).unwrap();
    let backend = checked.load().expect("the checked file loads");
    assert_eq!(
        backend.alias, "fake",
        "the checked bytes were loaded, not the swapped ones"
    );
    // The swapped file itself is refused by the lock.
    let again = policy
        .check(&path)
        .expect_err("the swapped file is refused");
    assert!(again.to_string().contains("does not match"), "{again}");
}

/// `(code, meaning)` rows of a markdown table whose first column is an exit status.
fn readme_exit_rows(readme: &str) -> Vec<(String, String)> {
    let section = readme
        .split("| exit status | meaning |")
        .nth(1)
        .expect("the README has an exit status table");
    section
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            (cells[0].trim_matches('`').to_owned(), cells[1].to_owned())
        })
        .collect()
}

#[test]
fn the_readme_exit_table_is_the_one_help_prints() {
    let mut cmd = Command::new(&artifacts().host);
    cmd.args(["run", "--help"]);
    let out = run(cmd);
    let help: Vec<(String, String)> = out
        .stdout
        .split("Exit status:\n")
        .nth(1)
        .expect("run --help has the exit table")
        .lines()
        .take_while(|l| l.starts_with("    "))
        .map(|l| {
            let (code, meaning) = l.trim().split_once(' ').unwrap();
            (code.to_owned(), meaning.trim().to_owned())
        })
        .collect();
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    assert_eq!(
        readme_exit_rows(&readme),
        help,
        "README.md's exit table differs from --help's"
    );
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn only_the_abi_module_of_the_host_library_touches_abi_types() {
    let src = workspace().join("host/src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut offenders = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        if rel.starts_with("abi") || rel.starts_with("bin") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for needle in [
            "abi_stable::",
            "async_ffi::",
            "plugin_api::ffi",
            "RVec<",
            "RString",
            "FfiFuture",
            "_TO<",
            "BackendMod",
        ] {
            if text.contains(needle) {
                offenders.push(format!("{}: {needle}", rel.display()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "ABI types outside host/src/abi: {offenders:?}"
    );
}

#[test]
fn test_fixtures_are_not_members_of_the_main_workspace() {
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(workspace())
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(names.contains(&"fake"), "{names:?}");
    for fixture in ["panicky", "rootpanic"] {
        assert!(
            !names.contains(&fixture),
            "{fixture} would be built beside host: {names:?}"
        );
    }
}
