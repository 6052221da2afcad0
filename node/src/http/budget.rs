//! Connection budgets: who may hold a connection, and how many.
//!
//! An anonymous client must never take the slots of the cluster's own nodes. So a
//! connection is counted in one of three budgets:
//!
//! - **anonymous**: from accept until it presents a certificate of this cluster, and for
//!   its whole life if it never does (handshakes in progress, joins, `/v1/ca`, health
//!   checks, API tokens). When this budget is full, the *oldest* anonymous connection is
//!   closed to make room (a flood of idle sockets churns itself, while a real client, whose
//!   handshake takes milliseconds, gets through); at most `per_source` of them come from
//!   one address, beyond which that address's oldest is closed.
//! - **managers**: connections with a manager certificate (Raft, forwarding).
//! - **nodes**: connections with a worker or admin certificate.
//!
//! The last two are plain caps: a connection over them is closed, and no anonymous one
//! can ever count against them.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::local::config::ConnectionLimits;

/// The budgets of one listener.
#[derive(Debug)]
pub struct Budgets {
    anonymous: Arc<Anonymous>,
    managers: Arc<Semaphore>,
    nodes: Arc<Semaphore>,
    /// Connections per certificate (by serial): one stolen certificate cannot take a
    /// whole budget.
    per_cert: Arc<PerCert>,
}

impl Budgets {
    pub fn new(limits: &ConnectionLimits) -> Self {
        Self {
            anonymous: Arc::new(Anonymous {
                cap: limits.anonymous.max(1),
                per_source: limits.anonymous_per_source.max(1),
                state: Mutex::new(State::default()),
            }),
            managers: Arc::new(Semaphore::new(limits.managers)),
            nodes: Arc::new(Semaphore::new(limits.nodes)),
            per_cert: Arc::new(PerCert { cap: limits.per_certificate.max(1), open: Mutex::default() }),
        }
    }

    /// A slot for one more connection of the certificate with `serial`, if it has not
    /// reached its share.
    pub fn certificate(&self, serial: &str) -> Option<CertSlot> {
        let mut open = self.per_cert.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(serial.to_string()).or_default();
        if *n >= self.per_cert.cap {
            return None;
        }
        *n += 1;
        Some(CertSlot { serial: serial.to_string(), owner: self.per_cert.clone() })
    }

    /// A slot for a connection just accepted from `source`, closing older anonymous
    /// connections if the budget is full. Its token is cancelled when it is evicted.
    pub fn admit(&self, source: IpAddr) -> AnonymousSlot {
        self.anonymous.admit(source)
    }

    /// A slot for a connection that presented a manager certificate, if there is one.
    pub fn manager(&self) -> Option<OwnedSemaphorePermit> {
        self.managers.clone().try_acquire_owned().ok()
    }

    /// A slot for a connection that presented a worker or admin certificate, if there is one.
    pub fn node(&self) -> Option<OwnedSemaphorePermit> {
        self.nodes.clone().try_acquire_owned().ok()
    }

    /// How many anonymous connections are open.
    #[cfg(test)]
    fn anonymous_open(&self) -> usize {
        self.anonymous.lock().entries.len()
    }
}

#[derive(Debug)]
struct PerCert {
    cap: usize,
    open: Mutex<std::collections::HashMap<String, usize>>,
}

/// One connection of a certificate; released on drop.
#[derive(Debug)]
pub struct CertSlot {
    serial: String,
    owner: Arc<PerCert>,
}

impl Drop for CertSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.serial) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.serial);
            }
        }
    }
}

#[derive(Debug)]
struct Anonymous {
    cap: usize,
    per_source: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    /// Oldest first.
    entries: VecDeque<Entry>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    source: IpAddr,
    evict: CancellationToken,
}

impl Anonymous {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn admit(self: &Arc<Self>, source: IpAddr) -> AnonymousSlot {
        let mut s = self.lock();
        if s.entries.iter().filter(|e| e.source == source).count() >= self.per_source {
            if let Some(i) = s.entries.iter().position(|e| e.source == source) {
                if let Some(old) = s.entries.remove(i) {
                    old.evict.cancel();
                }
            }
        }
        while s.entries.len() >= self.cap {
            match s.entries.pop_front() {
                Some(old) => old.evict.cancel(),
                None => break,
            }
        }
        s.next += 1;
        let (id, evict) = (s.next, CancellationToken::new());
        s.entries.push_back(Entry { id, source, evict: evict.clone() });
        AnonymousSlot { id, evicted: evict, owner: self.clone() }
    }

    fn release(&self, id: u64) {
        let mut s = self.lock();
        if let Some(i) = s.entries.iter().position(|e| e.id == id) {
            s.entries.remove(i);
        }
    }
}

/// A connection's place in the anonymous budget; released on drop.
#[derive(Debug)]
pub struct AnonymousSlot {
    id: u64,
    /// Cancelled when the connection is evicted to make room for a newer one.
    pub evicted: CancellationToken,
    owner: Arc<Anonymous>,
}

impl Drop for AnonymousSlot {
    fn drop(&mut self) {
        self.owner.release(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(anonymous: usize, per_source: usize) -> ConnectionLimits {
        ConnectionLimits { anonymous, anonymous_per_source: per_source, managers: 1, nodes: 2, ..Default::default() }
    }

    #[test]
    fn a_full_anonymous_budget_closes_its_oldest_connection() {
        let b = Budgets::new(&limits(3, 3));
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let c: IpAddr = "10.0.0.2".parse().expect("ip");
        let first = b.admit(a);
        let second = b.admit(c);
        let third = b.admit(a);
        assert!(!first.evicted.is_cancelled());
        let fourth = b.admit(c);
        assert!(first.evicted.is_cancelled(), "the oldest makes room");
        assert!(!second.evicted.is_cancelled() && !third.evicted.is_cancelled() && !fourth.evicted.is_cancelled());
        drop(first);
        assert_eq!(b.anonymous_open(), 3);
        drop(second);
        assert_eq!(b.anonymous_open(), 2, "a closed connection frees its slot");
    }

    #[test]
    fn one_source_cannot_hold_more_than_its_share() {
        let b = Budgets::new(&limits(10, 2));
        let flood: IpAddr = "10.0.0.9".parse().expect("ip");
        let other = b.admit("10.0.0.1".parse().expect("ip"));
        let x = b.admit(flood);
        let y = b.admit(flood);
        let z = b.admit(flood);
        assert!(x.evicted.is_cancelled(), "the flooding address's oldest goes");
        assert!(!y.evicted.is_cancelled() && !z.evicted.is_cancelled());
        assert!(!other.evicted.is_cancelled(), "other addresses are untouched");
    }

    #[test]
    fn node_and_manager_budgets_are_caps_of_their_own() {
        let b = Budgets::new(&limits(1, 1));
        let m = b.manager().expect("one manager slot");
        assert!(b.manager().is_none(), "managers are capped");
        let (n1, n2) = (b.node().expect("node"), b.node().expect("node"));
        assert!(b.node().is_none());
        // One certificate has a share of its own.
        let one = Budgets::new(&ConnectionLimits { per_certificate: 2, ..Default::default() });
        let (c1, c2) = (one.certificate("01").expect("first"), one.certificate("01").expect("second"));
        assert!(one.certificate("01").is_none(), "a third connection of one certificate");
        assert!(one.certificate("02").is_some(), "another certificate is not held back");
        drop((c1, c2));
        assert!(one.certificate("01").is_some(), "closed connections free their share");
        // Anonymous churn never touches them.
        for i in 0..100u8 {
            let _ = b.admit(IpAddr::from([10, 0, 0, i]));
        }
        drop((m, n1, n2));
        assert!(b.manager().is_some() && b.node().is_some());
    }
}
