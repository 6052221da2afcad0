//! A linearizability checker: Wing & Gong's search with Lowe's memo of (operations
//! linearized, model state) pairs, run on each key's history on its own (linearizability is
//! compositional, Herlihy & Wing's P-compositionality).
//!
//! An operation whose outcome is unknown (a timeout, a cut connection) has no return time:
//! it may take effect at any point after its invocation, or never. The search therefore ends
//! once every operation *with* a return is linearized.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;
use std::hash::Hash;

/// A sequential specification.
pub trait Model: Clone + Eq + Hash + Debug {
    type Input: Debug;
    type Output: Debug;
    /// The state after `input` answered `output` in this state; `None` if it could not have
    /// answered so. `output` is `None` for an operation whose outcome is unknown: the state
    /// after it took effect.
    fn step(&self, input: &Self::Input, output: Option<&Self::Output>) -> Option<Self>;

    /// Whether `ops` is a history that explains itself: every write an answer names is in
    /// it. Shrinking keeps to such sub-histories, so that what it prints is a real anomaly
    /// (a read alone of a value nobody wrote fails, and says nothing).
    fn closed(_ops: &[Op<Self::Input, Self::Output>]) -> bool {
        true
    }
}

/// One call: invoked at `invoke`, returned at `ret` (unknown outcome: `None`), times in any
/// one monotonic clock.
#[derive(Debug, Clone)]
pub struct Op<I, O> {
    pub client: usize,
    pub invoke: u64,
    pub ret: Option<u64>,
    pub input: I,
    pub output: Option<O>,
}

/// A history that no order explains, with the smallest sub-history found that still fails.
#[derive(Debug)]
pub struct Anomaly<I, O> {
    pub key: String,
    pub ops: usize,
    pub smallest: Vec<Op<I, O>>,
    /// The search went past its budget without an answer: reported, never passed.
    pub gave_up: bool,
}

impl<I: Debug, O: Debug> std::fmt::Display for Anomaly<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.gave_up {
            writeln!(f, "key {:?}: the check gave up after {MAX_STATES} states ({} operations)", self.key, self.ops)?;
            return Ok(());
        }
        writeln!(
            f,
            "key {:?}: not linearizable ({} operations); smallest failing sub-history ({}):",
            self.key,
            self.ops,
            self.smallest.len()
        )?;
        for op in &self.smallest {
            let ret = op.ret.map_or("unknown".to_string(), |r| format!("{:.3}", r as f64 / 1e9));
            let who = if op.client == usize::MAX { "harness".to_string() } else { format!("client {:>2}", op.client) };
            writeln!(f, "  {who} [{:.3} .. {ret}] {:?} -> {:?}", op.invoke as f64 / 1e9, op.input, op.output)?;
        }
        Ok(())
    }
}

/// Each key's operations.
pub type Histories<M> = BTreeMap<String, Vec<Op<<M as Model>::Input, <M as Model>::Output>>>;

/// Histories larger than this are reported whole rather than shrunk.
const SHRINK_UP_TO: usize = 2_000;

/// How far the search may go on one history before it gives up (and says so).
const MAX_STATES: usize = 2_000_000;

/// Checks each key's history from `init(key)`; the anomalies found, one per failing key (a
/// history the search gave up on counts as one, and says so).
pub fn check<M: Model>(init: impl Fn(&str) -> M, histories: Histories<M>) -> Vec<Anomaly<M::Input, M::Output>>
where
    M::Input: Clone,
    M::Output: Clone,
{
    let mut anomalies = Vec::new();
    for (key, ops) in histories {
        let start = init(&key);
        let n = ops.len();
        match search(&start, &ops, MAX_STATES) {
            Verdict::Linearizable => {}
            Verdict::GaveUp => anomalies.push(Anomaly { key, ops: n, smallest: ops, gave_up: true }),
            Verdict::NotLinearizable => {
                let smallest = if n <= SHRINK_UP_TO { shrink(&start, ops) } else { ops };
                anomalies.push(Anomaly { key, ops: n, smallest, gave_up: false });
            }
        }
    }
    anomalies
}

/// Removes runs of operations, halving their length down to one, while the rest still
/// fails and explains itself ([`Model::closed`]): a sub-history from which no single
/// operation can be removed (Zeller's delta debugging, simplified).
fn shrink<M: Model>(init: &M, mut ops: Vec<Op<M::Input, M::Output>>) -> Vec<Op<M::Input, M::Output>>
where
    M::Input: Clone,
    M::Output: Clone,
{
    let mut chunk = ops.len().div_ceil(2).max(1);
    loop {
        let mut at = 0;
        while at < ops.len() {
            let mut without = ops.clone();
            without.drain(at..(at + chunk).min(ops.len()));
            if M::closed(&without) && search(init, &without, MAX_STATES) == Verdict::NotLinearizable {
                ops = without;
            } else {
                at += chunk;
            }
        }
        if chunk == 1 {
            return ops;
        }
        chunk = chunk.div_ceil(2);
    }
}

/// What the search found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    GaveUp,
}

/// Whether some total order of `ops`, consistent with real time, is a run of the model.
pub fn linearizable<M: Model>(init: &M, ops: &[Op<M::Input, M::Output>]) -> bool {
    search(init, ops, MAX_STATES) == Verdict::Linearizable
}

fn search<M: Model>(init: &M, ops: &[Op<M::Input, M::Output>], max_states: usize) -> Verdict {
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let mut done = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, M)> = HashSet::new();
    let is_done = |d: &[u64], i: usize| d[i / 64] & (1 << (i % 64)) != 0;
    let must = ops.iter().filter(|o| o.ret.is_some()).count();

    // Depth-first, the stack holding (state, candidate index tried next at this depth).
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| ops[i].invoke);
    let mut stack: Vec<(M, usize, Option<usize>)> = vec![(init.clone(), 0, None)];
    let mut linearized_must = 0usize;
    while let Some((state, next, _)) = stack.last().cloned() {
        if linearized_must == must {
            return Verdict::Linearizable;
        }
        if seen.len() > max_states {
            return Verdict::GaveUp;
        }
        // Every remaining operation must start before the earliest return among them.
        let min_ret = order.iter().filter(|&&i| !is_done(&done, i)).filter_map(|&i| ops[i].ret).min();
        let mut advanced = false;
        for (pos, &i) in order.iter().enumerate().skip(next) {
            if is_done(&done, i) {
                continue;
            }
            if min_ret.is_some_and(|r| ops[i].invoke > r) {
                break;
            }
            let Some(after) = state.step(&ops[i].input, ops[i].output.as_ref()) else { continue };
            done[i / 64] |= 1 << (i % 64);
            if !seen.insert((done.clone(), after.clone())) {
                done[i / 64] &= !(1 << (i % 64));
                continue;
            }
            if let Some(top) = stack.last_mut() {
                top.1 = pos + 1;
            }
            if ops[i].ret.is_some() {
                linearized_must += 1;
            }
            stack.push((after, 0, Some(i)));
            advanced = true;
            break;
        }
        if !advanced {
            // Undo the operation that led here, and try the next candidate below.
            let Some((_, _, Some(i))) = stack.pop() else { return Verdict::NotLinearizable };
            done[i / 64] &= !(1 << (i % 64));
            if ops[i].ret.is_some() {
                linearized_must -= 1;
            }
        }
    }
    Verdict::NotLinearizable
}

/// Coffer's secrets API as one register per secret: absent, or the sizes of its versions
/// in order (version numbers are positions). Each write in a run has a value of a size no
/// other write to that secret has, so a read of the version list tells which writes it saw.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Secret(pub Option<Vec<u32>>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretCall {
    /// Create with a value of this size.
    Create(u32),
    /// Rotate to a value of this size.
    Rotate(u32),
    /// Inspect.
    Read,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretAnswer {
    /// A create or a rotate made this version.
    Version(u32),
    /// The sizes of the versions an inspect listed, in version order.
    Versions(Vec<u32>),
    /// A create refused: the name is taken.
    Exists,
    /// A rotate or an inspect refused: no such secret.
    Missing,
}

impl Model for Secret {
    type Input = SecretCall;
    type Output = SecretAnswer;

    fn step(&self, input: &SecretCall, output: Option<&SecretAnswer>) -> Option<Self> {
        let len = self.0.as_ref().map_or(0, |v| v.len() as u32);
        match (input, output, &self.0) {
            (SecretCall::Create(size), None | Some(SecretAnswer::Version(1)), None) => Some(Secret(Some(vec![*size]))),
            (SecretCall::Create(_), Some(SecretAnswer::Exists), Some(_)) => Some(self.clone()),
            (SecretCall::Rotate(size), None, Some(v)) => Some(Secret(Some([v.as_slice(), &[*size]].concat()))),
            (SecretCall::Rotate(size), Some(SecretAnswer::Version(n)), Some(v)) if *n == len + 1 => {
                Some(Secret(Some([v.as_slice(), &[*size]].concat())))
            }
            (SecretCall::Rotate(_), Some(SecretAnswer::Missing), None) => Some(self.clone()),
            (SecretCall::Read, None, _) => Some(self.clone()),
            (SecretCall::Read, Some(SecretAnswer::Versions(seen)), Some(v)) if seen == v => Some(self.clone()),
            (SecretCall::Read, Some(SecretAnswer::Missing), None) => Some(self.clone()),
            _ => None,
        }
    }

    /// Every size a read lists is written in `ops`, and a write that made version `n` has
    /// `n - 1` other writes beside it.
    fn closed(ops: &[Op<SecretCall, SecretAnswer>]) -> bool {
        let written: Vec<u32> = ops
            .iter()
            .filter_map(|o| match o.input {
                SecretCall::Create(s) | SecretCall::Rotate(s) => Some(s),
                SecretCall::Read => None,
            })
            .collect();
        ops.iter().all(|o| match &o.output {
            Some(SecretAnswer::Versions(seen)) => seen.iter().all(|s| written.contains(s)),
            Some(SecretAnswer::Version(n)) => written.len() >= *n as usize,
            _ => true,
        })
    }
}

/// [`Secret`] held to the order of versions a final read saw: a run's last read of a secret
/// lists every write that ever took effect, in version order (sizes are unique), so a write
/// can only be linearized as the next of that list. The same verdicts as [`Secret`] on
/// histories that end with that read; without the pruning, writes of unknown outcome make
/// the search factorial.
#[derive(Debug, Clone)]
pub struct OrderedSecret {
    pub state: Secret,
    pub order: std::sync::Arc<Vec<u32>>,
}

impl PartialEq for OrderedSecret {
    fn eq(&self, other: &Self) -> bool {
        self.state == other.state
    }
}

impl Eq for OrderedSecret {}

impl Hash for OrderedSecret {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.state.hash(h);
    }
}

impl Model for OrderedSecret {
    type Input = SecretCall;
    type Output = SecretAnswer;

    fn step(&self, input: &SecretCall, output: Option<&SecretAnswer>) -> Option<Self> {
        let state = self.state.step(input, output)?;
        let versions = state.0.as_deref().unwrap_or(&[]);
        if !self.order.starts_with(versions) {
            return None;
        }
        Some(Self { state, order: self.order.clone() })
    }

    fn closed(ops: &[Op<SecretCall, SecretAnswer>]) -> bool {
        Secret::closed(ops)
    }
}

/// Ends a secret's history with the final read (`last`: the versions every manager listed
/// once the run was over and healed, `None` if absent), and drops the writes of unknown
/// outcome that it shows never took effect.
pub fn settle(
    mut ops: Vec<Op<SecretCall, SecretAnswer>>,
    last: Option<&[u32]>,
    at: u64,
) -> Vec<Op<SecretCall, SecretAnswer>> {
    let seen = last.unwrap_or(&[]);
    ops.retain(|o| match (&o.input, &o.output) {
        (SecretCall::Create(s) | SecretCall::Rotate(s), None) => seen.contains(s),
        _ => true,
    });
    let output = Some(last.map_or(SecretAnswer::Missing, |v| SecretAnswer::Versions(v.to_vec())));
    ops.push(Op { client: usize::MAX, invoke: at, ret: Some(at + 1), input: SecretCall::Read, output });
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        client: usize,
        invoke: u64,
        ret: Option<u64>,
        input: SecretCall,
        output: Option<SecretAnswer>,
    ) -> Op<SecretCall, SecretAnswer> {
        Op { client, invoke, ret, input, output }
    }

    fn one(ops: Vec<Op<SecretCall, SecretAnswer>>) -> Vec<Anomaly<SecretCall, SecretAnswer>> {
        check(|_| Secret::default(), BTreeMap::from([("s".to_string(), ops)]))
    }

    use SecretAnswer::*;
    use SecretCall::*;

    #[test]
    fn a_sequential_history_is_linearizable() {
        let ops = vec![
            op(0, 0, Some(1), Read, Some(Missing)),
            op(0, 2, Some(3), Create(10), Some(Version(1))),
            op(1, 4, Some(5), Create(11), Some(Exists)),
            op(0, 6, Some(7), Rotate(12), Some(Version(2))),
            op(1, 8, Some(9), Read, Some(Versions(vec![10, 12]))),
        ];
        assert!(one(ops).is_empty());
    }

    #[test]
    fn concurrent_writes_may_take_effect_in_either_order() {
        let ops = vec![
            op(0, 0, Some(1), Create(10), Some(Version(1))),
            op(1, 2, Some(10), Rotate(11), Some(Version(3))),
            op(2, 3, Some(9), Rotate(12), Some(Version(2))),
            op(0, 11, Some(12), Read, Some(Versions(vec![10, 12, 11]))),
        ];
        assert!(one(ops).is_empty());
    }

    #[test]
    fn a_stale_read_is_caught_and_shrunk_to_what_explains_it() {
        let ops = vec![
            op(0, 0, Some(1), Create(10), Some(Version(1))),
            op(3, 0, Some(1), Read, None),
            op(1, 2, Some(3), Rotate(11), Some(Version(2))),
            // Begins after the rotate returned, yet misses it.
            op(2, 4, Some(5), Read, Some(Versions(vec![10]))),
            op(0, 6, Some(7), Read, Some(Versions(vec![10, 11]))),
        ];
        let found = one(ops);
        assert_eq!(found.len(), 1, "{found:?}");
        let small = &found[0].smallest;
        assert_eq!(small.len(), 3, "{}", found[0]);
        assert!(small.iter().any(|o| o.output == Some(Versions(vec![10]))));
        assert!(found[0].to_string().contains("not linearizable"));
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let ops = vec![
            op(0, 0, Some(1), Create(10), Some(Version(1))),
            op(1, 2, Some(3), Rotate(11), Some(Version(2))),
            op(1, 4, Some(5), Rotate(12), Some(Version(2))),
        ];
        assert_eq!(one(ops).len(), 1);
    }

    #[test]
    fn an_unknown_write_may_or_may_not_have_happened_but_only_after_it_began() {
        let seen = vec![
            op(0, 0, Some(1), Create(10), Some(Version(1))),
            op(1, 2, None, Rotate(11), None),
            op(2, 3, Some(4), Read, Some(Versions(vec![10, 11]))),
        ];
        assert!(one(seen).is_empty(), "took effect");
        let unseen = vec![
            op(0, 0, Some(1), Create(10), Some(Version(1))),
            op(1, 2, None, Rotate(11), None),
            op(2, 3, Some(4), Read, Some(Versions(vec![10]))),
        ];
        assert!(one(unseen).is_empty(), "never took effect");
        let from_the_future = vec![
            op(0, 0, Some(1), Create(10), Some(Version(1))),
            op(2, 2, Some(3), Read, Some(Versions(vec![10, 11]))),
            op(1, 4, None, Rotate(11), None),
        ];
        assert_eq!(one(from_the_future).len(), 1, "seen before it was invoked");
    }

    #[test]
    fn a_read_that_goes_back_in_time_is_caught() {
        let ops = vec![
            op(0, 0, Some(1), Create(10), Some(Version(1))),
            op(1, 2, None, Rotate(11), None),
            op(2, 3, Some(4), Read, Some(Versions(vec![10, 11]))),
            op(3, 5, Some(6), Read, Some(Versions(vec![10]))),
        ];
        assert_eq!(one(ops).len(), 1);
    }

    #[test]
    fn many_writes_of_unknown_outcome_check_quickly_once_settled() {
        // 40 rotates time out, all concurrent; the final read says which took effect.
        let mut ops = vec![op(0, 0, Some(1), Create(1), Some(Version(1)))];
        for k in 0..40u32 {
            ops.push(op(k as usize % 8, 10 + u64::from(k), None, Rotate(k + 2), None));
        }
        let last: Vec<u32> = std::iter::once(1).chain((0..40).filter(|k| k % 3 == 0).map(|k| k + 2)).collect();
        ops.push(op(9, 100, Some(200), Read, Some(Versions(last[..5].to_vec()))));
        let ops = settle(ops, Some(&last), 1_000);
        let order = std::sync::Arc::new(last);
        let found = check(
            |_| OrderedSecret { state: Secret::default(), order: order.clone() },
            BTreeMap::from([("s".into(), ops)]),
        );
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_final_read_that_misses_an_acknowledged_write_fails() {
        let ops =
            vec![op(0, 0, Some(1), Create(10), Some(Version(1))), op(1, 2, Some(3), Rotate(11), Some(Version(2)))];
        let last = vec![10];
        let ops = settle(ops, Some(&last), 100);
        let order = std::sync::Arc::new(last);
        let found = check(
            |_| OrderedSecret { state: Secret::default(), order: order.clone() },
            BTreeMap::from([("s".into(), ops)]),
        );
        assert_eq!(found.len(), 1);
    }

    #[test]
    fn many_concurrent_clients_check_quickly() {
        // 8 clients, 400 operations, each overlapping the two before and after it; every read
        // sees every write invoked before it: linearizable.
        let mut ops = vec![op(0, 0, Some(1), Create(1), Some(Version(1)))];
        let mut sizes = vec![1u32];
        let mut t = 10;
        for k in 0..400u32 {
            let client = (k % 8) as usize;
            if k % 3 == 0 {
                sizes.push(k + 2);
                ops.push(op(client, t, Some(t + 70), Rotate(k + 2), Some(Version(sizes.len() as u32))));
            } else {
                ops.push(op(client, t, Some(t + 70), Read, Some(Versions(sizes.clone()))));
            }
            t += 30;
        }
        assert!(one(ops).is_empty());
    }
}
