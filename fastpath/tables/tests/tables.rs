//! Writer and readers in one process: publish, read back, restart, refuse.

use std::time::Duration;

use fastpath_tables::{
    Error, Port, Reader, RefusalReason, SectionKind, TableFile, Writer, WriterOptions,
};

fn port(port_id: u16, name: &str) -> Port {
    Port {
        port_id,
        datapath_key: 10,
        port_key: u32::from(port_id) + 100,
        name: name.to_owned(),
        is_local: port_id.is_multiple_of(2),
    }
}

fn publish_ports(writer: &mut Writer, count: u16) -> u64 {
    let mut builder = writer.builder();
    let ports: Vec<Port> = (0..count)
        .map(|id| port(id, &format!("pod-{id}.default")))
        .collect();
    builder.add_ports(&ports).unwrap();
    writer.publish(builder).unwrap()
}

#[test]
fn publish_then_read_in_place_and_as_copy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tables");
    let mut writer = TableFile::create(&path, 1 << 20).unwrap();
    let reader = Reader::open(&path).unwrap();
    let inspector = Reader::open_readonly(&path).unwrap();
    assert_eq!(reader.generation(), 0);
    assert_eq!(
        reader.current().unwrap_err().reason,
        RefusalReason::NotPublished
    );
    assert_eq!(
        inspector.current().unwrap_err().reason,
        RefusalReason::NotPublished
    );

    let mut builder = writer.builder();
    builder
        .add_ports(&[port(4, "a.ns"), port(1, "b.ns")])
        .unwrap();
    builder
        .add_section(SectionKind(900), &[7u32, 8, 9])
        .unwrap();
    assert_eq!(writer.publish(builder).unwrap(), 1);
    assert_eq!(reader.generation(), 1);

    for snapshot in [reader.current().unwrap(), inspector.current().unwrap()] {
        assert_eq!(snapshot.generation(), 1);
        assert!(snapshot.publish_time_ns() > 0);
        let ports = snapshot.ports();
        assert_eq!(ports.len(), 2);
        let four = ports.get(4).unwrap();
        assert_eq!(ports.name(four).as_deref(), Some("a.ns"));
        assert_eq!(four.port_key, 104);
        assert!(four.is_local());
        assert_eq!(
            snapshot.section::<u32>(SectionKind(900)),
            Some(&[7u32, 8, 9][..])
        );
        assert_eq!(
            snapshot.dump(SectionKind::PORTS).unwrap().lines().count(),
            2
        );
        assert!(snapshot
            .dump(SectionKind(900))
            .unwrap()
            .starts_with("kind 900 (unknown) count 3"));
        let summary = snapshot.summary().to_string();
        assert!(summary.contains("generation 1\n"), "{summary}");
        assert!(
            summary.contains("(ports) count 2 element_size 24"),
            "{summary}"
        );
    }
    // The read-write reader registered its control entry and acked 1.
    let readers = reader.readers();
    assert_eq!(readers.len(), 1);
    assert_eq!(readers[0].generation, 1);
    assert_eq!(readers[0].pid, std::process::id());
    assert!(matches!(inspector.register_reader(), Err(Error::ReadOnly)));
    assert_eq!(reader.refusals().total(), 1);
}

#[test]
fn restarted_writer_continues_and_new_reader_sees_last_generation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tables");
    let mut writer = TableFile::create(&path, 1 << 20).unwrap();
    publish_ports(&mut writer, 3);
    publish_ports(&mut writer, 5);
    assert!(matches!(Writer::open(&path), Err(Error::WriterLocked)));
    drop(writer);

    let reader = Reader::open(&path).unwrap();
    let snapshot = reader.current().unwrap();
    assert_eq!((snapshot.generation(), snapshot.ports().len()), (2, 5));

    let mut writer = Writer::open(&path).unwrap();
    assert_eq!(publish_ports(&mut writer, 7), 3);
    assert_eq!(reader.current().unwrap().ports().len(), 7);

    // Re-creating (e.g. larger) keeps counting and tells old readers.
    drop(writer);
    let mut writer = TableFile::create(&path, 4 << 20).unwrap();
    assert!(reader.is_superseded());
    let fresh = Reader::open(&path).unwrap();
    assert_eq!(fresh.generation(), 3);
    assert_eq!(
        fresh.current().unwrap_err().reason,
        RefusalReason::NotPublished
    );
    assert_eq!(publish_ports(&mut writer, 1), 4);
    assert_eq!(fresh.current().unwrap().generation(), 4);
}

#[test]
fn slot_too_large_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tables");
    let mut writer = TableFile::create(&path, 8192).unwrap();
    let mut builder = writer.builder();
    builder
        .add_section(SectionKind(50), &vec![0u64; 4096])
        .unwrap();
    match writer.publish(builder) {
        Err(Error::SlotTooLarge { needed, capacity }) => assert!(needed > capacity),
        other => panic!("expected SlotTooLarge, got {other:?}"),
    }
    assert_eq!(writer.generation(), 0);
}

#[test]
fn live_reader_that_does_not_ack_blocks_then_stale_one_is_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tables");
    let options = WriterOptions {
        reader_timeout: Duration::from_secs(60),
        publish_timeout: Duration::from_millis(100),
        check_pids: true,
    };
    let mut writer = TableFile::create_with(&path, 1 << 20, options).unwrap();
    publish_ports(&mut writer, 1);
    let reader = Reader::open(&path).unwrap();
    let handle = reader.register_reader_as(3).unwrap();
    assert_eq!(handle.acked(), 1);
    // Generation 2 goes into the other slot; generation 3 needs slot 1 back.
    publish_ports(&mut writer, 2);
    let snapshot = handle.current().unwrap();
    assert_eq!(snapshot.generation(), 2);
    let mut builder = writer.builder();
    builder.add_ports(&[port(1, "x")]).unwrap();
    match writer.publish(builder) {
        Err(Error::ReadersBusy {
            generation,
            readers,
        }) => {
            assert_eq!(generation, 3);
            assert_eq!(readers, vec![handle.index()]);
        }
        other => panic!("expected ReadersBusy, got {other:?}"),
    }
    // Still readable: the failed publish did not touch generation 2.
    assert_eq!(handle.current().unwrap().ports().len(), 2);
    handle.ack(2).unwrap();
    assert!(matches!(handle.ack(9), Err(Error::AckAhead { .. })));
    assert_eq!(publish_ports(&mut writer, 3), 3);

    // A reader whose heartbeat goes stale is reclaimed and does not block.
    drop(writer);
    let options = WriterOptions {
        reader_timeout: Duration::from_millis(20),
        ..options
    };
    let mut writer = Writer::open_with(&path, options).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    publish_ports(&mut writer, 4);
    publish_ports(&mut writer, 5);
    assert!(matches!(handle.ack(5), Err(Error::Reclaimed)));
    assert_eq!(
        handle.current().unwrap_err().reason,
        RefusalReason::ReaderReclaimed
    );
    assert!(reader
        .readers()
        .iter()
        .all(|info| info.index != handle.index()));
}

#[test]
fn corrupted_slot_is_refused_and_counted_and_last_good_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tables");
    let mut writer = TableFile::create(&path, 1 << 20).unwrap();
    publish_ports(&mut writer, 2);
    let reader = Reader::open(&path).unwrap();
    let good = reader.current().unwrap();
    publish_ports(&mut writer, 3);
    // Flip a byte in the new slot behind the protocol's back.
    {
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let slot0 = 12288 + 200; // generation 2 lives in slot 0
        let mut byte = [0u8];
        file.seek(SeekFrom::Start(slot0)).unwrap();
        file.read_exact(&mut byte).unwrap();
        file.seek(SeekFrom::Start(slot0)).unwrap();
        file.write_all(&[byte[0] ^ 0x40]).unwrap();
    }
    let refused = reader.current().unwrap_err();
    assert_eq!(
        (refused.generation, refused.reason),
        (2, RefusalReason::BadChecksum)
    );
    assert_eq!(reader.refusals().get(RefusalReason::BadChecksum), 1);
    assert_eq!(good.generation(), 1);
    assert_eq!(good.ports().len(), 2);
}

/// An input the validator fuzzer found: an accepted slot with an empty OVN
/// section whose dump came out blank. Replayed through the fuzz body.
#[test]
fn fuzz_regression_empty_section_dump() {
    let data = include_bytes!("data/fuzz-empty-ovn-section.bin");
    fastpath_tables::fuzz_validate(data);
}

/// A generation's slot bytes, saved on their own (`fp-tables slot`),
/// validate again with the same sections: what the benchmarks load.
#[test]
fn a_saved_slot_validates_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tables");
    let mut writer = TableFile::create(&path, 1 << 20).unwrap();
    publish_ports(&mut writer, 3);
    let mut builder = writer.builder();
    builder.add_ports(&[port(4, "a.ns")]).unwrap();
    builder
        .add_section(SectionKind(900), &[7u32, 8, 9])
        .unwrap();
    assert_eq!(writer.publish(builder).unwrap(), 2);
    let snapshot = Reader::open_readonly(&path).unwrap().current().unwrap();
    let saved = snapshot.slot_bytes().to_vec();
    // The validator wants 8-byte alignment, as a loader gives it.
    let mut words = vec![0u64; saved.len().div_ceil(8)];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
    bytes[..saved.len()].copy_from_slice(&saved);
    let bytes = &bytes[..saved.len()];
    let validated = fastpath_tables::validate::validate_slot(bytes).unwrap();
    assert_eq!({ validated.header.generation }, 2);
    let sections = validated.sections(bytes);
    assert_eq!(sections.ports().len(), 1);
    assert_eq!(
        sections.typed::<u32>(SectionKind(900)),
        Some(&[7u32, 8, 9][..])
    );
    // One byte short of its length, it is refused.
    assert!(fastpath_tables::validate::validate_slot(&bytes[..bytes.len() - 1]).is_err());
}
