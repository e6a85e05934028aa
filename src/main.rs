//! The binary: parse the command line, build the configuration, set up
//! logging, run. Everything else lives in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use vsphere_ci_session_metrics::app::{self, Mode};
use vsphere_ci_session_metrics::cli::{Cli, Command, LogFormat};
use vsphere_ci_session_metrics::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mode = match cli.command {
        Command::Start(_) => Mode::Start,
        Command::Once(_) => Mode::Once,
    };
    // A bad setting is one line and exit 2, as clap does for a bad flag.
    let config = match Config::build(cli.command.flags()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.log_level, config.log_format);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(config, mode, shutdown_signal())) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code.clamp(1, 255) as u8),
        Err(e) => {
            // One line, as for a bad flag; logging may not even be readable yet.
            eprintln!("error: {e}");
            ExitCode::from(
                if matches!(e, vsphere_ci_session_metrics::Error::Config(_)) {
                    2
                } else {
                    1
                },
            )
        }
    }
}

/// `--log-level` applies to this program; libraries log warnings and above,
/// unless `RUST_LOG` says otherwise.
fn init_logging(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "warn,vsphere_ci_session_metrics={}",
            level.to_ascii_lowercase()
        ))
    });
    // Colours only on a terminal: logs collected from a pod or a file stay
    // plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
