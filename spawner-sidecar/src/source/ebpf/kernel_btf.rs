//! Struct offsets and the attach point's type id from the running kernel's
//! BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF programs get no CO-RE relocations, so the kernel program reads
//! socket fields at offsets found here at start-up, and the program is loaded
//! against the type id of its tracepoint found here too. This is a small
//! reader of the BTF type section (format: Documentation/bpf/btf.rst), written
//! by hand because aya-obj keeps its type lookups private, btf-rs is LGPL,
//! and btfparse (Apache-2.0, same offsets) added 60 MB to the peak and took
//! ~0.5 s to read vmlinux here (docs/decisions.md has the measurement). It
//! understands only what offset lookups need (structs, unions, typedefs,
//! modifiers, ints, pointers, enums) and skips every other kind by its size.
//!
//! Memory is the point of its shape: vmlinux BTF holds ~127 000 types here,
//! and a table of decoded types costs 15-60 MB for a moment, all of it in
//! the sidecar's peak resident size. Here types are decoded where they lie, and
//! the only table built is the byte offset of each type (4 bytes a type).
//! Where the kernel lets `/sys/kernel/btf/vmlinux` be mapped (Linux 6.16) the
//! blob is not even copied: the mapping shows the kernel's own pages, which
//! count in no process's resident size. Elsewhere it is read in pieces:
//! 64 kB at a time front to back, and the few records a lookup follows.
use std::{
    borrow::Cow, cell::RefCell, fs::File, ops::Range, os::unix::fs::FileExt as _, path::Path,
};

use spawner_sidecar_common::TrackerConfig;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The bytes are not BTF this reader understands.
    #[error("malformed BTF: {reason}")]
    Malformed { reason: String },
    /// A struct the program needs is not in this kernel's BTF.
    #[error("struct {name} not found in kernel BTF")]
    NoStruct { name: String },
    /// A typedef the program needs is not in this kernel's BTF.
    #[error("typedef {name} not found in kernel BTF")]
    NoTypedef { name: String },
    /// A member on the path is missing.
    #[error("member {path} not found in kernel BTF")]
    NoMember { path: String },
    /// A member is a bitfield the program cannot read with a plain load.
    #[error("member {path} is a bitfield not aligned to whole bytes")]
    Bitfield { path: String },
}

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;
/// A type record's fixed part: name, info, size-or-type.
const RECORD: usize = 12;
/// One struct or union member: name, type, offset.
const MEMBER: usize = 12;

/// How much a sequential scan reads at a time from a file.
const CHUNK: usize = 64 * 1024;

/// Where the blob's bytes come from.
enum Blob {
    /// The kernel's own BTF, mapped (Linux 6.16 and later).
    Mapped(memmap2::Mmap),
    /// Any other file, or the kernel's where it cannot be mapped: read in
    /// pieces where needed, never whole. `.1` is its length.
    File(File, usize),
    #[cfg(test)]
    Bytes(Vec<u8>),
}

impl Blob {
    fn len(&self) -> usize {
        match self {
            Blob::Mapped(map) => map.len(),
            Blob::File(_, len) => *len,
            #[cfg(test)]
            Blob::Bytes(data) => data.len(),
        }
    }

    /// `len` bytes at `offset`: borrowed when mapped, read when not; `None`
    /// past the end or when the read fails.
    fn read(&self, offset: usize, len: usize) -> Option<Cow<'_, [u8]>> {
        let range = offset..offset.checked_add(len)?;
        match self {
            Blob::Mapped(map) => map.get(range).map(Cow::Borrowed),
            Blob::File(file, size) => {
                if range.end > *size {
                    return None;
                }
                let mut buf = vec![0; len];
                file.read_exact_at(&mut buf, offset as u64).ok()?;
                Some(Cow::Owned(buf))
            }
            #[cfg(test)]
            Blob::Bytes(data) => data.get(range).map(Cow::Borrowed),
        }
    }
}

/// Reads a blob front to back in `CHUNK`s: one read per chunk from a file,
/// no copy when mapped.
struct Sequential<'a> {
    blob: &'a Blob,
    start: usize,
    buf: Cow<'a, [u8]>,
}

impl<'a> Sequential<'a> {
    fn new(blob: &'a Blob) -> Self {
        Sequential {
            blob,
            start: 0,
            buf: Cow::Borrowed(&[]),
        }
    }

    fn get(&mut self, offset: usize, len: usize) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if offset < self.start || end > self.start + self.buf.len() {
            let want = CHUNK.max(len).min(self.blob.len().saturating_sub(offset));
            self.buf = self.blob.read(offset, want)?;
            self.start = offset;
        }
        self.buf.get(offset - self.start..end - self.start)
    }
}

fn word(bytes: &[u8], index: usize) -> u32 {
    let at = 4 * index;
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

#[derive(Debug, Clone, Copy)]
struct Member {
    name: u32,
    type_id: u32,
    /// Offset in bits from the start of the enclosing struct.
    bit_offset: u32,
    /// Width in bits when a bitfield, else 0.
    bitfield_size: u32,
}

/// The fixed part of a type record.
#[derive(Debug, Clone, Copy)]
struct Header {
    name: u32,
    kind: u32,
    kind_flag: bool,
    vlen: usize,
    /// `size` for ints, structs, unions, enums; `type` for the others.
    size_or_type: u32,
}

impl Header {
    fn decode(record: &[u8]) -> Header {
        let info = word(record, 1);
        Header {
            name: word(record, 0),
            kind: (info >> 24) & 0x1f,
            kind_flag: info >> 31 == 1,
            vlen: (info & 0xffff) as usize,
            size_or_type: word(record, 2),
        }
    }
}

/// One type record, decoded from the blob on demand.
#[derive(Debug, Clone)]
struct Type<'a> {
    header: Header,
    /// The members' bytes for structs and unions, else empty.
    members: Cow<'a, [u8]>,
}

impl Type<'_> {
    fn kind(&self) -> u32 {
        self.header.kind
    }

    fn members(&self) -> impl Iterator<Item = Member> + '_ {
        self.members.chunks_exact(MEMBER).map(|m| {
            let offset = word(m, 2);
            let (bit_offset, bitfield_size) = if self.header.kind_flag {
                (offset & 0x00ff_ffff, offset >> 24)
            } else {
                (offset, 0)
            };
            Member {
                name: word(m, 0),
                type_id: word(m, 1),
                bit_offset,
                bitfield_size,
            }
        })
    }
}

/// One BTF blob and where each of its types starts.
pub struct Btf {
    blob: Blob,
    strings: Range<usize>,
    /// Byte offset of each type's record in `blob`, indexed by type id;
    /// entry 0 stands for `void`, which has no record.
    records: Vec<u32>,
    /// Named types found so far: each lookup is a scan of every record.
    found: RefCell<Vec<(u32, String, Option<u32>)>>,
}

/// Where a member lives and how wide it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let read_error = |source| BtfError::Read {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(read_error)?;
        // Only the kernel's own BTF is mapped: it cannot change while mapped,
        // which a file anywhere else could.
        if path.starts_with("/sys/kernel/btf")
            // Private and read-only: the kernel refuses shared maps of it.
            // SAFETY: sysfs BTF is read-only kernel memory that no one can
            // modify; every access below is bounds-checked.
            && let Ok(map) = unsafe { memmap2::MmapOptions::new().map_copy_read_only(&file) }
        {
            return Self::new(Blob::Mapped(map));
        }
        // Kernels before 6.16 refuse to map it: read in pieces instead.
        let len = file.metadata().map_err(read_error)?.len();
        let len = usize::try_from(len).map_err(|_| BtfError::Malformed {
            reason: format!("{len} bytes is too large"),
        })?;
        Self::new(Blob::File(file, len))
    }

    #[cfg(test)]
    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        Self::new(Blob::Bytes(data))
    }

    fn new(blob: Blob) -> Result<Self, BtfError> {
        let bad = |reason: &str| BtfError::Malformed {
            reason: reason.to_string(),
        };
        let header = blob.read(0, 24).ok_or_else(|| bad("short header"))?;
        if header[..2] != BTF_MAGIC.to_le_bytes() {
            return Err(bad("bad magic (not little-endian BTF)"));
        }
        let field = |index| word(&header, index) as usize;
        let hdr_len = field(1);
        let (type_off, type_len) = (field(2), field(3));
        let (str_off, str_len) = (field(4), field(5));
        let types = hdr_len + type_off..hdr_len + type_off + type_len;
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        if strings.end > blob.len() {
            return Err(bad("string section out of bounds"));
        }
        if types.end > blob.len() || u32::try_from(types.end).is_err() {
            return Err(bad("type section out of bounds"));
        }

        // One pass to find where each record starts; every record and its
        // trailing data is checked to lie within the section here, so later
        // lookups only read what is known to be there.
        let mut records = Vec::with_capacity(type_len / 16 + 1);
        records.push(0);
        let mut scan = Sequential::new(&blob);
        let mut pos = types.start;
        while pos < types.end {
            let record = scan
                .get(pos, RECORD)
                .filter(|_| pos + RECORD <= types.end)
                .ok_or_else(|| bad(&format!("cannot read the type at byte {pos}")))?;
            let head = Header::decode(record);
            let extra = match head.kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => MEMBER * head.vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * head.vlen,
                KIND_DATASEC | KIND_ENUM64 => 12 * head.vlen,
                0..=19 => 0,
                other => return Err(bad(&format!("unknown type kind {other}"))),
            };
            if pos + RECORD + extra > types.end {
                return Err(bad("truncated type"));
            }
            // Fits: types.end fits u32, checked above.
            records.push(pos as u32);
            pos += RECORD + extra;
        }
        drop(scan);
        Ok(Btf {
            blob,
            strings,
            records,
            found: RefCell::new(Vec::new()),
        })
    }

    fn ty(&self, id: u32) -> Option<Type<'_>> {
        let start = *self.records.get(id as usize).filter(|_| id != 0)? as usize;
        let header = Header::decode(&self.blob.read(start, RECORD)?);
        let members = if matches!(header.kind, KIND_STRUCT | KIND_UNION) {
            self.blob.read(start + RECORD, MEMBER * header.vlen)?
        } else {
            Cow::Borrowed(&[][..])
        };
        Some(Type { header, members })
    }

    /// Whether the string at `offset` is `name`.
    fn name_is(&self, offset: u32, name: &str) -> bool {
        let start = self.strings.start + offset as usize;
        if start + name.len() >= self.strings.end {
            return false;
        }
        self.blob
            .read(start, name.len() + 1)
            .is_some_and(|bytes| bytes[..name.len()] == *name.as_bytes() && bytes[name.len()] == 0)
    }

    /// The first type of `kind` named `name` (with members, if asked): a
    /// scan of the records, which costs less than a table of every name.
    fn find(&self, kind: u32, name: &str, with_members: bool) -> Option<u32> {
        let key = kind | u32::from(with_members) << 8;
        if let Some((_, _, id)) = self
            .found
            .borrow()
            .iter()
            .find(|(k, n, _)| *k == key && n == name)
        {
            return *id;
        }
        let mut scan = Sequential::new(&self.blob);
        let id = (1..self.records.len()).find_map(|id| {
            let head = Header::decode(scan.get(self.records[id] as usize, RECORD)?);
            (head.kind == kind && (!with_members || head.vlen > 0) && self.name_is(head.name, name))
                .then_some(id as u32)
        });
        self.found.borrow_mut().push((key, name.to_string(), id));
        id
    }

    /// The type id of `typedef <name>`: a BTF tracepoint is loaded against
    /// the id of `btf_trace_<tracepoint>`.
    pub fn typedef_id(&self, name: &str) -> Result<u32, BtfError> {
        self.find(KIND_TYPEDEF, name, false)
            .ok_or_else(|| BtfError::NoTypedef {
                name: name.to_string(),
            })
    }

    /// Follows typedefs and modifiers to the type that has a layout.
    fn resolve(&self, mut id: u32) -> Option<Type<'_>> {
        for _ in 0..32 {
            let ty = self.ty(id)?;
            match ty.kind() {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.header.size_or_type
                }
                _ => return Some(ty),
            }
        }
        None
    }

    fn size_of(&self, id: u32) -> Option<u32> {
        let ty = self.resolve(id)?;
        match ty.kind() {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => {
                Some(ty.header.size_or_type)
            }
            KIND_PTR => Some(8),
            _ => None,
        }
    }

    /// Finds `name` among the members of `ty`, looking inside anonymous
    /// structs and unions (`skc_net` and friends sit in several of them).
    /// Returns the bit offset and the member.
    fn member(&self, ty: &Type<'_>, name: &str, depth: u32) -> Option<(u32, Member)> {
        if let Some(found) = ty
            .members()
            .find(|m| m.name != 0 && self.name_is(m.name, name))
        {
            return Some((found.bit_offset, found));
        }
        if depth == 0 {
            return None;
        }
        ty.members().filter(|m| m.name == 0).find_map(|anonymous| {
            let inner = self.resolve(anonymous.type_id)?;
            if !matches!(inner.kind(), KIND_STRUCT | KIND_UNION) {
                return None;
            }
            let (offset, found) = self.member(&inner, name, depth - 1)?;
            Some((anonymous.bit_offset + offset, found))
        })
    }

    /// Byte offset and size of `struct <name>` member `path` (dotted, e.g.
    /// `__sk_common.skc_net.net`).
    pub fn field(&self, struct_name: &str, path: &str) -> Result<Field, BtfError> {
        let id = self
            .find(KIND_STRUCT, struct_name, true)
            .ok_or_else(|| BtfError::NoStruct {
                name: struct_name.to_string(),
            })?;
        let full = || format!("{struct_name}.{path}");
        let mut ty = self
            .resolve(id)
            .ok_or_else(|| BtfError::NoMember { path: full() })?;
        let mut bits = 0u32;
        let mut last: Option<Member> = None;
        for part in path.split('.') {
            if let Some(parent) = last {
                ty = self
                    .resolve(parent.type_id)
                    .filter(|t| matches!(t.kind(), KIND_STRUCT | KIND_UNION))
                    .ok_or_else(|| BtfError::NoMember { path: full() })?;
            }
            // Anonymous members nest a few levels deep in practice; the
            // bound only stops a malformed blob from recursing forever.
            let (offset, member) = self
                .member(&ty, part, 8)
                .ok_or_else(|| BtfError::NoMember { path: full() })?;
            bits += offset;
            last = Some(member);
        }
        let member = last.ok_or_else(|| BtfError::NoMember { path: full() })?;
        let size = if member.bitfield_size != 0 {
            // Before Linux 5.6 sk_protocol was an 8-bit bitfield; a
            // byte-aligned whole-byte bitfield reads like a plain integer.
            if !bits.is_multiple_of(8) || !member.bitfield_size.is_multiple_of(8) {
                return Err(BtfError::Bitfield { path: full() });
            }
            member.bitfield_size / 8
        } else {
            self.size_of(member.type_id)
                .ok_or_else(|| BtfError::NoMember { path: full() })?
        };
        if !bits.is_multiple_of(8) {
            return Err(BtfError::Bitfield { path: full() });
        }
        Ok(Field {
            offset: bits / 8,
            size,
        })
    }
}

/// The offsets the kernel program needs, read from this kernel's BTF.
pub fn tracker_offsets(btf: &Btf) -> Result<TrackerConfig, BtfError> {
    let protocol = btf.field("sock", "sk_protocol")?;
    if !matches!(protocol.size, 1 | 2) {
        return Err(BtfError::Malformed {
            reason: format!(
                "sock.sk_protocol is {} bytes, expected 1 or 2",
                protocol.size
            ),
        });
    }
    // An atomic64_t: the program loads it whole, as one u64.
    let cookie = btf.field("sock", "__sk_common.skc_cookie")?;
    if cookie.size != 8 {
        return Err(BtfError::Malformed {
            reason: format!(
                "sock.__sk_common.skc_cookie is {} bytes, expected 8",
                cookie.size
            ),
        });
    }
    Ok(TrackerConfig {
        off_num: btf.field("sock", "__sk_common.skc_num")?.offset,
        off_sport: btf.field("inet_sock", "inet_sport")?.offset,
        off_sk_family: btf.field("sock", "__sk_common.skc_family")?.offset,
        off_sk_protocol: protocol.offset,
        off_sk_net: btf.field("sock", "__sk_common.skc_net.net")?.offset,
        off_net_inum: btf.field("net", "ns.inum")?.offset,
        off_daddr: btf.field("sock", "__sk_common.skc_daddr")?.offset,
        off_v6_daddr: btf.field("sock", "__sk_common.skc_v6_daddr")?.offset,
        off_cookie: cookie.offset,
        sk_protocol_size: protocol.size,
        ..TrackerConfig::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob by hand: a minimal stand-in for vmlinux with the
    /// shapes the real one has (anonymous unions, typedefs, bitfields).
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }
        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }
        fn push(&mut self, name: &str, kind: u32, flag: bool, vlen: u32, size_or_type: u32) -> u32 {
            let name = self.string(name);
            let info = vlen | (kind << 24) | (u32::from(flag) << 31);
            for w in [name, info, size_or_type] {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }
        fn int(&mut self, name: &str, bytes: u32) -> u32 {
            let id = self.push(name, KIND_INT, false, 0, bytes);
            self.types.extend_from_slice(&(bytes * 8).to_le_bytes());
            id
        }
        fn compound(
            &mut self,
            name: &str,
            kind: u32,
            size: u32,
            members: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let flag = members.iter().any(|m| m.3 != 0);
            let id = self.push(name, kind, flag, members.len() as u32, size);
            for &(mname, ty, bit_off, bf) in members {
                let mname = self.string(mname);
                let off = if flag { (bf << 24) | bit_off } else { bit_off };
                for w in [mname, ty, off] {
                    self.types.extend_from_slice(&w.to_le_bytes());
                }
            }
            id
        }
        fn finish(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for w in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    fn sample(protocol_bitfield: bool) -> Vec<u8> {
        let mut b = Builder::new();
        let u16_t = b.int("unsigned short", 2);
        let u32_t = b.int("unsigned int", 4);
        let u8_t = b.int("unsigned char", 1);
        let u64_t = b.int("long long unsigned int", 8);
        let be16 = b.push("__be16", KIND_TYPEDEF, false, 0, u16_t);
        let ns_common = b.compound(
            "ns_common",
            KIND_STRUCT,
            32,
            &[("stashed", u32_t, 0, 0), ("inum", u32_t, 24 * 8, 0)],
        );
        let net = b.compound(
            "net",
            KIND_STRUCT,
            128,
            &[("passive", u32_t, 0, 0), ("ns", ns_common, 64 * 8, 0)],
        );
        let net_ptr = b.push("", KIND_PTR, false, 0, net);
        let possible_net = b.compound("", KIND_STRUCT, 8, &[("net", net_ptr, 0, 0)]);
        let possible_net_t = b.push("possible_net_t", KIND_TYPEDEF, false, 0, possible_net);
        let ports = b.compound(
            "",
            KIND_STRUCT,
            4,
            &[("skc_dport", be16, 0, 0), ("skc_num", u16_t, 16, 0)],
        );
        let port_union = b.compound(
            "",
            KIND_UNION,
            4,
            &[("skc_portpair", u32_t, 0, 0), ("", ports, 0, 0)],
        );
        let net_union = b.compound("", KIND_UNION, 8, &[("skc_net", possible_net_t, 0, 0)]);
        let addrs = b.compound(
            "",
            KIND_STRUCT,
            8,
            &[("skc_daddr", u32_t, 0, 0), ("skc_rcv_saddr", u32_t, 32, 0)],
        );
        let addr_union = b.compound(
            "",
            KIND_UNION,
            8,
            &[("skc_addrpair", u64_t, 0, 0), ("", addrs, 0, 0)],
        );
        let in6_addr = b.compound("in6_addr", KIND_STRUCT, 16, &[("s6_addr32", u64_t, 0, 0)]);
        // A forward declaration (no members) named like a struct we need
        // comes first in vmlinux too; lookups must skip it.
        b.compound("sock", KIND_STRUCT, 0, &[]);
        // What a tracepoint's attach id names: a typedef of a pointer to
        // its prototype (id 20 here).
        let proto = b.push("", KIND_FUNC_PROTO, false, 0, 0);
        let proto_ptr = b.push("", KIND_PTR, false, 0, proto);
        b.push(
            "btf_trace_inet_sock_set_state",
            KIND_TYPEDEF,
            false,
            0,
            proto_ptr,
        );
        let sock_common = b.compound(
            "sock_common",
            KIND_STRUCT,
            136,
            &[
                ("", addr_union, 0, 0),
                ("", port_union, 96, 0),
                ("skc_family", u16_t, 128, 0),
                ("", net_union, 48 * 8, 0),
                ("skc_v6_daddr", in6_addr, 56 * 8, 0),
                ("skc_cookie", u64_t, 88 * 8, 0),
            ],
        );
        let const_sc = b.push("", KIND_CONST, false, 0, sock_common);
        let protocol = if protocol_bitfield {
            ("sk_protocol", u32_t, 514 * 8, 8)
        } else {
            ("sk_protocol", u16_t, 516 * 8, 0)
        };
        let sock = b.compound(
            "sock",
            KIND_STRUCT,
            760,
            &[
                ("__sk_common", const_sc, 0, 0),
                ("sk_flags", u8_t, 512 * 8, 0),
                protocol,
            ],
        );
        b.compound(
            "inet_sock",
            KIND_STRUCT,
            900,
            &[("sk", sock, 0, 0), ("inet_sport", be16, 798 * 8, 0)],
        );
        b.finish()
    }

    #[test]
    fn finds_offsets_through_anonymous_unions_and_typedefs() {
        let btf = Btf::parse(sample(false)).expect("parse");
        let cfg = tracker_offsets(&btf).expect("offsets");
        assert_eq!(cfg.off_sport, 798);
        assert_eq!(cfg.off_num, 14);
        assert_eq!((cfg.off_daddr, cfg.off_v6_daddr), (0, 56));
        assert_eq!(cfg.off_sk_family, 16);
        assert_eq!(cfg.off_sk_net, 48);
        assert_eq!(cfg.off_net_inum, 64 + 24);
        assert_eq!((cfg.off_sk_protocol, cfg.sk_protocol_size), (516, 2));
        assert_eq!(cfg.off_cookie, 88);
        assert_eq!(
            btf.field("sock", "__sk_common.skc_num").expect("num"),
            Field {
                offset: 14,
                size: 2
            }
        );
    }

    #[test]
    fn finds_the_tracepoint_typedef_id() {
        let btf = Btf::parse(sample(false)).expect("parse");
        assert_eq!(
            btf.typedef_id("btf_trace_inet_sock_set_state").expect("id"),
            20
        );
        let err = btf.typedef_id("btf_trace_nope").expect_err("missing");
        assert_eq!(
            err.to_string(),
            "typedef btf_trace_nope not found in kernel BTF"
        );
    }

    #[test]
    fn reads_byte_aligned_bitfield_protocol_of_older_kernels() {
        let btf = Btf::parse(sample(true)).expect("parse");
        let cfg = tracker_offsets(&btf).expect("offsets");
        assert_eq!((cfg.off_sk_protocol, cfg.sk_protocol_size), (514, 1));
    }

    #[test]
    fn names_the_missing_member() {
        let btf = Btf::parse(sample(false)).expect("parse");
        let err = btf
            .field("sock", "__sk_common.skc_nope")
            .expect_err("missing");
        assert_eq!(
            err.to_string(),
            "member sock.__sk_common.skc_nope not found in kernel BTF"
        );
        let err = btf.field("nosuch", "x").expect_err("missing");
        assert_eq!(err.to_string(), "struct nosuch not found in kernel BTF");
    }

    #[test]
    fn rejects_truncated_and_foreign_data() {
        assert!(Btf::parse(Vec::new()).is_err());
        assert!(Btf::parse(b"\x9f\xeb\x01\x00".to_vec()).is_err());
        let mut data = sample(false);
        data.truncate(60);
        assert!(Btf::parse(data).is_err());
    }

    /// The real kernel: the offsets this machine's BTF gives must be the ones
    /// its layout has (checked again against live sockets at load time).
    #[test]
    fn reads_running_kernel_btf() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            println!("skipping: {VMLINUX_BTF} absent (kernel without CONFIG_DEBUG_INFO_BTF)");
            return;
        }
        let btf = Btf::from_file(path).expect("parse vmlinux BTF");
        let cfg = tracker_offsets(&btf).expect("offsets");
        // struct sock_common's first 16 bytes are addresses and ports on
        // every kernel since 4.x; skc_family follows at 16.
        assert_eq!(cfg.off_sk_family, 16);
        assert_eq!(
            btf.field("sock", "__sk_common.skc_num")
                .expect("num")
                .offset,
            14
        );
        assert!(
            cfg.off_sport > cfg.off_sk_protocol,
            "inet_sock extends sock"
        );
        let id = btf
            .typedef_id("btf_trace_inet_sock_set_state")
            .expect("attach point");
        // Mapped (where the kernel allows), read in pieces, or whole in
        // memory, the same blob answers the same.
        let file = File::open(path).expect("open");
        let len = file.metadata().expect("size").len() as usize;
        let pieces = Btf::new(Blob::File(file, len)).expect("index");
        let whole = Btf::parse(std::fs::read(path).expect("read")).expect("parse");
        for other in [pieces, whole] {
            assert_eq!(tracker_offsets(&other).expect("offsets"), cfg);
            assert_eq!(
                other.typedef_id("btf_trace_inet_sock_set_state").ok(),
                Some(id)
            );
        }
    }
}
