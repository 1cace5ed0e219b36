//! Linear webhook deliveries: signature check, delivery id and payload parser (see `viberglass_fuzz::webhook`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| viberglass_fuzz::webhook(viberglass_domain::WebhookProvider::Linear, data));
