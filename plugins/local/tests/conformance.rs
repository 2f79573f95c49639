//! The local backend follows the contract every backend must, leaving no process and no
//! file behind.

use plugin_api::conformance::Conformance;
use plugin_api::ProviderConfig;

#[test]
fn local_passes_the_conformance_checks() {
    let config = ProviderConfig::from_map([("KILL_GRACE", "2s")]);
    Conformance::new(config, "echo hello; echo to stderr >&2")
        .long_running("trap 'echo got TERM; exit 143' TERM; sleep 600 & wait")
        .scratch_dir("SCRIPTS_DIR")
        .exit_code_script("echo failing; exit 3", 3)
        .ordered_output(
            "echo one; echo two >&2; echo three; echo four >&2",
            "one\ntwo\nthree\nfour\n",
        )
        .assert_conformant::<local::Local>();
}
