//! `fp-tables`: inspect a shared-memory table file, or publish a port map
//! into one by hand (for bring-up, tests and benchmarks; in production the
//! control process publishes).
#![forbid(unsafe_code)]

use fastpath_tables::{Port, Reader, SectionKind, TableFile, Writer};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage:
  fp-tables summary FILE
  fp-tables dump FILE SECTION
  fp-tables slot FILE OUT
  fp-tables publish FILE [--capacity BYTES] [--port ID:NAME:DATAPATH:PORTKEY[:local]]...
                         [--filler BYTES] [--pace-ms MS --chunk BYTES] [--wait-acks]
";

fn fail(msg: &str) -> ExitCode {
    eprintln!("fp-tables: {msg}");
    ExitCode::from(2)
}

fn parse_port(spec: &str) -> Result<Port, String> {
    let f: Vec<&str> = spec.split(':').collect();
    if f.len() < 4 || f.len() > 5 {
        return Err(format!(
            "--port {spec:?}: expected ID:NAME:DATAPATH:PORTKEY[:local]"
        ));
    }
    let num = |s: &str, what: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("--port {spec:?}: {what} {s:?} is not a number"))
    };
    Ok(Port {
        port_id: u16::try_from(num(f[0], "id")?)
            .map_err(|_| format!("--port {spec:?}: id out of range"))?,
        name: f[1].to_string(),
        datapath_key: num(f[2], "datapath key")?,
        port_key: num(f[3], "port key")?,
        is_local: f.get(4) == Some(&"local"),
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("summary") if args.len() == 2 => match open_current(&args[1]) {
            Ok(s) => {
                print!("{}", s.summary());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        },
        Some("dump") if args.len() == 3 => {
            let kind = match SectionKind::from_name(&args[2])
                .or_else(|| args[2].parse().ok().map(SectionKind))
            {
                Some(k) => k,
                None => return fail(&format!("unknown section {:?}", args[2])),
            };
            match open_current(&args[1]) {
                Ok(s) => match s.dump(kind) {
                    Some(t) => {
                        print!("{t}");
                        ExitCode::SUCCESS
                    }
                    None => fail(&format!(
                        "generation {} has no section {:?}",
                        s.generation(),
                        args[2]
                    )),
                },
                Err(e) => fail(&e.to_string()),
            }
        }
        Some("slot") if args.len() == 3 => match open_current(&args[1]) {
            Ok(s) => match std::fs::write(&args[2], s.slot_bytes()) {
                Ok(()) => {
                    println!(
                        "generation {}: {} bytes written to {}",
                        s.generation(),
                        s.slot_bytes().len(),
                        args[2]
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&format!("writing {}: {e}", args[2])),
            },
            Err(e) => fail(&e.to_string()),
        },
        Some("publish") if args.len() >= 2 => publish(&args[1], &args[2..]),
        _ => {
            eprint!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// The current snapshot of the file at `path`, opened read-only.
fn open_current(path: &str) -> Result<fastpath_tables::Snapshot, String> {
    let reader = Reader::open_readonly(path).map_err(|e| e.to_string())?;
    reader
        .current()
        .map_err(|r| format!("generation {} refused: {}", r.generation, r.reason.name()))
}

fn publish(path: &str, rest: &[String]) -> ExitCode {
    let mut capacity: usize = 4 << 20;
    let mut ports = Vec::new();
    let mut filler = 0usize;
    let mut pace = Duration::ZERO;
    let mut chunk = usize::MAX;
    let mut wait_acks = false;
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let r: Result<(), String> = (|| {
            match a.as_str() {
                "--capacity" => {
                    capacity = val("--capacity")?.parse().map_err(|_| "bad --capacity")?
                }
                "--port" => ports.push(parse_port(&val("--port")?)?),
                "--filler" => filler = val("--filler")?.parse().map_err(|_| "bad --filler")?,
                "--pace-ms" => {
                    pace = Duration::from_millis(
                        val("--pace-ms")?.parse().map_err(|_| "bad --pace-ms")?,
                    )
                }
                "--chunk" => chunk = val("--chunk")?.parse().map_err(|_| "bad --chunk")?,
                "--wait-acks" => wait_acks = true,
                other => return Err(format!("unknown option {other:?}")),
            }
            Ok(())
        })();
        if let Err(e) = r {
            return fail(&e);
        }
    }
    ports.sort_by_key(|p| p.port_id);
    let writer = if std::path::Path::new(path).exists() {
        Writer::open(path)
    } else {
        TableFile::create(path, capacity)
    };
    let mut writer = match writer {
        Ok(w) => w,
        Err(e) => return fail(&e.to_string()),
    };
    let mut b = writer.builder();
    if let Err(e) = b.add_ports(&ports) {
        return fail(&e.to_string());
    }
    if filler > 0 {
        // An opaque section of the given size: for publish-cost benchmarks and
        // for stretching a paced write.
        let bytes: Vec<u8> = (0..filler).map(|i| i as u8).collect();
        if let Err(e) = b.add_section(SectionKind(0xF111), &bytes) {
            return fail(&e.to_string());
        }
    }
    let t0 = Instant::now();
    let r = writer.publish_paced(b, chunk, pace, |_| {});
    let publish_time = t0.elapsed();
    let generation = match r {
        Ok(g) => g,
        Err(e) => return fail(&e.to_string()),
    };
    let mut line = format!(
        "published generation {generation} in {:.3} ms",
        publish_time.as_secs_f64() * 1e3
    );
    if wait_acks {
        let start = Instant::now();
        loop {
            let readers = writer.readers();
            if readers.iter().all(|r| r.generation >= generation) {
                line += &format!(
                    "; all {} reader(s) acknowledged after {:.1} us",
                    readers.len(),
                    start.elapsed().as_secs_f64() * 1e6
                );
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                line += "; readers did not all acknowledge within 10 s";
                println!("{line}");
                return ExitCode::from(1);
            }
            std::hint::spin_loop();
        }
    }
    println!("{line}");
    ExitCode::SUCCESS
}
