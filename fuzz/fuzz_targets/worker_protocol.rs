//! The bodies the server accepts from a worker (see `viberglass_fuzz::worker_protocol`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| viberglass_fuzz::worker_protocol(data));
