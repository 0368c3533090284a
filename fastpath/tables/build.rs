//! Declares the `loom` cfg so that `--cfg loom` model-checking builds are
//! recognised by the `unexpected_cfgs` lint.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
}
