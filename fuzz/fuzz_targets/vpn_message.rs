//! `vpn_message`: see `sessionkey_proto_fuzz::vpn` (fuzz/src/vpn.rs) for the input format and
//! the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sessionkey_proto_fuzz::vpn::run(data));
