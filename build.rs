// libshmetrics.so must never be unloaded: Lua holds raw pointers into regions it
// mapped, and the process-wide region list must survive the master's Lua VM
// being replaced on reload (LuaJIT dlcloses a library when its VM closes).
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    println!("cargo:rerun-if-changed=build.rs");
}
