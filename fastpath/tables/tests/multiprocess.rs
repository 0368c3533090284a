//! Writer and readers in separate processes. The test binary re-executes
//! itself with `FASTPATH_TABLES_TEST_ROLE` set to play the child's role.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use fastpath_tables::{Port, Reader, SectionKind, TableFile, Writer};

const ROLE: &str = "FASTPATH_TABLES_TEST_ROLE";
const PATH: &str = "FASTPATH_TABLES_TEST_PATH";

fn ports(count: u16) -> Vec<Port> {
    (0..count)
        .map(|id| Port {
            port_id: id,
            datapath_key: 7,
            port_key: u32::from(id) + 1,
            name: format!("pod-{id}.default"),
            is_local: true,
        })
        .collect()
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Entry point of the child processes; does nothing in a normal test run.
#[test]
fn child_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let path = std::env::var(PATH).expect("child needs a path");
    match role.as_str() {
        "writer-three" => {
            let mut writer = Writer::open(&path).unwrap();
            for count in 1..=3u16 {
                let mut builder = writer.builder();
                builder.add_ports(&ports(count)).unwrap();
                let generation = writer.publish(builder).unwrap();
                say(&format!("PUBLISHED {generation}"));
            }
        }
        "writer-slow" => {
            let mut writer = Writer::open(&path).unwrap();
            let mut builder = writer.builder();
            builder.add_ports(&ports(50)).unwrap();
            builder
                .add_section(SectionKind(500), &vec![0xABu8; 8 << 20])
                .unwrap();
            let mut announced = false;
            writer
                .publish_paced(builder, 64 << 10, Duration::from_millis(5), |_| {
                    if !announced {
                        announced = true;
                        say("COPYING");
                    }
                })
                .unwrap();
            say("DONE");
        }
        "reader-idle" => {
            let reader = Reader::open(&path).unwrap();
            let handle = reader.register_reader().unwrap();
            say(&format!("REGISTERED {} {}", handle.index(), handle.acked()));
            std::thread::sleep(Duration::from_secs(60));
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

struct ChildProcess {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl ChildProcess {
    fn spawn(role: &str, path: &Path) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["child_role", "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env(PATH, path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self { child, stdout }
    }

    /// The next line holding `prefix`, from `prefix` on (other lines skipped).
    fn line(&mut self, prefix: &str) -> String {
        let mut skipped = String::new();
        loop {
            let mut line = String::new();
            let read = self.stdout.read_line(&mut line).unwrap();
            assert!(
                read > 0,
                "child ended before {prefix}; it printed:\n{skipped}"
            );
            // The harness prints "test child_role ... " without a newline.
            if let Some(at) = line.find(prefix) {
                return line[at..].trim_end().to_owned();
            }
            skipped.push_str(&line);
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn wait_success(mut self) {
        assert!(self.child.wait().unwrap().success());
    }
}

fn new_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("tables");
    drop(TableFile::create(&path, 16 << 20).unwrap());
    path
}

#[test]
fn reader_sees_every_generation_from_a_writer_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = new_file(dir.path());
    let reader = Reader::open(&path).unwrap();
    let handle = reader.register_reader().unwrap();
    let child = ChildProcess::spawn("writer-three", &path);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.last() != Some(&3) {
        assert!(Instant::now() < deadline, "saw only {seen:?}");
        let generation = reader.generation();
        if seen.last() == Some(&generation) || generation == 0 {
            std::thread::yield_now();
            continue;
        }
        let snapshot = handle.current().unwrap();
        // Each generation g carries g ports.
        assert_eq!(snapshot.ports().len() as u64, snapshot.generation());
        seen.push(snapshot.generation());
        // The writer cannot publish g+2 before this ack: we see every one.
        handle.ack(snapshot.generation()).unwrap();
    }
    assert_eq!(seen, vec![1, 2, 3]);
    child.wait_success();
}

#[test]
fn writer_killed_mid_write_leaves_readers_on_the_old_generation() {
    let dir = tempfile::tempdir().unwrap();
    let path = new_file(dir.path());
    {
        let mut writer = Writer::open(&path).unwrap();
        let mut builder = writer.builder();
        builder.add_ports(&ports(4)).unwrap();
        assert_eq!(writer.publish(builder).unwrap(), 1);
    }
    let reader = Reader::open(&path).unwrap();
    let handle = reader.register_reader().unwrap();
    let mut child = ChildProcess::spawn("writer-slow", &path);
    child.line("COPYING");
    child.kill();

    assert_eq!(reader.generation(), 1);
    let snapshot = handle.current().unwrap();
    assert_eq!((snapshot.generation(), snapshot.ports().len()), (1, 4));
    // A reader started after the crash gets the last generation at once.
    let fresh = Reader::open(&path).unwrap();
    assert_eq!(fresh.current().unwrap().generation(), 1);
    let inspector = Reader::open_readonly(&path).unwrap();
    assert_eq!(inspector.current().unwrap().ports().len(), 4);

    // A restarted writer takes over the lock and continues the count.
    let mut writer = Writer::open(&path).unwrap();
    let mut builder = writer.builder();
    builder.add_ports(&ports(6)).unwrap();
    assert_eq!(writer.publish(builder).unwrap(), 2);
    assert_eq!(fresh.current().unwrap().ports().len(), 6);
}

#[test]
fn dead_reader_process_does_not_block_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = new_file(dir.path());
    let mut writer = Writer::open(&path).unwrap();
    let mut publish = |count| {
        let mut builder = writer.builder();
        builder.add_ports(&ports(count)).unwrap();
        writer.publish(builder)
    };
    assert_eq!(publish(1).unwrap(), 1);
    let mut child = ChildProcess::spawn("reader-idle", &path);
    let registered = child.line("REGISTERED");
    assert!(registered.ends_with(" 1"), "{registered}");
    let observer = Reader::open_readonly(&path).unwrap();
    let child_pid = child.child.id();
    assert!(observer.readers().iter().any(|info| info.pid == child_pid));
    child.kill();
    // Generation 2 does not need the child's slot; 3 and 4 do.
    assert_eq!(publish(2).unwrap(), 2);
    assert_eq!(publish(3).unwrap(), 3);
    assert_eq!(publish(4).unwrap(), 4);
    assert!(observer.readers().iter().all(|info| info.pid != child_pid));
}
