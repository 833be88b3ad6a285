//! Plugins in worker processes: batches through a chain, and a worker that dies or
//! hangs costs only that worker; its plugin is struck, then disabled.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_plugin_runtime::{
    Instance, Limits, Manifest, PluginConfigId, PluginSource, Supervisor, SupervisorSettings, TeamId,
};

const TEAM: TeamId = TeamId(1);

fn ids(raw: &[i64]) -> Vec<PluginConfigId> {
    raw.iter().copied().map(PluginConfigId).collect()
}

fn settings(max_strikes: u32) -> SupervisorSettings {
    SupervisorSettings {
        program: env!("CARGO_BIN_EXE_sluice-plugin").into(),
        args: vec!["worker".into()],
        env: Vec::new(),
        workers: 2,
        batch_base: Duration::from_secs(2),
        per_event: Duration::from_millis(100),
        max_strikes,
    }
}

fn supervisor(max_strikes: u32) -> Supervisor {
    Supervisor::new(settings(max_strikes))
}

fn instance(id: i64, main: &str) -> Instance {
    Instance {
        id: PluginConfigId(id),
        source: PluginSource {
            manifest: Manifest::parse(&json!({"name": format!("p{id}")}).to_string()).unwrap(),
            main: main.into(),
        },
        config: Default::default(),
        limits: Limits { process_event_wall: Duration::from_secs(1), ..Limits::default() },
        attachments: Vec::new(),
    }
}

fn events(n: usize) -> Vec<Value> {
    (0..n).map(|i| json!({"uuid": format!("u{i}"), "team_id": 1, "event": "e", "properties": {"i": i}})).collect()
}

const TAG: &str = "return { process_event = function(e) e.properties.tagged = true return e end }";
const DROP_ODD: &str =
    "return { process_event = function(e) if e.properties.i % 2 == 1 then return nil end return e end }";
/// About 30 ms of work per event, well inside its limits.
const SLOW: &str = "return { process_event = function(e) local x = 0 for i = 1, 3e6 do x = x + i end return e end }";

#[tokio::test]
async fn a_chain_runs_in_order_over_a_batch() {
    let s = supervisor(3);
    s.load(TEAM, instance(10, TAG)).await.unwrap();
    s.load(TEAM, instance(11, DROP_ODD)).await.unwrap();
    let out = s.process(TEAM, &ids(&[10, 11]), events(4)).await;
    assert!(out.strikes.is_empty());
    let kept: Vec<_> = out.output.events.iter().map(|e| e.event.as_ref().map(|e| e["properties"].clone())).collect();
    assert_eq!(kept, vec![Some(json!({"i": 0, "tagged": true})), None, Some(json!({"i": 2, "tagged": true})), None]);
    assert_eq!(out.output.events[0].succeeded, ids(&[10, 11]));
}

#[tokio::test]
async fn a_failing_setup_keeps_the_old_version() {
    let s = supervisor(3);
    s.load(TEAM, instance(10, TAG)).await.unwrap();
    let broken = "return { setup = function() error('no config') end, process_event = function(e) return nil end }";
    let err = s.load(TEAM, instance(10, broken)).await.unwrap_err();
    assert!(err.to_string().contains("no config"), "{err}");
    let out = s.process(TEAM, &ids(&[10]), events(1)).await;
    assert_eq!(out.output.events[0].event.as_ref().unwrap()["properties"]["tagged"], true, "old version still runs");
}

async fn pid_of_worker(s: &Supervisor) -> u32 {
    s.worker_pids().await.into_iter().flatten().next().expect("a worker runs")
}

fn signal(pid: u32, sig: &str) {
    assert!(std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
}

/// Kills `pid` from outside after `delay`, as a Luau crash would.
fn kill_after(pid: u32, delay: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        signal(pid, "-KILL");
    })
}

#[tokio::test]
async fn a_worker_that_dies_strikes_its_plugin_and_the_batch_goes_on() {
    let s = std::sync::Arc::new(supervisor(2));
    s.load(TEAM, instance(10, TAG)).await.unwrap();
    s.load(TEAM, instance(20, SLOW)).await.unwrap();
    let pid = pid_of_worker(&s).await;
    // Killed while the slow plugin runs.
    let killer = kill_after(pid, Duration::from_millis(300));
    let out = s.process(TEAM, &ids(&[10, 20]), events(30)).await;
    killer.await.unwrap();
    assert_eq!(out.strikes.len(), 1, "{:?}", out.strikes);
    assert_eq!(out.strikes[0].id, PluginConfigId(20));
    assert!(!out.strikes[0].disabled);
    assert_eq!((out.strikes[0].hook, out.strikes[0].cause), (sluice_plugin_runtime::Hook::ProcessEvent, "crash"));
    let reason = &out.strikes[0].reason;
    assert!(reason.starts_with("the worker died while process_event of plugin config 20 ran ("), "{reason}");
    assert!(reason.contains("its time limit is 1000 ms): killed by signal 9 (strike 1 of 2)"), "{reason}");
    for e in &out.output.events {
        assert_eq!(e.event.as_ref().unwrap()["properties"]["tagged"], true, "the other plugin still ran");
        assert_eq!(e.failed, ids(&[20]));
    }
    assert_ne!(pid_of_worker(&s).await, pid, "a new worker");

    // Struck again: disabled, and skipped from then on.
    let pid = pid_of_worker(&s).await;
    let killer = kill_after(pid, Duration::from_millis(300));
    let out = s.process(TEAM, &ids(&[10, 20]), events(30)).await;
    killer.await.unwrap();
    assert!(out.strikes[0].disabled, "{:?}", out.strikes);
    assert!(s.is_disabled(PluginConfigId(20)));
    let out = s.process(TEAM, &ids(&[10, 20]), events(2)).await;
    assert!(out.strikes.is_empty());
    assert_eq!(out.output.events[0].succeeded, ids(&[10]));
}

#[tokio::test]
async fn a_worker_that_hangs_inside_a_plugin_is_replaced_and_the_plugin_struck() {
    let s = Supervisor::new(SupervisorSettings {
        batch_base: Duration::from_millis(500),
        per_event: Duration::from_millis(40),
        ..settings(3)
    });
    s.load(TEAM, instance(20, SLOW)).await.unwrap();
    let pid = pid_of_worker(&s).await;
    // Stopped 300 ms into a pass of about 900 ms: inside plugin 20's code.
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        signal(pid, "-STOP");
    });
    let started = std::time::Instant::now();
    let out = s.process(TEAM, &ids(&[20]), events(30)).await;
    stopper.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(out.strikes.len(), 1);
    assert_eq!(out.strikes[0].id, PluginConfigId(20));
    assert_eq!(out.strikes[0].cause, "hang");
    assert!(
        out.strikes[0]
            .reason
            .starts_with("process_event of plugin config 20 gave no answer within the budget of 1700 ms (it ran "),
        "{:?}",
        out.strikes
    );
    assert_eq!(out.output.events.len(), 30, "events pass unchanged");
    let next = s.process(TEAM, &ids(&[20]), events(1)).await;
    assert!(next.strikes.is_empty(), "{next:?}");
    assert_ne!(pid_of_worker(&s).await, pid, "the stopped worker was killed and replaced");
}

#[tokio::test]
async fn a_worker_that_fails_outside_any_plugin_strikes_no_one() {
    let s = Supervisor::new(SupervisorSettings {
        batch_base: Duration::from_millis(500),
        per_event: Duration::from_millis(10),
        ..settings(1)
    });
    s.load(TEAM, instance(20, TAG)).await.unwrap();
    let pid = pid_of_worker(&s).await;
    // Stopped before the batch: no plugin is running when it stops answering.
    signal(pid, "-STOP");
    let out = s.process(TEAM, &ids(&[20]), events(3)).await;
    assert!(out.strikes.is_empty(), "{:?}", out.strikes);
    assert!(!s.is_disabled(PluginConfigId(20)), "one strike would have disabled it");
    for e in &out.output.events {
        assert_eq!(e.succeeded, ids(&[20]), "tried again on a fresh worker");
        assert_eq!(e.event.as_ref().unwrap()["properties"]["tagged"], true);
    }
    assert_ne!(pid_of_worker(&s).await, pid);
}

/// Events as deep as anything upstream accepts (serde_json's 127 levels) cross into the
/// worker and back unchanged: the frame around them adds no depth.
#[tokio::test]
async fn events_as_deep_as_ingest_reads_cross_the_worker_boundary() {
    let s = supervisor(1);
    s.load(TEAM, instance(10, TAG)).await.unwrap();
    s.load(TEAM, instance(11, TAG)).await.unwrap();
    let mut deep = json!(0);
    for _ in 0..124 {
        deep = json!([deep]);
    }
    let event = json!({"uuid": "u0", "team_id": 1, "event": "e", "properties": {"deep": deep}});
    let text = event.to_string();
    assert!(serde_json::from_str::<Value>(&text).is_ok(), "ingest reads it");
    for _ in 0..3 {
        let out = s.process(TEAM, &ids(&[10, 11]), vec![event.clone(), events(1)[0].clone()]).await;
        assert!(out.strikes.is_empty(), "{:?}", out.strikes);
        assert!(out.output.errors.is_empty(), "{:?}", out.output.errors);
        let first = out.output.events[0].event.as_ref().unwrap();
        assert_eq!(first["properties"]["deep"], event["properties"]["deep"]);
        assert_eq!(first["properties"]["tagged"], true);
        assert_eq!(out.output.events[0].succeeded, ids(&[10, 11]));
    }
    assert!(!s.is_disabled(PluginConfigId(10)) && !s.is_disabled(PluginConfigId(11)));
}

/// A plugin whose output would be too large or too deep fails on its own event; the next
/// plugin of the chain is not blamed and still runs.
#[tokio::test]
async fn hostile_output_is_refused_where_it_is_produced() {
    let s = supervisor(1);
    let deep = "return { process_event = function(e) local t = {} for i = 1, 10000 do t = {t} end \
        e.properties.deep = t return e end }";
    let wide = "return { process_event = function(e) local t = {'x'} for i = 1, 40 do t = {a = t, b = t} end \
        e.properties.wide = t return e end }";
    let big = "return { process_event = function(e) e.properties.pad = string.rep('x', 900000) return e end }";
    s.load(TEAM, instance(30, deep)).await.unwrap();
    s.load(TEAM, instance(31, wide)).await.unwrap();
    s.load(TEAM, instance(32, big)).await.unwrap();
    s.load(TEAM, instance(10, TAG)).await.unwrap();
    let out = s.process(TEAM, &ids(&[30, 31, 32, 10]), events(2)).await;
    assert!(out.strikes.is_empty(), "{:?}", out.strikes);
    for e in &out.output.events {
        assert_eq!(e.failed, ids(&[30, 31, 32]), "{e:?}");
        assert_eq!(e.succeeded, ids(&[10]));
        let props = &e.event.as_ref().unwrap()["properties"];
        assert_eq!(props["tagged"], true);
        assert!(props.get("deep").is_none() && props.get("wide").is_none() && props.get("pad").is_none());
    }
    let reasons: Vec<String> = out.output.errors.iter().map(|(id, _, e)| format!("{id}: {e}")).collect();
    assert!(reasons.iter().any(|r| r.starts_with("30:") && r.contains("deeper")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.starts_with("31:") && r.contains("larger")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.starts_with("32:") && r.contains("allowance")), "{reasons:?}");
}

/// luau-lang/luau#2970: `table.move` with extreme indexes crashed the host process in
/// some Luau versions. Whatever this Luau does with it, the supervisor answers, the
/// events go on, and the next batch is served.
#[tokio::test]
async fn the_table_move_reproducer_does_not_take_the_host_down() {
    let s = supervisor(3);
    let crash = "return { process_event = function(e) \
        table.move({1, 2, 3}, 1, 0x7fffffff, 2) \
        table.move({}, -0x7fffffff, 0x7fffffff, 0x7fffffff) \
        table.move({1}, 1, 2, 9007199254740991) \
        return e end }";
    s.load(TEAM, instance(30, crash)).await.unwrap();
    s.load(TEAM, instance(10, TAG)).await.unwrap();
    let out = s.process(TEAM, &ids(&[30, 10]), events(2)).await;
    assert_eq!(out.output.events.len(), 2);
    for e in &out.output.events {
        assert!(e.failed.contains(&PluginConfigId(30)), "{e:?}");
        assert_eq!(e.event.as_ref().unwrap()["properties"]["tagged"], true);
    }
    let next = s.process(TEAM, &ids(&[10]), events(1)).await;
    assert_eq!(next.output.events[0].succeeded, ids(&[10]));
}

/// A single C call reaches no interrupt (a quadratic plain `string.find`): the worker's
/// watchdog aborts it from outside well before the supervisor's batch budget, and the
/// plugin that was running is struck.
#[tokio::test]
async fn a_call_that_never_reaches_an_interrupt_is_ended_from_outside() {
    let s = Supervisor::new(SupervisorSettings { batch_base: Duration::from_secs(60), ..settings(3) });
    let quadratic = "return { process_event = function(e) \
        local s = string.rep('a', 4000000) local p = string.rep('a', 200000) .. 'b' \
        string.find(s, p, 1, true) return e end }";
    let mut limits = Limits { process_event_wall: Duration::from_millis(100), ..Limits::default() };
    limits.process_event_ticks = u64::MAX;
    let mut i = instance(40, quadratic);
    i.limits = limits;
    s.load(TEAM, i).await.unwrap();
    s.load(TEAM, instance(10, TAG)).await.unwrap();
    let started = std::time::Instant::now();
    let out = s.process(TEAM, &ids(&[40, 10]), events(1)).await;
    println!("ended after {:?}", started.elapsed());
    assert_eq!(out.strikes.len(), 1, "{:?}", out.strikes);
    assert_eq!(out.strikes[0].id, PluginConfigId(40));
    // The strike says which hook, which limit and how long it ran, and that the watchdog
    // (not the batch budget) ended it.
    let strike = &out.strikes[0];
    assert_eq!((strike.hook, strike.cause), (sluice_plugin_runtime::Hook::ProcessEvent, "watchdog"), "{strike:?}");
    assert!(strike.reason.starts_with("process_event of plugin config 40 ran "), "{}", strike.reason);
    assert!(strike.reason.contains(" ms, past its time limit of 100 ms, in a single call"), "{}", strike.reason);
    assert!(strike.reason.ends_with("the worker's watchdog stopped it (strike 1 of 3)"), "{}", strike.reason);
    assert_eq!(out.output.events[0].event.as_ref().unwrap()["properties"]["tagged"], true);
}

/// A worker connects its cache and storage when it loads a plugin, so the first
/// `process_event` (50 ms by default) does not pay for a connection to a remote Redis or
/// Postgres. Here the "servers" only count connections and hang up.
#[tokio::test]
async fn a_worker_connects_its_stores_when_it_loads_a_plugin_before_any_event() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    async fn counting_server(hits: Arc<AtomicUsize>) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                hits.fetch_add(1, Ordering::SeqCst);
                drop(s);
            }
        });
        port
    }
    let storage_hits = Arc::new(AtomicUsize::new(0));
    let storage = counting_server(storage_hits.clone()).await;
    let env = sluice_plugin_runtime::WorkerEnv {
        storage_database_url: Some(format!("postgres://plugins@127.0.0.1:{storage}/plugins")),
        ..Default::default()
    };
    let s = Supervisor::new(SupervisorSettings { env: env.to_vars(), workers: 1, ..settings(3) });
    assert_eq!(storage_hits.load(Ordering::SeqCst), 0);
    s.load(TEAM, instance(30, TAG)).await.unwrap();
    assert!(storage_hits.load(Ordering::SeqCst) >= 1, "storage was not connected at load");
}
