//! Duplicate suppression for one reader: a card held on a repeating reader emits once.
//!
//! Pure: the caller passes monotonic timestamps (kernel event times or `Instant`s), never wall
//! time. Use one [`Dedup`] per reader: entries and exits are separate events and must never be
//! merged. The key is the raw frame (bits and count) plus its source, not the decoded number, so
//! two formats never collide. Keypad digits and PINs are never deduplicated
//! ([`DedupKey::for_event`] returns `None` for them).
//!
//! Rule: a key emits if it was never seen, or if **both** the card left the field (no repeat for
//! more than `presence_gap`) **and** at least `rearm` passed since it last emitted. Every repeat
//! refreshes the presence, so a card held on the reader emits exactly once. A different card is
//! emitted immediately.

use crate::bits::Bits;
use crate::event::ReaderEvent;

/// Windows of the rule (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupPolicy {
    /// Silence after which the card is considered gone (default 500 ms; must exceed the reader's
    /// repeat interval: 220–500 ms for RDM6300, ~100–300 ms for PN532 polling).
    pub presence_gap_ns: u64,
    /// Least time between two emissions of the same key (default 1.5 s; useful 0–5 s).
    pub rearm_ns: u64,
}

impl Default for DedupPolicy {
    fn default() -> Self {
        DedupPolicy {
            presence_gap_ns: 500_000_000,
            rearm_ns: 1_500_000_000,
        }
    }
}

/// Where a credential came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// Wiegand D0/D1.
    Wiegand,
    /// A serial module or converter.
    Serial,
    /// OSDP.
    Osdp,
}

/// The default key: source plus the raw frame with its bit count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DedupKey {
    /// Where it came from.
    pub source: Source,
    /// The raw bits and count.
    pub bits: Bits,
}

impl DedupKey {
    /// The key of a card event; `None` for PINs and faults, which are never deduplicated.
    pub fn for_event(source: Source, event: &ReaderEvent) -> Option<Self> {
        event.credential().map(|c| DedupKey {
            source,
            bits: c.bits(),
        })
    }
}

/// Outcome of [`Dedup::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A new presentation: emit the event.
    Emit,
    /// A repeat: drop it.
    Suppress,
}

#[derive(Debug, Clone)]
struct Entry<K> {
    key: K,
    last_seen: u64,
    last_emitted: u64,
}

/// Duplicate filter for one reader, remembering up to `N` recent keys without allocation. When
/// full, an expired entry (one that would emit anyway) is replaced first, else the least recently
/// seen one.
#[derive(Debug, Clone)]
pub struct Dedup<K = DedupKey, const N: usize = 32> {
    policy: DedupPolicy,
    entries: [Option<Entry<K>>; N],
    suppressed: u64,
}

impl<K: PartialEq, const N: usize> Dedup<K, N> {
    /// A filter with the given windows.
    pub fn new(policy: DedupPolicy) -> Self {
        Dedup {
            policy,
            entries: core::array::from_fn(|_| None),
            suppressed: 0,
        }
    }

    /// The windows.
    pub const fn policy(&self) -> &DedupPolicy {
        &self.policy
    }

    /// Repeats suppressed so far (for metrics).
    pub const fn suppressed(&self) -> u64 {
        self.suppressed
    }

    fn expired(&self, e: &Entry<K>, now_ns: u64) -> bool {
        now_ns.saturating_sub(e.last_seen) > self.policy.presence_gap_ns
            && now_ns.saturating_sub(e.last_emitted) >= self.policy.rearm_ns
    }

    /// Records a sighting of `key` at `now_ns` and says whether to emit it.
    pub fn observe(&mut self, key: K, now_ns: u64) -> Verdict {
        let policy = self.policy;
        if let Some(e) = self.entries.iter_mut().flatten().find(|e| e.key == key) {
            let gone = now_ns.saturating_sub(e.last_seen) > policy.presence_gap_ns;
            let rearmed = now_ns.saturating_sub(e.last_emitted) >= policy.rearm_ns;
            e.last_seen = now_ns;
            return if gone && rearmed {
                e.last_emitted = now_ns;
                Verdict::Emit
            } else {
                self.suppressed += 1;
                Verdict::Suppress
            };
        }
        if N == 0 {
            return Verdict::Emit;
        }
        let slot = self.free_slot(now_ns);
        if let Some(s) = self.entries.get_mut(slot) {
            *s = Some(Entry {
                key,
                last_seen: now_ns,
                last_emitted: now_ns,
            });
        }
        Verdict::Emit
    }

    fn free_slot(&self, now_ns: u64) -> usize {
        let mut oldest = (0usize, u64::MAX);
        for (i, slot) in self.entries.iter().enumerate() {
            match slot {
                None => return i,
                Some(e) if self.expired(e, now_ns) => return i,
                Some(e) if e.last_seen < oldest.1 => oldest = (i, e.last_seen),
                Some(_) => {}
            }
        }
        oldest.0
    }

    /// Forgets entries that would emit again anyway (keeps the table small; optional).
    pub fn prune(&mut self, now_ns: u64) {
        for i in 0..N {
            if let Some(e) = &self.entries[i] {
                if self.expired(e, now_ns) {
                    self.entries[i] = None;
                }
            }
        }
    }

    /// Number of remembered keys.
    pub fn len(&self) -> usize {
        self.entries.iter().flatten().count()
    }

    /// True if no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: PartialEq, const N: usize> Default for Dedup<K, N> {
    fn default() -> Self {
        Self::new(DedupPolicy::default())
    }
}
