//! Every WGSL kernel parses and validates with naga, on any machine (no GPU
//! needed), exactly as the engine embeds it.

use cntscope::engine::gpu::Kernel;

#[test]
fn every_shader_validates() {
    for kernel in Kernel::ALL {
        let source = kernel.source();
        let module = naga::front::wgsl::parse_str(&source)
            .unwrap_or_else(|e| panic!("{kernel:?}: {}", e.emit_to_string(&source)));
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{kernel:?}: {}", e.emit_to_string(&source)));
    }
}

#[test]
fn every_shader_file_is_a_kernel() {
    // A new .wgsl file must be wired into Kernel (or be one of the three
    // shared helpers: jobs, elements, values).
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let files = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "wgsl"))
        .count();
    assert_eq!(files, Kernel::ALL.len() + 3, "shaders/ has {files} .wgsl files");
}
