//! The HTTP API's request decoders (check, reserve, settle, cancel) must
//! turn any body into a request or a 400 problem, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    use tollgate_server::http::{decode_check, decode_reserve, decode_settle};
    let problems = [
        decode_check(data, 1024).err(),
        decode_reserve(data, 1024).err(),
        decode_settle(data, false).err(),
        decode_settle(data, true).err(),
    ];
    for problem in problems.into_iter().flatten() {
        assert_eq!(problem.status.as_u16(), 400);
    }
});
