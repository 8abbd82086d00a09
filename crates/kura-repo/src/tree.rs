//! Directory trees.
//!
//! A tree blob (type `tree`) is one directory: a CBOR map `{"v": 1, "nodes": [node…]}` with
//! nodes sorted by name (bytewise, strictly increasing). A node records what `lstat` and
//! `llistxattr` report — see `docs/FORMAT.md` for the key list — plus, for files, the chunk
//! list and, for directories, the id of the subtree blob. Identical directories therefore
//! share one blob, and an unchanged subtree costs nothing in a new snapshot.
//!
//! # Hostile input
//! Trees come from storage, which may be damaged or written by an attacker who holds a key.
//! [`Tree::decode`] refuses names that are empty, `.`, `..`, or contain `/` or NUL, refuses
//! duplicate or unsorted names (a duplicate could turn a symlink into a path component during
//! restore), and checks each node has the fields its type needs. The restorer relies on this.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::id::Id;
use crate::util::Timestamp;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
    Blockdev,
    Chardev,
    Fifo,
    Socket,
}

impl NodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::File => "file",
            NodeKind::Dir => "dir",
            NodeKind::Symlink => "symlink",
            NodeKind::Blockdev => "blockdev",
            NodeKind::Chardev => "chardev",
            NodeKind::Fifo => "fifo",
            NodeKind::Socket => "socket",
        }
    }
}

/// One piece of a file's contents: a stored blob, or a run of zero bytes that was not stored
/// (restored as a hole). Encoded as a 32-byte CBOR byte string or an unsigned integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkRef {
    Blob(Id),
    Zero(u64),
}

impl Serialize for ChunkRef {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            ChunkRef::Blob(id) => s.serialize_bytes(&id.0),
            ChunkRef::Zero(n) => s.serialize_u64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for ChunkRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ChunkRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 32-byte blob id or a zero-run length")
            }
            fn visit_bytes<E: serde::de::Error>(
                self,
                v: &[u8],
            ) -> std::result::Result<ChunkRef, E> {
                Id::from_slice(v)
                    .map(ChunkRef::Blob)
                    .ok_or_else(|| E::invalid_length(v.len(), &self))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<ChunkRef, E> {
                Ok(ChunkRef::Zero(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// An extended attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    #[serde(rename = "type")]
    pub kind: NodeKind,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub size: u64,
    /// Inode and device: hardlink identity, and half of the incremental-backup test.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub inode: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub dev: u64,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub links: u64,
    /// Device number of block and character devices.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub rdev: u64,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_bytes")]
    pub target: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Vec<ChunkRef>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<Id>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
}

impl Node {
    /// A node with the given name and kind and every other field empty.
    pub fn new(name: Vec<u8>, kind: NodeKind) -> Node {
        Node {
            name,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            size: 0,
            inode: 0,
            dev: 0,
            links: 0,
            rdev: 0,
            target: None,
            content: None,
            subtree: None,
            xattrs: Vec::new(),
        }
    }

    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// Why a name is unsafe to create on disk, or `None` if it is fine.
pub fn name_problem(name: &[u8]) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty name")
    } else if name == b"." || name == b".." {
        Some("name is '.' or '..'")
    } else if name.contains(&b'/') {
        Some("name contains '/'")
    } else if name.contains(&0) {
        Some("name contains NUL")
    } else {
        None
    }
}

/// A directory's nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub v: u32,
    pub nodes: Vec<Node>,
}

impl Tree {
    pub fn new(mut nodes: Vec<Node>) -> Tree {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Tree { v: 1, nodes }
    }

    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(64 + self.nodes.len() * 128);
        ciborium::into_writer(self, &mut out)
            .map_err(|e| Error::InvalidInput(format!("encode tree: {e}")))?;
        Ok(out)
    }

    /// Decode and validate (see the module docs). `what` names the tree in errors.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Tree> {
        let tree: Tree =
            ciborium::from_reader(bytes).map_err(|e| Error::corrupt(what, format!("CBOR: {e}")))?;
        if tree.v != 1 {
            return Err(Error::Unsupported(format!(
                "{what}: tree version {}",
                tree.v
            )));
        }
        for (i, n) in tree.nodes.iter().enumerate() {
            if let Some(p) = name_problem(&n.name) {
                return Err(Error::corrupt(
                    what,
                    format!("refusing entry {:?}: {p}", String::from_utf8_lossy(&n.name)),
                ));
            }
            if i > 0 && tree.nodes[i - 1].name >= n.name {
                return Err(Error::corrupt(
                    what,
                    format!("duplicate or unsorted entry {:?}", n.name_lossy()),
                ));
            }
            let ok = match n.kind {
                NodeKind::File => n.content.is_some(),
                NodeKind::Dir => n.subtree.is_some(),
                NodeKind::Symlink => n.target.is_some(),
                _ => true,
            };
            if !ok {
                return Err(Error::corrupt(
                    what,
                    format!(
                        "{} entry {:?} lacks its data",
                        n.kind.as_str(),
                        n.name_lossy()
                    ),
                ));
            }
        }
        Ok(tree)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(name: &[u8]) -> Node {
        let mut n = Node::new(name.to_vec(), NodeKind::File);
        n.content = Some(vec![ChunkRef::Blob(Id([3; 32])), ChunkRef::Zero(4096)]);
        n.size = 4096 + 10;
        n.mtime = Timestamp(1_700_000_000, 123);
        n
    }

    #[test]
    fn round_trip_with_non_utf8_names_and_xattrs() {
        let mut a = file(b"caf\xe9");
        a.xattrs.push(Xattr {
            name: b"user.k".to_vec(),
            value: vec![0, 255],
        });
        let mut d = Node::new(b"d".to_vec(), NodeKind::Dir);
        d.subtree = Some(Id([9; 32]));
        let mut l = Node::new(b"l".to_vec(), NodeKind::Symlink);
        l.target = Some(b"../x\xff".to_vec());
        let t = Tree::new(vec![l, a, d]);
        let back = Tree::decode(&t.encode().unwrap(), "t").unwrap();
        assert_eq!(back, t);
        assert_eq!(back.nodes[0].name, b"caf\xe9");
    }

    #[test]
    fn hostile_names_are_refused() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"/etc", b"a\0b"] {
            let t = Tree {
                v: 1,
                nodes: vec![file(bad)],
            };
            let err = Tree::decode(&t.encode().unwrap(), "t").unwrap_err();
            assert!(err.to_string().contains("refusing"), "{err}");
        }
    }

    #[test]
    fn duplicates_and_missing_data_are_refused() {
        let t = Tree {
            v: 1,
            nodes: vec![file(b"a"), file(b"a")],
        };
        assert!(
            Tree::decode(&t.encode().unwrap(), "t")
                .unwrap_err()
                .to_string()
                .contains("duplicate")
        );
        let d = Node::new(b"d".to_vec(), NodeKind::Dir);
        let t = Tree {
            v: 1,
            nodes: vec![d],
        };
        assert!(Tree::decode(&t.encode().unwrap(), "t").is_err());
        let t = Tree {
            v: 2,
            nodes: vec![],
        };
        assert!(matches!(
            Tree::decode(&t.encode().unwrap(), "t"),
            Err(Error::Unsupported(_))
        ));
    }

    proptest! {
        #[test]
        fn decode_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Tree::decode(&bytes, "fuzz");
        }

        #[test]
        fn decode_mutated_tree_never_panics(pos in 0usize..200, val in any::<u8>()) {
            let t = Tree::new(vec![file(b"a"), file(b"b")]);
            let mut b = t.encode().unwrap();
            let i = pos % b.len();
            b[i] = val;
            let _ = Tree::decode(&b, "fuzz");
        }

        #[test]
        fn names_round_trip(names in proptest::collection::btree_set(proptest::collection::vec(1u8..=255, 1..20), 0..20)) {
            let nodes: Vec<Node> = names.iter().filter(|n| name_problem(n).is_none()).map(|n| file(n)).collect();
            let t = Tree::new(nodes);
            prop_assert_eq!(Tree::decode(&t.encode().unwrap(), "t").unwrap(), t);
        }
    }
}
