//! docs/architecture.md must describe every crate of the workspace.

#[test]
fn architecture_doc_names_every_crate() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let doc = std::fs::read_to_string(format!("{root}/docs/architecture.md")).unwrap();
    let manifest = std::fs::read_to_string(format!("{root}/Cargo.toml")).unwrap();
    let members: Vec<&str> = manifest
        .lines()
        .skip_while(|l| !l.starts_with("members"))
        .take_while(|l| !l.trim().is_empty())
        .flat_map(|l| l.split('"').skip(1).step_by(2))
        .collect();
    assert!(members.len() >= 3, "{members:?}");
    for m in members {
        assert!(
            doc.contains(&format!("`{m}`")),
            "docs/architecture.md does not describe {m}"
        );
    }
}
