//! The local backend follows the contract every backend must.

use plugin_api::conformance::Conformance;
use plugin_api::ProviderConfig;

#[test]
fn local_passes_the_conformance_checks() {
    let scripts = std::env::temp_dir().join(format!("local-conformance-{}", std::process::id()));
    std::fs::create_dir_all(&scripts).unwrap();
    let config = ProviderConfig::from_map([
        ("SCRIPTS_DIR", scripts.display().to_string()),
        ("KILL_GRACE", "2s".to_owned()),
    ]);
    Conformance::new(config, "echo hello; echo to stderr >&2")
        .long_running("trap 'echo got TERM; exit 143' TERM; sleep 600 & wait")
        .assert_conformant::<local::Local>();
    let left: Vec<_> = std::fs::read_dir(&scripts).unwrap().flatten().collect();
    assert!(
        left.is_empty(),
        "instances left directories behind: {left:?}"
    );
    std::fs::remove_dir(&scripts).unwrap();
}
