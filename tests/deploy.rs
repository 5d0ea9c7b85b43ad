//! The deployer's apps: `charter deploy apply` registers an app.toml on the
//! cluster (checked whole, nothing applied when wrong), updates it, and
//! keeps other principals' apps theirs. Deployments are not built yet.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn apps_are_registered_updated_and_kept_by_their_owner() {
    let c = Cluster::start(1, &[]);
    c.wait_leader(Duration::from_secs(15));
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/app/app.toml");
    let text = std::fs::read_to_string(example).unwrap();
    let file = dir.path().join("app.toml");
    std::fs::write(&file, &text).unwrap();
    let f = file.to_str().unwrap();

    let v = json_ok(&c.cli(&["deploy", "apply", f, "--json"]));
    assert_eq!(v["change"], "added", "{v}");
    assert_eq!(v["app"]["name"], "hello");
    assert_eq!(v["app"]["servers"], 2);
    let first = v["app"]["version"].as_str().unwrap().to_string();
    assert_eq!(
        json_ok(&c.cli(&["deploy", "apply", f, "--json"]))["change"],
        "unchanged"
    );

    std::fs::write(&file, text.replace("servers = 2", "servers = 3")).unwrap();
    let v = json_ok(&c.cli(&["deploy", "apply", f, "--json"]));
    assert_eq!(v["change"], "changed", "{v}");
    assert_ne!(v["app"]["version"], first.as_str());
    let list = json_ok(&c.cli(&["deploy", "list", "--json"]));
    assert_eq!(list["apps"][0]["servers"], 3, "{list}");

    // A bad file is refused with its line, and the app stays as it was.
    std::fs::write(&file, text.replace("servers = 2", "servers = 0")).unwrap();
    let out = c.cli(&["deploy", "apply", f]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("app.toml:9: servers"),
        "{}",
        stderr(&out)
    );
    let list = json_ok(&c.cli(&["deploy", "list", "--json"]));
    assert_eq!(list["apps"][0]["servers"], 3, "{list}");

    // Another principal cannot take the app over.
    std::fs::write(&file, &text).unwrap();
    let out = c
        .cli_as(&c.servers(), USER_TOKEN, &["deploy", "apply", f])
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("was applied by root"),
        "{}",
        stderr(&out)
    );
}
