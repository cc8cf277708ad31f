//! `relay_api`: see `sessionkey_proto_fuzz::relay` (fuzz/src/relay.rs) for the input format and
//! the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sessionkey_proto_fuzz::relay::run(data));
