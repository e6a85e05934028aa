//! The fake Kubernetes API + Prow deck of the tests, as a process, for the
//! demo and for trying the reporter by hand.
//!
//! ```text
//! cargo run --example fake_ci -- --listen 127.0.0.1:0 \
//!     --scenario tests/fixtures/demo/scenario.json --kubeconfig-out /tmp/fake-kubeconfig
//! ```
//!
//! Prints `FAKE_CI_URL=http://127.0.0.1:PORT` once serving (the deck base for
//! `--prow` and the API server of the kubeconfig written to
//! `--kubeconfig-out`), then serves until killed. The scenario file format is
//! documented on `CompactScenario` in `tests/support/fake_ci.rs`.

#[path = "../tests/support/fake_ci.rs"]
mod fake_ci;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use fake_ci::{CompactScenario, DEFAULT_TOKEN, FakeCi};

struct Args {
    listen: SocketAddr,
    scenario: Option<PathBuf>,
    kubeconfig_out: Option<PathBuf>,
}

const USAGE: &str = "usage: fake_ci [--listen ADDR] [--scenario FILE] [--kubeconfig-out FILE]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:0".parse().expect("literal address parses"),
        scenario: None,
        kubeconfig_out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.clone(), None),
        };
        if name == "-h" || name == "--help" {
            return Err(USAGE.to_string());
        }
        let value = match inline.or_else(|| it.next()) {
            Some(v) => v,
            None => return Err(format!("{name} needs a value\n{USAGE}")),
        };
        match name.as_str() {
            "--listen" => {
                args.listen = value
                    .parse()
                    .map_err(|e| format!("--listen {value}: {e}"))?
            }
            "--scenario" => args.scenario = Some(value.into()),
            "--kubeconfig-out" => args.kubeconfig_out = Some(value.into()),
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let (token, scenario) = match &args.scenario {
        None => (DEFAULT_TOKEN.to_string(), Default::default()),
        Some(path) => {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("reading scenario {}: {e}", path.display());
                    return std::process::ExitCode::FAILURE;
                }
            };
            match CompactScenario::parse(&text) {
                Ok(s) => (
                    s.token.clone().unwrap_or_else(|| DEFAULT_TOKEN.to_string()),
                    s.into_scenario(),
                ),
                Err(e) => {
                    eprintln!("scenario {}: {e}", path.display());
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
    };
    let ci = match FakeCi::start_with(args.listen, &token, scenario).await {
        Ok(ci) => ci,
        Err(e) => {
            eprintln!("listening on {}: {e}", args.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Some(path) = &args.kubeconfig_out
        && let Err(e) = ci.write_kubeconfig(path)
    {
        eprintln!("writing kubeconfig {}: {e}", path.display());
        return std::process::ExitCode::FAILURE;
    }
    println!("FAKE_CI_URL={}", ci.url());
    let _ = std::io::stdout().flush();
    let _ = tokio::signal::ctrl_c().await;
    std::process::ExitCode::SUCCESS
}
