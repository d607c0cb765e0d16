#![no_main]
libfuzzer_sys::fuzz_target!(|input: vpod_fuzz::net::Input| vpod_fuzz::net::run(&input));
