#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = credit_fuzz::targets::ingest(data);
});
