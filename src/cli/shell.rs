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
        // A secret key typed here must not land in the history file.
        if !line.contains("add-s3-host") {
            let _ = editor.add_history_entry(line);
        }
        if matches!(line, "quit" | "exit" | "q") {
            break;
        }
        let Some(words) = reference_call(line).or_else(|| shlex::split(line)) else {
            eprintln!("tshs: error: unbalanced quotes");
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
                eprintln!("tshs: error: mount cannot run inside the shell")
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
                    eprintln!("tshs: error: {e:#}");
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

/// The restore commands as the reference writes them, `deactivate_space(3)`
/// or `list_spaces`, become the command line's words
/// (`deactivate-space 3`). None for anything else.
fn reference_call(line: &str) -> Option<Vec<String>> {
    let (name, args) = match line.split_once('(') {
        Some((name, rest)) => (name.trim(), rest.trim().strip_suffix(')')?),
        None => (line, ""),
    };
    if !name.contains('_') || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return None;
    }
    let mut words = vec![name.replace('_', "-")];
    words.extend(
        args.split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(String::from),
    );
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::reference_call;

    #[test]
    fn reference_syntax() {
        assert_eq!(
            reference_call("deactivate_space(3)"),
            Some(vec!["deactivate-space".into(), "3".into()])
        );
        assert_eq!(
            reference_call("list_spaces"),
            Some(vec!["list-spaces".into()])
        );
        assert_eq!(
            reference_call("reactivate_volume( 1 )"),
            Some(vec!["reactivate-volume".into(), "1".into()])
        );
        assert_eq!(reference_call("list-volumes"), None);
        assert_eq!(reference_call("deactivate_space(3"), None);
    }
}
