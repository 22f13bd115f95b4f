//! External processes that answer one line per line: the one place the
//! runtime starts a program (a judge, later an environment). A process is
//! started with `sh -c COMMAND`; a reader thread turns its stdout into
//! lines on a channel, so a question waits at most `timeout` for its
//! answer; another keeps the last lines of its stderr for error messages.
//! Dropping a [`LineProcess`] kills the program.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Lines of stderr kept for an error message.
const STDERR_LINES: usize = 8;

/// A running program spoken to a line at a time.
pub struct LineProcess {
    pub command: String,
    child: Child,
    stdin: Option<ChildStdin>,
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

impl LineProcess {
    /// Start `command` with `sh -c`.
    pub fn spawn(command: &str) -> Result<LineProcess, Failure> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Failure::Io(format!("cannot start `{command}`: {e}")))?;
        let (tx, lines) = channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(err) = child.stderr.take() {
            let keep = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut k) = keep.lock() {
                        if k.len() == STDERR_LINES {
                            k.pop_front();
                        }
                        k.push_back(line);
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        Ok(LineProcess {
            command: command.to_string(),
            child,
            stdin,
            lines,
            stderr,
        })
    }

    /// Write `line` and wait up to `timeout` for the next line it answers.
    pub fn ask(&mut self, line: &str, timeout: Duration) -> Result<String, Failure> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(Failure::Exited(self.stderr_tail()));
        };
        let written = stdin
            .write_all(line.as_bytes())
            .and_then(|_| stdin.write_all(b"\n"))
            .and_then(|_| stdin.flush());
        if written.is_err() {
            return Err(self.exited());
        }
        match self.lines.recv_timeout(timeout) {
            Ok(answer) => Ok(answer),
            Err(RecvTimeoutError::Timeout) => Err(Failure::Timeout),
            Err(RecvTimeoutError::Disconnected) => Err(self.exited()),
        }
    }

    /// The program ended: its last stderr lines (after it has flushed them).
    fn exited(&mut self) -> Failure {
        let _ = self.child.wait();
        // The stderr reader finishes at the program's end.
        std::thread::sleep(Duration::from_millis(20));
        Failure::Exited(self.stderr_tail())
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
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
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
