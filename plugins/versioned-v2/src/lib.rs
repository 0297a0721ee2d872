//! Version 2 of the reload-test plugin; the code is in `../versioned/plugin.rs`.

const VERSION: &str = "2";

include!("../../versioned/plugin.rs");
