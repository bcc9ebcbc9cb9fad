//! What the store holds of the active plan's rollout, per part, and the writes of a round that
//! bring it level with the rollout in memory (design `kube-store.md` §3.3).
//!
//! The rollout is stored as a head and one entry per working cluster
//! (`skoala_plan::Rollout::split`), so a round writes the head only when it changed and only
//! the clusters that changed: at 10,000 clusters the whole rollout is about 1.5 MB, a round
//! usually changes a handful of entries. What was stored is tracked per part, and an operation
//! is sent once *its own* part holds it ([`Saved::holds`]), which is invariant 2 per operation.
//!
//! A round whose starts take only the slots its results free stores them all at once, each
//! start carrying the result it follows (`skoala_plan::rollout::carry`, design §3.3): one
//! round trip per hand-off instead of two. What a new leader would read is then not only each
//! cluster's own entry, so [`Saved`] keeps both: the own entries, which say what to write, and
//! the results stored so far only as carried, which say what the stored picture shows.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use skoala_plan::rollout::{Carried, Progress};
use skoala_plan::{InFlight, Plan, Rollout, RolloutHead, Target, TargetEntry, TargetPhase};
use skoala_store::{RolloutRecord, StoreError, TargetRecord};

/// The parts of the active plan's rollout as last stored.
pub(super) struct Saved {
    head: RolloutHead,
    /// Cluster id → its own stored entry's order and progress.
    targets: HashMap<String, (u32, Progress)>,
    /// Cluster id → a result stored only as carried by another cluster's start, its own entry
    /// still running the operation the result ends: what a new leader would join for it.
    carried: HashMap<String, Progress>,
}

/// What one round must write, in the order it must be stored: the head first (it holds the
/// control plane, whose success must be stored before any worker starts, invariant 5), then
/// the targets that start nothing, then those that start something, so a crash never leaves a
/// start stored beside a finished target whose result is not (which would show more running
/// than `maxConcurrency` allows).
#[derive(Debug, Default)]
pub(super) struct Round {
    /// The head, if it changed.
    pub head: Option<RolloutHead>,
    /// Changed targets that start nothing: results, newly enrolled clusters.
    pub settled: Vec<TargetEntry>,
    /// Changed targets entering `running` or `rollingBack`.
    pub starting: Vec<TargetEntry>,
}

impl Round {
    /// Whether the store already has everything.
    pub fn is_empty(&self) -> bool {
        self.head.is_none() && self.settled.is_empty() && self.starting.is_empty()
    }
}

impl Saved {
    /// `rollout` as stored whole (a plan just stored with it).
    pub fn all(rollout: &Rollout) -> Saved {
        let (head, targets) = rollout.split();
        let mut saved = Saved {
            head,
            targets: HashMap::with_capacity(targets.len()),
            carried: HashMap::new(),
        };
        saved.stored(targets);
        saved
    }

    /// The rollout of plan `plan` from its stored parts, and those parts.
    pub fn load(plan: &str, record: &RolloutRecord) -> Result<(Rollout, Saved), StoreError> {
        let (head, entries) = parts(plan, record)?;
        let mut saved = Saved {
            head: head.clone(),
            targets: HashMap::with_capacity(entries.len()),
            carried: HashMap::new(),
        };
        saved.stored(entries.iter().cloned());
        Ok((Rollout::join(head, entries), saved))
    }

    /// What differs between `rollout` and the store. Compares in place: cloning only what
    /// changed keeps a round over 10,000 clusters cheap.
    pub fn round(&self, rollout: &Rollout) -> Round {
        let head = rollout.head();
        let mut round = Round {
            head: (head != self.head).then_some(head),
            ..Round::default()
        };
        for (i, (id, progress)) in rollout.workers.iter().enumerate() {
            let same = self
                .targets
                .get(id)
                .is_some_and(|(order, p)| *order as usize == i && p == progress);
            if same {
                continue;
            }
            let Some(entry) = rollout.entry(i) else {
                continue;
            };
            if TargetPhase::from(&progress.state).is_starting() {
                round.starting.push(entry);
            } else {
                round.settled.push(entry);
            }
        }
        round
    }

    /// The store acknowledged `head`.
    pub fn head_stored(&mut self, head: RolloutHead) {
        self.head = head;
    }

    /// Lets `round`'s starts be stored with its settled targets in one go, each carrying the
    /// result whose slot it takes, when that is all they wait for (`carry`): then
    /// `round.settled` is empty and `round.starting` holds every target to write.
    pub fn carry(&self, plan: &Plan, round: &mut Round) {
        let picture = |id: &str| self.picture(id);
        if skoala_plan::rollout::carry(plan, picture, &round.settled, &mut round.starting) {
            let mut all = std::mem::take(&mut round.settled);
            all.append(&mut round.starting);
            round.starting = all;
        }
    }

    /// What a new leader would join for cluster `id`.
    fn picture(&self, id: &str) -> Option<&Progress> {
        self.carried
            .get(id)
            .or_else(|| self.targets.get(id).map(|(_, p)| p))
    }

    /// The store acknowledged `entries`.
    pub fn stored(&mut self, entries: impl IntoIterator<Item = TargetEntry>) {
        for e in entries {
            // An entry's own write is newer than any result carried for it.
            self.carried.remove(&e.cluster_id);
            for c in e.carries {
                let own = self.targets.get(&c.cluster_id);
                if own.and_then(|(_, p)| p.operation_id()) == Some(c.follows.as_str()) {
                    self.carried.insert(c.cluster_id, c.progress);
                }
            }
            self.targets.insert(e.cluster_id, (e.order, e.progress));
        }
    }

    /// Whether the store holds `op` in flight on its own target: only then may it be sent
    /// (invariant 2), whatever happened to the round's other writes.
    pub fn holds(&self, op: &InFlight) -> bool {
        let state = match op.target() {
            Target::ControlPlane => Some(&self.head.control_plane.state),
            Target::Worker(id) => self.targets.get(id).map(|(_, p)| &p.state),
        };
        state
            .and_then(|s| InFlight::of(op.target().clone(), s))
            .is_some_and(|stored| stored.operation_id() == op.operation_id())
    }
}

/// The rollout of plan `plan` from its stored parts.
pub(super) fn joined(plan: &str, record: &RolloutRecord) -> Result<Rollout, StoreError> {
    let (head, entries) = parts(plan, record)?;
    Ok(Rollout::join(head, entries))
}

fn parts(
    plan: &str,
    record: &RolloutRecord,
) -> Result<(RolloutHead, Vec<TargetEntry>), StoreError> {
    let corrupt = |what: &str, e: serde_json::Error| {
        StoreError::Corrupt(format!("the rollout of plan {plan}: {what}: {e}"))
    };
    let head = serde_json::from_str(&record.head).map_err(|e| corrupt("its head", e))?;
    let entries = record
        .targets
        .iter()
        .map(|t| {
            let read: ReadProgress = serde_json::from_str(&t.progress)
                .map_err(|e| corrupt(&format!("target {}", t.cluster_id), e))?;
            Ok(TargetEntry {
                cluster_id: t.cluster_id.clone(),
                order: t.order,
                progress: read.progress,
                carries: read.carries,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok((head, entries))
}

/// A whole rollout as the store keeps it (a new plan).
pub(super) fn record(rollout: &Rollout) -> Result<RolloutRecord, StoreError> {
    let (head, targets) = rollout.split();
    Ok(RolloutRecord {
        head: head_json(&head)?,
        targets: targets
            .iter()
            .map(target_record)
            .collect::<Result<_, _>>()?,
    })
}

/// The head as the store keeps it.
pub(super) fn head_json(head: &RolloutHead) -> Result<String, StoreError> {
    serde_json::to_string(head)
        .map_err(|e| StoreError::Corrupt(format!("cannot serialize the rollout's head: {e}")))
}

/// A target as the store keeps it.
pub(super) fn target_record(entry: &TargetEntry) -> Result<TargetRecord, StoreError> {
    Ok(TargetRecord {
        cluster_id: entry.cluster_id.clone(),
        order: entry.order,
        phase: TargetPhase::from(&entry.progress.state),
        progress: serde_json::to_string(&WrittenProgress {
            progress: &entry.progress,
            carries: &entry.carries,
        })
        .map_err(|e| {
            StoreError::Corrupt(format!(
                "cannot serialize the progress of {}: {e}",
                entry.cluster_id
            ))
        })?,
    })
}

/// A target's stored progress: the plan crate's `Progress`, and beside its fields the results
/// its start carries, so either store keeps them without knowing them.
#[derive(Serialize)]
struct WrittenProgress<'a> {
    #[serde(flatten)]
    progress: &'a Progress,
    #[serde(skip_serializing_if = "<[Carried]>::is_empty")]
    carries: &'a [Carried],
}

/// [`WrittenProgress`] read back.
#[derive(Deserialize)]
struct ReadProgress {
    #[serde(flatten)]
    progress: Progress,
    #[serde(default)]
    carries: Vec<Carried>,
}
