//! The scheduler's side of [`charter_config::codec`], Charter's versioned
//! binary encoding: log entries, snapshots and forwarded writes. Writing
//! them cannot fail (plain data with string or integer keys; a failure is a
//! broken invariant of the types). Stored entries and snapshots written
//! before the format had versions (version 0, JSON) are read by
//! [`crate::storage::v0`]; nothing else ever reads JSON here.

pub use charter_config::codec::{CodecError, Kind, VERSION, decode};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encodes a log entry, snapshot, forward or outcome.
pub fn encode<T: Serialize>(kind: Kind, v: &T) -> Vec<u8> {
    match charter_config::codec::encode(kind, v) {
        Ok(b) => b,
        Err(e) => panic!("the {kind:?} types must encode as MessagePack: {e}"),
    }
}

/// Decodes a stored log entry or snapshot, in any version this member
/// knows (version 0 too).
pub fn decode_stored<T: DeserializeOwned>(kind: Kind, b: &[u8]) -> Result<T, CodecError> {
    match decode(kind, b) {
        Err(CodecError::Unversioned(_)) => crate::storage::v0::decode(kind, b),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, Proposal, Retention, State};

    /// Fixtures written by format versions 0 (JSON) and 1: a log entry and a
    /// snapshot. A change to the types or the codec that cannot read them
    /// fails here. (`CHARTER_WRITE_FIXTURES=1` rewrites version 1's.)
    const ENTRY_V0: &str = include_str!("../tests/fixtures/entry-v0.json");
    const SNAPSHOT_V0: &str = include_str!("../tests/fixtures/snapshot-v0.json");
    const ENTRY_V1: &[u8] = include_bytes!("../tests/fixtures/entry-v1.bin");
    const SNAPSHOT_V1: &[u8] = include_bytes!("../tests/fixtures/snapshot-v1.bin");

    fn fixture_state() -> State {
        let mut s = State::new([(1, "127.0.0.1:7701".to_string())].into());
        let props = decode_stored::<Vec<Proposal>>(Kind::Entry, ENTRY_V0.as_bytes()).unwrap();
        for p in &props {
            let _ = s.apply(p);
        }
        s
    }

    #[test]
    fn fixtures_of_every_version_decode() {
        let props = decode_stored::<Vec<Proposal>>(Kind::Entry, ENTRY_V0.as_bytes()).unwrap();
        assert_eq!(props.len(), 3, "v0 entry");
        assert!(matches!(props[0].cmd, Command::RegisterNode { .. }));
        let old = State::from_bytes(SNAPSHOT_V0.as_bytes()).unwrap();
        assert_eq!(old.leases.len(), 1, "v0 snapshot");
        // Its idempotency outcomes (kept whole then) are honoured.
        assert_eq!(old.keys.len(), 3, "v0 applied_keys read into keys");
        let retry = crate::state::retention::key_id("ann/req-1");
        assert!(old.keys.contains_key(&retry));
        if std::env::var("CHARTER_WRITE_FIXTURES").is_ok() {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
            std::fs::write(dir.join("entry-v1.bin"), encode(Kind::Entry, &props)).unwrap();
            std::fs::write(
                dir.join("snapshot-v1.bin"),
                encode(Kind::Snapshot, &fixture_state()),
            )
            .unwrap();
        }
        let v1: Vec<Proposal> = decode(Kind::Entry, ENTRY_V1).unwrap();
        assert_eq!(v1, props, "v1 entry");
        let mut s: State = decode(Kind::Snapshot, SNAPSHOT_V1).unwrap();
        s.rebuild_index();
        assert_eq!(s, fixture_state(), "v1 snapshot");
    }

    /// One proposal of every command, with every kind of field filled.
    fn every_command() -> Vec<Proposal> {
        use crate::state::defs::*;
        use crate::state::*;
        use charter_config::cron::{Concurrency, Missed};
        use charter_config::deployment::{DeployStep, Trigger};
        let res = Resources {
            cpu_millis: 1500,
            memory_bytes: 1 << 30,
            disk_bytes: 2 << 30,
            gpus: 1,
        };
        let lease = LeaseSpec {
            constraints: vec![Constraint::parse("zone in (a,b)").unwrap()],
            prefer: Prefer::Cheapest,
            deadline: Some(1_900_000_000_000),
            max_cost_per_hour: Some(2.5),
            reason: "fixture".into(),
            ..LeaseSpec::simple(res, 60_000)
        };
        let task = TaskSpec {
            name: "web".into(),
            amp: Amp::Service,
            command: vec!["./web".into(), "${PORT}".into()],
            env: [("MODE".to_string(), "fast".to_string())].into(),
            restart: Restart::Always,
            health: Some(Health {
                check: Check::Http {
                    port: 0,
                    path: "/healthz".into(),
                    status: 200,
                },
                interval_ms: 500,
                timeout_ms: 1000,
                healthy_after: 1,
                unhealthy_after: 2,
            }),
            ports: vec!["http".into()],
            ..TaskSpec::default()
        };
        let job = JobDefinition {
            name: "nightly".into(),
            schedule: "30 2 * * *".into(),
            timezone: "Europe/Berlin".into(),
            depends_on: vec!["ingest".into()],
            window_ms: 3_600_000,
            dependency_wait_ms: 1_800_000,
            concurrency: Concurrency::Forbid,
            missed: Missed::All,
            max_catch_up: 3,
            retries: 2,
            paused: false,
            owner: "ann".into(),
            task: TaskDefinition {
                name: "report".into(),
                amp: Amp::Batch,
                command: vec!["./report.sh".into()],
                env: Default::default(),
                secret_env: [("TOKEN".to_string(), "s".to_string())].into(),
                retries: 1,
                restart: Restart::OnFailure,
                max_restarts: 0,
                grace_ms: 5_000,
                health: None,
                ports: vec![],
                lease: LeaseDefinition {
                    cpu_millis: 500,
                    memory_bytes: 256 << 20,
                    disk_bytes: 0,
                    gpus: 0,
                    labels: [("zone".to_string(), "a".to_string())].into(),
                    constraints: vec!["!spot".into()],
                    count: 1,
                    duration_ms: 3_600_000,
                    max_total_ms: 0,
                    wait_ms: 60_000,
                    priority: 5,
                    max_cost: None,
                    prefer: Some(Prefer::Spread),
                    reason: String::new(),
                },
            },
        };
        let app = AppDefinition {
            name: "hello".into(),
            repo: "/srv/git/hello".into(),
            branch: "main".into(),
            servers: 2,
            progress_deadline_ms: 600_000,
            poll_ms: 30_000,
            secret: "s3cret".into(),
            fingerprint: "{user}/{kind}/{name}@{commit}".into(),
            keep: 5,
            build: BuildDefinition {
                command: vec!["sh".into(), "build.sh".into()],
                artifact: "out/hello".into(),
                cpu_millis: 1000,
                memory_bytes: 512 << 20,
                timeout_ms: 600_000,
            },
            run: RunDefinition {
                command: vec!["./hello".into()],
                ports: vec!["http".into()],
                env: Default::default(),
                secret_env: Default::default(),
            },
            health: AppHealthDefinition {
                kind: CheckKind::Http,
                path: "/healthz".into(),
                status: 200,
                interval_ms: 500,
                timeout_ms: 1000,
                min_healthy_ms: 3000,
            },
            requirements: RequirementsDefinition {
                cpu_millis: 500,
                memory_bytes: 256 << 20,
                labels: Default::default(),
                constraints: vec![],
            },
        };
        let cmds = vec![
            Command::RegisterNode {
                name: "n1".into(),
                capacity: res,
                labels: [("gpu".to_string(), "a100".to_string())].into(),
                pool: "default".into(),
                cost_per_hour: 1.25,
                ttl_ms: Some(10_000),
                agent: Some(AgentEndpoint {
                    addr: "127.0.0.1:7790".into(),
                    secret: "x".into(),
                }),
            },
            Command::Heartbeat { name: "n1".into() },
            Command::SetQuota {
                principal: "ann".into(),
                quota: Quota {
                    max_cpu_millis: Some(8000),
                    max_leases: Some(10),
                    max_duration_ms: None,
                },
            },
            Command::SetDraining {
                name: "n1".into(),
                draining: true,
            },
            Command::RequestLease(lease.clone()),
            Command::ReleaseLease { id: 1 },
            Command::RenewLease {
                id: 1,
                duration_ms: 60_000,
            },
            Command::RevokeLease { id: 1 },
            Command::RemoveNode { name: "n1".into() },
            Command::SubmitTask {
                lease: Box::new(lease.clone()),
                task: Box::new(task.clone()),
            },
            Command::ReportTask(TaskReport {
                id: 1,
                node: "n1".into(),
                state: TaskState::Running,
                exit_code: None,
                starts: 1,
                health: HealthState::Healthy,
                message: "m".into(),
                usage: None,
                ports: [("http".to_string(), 8080)].into(),
                artifact: String::new(),
            }),
            Command::CancelTask { id: 1 },
            Command::SetPools {
                pools: vec![PoolOffer {
                    name: "gpu".into(),
                    max_nodes: 4,
                    capacity: res,
                    labels: Default::default(),
                    cost_per_hour: 3.0,
                    idle_ms: 600_000,
                }],
            },
            Command::CronApply {
                version: "v1".into(),
                jobs: vec![JobDef {
                    config: job,
                    owner: "ann".into(),
                }],
            },
            Command::CronFire(CronFire {
                job: "nightly".into(),
                scheduled_at: 1_800_000_000_000,
                manual: false,
                replaces: vec![1_799_999_000_000],
                lease: Box::new(lease.clone()),
                task: Box::new(task.clone()),
            }),
            Command::CronSkip {
                job: "nightly".into(),
                scheduled_at: 1_800_000_000_000,
                reason: "late".into(),
            },
            Command::CronPause {
                job: "nightly".into(),
                paused: true,
            },
            Command::CronDelete {
                job: "nightly".into(),
            },
            Command::AppApply {
                config: Box::new(app),
                version: "abc".into(),
            },
            Command::DeployTrigger {
                app: "hello".into(),
                commit: "a".repeat(40),
                trigger: Trigger::Webhook,
                delivery: "d-1".into(),
            },
            Command::DeployStep(StepReport {
                id: 1,
                step: DeployStep::Build,
                failed: false,
                message: "ok".into(),
                commit: String::new(),
                artifact: "f".repeat(64),
                build_log: String::new(),
                behind: false,
            }),
            Command::DeploySubmit {
                id: 1,
                step: DeployStep::Lease,
                tasks: vec![(lease, task)],
            },
            Command::SetRetention(Retention {
                keys_max: 7,
                ..Retention::default()
            }),
            Command::AcquireLock(LockSpec {
                name: "db".into(),
                ttl_ms: 15_000,
                limit: 1,
                wait_ms: 0,
                holder: "h".into(),
                value: "v".into(),
            }),
            Command::RenewLock { id: 1 },
            Command::ReleaseLock { id: 1 },
            Command::Tick,
            Command::Refused {
                command: "node drain".into(),
                target: "node n1".into(),
                reason: "admin only".into(),
            },
        ];
        cmds.into_iter()
            .enumerate()
            .map(|(i, cmd)| Proposal {
                at: 1_800_000_000_000 + i as i64,
                principal: "ann".into(),
                admin: i % 2 == 0,
                key: Some(format!("k{i}")),
                hint: (i == 4).then(|| vec!["n1".into()]),
                cmd,
            })
            .collect()
    }

    /// Every command's name, so that a new one fails the test below until
    /// the fixture has it.
    fn name(c: &Command) -> &'static str {
        match c {
            Command::RegisterNode { .. } => "register_node",
            Command::Heartbeat { .. } => "heartbeat",
            Command::SetQuota { .. } => "set_quota",
            Command::SetDraining { .. } => "set_draining",
            Command::RequestLease(_) => "request_lease",
            Command::ReleaseLease { .. } => "release_lease",
            Command::RenewLease { .. } => "renew_lease",
            Command::RevokeLease { .. } => "revoke_lease",
            Command::RemoveNode { .. } => "remove_node",
            Command::SubmitTask { .. } => "submit_task",
            Command::ReportTask(_) => "report_task",
            Command::CancelTask { .. } => "cancel_task",
            Command::SetPools { .. } => "set_pools",
            Command::CronApply { .. } => "cron_apply",
            Command::CronFire(_) => "cron_fire",
            Command::CronSkip { .. } => "cron_skip",
            Command::CronPause { .. } => "cron_pause",
            Command::CronDelete { .. } => "cron_delete",
            Command::AppApply { .. } => "app_apply",
            Command::DeployTrigger { .. } => "deploy_trigger",
            Command::DeployStep(_) => "deploy_step",
            Command::DeploySubmit { .. } => "deploy_submit",
            Command::SetRetention(_) => "set_retention",
            Command::AcquireLock(_) => "acquire_lock",
            Command::RenewLock { .. } => "renew_lock",
            Command::ReleaseLock { .. } => "release_lock",
            Command::Tick => "tick",
            Command::Refused { .. } => "refused",
        }
    }

    /// A log entry of every command, written by format version 1: decoded
    /// with today's types it is what was written. A change to a command's
    /// types that would change the meaning of an entry already written
    /// fails here. (`CHARTER_WRITE_FIXTURES=1` rewrites it.)
    #[test]
    fn an_entry_of_every_command_written_by_version_1_decodes() {
        const ALL_V1: &[u8] = include_bytes!("../tests/fixtures/entry-v1-every-command.bin");
        let want = every_command();
        if std::env::var("CHARTER_WRITE_FIXTURES").is_ok() {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
            std::fs::write(
                dir.join("entry-v1-every-command.bin"),
                encode(Kind::Entry, &want),
            )
            .unwrap();
        }
        let got: Vec<Proposal> = decode(Kind::Entry, ALL_V1).unwrap();
        assert_eq!(got, want);
        let names: std::collections::BTreeSet<&str> = got.iter().map(|p| name(&p.cmd)).collect();
        assert_eq!(names.len(), 28, "one of every command: {names:?}");
    }

    #[test]
    fn round_trips_and_refuses_what_it_does_not_know() {
        let mut s = fixture_state();
        s.retention = Retention {
            keys_max: 7,
            ..Retention::default()
        };
        let b = encode(Kind::Snapshot, &s);
        assert_eq!(&b[..4], b"CH\x01S");
        let mut back: State = decode(Kind::Snapshot, &b).unwrap();
        back.rebuild_index();
        assert_eq!(back, s);
        assert!(
            b.len() < crate::storage::v0::tests::json_len(&s),
            "smaller than JSON"
        );
        let mut newer = b.clone();
        newer[2] = 9;
        let e = decode::<State>(Kind::Snapshot, &newer).unwrap_err();
        assert_eq!(e, CodecError::Version { found: 9 });
        assert!(e.to_string().contains("reads versions 0 to 1"), "{e}");
        let e = decode::<Vec<Proposal>>(Kind::Entry, &b).unwrap_err();
        assert!(
            matches!(
                e,
                CodecError::Kind {
                    expected: Kind::Entry,
                    ..
                }
            ),
            "{e}"
        );
        let e = decode_stored::<State>(Kind::Snapshot, b"{not json").unwrap_err();
        assert!(matches!(e, CodecError::Corrupt { version: 0, .. }), "{e}");
        let e = decode::<State>(Kind::Snapshot, b"CH\x01S\xff").unwrap_err();
        assert!(matches!(e, CodecError::Corrupt { version: 1, .. }), "{e}");
    }

    /// A snapshot whose map or set header claims 2^32-1 entries that are
    /// not there is refused as corrupt. imbl's own decoding reserved room
    /// for all of them first, and the member aborted on a terabyte
    /// allocation (found by the fuzz test in `service::convert`).
    #[test]
    fn a_snapshot_claiming_more_entries_than_it_has_is_refused_not_an_abort() {
        let field = |name: &str, body: &[u8]| {
            let mut b = b"CH\x01S\x81".to_vec(); // a map of one field
            b.push(0xa0 | name.len() as u8); // fixstr
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(body);
            b
        };
        let map32 = b"\xdf\xff\xff\xff\xff";
        let array32 = b"\xdd\xff\xff\xff\xff";
        let mut job_runs = b"\x81\xa1j".to_vec(); // {"j": <runs of job j>}
        job_runs.extend_from_slice(map32);
        for (what, bytes) in [
            ("nodes", field("nodes", map32)),
            ("leases", field("leases", map32)),
            ("expiries", field("expiries", array32)),
            ("keys", field("keys", map32)),
            ("cron_runs", field("cron_runs", map32)),
            ("one job's cron runs", field("cron_runs", &job_runs)),
        ] {
            let e = decode::<State>(Kind::Snapshot, &bytes).unwrap_err();
            assert!(
                matches!(e, CodecError::Corrupt { version: 1, .. }),
                "{what}: {e}"
            );
        }
    }

    /// A key id is written as the `u128` it was before it was kept as two
    /// halves, and either reads back as the other.
    #[test]
    fn a_key_id_is_written_as_its_u128() {
        use crate::state::retention::KeyId;
        for id in [
            0,
            1,
            u128::from(u64::MAX),
            u128::MAX - 1,
            0x0123_4567_89ab_cdef << 60,
        ] {
            let as_u128 = rmp_serde::to_vec_named(&id).unwrap();
            assert_eq!(rmp_serde::to_vec_named(&KeyId::from(id)).unwrap(), as_u128);
            let back: KeyId = rmp_serde::from_slice(&as_u128).unwrap();
            assert_eq!(u128::from(back), id);
        }
        assert!(
            KeyId::from(1u128 << 64) > KeyId::from(u128::from(u64::MAX)),
            "ordered as the u128"
        );
    }
}
