//! A small QMP client: line-delimited JSON over QEMU's `-qmp unix:` socket.
//!
//! Only what the agent needs: the greeting, `qmp_capabilities`,
//! `query-status`, and the event stream; and, from another thread through a
//! [`Commander`], commands whose answers come back in that stream
//! (`migrate-continue`). Replies are matched by `id`, so an event that
//! arrives while a command is pending is queued, not lost.
//! Nothing QEMU sends can make this panic: bad input is a [`QmpError`].

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Value};

/// Longest line accepted from QEMU; real messages are a few hundred bytes.
const MAX_LINE: u64 = 1 << 20;

/// How long a command may take before QEMU is considered hung.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket failed (absent, refused, reset, timed out).
    #[error("QMP socket: {0}")]
    Io(#[from] io::Error),
    /// QEMU closed the socket (it exited, or another client took over).
    #[error("QMP socket closed")]
    Closed,
    /// A line that is not JSON, or JSON of an unexpected shape.
    #[error("bad QMP message: {0}")]
    Bad(String),
    /// A line longer than any QMP message should be.
    #[error("QMP message longer than {MAX_LINE} bytes")]
    TooLong,
    /// QEMU answered a command with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// QEMU's event timestamp: wall-clock time on the QEMU host when the event
/// happened. Kept as sent so latencies can be measured from QEMU's view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Timestamp {
    pub seconds: i64,
    pub microseconds: i64,
}

impl Timestamp {
    /// The timestamp as a `SystemTime`; `None` for nonsense (negative or
    /// out of range), which QEMU sends if its clock read failed.
    pub fn to_system_time(self) -> Option<SystemTime> {
        let secs = u64::try_from(self.seconds).ok()?;
        let micros = u64::try_from(self.microseconds).ok()?;
        if micros >= 1_000_000 {
            return None;
        }
        UNIX_EPOCH.checked_add(Duration::from_secs(secs) + Duration::from_micros(micros))
    }

    /// Seconds since the epoch with microseconds, for logs.
    pub fn display(self) -> String {
        format!("{}.{:06}", self.seconds, self.microseconds)
    }
}

/// The events the agent acts on; the rest are `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Resume,
    Stop,
    /// `MIGRATION` with its `status` (`setup`, `active`, `completed`, ...).
    Migration {
        status: String,
    },
    /// `guest` is true when the guest itself asked to power off.
    Shutdown {
        guest: bool,
        reason: Option<String>,
    },
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub timestamp: Timestamp,
}

/// QEMU's answer to a command sent through a [`Commander`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The id [`Commander::send`] returned.
    pub id: String,
    /// `None`: it succeeded; else QEMU's error class and description.
    pub error: Option<String>,
}

/// What the event stream carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Event(Event),
    Answer(Answer),
}

/// The ids of [`Commander`] commands start with this; the session's own
/// commands have numbers.
const COMMANDER_ID: &str = "homeward-";

/// `query-status`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Status {
    /// The run state: `running`, `paused`, `inmigrate`, `postmigrate`, ...
    pub status: String,
    pub running: bool,
}

/// One parsed line from QEMU.
enum Message {
    Greeting,
    Return {
        id: Option<Value>,
        value: Value,
    },
    Error {
        id: Option<Value>,
        class: String,
        desc: String,
    },
    Event(Event),
}

#[derive(Deserialize)]
struct RawEvent {
    event: String,
    #[serde(default)]
    data: Value,
    timestamp: Timestamp,
}

fn parse(line: &[u8]) -> Result<Message, QmpError> {
    let v: Value = serde_json::from_slice(line).map_err(|e| QmpError::Bad(e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| QmpError::Bad("not a JSON object".into()))?;
    if obj.contains_key("QMP") {
        return Ok(Message::Greeting);
    }
    let id = obj.get("id").cloned();
    if let Some(value) = obj.get("return") {
        return Ok(Message::Return {
            id,
            value: value.clone(),
        });
    }
    if let Some(e) = obj.get("error") {
        let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
        return Ok(Message::Error {
            id,
            class: text("class"),
            desc: text("desc"),
        });
    }
    if obj.contains_key("event") {
        let raw: RawEvent = serde_json::from_value(v).map_err(|e| QmpError::Bad(e.to_string()))?;
        let field = |k: &str| raw.data.get(k).and_then(Value::as_str).map(str::to_string);
        let kind = match raw.event.as_str() {
            "RESUME" => EventKind::Resume,
            "STOP" => EventKind::Stop,
            "MIGRATION" => EventKind::Migration {
                status: field("status")
                    .ok_or_else(|| QmpError::Bad("MIGRATION without status".into()))?,
            },
            "SHUTDOWN" => EventKind::Shutdown {
                guest: raw
                    .data
                    .get("guest")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                reason: field("reason"),
            },
            _ => EventKind::Other(raw.event),
        };
        return Ok(Message::Event(Event {
            kind,
            timestamp: raw.timestamp,
        }));
    }
    Err(QmpError::Bad(
        "neither greeting, return, error nor event".into(),
    ))
}

/// The answer to a [`Commander`]'s command, if `m` is one.
fn commander_answer(m: Message) -> Option<Answer> {
    let (id, error) = match m {
        Message::Return { id, .. } => (id, None),
        Message::Error { id, class, desc } => (id, Some(format!("{class}: {desc}"))),
        Message::Greeting | Message::Event(_) => return None,
    };
    match id {
        Some(Value::String(id)) if id.starts_with(COMMANDER_ID) => Some(Answer { id, error }),
        _ => None,
    }
}

/// Sends commands on a session's socket without waiting for their answers
/// (the watcher reading the session reports them). Cloned handles share
/// the numbering. Each command is one `write` of one line.
#[derive(Debug, Clone)]
pub struct Commander {
    stream: Arc<UnixStream>,
    next_id: Arc<AtomicU64>,
}

impl Commander {
    /// A commander on `stream` (a QMP session someone else reads).
    pub fn new(stream: UnixStream) -> Commander {
        Commander {
            stream: Arc::new(stream),
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Sends `command`; returns its id (`homeward-N`). The socket's write
    /// timeout ([`COMMAND_TIMEOUT`]) bounds it if QEMU stops reading.
    pub fn send(&self, command: &str, arguments: Option<Value>) -> Result<String, QmpError> {
        let id = format!(
            "{COMMANDER_ID}{}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        (&*self.stream).write_all(line.as_bytes())?;
        Ok(id)
    }
}

/// A connected QMP session, capabilities negotiated.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    /// Bytes of a line not yet complete when a read timed out.
    partial: Vec<u8>,
    /// Events (and answers to a [`Commander`]) that arrived while a
    /// command waited for its reply.
    queued: VecDeque<Incoming>,
    next_id: u64,
}

impl Qmp {
    /// Connects to QEMU's QMP socket, reads the greeting and leaves
    /// negotiation mode.
    pub fn connect(path: &Path) -> Result<Qmp, QmpError> {
        Qmp::handshake(UnixStream::connect(path)?)
    }

    /// The handshake on an already connected stream.
    pub fn handshake(stream: UnixStream) -> Result<Qmp, QmpError> {
        stream.set_read_timeout(Some(COMMAND_TIMEOUT))?;
        stream.set_write_timeout(Some(COMMAND_TIMEOUT))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            partial: Vec::new(),
            queued: VecDeque::new(),
            next_id: 1,
        };
        match qmp.read_message()? {
            Some(Message::Greeting) => {}
            Some(_) => return Err(QmpError::Bad("expected the QMP greeting".into())),
            None => return Err(QmpError::Io(ErrorKind::TimedOut.into())),
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Runs `query-status`.
    pub fn query_status(&mut self) -> Result<Status, QmpError> {
        let v = self.execute("query-status", None)?;
        serde_json::from_value(v).map_err(|e| QmpError::Bad(format!("query-status: {e}")))
    }

    /// Runs a command and waits (up to [`COMMAND_TIMEOUT`]) for its reply.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.reader
            .get_ref()
            .set_read_timeout(Some(COMMAND_TIMEOUT))?;
        self.reader.get_ref().write_all(line.as_bytes())?;
        loop {
            match self.read_message()? {
                None => return Err(QmpError::Io(ErrorKind::TimedOut.into())),
                Some(Message::Event(e)) => self.queued.push_back(Incoming::Event(e)),
                Some(Message::Return { id: rid, value }) if rid == Some(json!(id)) => {
                    return Ok(value)
                }
                Some(Message::Error {
                    id: rid,
                    class,
                    desc,
                }) if rid == Some(json!(id)) => {
                    return Err(QmpError::Command {
                        command: command.into(),
                        class,
                        desc,
                    })
                }
                Some(m) => {
                    // A commander's answer, a reply to a command that timed
                    // out, or a stray greeting.
                    if let Some(a) = commander_answer(m) {
                        self.queued.push_back(Incoming::Answer(a));
                    }
                }
            }
        }
    }

    /// A handle that sends commands on this session's socket from another
    /// thread; their answers come out of [`Qmp::next`].
    pub fn commander(&self) -> Result<Commander, QmpError> {
        Ok(Commander::new(self.reader.get_ref().try_clone()?))
    }

    /// The next event; `Ok(None)` if none arrived within `wait`, so the
    /// caller can check whether it should stop. `Err(Closed)` at EOF.
    /// Answers to a [`Commander`]'s commands are skipped.
    pub fn next_event(&mut self, wait: Duration) -> Result<Option<Event>, QmpError> {
        loop {
            match self.next(wait)? {
                None => return Ok(None),
                Some(Incoming::Event(e)) => return Ok(Some(e)),
                Some(Incoming::Answer(_)) => {}
            }
        }
    }

    /// The next event or answer to a [`Commander`]'s command; `Ok(None)`
    /// if none arrived within `wait`. `Err(Closed)` at EOF.
    pub fn next(&mut self, wait: Duration) -> Result<Option<Incoming>, QmpError> {
        if let Some(e) = self.queued.pop_front() {
            return Ok(Some(e));
        }
        // A zero timeout means "block forever" to the kernel.
        let wait = wait.max(Duration::from_millis(1));
        self.reader.get_ref().set_read_timeout(Some(wait))?;
        loop {
            match self.read_message()? {
                None => return Ok(None),
                Some(Message::Event(e)) => return Ok(Some(Incoming::Event(e))),
                Some(m) => {
                    if let Some(a) = commander_answer(m) {
                        return Ok(Some(Incoming::Answer(a)));
                    }
                    // Late replies to commands that timed out: nothing to do.
                }
            }
        }
    }

    /// Reads one message; `Ok(None)` if the read timed out first.
    fn read_message(&mut self) -> Result<Option<Message>, QmpError> {
        loop {
            let room = MAX_LINE.saturating_sub(self.partial.len() as u64);
            let read = (&mut self.reader)
                .take(room)
                .read_until(b'\n', &mut self.partial);
            match read {
                Ok(0) if room == 0 => return Err(QmpError::TooLong),
                Ok(0) => return Err(QmpError::Closed),
                Ok(_) if self.partial.last() == Some(&b'\n') => {
                    let line = std::mem::take(&mut self.partial);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return parse(&line).map(Some);
                }
                // A line cut by the length limit or by EOF: go round, the
                // next read tells which.
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(QmpError::Io(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::thread;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 10}, "package": ""}, "capabilities": ["oob"]}}"#;

    /// A fake QEMU on one end of a socketpair: sends the greeting, then for
    /// each command line it reads calls `answer`, which returns lines to send.
    fn fake(
        mut answer: impl FnMut(&Value) -> Vec<String> + Send + 'static,
        after: Vec<String>,
    ) -> (UnixStream, thread::JoinHandle<Vec<Value>>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || {
            let mut seen = Vec::new();
            let mut w = theirs.try_clone().unwrap();
            writeln!(w, "{GREETING}").unwrap();
            let mut r = BufReader::new(theirs);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                let cmd: Value = serde_json::from_str(&line).unwrap();
                line.clear();
                for l in answer(&cmd) {
                    w.write_all(l.as_bytes()).unwrap();
                }
                let done = cmd["execute"] == "query-status";
                seen.push(cmd);
                if done {
                    for l in &after {
                        w.write_all(l.as_bytes()).unwrap();
                    }
                    break;
                }
            }
            seen
        });
        (ours, t)
    }

    fn ret(cmd: &Value, v: &str) -> String {
        format!("{{\"return\": {v}, \"id\": {}}}\n", cmd["id"])
    }

    fn ev(name: &str, data: &str, s: i64, us: i64) -> String {
        format!(
            "{{\"timestamp\": {{\"seconds\": {s}, \"microseconds\": {us}}}, \"event\": \"{name}\", \"data\": {data}}}\n"
        )
    }

    #[test]
    fn handshake_status_and_events_with_timestamps() {
        let (s, t) = fake(
            |cmd| match cmd["execute"].as_str().unwrap() {
                "qmp_capabilities" => vec![ret(cmd, "{}")],
                // An event that overtakes the reply must not be lost.
                "query-status" => vec![
                    ev("STOP", "{}", 1700000000, 5),
                    ret(cmd, r#"{"status": "paused", "singlestep": false, "running": false}"#),
                ],
                _ => vec![],
            },
            vec![
                ev("RESUME", "{}", 1700000001, 250000),
                ev("MIGRATION", r#"{"status": "completed"}"#, 1700000002, 0),
                ev("SHUTDOWN", r#"{"guest": true, "reason": "guest-shutdown"}"#, 1700000003, 1),
                "{\"timestamp\": {\"seconds\": 1700000004, \"microseconds\": 0}, \"event\": \"POWERDOWN\"}\n".into(),
            ],
        );
        let mut q = Qmp::handshake(s).unwrap();
        let st = q.query_status().unwrap();
        assert_eq!(
            st,
            Status {
                status: "paused".into(),
                running: false
            }
        );
        let w = Duration::from_secs(2);
        let e = q.next_event(w).unwrap().unwrap();
        assert_eq!(e.kind, EventKind::Stop);
        assert_eq!(
            e.timestamp,
            Timestamp {
                seconds: 1700000000,
                microseconds: 5
            }
        );
        let e = q.next_event(w).unwrap().unwrap();
        assert_eq!(e.kind, EventKind::Resume);
        assert_eq!(
            e.timestamp.to_system_time().unwrap(),
            UNIX_EPOCH + Duration::from_micros(1_700_000_001_250_000)
        );
        assert_eq!(e.timestamp.display(), "1700000001.250000");
        assert_eq!(
            q.next_event(w).unwrap().unwrap().kind,
            EventKind::Migration {
                status: "completed".into()
            }
        );
        assert_eq!(
            q.next_event(w).unwrap().unwrap().kind,
            EventKind::Shutdown {
                guest: true,
                reason: Some("guest-shutdown".into())
            }
        );
        assert_eq!(
            q.next_event(w).unwrap().unwrap().kind,
            EventKind::Other("POWERDOWN".into())
        );
        let seen = t.join().unwrap();
        assert_eq!(seen[0]["execute"], "qmp_capabilities");
        assert_eq!(seen[1]["execute"], "query-status");
        assert_ne!(seen[0]["id"], seen[1]["id"]);
        // The fake hung up.
        assert!(matches!(q.next_event(w), Err(QmpError::Closed)));
    }

    #[test]
    fn silence_is_a_timeout_not_an_error_and_split_lines_join() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || {
            let mut w = theirs.try_clone().unwrap();
            let mut r = BufReader::new(theirs);
            writeln!(w, "{GREETING}").unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let cmd: Value = serde_json::from_str(&line).unwrap();
            w.write_all(ret(&cmd, "{}").as_bytes()).unwrap();
            // Half an event, a pause longer than the reader's wait, the rest.
            let e = ev("RESUME", "{}", 5, 6);
            let (a, b) = e.split_at(20);
            w.write_all(a.as_bytes()).unwrap();
            thread::sleep(Duration::from_millis(150));
            w.write_all(b.as_bytes()).unwrap();
            thread::sleep(Duration::from_millis(100));
        });
        let mut q = Qmp::handshake(ours).unwrap();
        assert!(q.next_event(Duration::from_millis(50)).unwrap().is_none());
        let mut got = None;
        for _ in 0..20 {
            if let Some(e) = q.next_event(Duration::from_millis(50)).unwrap() {
                got = Some(e);
                break;
            }
        }
        assert_eq!(
            got.unwrap().timestamp,
            Timestamp {
                seconds: 5,
                microseconds: 6
            }
        );
        t.join().unwrap();
    }

    #[test]
    fn garbage_from_qemu_is_an_error_not_a_panic() {
        let bad = [
            "not json\n",
            "[1,2]\n",
            "{\"event\": \"RESUME\"}\n",
            "{\"event\": \"MIGRATION\", \"data\": {}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 0}}\n",
            "{\"timestamp\": {\"seconds\": \"x\", \"microseconds\": 0}, \"event\": \"STOP\"}\n",
            "{\"foo\": 1}\n",
        ];
        for b in bad {
            let (ours, theirs) = UnixStream::pair().unwrap();
            let line = b.to_string();
            let t = thread::spawn(move || {
                let mut w = theirs.try_clone().unwrap();
                let mut r = BufReader::new(theirs);
                writeln!(w, "{GREETING}").unwrap();
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                let cmd: Value = serde_json::from_str(&l).unwrap();
                w.write_all(ret(&cmd, "{}").as_bytes()).unwrap();
                w.write_all(line.as_bytes()).unwrap();
                thread::sleep(Duration::from_millis(50));
            });
            let mut q = Qmp::handshake(ours).unwrap();
            let r = q.next_event(Duration::from_secs(2));
            assert!(matches!(r, Err(QmpError::Bad(_))), "{b:?}: {r:?}");
            t.join().unwrap();
        }
    }

    #[test]
    fn command_errors_and_missing_greeting() {
        let (s, t) = fake(
            |cmd| {
                vec![format!(
                    "{{\"error\": {{\"class\": \"CommandNotFound\", \"desc\": \"nope\"}}, \"id\": {}}}\n",
                    cmd["id"]
                )]
            },
            vec![],
        );
        match Qmp::handshake(s) {
            Err(QmpError::Command { class, .. }) => assert_eq!(class, "CommandNotFound"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("handshake succeeded"),
        }
        drop(t);

        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        assert!(matches!(Qmp::handshake(ours), Err(QmpError::Closed)));

        let (ours, theirs) = UnixStream::pair().unwrap();
        (&theirs)
            .write_all(ev("STOP", "{}", 1, 1).as_bytes())
            .unwrap();
        assert!(matches!(Qmp::handshake(ours), Err(QmpError::Bad(_))));
    }

    #[test]
    fn an_endless_line_is_refused() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            let mut w = &theirs;
            for _ in 0..(MAX_LINE as usize / chunk.len() + 2) {
                if w.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
        assert!(matches!(Qmp::handshake(ours), Err(QmpError::TooLong)));
        t.join().unwrap();
    }

    #[test]
    fn connects_over_a_unix_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.qmp");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let t = thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            writeln!(w, "{GREETING}").unwrap();
            let mut r = BufReader::new(s);
            let mut l = String::new();
            while r.read_line(&mut l).unwrap_or(0) > 0 {
                let cmd: Value = serde_json::from_str(&l).unwrap();
                l.clear();
                let body = if cmd["execute"] == "query-status" {
                    r#"{"status": "running", "running": true}"#
                } else {
                    "{}"
                };
                w.write_all(ret(&cmd, body).as_bytes()).unwrap();
            }
        });
        let mut q = Qmp::connect(&path).unwrap();
        assert!(q.query_status().unwrap().running);
        drop(q);
        t.join().unwrap();
        assert!(Qmp::connect(&dir.path().join("absent.qmp")).is_err());
    }

    #[test]
    fn bad_timestamps_have_no_time() {
        let t = |s, us| Timestamp {
            seconds: s,
            microseconds: us,
        };
        assert!(t(-1, 0).to_system_time().is_none());
        assert!(t(1, -1).to_system_time().is_none());
        assert!(t(1, 1_000_000).to_system_time().is_none());
        // Huge but well-formed: an answer either way, never a panic.
        let _ = t(i64::MAX, 999_999).to_system_time();
        assert_eq!(t(0, 0).to_system_time(), Some(UNIX_EPOCH));
    }

    #[test]
    fn a_commander_sends_from_another_handle_and_its_answers_come_with_the_events() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || {
            let mut w = theirs.try_clone().unwrap();
            let mut r = BufReader::new(theirs);
            writeln!(w, "{GREETING}").unwrap();
            let mut seen = Vec::new();
            for _ in 0..4 {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                let cmd: Value = serde_json::from_str(&l).unwrap();
                match cmd["execute"].as_str().unwrap() {
                    "migrate-continue" if cmd["id"] == "homeward-1" => {
                        w.write_all(ev("MIGRATION", r#"{"status": "device"}"#, 1, 2).as_bytes())
                            .unwrap();
                        w.write_all(ret(&cmd, "{}").as_bytes()).unwrap();
                    }
                    "migrate-continue" => writeln!(
                        w,
                        r#"{{"error": {{"class": "GenericError", "desc": "not paused"}}, "id": {}}}"#,
                        cmd["id"]
                    )
                    .unwrap(),
                    "query-status" => {
                        // A commander's answer overtakes this reply.
                        w.write_all(ret(&json!({"id": "homeward-9"}), "{}").as_bytes())
                            .unwrap();
                        w.write_all(
                            ret(&cmd, r#"{"status": "paused", "running": false}"#).as_bytes(),
                        )
                        .unwrap();
                    }
                    _ => w.write_all(ret(&cmd, "{}").as_bytes()).unwrap(),
                }
                seen.push(cmd);
            }
            seen
        });
        let mut q = Qmp::handshake(ours).unwrap();
        let c = q.commander().unwrap();
        let arg = json!({"state": "pre-switchover"});
        assert_eq!(
            c.clone()
                .send("migrate-continue", Some(arg.clone()))
                .unwrap(),
            "homeward-1"
        );
        let w = Duration::from_secs(2);
        let mut got = Vec::new();
        while got.len() < 2 {
            got.extend(q.next(w).unwrap());
        }
        assert_eq!(
            got[0],
            Incoming::Event(Event {
                kind: EventKind::Migration {
                    status: "device".into()
                },
                timestamp: Timestamp {
                    seconds: 1,
                    microseconds: 2
                }
            })
        );
        assert_eq!(
            got[1],
            Incoming::Answer(Answer {
                id: "homeward-1".into(),
                error: None
            })
        );
        assert_eq!(c.send("migrate-continue", None).unwrap(), "homeward-2");
        let a = loop {
            if let Some(a) = q.next(w).unwrap() {
                break a;
            }
        };
        assert_eq!(
            a,
            Incoming::Answer(Answer {
                id: "homeward-2".into(),
                error: Some("GenericError: not paused".into())
            })
        );
        // An answer that arrives while the session waits for its own is
        // queued, not lost.
        assert!(!q.query_status().unwrap().running);
        assert!(matches!(q.next(w).unwrap(), Some(Incoming::Answer(a)) if a.id == "homeward-9"));
        let seen = t.join().unwrap();
        assert_eq!(seen[1]["arguments"], arg);
        assert!(seen[2].get("arguments").is_none());
    }
}
