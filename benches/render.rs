//! Rendering benchmark (filled in below).
fn main() {}
