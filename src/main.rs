//! `tshs`: parse the command line, then hand over to the core. Errors print
//! as one readable chain and a non-zero exit.

fn main() {
    tshs::logging::init();
    let cli = match tshs::cli::parse(std::env::args().collect()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Err(e) = tshs::cli::run(cli) {
        eprintln!("tshs: error: {e:#}");
        std::process::exit(1);
    }
}
