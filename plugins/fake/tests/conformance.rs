//! The fake backend follows the contract every backend must.

use plugin_api::conformance::Conformance;
use plugin_api::ProviderConfig;

#[test]
fn fake_passes_the_conformance_checks() {
    Conformance::new(
        ProviderConfig::from_map([("LOG_OUTPUT", "hello\n")]),
        "true",
    )
    .long_running_config(ProviderConfig::from_map([("RUN_SLEEP", "10m")]))
    .assert_conformant::<fake::Fake>();
}
