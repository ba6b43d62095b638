//! The shipped examples must always load, including their commented-out blocks.

use std::path::{Path, PathBuf};

use outpost_config::{load_file, parse_str};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "expected examples in {}", dir.display());
    files
}

#[test]
fn every_example_loads() {
    for file in examples() {
        if let Err(errors) = load_file(&file) {
            panic!("{} is invalid:\n{errors}", file.display());
        }
    }
}

#[test]
fn tls_example_resolves_certificates_next_to_it() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/edge-tls.toml");
    let loaded = load_file(&file).unwrap();
    let tls = loaded
        .config
        .listeners
        .iter()
        .find(|l| l.tls.is_some())
        .expect("a TLS listener");
    assert_eq!(tls.address, "127.0.0.1:8443".parse().unwrap());
    let certificate = &loaded.config.certificates[0];
    assert_eq!(certificate.cert, file.parent().unwrap().join("certs/example.pem"));
    assert_eq!(certificate.key, file.parent().unwrap().join("certs/example.key"));
}

/// Uncomments lines that look like TOML (`# [table]`, `# key = value`, `# # comment`), so the
/// commented-out blocks are checked as well as the active ones.
fn uncomment(text: &str) -> String {
    let looks_like_toml = |rest: &str| {
        rest.starts_with('[')
            || rest.starts_with("# ")
            || rest
                .split_once(" = ")
                .is_some_and(|(key, _)| key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    };
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if looks_like_toml(rest) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn commented_out_blocks_are_valid() {
    for file in examples() {
        let text = std::fs::read_to_string(&file).unwrap();
        let full = uncomment(&text);
        assert_ne!(full, text, "{} has no commented-out settings", file.display());
        if let Err(errors) = parse_str(&full, &file.display().to_string(), None) {
            panic!(
                "{} with every block uncommented is invalid:\n{errors}\n\n{full}",
                file.display()
            );
        }
    }
}
