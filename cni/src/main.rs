//! The `fastpath-cni` executable: the process edge of [`fastpath_cni::plugin`].
//! It reads the real environment and stdin, prints the outcome and exits
//! with its code; all logic lives in the library.

#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};

fn main() {
    let stdin = std::io::stdin();
    let is_terminal = stdin.is_terminal();
    let env = |name: &str| std::env::var(name).ok();
    let outcome = fastpath_cni::plugin::run(&env, &mut stdin.lock(), is_terminal);

    let mut err = std::io::stderr().lock();
    for line in &outcome.stderr {
        let _ = writeln!(err, "fastpath-cni: {line}");
    }
    if let Some(doc) = &outcome.stdout {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{doc}").and_then(|()| out.flush()).is_err() {
            std::process::exit(1);
        }
    }
    std::process::exit(outcome.exit_code);
}
