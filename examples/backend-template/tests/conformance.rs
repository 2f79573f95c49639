//! The same contract checks the host's own backends pass.

use plugin_api::conformance::Conformance;
use plugin_api::ProviderConfig;

#[test]
fn the_template_follows_the_backend_contract() {
    Conformance::new(ProviderConfig::new(), "echo hello")
        .long_running_config(ProviderConfig::from_map([("WORK_TIME", "10m")]))
        .assert_conformant::<backend_template::Template>();
}
