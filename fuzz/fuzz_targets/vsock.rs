#![no_main]
libfuzzer_sys::fuzz_target!(|input: vpod_fuzz::vsock::Input| vpod_fuzz::vsock::run(&input));
