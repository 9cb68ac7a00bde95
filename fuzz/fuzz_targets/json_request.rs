//! The HTTP API's request decoder must turn any body into a request or a
//! 400 problem, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(problem) = tollgate_server::http::decode_check(data, 1024) {
        assert_eq!(problem.status.as_u16(), 400);
    }
});
