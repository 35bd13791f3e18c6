//! Every saved fuzz input (fuzz/corpus/<target>/ and the crashes kept in fuzz/regressions/<target>/) through the
//! same checks the fuzz targets run, in the ordinary test run: what the fuzzer once found stays fixed.

use std::path::Path;

type Check = fn(&[u8]);

const TARGETS: &[(&str, Check)] = &[
    ("lease_key", weft::fuzz_checks::lease_key),
    ("lease_value", weft::fuzz_checks::lease_value),
    ("network_config", weft::fuzz_checks::network_config),
    ("subnet_env", weft::fuzz_checks::subnet_env),
    ("cni_input", weft::fuzz_checks::cni_input),
    ("trust", weft::fuzz_checks::trust),
    ("udp_codec", weft::fuzz_checks::udp_codec),
];

#[test]
fn every_saved_fuzz_input_passes_its_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (target, check) in TARGETS {
        let mut seen = 0;
        for kind in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else { continue };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| check(&data));
                assert!(outcome.is_ok(), "{} fails its check", path.display());
                seen += 1;
            }
        }
        assert!(seen > 0, "no saved input for fuzz target {target}");
    }
}
