//! `posternd`: parses the command line and hands over to `daemon`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: posternd --config FILE [--check]
       posternd init [--dir DIR] [--listen IP:PORT] [--action NAME] [--state-dir DIR]
       posternd --version | --help

  --config FILE   the TOML config (see the README's config reference)
  --check         validate FILE, print every problem, exit 0 (valid) or 1
  --version       print the version
  --help          print this help
  init            write a key and a config for a first action (posternd init --help)

posternd runs in the foreground and never daemonizes; run it under
systemd (conf/posternd.service) or another supervisor.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--network-child") {
        return code(postern::monitor::daemon::network_child(&args[1..]));
    }
    if args.first().map(String::as_str) == Some("init") {
        if matches!(args.get(1).map(String::as_str), Some("--help" | "-h")) {
            println!("{}", postern::monitor::init::USAGE);
            return ExitCode::SUCCESS;
        }
        return ExitCode::from(postern::monitor::init::main(&args[1..]));
    }
    let mut config: Option<PathBuf> = None;
    let mut check = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" | "-c" => match it.next() {
                Some(p) => config = Some(PathBuf::from(p)),
                None => return usage("--config needs a FILE"),
            },
            "--check" => check = true,
            "--version" | "-V" => {
                println!("posternd {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    let Some(path) = config else {
        return usage("--config FILE is required");
    };
    if check {
        return if postern::monitor::daemon::check(&path) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    match postern::monitor::daemon::run(&path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("posternd: {e}");
            ExitCode::from(1)
        }
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("posternd: {msg}\n{USAGE}");
    ExitCode::from(64)
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c).unwrap_or(1))
}
