//! A `wasi:cli/command` component, not an `iicp:plugin` one. The host must
//! refuse to load it with a clear message.

fn main() {
    println!("hello from a command component");
}
