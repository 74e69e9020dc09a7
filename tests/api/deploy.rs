//! `deploy/`: the systemd unit passes `systemd-analyze verify`, and the example environment file
//! names every setting `hoglet serve --help` lists.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn deploy_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `HOGLET_[A-Z_]+` names in `text`.
fn settings_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices("HOGLET_") {
        let name: String = text[start..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || *c == '_')
            .collect();
        names.insert(name.trim_end_matches('_').to_string());
    }
    names
}

#[test]
fn deploy_unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not available: deploy/hoglet.service not verified");
        return;
    }
    let unit = deploy_file("hoglet.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/hoglet serve"));
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let unit = unit.replace("/usr/local/bin/hoglet", env!("CARGO_BIN_EXE_hoglet"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hoglet.service");
    std::fs::write(&path, unit).unwrap();
    let verified = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        verified.status.success() && verified.stderr.is_empty(),
        "systemd-analyze verify: {:?}\n{}{}",
        verified.status.code(),
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
}

#[test]
fn deploy_env_example_names_every_setting_of_serve() {
    let help = Command::new(env!("CARGO_BIN_EXE_hoglet"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success(), "{help:?}");
    let listed = settings_in(&String::from_utf8_lossy(&help.stdout));
    assert!(listed.contains("HOGLET_DATABASE_URL"), "{listed:?}");
    let example = deploy_file("hoglet.env.example");
    let documented = settings_in(&example);
    let missing: Vec<_> = listed.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&listed).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "not in deploy/hoglet.env.example: {missing:?}; not listed by serve --help: {unknown:?}"
    );
    // Only the database URL is set; everything else is commented out.
    let set: Vec<&str> = example
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    assert_eq!(
        set,
        ["HOGLET_DATABASE_URL=sqlite:///var/lib/hoglet/hoglet.db"]
    );
}
