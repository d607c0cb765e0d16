#![no_main]
libfuzzer_sys::fuzz_target!(|input: vpod_fuzz::mmio::Input| vpod_fuzz::mmio::run(&input));
