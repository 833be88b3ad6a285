use clap::Parser;
use sluice_capture::config::Config;
use tokio::net::TcpListener;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    // Before any thread exists: this sets environment variables.
    sluice_connect::files::load_secret_files()?;
    let config = Config::parse();
    sluice_common::logging::init(config.log_format);
    sluice_connect::install_tls_provider();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(async {
        let listener = TcpListener::bind(config.address).await?;
        sluice_capture::run(config, listener, sluice_common::shutdown::signal()).await
    })
}
