//! The deployment files (deploy/) hold together: every variable an example env file
//! sets is a setting some part reads (docs/configuration.md, itself generated from
//! the code), each unit's EnvironmentFile has its example, and production mode is
//! on in each. `systemd-analyze verify` checks the units themselves (scripts/test.sh).

use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn env_files_set_only_documented_variables_and_match_the_units() {
    let documented = std::fs::read_to_string(root().join("docs/configuration.md")).expect("docs");
    let mut examples = 0;
    for unit in std::fs::read_dir(root().join("deploy/systemd"))
        .expect("units")
        .flatten()
    {
        let text = std::fs::read_to_string(unit.path()).expect("unit");
        let env_file = text
            .lines()
            .find_map(|l| l.strip_prefix("EnvironmentFile=/etc/nimbus/"))
            .unwrap_or_else(|| panic!("{:?} names no /etc/nimbus env file", unit.path()));
        let example = root().join("deploy/env").join(env_file);
        let text = std::fs::read_to_string(&example)
            .unwrap_or_else(|e| panic!("{env_file}: no example in deploy/env ({e})"));
        examples += 1;
        assert!(
            text.lines().any(|l| l == "NIMBUS_MODE=production"),
            "{env_file}"
        );
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            // systemd takes everything after `=` as the value: no trailing comments.
            assert!(
                !line.contains(" #"),
                "{env_file}: {line:?} has a trailing comment"
            );
            let name = line.split('=').next().unwrap_or_default();
            assert!(
                documented.contains(&format!("| `{name}` |")),
                "{env_file} sets {name}, which no part reads"
            );
        }
    }
    assert_eq!(examples, 4, "a unit and an env file per binary");
}
