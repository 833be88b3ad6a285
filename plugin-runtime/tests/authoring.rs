//! `sluice-plugin` as plugin authors use it, and the plugins that ship with Sluice
//! passing their own tests through it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn sluice_plugin(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-plugin")).args(args).output().expect("sluice-plugin runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn shipped() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(&root).expect("plugins/").flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    dirs
}

/// The small MaxMind City database of `tests/geoip/make_mmdb.py`, written by the
/// project's test virtualenv (`./dev test` creates it).
fn geoip_database() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv = std::env::var("SLUICE_VENV").map(PathBuf::from).unwrap_or_else(|_| root.join(".venv"));
    let python = venv.join("bin/python");
    assert!(python.exists(), "{} missing: ./dev test creates the test virtualenv", python.display());
    let out = std::env::temp_dir().join(format!("sluice-geoip-{}.mmdb", std::process::id()));
    let status = Command::new(python).arg(root.join("tests/geoip/make_mmdb.py")).arg(&out).status().unwrap();
    assert!(status.success(), "make_mmdb.py failed");
    out
}

#[test]
fn every_shipped_plugin_passes_its_tests() {
    let dirs = shipped();
    let names: Vec<String> = dirs.iter().map(|d| d.file_name().unwrap().to_string_lossy().to_string()).collect();
    for expected in [
        "currency-normalizer",
        "downsample",
        "geoip",
        "http-export",
        "property-filter",
        "taxonomy",
        "user-agent",
        "webhook",
    ] {
        assert!(names.contains(&expected.to_string()), "{expected} ships: {names:?}");
    }
    let geoip = geoip_database();
    for dir in dirs {
        let (ok, text) = sluice_plugin(&["test", dir.to_str().unwrap(), "--geoip", geoip.to_str().unwrap()]);
        assert!(ok, "{}:\n{text}", dir.display());
        assert!(text.contains(" 0 failed"), "{text}");
        assert!(dir.join("fixtures").is_dir() && dir.join("test.lua").is_file(), "{} has tests", dir.display());
    }
}

fn scratch_plugin(main: &str, fixture: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-plugin-test-{}-{}", std::process::id(), main.len()));
    std::fs::create_dir_all(dir.join("fixtures")).unwrap();
    std::fs::write(dir.join("plugin.json"), r#"{"name": "scratch"}"#).unwrap();
    std::fs::write(dir.join("main.lua"), main).unwrap();
    std::fs::write(dir.join("fixtures/one.json"), fixture).unwrap();
    dir
}

#[test]
fn a_failing_fixture_or_test_fails_the_run() {
    let dir = scratch_plugin(
        "return { process_event = function(e) e.properties.x = 1 return e end }",
        r#"{"event": {"uuid": "u", "team_id": 1, "event": "e", "properties": {}}, "expected": null}"#,
    );
    let (ok, text) = sluice_plugin(&["test", dir.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(text.contains("FAIL  one.json: expected null"), "{text}");
    std::fs::write(dir.join("test.lua"), "function test_fails() assert(1 == 2, 'math broke') end").unwrap();
    std::fs::write(
        dir.join("fixtures/one.json"),
        r#"{"event": {"uuid": "u", "team_id": 1, "event": "e", "properties": {}}, "expected": {"uuid": "u", "team_id": 1, "event": "e", "properties": {"x": 1}}}"#,
    )
    .unwrap();
    let (ok, text) = sluice_plugin(&["test", dir.to_str().unwrap()]);
    assert!(!ok && text.contains("FAIL  test.lua test_fails") && text.contains("math broke"), "{text}");
    assert!(text.contains("ok    one.json"), "{text}");
}

#[test]
fn run_prints_the_event_or_dropped() {
    let dirs = shipped();
    let taxonomy = dirs.iter().find(|d| d.ends_with("taxonomy")).unwrap();
    let event = std::env::temp_dir().join(format!("sluice-plugin-event-{}.json", std::process::id()));
    std::fs::write(&event, r#"{"uuid": "u", "team_id": 1, "event": "Order Placed", "properties": {}}"#).unwrap();
    let (ok, text) = sluice_plugin(&[
        "run",
        taxonomy.to_str().unwrap(),
        "--event",
        event.to_str().unwrap(),
        "--config",
        "convention=kebab-case",
    ]);
    assert!(ok, "{text}");
    assert!(text.contains(r#""event": "order-placed""#), "{text}");
    let downsample = dirs.iter().find(|d| d.ends_with("downsample")).unwrap();
    let (ok, text) = sluice_plugin(&[
        "run",
        downsample.to_str().unwrap(),
        "--event",
        event.to_str().unwrap(),
        "--config",
        "percentage=0",
    ]);
    assert!(ok && text.trim().ends_with("dropped"), "{text}");
    let (ok, text) = sluice_plugin(&[
        "run",
        taxonomy.to_str().unwrap(),
        "--event",
        event.to_str().unwrap(),
        "--config",
        "convention=shouting",
    ]);
    assert!(!ok && text.contains("config `convention`: must be one of"), "{text}");
}

/// `--attach key=file` gives the plugin the file as production's `plugins attach` does:
/// `ctx.attachments.<key>` with its type, name and bytes, within the same size limit.
#[test]
fn run_gives_the_plugin_its_attachments() {
    let main = "return { process_event = function(e, ctx) \
        local a = ctx.attachments.mapping \
        e.properties.to = ctx.json.decode(a.contents)[e.event] \
        e.properties.type = a.content_type e.properties.file = a.file_name \
        e.properties.none = ctx.attachments.missing == nil return e end }";
    let dir = scratch_plugin(
        main,
        r#"{"event": {"uuid": "u", "team_id": 1, "event": "x", "properties": {}}, "expected": null}"#,
    );
    let mapping = dir.join("map.json");
    std::fs::write(&mapping, r#"{"signup": "Signed Up"}"#).unwrap();
    let event = dir.join("event.json");
    std::fs::write(&event, r#"{"uuid": "u", "team_id": 1, "event": "signup", "properties": {}}"#).unwrap();
    let attach = format!("mapping={}", mapping.display());
    let (ok, text) =
        sluice_plugin(&["run", dir.to_str().unwrap(), "--event", event.to_str().unwrap(), "--attach", &attach]);
    assert!(ok, "{text}");
    for expected in
        [r#""to": "Signed Up""#, r#""type": "application/json""#, r#""file": "map.json""#, r#""none": true"#]
    {
        assert!(text.contains(expected), "{expected} in {text}");
    }
    let big = dir.join("big.json");
    std::fs::write(&big, vec![b' '; 2 << 20]).unwrap();
    let attach = format!("mapping={}", big.display());
    let (ok, text) =
        sluice_plugin(&["run", dir.to_str().unwrap(), "--event", event.to_str().unwrap(), "--attach", &attach]);
    assert!(!ok && text.contains("over the 1048576 byte limit"), "{text}");
}

/// The Luau type definitions shipped for authors are the ones generated from the host's
/// namespace table (`sluice-plugin types`), and name every field of `ctx` a running
/// plugin gets, and nothing it does not.
#[tokio::test]
async fn the_type_definitions_match_the_host_api() {
    use sluice_plugin_runtime::{Host, KeyValue, Limits, Manifest, PluginSource, Vm};
    let types = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("types/sluice.d.luau")).unwrap();
    let (ok, printed) = sluice_plugin(&["types"]);
    assert!(ok, "{printed}");
    assert_eq!(
        types, printed,
        "types/sluice.d.luau is not what `sluice-plugin types` prints: regenerate it with \
         `sluice-plugin types > plugin-runtime/types/sluice.d.luau`"
    );
    let block = types.split("type Ctx = {").nth(1).unwrap().split("\n}").next().unwrap();
    let mut declared: Vec<String> = block
        .lines()
        .filter(|l| {
            l.starts_with('\t') && !l.starts_with("\t\t") && l.contains(':') && !l.trim_start().starts_with("--")
        })
        .filter_map(|l| l.trim().split(':').next().map(str::to_string))
        .collect();
    declared.sort();

    let main = "return { process_event = function(e, ctx) \
        local keys = {} for k in pairs(ctx) do table.insert(keys, k) end table.sort(keys) \
        e.properties.keys = keys return e end }";
    let source = PluginSource { manifest: Manifest::parse(r#"{"name": "t"}"#).unwrap(), main: main.into() };
    let kv = KeyValue::memory(10);
    let vm = Vm::new(&source, &Default::default(), Limits::default(), Host::new(kv.clone(), kv)).await.unwrap();
    let out =
        vm.process_event(&serde_json::json!({"uuid": "u", "team_id": 1, "properties": {}})).await.unwrap().unwrap();
    let provided: Vec<String> =
        out["properties"]["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect();
    assert_eq!(declared, provided);
}
