//! External commands (systemctl, openssl, dehydrated, mount) go through [`Runner`] so unit tests
//! can record them, or fail them on purpose, instead of touching the machine.

use anyhow::{bail, Context, Result};
use std::process::{Command, Stdio};

/// One command line with extra environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Cmd {
    pub fn new(program: &str) -> Self {
        Cmd {
            program: program.to_string(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Self {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }
    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.to_string(), v.into()));
        self
    }
    /// The command as a person would type it (for messages and test assertions).
    pub fn line(&self) -> String {
        let mut s = self.program.clone();
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

/// What a finished command left behind.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

pub trait Runner {
    /// Run the command to completion and capture its output.
    fn run(&mut self, cmd: &Cmd) -> Result<Output>;

    /// Run and turn a non-zero exit into an error that quotes the command's own words.
    fn check(&mut self, cmd: &Cmd) -> Result<Output> {
        let out = self.run(cmd)?;
        if !out.success {
            let detail = if out.stderr.trim().is_empty() {
                out.stdout.trim()
            } else {
                out.stderr.trim()
            };
            bail!(
                "the command `{}` failed: {}",
                cmd.line(),
                last_lines(detail, 8)
            );
        }
        Ok(out)
    }
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// Runs commands for real.
#[derive(Debug, Default)]
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run(&mut self, cmd: &Cmd) -> Result<Output> {
        let out = Command::new(&cmd.program)
            .args(&cmd.args)
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run `{}`", cmd.program))?;
        Ok(Output {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

type Handler = Box<dyn FnMut(&Cmd) -> Result<Output>>;

/// Test double: records every command and answers through an optional handler.
#[derive(Default)]
pub struct RecordingRunner {
    pub commands: Vec<Cmd>,
    handler: Option<Handler>,
}

impl RecordingRunner {
    pub fn new() -> Self {
        Self::default()
    }
    /// Answer commands with `f` (it may also create files the real command would create).
    pub fn with_handler(f: impl FnMut(&Cmd) -> Result<Output> + 'static) -> Self {
        RecordingRunner {
            commands: Vec::new(),
            handler: Some(Box::new(f)),
        }
    }
    pub fn lines(&self) -> Vec<String> {
        self.commands.iter().map(Cmd::line).collect()
    }
}

impl Runner for RecordingRunner {
    fn run(&mut self, cmd: &Cmd) -> Result<Output> {
        self.commands.push(cmd.clone());
        match &mut self.handler {
            Some(h) => h(cmd),
            None => Ok(Output {
                success: true,
                ..Output::default()
            }),
        }
    }
}
