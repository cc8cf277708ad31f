//! `tls_pem`: see `sessionkey_proto_fuzz::pem` (fuzz/src/pem.rs) for the input format and
//! the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sessionkey_proto_fuzz::pem::run(data));
