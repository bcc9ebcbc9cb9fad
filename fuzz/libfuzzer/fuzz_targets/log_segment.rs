#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| skoala_fuzz::log_segment(data));
