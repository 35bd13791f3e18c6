//! The CNI plugin binary `weft` (install it as `flannel` too, for flannel's netconf). All logic is in `weft_cni`.

fn main() -> std::process::ExitCode {
    weft_cni::cli_main()
}
