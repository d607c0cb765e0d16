#![no_main]
libfuzzer_sys::fuzz_target!(|input: vpod_fuzz::block::Input| vpod_fuzz::block::run(&input));
