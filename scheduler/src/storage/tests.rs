use super::*;
use raft::{GetEntriesContext, Storage};

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        data: data.to_vec().into(),
        ..Default::default()
    }
}

#[test]
fn log_and_hard_state_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = SledStore::open(dir.path()).unwrap();
        assert!(s.is_fresh());
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
    let s = SledStore::open(dir.path()).unwrap();
    assert!(!s.is_fresh());
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

#[test]
fn append_truncates_a_conflicting_suffix() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SledStore::open(dir.path()).unwrap();
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

#[test]
fn compaction_keeps_a_snapshot_and_drops_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = SledStore::open(dir.path()).unwrap();
        let es: Vec<Entry> = (1..=10).map(|i| entry(i, 1, b"x")).collect();
        s.append(&es).unwrap();
        let cs = ConfState {
            voters: vec![1, 2],
            ..Default::default()
        };
        s.set_conf_state(&cs).unwrap();
        (s.snapshot_writer())(7, b"state@7").unwrap();
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
    let s = SledStore::open(dir.path()).unwrap();
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (8, 10));
    let snap = s.snapshot(0, 2).unwrap();
    assert_eq!(snap.get_metadata().index, 7);
    assert_eq!(&snap.data[..], b"state@7");
}

#[test]
fn a_snapshot_from_before_a_member_joined_is_refused_and_requested_anew() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SledStore::open(dir.path()).unwrap();
    let es: Vec<Entry> = (1..=5).map(|i| entry(i, 1, b"x")).collect();
    s.append(&es).unwrap();
    let mut cs = ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    };
    s.set_conf_state(&cs).unwrap();
    (s.snapshot_writer())(3, b"old").unwrap();
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
    (s.snapshot_writer())(5, b"new").unwrap();
    s.compact_to(5, &cs, b"new".to_vec()).unwrap();
    assert_eq!(&s.snapshot(0, 4).unwrap().data[..], b"new");
}

#[test]
fn a_received_snapshot_replaces_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = SledStore::open(dir.path()).unwrap();
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
}

#[test]
fn a_directory_that_is_a_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("data");
    std::fs::write(&f, b"not a dir").unwrap();
    let err = SledStore::open(&f)
        .err()
        .expect("opening a file as a data dir fails");
    assert!(err.to_string().contains("data"), "{err}");
}

#[test]
fn a_snapshot_whose_data_vanished_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = SledStore::open(dir.path()).unwrap();
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
    let err = SledStore::open(dir.path())
        .err()
        .expect("missing data is refused");
    assert!(
        err.to_string()
            .contains("the data of the snapshot at index 4 is missing"),
        "{err}"
    );
}

#[test]
fn a_stored_commit_behind_the_snapshot_is_raised_to_it_on_open() {
    // Commit-only hard states are not synced on their own, so a crash can
    // leave the stored commit below a snapshot recorded later; raft-rs
    // refuses to start on such a hard state.
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = SledStore::open(dir.path()).unwrap();
        let es: Vec<Entry> = (1..=10).map(|i| entry(i, 1, b"x")).collect();
        s.append(&es).unwrap();
        let cs = ConfState {
            voters: vec![1],
            ..Default::default()
        };
        s.set_conf_state(&cs).unwrap();
        s.set_hard_state(&HardState {
            term: 1,
            vote: 1,
            commit: 3,
            ..Default::default()
        })
        .unwrap();
        (s.snapshot_writer())(7, b"state@7").unwrap();
        assert!(s.compact_to(7, &cs, b"state@7".to_vec()).unwrap());
        s.sync().unwrap();
    }
    let s = SledStore::open(dir.path()).unwrap();
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
            (s.snapshot_writer())(index, &data).unwrap();
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
