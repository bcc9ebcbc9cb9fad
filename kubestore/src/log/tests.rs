use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use kube::core::ObjectMeta;
use tokio::time::Instant;

use super::writer::{self, GroupCommit, SegmentSink};
use super::*;
use crate::write::SinkError;

fn audit(n: u64) -> Audit {
    Audit {
        kind: "cluster.registered".into(),
        cluster_id: format!("c{n}"),
        peer: "10.0.0.7:4411".into(),
        detail: format!("entry {n}"),
    }
}

fn entries(ids: std::ops::RangeInclusive<u64>) -> Vec<Entry<Audit>> {
    ids.map(|id| Entry {
        id,
        at_ms: 1_000 + id as i64,
        body: audit(id),
    })
    .collect()
}

fn spec_of(entries: &[Entry<Audit>], data: String) -> FleetLogSpec {
    FleetLogSpec {
        stream: Stream::Audit,
        plan: None,
        first_id: entries.first().map_or(1, |e| e.id),
        last_id: entries.last().map_or(1, |e| e.id),
        from_ms: 0,
        to_ms: 0,
        sealed: true,
        encoding: Encoding::GzipJsonl,
        data,
    }
}

fn segment(ids: std::ops::RangeInclusive<u64>) -> FleetLogSpec {
    let e = entries(ids);
    spec_of(&e, encode(&e).expect("encodes"))
}

fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(raw).expect("memory");
    gz.finish().expect("memory")
}

fn with_raw(first: u64, last: u64, raw: &[u8]) -> FleetLogSpec {
    FleetLogSpec {
        first_id: first,
        last_id: last,
        data: BASE64.encode(gzip(raw)),
        ..segment(1..=1)
    }
}

fn jsonl(entries: &[Entry<Audit>]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|e| line(e).expect("a line"))
        .collect()
}

#[test]
fn entries_come_back_from_their_segment_as_they_went_in() {
    let e = entries(7..=9);
    let spec = spec_of(&e, encode(&e).expect("encodes"));
    assert_eq!(decode::<Audit>(&spec).expect("decodes"), e);
    let records: Vec<_> = e.into_iter().map(Entry::<Audit>::into_record).collect();
    assert_eq!(records[0].id, 7);
    assert_eq!(records[0].detail, "entry 7");
}

#[test]
fn a_plan_event_keeps_every_field_of_its_record() {
    let record = PlanEventRecord {
        id: 0,
        at_unix_ms: 42,
        plan: "p".into(),
        kind: "task.result".into(),
        target: "c1".into(),
        target_name: "prod-1".into(),
        operation_id: "p.c1.upgrade-1".into(),
        step: "verify".into(),
        state: "succeeded".into(),
        message: "ok".into(),
        duration_ms: 1234,
    };
    let e = vec![Entry {
        id: 3,
        at_ms: 42,
        body: Event::from(record.clone()),
    }];
    let spec = FleetLogSpec {
        stream: Stream::Events,
        plan: Some("p".into()),
        ..spec_of(&[], encode(&e).expect("encodes"))
    };
    let spec = FleetLogSpec {
        first_id: 3,
        last_id: 3,
        ..spec
    };
    let back = decode::<Event>(&spec).expect("decodes").remove(0);
    assert_eq!(back.into_record("p"), PlanEventRecord { id: 3, ..record });
}

#[test]
fn data_that_is_not_base64_is_refused() {
    let spec = FleetLogSpec {
        data: "not base64!".into(),
        ..segment(1..=1)
    };
    assert!(matches!(decode::<Audit>(&spec), Err(Error::Base64(_))));
}

#[test]
fn data_that_is_not_gzip_is_refused() {
    let spec = FleetLogSpec {
        data: BASE64.encode(b"{\"id\":1}\n"),
        ..segment(1..=1)
    };
    assert!(matches!(decode::<Audit>(&spec), Err(Error::Gzip(_))));
}

#[test]
fn bytes_after_the_gzip_stream_are_refused() {
    let mut gz = gzip(&jsonl(&entries(1..=1)));
    gz.extend_from_slice(b"junk");
    let spec = FleetLogSpec {
        data: BASE64.encode(gz),
        ..segment(1..=1)
    };
    assert!(matches!(
        decode::<Audit>(&spec),
        Err(Error::TrailingData(4))
    ));
}

#[test]
fn a_gzip_bomb_is_refused_without_inflating_it() {
    // Compresses to about a kilobyte: within every bound on `data`.
    let spec = with_raw(1, 1, &vec![b' '; MAX_RAW + 1]);
    assert!(spec.data.len() < 4096, "{}", spec.data.len());
    assert!(matches!(decode::<Audit>(&spec), Err(Error::Inflated)));
    // Exactly at the cap is not a bomb (it fails later, as lines).
    let spec = with_raw(1, 1, &vec![b' '; MAX_RAW]);
    assert!(matches!(decode::<Audit>(&spec), Err(Error::Line { .. })));
}

#[test]
fn data_longer_than_the_crd_allows_is_refused_before_decoding() {
    let spec = FleetLogSpec {
        data: "A".repeat(MAX_DATA as usize + 4),
        ..segment(1..=1)
    };
    assert!(matches!(
        decode::<Audit>(&spec),
        Err(Error::DataTooLarge { .. })
    ));
}

#[test]
fn a_line_that_is_not_an_entry_is_refused_with_its_number() {
    let mut raw = jsonl(&entries(1..=1));
    raw.extend_from_slice(b"{\"id\":2,\"atMs\":5}\n");
    let spec = with_raw(1, 2, &raw);
    assert!(matches!(
        decode::<Audit>(&spec),
        Err(Error::Line { line: 2, .. })
    ));
    let spec = with_raw(1, 1, b"hello\n");
    assert!(matches!(
        decode::<Audit>(&spec),
        Err(Error::Line { line: 1, .. })
    ));
}

#[test]
fn a_segment_of_the_other_stream_is_refused() {
    assert!(matches!(
        decode::<Event>(&segment(1..=2)),
        Err(Error::WrongStream {
            expected: Stream::Events,
            found: Stream::Audit
        })
    ));
}

#[test]
fn ids_must_be_exactly_the_specs_range() {
    let raw = jsonl(&entries(3..=5));
    // A gap.
    let mut gap = jsonl(&entries(3..=3));
    gap.extend(jsonl(&entries(5..=5)));
    assert!(matches!(
        decode::<Audit>(&with_raw(3, 4, &gap)),
        Err(Error::Id {
            line: 2,
            expected: 4,
            found: 5
        })
    ));
    // Starting elsewhere than `firstId`.
    assert!(matches!(
        decode::<Audit>(&with_raw(2, 4, &raw)),
        Err(Error::Id {
            line: 1,
            expected: 2,
            found: 3
        })
    ));
    // Fewer entries than the range.
    assert!(matches!(
        decode::<Audit>(&with_raw(3, 6, &raw)),
        Err(Error::Short { found: 5, last: 6 })
    ));
    // More.
    assert!(matches!(
        decode::<Audit>(&with_raw(3, 4, &raw)),
        Err(Error::Long { line: 3, last: 4 })
    ));
    // No range at all.
    for (first, last) in [(5, 3), (0, 3)] {
        assert!(matches!(
            decode::<Audit>(&with_raw(first, last, &raw)),
            Err(Error::Range { .. })
        ));
    }
    assert_eq!(
        decode::<Audit>(&with_raw(3, 5, &raw))
            .expect("the exact range")
            .len(),
        3
    );
}

#[test]
fn an_entry_too_large_for_a_segment_is_refused() {
    let mut e = entries(1..=1);
    e[0].body.detail = "x".repeat(MAX_ENTRY);
    assert!(matches!(encode(&e), Err(Error::EntryTooLarge { .. })));
}

#[test]
fn segment_names_sort_by_their_first_id() {
    let s = LogStream::Events { plan: "p".into() };
    assert_eq!(s.segment_name(12), "events-p-00000000000000000012");
    assert!(LogStream::Audit.segment_name(9) < LogStream::Audit.segment_name(10));
}

/// Stored segments by name, the fetches counted.
struct Stored {
    specs: HashMap<String, FleetLogSpec>,
    fetched: Mutex<Vec<String>>,
}

impl Stored {
    fn new(segments: &[FleetLogSpec]) -> (Self, BTreeMap<u64, String>) {
        let index: BTreeMap<u64, String> = segments
            .iter()
            .map(|s| (s.first_id, LogStream::Audit.segment_name(s.first_id)))
            .collect();
        let specs = segments
            .iter()
            .map(|s| (LogStream::Audit.segment_name(s.first_id), s.clone()))
            .collect();
        (
            Stored {
                specs,
                fetched: Mutex::new(Vec::new()),
            },
            index,
        )
    }

    async fn fetch(&self, name: String) -> Result<FleetLogSpec, String> {
        self.fetched.lock().expect("lock").push(name.clone());
        self.specs.get(&name).cloned().ok_or(name)
    }

    fn fetched(&self) -> Vec<String> {
        std::mem::take(&mut *self.fetched.lock().expect("lock"))
    }
}

fn ids(entries: &[Entry<Audit>]) -> Vec<u64> {
    entries.iter().map(|e| e.id).collect()
}

#[tokio::test]
async fn a_read_finds_entries_after_an_id_across_sealed_segments_and_the_open_one() {
    let (stored, index) = Stored::new(&[segment(1..=3), segment(4..=6), segment(7..=8)]);
    let open = entries(9..=10);
    let read = |after, limit| read(&index, &open, after, limit, |n| stored.fetch(n));

    let all = read(0, 100).await.expect("read");
    assert_eq!(ids(&all), (1..=10).collect::<Vec<_>>());
    assert_eq!(stored.fetched().len(), 3);

    // Only the segments that can hold what is asked for are fetched.
    let some = read(4, 3).await.expect("read");
    assert_eq!(ids(&some), [5, 6, 7]);
    assert_eq!(
        stored.fetched(),
        [
            LogStream::Audit.segment_name(4),
            LogStream::Audit.segment_name(7)
        ]
    );
    let tail = read(8, 100).await.expect("read");
    assert_eq!(ids(&tail), [9, 10]);
    assert!(stored.fetched().is_empty(), "the open segment is in memory");
    assert!(read(10, 100).await.expect("read").is_empty());
    assert_eq!(ids(&read(6, 2).await.expect("read")), [7, 8]);
}

#[tokio::test]
async fn a_read_without_the_writer_reads_the_open_segment_from_the_server() {
    let (stored, index) = Stored::new(&[segment(1..=3), segment(4..=5)]);
    let got = read::<Audit, _, _, _>(&index, &[], 2, 10, |n| stored.fetch(n))
        .await
        .expect("read");
    assert_eq!(ids(&got), [3, 4, 5]);
}

#[tokio::test]
async fn a_malformed_stored_segment_fails_the_read() {
    let mut bad = segment(4..=6);
    bad.last_id = 7;
    let (stored, index) = Stored::new(&[segment(1..=3), bad]);
    let got = read::<Audit, _, _, _>(&index, &[], 0, 10, |n| stored.fetch(n)).await;
    assert!(matches!(got, Err(Error::Short { .. })), "{got:?}");
}

fn stored_log(name: &str, spec: FleetLogSpec) -> FleetLog {
    FleetLog {
        types: None,
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

fn log_at(stream: LogStream, first: u64, to_ms: i64, sealed: bool) -> FleetLog {
    let name = stream.segment_name(first);
    stored_log(
        &name,
        FleetLogSpec {
            stream: stream.stream(),
            plan: stream.plan().map(str::to_string),
            first_id: first,
            last_id: first + 9,
            from_ms: to_ms - 10,
            to_ms,
            sealed,
            encoding: Encoding::GzipJsonl,
            data: String::new(),
        },
    )
}

#[test]
fn retention_deletes_old_sealed_segments_but_the_active_plans_and_the_newest_audit() {
    let old = LogStream::Events { plan: "old".into() };
    let active = LogStream::Events {
        plan: "active".into(),
    };
    let segments = [
        log_at(LogStream::Audit, 1, 100, true),
        log_at(LogStream::Audit, 11, 200, true),
        log_at(LogStream::Audit, 21, 300, true),
        log_at(old.clone(), 1, 100, true),
        log_at(old.clone(), 11, 900, true),
        log_at(old.clone(), 21, 150, false),
        log_at(active.clone(), 1, 100, true),
    ];
    let cutoffs = Cutoffs {
        audit_before_ms: 1_000,
        events_before_ms: 500,
        certificates_expired_before_unix: 0,
        admins_expired_before_unix: 0,
    };
    assert_eq!(
        expired(&segments, &cutoffs, Some("active")),
        [
            LogStream::Audit.segment_name(1),
            LogStream::Audit.segment_name(11),
            old.segment_name(1),
        ]
    );
    // Once the plan is no longer active, its old events go too.
    assert!(expired(&segments, &cutoffs, None).contains(&active.segment_name(1)));
    // The cutoff is on the newest entry: a segment reaching past it stays.
    let cutoffs = Cutoffs {
        audit_before_ms: 200,
        ..cutoffs
    };
    assert_eq!(
        expired(&segments, &cutoffs, Some("active"))[..1],
        [LogStream::Audit.segment_name(1)]
    );
}

// The stream writer, on tokio's paused clock, against a fake API server.

/// Which writes the fake fails.
type Failing = Box<dyn Fn(&str, &FleetLogSpec) -> bool + Send>;

/// Holds segments as the API server would, including the CEL rule that a sealed segment never
/// changes; records each write and when it was made.
#[derive(Clone, Default)]
struct Fake {
    objects: Arc<Mutex<BTreeMap<String, FleetLogSpec>>>,
    writes: Arc<Mutex<Vec<(String, FleetLogSpec, Instant)>>>,
    fail: Arc<Mutex<Option<Failing>>>,
    /// Whether a failing write is stored anyway (its answer lost, as at a timeout).
    lands: Arc<Mutex<bool>>,
}

impl Fake {
    fn fail_when(&self, f: impl Fn(&str, &FleetLogSpec) -> bool + Send + 'static) {
        *self.fail.lock().expect("lock") = Some(Box::new(f));
    }

    fn lose_answer_when(&self, f: impl Fn(&str, &FleetLogSpec) -> bool + Send + 'static) {
        self.fail_when(f);
        *self.lands.lock().expect("lock") = true;
    }

    fn heal(&self) {
        *self.fail.lock().expect("lock") = None;
        *self.lands.lock().expect("lock") = false;
    }

    fn writes(&self) -> Vec<(String, FleetLogSpec, Instant)> {
        self.writes.lock().expect("lock").clone()
    }

    fn specs(&self) -> Vec<FleetLogSpec> {
        self.objects
            .lock()
            .expect("lock")
            .values()
            .cloned()
            .collect()
    }

    /// Every stored entry, in id order, each segment decoded.
    fn entries(&self) -> Vec<Entry<Audit>> {
        self.specs()
            .iter()
            .flat_map(|s| decode::<Audit>(s).expect("a stored segment decodes"))
            .collect()
    }
}

impl SegmentSink for Fake {
    async fn put(&self, name: &str, spec: &FleetLogSpec) -> Result<(), SinkError> {
        let fails = self
            .fail
            .lock()
            .expect("lock")
            .as_ref()
            .is_some_and(|f| f(name, spec));
        if fails && !*self.lands.lock().expect("lock") {
            return Err("the server said no".into());
        }
        let mut objects = self.objects.lock().expect("lock");
        if let Some(old) = objects.get(name)
            && old.sealed
            && old != spec
        {
            return Err("a sealed log segment cannot change".into());
        }
        objects.insert(name.to_string(), spec.clone());
        self.writes
            .lock()
            .expect("lock")
            .push((name.to_string(), spec.clone(), Instant::now()));
        if fails {
            return Err("no answer".into());
        }
        Ok(())
    }
}

async fn start(fake: &Fake) -> StreamWriter<Audit> {
    StreamWriter::start(
        fake.clone(),
        LogStream::Audit,
        &fake.specs(),
        GroupCommit::default(),
    )
    .await
    .expect("starts")
}

/// Appends `bodies` at once, each from its own task; their ids or errors, in order.
async fn append_all(
    writer: &StreamWriter<Audit>,
    bodies: impl IntoIterator<Item = Audit>,
) -> Vec<writer::Result<u64>> {
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|b| {
            let w = writer.clone();
            tokio::spawn(async move { w.append(7, b).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("join"));
    }
    out
}

fn ok_ids(outcomes: &[writer::Result<u64>]) -> Vec<u64> {
    outcomes
        .iter()
        .map(|o| *o.as_ref().expect("appended"))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn appends_within_the_delay_are_stored_by_one_write_and_return_after_it() {
    let fake = Fake::default();
    let writer = start(&fake).await;
    let started = Instant::now();
    let outcomes = append_all(&writer, (1..=3).map(audit)).await;
    assert_eq!(ok_ids(&outcomes), [1, 2, 3]);
    let writes = fake.writes();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].0, "audit-00000000000000000001");
    assert_eq!(writes[0].2 - started, Duration::from_millis(200));
    assert_eq!(Instant::now(), writes[0].2, "returned once stored");
    assert_eq!(ids(&fake.entries()), [1, 2, 3]);
    assert_eq!(ids(&writer.open_entries()), [1, 2, 3]);
    // The open segment is rewritten, not replaced by a new one.
    assert_eq!(ok_ids(&append_all(&writer, [audit(4)]).await), [4]);
    assert_eq!(fake.specs().len(), 1);
    assert_eq!(ids(&fake.entries()), [1, 2, 3, 4]);
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_goes_at_once_and_a_stream_flushes_at_most_five_times_a_second() {
    let fake = Fake::default();
    let writer = start(&fake).await;
    let started = Instant::now();
    let outcomes = append_all(&writer, (1..=1_250).map(audit)).await;
    assert_eq!(ok_ids(&outcomes), (1..=1_250).collect::<Vec<_>>());
    let at: Vec<Duration> = fake.writes().iter().map(|w| w.2 - started).collect();
    // 500 at once, 500 at the next allowed flush, the last 250 there again.
    assert_eq!(
        at,
        [
            Duration::ZERO,
            Duration::from_millis(200),
            Duration::from_millis(400)
        ]
    );
    assert_eq!(ids(&fake.entries()), (1..=1_250).collect::<Vec<_>>());
}

/// An audit entry whose line is about 16 KiB, so a segment seals after ~16 of them.
fn bulky(n: u64) -> Audit {
    Audit {
        detail: format!("{n:>16000}"),
        ..audit(n)
    }
}

#[tokio::test(start_paused = true)]
async fn a_segment_is_sealed_at_256_kib_and_the_next_entry_opens_a_new_one() {
    let fake = Fake::default();
    let writer = start(&fake).await;
    let outcomes = append_all(&writer, (1..=40).map(bulky)).await;
    assert_eq!(ok_ids(&outcomes), (1..=40).collect::<Vec<_>>());
    let specs = fake.specs();
    assert_eq!(specs.len(), 3, "40 lines of 16 KiB fill two segments");
    for s in &specs[..2] {
        assert!(s.sealed, "{}..={}", s.first_id, s.last_id);
        let raw: usize = decode::<Audit>(s)
            .expect("decodes")
            .iter()
            .map(|e| line(e).expect("line").len())
            .sum();
        assert!(raw <= SEAL_AT && raw + 16_100 > SEAL_AT, "{raw}");
        assert!(s.data.len() as i64 <= MAX_DATA);
    }
    assert!(!specs[2].sealed);
    assert_eq!(specs[0].last_id + 1, specs[1].first_id);
    assert_eq!(specs[1].last_id + 1, specs[2].first_id);
    assert_eq!(ids(&fake.entries()), (1..=40).collect::<Vec<_>>());
    // Each seal stores exactly what was stored unsealed before it.
    let writes = fake.writes();
    for (n, (name, spec, _)) in writes.iter().enumerate() {
        if spec.sealed {
            let (before, unsealed, _) = &writes[n - 1];
            assert_eq!(before, name);
            assert_eq!(
                &FleetLogSpec {
                    sealed: true,
                    ..unsealed.clone()
                },
                spec
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_flush_fails_its_entries_and_their_ids_go_to_the_next() {
    let fake = Fake::default();
    let writer = start(&fake).await;
    assert_eq!(
        ok_ids(&append_all(&writer, (1..=2).map(audit)).await),
        [1, 2]
    );
    fake.fail_when(|_, _| true);
    let failed = append_all(&writer, (3..=4).map(audit)).await;
    assert!(
        failed
            .iter()
            .all(|o| matches!(o, Err(writer::Error::Store { .. }))),
        "{failed:?}"
    );
    fake.heal();
    assert_eq!(ok_ids(&append_all(&writer, [audit(5)]).await), [3]);
    let stored = fake.entries();
    assert_eq!(ids(&stored), [1, 2, 3]);
    assert_eq!(stored[2].body.detail, "entry 5");
}

#[tokio::test(start_paused = true)]
async fn a_seal_whose_answer_was_lost_is_retried_as_it_was_before_any_new_entry() {
    let fake = Fake::default();
    let writer = start(&fake).await;
    append_all(&writer, (1..=16).map(bulky)).await;
    // The seal lands, but its answer is lost (a timeout): the writer cannot know.
    fake.lose_answer_when(|_, spec| spec.sealed);
    let outcome = append_all(&writer, [bulky(17)]).await;
    assert!(
        matches!(&outcome[0], Err(writer::Error::Store { .. })),
        "{outcome:?}"
    );
    let first = fake.specs()[0].clone();
    assert_eq!((first.last_id, first.sealed), (16, true));
    fake.heal();
    // A small entry would still fit in the first segment; it must not go there.
    assert_eq!(ok_ids(&append_all(&writer, [audit(18)]).await), [17]);
    let specs = fake.specs();
    assert_eq!(specs[0], first);
    assert_eq!(
        (specs[1].first_id, specs[1].last_id, specs[1].sealed),
        (17, 17, false)
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_seals_the_open_segment_and_continues_after_the_last_stored_id() {
    let fake = Fake::default();
    let first = start(&fake).await;
    assert_eq!(
        ok_ids(&append_all(&first, (1..=5).map(audit)).await),
        (1..=5).collect::<Vec<_>>()
    );
    drop(first);
    let before = fake.specs();
    assert!(!before[0].sealed);

    let second = start(&fake).await;
    let specs = fake.specs();
    assert_eq!(
        specs[0],
        FleetLogSpec {
            sealed: true,
            ..before[0].clone()
        },
        "sealed as it was, before any write"
    );
    assert_eq!(
        ok_ids(&append_all(&second, (6..=7).map(audit)).await),
        [6, 7]
    );
    let specs = fake.specs();
    assert_eq!(specs.len(), 2);
    assert_eq!((specs[1].first_id, specs[1].last_id), (6, 7));
    assert_eq!(ids(&fake.entries()), (1..=7).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_that_cannot_seal_does_not_write() {
    let fake = Fake::default();
    let first = start(&fake).await;
    append_all(&first, [audit(1)]).await;
    drop(first);
    fake.fail_when(|_, _| true);
    let second = StreamWriter::<Audit>::start(
        fake.clone(),
        LogStream::Audit,
        &fake.specs(),
        GroupCommit::default(),
    )
    .await;
    assert!(matches!(second, Err(writer::Error::Seal { .. })));
}

#[tokio::test(start_paused = true)]
async fn an_entry_too_large_is_refused_without_taking_an_id() {
    let fake = Fake::default();
    let writer = start(&fake).await;
    let huge = Audit {
        detail: "x".repeat(MAX_ENTRY),
        ..audit(1)
    };
    assert!(matches!(
        writer.append(1, huge).await,
        Err(writer::Error::Entry(_))
    ));
    assert_eq!(ok_ids(&append_all(&writer, [audit(2)]).await), [1]);
}

#[tokio::test(start_paused = true)]
async fn streams_of_other_plans_are_left_alone_by_a_new_writer() {
    let fake = Fake::default();
    let plan = LogStream::Events { plan: "p".into() };
    let mut events = segment(1..=3);
    events.stream = Stream::Events;
    events.plan = Some("p".into());
    events.sealed = false;
    fake.put(&plan.segment_name(1), &events).await.expect("put");
    let writer = start(&fake).await;
    assert_eq!(ok_ids(&append_all(&writer, [audit(1)]).await), [1]);
    let specs = fake.specs();
    assert!(
        specs
            .iter()
            .any(|s| s.stream == Stream::Events && !s.sealed)
    );
}

fn event(kind: &str) -> Event {
    Event::from(PlanEventRecord {
        kind: kind.into(),
        ..PlanEventRecord::default()
    })
}

/// A segment of plan `p`'s events holding `entries`.
fn event_segment(entries: &[Entry<Event>]) -> FleetLogSpec {
    FleetLogSpec {
        stream: Stream::Events,
        plan: Some("p".into()),
        first_id: entries.first().map_or(1, |e| e.id),
        last_id: entries.last().map_or(1, |e| e.id),
        ..spec_of(&[], encode(entries).expect("encodes"))
    }
}

#[test]
fn a_plans_events_may_skip_ids_and_the_audit_log_may_not() {
    let at = |id| Entry {
        id,
        at_ms: 1,
        body: event("target"),
    };
    let gappy = event_segment(&[at(2), at(5), at(9)]);
    let ids: Vec<u64> = decode::<Event>(&gappy)
        .expect("decodes")
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, [2, 5, 9]);
    assert!(matches!(
        decode::<Event>(&event_segment(&[at(5), at(2), at(9)])),
        Err(Error::Id {
            line: 2,
            expected: 6,
            found: 2
        })
    ));
    let mut audit = with_raw(2, 5, &jsonl(&[entries(2..=2), entries(5..=5)].concat()));
    audit.stream = Stream::Audit;
    assert!(matches!(
        decode::<Audit>(&audit),
        Err(Error::Id {
            line: 2,
            expected: 3,
            found: 5
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_writer_keeps_the_ids_it_is_given_and_refuses_one_not_past_the_last() {
    let fake = Fake::default();
    let stream = LogStream::Events { plan: "p".into() };
    let writer = StreamWriter::start(fake.clone(), stream.clone(), &[], GroupCommit::default())
        .await
        .expect("starts");
    let (a, b) = tokio::join!(
        writer.append_as(3, 7, event("one")),
        writer.append_as(8, 7, event("two"))
    );
    assert_eq!((a.expect("3"), b.expect("8")), (3, 8));
    let specs = fake.specs();
    assert_eq!(
        specs
            .iter()
            .map(|s| (s.first_id, s.last_id))
            .collect::<Vec<_>>(),
        [(3, 8)],
        "one segment, named and bounded by the ids given"
    );
    assert_eq!(
        writer.segments(),
        BTreeMap::from([(3, stream.segment_name(3))])
    );
    let refused = writer.append_as(8, 7, event("again")).await;
    assert!(
        matches!(&refused, Err(writer::Error::Entry(e)) if matches!(**e, Error::OutOfOrder { id: 8, last: 8 })),
        "{refused:?}"
    );
    assert_eq!(
        writer.append_as(9, 7, event("three")).await.expect("9"),
        9,
        "the refusal took nothing"
    );
}

#[test]
fn imported_entries_become_sealed_segments_split_where_an_audit_id_is_skipped_or_one_is_full() {
    let mut all = entries(1..=3);
    all.extend(entries(7..=8));
    let big = |id: u64| Entry {
        id,
        at_ms: 5_000,
        body: Audit {
            detail: "x".repeat(MAX_ENTRY / 2),
            ..audit(id)
        },
    };
    all.extend((9..=20).map(big));
    let segments = sealed_segments(&LogStream::Audit, &all).expect("segments");
    let firsts: Vec<u64> = segments.iter().map(|(_, s)| s.first_id).collect();
    // 7 and 8 are small, then seven half-entries fill the segment to just under SEAL_AT.
    assert_eq!(
        firsts,
        [1, 7, 16],
        "a skipped id starts a segment, and so does a line past a full one"
    );
    let mut read = Vec::new();
    for (name, spec) in &segments {
        assert!(spec.sealed);
        assert_eq!(*name, LogStream::Audit.segment_name(spec.first_id));
        assert!(spec.data.len() as i64 <= MAX_DATA);
        read.extend(decode::<Audit>(spec).expect("a valid segment"));
    }
    assert_eq!(read, all, "every entry, with its id and time");

    let events = [3u64, 9, 10].map(|id| Entry {
        id,
        at_ms: 1,
        body: Event {
            kind: "target".into(),
            target: String::new(),
            target_name: String::new(),
            operation_id: String::new(),
            step: String::new(),
            state: String::new(),
            message: String::new(),
            duration_ms: 0,
        },
    });
    let stream = LogStream::Events { plan: "p".into() };
    let segments = sealed_segments(&stream, &events).expect("segments");
    assert_eq!(segments.len(), 1, "a plan's ids may skip within a segment");
    assert_eq!(segments[0].0, "events-p-00000000000000000003");
    assert_eq!(decode::<Event>(&segments[0].1).expect("valid").len(), 3);
    assert!(matches!(
        sealed_segments(&stream, &[events[1].clone(), events[0].clone()]),
        Err(Error::OutOfOrder { id: 3, last: 9 })
    ));
}
