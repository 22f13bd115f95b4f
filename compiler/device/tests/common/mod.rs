//! Shared by the device tests.

/// The device client, or `None` (the test is skipped) where no Vulkan
/// device answers — unless KEEL_REQUIRE_VULKAN is set, as in CI.
pub fn client_or_skip() -> Option<keel_device::Client> {
    match keel_device::client() {
        Ok(c) => Some(c),
        Err(e) => {
            assert!(
                std::env::var_os("KEEL_REQUIRE_VULKAN").is_none(),
                "no Vulkan device: {e}"
            );
            eprintln!("skipped: no Vulkan device ({e})");
            None
        }
    }
}
