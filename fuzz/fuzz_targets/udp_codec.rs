#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| weft::fuzz_checks::udp_codec(data));
