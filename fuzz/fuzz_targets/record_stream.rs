//! `record_stream`: see `sessionkey_proto_fuzz::stream` (fuzz/src/stream.rs) for the input format and
//! the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sessionkey_proto_fuzz::stream::run(data));
