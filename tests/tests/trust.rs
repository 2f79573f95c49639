//! Plugin trust and robustness: every bad file is refused or survived with a one-line
//! reason a person can act on, and the good plugin beside it still loads.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use blackbox::{artifacts, c_library, edit_file, fixture, host, plugin_dir, run, variant_plugin};

/// `list-backends --json` in `dir`: (aliases loaded, [(file name, reason)] rejected).
fn listing(dir: &Path, extra: &[&str]) -> (Vec<String>, Vec<(String, String)>) {
    let mut cmd = host(dir);
    cmd.args(extra).args(["list-backends", "--json"]);
    let out = run(cmd);
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", out.stdout, out.stderr));
    let aliases = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["alias"].as_str().unwrap().to_owned())
        .collect();
    let rejected = v["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let path = r["path"].as_str().unwrap();
            let name = Path::new(path)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (name, r["reason"].as_str().unwrap().to_owned())
        })
        .collect();
    (aliases, rejected)
}

/// Puts `file` as `name` beside a good fake plugin and checks that exactly it is refused
/// with a one-line reason containing every `expected` part, while fake loads; then that
/// `host inspect` gives the same reason.
fn refused(dir: &Path, name: &str, expected: &[&str]) {
    let (aliases, rejected) = listing(dir, &[]);
    assert_eq!(
        aliases,
        ["fake"],
        "the good plugin still loads beside {name}"
    );
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let (file, reason) = &rejected[0];
    assert_eq!(file, name);
    assert!(!reason.contains('\n'), "one line: {reason}");
    for part in expected {
        assert!(
            reason.contains(part),
            "{name}: {reason:?} should contain {part:?}"
        );
    }
    let mut cmd = host(dir);
    cmd.arg("inspect").arg(dir.join(name));
    let out = run(cmd);
    assert_eq!(out.code, Some(4), "{}", out.stdout);
    assert!(
        out.stdout.contains(expected[0]),
        "inspect {name}:\n{}",
        out.stdout
    );
}

fn with_fake() -> tempfile::TempDir {
    plugin_dir(&[("libfake.so", &artifacts().fake)])
}

#[test]
fn files_that_are_not_libraries_are_refused_in_one_line() {
    let dir = with_fake();
    std::fs::write(dir.path().join("empty.so"), b"").unwrap();
    refused(
        dir.path(),
        "empty.so",
        &["not a loadable shared library", "file too short"],
    );
    std::fs::remove_file(dir.path().join("empty.so")).unwrap();

    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("random.so"), random).unwrap();
    refused(dir.path(), "random.so", &["not a loadable shared library"]);
    std::fs::remove_file(dir.path().join("random.so")).unwrap();

    std::fs::write(dir.path().join("text.so"), "this is a text file\n").unwrap();
    refused(dir.path(), "text.so", &["not a loadable shared library"]);
    std::fs::remove_file(dir.path().join("text.so")).unwrap();

    let real = std::fs::read(&artifacts().fake).unwrap();
    // Cut inside the loadable segments: mapped as it is, the host would die of SIGBUS.
    std::fs::write(dir.path().join("truncated.so"), &real[..64 * 1024]).unwrap();
    refused(
        dir.path(),
        "truncated.so",
        &["not a loadable shared library: truncated ELF file"],
    );
    std::fs::remove_file(dir.path().join("truncated.so")).unwrap();

    std::fs::create_dir(dir.path().join("x.so")).unwrap();
    refused(
        dir.path(),
        "x.so",
        &["not a regular file (it is a directory)"],
    );
}

#[test]
fn a_shared_library_that_is_not_a_plugin_says_so() {
    let lib = c_library("notaplugin", "int answer(void) { return 42; }\n");
    let dir = with_fake();
    std::fs::copy(&lib, dir.path().join("libnotaplugin.so")).unwrap();
    refused(
        dir.path(),
        "libnotaplugin.so",
        &["not a backend plugin: it does not export a plugin-api root module"],
    );
}

#[test]
fn a_plugin_built_with_another_abi_stable_says_which() {
    // The header abi_stable 0.10 would have written: same magic, ABI 0.10.
    let lib = c_library(
        "oldabi",
        "struct header { char magic[32]; unsigned major; unsigned minor; };\n\
         struct header _1as_0lib_1header_0root_bmodule_bloader =\n\
         { \"abi stable library for Rust     \", 0, 10 };\n",
    );
    let dir = with_fake();
    std::fs::copy(&lib, dir.path().join("liboldabi.so")).unwrap();
    refused(
        dir.path(),
        "liboldabi.so",
        &[
            "incompatible abi_stable",
            "abi_stable ABI 0.10",
            "this host uses abi_stable ABI 0.11",
            "rebuild",
        ],
    );
}

#[test]
fn a_plugin_built_against_plugin_api_2_is_refused_with_what_to_do() {
    let lib = variant_plugin("fakeapitwo", |v| {
        let current = plugin_api::PLUGIN_API_VERSION;
        edit_file(
            &v.api.join("Cargo.toml"),
            &format!("version = \"{current}\""),
            "version = \"2.0.0\"",
        );
        edit_file(
            &v.root.join("Cargo.toml"),
            &format!("version = \"{current}\" }}"),
            "version = \"2.0.0\" }",
        );
    });
    let dir = with_fake();
    std::fs::copy(&lib, dir.path().join("libfakeapitwo.so")).unwrap();
    refused(
        dir.path(),
        "libfakeapitwo.so",
        &["built against plugin-api 2.0.0, this host supports 1.x: rebuild the plugin against plugin-api 1.x"],
    );
}

#[test]
fn a_plugin_with_a_changed_layout_gets_a_summary_not_thousands_of_lines() {
    let lib = variant_plugin("fakelayout", |v| {
        edit_file(
            &v.api.join("src/ffi.rs"),
            "pub struct BackendMod {\n",
            "pub struct BackendMod {\n    /// A field this host does not expect, first.\n    pub layout_probe: u64,\n",
        );
        edit_file(
            &v.api.join("src/sdk/adapter.rs"),
            "    BackendMod {\n",
            "    BackendMod {\n        layout_probe: 0,\n",
        );
    });
    let dir = with_fake();
    std::fs::copy(&lib, dir.path().join("libfakelayout.so")).unwrap();
    refused(
        dir.path(),
        "libfakelayout.so",
        &["ABI layout mismatch", "Error:"],
    );
    let mut cmd = host(dir.path());
    cmd.arg("inspect").arg(dir.path().join("libfakelayout.so"));
    let out = run(cmd);
    assert!(
        out.stdout.lines().count() < 15,
        "a summary, not the full report:\n{}",
        out.stdout
    );
}

#[test]
fn a_plugin_whose_root_loader_panics_is_refused_and_the_host_lives() {
    let dir = with_fake();
    std::fs::copy(fixture("rootpanic"), dir.path().join("librootpanic.so")).unwrap();
    refused(
        dir.path(),
        "librootpanic.so",
        &["root module failed to initialise: it panicked"],
    );
}

#[test]
fn writable_files_and_directories_are_refused_before_opening() {
    let dir = with_fake();
    let bad = dir.path().join("libwritable.so");
    std::fs::copy(&artifacts().fake, &bad).unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o666)).unwrap();
    refused(
        dir.path(),
        "libwritable.so",
        &[
            "refused:",
            "writable by group or others (mode 0666)",
            "chmod go-w",
        ],
    );

    // A good plugin in a world-writable directory.
    let open = tempfile::tempdir().unwrap();
    std::fs::copy(&artifacts().fake, open.path().join("libfake.so")).unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (aliases, rejected) = listing(open.path(), &[]);
    assert!(aliases.is_empty());
    assert!(
        rejected[0]
            .1
            .contains("is writable by group or others (mode 0777); a plugin directory"),
        "{rejected:?}"
    );
}

#[test]
fn symlinks_are_judged_by_what_they_point_to() {
    let store = tempfile::tempdir().unwrap();
    let good = store.path().join("good.so");
    std::fs::copy(&artifacts().fake, &good).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&good, dir.path().join("libfake.so")).unwrap();
    let (aliases, rejected) = listing(dir.path(), &[]);
    assert_eq!(aliases, ["fake"], "{rejected:?}");

    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o646)).unwrap();
    let (aliases, rejected) = listing(dir.path(), &[]);
    assert!(aliases.is_empty());
    assert!(
        rejected[0]
            .1
            .contains("good.so is writable by group or others (mode 0646)"),
        "{rejected:?}"
    );
}

#[test]
fn a_file_owned_by_another_user_is_refused() {
    // SAFETY-free check of who we are: the CI runs the tests as root, which can chown.
    let dir = with_fake();
    let other = dir.path().join("libnobody.so");
    std::fs::copy(&artifacts().fake, &other).unwrap();
    let status = std::process::Command::new("chown")
        .args(["65534"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "chown to nobody needs root: run the tests as root (CI does)"
    );
    refused(
        dir.path(),
        "libnobody.so",
        &[
            "is owned by uid 65534",
            "owned by root or by the user running the host",
        ],
    );
}

#[test]
fn a_lock_refuses_unlisted_and_changed_files_and_write_lock_makes_one() {
    let dir = with_fake();
    std::fs::copy(&artifacts().local, dir.path().join("liblocal.so")).unwrap();
    let lock = tempfile::tempdir().unwrap();
    let lock_file = lock.path().join("plugins.lock");
    // Write a lock from what loads now: both.
    let mut cmd = host(dir.path());
    cmd.args(["list-backends", "--write-lock"]).arg(&lock_file);
    assert_eq!(run(cmd).code, Some(0));
    let text = std::fs::read_to_string(&lock_file).unwrap();
    assert!(
        text.contains("  libfake.so\n") && text.contains("  liblocal.so\n"),
        "{text}"
    );

    let flag = ["--plugin-lock", lock_file.to_str().unwrap()];
    let (aliases, rejected) = listing(dir.path(), &flag);
    assert_eq!(aliases, ["fake", "local"], "{rejected:?}");

    // A lock that pins a different hash for local, and does not list a new file.
    let fake_line = text.lines().find(|l| l.ends_with("libfake.so")).unwrap();
    std::fs::write(
        &lock_file,
        format!("{fake_line}\n{}  liblocal.so\n", "0".repeat(64)),
    )
    .unwrap();
    std::fs::copy(&artifacts().fake, dir.path().join("libextra.so")).unwrap();
    let (aliases, rejected) = listing(dir.path(), &flag);
    assert_eq!(aliases, ["fake"]);
    let reason = |n: &str| {
        rejected
            .iter()
            .find(|(f, _)| f == n)
            .map(|(_, r)| r.clone())
            .unwrap()
    };
    assert!(
        reason("libextra.so").contains("not listed in the plugin lock"),
        "{rejected:?}"
    );
    assert!(
        reason("liblocal.so").contains(&format!(
            "does not match {} pinned by the plugin lock",
            "0".repeat(64)
        )),
        "{rejected:?}"
    );

    // The directory's own plugins.lock applies without a flag.
    std::fs::copy(&lock_file, dir.path().join("plugins.lock")).unwrap();
    let (aliases, _) = listing(dir.path(), &[]);
    assert_eq!(aliases, ["fake"]);
}

#[test]
fn run_on_a_good_backend_works_beside_bad_files() {
    let dir = with_fake();
    std::fs::write(dir.path().join("garbage.so"), b"garbage").unwrap();
    std::fs::copy(fixture("rootpanic"), dir.path().join("librootpanic.so")).unwrap();
    let s = blackbox::script("");
    let mut cmd = host(dir.path());
    cmd.args(["run", "-c", "LOG_OUTPUT=ok"]).arg(s.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "ok");
    assert!(
        out.stderr.contains("plugin rejected") && out.stderr.contains("garbage.so"),
        "{}",
        out.stderr
    );
}
