//! The `timelapse-events` binary: parse the command line, run it, map errors to exit codes.

use std::process::ExitCode;

mod cli;

use cli::{Command, ServeArgs};
use timelapse_events::{Error, Hub};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    // Exits 2 with a usage message on bad flags; a bad config file is an error here.
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {}", e.chain());
            return ExitCode::from(2);
        }
    };
    let serving = matches!(cli.command, Command::Serve(_));
    let result = match cli.command {
        Command::Serve(args) => serve(&args),
        other => cli::run(other),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.chain());
            if let Some(hint) = cli::hint(&e) {
                eprintln!("hint: {hint}");
            }
            // A database another hub serves, or one this user may not write, is a bad
            // setup for `serve`, like a bad setting: no restart fixes it.
            if matches!(e, Error::Config { .. }) || (serving && e.is_setup()) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Runs the hub until SIGINT or SIGTERM, then shuts it down in order.
fn serve(args: &ServeArgs) -> Result<(), Error> {
    let config = args.config()?;
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    // The handler only asks for the stop; the shutdown runs here, on the main thread.
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })
    .map_err(|e| Error::Io {
        op: "install the signal handler",
        source: std::io::Error::other(e),
    })?;
    let mut hub = Hub::start(config)?;
    // READY=1 only now: the listener is bound and the database open.
    hub.notify_systemd()?;
    let failures = hub.failures();
    crossbeam_channel::select! {
        recv(stop_rx) -> _ => {
            log::info!("signal received: shutting down");
            hub.shutdown()
        }
        recv(failures) -> what => {
            let reason = what.unwrap_or_else(|_| "a hub thread ended".to_owned());
            log::error!("shutting down: {reason}");
            let _ = hub.shutdown();
            Err(Error::Thread { name: "hub".into(), reason })
        }
    }
}
