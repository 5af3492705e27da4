//! The processes a benchmark run starts: the hub (this same binary with `--role hub`, so its
//! CPU and memory are measured apart from the load generator) and the external producer
//! (`--role producer`, plain rusqlite INSERTs as any other program would do). Both are
//! killed on drop, so a failed run leaves nothing behind.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, unbounded};

use crate::BoxError;
use crate::procfs::ProcStats;

/// What the hub is started with; also the flags of `--role hub` (all hidden but --poll-ms).
#[derive(Debug, Clone, clap::Args)]
pub struct HubParams {
    /// `Config.poll_interval` of the hub in normal mode, in ms (for experiments; the hub's
    /// default is 5 ms). Seed mode always uses 500 ms.
    #[arg(long, default_value_t = 5)]
    pub poll_ms: u64,
    #[arg(long, hide = true, default_value_t = 512)]
    pub batch_rows: usize,
    /// WAL notifications (inotify) on; the design we replace had none.
    #[arg(long, hide = true, default_value_t = true, action = clap::ArgAction::Set)]
    pub watch_wal: bool,
    #[arg(long, hide = true, default_value_t = 15_000)]
    pub heartbeat_ms: u64,
    #[arg(long, hide = true, default_value_t = 256)]
    pub max_clients: usize,
    /// 0: an ephemeral port the hub reports.
    #[arg(long, hide = true, default_value_t = 0)]
    pub port: u16,
}

impl HubParams {
    /// The hub's defaults (5 ms poll unless `--poll-ms`, 512 rows per batch).
    pub fn normal() -> HubParams {
        HubParams {
            poll_ms: NORMAL_POLL_MS.get().copied().unwrap_or(5),
            batch_rows: 512,
            watch_wal: true,
            heartbeat_ms: 15_000,
            max_clients: 256,
            port: 0,
        }
    }

    /// The design we replace: 0.5 s poll, 50 rows a batch.
    pub fn seed() -> HubParams {
        HubParams {
            poll_ms: 500,
            batch_rows: 50,
            watch_wal: false,
            ..HubParams::normal()
        }
    }
}

/// A hub child process.
pub struct HubChild {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pub addr: SocketAddr,
    pub pid: u32,
    /// How long `Hub::start` took inside the child.
    pub start_us: u64,
    pub spawned: Instant,
}

impl HubChild {
    /// Starts the hub on `db` and waits (up to `wait`) for it to report its address.
    pub fn spawn(db: &Path, p: &HubParams, wait: Duration) -> Result<HubChild, BoxError> {
        let mut hub = HubChild::launch(db, p)?;
        hub.ready(wait)?;
        Ok(hub)
    }

    /// Starts the hub process without waiting for it.
    pub fn launch(db: &Path, p: &HubParams) -> Result<HubChild, BoxError> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.args(["--role", "hub", "--db"])
            .arg(db)
            .args(["--poll-ms", &p.poll_ms.to_string()])
            .args(["--batch-rows", &p.batch_rows.to_string()])
            .args(["--watch-wal", &p.watch_wal.to_string()])
            .args(["--heartbeat-ms", &p.heartbeat_ms.to_string()])
            .args(["--max-clients", &p.max_clients.to_string()])
            .args(["--port", &p.port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let spawned = Instant::now();
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("hub child has no stdout")?;
        let (tx, rx) = unbounded();
        std::thread::Builder::new()
            .name("hub-stdout".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            })?;
        Ok(HubChild {
            pid: child.id(),
            child,
            stdin,
            lines: rx,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            start_us: 0,
            spawned,
        })
    }

    /// Waits (up to `wait`) for the `READY <addr> <start µs>` line.
    pub fn ready(&mut self, wait: Duration) -> Result<(), BoxError> {
        let ready = self.expect_line("READY", wait)?;
        let mut parts = ready.split_whitespace().skip(1);
        self.addr = parts.next().ok_or("READY without address")?.parse()?;
        self.start_us = parts.next().ok_or("READY without time")?.parse()?;
        Ok(())
    }

    /// Sends one command line to the hub's stdin.
    pub fn command(&mut self, line: &str) -> Result<(), BoxError> {
        let stdin = self.stdin.as_mut().ok_or("hub stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for a stdout line starting with `word`; other lines are skipped.
    pub fn expect_line(&mut self, word: &str, wait: Duration) -> Result<String, BoxError> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.split_whitespace().next() == Some(word) => return Ok(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("hub did not print {word} within {wait:?}").into());
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("hub exited before printing {word}").into());
                }
            }
        }
    }

    /// CPU, memory and threads of the hub process now.
    pub fn stats(&self) -> Result<ProcStats, BoxError> {
        Ok(ProcStats::read(self.pid)?)
    }

    /// Asks the hub to shut down in order and waits for it (killing it after `wait`).
    pub fn stop(mut self, wait: Duration) -> Result<(), BoxError> {
        self.command("quit")?;
        drop(self.stdin.take());
        let status = wait_exit(&mut self.child, wait, "hub did not stop")?;
        if !status.success() {
            return Err(format!("hub exited with {status}").into());
        }
        Ok(())
    }
}

impl Drop for HubChild {
    fn drop(&mut self) {
        end(&mut self.child); // still running only if `stop` was not called or failed
    }
}

/// Waits up to `wait` for `child` to exit; the error is `late` and how long was waited.
fn wait_exit(child: &mut Child, wait: Duration, late: &str) -> Result<ExitStatus, BoxError> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            return Err(format!("{late} within {wait:?}").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills `child` if it still runs, and reaps it.
fn end(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill(); // it may exit by itself in between
    }
    let _ = child.wait(); // reaps it; an error means it was reaped already
}

/// `--poll-ms` of this run, for the normal-mode hub.
pub static NORMAL_POLL_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// `--producer-synchronous` of this run, handed to every producer child.
pub static PRODUCER_SYNCHRONOUS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// An external producer child doing paced INSERTs.
pub struct ProducerChild {
    child: Child,
}

/// What the producer reports when done.
#[derive(Debug, Default, Clone, Copy)]
pub struct Produced {
    pub rows: u64,
    pub commit_p50_us: f64,
    pub commit_p99_us: f64,
}

impl ProducerChild {
    pub fn spawn(db: &Path, rate: f64, count: u64) -> Result<ProducerChild, BoxError> {
        let exe = std::env::current_exe()?;
        let sync = PRODUCER_SYNCHRONOUS.get().map_or("default", String::as_str);
        let child = Command::new(exe)
            .args(["--role", "producer", "--producer-synchronous", sync, "--db"])
            .arg(db)
            .args(["--rate", &rate.to_string(), "--count", &count.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        Ok(ProducerChild { child })
    }

    /// Waits (up to `wait`) for the producer to finish and parses its report.
    pub fn finish(mut self, wait: Duration) -> Result<Produced, BoxError> {
        wait_exit(&mut self.child, wait, "producer did not finish")?;
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            std::io::Read::read_to_string(&mut stdout, &mut out)?;
        }
        let line = out
            .lines()
            .find(|l| l.starts_with("PRODUCED "))
            .ok_or_else(|| format!("producer failed: {out}"))?;
        let f: Vec<&str> = line.split_whitespace().collect();
        let get = |i: usize| f.get(i).ok_or("short PRODUCED line");
        Ok(Produced {
            rows: get(1)?.parse()?,
            commit_p50_us: get(2)?.parse()?,
            commit_p99_us: get(3)?.parse()?,
        })
    }
}

impl Drop for ProducerChild {
    fn drop(&mut self) {
        end(&mut self.child);
    }
}
