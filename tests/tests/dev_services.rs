//! What a newcomer sees while the first `./dev up` builds the broker: what it will cost
//! before it starts, then progress while cargo works, then how long it took. Cargo is a
//! stand-in here that compiles a few "crates" slowly; the script is the real one.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use sluice_tests::{repo_root, unique};

#[test]
fn the_broker_build_says_what_it_costs_and_shows_its_progress() {
    let root = std::env::temp_dir().join(unique("dev-services"));
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let cargo = bin.join("cargo");
    std::fs::write(
        &cargo,
        "#!/bin/sh\n\
         for i in 1 2 3 4 5 6 7 8; do echo \"   Compiling crate$i v0.1.0\"; sleep 0.4; done\n\
         mkdir -p \"$HOME/.cargo/bin\" && printf '#!/bin/sh\\n' > \"$HOME/.cargo/bin/tansu\"\n\
         chmod +x \"$HOME/.cargo/bin/tansu\"\n\
         echo '   Installed package `tansu v0.6.0`'\n",
    )
    .unwrap();
    std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new(repo_root().join("scripts/services.sh"))
        .arg("build-broker")
        .env("PATH", path)
        .env("HOME", root.join("home"))
        .env("SLUICE_STATE_DIR", root.join("state"))
        .env("SLUICE_PROGRESS_SECONDS", "1")
        .output()
        .expect("services.sh runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    let first = said.lines().next().unwrap_or_default();
    assert!(first.contains("building the Tansu broker") && first.contains("minutes"), "the cost comes first:\n{said}");
    let progress: Vec<u32> =
        said.lines().filter_map(|l| l.split("tansu: ").nth(1)?.split(" of about ").next()?.parse().ok()).collect();
    assert!(progress.len() >= 2, "progress lines while it builds:\n{said}");
    assert!(progress.windows(2).all(|w| w[0] <= w[1]) && progress.last() > progress.first(), "{progress:?}");
    assert!(said.contains("now Compiling crate") || said.contains("(Compiling crate"), "names what it is at:\n{said}");
    assert!(said.lines().last().unwrap_or_default().contains("tansu: built in"), "{said}");
    assert!(root.join("home/.cargo/bin/tansu").exists());
}
