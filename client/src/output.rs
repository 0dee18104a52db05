//! What the user sees: one human line per trigger, a summary table for a
//! group, or JSON lines for scripts. Pure string building; the caller
//! prints. Nothing here ever sees a secret.

use std::time::{SystemTime, UNIX_EPOCH};

use postern::wire::{Answer, Reason, Status};

use crate::fleet::Tally;
use crate::outcome::{exit, NoAck, Outcome, Report};
use crate::plan::Job;

/// The one-line verdict for a trigger: `LABEL: ...`. `action` names the
/// action when the client knows it.
pub fn human_line(label: &str, action: Option<&str>, outcome: &Outcome) -> String {
    let what = match outcome {
        Outcome::Acknowledged(a) => acknowledged(a, action.unwrap_or("the action"), now_unix()),
        Outcome::ReplySent => "reply sent (ostiary-4 gives no acknowledgement)".to_owned(),
        Outcome::NoAck(NoAck::Closed) => {
            "no acknowledgement (wrong key, locked out or refused)".to_owned()
        }
        Outcome::NoAck(NoAck::BadAck) => {
            "no acknowledgement (the acknowledgement did not verify: wrong key or tampering)"
                .to_owned()
        }
        Outcome::Unreachable(e) => format!("connection failed: {e}"),
    };
    format!("{label}: {what}")
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What an ack says, in words: "accepted; sshd open for 15 min (until
/// 14:32 UTC)", "refused: cooling down, try again in 40 s". `now` is the
/// UNIX time the ack's seconds count from.
pub fn acknowledged(a: &Answer, name: &str, now: u64) -> String {
    let secs = u64::from(a.seconds);
    match (a.status, a.reason) {
        (Status::Started, _) if secs > 0 => format!(
            "accepted; {name} open for {} (until {})",
            duration(secs),
            clock(now + secs)
        ),
        (Status::Started, _) => format!("accepted; {name} started"),
        (Status::AlreadyActive, _) if secs > 0 => format!(
            "accepted; {name} already open, {} left (until {})",
            duration(secs),
            clock(now + secs)
        ),
        (Status::AlreadyActive, _) => format!("accepted; {name} already running"),
        (Status::Refused, Reason::Cooldown) if secs > 0 => {
            format!("refused: cooling down, try again in {}", duration(secs))
        }
        (Status::Refused, Reason::OpenForOther) if secs > 0 => format!(
            "refused: it is open for another address, closes in {}",
            duration(secs)
        ),
        (Status::Refused, Reason::AddressesFull) if secs > 0 => format!(
            "refused: it is open for as many addresses as it allows; the first closes in {}",
            duration(secs)
        ),
        (Status::Closed, _) => format!("closed; {name} closed now"),
        (Status::NotOpen, _) => format!("not open; {name} was not open, nothing to close"),
        (Status::Refused, why) => format!("refused: {}", why.describe()),
        (Status::Failed, why) => format!("failed: {}", why.describe()),
    }
}

/// "40 s" below a minute; otherwise whole minutes, rounded up first:
/// "15 min" below an hour, then "2 h" or "1 h 30 min" (3599 s is "1 h").
pub fn duration(secs: u64) -> String {
    if secs < 60 {
        return format!("{secs} s");
    }
    let minutes = secs.div_ceil(60);
    match (minutes / 60, minutes % 60) {
        (0, m) => format!("{m} min"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}

/// `HH:MM UTC` of a UNIX time.
fn clock(t: u64) -> String {
    let day = t % 86_400;
    format!("{:02}:{:02} UTC", day / 3600, day % 3600 / 60)
}

/// The detail column: why a trigger did not succeed (empty on success).
fn detail(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Acknowledged(a) if !a.status.is_success() => a.reason.describe(),
        Outcome::NoAck(NoAck::Closed) => "wrong key, locked out or refused".to_owned(),
        Outcome::NoAck(NoAck::BadAck) => "acknowledgement did not verify".to_owned(),
        Outcome::Unreachable(e) => e.to_string(),
        Outcome::Acknowledged(_) | Outcome::ReplySent => String::new(),
    }
}

/// Longest progress line, in characters, so that it never wraps on an
/// 80-column terminal (a wrapped line cannot be redrawn in place).
pub const PROGRESS_WIDTH: usize = 79;

/// The live progress line of a group run: `@rack-4: 900 ok, 3 failed,
/// 121 waiting; slowest web-17 (4.2 s)`, at most [`PROGRESS_WIDTH`]
/// characters.
pub fn progress_line(group: &str, t: &Tally<'_>) -> String {
    let mut line = format!(
        "{group}: {} ok, {} failed, {} waiting",
        t.ok, t.failed, t.waiting
    );
    if let Some((host, waited)) = t.slowest {
        line.push_str(&format!("; slowest {host} ({:.1} s)", waited.as_secs_f64()));
    }
    if line.chars().count() > PROGRESS_WIDTH {
        line = line.chars().take(PROGRESS_WIDTH - 1).collect();
        line.push('\u{2026}');
    }
    line
}

/// The group summary: a table (host, address, outcome, latency, detail),
/// sorted by outcome (successes first, then by exit code, so the failures
/// end next to the count line; hosts in inventory order within an
/// outcome), and a closing count line. `closing`: the rows are of
/// `postern close`, which counts an opened gate as a failure.
pub fn table(rows: &[(&Job, Report)], closing: bool) -> String {
    let header = ["HOST", "ADDRESS", "OUTCOME", "LATENCY", "DETAIL"];
    let mut sorted: Vec<&(&Job, Report)> = rows.iter().collect();
    sorted.sort_by_key(|(_, r)| (r.outcome.code_for(closing), r.outcome.name()));
    let cells: Vec<[String; 5]> = sorted
        .into_iter()
        .map(|(job, r)| {
            [
                job.label.clone(),
                r.address.clone(),
                r.outcome.name().to_owned(),
                format!("{} ms", r.latency.as_millis()),
                detail(&r.outcome),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |row: [&str; 5]| {
        let mut l = String::new();
        for (i, (c, w)) in row.iter().zip(width.iter()).enumerate() {
            if i == 3 {
                l.push_str(&format!("{c:>w$}  "));
            } else if i == 4 {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header);
    for row in &cells {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
    let ok = rows
        .iter()
        .filter(|(_, r)| r.outcome.code_for(closing) == exit::OK)
        .count();
    out.push_str(&format!(
        "{} hosts: {ok} succeeded, {} failed\n",
        rows.len(),
        rows.len() - ok
    ));
    out
}

/// `s` as a JSON string literal (RFC 8259), quotes included.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            // Line and paragraph separators are valid JSON but break
            // JavaScript string literals; escape them too.
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt(s: Option<&str>) -> String {
    s.map(json_string).unwrap_or_else(|| "null".to_owned())
}

/// One JSON object (one line) for a trigger (or, with `closing`, a
/// `postern close`). `reason` and `seconds` are the ack's (null without an
/// ack).
pub fn json_report(job: &Job, r: &Report, closing: bool) -> String {
    let code = r.outcome.code_for(closing);
    let d = detail(&r.outcome);
    let (reason, seconds) = match &r.outcome {
        Outcome::Acknowledged(a) => (json_string(a.reason.name()), a.seconds.to_string()),
        _ => ("null".to_owned(), "null".to_owned()),
    };
    format!(
        "{{\"host\":{},\"action\":{},\"address\":{},\"protocol\":{},\"outcome\":{},\"reason\":{reason},\"seconds\":{seconds},\"success\":{},\"exit_code\":{},\"latency_ms\":{},\"detail\":{}}}",
        json_string(&job.label),
        json_opt(job.action.as_deref()),
        json_string(&r.address),
        json_string(job.protocol().name()),
        json_string(r.outcome.name()),
        code == exit::OK,
        code,
        r.latency.as_millis(),
        json_opt(if d.is_empty() { None } else { Some(&d) }),
    )
}

/// The closing JSON object (one line) for a group.
pub fn json_summary(group: &str, rows: &[(&Job, Report)], exit_code: u8, closing: bool) -> String {
    let ok = rows
        .iter()
        .filter(|(_, r)| r.outcome.code_for(closing) == exit::OK)
        .count();
    format!(
        "{{\"summary\":true,\"group\":{},\"hosts\":{},\"succeeded\":{ok},\"failed\":{},\"exit_code\":{exit_code}}}",
        json_string(group),
        rows.len(),
        rows.len() - ok
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::plan::JobSecret;
    use crate::target::Target;
    use crate::trigger::NetError;
    use postern::secret::Key;
    use std::time::Duration;

    fn job(label: &str) -> Job {
        Job {
            label: label.to_owned(),
            action: Some("console".to_owned()),
            target: Target::new("192.0.2.1", 7001).unwrap(),
            proxy: None,
            timeout: Duration::from_secs(1),
            ack_wait: Duration::from_secs(1),
            assert_addr: None,
            secret: JobSecret::Key(Key::from_bytes([0; 32])),
        }
    }

    fn report(outcome: Outcome) -> Report {
        Report {
            outcome,
            address: "192.0.2.1:7001".to_owned(),
            latency: Duration::from_millis(12),
        }
    }

    // Goal: JSON strings escape quotes, backslashes and every control
    // character, and leave other text (including non-ASCII) as it is.
    #[test]
    fn json_escaping() {
        assert_eq!(json_string("plain"), "\"plain\"");
        assert_eq!(json_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(json_string("\n\r\t\u{8}\u{c}"), "\"\\n\\r\\t\\b\\f\"");
        assert_eq!(
            json_string("\u{0}\u{1f}\u{7f}"),
            "\"\\u0000\\u001f\\u007f\""
        );
        assert_eq!(json_string("é ✓"), "\"é ✓\"");
        assert_eq!(json_string("\u{2028}"), "\"\\u2028\"");
        for c in 0u8..0x20 {
            let s = json_string(&char::from(c).to_string());
            assert!(
                s.bytes().skip(1).take(s.len() - 2).all(|b| b >= 0x20),
                "{c}"
            );
        }
    }

    // Goal: each outcome has its documented human line, with the ack's
    // reason and time in words.
    #[test]
    fn human_lines() {
        let ack = |s, r, secs| Outcome::Acknowledged(Answer::because(s, r).with_seconds(secs));
        let cases = [
            (Outcome::NoAck(NoAck::Closed), "h: no acknowledgement (wrong key, locked out or refused)"),
            (Outcome::ReplySent, "h: reply sent (ostiary-4 gives no acknowledgement)"),
            (
                Outcome::Unreachable(NetError::BadGreeting),
                "h: connection failed: not a postern-2 greeting: the port looks like an ostiary-4 or other service; try --protocol ostiary-4",
            ),
            (ack(Status::Started, Reason::None, 0), "h: accepted; sshd started"),
            (ack(Status::AlreadyActive, Reason::None, 0), "h: accepted; sshd already running"),
            (ack(Status::Refused, Reason::Busy, 0), "h: refused: the server is busy"),
            (ack(Status::Failed, Reason::RunFailed, 0), "h: failed: the run command failed"),
            (ack(Status::Failed, Reason::Unknown(99), 0), "h: failed: reason 99"),
            (ack(Status::Closed, Reason::None, 0), "h: closed; sshd closed now"),
            (ack(Status::NotOpen, Reason::None, 0), "h: not open; sshd was not open, nothing to close"),
            (
                ack(Status::Refused, Reason::AddressesFull, 0),
                "h: refused: the gate is open for as many addresses as it allows",
            ),
        ];
        for (o, want) in cases {
            assert_eq!(human_line("h", Some("sshd"), &o), want);
        }
        let t = 14 * 3600 + 17 * 60; // 14:17 UTC
        let a = |s, r, secs| acknowledged(&Answer::because(s, r).with_seconds(secs), "sshd", t);
        assert_eq!(
            a(Status::Started, Reason::None, 900),
            "accepted; sshd open for 15 min (until 14:32 UTC)"
        );
        assert_eq!(
            a(Status::AlreadyActive, Reason::None, 45),
            "accepted; sshd already open, 45 s left (until 14:17 UTC)"
        );
        assert_eq!(
            a(Status::Refused, Reason::Cooldown, 40),
            "refused: cooling down, try again in 40 s"
        );
        assert_eq!(
            a(Status::Refused, Reason::OpenForOther, 5400),
            "refused: it is open for another address, closes in 1 h 30 min"
        );
        assert_eq!(
            a(Status::Refused, Reason::AddressesFull, 90),
            "refused: it is open for as many addresses as it allows; the first closes in 2 min"
        );
        assert_eq!(
            human_line("h", None, &ack(Status::Started, Reason::None, 0)),
            "h: accepted; the action started"
        );
        assert_eq!(duration(3600), "1 h");
        assert_eq!(duration(3599), "1 h");
        assert_eq!(duration(3601), "1 h 1 min");
        assert_eq!(duration(7199), "2 h");
    }

    // Goal: the progress line counts, names the slowest pending host, and
    // never grows past the width that a terminal redraws in place.
    #[test]
    fn progress_lines() {
        let t = Tally {
            ok: 3012,
            failed: 410,
            waiting: 674,
            slowest: Some(("g1217", Duration::from_millis(4321))),
        };
        assert_eq!(
            progress_line("@rack-4", &t),
            "@rack-4: 3012 ok, 410 failed, 674 waiting; slowest g1217 (4.3 s)"
        );
        let t = Tally { slowest: None, ..t };
        assert_eq!(
            progress_line("@rack-4", &t),
            "@rack-4: 3012 ok, 410 failed, 674 waiting"
        );
        let long = "x".repeat(64);
        let t = Tally {
            slowest: Some((&long, Duration::from_secs(1))),
            ..t
        };
        let line = progress_line(&format!("@{long}"), &t);
        assert_eq!(line.chars().count(), PROGRESS_WIDTH);
        assert!(line.ends_with('\u{2026}'), "{line}");
    }

    // Goal: the table lists successes first and failures last, by exit
    // code, keeping the given order within an outcome.
    #[test]
    fn table_sorted_by_outcome() {
        let (a, b, c, d) = (job("a"), job("b"), job("c"), job("d"));
        let rows = vec![
            (&a, report(Outcome::Unreachable(NetError::BadGreeting))),
            (&b, report(Outcome::NoAck(NoAck::Closed))),
            (
                &c,
                report(Outcome::Acknowledged(Answer::bare(Status::Started))),
            ),
            (&d, report(Outcome::Unreachable(NetError::BadGreeting))),
        ];
        let t = table(&rows, false);
        let order: Vec<&str> = t
            .lines()
            .skip(1)
            .take(4)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(order, ["c", "b", "a", "d"], "{t}");
    }

    // Goal: the table aligns its columns, shows why failures failed, and
    // counts successes; JSON lines carry the same facts.
    #[test]
    fn table_and_json() {
        let (a, b) = (job("web-17"), job("db\"1"));
        let rows = vec![
            (
                &a,
                report(Outcome::Acknowledged(
                    Answer::bare(Status::Started).with_seconds(900),
                )),
            ),
            (&b, report(Outcome::NoAck(NoAck::Closed))),
        ];
        let t = table(&rows, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[0].starts_with("HOST    ADDRESS         OUTCOME  LATENCY  DETAIL"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("web-17  192.0.2.1:7001  started    12 ms"),
            "{t}"
        );
        assert!(
            lines[2].ends_with("no-ack     12 ms  wrong key, locked out or refused"),
            "{t}"
        );
        assert_eq!(lines[3], "2 hosts: 1 succeeded, 1 failed");

        assert_eq!(
            json_report(&b, &rows[1].1, false),
            "{\"host\":\"db\\\"1\",\"action\":\"console\",\"address\":\"192.0.2.1:7001\",\
             \"protocol\":\"postern-2\",\"outcome\":\"no-ack\",\"reason\":null,\"seconds\":null,\"success\":false,\"exit_code\":2,\
             \"latency_ms\":12,\"detail\":\"wrong key, locked out or refused\"}"
        );
        assert!(json_report(&a, &rows[0].1, false).ends_with("\"detail\":null}"));
        assert!(json_report(&a, &rows[0].1, false).contains("\"reason\":\"none\",\"seconds\":900,"));
        // For close, a started gate is a failure (exit 5) in every form.
        assert!(json_report(&a, &rows[0].1, true).contains("\"success\":false,\"exit_code\":5,"));
        assert!(table(&rows, true).ends_with("2 hosts: 0 succeeded, 2 failed\n"));
        assert_eq!(
            json_summary("@rack-4", &rows, 2, false),
            "{\"summary\":true,\"group\":\"@rack-4\",\"hosts\":2,\"succeeded\":1,\"failed\":1,\"exit_code\":2}"
        );
    }
}
