//! The shipped monitoring files name only metrics the services export: every
//! `nimbus_*` series in deploy/grafana/nimbus.json and deploy/prometheus/*.yml is
//! registered somewhere in the crates' sources (histogram `_bucket`/`_sum`/`_count`
//! series by their family). The rules themselves are checked by promtool in
//! scripts/test.sh.

use std::collections::BTreeSet;
use std::path::Path;

fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(found) = text[i..].find("nimbus_") {
        let start = i + found;
        let before = start.checked_sub(1).map(|b| bytes[b]);
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end] == b'_'
                || bytes[end].is_ascii_digit())
        {
            end += 1;
        }
        if !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
            names.insert(text[start..end].to_string());
        }
        i = end.max(start + 1);
    }
    names
}

fn sources(dir: &Path, into: &mut String) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push_str(&std::fs::read_to_string(&path).expect("read source"));
        }
    }
}

#[test]
fn monitoring_files_name_only_exported_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut code = String::new();
    for krate in ["nimbus-core", "nimbus-cache", "nimbus-logs", "nimbus-vmm"] {
        sources(&root.join(krate).join("src"), &mut code);
    }
    let exported: BTreeSet<String> = names_in(&code)
        .into_iter()
        .filter(|name| code.contains(&format!("\"{name}\"")))
        .collect();
    let mut used = BTreeSet::new();
    for file in ["deploy/grafana/nimbus.json", "deploy/prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(root.join(file)).expect("monitoring file");
        used.extend(names_in(&text));
    }
    assert!(
        used.len() > 15,
        "the files name the fleet's metrics: {used:?}"
    );
    let family = |name: &str| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name)
            .to_string()
    };
    let unknown: Vec<&String> = used
        .iter()
        .filter(|name| !exported.contains(name.as_str()) && !exported.contains(&family(name)))
        .collect();
    assert!(
        unknown.is_empty(),
        "not exported by any service: {unknown:?}"
    );
}
