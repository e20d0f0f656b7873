#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| multiprocess::fuzz::frame_reader(data));
