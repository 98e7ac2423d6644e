//! `vringctl`: the command line of vringswitch, a client of the daemon's HTTP API.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vringswitch_control::client::{ApiClient, ClientError};
use vringswitch_control::ctl;
use vringswitch_metrics::Snapshot;

/// Control and inspect a running vringswitch.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address of the daemon's API.
    #[arg(
        long,
        global = true,
        value_name = "ADDR",
        env = "VRINGSWITCH_API",
        default_value = "127.0.0.1:9180"
    )]
    api: SocketAddr,
    /// Bearer token, when the daemon requires one.
    #[arg(long, global = true, value_name = "TOKEN", env = "VRINGSWITCH_TOKEN")]
    token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Per-core load (busy %, cycles per packet, bursts) and per-port counters.
    Stats {
        /// Show what happened over this many seconds instead of the totals since start.
        #[arg(long, short, value_name = "SECS", value_parser = parse_interval)]
        interval: Option<f64>,
    },
}

/// A number of seconds, above 0 and at most a day.
fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

/// Exit codes: 0 success, 1 the API refused or failed, 2 bad usage (clap), 3 unreachable.
fn exit_code(e: &ClientError) -> u8 {
    match e {
        ClientError::Connect { .. } | ClientError::Http { .. } => 3,
        ClientError::Api { .. } | ClientError::Decode { .. } => 1,
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vringctl: error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vringctl: error: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

async fn run(args: Args) -> Result<String, ClientError> {
    let api = ApiClient {
        addr: args.api,
        token: args.token,
    };
    match args.command {
        Command::Stats { interval } => {
            let first: Snapshot = api.get("/v1/stats").await?;
            let (s, scope) = match interval {
                Some(secs) => {
                    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                    let second: Snapshot = api.get("/v1/stats").await?;
                    (ctl::difference(&second, &first), format!("last {secs} s"))
                }
                None => (first, "since start".to_owned()),
            };
            if args.json {
                Ok(serde_json::to_string_pretty(&s).expect("a snapshot serialises") + "\n")
            } else {
                Ok(ctl::stats_tables(&s, &scope))
            }
        }
    }
}
