//! The binary: parse the command line, build the configuration, set up
//! logging, run. Everything else lives in the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use vsphere_ci_session_metrics::app::{self, Mode};
use vsphere_ci_session_metrics::cli::{Cli, Command, GroupBy, LogFormat, SessionsArgs};
use vsphere_ci_session_metrics::config::Config;
use vsphere_ci_session_metrics::oncall::{self, Terminal};
use vsphere_ci_session_metrics::report;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A bad setting is one line and exit 2, as clap does for a bad flag.
    let mut config = match Config::build(cli.command.flags()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // `sessions` prints a table: only warnings go to stderr beside it
    // unless a level is asked for on the command line or environment, and
    // a failed source is its one `error:` line, not a log line as well.
    let table =
        matches!(cli.command, Command::Sessions(_)) && cli.command.flags().log_level.is_none();
    if table {
        config.log_level = "warn".into();
    }
    init_logging(&config.log_level, config.log_format, table);

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
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Start(_) => app::run(config, Mode::Start, shutdown_signal()).await,
            Command::Once(_) => app::run(config, Mode::Once, shutdown_signal()).await,
            Command::Sessions(args) => {
                oncall::sessions(config, report_options(&args), shutdown_signal()).await
            }
            Command::Reap(args) => {
                oncall::reap(config, args.apply, Terminal::detect(), shutdown_signal()).await
            }
        }
    });
    match result {
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

/// What `sessions` prints, from its flags and the terminal.
fn report_options(args: &SessionsArgs) -> report::Options {
    let terminal = Terminal::detect();
    let view = match (args.orphaned, args.by) {
        (true, _) => report::View::Orphaned,
        (false, GroupBy::Job) => report::View::Jobs,
        (false, GroupBy::User) => report::View::Users,
    };
    let pattern = |p: &Option<String>| p.as_deref().map(report::Filters::pattern);
    report::Options {
        view,
        output: args.output,
        filters: report::Filters {
            vcenter: pattern(&args.vcenter),
            user: pattern(&args.user),
            agent: pattern(&args.agent),
        },
        width: terminal.width,
        colour: terminal.colour,
    }
}

/// `--log-level` applies to this program; libraries log warnings and above,
/// unless `RUST_LOG` says otherwise.
fn init_logging(level: &str, format: LogFormat, quiet_cycle: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let mut directives = format!(
            "warn,vsphere_ci_session_metrics={}",
            level.to_ascii_lowercase()
        );
        if quiet_cycle {
            directives.push_str(",vsphere_ci_session_metrics::cycle=off");
        }
        EnvFilter::new(directives)
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
