//! Generates the DPDK bindings from the system's libdpdk (pkg-config) and
//! builds the C shim for the inline functions.

use std::env;
use std::path::PathBuf;

fn fail(msg: &str) -> ! {
    eprintln!("\nerror: {msg}\n");
    panic!("{msg}");
}

fn main() {
    println!("cargo:rerun-if-changed=shim/shim.c");
    println!("cargo:rerun-if-changed=shim/shim.h");
    println!("cargo:rerun-if-changed=shim/wrapper.h");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    let dpdk = match pkg_config::Config::new()
        .atleast_version("22.11")
        .cargo_metadata(false)
        .probe("libdpdk")
    {
        Ok(lib) => lib,
        Err(e) => fail(&format!(
            "DPDK 22.11 development files not found through pkg-config `libdpdk` ({e}). \
             Install the Debian package `libdpdk-dev` (apt-get install libdpdk-dev pkg-config)."
        )),
    };

    // Link every DPDK library shared. The PMDs are plugins that EAL loads at
    // run time from its compiled-in driver directory (RTE_EAL_PMD_PATH), so
    // the binary itself stays small; the vhost PMD is also linked directly
    // because we call its API (queue state events).
    for path in &dpdk.link_paths {
        println!("cargo:rustc-link-search=native={}", path.display());
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    for lib in &dpdk.libs {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
    println!("cargo:rustc-link-lib=dylib=rte_net_vhost");
    println!("cargo:rustc-link-lib=dylib=rte_bus_vdev");

    // Compiler flags from pkg-config (includes, -include rte_config.h, -march).
    let mut clang_args: Vec<String> = Vec::new();
    for inc in &dpdk.include_paths {
        clang_args.push(format!("-I{}", inc.display()));
    }
    let cflags = std::process::Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let mut words = cflags.split_whitespace().peekable();
    let mut extra: Vec<String> = Vec::new();
    while let Some(w) = words.next() {
        if w == "-include" {
            if let Some(f) = words.next() {
                extra.push("-include".into());
                extra.push(f.into());
            }
        } else if w.starts_with("-march") || w.starts_with("-mcpu") {
            extra.push(w.into());
        }
    }

    let mut build = cc::Build::new();
    build.file("shim/shim.c").opt_level(3).warnings(false);
    for inc in &dpdk.include_paths {
        build.include(inc);
    }
    for e in extra.chunks(1) {
        build.flag(&e[0]);
    }
    build.compile("fpshim");

    // bindgen loads libclang at run time and panics when it is missing: turn
    // that into a message that names the package.
    let generated = std::panic::catch_unwind(|| generate(&clang_args, &extra));
    let bindings = match generated {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => fail(&format!(
            "bindgen could not generate the DPDK bindings ({e}). It needs libclang: \
             install the Debian package `libclang-dev` (apt-get install libclang-dev)."
        )),
        Err(_) => fail(
            "bindgen could not load libclang. Install the Debian package `libclang-dev` \
             (apt-get install libclang-dev).",
        ),
    };
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings");
}

fn generate(
    clang_args: &[String],
    extra: &[String],
) -> Result<bindgen::Bindings, bindgen::BindgenError> {
    bindgen::Builder::default()
        .header("shim/wrapper.h")
        .clang_args(clang_args)
        .clang_args(extra)
        .allowlist_function("rte_.*|fp_.*")
        .allowlist_type("rte_.*")
        .allowlist_var("RTE_.*")
        .blocklist_function("rte_.*_trace_.*")
        .opaque_type("rte_arp_ipv4|rte_l2tpv2_combined_msg_hdr|rte_gtp_psc_generic_hdr")
        .derive_default(true)
        .derive_debug(false)
        .layout_tests(false)
        .generate_comments(false)
        .prepend_enum_name(false)
        .default_enum_style(bindgen::EnumVariation::Consts)
        .generate()
}
