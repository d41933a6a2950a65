//! Raft type configuration and the commands replicated through the log.

use ringfs_core::fs::{FsOp, FsResult};
use ringfs_core::layout::NodeSpec;
use ringfs_core::{BlockId, VolumeId};
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = tokio::fs::File,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;

/// A replicated state-machine command. Everything that changes metadata is one command,
/// applied deterministically on every node: wall-clock time is captured once, by the
/// node that proposes the command, in `now_ns`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateVolume {
        name: String,
        capacity: u64,
        replication: u32,
        now_ns: i64,
    },
    ResizeVolume {
        name: String,
        capacity: u64,
    },
    DeleteVolume {
        name: String,
    },
    Fs {
        volume: VolumeId,
        op: FsOp,
        now_ns: i64,
    },
    /// Adds a node to (or updates it in) the cluster's node table and computes the next
    /// layout version.
    /// `partitions` and `replication` only matter for the first node: they fix the
    /// cluster's partition count and replication ceiling.
    AddNode {
        spec: NodeSpec,
        addr: String,
        partitions: u32,
        replication: u32,
    },
    /// These blocks were deleted from every replica: forget them.
    GcDone {
        ids: Vec<BlockId>,
    },
    /// Removes up to `limit` inodes of a deleted volume, queueing their blocks for GC.
    PurgeVolume {
        id: VolumeId,
        limit: u32,
    },
    /// Drain, cancel a drain, mark down or back up; computes the next layout (see
    /// `members::set_state`).
    SetNodeState {
        id: u64,
        state: crate::members::NodeState,
    },
    /// Removes a drained node (or, with `force`, a down one) from the node table and the
    /// layout.
    RemoveNode {
        id: u64,
        force: bool,
    },
    /// `node` holds everything layout `version` assigns it; retires older versions once
    /// every active node has reported.
    SyncReport {
        node: u64,
        version: u64,
    },
    /// Changes nothing; answers which of `ids` have no reference (a read ordered in the
    /// log, used to reconcile a node's leftover copies).
    Unreferenced {
        ids: Vec<BlockId>,
    },
    /// Ends the listed client sessions whose lease ran out before `now_ns` (re-checked
    /// here), dropping the orphans only they held.
    ExpireSessions {
        sessions: Vec<(VolumeId, u64)>,
        now_ns: i64,
    },
    /// Takes snapshot `name` of volume `volume`: a read-only copy of its whole namespace
    /// as of this command's place in the log, sharing its blocks (see `snapshots`).
    CreateSnapshot {
        name: String,
        volume: String,
        now_ns: i64,
    },
    /// Deletes snapshot `name`; its records are purged (and its blocks released) in
    /// bounded batches by the leader, like a deleted volume's.
    DeleteSnapshot {
        name: String,
    },
    /// Creates volume `name` whose namespace is a copy of `source` (a snapshot or a
    /// volume), sharing its blocks. `replication` 0 means the source's.
    CloneVolume {
        name: String,
        capacity: u64,
        replication: u32,
        source: CloneSource,
        now_ns: i64,
    },
    /// Several file-system commands proposed together (group commit, see `batch`):
    /// applied in order, exactly as if each were its own entry.
    FsBatch(Vec<FsCommand>),
    // ---- appended: earlier variants keep their tags, so older log entries decode ----
    /// File-system commands, each with the client's exactly-once request id when it sent
    /// one (see `requests`): what the batcher proposes, one or many per entry, applied
    /// in order. `Fs` and `FsBatch` are what older nodes proposed; they still apply.
    FsCalls(Vec<FsCall>),
}

/// One file-system command of a [`Command::FsBatch`] (the fields of [`Command::Fs`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsCommand {
    pub volume: VolumeId,
    pub op: FsOp,
    pub now_ns: i64,
}

/// One file-system command of a [`Command::FsCalls`] entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsCall {
    pub volume: VolumeId,
    pub op: FsOp,
    pub now_ns: i64,
    /// The client's request id: a duplicate is answered from the stored reply.
    pub request: Option<ringfs_core::fs::RequestId>,
}

/// What a clone copies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloneSource {
    Snapshot(String),
    Volume(String),
}

impl std::fmt::Display for CloneSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloneSource::Snapshot(n) => write!(f, "snapshot {n:?}"),
            CloneSource::Volume(n) => write!(f, "volume {n:?}"),
        }
    }
}

/// A replicated command's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    None,
    Volume {
        volume: VolumeInfo,
        created: bool,
    },
    Deleted(bool),
    Fs(FsResult),
    Layout {
        version: u64,
        changed: bool,
    },
    /// How many inodes are left to purge (0 = done).
    Purged {
        remaining: bool,
    },
    /// Block ids (the answer to `Command::Unreferenced`).
    Blocks(Vec<BlockId>),
    /// A command was refused; the message says why and what to do.
    Refused {
        code: RefusalCode,
        message: String,
    },
    Snapshot {
        snapshot: SnapshotInfo,
        created: bool,
    },
    /// The results of a [`Command::FsBatch`] or [`Command::FsCalls`], in its order.
    FsBatch(Vec<FsResult>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    /// A size outside what the request allows (a clone smaller than its source).
    OutOfRange,
}

/// A volume as stored in the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub id: VolumeId,
    pub name: String,
    pub capacity: u64,
    pub replication: u32,
    pub used_bytes: u64,
    pub used_inodes: u64,
    pub created_ns: i64,
}

/// A volume snapshot as stored in the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The id its namespace records are stored under (drawn from the volume ids, so it
    /// never collides with a volume's).
    pub id: VolumeId,
    pub name: String,
    pub source_volume: String,
    pub source_volume_id: VolumeId,
    /// The source's capacity when the snapshot was taken (the default for a restore).
    pub source_capacity: u64,
    /// The source's replication: the shared blocks have this many copies.
    pub replication: u32,
    /// Bytes of file data (and symlink targets) in the snapshot: the least capacity a
    /// volume restored from it needs.
    pub used_bytes: u64,
    pub used_inodes: u64,
    pub created_ns: i64,
}

/// A cluster member as stored in the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub spec: NodeSpec,
    pub addr: String,
}
