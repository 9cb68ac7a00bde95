//! The YAML configuration parser (tollgate files and envoyproxy/ratelimit
//! files) must reject any input with an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tollgate_server::Config::parse(text, "fuzz.yaml");
        let _ = tollgate_server::config::parse_envoy_file(text, "fuzz.yaml");
    }
});
