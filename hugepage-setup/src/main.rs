//! The `hugepage-setup` command: parses the command line and runs it against
//! the live kernel. All logic lives in the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

use hugepage_setup::mount::{LiveMounter, Mounter, RefusingMounter};
use hugepage_setup::sysfs::LiveKernel;
use hugepage_setup::{run, Cli, Host, EXIT_ERROR};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Against a redirected tree a real mount would change the host and
    // still not show in the tree's mount table: refuse it.
    let mounter: &dyn Mounter = if cli.redirected() {
        &RefusingMounter
    } else {
        &LiveMounter
    };
    let host = Host {
        kernel: &LiveKernel,
        mounter,
        euid: nix::unistd::geteuid().as_raw(),
    };
    let mut stdout = std::io::stdout().lock();
    match run(&cli, &host, &mut stdout) {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(e) => {
            eprintln!("hugepage-setup: error: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
