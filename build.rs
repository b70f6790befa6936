//! Embeds templates/*.j2 in the binary (so `audctl render` works anywhere without the source tree).

use std::fmt::Write;
use std::path::PathBuf;

fn main() {
    let dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("templates");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("templates/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "j2"))
        .collect();
    names.sort();
    let mut out = String::from(
        "/// (file name, content) of every template, sorted by name.\npub static TEMPLATES: &[(&str, &str)] = &[\n",
    );
    for path in names {
        let name = path.file_name().and_then(|n| n.to_str()).expect("UTF-8 template names");
        writeln!(out, "    ({name:?}, include_str!({:?})),", path.display().to_string()).expect("write to String");
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("templates.rs");
    std::fs::write(dest, out).expect("write templates.rs");
}
