//! `msg_wire`: see `sessionkey_proto_fuzz::msg` (fuzz/src/msg.rs) for the input format and
//! the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sessionkey_proto_fuzz::msg::run(data));
