//! The interactive shell: `tshs` with no command. Every command is available
//! with the same words as on the command line; `help`, `quit` or Ctrl-D.

use anyhow::Result;
use clap::{CommandFactory, Parser};
use rustyline::error::ReadlineError;

use super::progress::Display;
use super::runner::Runner;
use super::stop::Stop;
use super::{Cli, Command, connect, execute};

pub fn run(cli: &Cli) -> Result<()> {
    let cluster = connect(cli)?;
    // The shell is an access point like any other process (list-access-points).
    let _ap = cluster
        .require_admin_node()
        .and_then(|_| cluster.register("tshs shell", |_| {}));
    let mut editor = rustyline::DefaultEditor::new()?;
    let history = std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".tshs_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    loop {
        let line = match editor.readline("tshs> ") {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let line = line.trim().trim_end_matches(";;").trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        if matches!(line, "quit" | "exit" | "q") {
            break;
        }
        let Some(words) = shlex::split(line) else {
            eprintln!("error: unbalanced quotes");
            continue;
        };
        if words[0] == "help" && words.len() == 1 {
            println!("{}", Cli::command().render_long_help());
            continue;
        }
        match Cli::try_parse_from(std::iter::once("tshs".to_string()).chain(words)) {
            Ok(Cli {
                command: Some(Command::Mount(_)),
                ..
            }) => {
                eprintln!("error: mount cannot run inside the shell")
            }
            Ok(Cli {
                command: Some(cmd), ..
            }) => {
                // Maintenance tasks run with the shell's options; the time
                // limit counts from this command.
                let runner = Runner::new(cli, Stop::new(), false, Display::detect());
                let result = cmd
                    .check()
                    .and_then(|()| runner.check(&cluster))
                    .and_then(|()| execute(&cluster, &runner, &cmd, &mut std::io::stdout()));
                if let Err(e) = result {
                    eprintln!("error: {e:#}");
                }
            }
            Ok(_) => {}
            Err(e) => {
                let _ = e.print();
            }
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}
