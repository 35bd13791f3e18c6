//! Two link options that keep weftd's resident code small (docs/benchmarks.md, "Resident code").
//!
//! The code a converged daemon runs goes in one block placed before the rest of `.text`.
//! The kernel maps a binary's code into a process 64 KiB at a time (fault-around), so one called function maps
//! the 15 pages beside it as well: with the functions weftd runs spread over 9 MiB of code, 6 MiB of it stayed
//! resident. `src/bin/weftd.order` names those functions (written by `scripts/weftd-order`, which records what a
//! cold start, put -> route, churn and idle run under callgrind and perf); a linker script made from it gathers
//! them, in that order, into one block placed before the rest of `.text`. Names missing from this build (the file
//! is older than the code, or another toolchain mangled them differently) match nothing; `scripts/weftd-order
//! check` says when too many do, and CI runs it.
//!
//! Relative relocations are packed (`-z pack-relative-relocs`, DT_RELR): weftd is position-independent, and its
//! 34,000 pointers in read-only data each had a 24-byte relocation entry that the dynamic loader reads at every
//! start, 0.8 MiB that stayed resident; packed, they take a few KiB. glibc reads them since 2.36 (Debian 12).
//!
//! Only where the linker is lld: rustc's default on x86_64 Linux since 1.90. Other linkers (older toolchains,
//! `-fuse-ld=`, a configured linker) get nothing and link the usual order.

use std::env;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

const ORDER_FILE: &str = "src/bin/weftd.order";

fn main() {
    println!("cargo:rerun-if-changed={ORDER_FILE}");
    println!("cargo:rerun-if-changed=build.rs");
    for var in ["RUSTC", "CARGO_ENCODED_RUSTFLAGS", "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if !links_with_rust_lld() {
        return;
    }
    let order = fs::read_to_string(ORDER_FILE).unwrap_or_else(|e| panic!("{ORDER_FILE}: {e}"));
    let script = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("weftd-order.ld");
    fs::write(&script, linker_script(&order)).unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    println!("cargo:rustc-link-arg-bin=weftd=-Wl,-T,{}", script.display());
    println!("cargo:rustc-link-arg-bin=weftd=-Wl,-z,pack-relative-relocs");
}

fn links_with_rust_lld() -> bool {
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu") {
        return false;
    }
    if env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some() {
        return false;
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if ["fuse-ld", "linker-features", "link-self-contained", "linker-flavor", "linker="]
        .iter()
        .any(|f| flags.contains(f))
    {
        return false;
    }
    rustc_minor().is_some_and(|minor| minor >= 90)
}

/// The minor version of the compiler cargo runs (`release: 1.95.0` in `rustc -vV`).
fn rustc_minor() -> Option<u32> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc).arg("-vV").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let release = text.lines().find_map(|l| l.strip_prefix("release: "))?;
    let mut parts = release.split('.');
    (parts.next()? == "1").then_some(())?;
    parts.next()?.parse().ok()
}

/// A linker script that gathers the listed functions' sections (`-ffunction-sections`: `.text.<symbol>`), in the
/// file's order, into an output section placed before `.text`. A section pattern rather than lld's
/// `--symbol-ordering-file`: a function that ThinLTO promoted from local carries a `.llvm.<module hash>` suffix, and
/// that hash covers the module's file paths (the checkout's, cargo's registry), so it differs from one checkout
/// to the next; the pattern matches whatever follows `.llvm.`.
fn linker_script(order: &str) -> String {
    let mut script = String::from("SECTIONS\n{\n  .text.weftd_runs :\n  {\n");
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let pattern = match name.rsplit_once(".llvm.") {
            Some((base, hash)) if hash.bytes().all(|b| b.is_ascii_digit()) => format!("{base}.llvm.*"),
            _ => name.to_string(),
        };
        // `#[cold]` functions go to `.text.unlikely.<symbol>`.
        script.push_str(&format!("    *(.text.{pattern} .text.unlikely.{pattern})\n"));
    }
    script.push_str("  }\n}\nINSERT BEFORE .text;\n");
    script
}
