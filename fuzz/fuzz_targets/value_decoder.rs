#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| multiprocess::fuzz::value_decoder(data));
