//! Version 1 of the reload-test plugin; the code is in `../versioned/plugin.rs`.

const VERSION: &str = "1";

include!("../../versioned/plugin.rs");
