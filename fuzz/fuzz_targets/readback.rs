//! The files the worker reads back from the agent's checkout (see `viberglass_fuzz::readback`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| viberglass_fuzz::readback(data));
