pub fn format_file(_s: &str) -> Option<String> { None }
