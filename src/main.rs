use std::process::ExitCode;

mod cli;

use clap::Parser;
use cli::{Action, Cli};
use draw64::{App, lifecycle, telemetry};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // Both the server and the load tool hold thousands of sockets.
    lifecycle::raise_fd_limit();
    let config = match Cli::parse().into_action() {
        Action::Serve(config) => config,
        Action::Load(scenario) => return draw64_load::main(scenario).await,
        Action::Release(release) => return draw64_release::main(release).await,
    };
    let signals = match lifecycle::Signals::install() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("draw64: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = match telemetry::init(&config.telemetry) {
        Ok(telemetry) => std::sync::Arc::new(telemetry),
        Err(e) => {
            eprintln!("draw64: {e}");
            return ExitCode::from(2);
        }
    };
    let app = match App::build(&config, Some(&telemetry)).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let code = match app.run(signals.shutdown()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    };
    // Flushing blocks on the exporters' tasks: do it off the async workers.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}
