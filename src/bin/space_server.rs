//! `tshs-space-server`: serves the mounted `/spacedata` tree over HTTP (see
//! `tshs::space_server`); `tshs-space-server sign …` prints a signed URL.
//! Parses, then hands over; errors print as one line.

use clap::Parser;

fn main() {
    tshs::logging::init();
    let result = if std::env::args_os().nth(1).is_some_and(|a| a == "sign") {
        let cfg = tshs::space_server::SignConfig::parse_from(std::env::args_os().skip(1));
        tshs::space_server::signed_url(&cfg).map(|url| println!("{url}"))
    } else {
        tshs::space_server::run(tshs::space_server::Config::parse())
    };
    if let Err(e) = result {
        eprintln!("tshs-space-server: error: {e:#}");
        std::process::exit(1);
    }
}
