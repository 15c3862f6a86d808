//! `tshs`: parse the command line, then hand over to the core. Errors print
//! as one readable chain and a non-zero exit.

use clap::error::ErrorKind;

fn main() {
    tshs::logging::init();
    let cli = match tshs::cli::parse(std::env::args().collect()) {
        Ok(cli) => cli,
        // A bad value is bad input like any other: one line, exit 1. Other
        // usage errors (unknown command or option) keep clap's usage text
        // and exit 2.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::InvalidValue | ErrorKind::ValueValidation
            ) =>
        {
            eprintln!("tshs: error: {}", tshs::cli::one_line(&e));
            std::process::exit(1);
        }
        Err(e) => e.exit(),
    };
    if let Err(e) = tshs::cli::run(cli) {
        eprintln!("tshs: error: {e:#}");
        std::process::exit(1);
    }
}
