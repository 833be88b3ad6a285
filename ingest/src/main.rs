use sluice_ingest::commands::dlq::{self, Selection};
use sluice_ingest::commands::{self, plugins, teams};
use sluice_ingest::config::{Cli, Command, DlqCommand, PluginsCommand, TeamsCommand};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    // Before any thread exists: this sets environment variables.
    if let Err(e) = sluice_connect::files::load_secret_files() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let cli = Cli::parse_args();
    sluice_common::logging::init(cli.config.log_format);
    sluice_connect::install_tls_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(run(cli));
}

async fn run(cli: Cli) {
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => sluice_ingest::run(cli.config, sluice_common::shutdown::signal()).await,
        Command::Migrate => commands::migrate(&cli.config).await,
        Command::Teams { command: TeamsCommand::Create { name } } => teams::create(&cli.config, &name).await,
        Command::Teams { command: TeamsCommand::List } => teams::list(&cli.config).await,
        Command::Teams { command: configure @ TeamsCommand::Configure { .. } } => {
            teams::configure(&cli.config, configure).await
        }
        Command::Dlq { command: DlqCommand::List { since, team, exports, plugin_config } } => {
            match selection(since, team, exports, plugin_config) {
                Ok(s) => dlq::list(&cli.config, &s).await,
                Err(e) => Err(e),
            }
        }
        Command::Plugins { command } => plugin_command(&cli.config, command).await,
        Command::PluginWorker => sluice_plugin_runtime::serve_worker().await.map_err(anyhow::Error::from),
        Command::Dlq { command: DlqCommand::Replay { since, team, exports, plugin_config, to, dry_run } } => {
            match selection(since, team, exports, plugin_config) {
                Ok(s) => dlq::replay(&cli.config, &s, to.as_deref(), dry_run).await,
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn plugin_command(config: &sluice_ingest::config::Config, command: PluginsCommand) -> anyhow::Result<()> {
    match command {
        PluginsCommand::Install { dir, team, config: settings, order } => {
            plugins::install(config, &dir, team, &settings, order).await
        }
        PluginsCommand::List { team } => plugins::list(config, team).await,
        PluginsCommand::Enable { id } => plugins::set_enabled(config, id, true).await,
        PluginsCommand::Disable { id } => plugins::set_enabled(config, id, false).await,
        PluginsCommand::Configure { id, config: settings } => plugins::configure(config, id, &settings).await,
        PluginsCommand::Logs { id, limit } => plugins::logs(config, id, limit).await,
        PluginsCommand::Attach { id, key, file, content_type, max_bytes } => {
            plugins::attach(config, id, &key, &file, content_type.as_deref(), max_bytes).await
        }
        PluginsCommand::Detach { id, key } => plugins::detach(config, id, &key).await,
        PluginsCommand::Jobs { plugin_config, limit } => plugins::jobs(config, plugin_config, limit).await,
        PluginsCommand::RetryJob { job } => plugins::retry_job(config, job).await,
    }
}

fn selection(
    since: Option<String>,
    team: Option<i64>,
    exports: bool,
    plugin_config: Option<i64>,
) -> anyhow::Result<Selection> {
    Ok(Selection { since: since.as_deref().map(dlq::parse_since).transpose()?, team, exports, plugin_config })
}
