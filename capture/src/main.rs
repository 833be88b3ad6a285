use clap::Parser;
use sluice_capture::config::Config;
use sluice_capture::telemetry;
use tokio::net::TcpListener;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    // Before any thread exists: this sets environment variables.
    sluice_connect::files::load_secret_files()?;
    let config = Config::parse();
    telemetry::init_logging(config.log_format);
    sluice_connect::install_tls_provider();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
        let listener = TcpListener::bind(config.address).await?;
        sluice_capture::run(config, listener, shutdown_signal()).await
    })
}

/// SIGTERM (orchestrators) or SIGINT (a developer's Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
