//! `tshs`: parse the command line, then hand over to the core. Errors print
//! as one readable chain and a non-zero exit.

use clap::error::ErrorKind;

fn main() {
    tshs::logging::init();
    let cli = match tshs::cli::parse(std::env::args().collect()) {
        Ok(cli) => cli,
        // A bad option value is one line, like every other error; other
        // usage errors keep clap's usage text.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::InvalidValue | ErrorKind::ValueValidation
            ) =>
        {
            eprintln!("tshs: error: {}", tshs::cli::one_line(&e));
            std::process::exit(2);
        }
        Err(e) => e.exit(),
    };
    if let Err(e) = tshs::cli::run(cli) {
        eprintln!("tshs: error: {e:#}");
        std::process::exit(1);
    }
}
