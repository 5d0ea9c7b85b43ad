use super::*;
use raft::{GetEntriesContext, Storage};
use std::path::Path;

/// A store on disk, opened the same way whichever it is.
trait Opened: LogStore + Sized {
    fn open_at(dir: &Path) -> StoreResult<Self>;
    fn fresh(&self) -> bool;
}

impl Opened for SledStore {
    fn open_at(dir: &Path) -> StoreResult<Self> {
        SledStore::open(dir)
    }
    fn fresh(&self) -> bool {
        self.is_fresh()
    }
}

impl Opened for EngineStore {
    fn open_at(dir: &Path) -> StoreResult<Self> {
        EngineStore::open(dir)
    }
    fn fresh(&self) -> bool {
        self.is_fresh()
    }
}

/// Each named test, run on both stores.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sled {
            $(#[test]
            fn $name() {
                super::$name::<super::SledStore>()
            })*
        }
        mod on_engine {
            $(#[test]
            fn $name() {
                super::$name::<super::EngineStore>()
            })*
        }
    };
}

on_both!(
    log_and_hard_state_survive_reopen,
    append_truncates_a_conflicting_suffix,
    compaction_keeps_a_snapshot_and_drops_the_prefix,
    a_snapshot_from_before_a_member_joined_is_refused_and_requested_anew,
    a_received_snapshot_replaces_the_log,
    a_directory_that_is_a_file_is_a_clear_error,
    a_snapshot_whose_data_vanished_is_a_clear_error,
    a_stored_commit_behind_the_snapshot_is_raised_to_it_on_open,
    a_state_streamed_to_a_snapshot_reads_back_whole,
);

/// Writes `data` as the data of the snapshot at `index` through `writer`.
fn write_snapshot(writer: &SnapshotWriter, index: u64, data: &[u8]) -> StoreResult<Written> {
    writer(index, &mut |w: &mut dyn std::io::Write| w.write_all(data))
}

/// A store opened at `dir` holding entries 1 to `last` of term 1, with
/// `voters` as its conf state.
fn with_log<S: Opened>(dir: &Path, last: u64, voters: &[u64]) -> (S, ConfState) {
    let mut s = S::open_at(dir).unwrap();
    let es: Vec<Entry> = (1..=last).map(|i| entry(i, 1, b"x")).collect();
    s.append(&es).unwrap();
    let cs = ConfState {
        voters: voters.to_vec(),
        ..Default::default()
    };
    s.set_conf_state(&cs).unwrap();
    (s, cs)
}

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        data: data.to_vec().into(),
        ..Default::default()
    }
}

fn log_and_hard_state_survive_reopen<S: Opened>() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = S::open_at(dir.path()).unwrap();
        assert!(s.fresh());
        s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 2, b"c")])
            .unwrap();
        let hs = HardState {
            term: 2,
            vote: 3,
            commit: 2,
            ..Default::default()
        };
        s.set_hard_state(&hs).unwrap();
        s.sync().unwrap();
    }
    let s = S::open_at(dir.path()).unwrap();
    assert!(!s.fresh());
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 3));
    assert_eq!(s.term(3).unwrap(), 2);
    let es = s
        .entries(1, 4, None, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(
        es.iter().map(|e| e.data.to_vec()).collect::<Vec<_>>(),
        vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
    );
    let st = s.initial_state().unwrap();
    assert_eq!(
        (st.hard_state.term, st.hard_state.vote, st.hard_state.commit),
        (2, 3, 2)
    );
}

fn append_truncates_a_conflicting_suffix<S: Opened>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = S::open_at(dir.path()).unwrap();
    s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
        .unwrap();
    s.append(&[entry(2, 2, b"B")]).unwrap();
    assert_eq!(s.last_index().unwrap(), 2);
    assert_eq!(s.term(2).unwrap(), 2);
    assert!(
        s.entries(1, 4, None, GetEntriesContext::empty(false))
            .is_err()
    );
}

fn compaction_keeps_a_snapshot_and_drops_the_prefix<S: Opened>() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut s, cs) = with_log::<S>(dir.path(), 10, &[1, 2]);
        write_snapshot(&s.snapshot_writer(), 7, b"state@7").unwrap();
        assert!(s.compact_to(7, &cs, b"state@7".to_vec()).unwrap());
        assert!(
            !s.compact_to(3, &cs, b"gone".to_vec()).unwrap(),
            "below the log"
        );
        s.sync().unwrap();
        assert_eq!(s.first_index().unwrap(), 8);
        assert!(matches!(
            s.entries(5, 9, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(raft::StorageError::Compacted))
        ));
        assert_eq!(s.term(7).unwrap(), 1);
    }
    let s = S::open_at(dir.path()).unwrap();
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (8, 10));
    let snap = s.snapshot(0, 2).unwrap();
    assert_eq!(snap.get_metadata().index, 7);
    assert_eq!(&snap.data[..], b"state@7");
}

fn a_snapshot_from_before_a_member_joined_is_refused_and_requested_anew<S: Opened>() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, mut cs) = with_log::<S>(dir.path(), 5, &[1, 2, 3]);
    write_snapshot(&s.snapshot_writer(), 3, b"old").unwrap();
    s.compact_to(3, &cs, b"old".to_vec()).unwrap();
    assert!(!s.take_snapshot_request());
    // Member 4 joined after that snapshot: it would refuse it.
    assert!(matches!(
        s.snapshot(0, 4),
        Err(raft::Error::Store(
            raft::StorageError::SnapshotTemporarilyUnavailable
        ))
    ));
    assert!(s.take_snapshot_request());
    assert!(!s.take_snapshot_request(), "the request is taken once");
    cs.voters.push(4);
    write_snapshot(&s.snapshot_writer(), 5, b"new").unwrap();
    s.compact_to(5, &cs, b"new".to_vec()).unwrap();
    assert_eq!(&s.snapshot(0, 4).unwrap().data[..], b"new");
}

fn a_received_snapshot_replaces_the_log<S: Opened>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = S::open_at(dir.path()).unwrap();
    s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")]).unwrap();
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 50;
    snap.mut_metadata().term = 4;
    snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    s.apply_snapshot(&snap).unwrap();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (51, 50)
    );
    assert_eq!(s.term(50).unwrap(), 4);
    assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
    assert_eq!(s.hard_state().commit, 50);
    s.sync().unwrap();
    drop(s);
    // A snapshot inside the log: the entries after it are another history.
    let mut s = S::open_at(dir.path()).unwrap();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (51, 50)
    );
    let es: Vec<Entry> = (51..=60).map(|i| entry(i, 4, b"x")).collect();
    s.append(&es).unwrap();
    s.sync().unwrap();
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 55;
    snap.mut_metadata().term = 6;
    snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    s.apply_snapshot(&snap).unwrap();
    s.sync().unwrap();
    drop(s);
    let mut s = S::open_at(dir.path()).unwrap();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (56, 55)
    );
    assert_eq!(s.term(55).unwrap(), 6);
    assert!(matches!(
        s.term(57),
        Err(raft::Error::Store(raft::StorageError::Unavailable))
    ));
    s.append(&[entry(56, 6, b"new")]).unwrap();
    s.sync().unwrap();
    drop(s);
    let s = S::open_at(dir.path()).unwrap();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (56, 56)
    );
    let got = s
        .entries(56, 57, None, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!((got[0].term, got[0].data.to_vec()), (6, b"new".to_vec()));
}

fn a_state_streamed_to_a_snapshot_reads_back_whole<S: Opened>() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, cs) = with_log::<S>(dir.path(), 4, &[1]);
    // A state of many leases, large enough to pass through the file's
    // buffer several times, written as it encodes.
    let mut state = crate::state::State::new(Default::default());
    for id in 0..20_000u64 {
        let mut l = crate::state::Lease {
            id,
            principal: format!("user-{id}"),
            ..Default::default()
        };
        l.spec.reason = "streamed".into();
        state.leases.all.insert(id, Box::new(l));
    }
    let whole = state.to_bytes();
    assert!(whole.len() > 512 << 10, "{} bytes", whole.len());
    let written =
        (s.snapshot_writer())(3, &mut |w: &mut dyn std::io::Write| state.write_to(w)).unwrap();
    assert_eq!(written.bytes, whole.len() as u64);
    s.compact_to(3, &cs, written.data).unwrap();
    let snap = s.snapshot(0, 1).unwrap();
    assert_eq!(snap.data.len(), whole.len());
    assert!(
        snap.data[..] == whole[..],
        "the file holds what to_bytes makes"
    );
}

fn a_directory_that_is_a_file_is_a_clear_error<S: Opened>() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("data");
    std::fs::write(&f, b"not a dir").unwrap();
    let err = S::open_at(&f)
        .err()
        .expect("opening a file as a data dir fails");
    assert!(err.to_string().contains("data"), "{err}");
}

fn a_snapshot_whose_data_vanished_is_a_clear_error<S: Opened>() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = S::open_at(dir.path()).unwrap();
        let es: Vec<Entry> = (1..=5).map(|i| entry(i, 1, b"x")).collect();
        s.append(&es).unwrap();
        let cs = ConfState {
            voters: vec![1],
            ..Default::default()
        };
        // Recorded without its data going through the writer first.
        s.compact_to(4, &cs, b"lost".to_vec()).unwrap();
        s.sync().unwrap();
    }
    let err = S::open_at(dir.path())
        .err()
        .expect("missing data is refused");
    assert!(
        err.to_string()
            .contains("the data of the snapshot at index 4 is missing"),
        "{err}"
    );
}

fn a_stored_commit_behind_the_snapshot_is_raised_to_it_on_open<S: Opened>() {
    // Commit-only hard states are not synced on their own, so a crash can
    // leave the stored commit below a snapshot recorded later; raft-rs
    // refuses to start on such a hard state.
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut s, cs) = with_log::<S>(dir.path(), 10, &[1]);
        s.set_hard_state(&HardState {
            term: 1,
            vote: 1,
            commit: 3,
            ..Default::default()
        })
        .unwrap();
        write_snapshot(&s.snapshot_writer(), 7, b"state@7").unwrap();
        assert!(s.compact_to(7, &cs, b"state@7".to_vec()).unwrap());
        s.sync().unwrap();
    }
    let s = S::open_at(dir.path()).unwrap();
    assert_eq!(s.hard_state().commit, 7);
    let cfg = raft::Config {
        id: 1,
        applied: 7,
        ..Default::default()
    };
    let node = raft::RawNode::new(&cfg, s, &slog::Logger::root(slog::Discard, slog::o!()));
    assert!(node.is_ok());
}

#[test]
fn snapshot_data_is_a_file_and_a_store_from_before_moves_its_data_over() {
    let dir = tempfile::tempdir().unwrap();
    let cs = ConfState {
        voters: vec![1],
        ..Default::default()
    };
    {
        let mut s = SledStore::open(dir.path()).unwrap();
        let es: Vec<Entry> = (1..=9).map(|i| entry(i, 1, b"x")).collect();
        s.append(&es).unwrap();
        for (index, data) in [(4u64, b"four".to_vec()), (8, b"eight".to_vec())] {
            write_snapshot(&s.snapshot_writer(), index, &data).unwrap();
            s.compact_to(index, &cs, data).unwrap();
        }
        s.sync().unwrap();
    }
    // The newest two are kept as files; older ones go.
    let files: Vec<String> = std::fs::read_dir(dir.path().join("snapfiles"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    // As a store from before files: the data in a sled database instead.
    let data = std::fs::read(dir.path().join("snapfiles").join(format!("{:020}.snap", 8))).unwrap();
    std::fs::remove_dir_all(dir.path().join("snapfiles")).unwrap();
    {
        let old = sled::open(dir.path().join("snapshots")).unwrap();
        old.insert(8u64.to_be_bytes(), data.clone()).unwrap();
        old.flush().unwrap();
    }
    let s = SledStore::open(dir.path()).unwrap();
    let snap = s.latest_snapshot().unwrap();
    assert_eq!(
        (snap.get_metadata().index, snap.data.to_vec()),
        (8, b"eight".to_vec())
    );
    assert!(
        !dir.path().join("snapshots").exists(),
        "moved over, then removed"
    );
    drop(s);
    let s = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        s.latest_snapshot().unwrap().data.to_vec(),
        b"eight".to_vec()
    );
}

#[test]
fn a_database_still_held_in_this_process_is_waited_for_then_refused() {
    // sled finishes its last writes on a background thread after a drop, so
    // a reopen in the same process can meet its own lock for a moment; sled
    // reports that as ErrorKind::Other, which the wait must still recognise.
    let dir = tempfile::tempdir().unwrap();
    let held = sled_store::open_db(|| sled::Config::new().path(dir.path())).unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(held);
    });
    let reopened = sled_store::open_db(|| sled::Config::new().path(dir.path()));
    release.join().unwrap();
    assert!(reopened.is_ok(), "{:?}", reopened.err());
    drop(reopened);

    // A holder that never lets go is refused after the wait, with sled's words.
    let _kept = sled_store::open_db(|| sled::Config::new().path(dir.path())).unwrap();
    let Err(err) = sled_store::open_db(|| sled::Config::new().path(dir.path())) else {
        panic!("a held database is refused");
    };
    assert!(err.to_string().contains("could not acquire lock"), "{err}");
}

fn sized(index: u64, term: u64, len: usize) -> Entry {
    let mut data = vec![(index % 251) as u8; len];
    data[..8].copy_from_slice(&index.to_be_bytes());
    entry(index, term, &data)
}

#[test]
fn the_engine_reads_old_entries_from_disk_and_new_ones_from_memory() {
    // More entries than the in-memory cache holds: the oldest are read back
    // from raft-engine's files, and a read across the two is seamless.
    let dir = tempfile::tempdir().unwrap();
    let n = 3000u64;
    {
        let mut s = EngineStore::open(dir.path()).unwrap();
        for chunk in (1..=n).collect::<Vec<_>>().chunks(100) {
            let es: Vec<Entry> = chunk.iter().map(|&i| sized(i, 1 + i / 1000, 100)).collect();
            s.append(&es).unwrap();
            s.sync().unwrap();
        }
        let all = s
            .entries(1, n + 1, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(all.len() as u64, n);
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e, &sized(i as u64 + 1, 1 + (i as u64 + 1) / 1000, 100));
        }
        assert_eq!(s.term(5).unwrap(), 1);
        assert_eq!(s.term(2999).unwrap(), 3);
        // A size limit stops a read that starts on disk, inside the disk part.
        let some = s
            .entries(1, n + 1, Some(10_000), GetEntriesContext::empty(false))
            .unwrap();
        assert!(!some.is_empty() && some.len() < 200, "{}", some.len());
        assert_eq!(some[0].index, 1);
        // A conflicting suffix from inside what is on disk.
        s.append(&[sized(1500, 9, 10)]).unwrap();
        assert_eq!(s.last_index().unwrap(), 1500);
        assert_eq!(s.term(1500).unwrap(), 9);
        s.sync().unwrap();
    }
    let s = EngineStore::open(dir.path()).unwrap();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (1, 1500)
    );
    assert_eq!(s.term(1500).unwrap(), 9);
    assert_eq!(s.term(1499).unwrap(), 2);
    let tail = s
        .entries(1498, 1501, None, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(tail[2], sized(1500, 9, 10));
}

#[test]
fn the_engine_keeps_only_what_a_sync_made_durable() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = EngineStore::open(dir.path()).unwrap();
        s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")]).unwrap();
        s.set_hard_state(&HardState {
            term: 1,
            commit: 1,
            ..Default::default()
        })
        .unwrap();
        s.sync().unwrap();
        // Written, readable, but never synced: gone after the store is.
        s.append(&[entry(3, 1, b"c")]).unwrap();
        s.set_commit(2).unwrap();
        assert_eq!(
            s.entries(3, 4, None, GetEntriesContext::empty(false))
                .unwrap()[0]
                .data
                .to_vec(),
            b"c".to_vec()
        );
    }
    let s = EngineStore::open(dir.path()).unwrap();
    assert_eq!(s.last_index().unwrap(), 2);
    assert_eq!(s.hard_state().commit, 1);
}

#[test]
fn the_engine_drops_log_files_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    // Files the purge thread drops while this reads are not counted.
    let on_disk = |d: &Path| -> u64 {
        std::fs::read_dir(d.join("engine"))
            .unwrap()
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum()
    };
    let mut s = EngineStore::open(dir.path()).unwrap();
    let cs = ConfState {
        voters: vec![1],
        ..Default::default()
    };
    // Twice 96 MiB of entries (files are dropped beyond 16 MiB), each time
    // compacted nearly to the end.
    let mut sizes = Vec::new();
    for round in 0..2u64 {
        let from = 1 + round * 1536;
        let to = from + 1535;
        for chunk in (from..=to).collect::<Vec<_>>().chunks(64) {
            let es: Vec<Entry> = chunk.iter().map(|&i| sized(i, 1, 64 << 10)).collect();
            s.append(&es).unwrap();
            s.sync().unwrap();
        }
        let live = s.log_bytes();
        assert!(live > 90 << 20, "{live}");
        write_snapshot(&s.snapshot_writer(), to - 6, b"state").unwrap();
        assert!(s.compact_to(to - 6, &cs, b"state".to_vec()).unwrap());
        s.sync().unwrap();
        // The purge thread drops (or keeps for reuse, up to 24 MiB) files
        // a moment after the engine stops counting them: wait for the disk.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while on_disk(dir.path()) > 40 << 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "log files were not dropped: {live} -> {} bytes in use, {} on disk",
                s.log_bytes(),
                on_disk(dir.path())
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        sizes.push(on_disk(dir.path()));
    }
    // Dropped files are reused, not added to: each round wrote 96 MiB, and
    // the disk came back under 40 MiB (the purge threshold, 16 MiB, and
    // 1.5 times that kept for reuse) both times.
    assert!(sizes.iter().all(|s| *s <= 40 << 20), "{sizes:?}");
    drop(s);
    let s = EngineStore::open(dir.path()).unwrap();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (3067, 3072)
    );
    assert_eq!(
        s.entries(3067, 3068, None, GetEntriesContext::empty(false))
            .unwrap()[0],
        sized(3067, 1, 64 << 10)
    );
}

#[test]
fn a_log_kept_in_sled_moves_to_the_engine_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let cs = ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    };
    let hs = HardState {
        term: 3,
        vote: 2,
        commit: 9,
        ..Default::default()
    };
    {
        let mut s = SledStore::open(dir.path()).unwrap();
        let es: Vec<Entry> = (1..=2500).map(|i| sized(i, 1 + i / 1000, 32)).collect();
        s.append(&es).unwrap();
        s.set_conf_state(&cs).unwrap();
        s.set_hard_state(&hs).unwrap();
        write_snapshot(&s.snapshot_writer(), 7, b"state@7").unwrap();
        assert!(s.compact_to(7, &cs, b"state@7".to_vec()).unwrap());
        s.sync().unwrap();
    }
    // A move that stopped halfway left a half-made log: it is made again.
    std::fs::create_dir_all(dir.path().join("engine.tmp")).unwrap();
    std::fs::write(dir.path().join("engine.tmp").join("junk"), b"x").unwrap();
    for round in 0..2 {
        let s = EngineStore::open(dir.path()).unwrap();
        assert!(!dir.path().join("db").exists(), "sled's files are removed");
        assert!(!dir.path().join("engine.tmp").exists());
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (8, 2500),
            "round {round}"
        );
        assert_eq!(s.hard_state(), hs);
        assert_eq!(s.conf_state(), cs);
        let snap = s.latest_snapshot().unwrap();
        assert_eq!(
            (snap.get_metadata().index, &snap.data[..]),
            (7, &b"state@7"[..])
        );
        let es = s
            .entries(8, 2501, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(es.len(), 2493);
        assert_eq!(es[2492], sized(2500, 3, 32));
        assert_eq!(s.term(1200).unwrap(), 2);
    }
}
