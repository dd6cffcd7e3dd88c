//! Loads the shipped files and the bad-config fixtures in testdata/.

use std::path::Path;

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[test]
fn dump_all() {
    for f in [
        "config/ratethrottle.yaml",
        "config/examples/minimal.yaml",
        "config/examples/full.yaml",
        "config/examples/python-seed.yaml",
        "config/examples/redis.yaml",
        "config/examples/envoy.yaml",
    ] {
        match load_str(&read(f), f, &no_env) {
            Ok(l) => {
                println!("{f}: {}", summary(&l.config));
                for w in &l.warnings {
                    println!("  W {w}");
                }
            }
            Err(e) => println!("{f}: ERR\n{e}"),
        }
    }
}
