//! The [`SourceDb`] of the local disk: the front end (`keel-check`) does no
//! IO, so the executables hand it this one.

use keel_check::SourceDb;

/// A `SourceDb` that reads the local disk.
pub struct Disk;

impl SourceDb for Disk {
    fn load(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }
}
