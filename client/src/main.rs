//! `postern`: parses the command line and wires the library's pieces
//! together. See `lib.rs` for the layout.
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::num::NonZeroUsize;
use std::process::ExitCode;

use postern::kdf;
use postern_client::args::{self, Command, TriggerArgs};
use postern_client::fleet::{self, Fleet, Tally};
use postern_client::keys::{self, SecretError, SHORT_PASSPHRASE};
use postern_client::outcome::exit;
use postern_client::output;
use postern_client::plan::{self, Plan, PlanError};

fn main() -> ExitCode {
    let command = match args::parse(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("postern: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let code = match command {
        Command::Help => print(args::HELP),
        Command::Version => print(&format!("postern {}\n", env!("CARGO_PKG_VERSION"))),
        Command::Keygen => secret_out(keys::generate()),
        Command::KeyDerive {
            master,
            host,
            action,
        } => secret_out(
            keys::load_key_file(&master).map(|m| kdf::key_from_master(&m, &host, &action)),
        ),
        Command::KeyFromPassphrase { host, action } => secret_out(from_passphrase(&host, &action)),
        Command::Trigger(t) => trigger(&t, None),
        Command::Close { gate, args } => trigger(&args, Some(&gate)),
        Command::Complete(a) => match postern_client::complete::run(&a) {
            Ok(words) => print(&words.iter().map(|w| format!("{w}\n")).collect::<String>()),
            Err(e) => {
                eprintln!("postern: {e}");
                exit::USAGE
            }
        },
    };
    ExitCode::from(code)
}

/// Writes to stdout; a closed stdout is a local error.
fn print(text: &str) -> u8 {
    print_parts(&[text])
}

fn print_parts(parts: &[&str]) -> u8 {
    let mut out = std::io::stdout().lock();
    let written = parts
        .iter()
        .try_for_each(|p| out.write_all(p.as_bytes()))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("postern: cannot write output: {e}");
            exit::LOCAL
        }
    }
}

/// Prints a key (keygen and key derivation only: printing it is the point).
/// The newline is written separately so the key text is never copied into
/// a larger buffer.
fn secret_out(key: Result<postern::secret::Key, SecretError>) -> u8 {
    match key {
        Ok(k) => print_parts(&[&k.to_base64(), "\n"]),
        Err(e) => {
            eprintln!("postern: {e}");
            exit::LOCAL
        }
    }
}

fn from_passphrase(host: &str, action: &str) -> Result<postern::secret::Key, SecretError> {
    let pass = keys::prompt_passphrase(&format!("{host} {action}"), true)?;
    if pass.as_bytes().len() < SHORT_PASSPHRASE {
        eprintln!(
            "postern: warning: passphrases under {SHORT_PASSPHRASE} characters can be guessed offline from a recorded exchange"
        );
    }
    Ok(kdf::key_from_passphrase(pass.as_bytes(), host, action))
}

/// Runs a group with as many slots as `--parallel` asks and the open-file
/// limit allows, with a live progress line when standard error is a
/// terminal.
fn run_group<'j>(
    name: &str,
    jobs: &'j [postern_client::plan::Job],
    parallel: NonZeroUsize,
) -> Vec<(
    &'j postern_client::plan::Job,
    postern_client::outcome::Report,
)> {
    let wanted = parallel.get().min(jobs.len()).max(1);
    let limit = fleet::descriptor_budget(wanted);
    if limit.slots < wanted {
        eprintln!(
            "postern: warning: the open-file limit (soft {}, hard {}) leaves room for {} connections at once, not {wanted}; the other hosts wait for a free slot, so hanging hosts can cost more than one timeout; raise the hard limit (ulimit -Hn, systemd LimitNOFILE=, limits.conf) to at least {}",
            limit.soft,
            limit.hard,
            limit.slots,
            wanted as u64 + fleet::RESERVED_DESCRIPTORS
        );
    }
    let slots = NonZeroUsize::new(wanted.min(limit.slots)).unwrap_or(NonZeroUsize::MIN);
    let fleet = Fleet::new(slots);
    if !std::io::stderr().is_terminal() {
        return fleet.run(jobs, None);
    }
    let mut shown = false;
    let mut observe = |t: &Tally<'_>| {
        eprint!("\r\x1b[K{}", output::progress_line(name, t));
        shown = true;
    };
    let rows = fleet.run(jobs, Some(&mut observe));
    if shown {
        // Leave the terminal as it was before the progress line.
        eprint!("\r\x1b[K");
    }
    rows
}

/// Runs a trigger, or with `closing` (the gate's name) `postern close`,
/// which differs only in its words and in that an opened gate is a
/// failure ([`postern_client::outcome::Outcome::close_exit_code`]).
fn trigger(args: &TriggerArgs, closing: Option<&str>) -> u8 {
    let close = closing.is_some();
    let plan = match plan::plan(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("postern: {e}");
            return match e {
                PlanError::Usage(_) => exit::USAGE,
                PlanError::Inventory(_) | PlanError::Secret(_) => exit::LOCAL,
            };
        }
    };
    match plan {
        Plan::One(job) => {
            let name = match closing {
                Some(gate) => gate.to_owned(),
                None => job
                    .action
                    .clone()
                    .unwrap_or_else(|| "the action".to_owned()),
            };
            let verb = if closing.is_some() { "close" } else { "start" };
            let report = fleet::run_waiting(&job, Some(format!("{verb} {name}")));
            let text = if args.json {
                output::json_report(&job, &report, close)
            } else {
                output::human_line(&job.label, Some(&name), &report.outcome)
            };
            let printed = print(&format!("{text}\n"));
            report.outcome.code_for(close).max(printed)
        }
        Plan::Group {
            name,
            jobs,
            parallel,
        } => {
            let rows = run_group(&name, &jobs, parallel);
            let code = rows
                .iter()
                .map(|(_, r)| r.outcome.code_for(close))
                .max()
                .unwrap_or(exit::OK);
            let text = if args.json {
                let mut s: String = rows
                    .iter()
                    .map(|(j, r)| output::json_report(j, r, close) + "\n")
                    .collect();
                s.push_str(&output::json_summary(&name, &rows, code, close));
                s.push('\n');
                s
            } else {
                output::table(&rows, close)
            };
            code.max(print(&text))
        }
    }
}
