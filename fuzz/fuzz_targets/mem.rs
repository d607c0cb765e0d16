#![no_main]
libfuzzer_sys::fuzz_target!(|input: vpod_fuzz::mem::Input| vpod_fuzz::mem::run(&input));
