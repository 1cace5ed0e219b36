//! Qwen Code's output stream (see `viberglass_fuzz::agent_stream`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use viberglass_domain::AgentKind;

fuzz_target!(|data: &[u8]| viberglass_fuzz::agent_stream(AgentKind::QwenCli, data));
