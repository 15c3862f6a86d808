//! `tshs-space-server`: serves the mounted `/spacedata` tree over HTTP (see
//! `tshs::space_server`). Parses, then hands over; errors print as one line.

use clap::Parser;

fn main() {
    tshs::logging::init();
    let cfg = tshs::space_server::Config::parse();
    if let Err(e) = tshs::space_server::run(cfg) {
        eprintln!("tshs-space-server: error: {e:#}");
        std::process::exit(1);
    }
}
