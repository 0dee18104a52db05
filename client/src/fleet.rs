//! Running jobs: one, or many on a bounded pool of threads.
//!
//! The pool is `parallel` scoped threads that take jobs by index from a
//! shared counter; its bound is the thread count fixed when [`Fleet`] is
//! made. Each job's phases are bounded by its own timeout, so the whole
//! run is bounded too.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use crate::outcome::Report;
use crate::plan::Job;
use crate::trigger::{trigger, Waits};

/// Runs one job: derives its credential, then triggers. The latency
/// reported covers the network exchange only.
pub fn run_one(job: &Job) -> Report {
    run_waiting(job, None)
}

/// [`run_one`], announcing on a terminal, once the ack has been awaited for
/// a second, what the server is doing: `announce` ("start sshd").
pub fn run_waiting(job: &Job, announce: Option<String>) -> Report {
    let credential = job.credential();
    let waits = Waits {
        timeout: job.timeout,
        ack_wait: job.ack_wait,
        announce,
    };
    trigger(&job.target, job.proxy.as_ref(), &credential, &waits)
}

/// A pool of at most `parallel` threads.
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    parallel: NonZeroUsize,
}

impl Fleet {
    /// A pool that runs at most `parallel` jobs at once.
    pub fn new(parallel: NonZeroUsize) -> Fleet {
        Fleet { parallel }
    }

    /// Runs every job and returns each with its report, in job order.
    /// `on_done` sees each report as it arrives (completion order).
    pub fn run<'j>(
        &self,
        jobs: &'j [Job],
        mut on_done: impl FnMut(&Job, &Report),
    ) -> Vec<(&'j Job, Report)> {
        let workers = self.parallel.get().min(jobs.len());
        let next = AtomicUsize::new(0);
        let mut done: Vec<(usize, Report)> = Vec::with_capacity(jobs.len());
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::channel::<(usize, Report)>();
            for _ in 0..workers {
                let tx = tx.clone();
                let next = &next;
                scope.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    if tx.send((i, run_one(job))).is_err() {
                        break;
                    }
                });
            }
            drop(tx);
            for (i, report) in rx {
                if let Some(job) = jobs.get(i) {
                    on_done(job, &report);
                }
                done.push((i, report));
            }
        });
        done.sort_by_key(|(i, _)| *i);
        done.into_iter()
            .filter_map(|(i, r)| jobs.get(i).map(|j| (j, r)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::plan::JobSecret;
    use crate::target::Target;
    use postern::secret::Key;
    use std::net::TcpListener;
    use std::time::Duration;

    // Goal: every job runs exactly once, reports come back in job order,
    // and no more than `parallel` connections are ever open at once.
    #[test]
    fn runs_all_jobs_bounded() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(AtomicUsize::new(0));
        let peak = std::sync::Arc::new(AtomicUsize::new(0));
        let (o, pk) = (open.clone(), peak.clone());
        let server = std::thread::spawn(move || {
            let mut handles = Vec::new();
            for _ in 0..9 {
                let (s, _) = listener.accept().unwrap();
                let now = o.fetch_add(1, Ordering::SeqCst) + 1;
                pk.fetch_max(now, Ordering::SeqCst);
                let o = o.clone();
                handles.push(std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(100));
                    o.fetch_sub(1, Ordering::SeqCst);
                    drop(s);
                }));
            }
            for h in handles {
                h.join().unwrap();
            }
        });
        let jobs: Vec<Job> = (0..9)
            .map(|i| Job {
                label: format!("h{i}"),
                action: None,
                target: Target::new("127.0.0.1", port).unwrap(),
                proxy: None,
                timeout: Duration::from_secs(5),
                ack_wait: Duration::from_secs(5),
                assert_addr: None,
                secret: JobSecret::Key(Key::from_bytes([i; 32])),
            })
            .collect();
        let mut seen = Vec::new();
        let reports =
            Fleet::new(NonZeroUsize::new(3).unwrap()).run(&jobs, |j, _| seen.push(j.label.clone()));
        server.join().unwrap();
        assert_eq!(reports.len(), 9);
        seen.sort();
        assert_eq!(seen, (0..9).map(|i| format!("h{i}")).collect::<Vec<_>>());
        assert!(
            peak.load(Ordering::SeqCst) <= 3,
            "peak {}",
            peak.load(Ordering::SeqCst)
        );
        for (i, (job, r)) in reports.iter().enumerate() {
            assert_eq!(job.label, format!("h{i}"));
            assert_eq!(r.outcome.name(), "network-error");
        }
    }
}
