#![no_main]
libfuzzer_sys::fuzz_target!(|input: vpod_fuzz::rng::Input| vpod_fuzz::rng::run(&input));
