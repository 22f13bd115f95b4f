//! External processes that answer one line per line: the one place the
//! runtime starts a program (a judge, later an environment). A process is
//! started with `sh -c COMMAND`; a reader thread turns its stdout into
//! lines on a channel, so a question waits at most `timeout` for its
//! answer; another keeps the last lines of its stderr for error messages;
//! a third writes the questions (so a program that stops reading cannot
//! block the run). Output is read as lines with invalid UTF-8 replaced.
//! The program runs in a process group of its own, and dropping a
//! [`LineProcess`] kills the group.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Lines of stderr kept for an error message.
const STDERR_LINES: usize = 8;

/// A running program spoken to a line at a time.
pub struct LineProcess {
    pub command: String,
    child: Child,
    /// Lines to write, handed to a writer thread (a program that stops
    /// reading cannot block the caller past its timeout).
    to_write: Option<Sender<String>>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

/// Why a question got no answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The program ended (or closed its stdout) first.
    Exited(String),
    /// No answer within the timeout.
    Timeout,
    /// It could not be started or written to.
    Io(String),
}

/// Lines of `r`, invalid UTF-8 replaced (a stray byte does not end them).
fn lossy_lines(r: impl std::io::Read, mut each: impl FnMut(String) -> bool) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_string();
                if !each(line) {
                    break;
                }
            }
        }
    }
}

impl LineProcess {
    /// Start `command` with `sh -c`, in a process group of its own (so
    /// that stopping it stops what the shell started).
    pub fn spawn(command: &str) -> Result<LineProcess, Failure> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| Failure::Io(format!("cannot start `{command}`: {e}")))?;
        let (tx, lines) = channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || lossy_lines(out, |line| tx.send(line).is_ok()));
        }
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(err) = child.stderr.take() {
            let keep = Arc::clone(&stderr);
            std::thread::spawn(move || {
                lossy_lines(err, |line| {
                    if let Ok(mut k) = keep.lock() {
                        if k.len() == STDERR_LINES {
                            k.pop_front();
                        }
                        k.push_back(line);
                    }
                    true
                })
            });
        }
        let to_write = child.stdin.take().map(|mut stdin| {
            let (tx, rx) = channel::<String>();
            std::thread::spawn(move || {
                for line in rx {
                    let ok = stdin
                        .write_all(line.as_bytes())
                        .and_then(|_| stdin.write_all(b"\n"))
                        .and_then(|_| stdin.flush());
                    if ok.is_err() {
                        break;
                    }
                }
            });
            tx
        });
        Ok(LineProcess {
            command: command.to_string(),
            child,
            to_write,
            lines,
            stderr,
        })
    }

    /// Write `line` and wait up to `timeout` for the next line it answers
    /// (lines it wrote before the question are dropped first).
    pub fn ask(&mut self, line: &str, timeout: Duration) -> Result<String, Failure> {
        while self.lines.try_recv().is_ok() {}
        let sent = self
            .to_write
            .as_ref()
            .is_some_and(|w| w.send(line.to_string()).is_ok());
        if !sent {
            return Err(self.exited());
        }
        match self.lines.recv_timeout(timeout) {
            Ok(answer) => Ok(answer),
            Err(RecvTimeoutError::Timeout) => Err(Failure::Timeout),
            Err(RecvTimeoutError::Disconnected) => Err(self.exited()),
        }
    }

    /// The program closed its output: give it a moment to end (and its
    /// stderr reader to catch up), stop it, and report its last stderr
    /// lines.
    fn exited(&mut self) -> Failure {
        self.to_write.take();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(20));
        self.stop();
        Failure::Exited(self.stderr_tail())
    }

    /// Kill the program's process group and reap the shell.
    fn stop(&mut self) {
        self.to_write.take();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last lines the program wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        self.stderr
            .lock()
            .map(|k| k.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

impl Drop for LineProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers come back a line per line; a program that ends is `Exited`
    /// with its stderr; one that does not answer is a `Timeout`.
    #[test]
    fn lines_in_lines_out_and_the_two_failures() {
        let mut p = LineProcess::spawn("while read l; do echo \"got $l\"; done").expect("sh");
        let t = Duration::from_secs(5);
        assert_eq!(p.ask("a", t), Ok("got a".into()));
        assert_eq!(p.ask("b c", t), Ok("got b c".into()));
        let mut dead = LineProcess::spawn("read l; echo oops >&2; exit 3").expect("sh");
        match dead.ask("x", t) {
            Err(Failure::Exited(e)) => assert!(e.contains("oops"), "{e}"),
            other => panic!("{other:?}"),
        }
        let mut slow = LineProcess::spawn("sleep 30").expect("sh");
        assert_eq!(
            slow.ask("x", Duration::from_millis(200)),
            Err(Failure::Timeout)
        );
    }
}
