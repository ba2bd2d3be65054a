//! Build script: links the `queuectl` executable at a fixed address rather than as a
//! position-independent executable, on Linux.
//!
//! Every `queuectl` command is a short process, so what runs before `main` counts. A PIE must
//! have each pointer in its data (about 17,000: vtables, string tables) rewritten by the dynamic
//! loader at every start, which touched 80 pages and took 0.22 M of the 0.79 M instructions of
//! `queuectl --version` here. At a fixed address they are resolved at link time. The code is
//! unchanged (still position-independent); only the executable's own load address stops being
//! randomised, which a program that is not setuid and reads only its owner's files can afford.
//! Only the link of the binary changes: the library, tests and benchmarks build as before.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
