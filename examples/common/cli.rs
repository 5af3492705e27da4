//! What every example's `main` does with `run`'s result: an error becomes `error: ...` on
//! stderr and exit code 1. Included with `#[path]`.

use std::process::ExitCode;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Exit code 0 for `Ok`; for an error, prints `error: <e>` and returns 1.
pub fn exit(result: Result<(), BoxError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
