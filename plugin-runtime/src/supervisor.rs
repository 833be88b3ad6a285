//! Runs plugin chains in worker processes and survives them.
//!
//! Each team is served by one worker of a fixed pool (by team id), so a worker holds
//! only some teams' VMs. A worker that dies (a crash in Luau) or stops answering within
//! the batch's time budget is killed and restarted; the instance it was running is
//! struck and the batch is retried without it (its events marked failed for it). After
//! `max_strikes` strikes an instance is disabled: the caller is told, with the reason.
//!
//! Blame is only for what an instance was doing: the worker says when each instance's
//! pass starts and ends, and a failure outside any pass (reading the batch, writing the
//! answer) strikes no one. Such a batch is tried once more on a fresh worker; if that
//! fails too, its events go on unprocessed, marked failed by every instance of the chain
//! (the caller decides what that means for an instance that must not be skipped).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::BufReader;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;
use tracing::warn;

use crate::hook::{Hook, PluginConfigId, PluginError, TeamId};
use crate::limits::DEFAULT_EVENT_BYTES;
use crate::protocol::{
    answer_bound, read_frame, write_frame, ChainOutput, Instance, ProcessedEvent, Request, Response, WireOutput,
};

/// What a worker takes from the host's environment: how to log, and nothing else.
const WORKER_INHERITS: [&str; 3] = ["RUST_LOG", "LOG_FORMAT", "TZ"];

#[derive(Debug, Clone)]
pub struct Settings {
    /// The worker program and its arguments (e.g. `sluice-ingest plugin-worker`).
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Environment of the workers (where cache and storage live, see `worker`); nothing
    /// else of the host's reaches them but `RUST_LOG`, `LOG_FORMAT` and `TZ`.
    pub env: Vec<(String, String)>,
    pub workers: usize,
    /// Time a batch may take on top of `per_event` for each event and instance.
    pub batch_base: Duration,
    pub per_event: Duration,
    /// Crashes or hangs before an instance is disabled.
    pub max_strikes: u32,
}

/// What a batch may take besides its events' own time.
const BATCH_BASE: Duration = Duration::from_secs(5);

impl Settings {
    /// What ingest runs plugins with, and so does the author tool, from the operator's
    /// limit settings: a batch's budget is a fixed base plus each event's `process_event`
    /// limit, and an instance is disabled after `PLUGIN_MAX_STRIKES`.
    pub fn production(
        program: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        workers: usize,
        limits: &crate::limits::LimitSettings,
    ) -> Settings {
        Settings {
            program,
            args,
            env,
            workers,
            batch_base: BATCH_BASE,
            per_event: limits.limits().process_event_wall,
            max_strikes: limits.max_strikes,
        }
    }
}

/// Why one request to a loaded instance was not answered.
enum Unserved {
    /// The instance is not loaded, or could not be loaded into a restarted worker:
    /// nothing is struck.
    NotLoaded(String),
    /// Its worker died or hung on the request: killed, and the instance struck.
    Struck(Strike),
}

impl Unserved {
    fn into_error(self, hook: &str) -> (PluginError, Option<Strike>) {
        let (message, strike) = match self {
            Unserved::NotLoaded(message) => (message, None),
            Unserved::Struck(strike) => (strike.reason.clone(), Some(strike)),
        };
        (PluginError::Failed { hook: hook.into(), message }, strike)
    }
}

/// What happened to an instance outside its own error handling: which hook was running,
/// which limit it hit (or that its worker died), and what was measured, in words.
#[derive(Debug, Clone, PartialEq)]
pub struct Strike {
    pub id: PluginConfigId,
    pub hook: Hook,
    /// For metric labels: `watchdog` (a single call ran past its time limit without
    /// reaching an interrupt, and the worker's watchdog stopped it), `hang` (no answer
    /// within the batch's budget) or `crash` (the worker died otherwise).
    pub cause: &'static str,
    pub reason: String,
    /// This strike disabled it.
    pub disabled: bool,
}

/// The instance a worker was running when it failed, and since when.
#[derive(Debug, Clone, Copy)]
struct Running {
    id: PluginConfigId,
    hook: Hook,
    since: std::time::Instant,
}

/// One call of one instance's hook (a schedule, `export_events`).
#[derive(Debug)]
pub struct HookRun {
    pub result: Result<(), PluginError>,
    pub logs: Vec<crate::host::LogEntry>,
    /// What it sent with `ctx.capture`, to be produced by the caller.
    pub captured: Vec<Value>,
    /// Its worker died or hung during the call.
    pub strike: Option<Strike>,
}

#[derive(Debug, Default)]
pub struct ChainRun {
    pub output: ChainOutput,
    pub strikes: Vec<Strike>,
}

pub struct Supervisor {
    settings: Settings,
    workers: Vec<Mutex<Option<Worker>>>,
    /// What every worker must hold, to reload after a restart.
    instances: std::sync::Mutex<HashMap<PluginConfigId, Instance>>,
    strikes: std::sync::Mutex<HashMap<PluginConfigId, u32>>,
    disabled: std::sync::Mutex<HashSet<PluginConfigId>>,
}

struct Worker {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    loaded: HashSet<PluginConfigId>,
}

#[derive(Debug, thiserror::Error)]
enum WorkerDown {
    #[error("worker exited: {0}")]
    Exited(String),
    #[error("worker did not answer within {0:?}")]
    Hung(Duration),
    #[error("{0}")]
    CannotStart(String),
}

impl Supervisor {
    pub fn new(settings: Settings) -> Supervisor {
        let workers = (0..settings.workers.max(1)).map(|_| Mutex::new(None)).collect();
        Supervisor {
            settings,
            workers,
            instances: Default::default(),
            strikes: Default::default(),
            disabled: Default::default(),
        }
    }

    /// Compiles an instance and runs its `setup` in its team's worker. On failure the
    /// previous version (if any) stays.
    /// Returns the hooks the plugin defines.
    pub async fn load(&self, team: TeamId, instance: Instance) -> Result<Vec<Hook>, PluginError> {
        let id = instance.id;
        let mut slot = self.workers[self.worker_of(team)].lock().await;
        let worker = self.running(&mut slot).await.map_err(|e| down(id, e))?;
        let within = instance.limits.hook_call() + self.settings.batch_base;
        match ask(worker, &Request::Load(Box::new(instance.clone())), within).await {
            Ok(Response::Loaded { error: None, hooks, .. }) => {
                worker.loaded.insert(id);
                self.instances.lock().expect("lock").insert(id, instance);
                self.disabled.lock().expect("lock").remove(&id);
                self.strikes.lock().expect("lock").remove(&id);
                Ok(hooks)
            }
            Ok(Response::Loaded { error: Some(e), .. }) => Err(e),
            _ => {
                self.kill(&mut slot).await;
                Err(PluginError::Failed { hook: "setup".into(), message: "the plugin worker died loading it".into() })
            }
        }
    }

    /// Runs `teardown` of every instance each worker holds, then stops the workers; what
    /// is not done `within` is cut (the process is exiting). Work started after this
    /// starts fresh workers again, so call it last.
    pub async fn shutdown(&self, within: Duration) {
        let stop = async {
            for slot in &self.workers {
                let mut slot = slot.lock().await;
                if let Some(worker) = slot.as_mut() {
                    let ids: Vec<PluginConfigId> = worker.loaded.iter().copied().collect();
                    for id in ids {
                        // The deadline of the whole shutdown bounds each teardown.
                        let unloaded = ask(worker, &Request::Unload { id }, within).await;
                        if !matches!(unloaded, Ok(Response::Unloaded { .. })) {
                            warn!(id = id.0, "plugin worker failed during teardown");
                            break;
                        }
                        worker.loaded.remove(&id);
                    }
                }
                self.kill(&mut slot).await;
            }
        };
        if tokio::time::timeout(within, stop).await.is_err() {
            warn!(within_ms = within.as_millis() as u64, "plugin teardown cut at the shutdown deadline");
        }
    }

    /// Runs `teardown` of an instance and forgets it.
    pub async fn unload(&self, team: TeamId, id: PluginConfigId) {
        let mut slot = self.workers[self.worker_of(team)].lock().await;
        let within = self.instances.lock().expect("lock").remove(&id).map(|i| i.limits.hook_call());
        if let (Some(worker), Some(within)) = (slot.as_mut(), within) {
            if worker.loaded.remove(&id) && ask(worker, &Request::Unload { id }, within).await.is_err() {
                self.kill(&mut slot).await;
            }
        }
    }

    /// Runs an author's `test.lua` against a loaded instance (`sluice-plugin test`): each
    /// `test_*` function's result, or, when the worker died or hung, the strike's reason.
    pub async fn run_tests(
        &self,
        team: TeamId,
        id: PluginConfigId,
        source: &str,
    ) -> Result<Vec<crate::protocol::TestResult>, PluginError> {
        let request = Request::RunTests { id, source: source.to_string() };
        let answer = |response| match response {
            Response::TestsRan { results, .. } => Some(results),
            _ => None,
        };
        // A test file is not a batch: it is given four hook calls' time. A worker that
        // dies on it most likely died in a `process_event` a test called.
        match self.ask_instance(team, id, Hook::ProcessEvent, &request, 4, answer).await {
            Ok(results) => results,
            Err(unserved) => Err(unserved.into_error("test.lua").0),
        }
    }

    pub fn is_disabled(&self, id: PluginConfigId) -> bool {
        self.disabled.lock().expect("lock").contains(&id)
    }

    /// Runs `chain`'s `process_event` on `events`. Always answers: a worker failure strikes
    /// the instance that was running and the batch goes on without it.
    pub async fn process(&self, team: TeamId, chain: &[PluginConfigId], events: Vec<Value>) -> ChainRun {
        self.run(team, chain, events, false).await
    }

    /// Runs `chain`'s `on_event` on written `events`, once each (a call that asks to be
    /// retried answers `PluginError::Retry`). Same failure handling as
    /// [`Supervisor::process`].
    pub async fn on_event(&self, team: TeamId, chain: &[PluginConfigId], events: Vec<Value>) -> ChainRun {
        self.run(team, chain, events, true).await
    }

    /// Runs one instance's `export_events` on `events` (JSON text each, as the exports
    /// topic carries them), within one hook call's time. A worker failure strikes the
    /// instance, as for batches; retrying is the caller's, so no worker waits out a
    /// back-off.
    pub async fn export_events(&self, team: TeamId, id: PluginConfigId, events: Vec<String>) -> HookRun {
        let request = Request::ExportEvents { id, events };
        self.hook_call(team, id, Hook::ExportEvents, &request).await
    }

    /// Runs one of an instance's jobs, within one hook call's time. A worker failure
    /// strikes the instance, as for batches; retrying is the caller's.
    pub async fn run_job(&self, team: TeamId, id: PluginConfigId, name: String, payload: String) -> HookRun {
        let request = Request::Job { id, name, payload };
        self.hook_call(team, id, Hook::Jobs, &request).await
    }

    /// Runs one instance's schedule (`every_minute`, …) with `info` as its argument. A
    /// worker failure strikes the instance, as for batches.
    pub async fn schedule(&self, team: TeamId, id: PluginConfigId, hook: Hook, info: Value) -> HookRun {
        let request = Request::Hook { id, hook, event: Some(info.to_string()) };
        self.hook_call(team, id, hook, &request).await
    }

    /// One call of one instance's hook answered by `HookDone`.
    async fn hook_call(&self, team: TeamId, id: PluginConfigId, hook: Hook, request: &Request) -> HookRun {
        let answer = |response| match response {
            Response::HookDone { error, logs, captured, .. } => Some((error, logs, captured)),
            _ => None,
        };
        match self.ask_instance(team, id, hook, request, 1, answer).await {
            Ok((error, logs, captured)) => HookRun { result: error.map_or(Ok(()), Err), logs, captured, strike: None },
            Err(unserved) => {
                let (error, strike) = unserved.into_error(hook.name());
                HookRun { result: Err(error), logs: Vec::new(), captured: Vec::new(), strike }
            }
        }
    }

    /// One request to a loaded instance in its team's worker, loaded again into a
    /// restarted worker first (as batches do), within the batch base plus `calls` hook
    /// calls' time. An answer `answer` does not take, no answer, or a dead worker strikes
    /// the instance for `hook`, the hook it runs.
    async fn ask_instance<T>(
        &self,
        team: TeamId,
        id: PluginConfigId,
        hook: Hook,
        request: &Request,
        calls: u32,
        answer: impl FnOnce(Response) -> Option<T>,
    ) -> Result<T, Unserved> {
        let mut slot = self.workers[self.worker_of(team)].lock().await;
        let Some(hook_call) = self.instances.lock().expect("lock").get(&id).map(|i| i.limits.hook_call()) else {
            return Err(Unserved::NotLoaded(format!("plugin config {id} is not loaded")));
        };
        let budget = hook_call * calls + self.settings.batch_base;
        if let Err((_, e)) = self.try_run(&mut slot, &[id], &[], budget, false).await {
            self.kill(&mut slot).await;
            return Err(Unserved::NotLoaded(e.to_string()));
        }
        let worker = slot.as_mut().expect("running after try_run");
        let running = Running { id, hook, since: std::time::Instant::now() };
        let down = match ask(worker, request, budget).await.map(answer) {
            Ok(Some(answered)) => return Ok(answered),
            Err(Unanswered::Hung) => WorkerDown::Hung(budget),
            Ok(None) | Err(Unanswered::Died) => WorkerDown::Exited(format!("during {}", hook.name())),
        };
        Err(Unserved::Struck(self.strike_down(team, &mut slot, running, &down).await))
    }

    async fn run(&self, team: TeamId, chain: &[PluginConfigId], events: Vec<Value>, on_event: bool) -> ChainRun {
        let mut outcome = ChainRun::default();
        let mut chain: Vec<PluginConfigId> = chain.iter().copied().filter(|id| !self.is_disabled(*id)).collect();
        if chain.is_empty() {
            outcome.output = passthrough(events, &[]);
            return outcome;
        }
        let texts: Vec<String> =
            events.iter().map(|e| serde_json::to_string(e).expect("a JSON value writes")).collect();
        let mut skipped: Vec<PluginConfigId> = Vec::new();
        let mut unattributed = 0;
        let mut slot = self.workers[self.worker_of(team)].lock().await;
        loop {
            let budget =
                self.settings.batch_base + self.settings.per_event * (events.len() * chain.len().max(1)) as u32;
            match self.try_run(&mut slot, &chain, &texts, budget, on_event).await {
                Ok(wire) => {
                    let mut output = read_output(wire, &events, &chain);
                    for e in &mut output.events {
                        e.failed.extend(skipped.iter().copied());
                    }
                    outcome.output = output;
                    return outcome;
                }
                Err((_, e @ WorkerDown::CannotStart(_))) => {
                    // Not the plugins' fault: nothing is struck, the events pass unchanged.
                    warn!(team = team.0, error = %e, "no plugin worker; events pass through their plugins unchanged");
                    skipped.extend(chain);
                    outcome.output = passthrough(events, &skipped);
                    return outcome;
                }
                Err((Some(running), e)) => {
                    let id = running.id;
                    outcome.strikes.push(self.strike_down(team, &mut slot, running, &e).await);
                    chain.retain(|c| *c != id);
                    skipped.push(id);
                    if chain.is_empty() {
                        outcome.output = passthrough(events, &skipped);
                        return outcome;
                    }
                }
                Err((None, e)) => {
                    self.kill(&mut slot).await;
                    unattributed += 1;
                    if unattributed < 2 {
                        warn!(team = team.0, error = %e, "plugin worker failed outside any plugin; trying the batch again");
                        continue;
                    }
                    warn!(team = team.0, error = %e, "plugin worker failed twice outside any plugin; events go on unprocessed");
                    skipped.extend(chain);
                    outcome.output = passthrough(events, &skipped);
                    return outcome;
                }
            }
        }
    }

    async fn try_run(
        &self,
        slot: &mut Option<Worker>,
        chain: &[PluginConfigId],
        events: &[String],
        budget: Duration,
        on_event: bool,
    ) -> Result<WireOutput, (Option<Running>, WorkerDown)> {
        let worker = self.running(slot).await.map_err(|e| (None, e))?;
        // Instances this worker lost in a restart are loaded again first.
        for id in chain.iter().filter(|id| !worker.loaded.contains(id)).copied().collect::<Vec<_>>() {
            let Some(instance) = self.instances.lock().expect("lock").get(&id).cloned() else { continue };
            let loading = Running { id, hook: Hook::Setup, since: std::time::Instant::now() };
            let answer = tokio::time::timeout(instance.limits.hook_call() + self.settings.batch_base, async {
                write_frame(&mut worker.input, &Request::Load(Box::new(instance))).await?;
                read_frame::<Response>(&mut worker.output, small_answer()).await
            })
            .await;
            match answer {
                Ok(Ok(Some(Response::Loaded { error: None, .. }))) => {
                    worker.loaded.insert(id);
                }
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) | Ok(Err(_)) => return Err((Some(loading), WorkerDown::Exited("while loading".into()))),
                Err(_) => return Err((Some(loading), WorkerDown::Hung(budget))),
            }
        }
        let mut running = None;
        let hook = if on_event { Hook::OnEvent } else { Hook::ProcessEvent };
        let bound = answer_bound(events, DEFAULT_EVENT_BYTES);
        let exchange = async {
            let request = match on_event {
                false => Request::Process { chain: chain.to_vec(), events: events.to_vec() },
                true => Request::OnEvent { chain: chain.to_vec(), events: events.to_vec() },
            };
            write_frame(&mut worker.input, &request).await.map_err(|e| WorkerDown::Exited(e.to_string()))?;
            loop {
                match read_frame::<Response>(&mut worker.output, bound).await {
                    Ok(Some(Response::Running { id })) => {
                        running = Some(Running { id, hook, since: std::time::Instant::now() })
                    }
                    Ok(Some(Response::Ran { .. })) => running = None,
                    Ok(Some(Response::Processed(output))) => return Ok(output),
                    Ok(Some(other)) => return Err(WorkerDown::Exited(format!("unexpected answer {other:?}"))),
                    Ok(None) => return Err(WorkerDown::Exited("end of stream".into())),
                    Err(e) => return Err(WorkerDown::Exited(e.to_string())),
                }
            }
        };
        let result = tokio::time::timeout(budget, exchange).await;
        match result {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(e)) => Err((running, e)),
            Err(_) => Err((running, WorkerDown::Hung(budget))),
        }
    }

    fn worker_of(&self, team: TeamId) -> usize {
        team.0.unsigned_abs() as usize % self.workers.len()
    }

    async fn running<'w>(&self, slot: &'w mut Option<Worker>) -> Result<&'w mut Worker, WorkerDown> {
        if let Some(w) = slot.as_mut() {
            if w.child.try_wait().ok().flatten().is_some() {
                *slot = None;
            }
        }
        if slot.is_none() {
            // A minimal, explicit environment: nothing of the host's (its secrets, its
            // proxies) reaches plugin code unless listed here.
            let inherited = WORKER_INHERITS.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)));
            let mut child = Command::new(&self.settings.program)
                .args(&self.settings.args)
                .env_clear()
                .envs(inherited)
                .envs(self.settings.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| {
                    WorkerDown::CannotStart(format!("cannot start {}: {e}", self.settings.program.display()))
                })?;
            let input = child.stdin.take().expect("piped");
            let output = BufReader::new(child.stdout.take().expect("piped"));
            *slot = Some(Worker { child, input, output, loaded: HashSet::new() });
        }
        Ok(slot.as_mut().expect("set above"))
    }

    async fn kill(&self, slot: &mut Option<Worker>) {
        if let Some(mut w) = slot.take() {
            let _ = w.child.kill().await;
        }
    }

    /// Kills the worker that failed while `running` ran, and strikes that instance with
    /// what was seen: how long the call ran, against which limit, and how the worker
    /// ended; the process log says so too.
    async fn strike_down(
        &self,
        team: TeamId,
        slot: &mut Option<Worker>,
        running: Running,
        down: &WorkerDown,
    ) -> Strike {
        let ran = running.since.elapsed();
        // A worker that closed its output is exiting: its status says how.
        let status = match (down, slot.as_mut()) {
            (WorkerDown::Exited(_), Some(worker)) => {
                tokio::time::timeout(Duration::from_secs(1), worker.child.wait()).await.ok().and_then(Result::ok)
            }
            _ => None,
        };
        self.kill(slot).await;
        let limits = self.instances.lock().expect("lock").get(&running.id).map(|i| i.limits.clone());
        let limit = limits.map(|l| match running.hook {
            Hook::ProcessEvent => l.process_event_wall,
            _ => l.hook_wall,
        });
        let (cause, reason) = diagnose(running, ran, limit, down, status);
        let mut strikes = self.strikes.lock().expect("lock");
        let n = strikes.entry(running.id).or_default();
        *n += 1;
        let disabled = *n >= self.settings.max_strikes;
        if disabled {
            self.disabled.lock().expect("lock").insert(running.id);
        }
        let reason = format!("{reason} (strike {n} of {})", self.settings.max_strikes);
        warn!(
            team = team.0,
            instance = running.id.0,
            hook = running.hook.name(),
            cause,
            reason = %reason,
            "plugin worker failed; restarting it"
        );
        Strike { id: running.id, hook: running.hook, cause, reason, disabled }
    }

    /// Worker pids, for tests and the operator's view.
    pub async fn worker_pids(&self) -> Vec<Option<u32>> {
        let mut pids = Vec::new();
        for w in &self.workers {
            pids.push(w.lock().await.as_ref().and_then(|w| w.child.id()));
        }
        pids
    }
}

/// Why an instance's worker failed, in words and as a label: which hook, the limit it
/// ran past (if any), the time it ran, how the worker ended.
fn diagnose(
    running: Running,
    ran: Duration,
    limit: Option<Duration>,
    down: &WorkerDown,
    status: Option<std::process::ExitStatus>,
) -> (&'static str, String) {
    use std::os::unix::process::ExitStatusExt;
    let (hook, id, ran_ms) = (running.hook.name(), running.id, ran.as_millis());
    let limit_text = limit.map_or_else(String::new, |l| format!("; its time limit is {} ms", l.as_millis()));
    match down {
        WorkerDown::Hung(budget) => (
            "hang",
            format!(
                "{hook} of plugin config {id} gave no answer within the budget of {} ms (it ran {ran_ms} ms{limit_text}); its worker was killed",
                budget.as_millis()
            ),
        ),
        WorkerDown::Exited(_) if status.and_then(|s| s.signal()) == Some(SIGABRT) && limit.is_some_and(|l| ran >= l) => (
            "watchdog",
            format!(
                "{hook} of plugin config {id} ran {ran_ms} ms, past its time limit of {} ms, in a single call that reaches no interrupt (a long string.find, string.rep or table.sort); the worker's watchdog stopped it",
                limit.unwrap_or_default().as_millis()
            ),
        ),
        WorkerDown::Exited(how) => {
            let ended = match status {
                Some(s) if s.signal().is_some() => format!("killed by signal {}", s.signal().unwrap_or_default()),
                Some(s) => format!("exited with {s}"),
                None => how.clone(),
            };
            ("crash", format!("the worker died while {hook} of plugin config {id} ran ({ran_ms} ms{limit_text}): {ended}"))
        }
        WorkerDown::CannotStart(e) => ("crash", e.clone()),
    }
}

/// What `std::process::abort` (the watchdog's way out) raises.
const SIGABRT: i32 = 6;

fn down(id: PluginConfigId, e: WorkerDown) -> PluginError {
    PluginError::Failed { hook: "setup".into(), message: format!("plugin config {id}: {e}") }
}

/// Answers that carry no events: loads, unloads, hooks.
fn small_answer() -> usize {
    answer_bound(&[], DEFAULT_EVENT_BYTES)
}

/// The worker's answer with its events read. An event text that does not read (the
/// worker checked every output, so this is a defect) stands as it was sent, failed by
/// the whole chain.
fn read_output(wire: WireOutput, sent: &[Value], chain: &[PluginConfigId]) -> ChainOutput {
    let events = wire
        .events
        .into_iter()
        .zip(sent)
        .map(|(e, original)| match e.event.map(|text| serde_json::from_str::<Value>(&text)) {
            None => ProcessedEvent { event: None, succeeded: e.succeeded, failed: e.failed },
            Some(Ok(v)) => ProcessedEvent { event: Some(v), succeeded: e.succeeded, failed: e.failed },
            Some(Err(err)) => {
                warn!(error = %err, "a plugin worker answered an unreadable event; it goes on unprocessed");
                ProcessedEvent { event: Some(original.clone()), succeeded: Vec::new(), failed: chain.to_vec() }
            }
        })
        .collect();
    ChainOutput { events, errors: wire.errors, logs: wire.logs, durations: wire.durations, captured: wire.captured }
}

fn passthrough(events: Vec<Value>, failed: &[PluginConfigId]) -> ChainOutput {
    ChainOutput {
        events: events
            .into_iter()
            .map(|e| ProcessedEvent { event: Some(e), succeeded: Vec::new(), failed: failed.to_vec() })
            .collect(),
        ..ChainOutput::default()
    }
}

/// Why a worker gave no answer to one request.
#[derive(Debug)]
enum Unanswered {
    Hung,
    Died,
}

/// One request and its one small answer, within `within`: the exchange loading,
/// teardown and schedules make (batches stream several answers, see `try_run`).
async fn ask(worker: &mut Worker, request: &Request, within: Duration) -> Result<Response, Unanswered> {
    let exchange = async {
        write_frame(&mut worker.input, request).await?;
        read_frame::<Response>(&mut worker.output, small_answer()).await
    };
    match tokio::time::timeout(within, exchange).await {
        Err(_) => Err(Unanswered::Hung),
        Ok(Ok(Some(response))) => Ok(response),
        Ok(_) => Err(Unanswered::Died),
    }
}
