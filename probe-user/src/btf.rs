//! Reads member offsets of kernel structs from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`).
//!
//! The eBPF programs are written in Rust, which cannot emit CO-RE
//! relocations, so the few kernel struct fields they read beyond the stable
//! head of `struct sock_common` (the IPv6 addresses) are located here at
//! start-up and handed to the programs as load-time constants.
use std::path::Path;

/// Where the kernel publishes its own BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("cannot read kernel BTF at {path}: {reason} (sonde needs a kernel built with CONFIG_DEBUG_INFO_BTF)")]
    Read { path: String, reason: String },
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {0} has no member {1}")]
    NoMember(String, String),
}

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

/// A parsed BTF blob: just enough to find struct members by name.
pub struct Btf {
    data: Vec<u8>,
    /// Byte offset of each type's record (index = type id; id 0 is void).
    types: Vec<usize>,
    str_start: usize,
    str_end: usize,
}

fn u32_at(d: &[u8], off: usize) -> Result<u32, BtfError> {
    d.get(off..off + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|e| BtfError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(data)
    }

    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(&data, 4)? as usize;
        let type_off = u32_at(&data, 8)? as usize;
        let type_len = u32_at(&data, 12)? as usize;
        let str_off = u32_at(&data, 16)? as usize;
        let str_len = u32_at(&data, 20)? as usize;
        let type_start = hdr_len + type_off;
        let type_end = type_start + type_len;
        let str_start = hdr_len + str_off;
        let str_end = str_start + str_len;
        if type_end > data.len() || str_end > data.len() {
            return Err(BtfError::Malformed("section out of bounds"));
        }
        let mut types = vec![0];
        let mut off = type_start;
        while off < type_end {
            types.push(off);
            let info = u32_at(&data, off + 4)?;
            let vlen = (info & 0xffff) as usize;
            let extra = match (info >> 24) & 0x1f {
                1 | 14 | 17 => 4,             // int, var, decl_tag
                3 => 12,                      // array
                4 | 5 | 15 | 19 => 12 * vlen, // struct, union, datasec, enum64
                6 | 13 => 8 * vlen,           // enum, func_proto
                2 | 7..=12 | 16 | 18 => 0, // ptr, fwd, typedef, qualifiers, func, float, type_tag
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            off += 12 + extra;
        }
        if off != type_end {
            return Err(BtfError::Malformed("type section length"));
        }
        Ok(Btf {
            data,
            types,
            str_start,
            str_end,
        })
    }

    fn name(&self, name_off: u32) -> &[u8] {
        let start = self.str_start + name_off as usize;
        let tail = self.data.get(start..self.str_end).unwrap_or(&[]);
        let len = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        &tail[..len]
    }

    fn record(&self, id: u32) -> Option<(u32, u32, usize)> {
        let off = *self.types.get(id as usize)?;
        if id == 0 {
            return None;
        }
        let name_off = u32_at(&self.data, off).ok()?;
        let info = u32_at(&self.data, off + 4).ok()?;
        Some((name_off, info, off))
    }

    /// Byte offset of `member` in `struct strukt`, looking through anonymous
    /// unions and structs (where most `sock_common` fields live).
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = (1..self.types.len() as u32)
            .find(|&id| {
                self.record(id).is_some_and(|(name, info, _)| {
                    (info >> 24) & 0x1f == KIND_STRUCT && self.name(name) == strukt.as_bytes()
                })
            })
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        self.find_member(id, member.as_bytes(), 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoMember(strukt.into(), member.into()))
    }

    /// Bit offset of `member` inside composite type `id`, searching anonymous
    /// members recursively (bounded: BTF composites nest a few levels).
    fn find_member(&self, id: u32, member: &[u8], depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        let (_, info, off) = self.record(id)?;
        let kind = (info >> 24) & 0x1f;
        if kind != KIND_STRUCT && kind != KIND_UNION {
            return None;
        }
        let bitfield_offsets = info >> 31 == 1;
        for i in 0..(info & 0xffff) as usize {
            let m = off + 12 + 12 * i;
            let name = u32_at(&self.data, m).ok()?;
            let ty = u32_at(&self.data, m + 4).ok()?;
            let raw = u32_at(&self.data, m + 8).ok()?;
            let bits = if bitfield_offsets {
                raw & 0xff_ffff
            } else {
                raw
            };
            if name != 0 && self.name(name) == member {
                return Some(bits);
            }
            if name == 0 {
                if let Some(inner) = self.find_member(self.skip_modifiers(ty), member, depth + 1) {
                    return Some(bits + inner);
                }
            }
        }
        None
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn skip_modifiers(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            match self.record(id) {
                Some((_, info, off)) if matches!((info >> 24) & 0x1f, 8..=11 | 18) => {
                    id = u32_at(&self.data, off + 8).unwrap_or(0);
                }
                _ => break,
            }
        }
        id
    }
}

/// Offsets in `struct sock_common` (IPv6 addresses) and `struct sock`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOffsets {
    pub v6_daddr: u32,
    pub v6_rcv_saddr: u32,
    /// `sk_shutdown` in `struct sock`, 0 if unknown.
    pub sk_shutdown: u32,
    /// `sk_socket` in `struct sock`.
    pub sk_socket: u32,
    /// `sk_protocol` in `struct sock`.
    pub sk_protocol: u32,
}

pub fn sock_offsets(btf: &Btf) -> Result<SockOffsets, BtfError> {
    Ok(SockOffsets {
        v6_daddr: btf.member_offset("sock_common", "skc_v6_daddr")?,
        v6_rcv_saddr: btf.member_offset("sock_common", "skc_v6_rcv_saddr")?,
        // Optional: without it a shutdown(SHUT_WR) is taken for a close.
        sk_shutdown: btf.member_offset("sock", "sk_shutdown").unwrap_or(0),
        sk_socket: btf.member_offset("sock", "sk_socket")?,
        sk_protocol: btf.member_offset("sock", "sk_protocol")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: `int`, a union holding an anonymous struct, and
    /// `struct outer { int a; union { struct { int x; int y; }; }; int z; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0x\0y\0z\0".to_vec();
        let s = |n: &str| {
            let needle = format!("\0{n}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t: Vec<u32> = Vec::new();
        // 1: int (kind 1, size 4, + 4 bytes encoding)
        t.extend([s("int"), 1 << 24, 4, 32]);
        // 2: anonymous struct { int x @0; int y @32 }
        t.extend([0, (KIND_STRUCT << 24) | 2, 8, s("x"), 1, 0, s("y"), 1, 32]);
        // 3: anonymous union { struct 2 @0 }
        t.extend([0, (KIND_UNION << 24) | 1, 8, 0, 2, 0]);
        // 4: typedef of 3 (kind 8) — members may point through typedefs
        t.extend([0, 8 << 24, 3]);
        // 5: struct outer { int a @0; <anon typedef→union> @64; int z @128 }
        t.extend([
            s("outer"),
            (KIND_STRUCT << 24) | 3,
            20,
            s("a"),
            1,
            0,
            0,
            4,
            64,
            s("z"),
            1,
            128,
        ]);
        let types: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut d = Vec::new();
        d.extend(MAGIC.to_le_bytes());
        d.extend([1u8, 0]);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            d.extend(v.to_le_bytes());
        }
        d.extend(types);
        d.extend(strings);
        d
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse(blob()).unwrap();
        assert_eq!(btf.member_offset("outer", "a"), Ok(0));
        assert_eq!(btf.member_offset("outer", "x"), Ok(8));
        assert_eq!(btf.member_offset("outer", "y"), Ok(12));
        assert_eq!(btf.member_offset("outer", "z"), Ok(16));
        assert_eq!(
            btf.member_offset("outer", "nope"),
            Err(BtfError::NoMember("outer".into(), "nope".into()))
        );
        assert_eq!(
            btf.member_offset("inner", "x"),
            Err(BtfError::NoStruct("inner".into()))
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(vec![0; 10]).is_err());
        let mut b = blob();
        b.truncate(b.len() - 30);
        assert!(Btf::parse(b).is_err());
    }

    #[test]
    fn reads_the_running_kernel() {
        // The daemon's real input; present on every machine sonde supports.
        let Ok(btf) = Btf::from_file(Path::new(VMLINUX)) else {
            eprintln!("no {VMLINUX}: skipped");
            return;
        };
        let off = sock_offsets(&btf).unwrap();
        // skc_daddr/skc_rcv_saddr open the struct; the v6 pair follows the
        // hash-table linkage, 16 bytes apart.
        assert_eq!(btf.member_offset("sock_common", "skc_daddr"), Ok(0));
        assert_eq!(btf.member_offset("sock_common", "skc_rcv_saddr"), Ok(4));
        assert_eq!(btf.member_offset("sock_common", "skc_dport"), Ok(12));
        assert_eq!(btf.member_offset("sock_common", "skc_num"), Ok(14));
        assert_eq!(btf.member_offset("sock_common", "skc_family"), Ok(16));
        assert_eq!(off.v6_rcv_saddr, off.v6_daddr + 16);
        assert!(off.v6_daddr > 16);
    }
}
