#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vpod_fuzz::unpack::run(data));
