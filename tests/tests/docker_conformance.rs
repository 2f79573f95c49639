//! The docker backend through the conformance kit, in a test binary of its own: the kit
//! watches every process of the binary for leaks, so no other test may run beside it.

use blackbox::engine;
use plugin_api::conformance::Conformance;
use plugin_api::ProviderConfig;

#[test]
fn docker_passes_the_conformance_checks() {
    let config = ProviderConfig::from_map([("ENDPOINT", engine()), ("STOP_GRACE", "1s")]);
    Conformance::new(config, "echo hello")
        .long_running("sleep 600")
        .exit_code_script("echo failing; exit 3", 3)
        .assert_conformant::<docker::DockerBackend>();
}
