//! Progress for long builds: a spinner per stage on a terminal, one line per stage otherwise,
//! nothing with `--json`; and the timing summary at the end.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StageTiming {
    pub stage: String,
    pub seconds: f64,
    pub detail: String,
}

pub struct Progress {
    quiet: bool,
    tty: bool,
    total: usize,
    done: usize,
    current: Option<(String, Instant, ProgressBar)>,
    pub timings: Vec<StageTiming>,
}

impl Progress {
    /// `quiet` (for `--json`) prints nothing; `total` is the number of stages, for "[n/N]".
    pub fn new(quiet: bool, total: usize) -> Progress {
        Progress {
            quiet,
            tty: std::io::stderr().is_terminal(),
            total,
            done: 0,
            current: None,
            timings: Vec::new(),
        }
    }

    /// Starts a stage (ending the previous one without detail if still open).
    pub fn begin(&mut self, stage: &str) {
        if self.current.is_some() {
            self.end("");
        }
        let prefix = format!("[{}/{}] {stage}", self.done + 1, self.total);
        let pb = if self.quiet || !self.tty {
            ProgressBar::hidden()
        } else {
            let pb = ProgressBar::new_spinner();
            pb.set_style(
                ProgressStyle::with_template("{spinner} {prefix:.bold} {elapsed:>4} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            pb.set_prefix(prefix.clone());
            pb.enable_steady_tick(Duration::from_millis(120));
            pb
        };
        if !self.quiet && !self.tty {
            eprintln!("{prefix} ...");
        }
        self.current = Some((stage.to_string(), Instant::now(), pb));
    }

    /// Updates the current stage's message (e.g. the line a tool just printed).
    pub fn message(&self, msg: &str) {
        if let Some((_, _, pb)) = &self.current {
            let short: String = msg.chars().take(100).collect();
            pb.set_message(short);
        }
    }

    /// Ends the current stage, recording its time; `detail` says what it produced.
    pub fn end(&mut self, detail: &str) {
        if let Some((stage, start, pb)) = self.current.take() {
            let secs = start.elapsed().as_secs_f64();
            pb.finish_and_clear();
            self.done += 1;
            if !self.quiet {
                eprintln!(
                    "[{}/{}] {stage:<12} {secs:>6.1} s  {detail}",
                    self.done, self.total
                );
            }
            self.timings.push(StageTiming {
                stage,
                seconds: secs,
                detail: detail.to_string(),
            });
        }
    }

    /// Ends the current stage as failed (no timing recorded), clearing the spinner.
    pub fn abort(&mut self) {
        if let Some((stage, start, pb)) = self.current.take() {
            pb.finish_and_clear();
            if !self.quiet {
                eprintln!(
                    "[{}/{}] {stage:<12} failed after {:.1} s",
                    self.done + 1,
                    self.total,
                    start.elapsed().as_secs_f64()
                );
            }
        }
    }

    pub fn total_seconds(&self) -> f64 {
        self.timings.iter().map(|t| t.seconds).sum()
    }
}

/// Bytes as a short human-readable size.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
