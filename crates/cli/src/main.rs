//! `tollgate`: the command line. Each subcommand's arguments and logic live
//! in a library crate; this file only parses flags and, for `serve`, passes
//! ctrl-c/SIGTERM as the shutdown signal.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate_server::cli::{CheckArgs, ServeArgs, run_check, run_serve};

/// Distributed rate limiting.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP JSON API and Envoy RLS gRPC (no arguments: a demo on
    /// the memory store, HTTP 127.0.0.1:8080, gRPC 127.0.0.1:8081).
    Serve(ServeArgs),
    /// Validate a configuration file; exits non-zero with the errors.
    Check(CheckArgs),
    /// Drive load at a target (the library, any HTTP endpoint, the JSON
    /// API, Envoy RLS gRPC); report throughput, latency percentiles and
    /// over-admission.
    Bench(tollgate_tools::bench::BenchArgs),
    /// Run the six algorithms over a traffic pattern (exactly, on a manual
    /// clock); print a table and plot offered vs admitted.
    Simulate(tollgate_tools::simulate::SimulateArgs),
    /// Set, read, list and delete per-key overrides on a running server
    /// (the admin token from TOLLGATE_ADMIN_TOKEN).
    Override(tollgate_tools::overrides::OverrideArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("tollgate: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run_serve(args, tollgate_server::shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tollgate serve: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check(args) => match run_check(&args) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Bench(args) => {
            let result = tokio::runtime::Runtime::new()
                .map_err(|e| e.to_string())
                .and_then(|rt| {
                    rt.block_on(tollgate_tools::bench::run(&args))
                        .map_err(|e| e.to_string())
                });
            match result {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tollgate bench: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Simulate(args) => match tollgate_tools::simulate::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tollgate simulate: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Override(args) => {
            let result = tokio::runtime::Runtime::new()
                .map_err(|e| e.to_string())
                .and_then(|rt| rt.block_on(tollgate_tools::overrides::run(args)));
            match result {
                Ok(output) => {
                    if !output.is_empty() {
                        println!("{output}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tollgate override: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
