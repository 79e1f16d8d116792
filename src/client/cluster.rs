//! The state of a whole replication group, gathered from every member.
//!
//! Each broker answers ClusterStatus with its own view (role, term, the
//! leader it knows, its W/F/R/C positions) and the member list; asking
//! every member in parallel, each within a time limit, gives the group's
//! picture even when some members are down or frozen.

use super::admin::Admin;
use super::connection::{Connection, ConnectionConfig};
use super::error::ClientError;
use crate::wire::api::{ClusterRole, ClusterStatusResponse};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One member as it answered, or `None` when it did not within the limit.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    /// The member's node id.
    pub id: u64,
    /// Its address, as the first broker asked lists it.
    pub addr: String,
    /// Its own answer.
    pub status: Option<ClusterStatusResponse>,
}

/// The group as its members describe themselves.
#[derive(Debug, Clone)]
pub struct GroupStatus {
    /// The leader of the highest term any member reports, if some member
    /// leads in it (a standalone broker reports none).
    pub leader: Option<u64>,
    /// The highest term any member reports.
    pub term: u64,
    /// Every member, in the order of the member list.
    pub members: Vec<MemberStatus>,
}

/// Asks the broker at `addr` for its own ClusterStatus, on a new
/// connection opened within `timeout`.
///
/// # Errors
/// Connection, handshake and decode errors.
pub fn status_of(addr: &str, timeout: Duration) -> Result<ClusterStatusResponse, ClientError> {
    let sock: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| ClientError::Protocol(format!("{addr} resolves to nothing")))?;
    let conn = Connection::connect_timeout_with(&sock, timeout, &ConnectionConfig::default())?;
    Admin::from_connection(conn).cluster_status()
}

/// Asks the broker at `addr` for its member list, then every member for
/// its status, each within `timeout`.
///
/// # Errors
/// The broker at `addr` could not be asked.
pub fn group_status(addr: &str, timeout: Duration) -> Result<GroupStatus, ClientError> {
    let first = status_of(addr, timeout)?;
    if first.nodes.is_empty() {
        // A standalone broker: a group of one that leads nothing.
        return Ok(GroupStatus {
            leader: None,
            term: first.term,
            members: vec![MemberStatus {
                id: first.node_id,
                addr: addr.to_string(),
                status: Some(first),
            }],
        });
    }
    let (tx, rx) = mpsc::channel();
    for (i, node) in first.nodes.iter().enumerate() {
        if node.id == first.node_id {
            continue;
        }
        let tx = tx.clone();
        let addr = node.addr.clone();
        // Detached: a frozen member may hold its thread for the whole
        // handshake timeout; the answer is no longer waited for by then.
        std::thread::spawn(move || {
            let _ = tx.send((i, status_of(&addr, timeout).ok()));
        });
    }
    drop(tx);
    let mut members: Vec<MemberStatus> = first
        .nodes
        .iter()
        .map(|n| MemberStatus {
            id: n.id,
            addr: n.addr.clone(),
            status: None,
        })
        .collect();
    if let Some(me) = members.iter_mut().find(|m| m.id == first.node_id) {
        me.status = Some(first.clone());
    }
    let deadline = Instant::now() + timeout;
    while let Ok((i, status)) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        members[i].status = status;
    }
    let term = members
        .iter()
        .filter_map(|m| m.status.as_ref().map(|s| s.term))
        .max()
        .unwrap_or(0);
    let leader = members
        .iter()
        .filter_map(|m| m.status.as_ref())
        .find(|s| s.term == term && s.role == ClusterRole::Leader)
        .map(|s| s.node_id);
    Ok(GroupStatus {
        leader,
        term,
        members,
    })
}

/// The address of the leader of the group `addr` belongs to (`addr`
/// itself for a standalone broker or the leader), as `addr`'s member list
/// gives it; waits up to `timeout` for an election.
///
/// # Errors
/// `addr` cannot be asked, or no leader emerged within `timeout`.
pub fn leader_addr(addr: &str, timeout: Duration) -> Result<String, ClientError> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = status_of(addr, timeout)?;
        if matches!(status.role, ClusterRole::Standalone | ClusterRole::Leader) {
            return Ok(addr.to_string());
        }
        if let Some(node) = status.nodes.iter().find(|n| n.id == status.leader_id) {
            return Ok(node.addr.clone());
        }
        if Instant::now() >= deadline {
            return Err(ClientError::Broker {
                code: crate::wire::ErrorCode::NotLeader,
                message: format!("the group of {addr} has no leader after {timeout:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `call` against the leader of `addr`'s group, finding it again
/// when the answer is `NotLeader` (leadership moved meanwhile), until
/// `timeout`.
///
/// # Errors
/// The last error of `call`, or of finding the leader.
pub fn on_leader<T>(
    addr: &str,
    timeout: Duration,
    mut call: impl FnMut(&Admin) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let deadline = Instant::now() + timeout;
    loop {
        let leader = leader_addr(addr, deadline.saturating_duration_since(Instant::now()))?;
        let result = Admin::connect(leader.as_str()).and_then(|admin| call(&admin));
        match result {
            Err(e)
                if e.code() == Some(crate::wire::ErrorCode::NotLeader)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// The lower-case name of a role, as the CLI prints it.
pub fn role_name(role: ClusterRole) -> &'static str {
    match role {
        ClusterRole::Follower => "follower",
        ClusterRole::PreCandidate => "pre-candidate",
        ClusterRole::Candidate => "candidate",
        ClusterRole::Leader => "leader",
        ClusterRole::Standalone => "standalone",
    }
}
