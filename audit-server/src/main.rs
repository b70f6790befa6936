fn main() {
    eprintln!("audit-server: not built yet");
    std::process::exit(2);
}
