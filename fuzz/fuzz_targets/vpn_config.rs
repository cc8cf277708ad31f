//! `vpn_config`: see `sessionkey_proto_fuzz::config` (fuzz/src/config.rs) for the input format and
//! the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sessionkey_proto_fuzz::config::run_vpn(data));
