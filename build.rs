//! With the `cuda` feature, bake a RUNPATH into the binaries so the CUDA 13 libraries it
//! links (libcuda.so.1, libcublas.so.13, libcurand.so.10, libcudart.so.13) are found on
//! the GPU machine without LD_LIBRARY_PATH (which still takes precedence). See README,
//! "Measuring on a GPU".
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        for p in [
            "$ORIGIN",
            "$ORIGIN/lib",
            "/usr/local/cuda/lib64",
            "/usr/local/cuda/targets/x86_64-linux/lib",
            "/usr/local/nvidia/lib64",
            "/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib",
        ] {
            println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{p}");
        }
    }
}
