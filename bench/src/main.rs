//! `bench`: every figure of the plugin boundary next to its baseline, in one run.
//!
//! ```text
//! cargo run --release -p bench -- all           # the full table (minutes)
//! cargo run --release -p bench -- all --quick   # tiny sizes: checks that it works, no timing
//! cargo run --release -p bench -- worker        # the worker's figures alone
//! cargo run --release -p bench -- amqp          # the worker on RabbitMQ alone
//! cargo run --release -p bench -- log           # the log path alone (throughput, start-up)
//! cargo run --release -p bench -- probe         # the load-time probe alone (cache hit, miss)
//! cargo run --release -p bench -- isolate       # out-of-process plugins beside the floor
//! ```
//!
//! Each timed figure is the median of several runs. The baselines run in the same process
//! (or, for whole-process figures, the same way as ours) right after ours.

mod amqp;
mod artifacts;
mod figures;
mod inflight;
mod isolation;
mod measure;
mod table;
mod worker;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    match args.first().map(String::as_str) {
        Some("all") => {
            let rows = figures::all(quick);
            print!("{}", table::render(&rows));
            ExitCode::SUCCESS
        }
        Some("worker") => {
            print!("{}", table::render(&figures::worker(quick)));
            ExitCode::SUCCESS
        }
        Some("log") => {
            print!("{}", table::render(&figures::log(quick)));
            ExitCode::SUCCESS
        }
        Some("isolate") => {
            print!("{}", table::render(&figures::isolate(quick)));
            ExitCode::SUCCESS
        }
        Some("probe") => {
            print!("{}", table::render(&figures::probe_only(quick)));
            ExitCode::SUCCESS
        }
        Some("amqp") => {
            print!("{}", table::render(&figures::amqp(quick)));
            ExitCode::SUCCESS
        }
        // Helpers the figures run as separate processes, for a clean RSS and thread count.
        Some("child") => figures::child(&args[1..]),
        _ => {
            eprintln!("usage: bench all|worker|amqp|log|probe|isolate [--quick]");
            ExitCode::from(64)
        }
    }
}
