//! posternd.toml(5) against the config parser: the page lists exactly the
//! keys `--check` accepts in each table, its literal defaults are the ones
//! in `config::defaults`, and its ranges are the ones `--check` enforces.
//! The page (docs/man/posternd.toml.5.scd) cannot drift from the code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use postern::config::{self, defaults};

const PAGE: &str = include_str!("../docs/man/posternd.toml.5.scd");
const KEY: &str = "9ddS8B9lhmscukPKRh+DDoqLEqE9WQWduYTE1YSQ6O8=";

/// One key entry of the page: `*key* _type_, default: *V*, range: *A* to *B*`.
#[derive(Debug, Clone)]
struct Entry {
    ty: String,
    /// The literal (bold) default, if the page gives one.
    default: Option<String>,
    range: Option<(String, String)>,
    line: usize,
}

/// (table, key) -> entry, in page order of tables.
fn page_entries() -> BTreeMap<(String, String), Entry> {
    let mut out = BTreeMap::new();
    let mut table = String::new();
    for (i, line) in PAGE.lines().enumerate() {
        if let Some(h) = line.strip_prefix("## ") {
            let name = h.split_whitespace().next().unwrap_or("");
            table = name.trim_matches(|c| c == '[' || c == ']').to_owned();
            continue;
        }
        if line.starts_with("# ") {
            table.clear();
            continue;
        }
        if table.is_empty() || !line.starts_with('*') {
            continue;
        }
        let Some((key, rest)) = line[1..].split_once("* _") else {
            continue;
        };
        let Some((ty, rest)) = rest.split_once('_') else {
            panic!("posternd.toml.5.scd:{}: no closing _ after the type", i + 1);
        };
        let mut default = None;
        let mut range = None;
        for part in rest.split(", ").map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(d) = part.strip_prefix("default: ") {
                if let Some(v) = d.strip_prefix('*').and_then(|d| d.strip_suffix('*')) {
                    default = Some(v.to_owned());
                }
            } else if let Some(r) = part.strip_prefix("range: ") {
                let (a, b) = r
                    .split_once(" to ")
                    .unwrap_or_else(|| panic!("posternd.toml.5.scd:{}: range A to B", i + 1));
                let strip = |s: &str| s.trim_matches('*').to_owned();
                range = Some((strip(a), strip(b)));
            }
        }
        let prev = out.insert(
            (table.clone(), key.to_owned()),
            Entry {
                ty: ty.to_owned(),
                default,
                range,
                line: i + 1,
            },
        );
        assert!(
            prev.is_none(),
            "posternd.toml.5.scd:{}: {table}.{key} twice",
            i + 1
        );
    }
    out
}

/// A valid config with `extra` lines added to `table` (the tables in the
/// order TOML needs them).
fn config_with(table: &str, extra: &str) -> String {
    let mut s = String::new();
    for t in ["daemon", "limits", "on_lockout"] {
        if t == table {
            s.push_str(&format!("[{t}]\n{extra}\n"));
            if extra.starts_with("syslog_facility ") {
                s.push_str("log = \"syslog\"\n");
            }
            if t == "on_lockout" && !extra.starts_with("run") {
                s.push_str("run = [\"/bin/true\"]\n");
            }
        }
    }
    s.push_str("[[listen]]\naddress = \"127.0.0.1:7001\"\n");
    if table == "listen" {
        s.push_str(extra);
        s.push('\n');
    }
    if table == "action.key" {
        // An action with one named key; a successor brings its window.
        s.push_str("[[action]]\nname = \"a\"\nrun = [\"/bin/true\"]\n[[action.key]]\n");
        let key = extra.split(' ').next().unwrap_or("");
        if key != "name" {
            s.push_str("name = \"op\"\n");
        }
        if !["key", "key_file"].contains(&key) {
            s.push_str(&format!("key = \"{KEY}\"\n"));
        }
        if ["next_key", "next_key_file"].contains(&key) {
            s.push_str("overlap_until = \"2026-12-15T00:00:00Z\"\n");
        }
        s.push_str(extra);
        s.push('\n');
        return s;
    }
    s.push_str(&format!("[[action]]\nname = \"a\"\nkey = \"{KEY}\"\n"));
    if table == "action" {
        s.push_str(extra);
        s.push('\n');
        // Keys that only a gate takes get a run/stop gate around them.
        let key = extra.split(' ').next().unwrap_or("");
        if ["extend", "max_open", "hold_while", "hold_interval"].contains(&key) {
            s.push_str("stop = [\"/bin/true\"]\nttl = \"30m\"\n");
        }
        if key == "hold_interval" {
            s.push_str("hold_while = [\"/bin/true\"]\n");
        }
        // A per-address gate opens and closes one address: {addr} in
        // run and stop, and so stop_all.
        if ["per_address", "max_addresses"].contains(&key) {
            s.push_str("run = [\"/bin/true\", \"{addr}\"]\nstop = [\"/bin/true\", \"{addr}\"]\nstop_all = [\"/bin/true\"]\nttl = \"30m\"\n");
            if key == "max_addresses" {
                s.push_str("per_address = true\n");
            }
            return s;
        }
    }
    if !(table == "action" && (extra.starts_with("run") || extra.starts_with("builtin"))) {
        s.push_str("run = [\"/bin/true\"]\n");
    }
    s
}

/// Every problem `--check` reports for `text`, as it prints them.
fn problems(text: &str) -> Vec<String> {
    match config::parse_str(text, Path::new("/etc/postern/posternd.toml")) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

/// How `--check` names a key of `table` in its messages.
fn key_path(table: &str, key: &str) -> String {
    match table {
        "listen" | "action" => format!("{table}[1].{key}"),
        "action.key" => format!("action[1].key[1].{key}"),
        _ => format!("{table}.{key}"),
    }
}

/// The keys `--check` accepts in `table`, from its unknown-key message.
fn accepted_keys(table: &str) -> BTreeSet<String> {
    let errs = problems(&config_with(table, "zz_not_a_key = 1"));
    let msg = errs
        .iter()
        .find(|e| e.contains("zz_not_a_key") && e.contains("(expected "))
        .unwrap_or_else(|| panic!("[{table}]: no unknown-key message in {errs:?}"));
    let list = msg.split("(expected ").nth(1).unwrap_or("");
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn duration(s: &str) -> Duration {
    let mut total = Duration::ZERO;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().unwrap_or_else(|_| panic!("duration {s:?}"));
        num.clear();
        let unit = match (c, chars.peek()) {
            ('m', Some('s')) => {
                chars.next();
                Duration::from_millis(1)
            }
            ('s', _) => Duration::from_secs(1),
            ('m', _) => Duration::from_secs(60),
            ('h', _) => Duration::from_secs(3600),
            ('d', _) => Duration::from_secs(86_400),
            _ => panic!("duration {s:?}: unit {c}"),
        };
        total += unit * u32::try_from(n).unwrap();
    }
    assert!(num.is_empty(), "duration {s:?} without a unit");
    total
}

/// A TOML value of the page's `ty` holding `v`.
fn toml_value(ty: &str, v: &str) -> String {
    match ty {
        "integer" | "bool" | "list of networks" => v.to_owned(),
        _ => format!("\"{v}\""),
    }
}

/// The literal defaults in `config::defaults`, rendered as the page writes
/// them (durations are compared as durations).
enum Want {
    Text(String),
    Dur(Duration),
}

fn code_defaults() -> BTreeMap<(String, String), Want> {
    use Want::{Dur, Text};
    let t = |s: &str| Text(s.to_owned());
    let n = |v: &dyn ToString| Text(v.to_string());
    let k = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    BTreeMap::from([
        (k("daemon", "user"), t(defaults::USER)),
        (k("daemon", "state_dir"), t(defaults::STATE_DIR)),
        (k("daemon", "log"), t(defaults::LOG)),
        (k("daemon", "syslog_facility"), t(defaults::SYSLOG_FACILITY)),
        (k("daemon", "stop_on_exit"), n(&defaults::STOP_ON_EXIT)),
        (k("daemon", "shutdown_grace"), Dur(defaults::SHUTDOWN_GRACE)),
        (
            k("limits", "handshake_timeout"),
            Dur(defaults::HANDSHAKE_TIMEOUT),
        ),
        (k("limits", "max_handshakes"), n(&defaults::MAX_HANDSHAKES)),
        (k("limits", "rate_burst"), n(&defaults::RATE_BURST)),
        (
            k("limits", "rate_per_minute"),
            n(&defaults::RATE_PER_MINUTE),
        ),
        (k("limits", "lockout_after"), n(&defaults::LOCKOUT_AFTER)),
        (
            k("limits", "lockout_duration"),
            Dur(defaults::LOCKOUT_DURATION),
        ),
        (k("limits", "lockout_table"), n(&defaults::LOCKOUT_TABLE)),
        (
            k("limits", "verify_per_second"),
            n(&defaults::VERIFY_PER_SECOND),
        ),
        (k("limits", "exempt"), t("[]")),
        (
            k("on_lockout", "timeout"),
            Dur(defaults::ON_LOCKOUT_TIMEOUT),
        ),
        (k("listen", "protocol"), t(defaults::PROTOCOL)),
        (k("action", "extend"), n(&defaults::EXTEND)),
        (k("action", "hold_interval"), Dur(defaults::HOLD_INTERVAL)),
        (k("action", "timeout"), Dur(defaults::ACTION_TIMEOUT)),
        (k("action", "cooldown"), Dur(defaults::COOLDOWN)),
        (
            k("action", "single_instance"),
            n(&defaults::SINGLE_INSTANCE),
        ),
        (k("action", "bind_source"), n(&defaults::BIND_SOURCE)),
        (k("action", "per_address"), n(&defaults::PER_ADDRESS)),
        (
            k("on_lockout", "networks"),
            n(&defaults::ON_LOCKOUT_NETWORKS),
        ),
        (k("action", "max_addresses"), n(&defaults::MAX_ADDRESSES)),
    ])
}

const TABLES: [&str; 6] = [
    "daemon",
    "limits",
    "on_lockout",
    "listen",
    "action",
    "action.key",
];

#[test]
fn the_page_lists_exactly_the_keys_check_accepts() {
    // Goal: no key missing from the page, none on it that --check refuses.
    let page = page_entries();
    for table in TABLES {
        let on_page: BTreeSet<String> = page
            .keys()
            .filter(|(t, _)| t == table)
            .map(|(_, k)| k.clone())
            .collect();
        assert_eq!(
            on_page,
            accepted_keys(table),
            "[{table}]: posternd.toml.5.scd (left) and --check (right) differ"
        );
    }
}

#[test]
fn the_literal_defaults_are_the_code_defaults() {
    // Goal: each bold default on the page is config::defaults' value, and the parser takes it.
    let page = page_entries();
    let code = code_defaults();
    for ((table, key), e) in &page {
        let Some(d) = &e.default else {
            assert!(
                !code.contains_key(&(table.clone(), key.clone())),
                "posternd.toml.5.scd:{}: {table}.{key} needs its literal default",
                e.line
            );
            continue;
        };
        let want = code.get(&(table.clone(), key.clone())).unwrap_or_else(|| {
            panic!(
                "posternd.toml.5.scd:{}: {table}.{key} default {d:?} is checked by nothing; add it to code_defaults()",
                e.line
            )
        });
        match want {
            Want::Text(w) => assert_eq!(d, w, "posternd.toml.5.scd:{}: {table}.{key}", e.line),
            Want::Dur(w) => assert_eq!(
                duration(d),
                *w,
                "posternd.toml.5.scd:{}: {table}.{key} default {d}",
                e.line
            ),
        }
        let text = config_with(table, &format!("{key} = {}", toml_value(&e.ty, d)));
        let errs = problems(&text);
        assert!(
            errs.is_empty(),
            "{table}.{key} = {d} (the page's default) is refused: {errs:?}"
        );
    }
    for (table, key) in code.keys() {
        assert!(
            page.contains_key(&(table.clone(), key.clone())),
            "{table}.{key} is not on the page"
        );
    }
}

#[test]
fn the_ranges_are_the_ones_check_enforces() {
    // Goal: each end of a range is accepted, one step beyond it is refused, and the message states the range.
    let page = page_entries();
    let mut checked = 0;
    for ((table, key), e) in &page {
        let Some((lo, hi)) = &e.range else { continue };
        let path = key_path(table, key);
        let names = |errs: &[String]| errs.iter().any(|m| m.contains(&format!("{path}:")));
        let (inside, outside): (Vec<String>, Vec<String>) = if e.ty == "integer" {
            let (a, b): (u64, u64) = (lo.parse().unwrap(), hi.parse().unwrap());
            (
                vec![a.to_string(), b.to_string()],
                vec![(a - 1).to_string(), (b + 1).to_string()],
            )
        } else {
            assert_eq!(
                e.ty, "duration",
                "{path}: a range needs an integer or a duration"
            );
            let (a, b) = (duration(lo), duration(hi));
            assert_eq!(
                a,
                Duration::from_millis(1),
                "{path}: a duration range starts at 1ms"
            );
            assert_eq!(
                b,
                defaults::MAX_DURATION,
                "{path}: a duration range ends at the maximum"
            );
            (
                vec![format!("\"{lo}\""), format!("\"{hi}\"")],
                vec![
                    "\"0s\"".into(),
                    format!("\"{}d\"", b.as_secs() / 86_400 + 1),
                ],
            )
        };
        for v in &inside {
            let errs = problems(&config_with(table, &format!("{key} = {v}")));
            assert!(
                !names(&errs),
                "{path} = {v} is in the page's range but refused: {errs:?}"
            );
        }
        for v in &outside {
            let errs = problems(&config_with(table, &format!("{key} = {v}")));
            assert!(
                names(&errs),
                "{path} = {v} is outside the page's range but accepted"
            );
            if e.ty == "integer" {
                assert!(
                    errs.iter()
                        .any(|m| m.contains(&format!("between {lo} and {hi}"))),
                    "{path} = {v}: --check states another range: {errs:?}"
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} ranges on the page");
}

/// `8192` as the page writes it: `8,192`.
fn fmt_thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn the_table_counts_are_the_code_bounds() {
    // Goal: "[[listen]] (1 to N tables)" and "[[action]] (1 to N tables)" match the hard bounds.
    for (table, max) in [
        ("listen", defaults::MAX_LISTENERS),
        ("action", defaults::MAX_ACTIONS),
    ] {
        let head = format!("## [[{table}]] (1 to {max} tables)");
        assert!(PAGE.lines().any(|l| l == head), "the page lacks {head:?}");
    }
    let head = format!(
        "## [[action.key]] (0 to {} tables per action)",
        defaults::MAX_KEYS_PER_ACTION
    );
    assert!(PAGE.lines().any(|l| l == head), "the page lacks {head:?}");
    assert!(
        PAGE.contains(&format!(
            "At most {} key slots",
            fmt_thousands(defaults::MAX_KEY_SLOTS)
        )),
        "the page does not state the key slot bound"
    );
}
