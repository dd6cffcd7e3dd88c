//! The `ratethrottle` binary: parse the command line, run the command, and
//! turn any error into a message on stderr and a non-zero exit code.

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    ratethrottle::cli::main()
}
