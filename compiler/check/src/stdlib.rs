//! The stdlib: `.recipe` files embedded in the binary, importable as
//! `std/NAME`. They are ordinary recipes; nothing about them is special
//! except where their text comes from. `build.rs` lists the `stdlib/`
//! directory, so adding a method is adding a file.

include!(concat!(env!("OUT_DIR"), "/stdlib_files.rs"));

pub fn get(name: &str) -> Option<&'static str> {
    FILES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

pub fn names() -> impl Iterator<Item = &'static str> {
    FILES.iter().map(|(n, _)| *n)
}
