//! The tape format over the virtual library: records and filemarks, the early warning and the
//! end of the medium, archives read back with damaged blocks as holes (never wrong bytes), and
//! the barcode grammar.

use kura_tape::Error;
use kura_tape::archive::{ArchiveReader, ArchiveWriter};
use kura_tape::drive::{Changer, Drive, Record};
use kura_tape::format::EntryKind;
use kura_tape::vlib::{VirtualLibrary, VlibConfig, parse_barcodes};
use proptest::prelude::*;

fn lib(dir: &std::path::Path, capacity: u64, ew: u64) -> VirtualLibrary {
    VirtualLibrary::create(
        &dir.join("lib"),
        VlibConfig {
            v: 1,
            drives: 2,
            slots: 4,
            import_export: 0,
            capacity,
            early_warning: ew,
            load_delay_ms: 0,
        },
        &["T1".into(), "T2".into()],
    )
    .unwrap()
}

fn loaded(l: &VirtualLibrary) -> Box<dyn Drive> {
    l.changer().load(1, 0).unwrap();
    Box::new(l.drive(0).unwrap())
}

#[test]
fn records_filemarks_positioning_and_the_end_of_the_medium() {
    let d = tempfile::tempdir().unwrap();
    let l = lib(d.path(), 1000, 200);
    let mut drive = loaded(&l);
    let mut buf = vec![0u8; 1 << 20];
    // Nothing written: end of data.
    assert_eq!(drive.read_block(&mut buf).unwrap(), Record::EndOfData);
    drive.rewind().unwrap();
    assert!(!drive.write_block(&[1; 100]).unwrap().early_warning);
    drive.write_filemarks(1).unwrap();
    assert!(!drive.write_block(&[2; 100]).unwrap().early_warning);
    drive.write_filemarks(1).unwrap();
    // 2 files; the early warning comes past 800 bytes, the end at 1000.
    let mut warned = false;
    let mut written = 0;
    loop {
        match drive.write_block(&[3; 100]) {
            Ok(w) => {
                written += 1;
                warned |= w.early_warning;
            }
            Err(Error::EndOfMedium(_)) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        warned && written >= 2,
        "warned before the end ({written} blocks)"
    );
    // The filemark still fits.
    drive.write_filemarks(1).unwrap();
    assert_eq!(drive.to_end_of_data().unwrap(), 3);
    drive.locate_file(1).unwrap();
    assert_eq!(drive.read_block(&mut buf).unwrap(), Record::Block(100));
    assert_eq!(&buf[..100], &[2; 100]);
    assert_eq!(drive.read_block(&mut buf).unwrap(), Record::Filemark);
    // Writing after file 0 erases everything after it.
    drive.locate_file(1).unwrap();
    drive.write_block(&[9; 10]).unwrap();
    assert_eq!(drive.to_end_of_data().unwrap(), 1);
    assert!(matches!(drive.locate_file(5), Err(Error::Format(_))));
    // A tape cut short reads as the end of data, never a panic.
    let path = l.tape_path("T1");
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    drive.locate_file(1).unwrap();
    assert_eq!(drive.read_block(&mut buf).unwrap(), Record::EndOfData);
    // A second process cannot take the drive.
    assert!(matches!(l.drive(0), Err(Error::Refused(_))));
    // No tape: said so.
    let mut empty = l.drive(1).unwrap();
    assert!(matches!(empty.rewind(), Err(Error::NoTape(_))));
}

#[test]
fn the_changer_moves_tapes_and_refuses_impossible_moves() {
    let d = tempfile::tempdir().unwrap();
    let l = lib(d.path(), 1 << 20, 1 << 10);
    let mut c = l.changer();
    assert!(
        matches!(c.load(3, 0), Err(Error::Changer { .. })),
        "empty slot"
    );
    c.load(1, 0).unwrap();
    assert!(
        matches!(c.load(2, 0), Err(Error::Changer { .. })),
        "drive full"
    );
    assert!(
        matches!(c.unload(0, 2), Err(Error::Changer { .. })),
        "slot full"
    );
    c.unload(0, 3).unwrap();
    let st = c.status().unwrap();
    assert_eq!(st.slot_of("T1"), Some(3));
    l.export("T1").unwrap();
    assert_eq!(l.shelf().unwrap(), vec!["T1".to_string()]);
    assert_eq!(l.import("T1").unwrap(), 1);
    assert!(l.import("../x").is_err(), "a barcode is a name, not a path");
}

fn write_archive(drive: &mut dyn Drive, objects: &[Vec<u8>], block: usize) -> Vec<usize> {
    let mut w = ArchiveWriter::begin(block).unwrap();
    let mut n = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        let mut id = [0u8; 32];
        id[0] = i as u8;
        n.push(
            w.write_entry(drive, EntryKind::Pack, id, 0, o.len() as u64, o)
                .unwrap(),
        );
    }
    w.finish(drive).unwrap();
    n
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Whatever bytes are flipped, an entry's bytes outside its holes are the bytes written.
    #[test]
    fn damage_shows_as_holes_never_as_wrong_bytes(
        sizes in proptest::collection::vec(0usize..20_000, 1..6),
        flips in proptest::collection::vec((0.0f64..1.0, 1u8..=255), 0..4),
        block in 200usize..3000,
    ) {
        let d = tempfile::tempdir().unwrap();
        let l = lib(d.path(), 1 << 30, 1 << 20);
        let mut drive = loaded(&l);
        let objects: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| (0..*n).map(|k| (k * 31 + i * 7) as u8).collect())
            .collect();
        drive.rewind().unwrap();
        let n = write_archive(drive.as_mut(), &objects, block);
        prop_assert!(n.iter().zip(&objects).all(|(n, o)| *n == o.len()));
        // Flip bytes anywhere past the first record header (headers are the drive's framing).
        let path = l.tape_path("T1");
        let mut bytes = std::fs::read(&path).unwrap();
        let len = bytes.len();
        for (at, x) in &flips {
            let i = 8 + ((len - 8) as f64 * at) as usize;
            if i < len { bytes[i] ^= x; }
        }
        std::fs::write(&path, &bytes).unwrap();
        drive.rewind().unwrap();
        let mut r = ArchiveReader::new(drive.as_mut());
        while let Ok(Some(e)) = r.next_entry() {
            let i = e.header.id[0] as usize;
            prop_assert!(i < objects.len());
            let want = &objects[i][e.header.offset as usize..];
            for (k, b) in e.data.iter().enumerate() {
                let in_hole = e.holes.iter().any(|(s, l)| (k as u64) >= *s && (k as u64) < s + l);
                if !in_hole {
                    prop_assert_eq!(*b, want[k], "byte {} of object {}", k, i);
                }
            }
        }
    }
}

#[test]
fn the_early_warning_cuts_an_entry_and_the_rest_fits_after() {
    let d = tempfile::tempdir().unwrap();
    let l = lib(d.path(), 64 << 10, 16 << 10);
    let mut drive = loaded(&l);
    drive.rewind().unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut w = ArchiveWriter::begin(4096).unwrap();
    let n = w
        .write_entry(
            drive.as_mut(),
            EntryKind::Pack,
            [1; 32],
            0,
            big.len() as u64,
            &big,
        )
        .unwrap();
    assert!(n > 0 && n < big.len(), "cut at the warning: {n}");
    assert!(w.early_warning());
    assert_eq!(
        w.write_entry(drive.as_mut(), EntryKind::Pack, [2; 32], 0, 1, &[1])
            .unwrap(),
        0
    );
    assert!(w.finish(drive.as_mut()).unwrap());
    drive.rewind().unwrap();
    let mut r = ArchiveReader::new(drive.as_mut());
    let e = r.next_entry().unwrap().unwrap();
    assert!(e.cut && e.holes.is_empty());
    assert_eq!(e.data.len(), n);
    assert_eq!(&e.data[..], &big[..n]);
    assert!(r.next_entry().unwrap().is_none());
    assert!(r.end().unwrap().clean);
}

#[test]
fn barcode_lists_and_sequences() {
    assert_eq!(
        parse_barcodes("SSC001..SSC003").unwrap(),
        vec!["SSC001", "SSC002", "SSC003"]
    );
    assert_eq!(
        parse_barcodes("A1, B2,SSC09..SSC10").unwrap(),
        vec!["A1", "B2", "SSC09", "SSC10"]
    );
    assert!(parse_barcodes("").unwrap().is_empty());
    for bad in [
        "A01..B03", "A03..A01", "A1..A001", "a/b", "..", "A1,A1", "X..Y",
    ] {
        assert!(parse_barcodes(bad).is_err(), "{bad}");
    }
}
