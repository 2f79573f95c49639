//! Third parties ship backends without recompiling the host: the guide's code is a crate
//! that builds and runs, the template builds on its own outside the workspace, and a
//! plugin built against plugin-api 1.0.0 still loads in this 1.1 host.

use std::path::Path;

use blackbox::{
    artifacts, cargo_in, code_blocks, copy_tree, dylib_name, edit_file, host, plugin_dir, run,
    script, sha256, variant_plugin, workspace,
};

/// The guide's blocks assembled into a crate at `dir`, plugin-api pointed at ours.
fn assemble_guide(dir: &Path) -> usize {
    let guide = std::fs::read_to_string(workspace().join("docs/writing-a-backend.md")).unwrap();
    let api = workspace().join("plugin-api");
    let mut lib = String::new();
    let mut compiled = 0;
    for (info, body) in code_blocks(&guide) {
        let mut words = info.split_whitespace();
        let lang = words.next().unwrap_or("");
        let file = words.find_map(|w| w.strip_prefix("file="));
        match (lang, file) {
            ("rust", None) => lib.push_str(&body),
            ("rust" | "toml", Some(file)) => {
                let path = dir.join(file);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                let body = body.replace(
                    "path = \"../plugin-api\"",
                    &format!("path = {:?}", api.display().to_string()),
                );
                std::fs::write(path, body).unwrap();
            }
            ("sh", None) => continue, // commands for the reader; the test does their work
            (other, _) => panic!("the guide has a code block the test does not compile: {other:?}"),
        }
        compiled += 1;
    }
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/lib.rs"), lib).unwrap();
    // Not a member of any enclosing workspace; pinned to our dependency versions.
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("{text}\n[workspace]\n")).unwrap();
    std::fs::copy(workspace().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    compiled
}

#[test]
fn the_guide_is_a_backend_that_builds_passes_its_tests_and_runs() {
    let dir = artifacts().target.join("fixtures/guide-echo");
    let compiled = assemble_guide(&dir);
    assert!(compiled >= 6, "the guide's code blocks: {compiled}");
    let target = artifacts().target.join("fixtures");
    let target = target.to_str().unwrap();
    cargo_in(&dir, &["test", "--quiet", "--target-dir", target]);
    cargo_in(&dir, &["build", "--quiet", "--target-dir", target]);
    let lib = artifacts()
        .target
        .join("fixtures")
        .join(&artifacts().profile)
        .join(dylib_name("echo_backend"));

    let plugins = plugin_dir(&[("libecho_backend.so", &lib)]);
    let s = script("one\ntwo\n");
    let mut cmd = host(plugins.path());
    cmd.args([
        "-v",
        "run",
        "-b",
        "echo",
        "-c",
        "PREFIX=| ",
        "-c",
        "EXIT_CODE=3",
    ])
    .arg(s.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(3), "{}", out.stderr);
    assert_eq!(out.stdout, "| one\n| two\n");
    assert!(
        out.stderr.contains("starting an echo instance"),
        "plugin logs reach the host:\n{}",
        out.stderr
    );

    let mut cmd = host(plugins.path());
    cmd.args(["run", "-b", "echo", "-c", "DELAY=soon"])
        .arg(s.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(78));
    assert!(out.stderr.contains("DELAY"), "{}", out.stderr);
}

#[test]
fn the_template_builds_outside_the_workspace_and_an_unchanged_host_runs_it() {
    let host_bin = &artifacts().host;
    let before = sha256(host_bin);

    let outside = tempfile::tempdir().unwrap();
    let crate_dir = outside.path().join("my-backend");
    copy_tree(&workspace().join("examples/backend-template"), &crate_dir);
    let api = workspace().join("plugin-api").display().to_string();
    edit_file(
        &crate_dir.join("Cargo.toml"),
        "path = \"../../plugin-api\" }",
        &format!("path = {api:?} }}"),
    );
    edit_file(
        &crate_dir.join("Cargo.toml"),
        "path = \"../../plugin-api\", features",
        &format!("path = {api:?}, features"),
    );
    std::fs::copy(workspace().join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    // Its own target directory: built exactly as a third party would build it.
    let own_target = artifacts().target.join("template-target");
    let own = own_target.to_str().unwrap();
    cargo_in(&crate_dir, &["test", "--quiet", "--target-dir", own]);
    cargo_in(&crate_dir, &["build", "--quiet", "--target-dir", own]);
    let lib = own_target
        .join(&artifacts().profile)
        .join(dylib_name("backend_template"));

    let plugins = plugin_dir(&[("libbackend_template.so", &lib)]);
    let mut cmd = host(plugins.path());
    cmd.args(["list-backends", "--json"]);
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["backends"][0]["alias"], "template");

    let s = script("echo hi\n");
    let mut cmd = host(plugins.path());
    cmd.args(["run", "-b", "template"]).arg(s.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "template backend\nwould run a 8-byte script\n");

    assert_eq!(sha256(host_bin), before, "the host binary was not rebuilt");
}

#[test]
fn a_plugin_built_against_plugin_api_1_0_loads_and_runs_in_this_host() {
    // plugin-api as it was at 1.0.0: without what 1.1 appended (Provider::reap).
    let lib = variant_plugin("fakeold", |v| {
        edit_file(
            &v.api.join("Cargo.toml"),
            "version = \"1.1.0\"",
            "version = \"1.0.0\"",
        );
        edit_file(
            &v.root.join("Cargo.toml"),
            "version = \"1.1.0\" }",
            "version = \"1.0.0\" }",
        );
        for file in [
            v.api.join("src/ffi.rs"),
            v.api.join("src/sdk/mod.rs"),
            v.api.join("src/sdk/adapter.rs"),
            v.plugin.join("src/lib.rs"),
        ] {
            strip_appended(&file);
        }
        edit_file(
            &v.plugin.join("src/lib.rs"),
            "const ALIAS: &'static str = \"fake\";",
            "const ALIAS: &'static str = \"fakeold\";",
        );
    });
    let plugins = plugin_dir(&[("libfakeold.so", &lib)]);
    let mut cmd = host(plugins.path());
    cmd.args(["list-backends", "--json"]);
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["backends"][0]["alias"], "fakeold");
    assert_eq!(v["backends"][0]["plugin_api_version"], "1.0.0");

    let s = script("");
    let mut cmd = host(plugins.path());
    cmd.args(["run", "-b", "fakeold", "-c", "LOG_OUTPUT=old but fine"])
        .arg(s.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "old but fine");

    // What 1.1 appended is answered by the host for the old plugin.
    let mut cmd = host(plugins.path());
    cmd.args(["reap", "-b", "fakeold"]);
    let out = run(cmd);
    assert_eq!(out.code, Some(69), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("built against plugin-api 1.0, which has no reap"),
        "{}",
        out.stderr
    );
}

/// Removes every block between `---- appended in plugin-api 1.1 ----` and
/// `---- end of 1.1 ----` (inclusive); panics if the file has none.
fn strip_appended(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut inside = false;
    let mut found = false;
    for line in text.lines() {
        if line.contains("---- appended in plugin-api 1.1 ----") {
            inside = true;
            found = true;
        } else if line.contains("---- end of 1.1 ----") {
            inside = false;
        } else if !inside {
            out.push(line);
        }
    }
    assert!(found, "{} has no 1.1 block to strip", path.display());
    std::fs::write(path, out.join("\n") + "\n").unwrap();
}
