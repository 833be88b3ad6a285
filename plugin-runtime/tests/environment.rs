//! What plugin code inherits from the host process: nothing it was not given. A test
//! binary of its own, because it sets the process environment.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sluice_plugin_runtime::{
    Host, Instance, KeyValue, Limits, Manifest, PluginConfigId, PluginSource, Supervisor, SupervisorSettings, TeamId,
    Vm,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers every request with `hello`, counting them.
async fn listener(hits: Arc<AtomicUsize>) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            hits.fetch_add(1, Ordering::SeqCst);
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").await;
        }
    });
    port
}

#[tokio::test]
async fn workers_get_no_secrets_and_plugin_requests_no_proxy() {
    let proxy_hits = Arc::new(AtomicUsize::new(0));
    let proxy = listener(proxy_hits.clone()).await;
    let receiver_hits = Arc::new(AtomicUsize::new(0));
    let receiver = listener(receiver_hits.clone()).await;
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        std::env::set_var(var, format!("http://127.0.0.1:{proxy}"));
    }
    std::env::set_var("CLICKHOUSE_PASSWORD", "hunter2");

    // A "worker" that writes down the environment it was given.
    let dump = std::env::temp_dir().join(format!("sluice-worker-env-{}", std::process::id()));
    let s = Supervisor::new(SupervisorSettings {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), format!("env > {}; exit 1", dump.display())],
        env: vec![("SLUICE_PLUGIN_CACHE_PREFIX".into(), "given/".into())],
        workers: 1,
        batch_base: Duration::from_secs(2),
        per_event: Duration::from_millis(10),
        max_strikes: 3,
    });
    let source = PluginSource {
        manifest: Manifest::parse(&json!({"name": "p"}).to_string()).unwrap(),
        main: "return {}".into(),
    };
    let instance = Instance {
        id: PluginConfigId(1),
        source: source.clone(),
        config: Default::default(),
        limits: Limits::default(),
        attachments: Vec::new(),
    };
    assert!(s.load(TeamId(1), instance).await.is_err(), "the dumping worker exits");
    let env = std::fs::read_to_string(&dump).unwrap();
    let _ = std::fs::remove_file(&dump);
    assert!(env.contains("SLUICE_PLUGIN_CACHE_PREFIX=given/"), "{env}");
    for leaked in ["PROXY", "proxy", "hunter2", "CARGO", "HOME="] {
        assert!(!env.contains(leaked), "{leaked} reached the worker:\n{env}");
    }

    // In-process, with the proxy variables set: the request goes straight to its host.
    let manifest = json!({"name": "fetcher", "http": {"allow": ["127.0.0.1"], "in_process_event": true}});
    let main = format!(
        "return {{ process_event = function(e, ctx) local r = ctx.http.fetch('http://127.0.0.1:{receiver}/x') \
         e.properties.r = r.status .. ' ' .. r.body return e end }}"
    );
    // The request's route is tested, not its speed: the 50 ms default includes it.
    let mut limits = Limits { process_event_wall: Duration::from_secs(10), ..Limits::default() };
    limits.http.allow_in_process_event = true;
    limits.http.allow_private_addresses = true;
    let kv = KeyValue::memory(10);
    let source = PluginSource { manifest: Manifest::parse(&manifest.to_string()).unwrap(), main };
    let vm = Vm::new(&source, &Default::default(), limits, Host::new(kv.clone(), kv)).await.unwrap();
    let event = json!({"uuid": "u", "team_id": 1, "event": "e", "properties": {}});
    let out = vm.process_event(&event).await.unwrap().unwrap();
    assert_eq!(out["properties"]["r"], "200 hello");
    assert_eq!(receiver_hits.load(Ordering::SeqCst), 1);
    assert_eq!(proxy_hits.load(Ordering::SeqCst), 0, "the request went through the proxy");
}
