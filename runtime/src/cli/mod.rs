//! The `fnctl` command line: `serve` runs a node; the other commands talk to a node's admin API.

/// `println!` for the client commands' output: when stdout is closed early (`fnctl ls | head -1`)
/// the process ends quietly with status 0, as Unix tools do, instead of panicking.
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(b"\n")
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}

mod client;
mod commands;
mod serve;

/// Writes `bytes` to stdout (see `outln!`): a closed stdout ends the process with status 0,
/// any other failure to write with an error and status 1.
pub(crate) fn write_stdout(bytes: &[u8]) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {error}");
        std::process::exit(1);
    }
}

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// The data directory used when neither `--data` nor `FLINT_DATA` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "flint-data";

/// fnctl: run and manage Flint, serverless WebAssembly functions with a pooled GPU.
#[derive(Debug, Parser)]
#[command(name = "fnctl", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: functions on --listen, the admin API on --admin.
    Serve(serve::ServeArgs),
    /// Deploy a component (a new version if NAME exists).
    Deploy(commands::DeployArgs),
    /// List deployed functions.
    Ls(commands::ListArgs),
    /// Show one function.
    Show(commands::NameArgs),
    /// List a function's versions.
    Versions(commands::NameArgs),
    /// Remove a function and all its versions.
    Rm(commands::NameArgs),
    /// Switch a function back to its previous version (or --to VERSION).
    Rollback(commands::RollbackArgs),
    /// Invoke a function through the admin API and print its answer.
    Invoke(commands::InvokeArgs),
    /// Show the node's GPU devices (or CPU backend) and their memory use.
    Gpu(commands::ListArgs),
    /// Show a function's captured stdout/stderr (`-f` to follow).
    Logs(commands::LogsArgs),
    /// Sum the usage log per function (billing export).
    Usage(commands::UsageArgs),
    /// Invocations by outcome, latency percentiles, cold starts and GPU use per function.
    Stats(commands::UsageArgs),
    /// Register, list and remove models.
    #[command(subcommand)]
    Model(commands::ModelCommand),
}

/// How a client command finds the node and its token.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The admin API address [default: from DATA/node.json, else http://127.0.0.1:8081].
    #[arg(long, env = "FNCTL_SERVER")]
    pub server: Option<String>,
    /// The admin token [default: read from DATA/admin-token].
    #[arg(long, env = "FNCTL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The node's data directory, to find its token and address on this machine.
    #[arg(long = "data", visible_alias = "data-dir", env = "FLINT_DATA", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Print JSON instead of tables and messages.
    #[arg(long)]
    pub json: bool,
}

/// [`ClientArgs`] for `fnctl invoke`, where `--data` is the request body (as in curl), so the
/// data directory is only `--data-dir`.
#[derive(Debug, Clone, Args)]
pub struct InvokeClientArgs {
    /// The admin API address [default: from DATA/node.json, else http://127.0.0.1:8081].
    #[arg(long, env = "FNCTL_SERVER")]
    pub server: Option<String>,
    /// The admin token [default: read from DATA/admin-token].
    #[arg(long, env = "FNCTL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The node's data directory, to find its token and address on this machine.
    #[arg(long = "data-dir", env = "FLINT_DATA", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Print the status, invocation id and body as JSON.
    #[arg(long)]
    pub json: bool,
}

impl From<InvokeClientArgs> for ClientArgs {
    fn from(args: InvokeClientArgs) -> Self {
        ClientArgs {
            server: args.server,
            token: args.token,
            data_dir: args.data_dir,
            json: args.json,
        }
    }
}

/// Runs `fnctl` with the process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Deploy(args) => commands::deploy(args),
        Command::Ls(args) => commands::list(args),
        Command::Show(args) => commands::show(args),
        Command::Versions(args) => commands::versions(args),
        Command::Rm(args) => commands::remove(args),
        Command::Rollback(args) => commands::rollback(args),
        Command::Invoke(args) => commands::invoke(args),
        Command::Gpu(args) => commands::gpu(args),
        Command::Model(command) => commands::model(command),
        Command::Usage(args) => commands::usage(args),
        Command::Logs(args) => commands::logs(args),
        Command::Stats(args) => commands::stats(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
