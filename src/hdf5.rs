//! The part of HDF5 that Keras' weight files use, as h5py writes them by
//! default: superblock version 0 or 1, version-1 object headers, groups as
//! symbol tables (a version-1 B-tree of symbol nodes and a local heap), and
//! datasets stored contiguously. Their data is read in place.
//! Anything else (chunked or filtered datasets, the newer structures of
//! `libver="latest"`) is an error naming the dataset or the structure, never
//! a guess. Every address read from the file is checked against its length
//! with checked arithmetic; groups that link back to themselves are visited
//! once.

use std::collections::HashSet;

use safetensors::tensor::Dtype;

/// The signature at the start of an HDF5 file (h5py writes no user block).
pub(crate) const MAGIC: &[u8] = b"\x89HDF\r\n\x1a\n";

/// Deepest group nesting followed (Keras' deepest is a few levels).
const MAX_DEPTH: usize = 64;
/// Most objects (groups and datasets) a file may hold.
const MAX_OBJECTS: usize = 1 << 20;
/// Most continuation blocks one object header may have.
const MAX_CONTINUATIONS: usize = 1024;

/// One numeric dataset: its path from the root group (`a/b/kernel:0`), its
/// dtype and shape, where its bytes are, and where its object header is
/// (h5py allocates them in creation order, so this gives the order the
/// writer created them in, which HDF5's groups, sorted by name, do not).
pub(crate) struct Dataset {
    pub(crate) path: String,
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
    /// Byte range of the data in the file.
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// The object header's address.
    pub(crate) header: u64,
}

/// True when the bytes start with HDF5's signature.
pub(crate) fn is_hdf5(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// An HDF5 file: its superblock's parameters, and how many of its
/// structures have been read.
pub(crate) struct File<'a> {
    b: &'a [u8],
    /// Size of addresses and of lengths, in bytes.
    offsets: usize,
    lengths: usize,
    /// What every address is relative to.
    base: u64,
    /// The root group's object header.
    root: u64,
    /// Structures read so far (B-tree nodes, object headers): a file whose
    /// structures point back at each other ends at [`MAX_OBJECTS`].
    visits: std::cell::Cell<usize>,
}

/// One header message: its type and its bytes.
struct Message<'a> {
    kind: u16,
    flags: u8,
    data: &'a [u8],
}

/// A cursor over bytes read from the file: every read is bounds-checked.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8], at: usize) -> Self {
        Reader { b, at }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len()).ok_or("truncated structure")?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    /// An unsigned integer of `n` bytes (an address or a length).
    fn uint(&mut self, n: usize) -> Result<u64, String> {
        let s = self.take(n)?;
        let mut v = [0u8; 8];
        v[..n.min(8)].copy_from_slice(&s[..n.min(8)]);
        Ok(u64::from_le_bytes(v))
    }
}

/// True when an address is HDF5's "undefined" (all bits set).
fn undefined(addr: u64, size: usize) -> bool {
    size >= 8 && addr == u64::MAX || size < 8 && addr == (1u64 << (8 * size)) - 1
}

impl<'a> File<'a> {
    /// The file in `b`, its superblock read.
    pub(crate) fn open(b: &'a [u8]) -> Result<Self, String> {
        if !is_hdf5(b) {
            return Err("no HDF5 signature at the start of the file (a user block is not read)".into());
        }
        let mut r = Reader::new(b, MAGIC.len());
        let version = r.u8()?;
        if version > 1 {
            return Err(format!(
                "superblock version {version} (written with libver=\"latest\"), which is not read: \
                 save it again with h5py's default libver"
            ));
        }
        r.take(4)?; // free-space, root symbol table entry, reserved, shared header versions
        let offsets = r.u8()? as usize;
        let lengths = r.u8()? as usize;
        if ![2, 4, 8].contains(&offsets) || ![2, 4, 8].contains(&lengths) {
            return Err(format!("sizes of addresses ({offsets}) and lengths ({lengths}) not 2, 4 or 8 bytes"));
        }
        r.take(1 + 2 + 2 + 4)?; // reserved, leaf and internal node K, consistency flags
        if version == 1 {
            r.take(4)?; // indexed storage K, reserved
        }
        let base = r.uint(offsets)?;
        r.take(3 * offsets)?; // free-space info, end of file, driver info
        r.uint(offsets)?; // the root entry's link name offset
        let root = r.uint(offsets)?;
        Ok(File { b, offsets, lengths, base, root, visits: 0.into() })
    }

    /// Every numeric dataset in the file, in the order of their object
    /// headers. Datasets of other types (strings, compounds) are left out:
    /// they hold no weights.
    pub(crate) fn datasets(&self) -> Result<Vec<Dataset>, String> {
        let mut found = Vec::new();
        let mut seen = HashSet::new();
        self.walk(self.root, "", 0, &mut seen, &mut found)?;
        found.sort_by_key(|d| d.header);
        Ok(found)
    }

    /// The strings of attribute `name` of the object at `path` (`a/b`),
    /// when both exist. A long list may be stored in pieces, `name0`,
    /// `name1`, ... (as Keras stores `layer_names`): they are joined.
    pub(crate) fn strings_of(&self, path: &str, name: &str) -> Result<Option<Vec<String>>, String> {
        let Some(addr) = self.find(path)? else { return Ok(None) };
        if let Some(all) = self.string_attribute(addr, name)? {
            return Ok(Some(all));
        }
        let mut pieces = Vec::new();
        while let Some(piece) = self.string_attribute(addr, &format!("{name}{}", pieces.len()))? {
            pieces.push(piece);
            if pieces.len() > MAX_OBJECTS {
                return Err(format!("more than {MAX_OBJECTS} pieces of attribute `{name}`"));
            }
        }
        Ok((!pieces.is_empty()).then(|| pieces.concat()))
    }

    /// The position in the bytes of a file address.
    fn at(&self, addr: u64) -> Result<usize, String> {
        addr.checked_add(self.base)
            .and_then(|a| usize::try_from(a).ok())
            .filter(|&a| a < self.b.len())
            .ok_or_else(|| format!("address {addr} beyond the end of the file ({} bytes)", self.b.len()))
    }

    /// Counts one more structure read ([`File::visits`]).
    fn visit(&self) -> Result<(), String> {
        self.visits.set(self.visits.get() + 1);
        if self.visits.get() > MAX_OBJECTS {
            return Err(format!("more than {MAX_OBJECTS} structures read: the file's structures loop"));
        }
        Ok(())
    }

    /// The messages of the version-1 object header at `addr`, its
    /// continuation blocks followed.
    fn messages(&self, addr: u64) -> Result<Vec<Message<'a>>, String> {
        self.visit()?;
        let at = self.at(addr)?;
        if self.b[at..].starts_with(b"OHDR") {
            return Err(format!(
                "object header at {addr} is version 2 (libver=\"latest\"), which is not read: \
                 save the file again with h5py's default libver"
            ));
        }
        let mut r = Reader::new(self.b, at);
        let version = r.u8()?;
        if version != 1 {
            return Err(format!("object header at {addr}: version {version}, not 1"));
        }
        r.u8()?;
        let count = r.u16()? as usize;
        r.u32()?; // reference count
        let size = r.u32()? as usize;
        r.take(4)?; // padding to 8 bytes
        let mut blocks = vec![(r.at, size)];
        let mut out = Vec::new();
        let mut i = 0;
        while i < blocks.len() {
            if i > MAX_CONTINUATIONS {
                return Err(format!("object header at {addr}: more than {MAX_CONTINUATIONS} continuation blocks"));
            }
            let (start, len) = blocks[i];
            let end = start.checked_add(len).filter(|&e| e <= self.b.len()).ok_or("object header beyond the file")?;
            let mut m = Reader::new(&self.b[..end], start);
            while m.at + 8 <= end && out.len() < count {
                let kind = m.u16()?;
                let size = m.u16()? as usize;
                let flags = m.u8()?;
                m.take(3)?;
                let data = m.take(size)?;
                if kind == 0x10 {
                    let mut c = Reader::new(data, 0);
                    let (addr, len) = (c.uint(self.offsets)?, c.uint(self.lengths)?);
                    blocks.push((self.at(addr)?, usize::try_from(len).map_err(|_| "continuation too long")?));
                }
                out.push(Message { kind, flags, data });
            }
            i += 1;
        }
        Ok(out)
    }

    /// Visits the object at `addr` (named `path`): a group's members in
    /// turn, or a dataset, added to `found` when numeric.
    fn walk(
        &self,
        addr: u64,
        path: &str,
        depth: usize,
        seen: &mut HashSet<u64>,
        found: &mut Vec<Dataset>,
    ) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("`{path}`: groups nested deeper than {MAX_DEPTH}"));
        }
        if !seen.insert(addr) {
            return Ok(()); // a second link to an object already visited
        }
        let messages = self.messages(addr)?;
        let named = |what: String| if path.is_empty() { what } else { format!("`{path}`: {what}") };
        if messages.iter().any(|m| m.kind == 0x02 || m.kind == 0x06) {
            return Err(named(
                "a group stored as links (libver=\"latest\" or track_order), which is not read: \
                 save the file again with h5py's default settings"
                    .into(),
            ));
        }
        if let Some(members) = self.members(&messages).map_err(named)? {
            for (name, child) in members {
                let child_path = if path.is_empty() { name.to_string() } else { format!("{path}/{name}") };
                self.walk(child, &child_path, depth + 1, seen, found)?;
            }
            return Ok(());
        }
        if messages.iter().any(|m| m.kind == 0x08) {
            if let Some(d) = self.dataset(addr, &messages).map_err(named)? {
                found.push(Dataset { path: path.to_string(), ..d });
            }
        }
        Ok(())
    }

    /// A group's members (name, object header), or `None` when the object
    /// is not a group.
    fn members(&self, messages: &[Message]) -> Result<Option<Vec<(&'a str, u64)>>, String> {
        let Some(table) = messages.iter().find(|m| m.kind == 0x11) else { return Ok(None) };
        let mut r = Reader::new(table.data, 0);
        let (tree, heap) = (r.uint(self.offsets)?, r.uint(self.offsets)?);
        let heap = self.local_heap(heap)?;
        let mut nodes = Vec::new();
        self.group_nodes(tree, 0, &mut nodes)?;
        let members = nodes
            .into_iter()
            .map(|(name_offset, child)| {
                let name = heap_name(heap, name_offset)?;
                if name.is_empty() || name.contains('/') {
                    return Err(format!("a member named {name:?}"));
                }
                Ok((name, child))
            })
            .collect::<Result<_, String>>()?;
        Ok(Some(members))
    }

    /// The object at `path` (`a/b`) from the root, if there is one.
    fn find(&self, path: &str) -> Result<Option<u64>, String> {
        let mut addr = self.root;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let Some(members) = self.members(&self.messages(addr)?)? else { return Ok(None) };
            let Some(&(_, child)) = members.iter().find(|(name, _)| *name == part) else { return Ok(None) };
            addr = child;
        }
        Ok(Some(addr))
    }

    /// The strings of attribute `name` of the object at `addr`, if it has
    /// one of strings (fixed-length or variable-length).
    fn string_attribute(&self, addr: u64, name: &str) -> Result<Option<Vec<String>>, String> {
        for m in self.messages(addr)?.iter().filter(|m| m.kind == 0x0C) {
            let mut r = Reader::new(m.data, 0);
            let version = r.u8()?;
            r.u8()?; // reserved or flags
            let (name_len, type_len, space_len) = (r.u16()? as usize, r.u16()? as usize, r.u16()? as usize);
            let pad = |n: usize| if version == 1 { n.div_ceil(8) * 8 } else { n };
            match version {
                1 | 2 => {}
                3 => {
                    r.u8()?; // name encoding
                }
                v => return Err(format!("attribute message version {v}")),
            }
            let attr_name = r.take(pad(name_len))?;
            if attr_name.get(..name_len) != Some(&[name.as_bytes(), b"\0"].concat()[..]) {
                continue;
            }
            let datatype = r.take(pad(type_len))?.get(..type_len).ok_or("truncated attribute")?;
            let space = r.take(pad(space_len))?.get(..space_len).ok_or("truncated attribute")?;
            let count = self.dataspace(space)?.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("overflow")?;
            let data = &m.data[r.at..];
            return self.strings(datatype, data, count).map(Some).map_err(|e| format!("attribute `{name}`: {e}"));
        }
        Ok(None)
    }

    /// `count` strings stored as `datatype` says, from `data`: fixed-length
    /// (NUL-padded) or variable-length (in the global heap).
    fn strings(&self, datatype: &[u8], data: &[u8], count: usize) -> Result<Vec<String>, String> {
        let mut t = Reader::new(datatype, 0);
        let class = t.u8()? & 0x0F;
        let bits = t.uint(3)?;
        let size = t.u32()? as usize;
        let text = |b: &[u8]| -> Result<String, String> {
            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            String::from_utf8(b[..end].to_vec()).map_err(|_| "a string not UTF-8".to_string())
        };
        let mut r = Reader::new(data, 0);
        match class {
            3 => (0..count).map(|_| text(r.take(size)?)).collect(),
            9 if bits & 0x0F == 1 => (0..count)
                .map(|_| {
                    let len = r.u32()? as usize;
                    let (collection, index) = (r.uint(self.offsets)?, r.u32()?);
                    let object = self.global_heap_object(collection, index)?;
                    text(object.get(..len).ok_or("a string longer than its heap object")?)
                })
                .collect(),
            _ => Err("not strings".into()),
        }
    }

    /// Object `index` of the global heap collection at `addr`.
    fn global_heap_object(&self, addr: u64, index: u32) -> Result<&'a [u8], String> {
        let start = self.at(addr)?;
        let mut r = Reader::new(self.b, start);
        if r.take(4)? != b"GCOL" {
            return Err(format!("no global heap collection at {addr}"));
        }
        r.take(4)?; // version, reserved
        let size = usize::try_from(r.uint(self.lengths)?).map_err(|_| "global heap too large")?;
        let end = start.checked_add(size).filter(|&e| e <= self.b.len()).ok_or("global heap beyond the file")?;
        let mut r = Reader::new(&self.b[..end], r.at);
        while r.at + 8 + self.lengths <= end {
            let id = r.u16()?;
            r.take(6)?; // reference count, reserved
            let len = usize::try_from(r.uint(self.lengths)?).map_err(|_| "heap object too large")?;
            if id == 0 {
                break; // free space: the last object
            }
            let data = r.take(len)?;
            if u32::from(id) == index {
                return Ok(data);
            }
            r.take((8 - len % 8) % 8)?;
        }
        Err(format!("no object {index} in the global heap collection at {addr}"))
    }

    /// The data segment of the local heap at `addr`.
    fn local_heap(&self, addr: u64) -> Result<&'a [u8], String> {
        let mut r = Reader::new(self.b, self.at(addr)?);
        if r.take(4)? != b"HEAP" {
            return Err(format!("no local heap at {addr}"));
        }
        r.take(4)?; // version, reserved
        let size = r.uint(self.lengths)?;
        r.uint(self.lengths)?; // free list
        let data = self.at(r.uint(self.offsets)?)?;
        usize::try_from(size)
            .ok()
            .and_then(|s| data.checked_add(s))
            .and_then(|end| self.b.get(data..end))
            .ok_or_else(|| format!("local heap at {addr} beyond the end of the file"))
    }

    /// The members (name offset, object header) under the group B-tree node
    /// at `addr`. `visits` counts the nodes read, so that a tree whose
    /// nodes point back at each other ends.
    fn group_nodes(&self, addr: u64, depth: usize, out: &mut Vec<(u64, u64)>) -> Result<(), String> {
        self.visit()?;
        if depth > MAX_DEPTH {
            return Err(format!("group B-tree deeper than {MAX_DEPTH}"));
        }
        let mut r = Reader::new(self.b, self.at(addr)?);
        let sig = r.take(4)?;
        if sig == b"SNOD" {
            r.take(2)?; // version, reserved
            let n = r.u16()?;
            for _ in 0..n {
                let name = r.uint(self.offsets)?;
                let header = r.uint(self.offsets)?;
                r.take(4 + 4 + 16)?; // cache type, reserved, scratch
                out.push((name, header));
                if out.len() > MAX_OBJECTS {
                    return Err(format!("more than {MAX_OBJECTS} members"));
                }
            }
            return Ok(());
        }
        if sig != b"TREE" {
            return Err(format!("no group B-tree node at {addr}"));
        }
        if r.u8()? != 0 {
            return Err(format!("B-tree node at {addr} is not a group's"));
        }
        r.u8()?; // level: the children say what they are
        let entries = r.u16()?;
        r.take(2 * self.offsets)?; // siblings
        for _ in 0..entries {
            r.uint(self.lengths)?; // key
            let child = r.uint(self.offsets)?;
            self.group_nodes(child, depth + 1, out)?;
        }
        Ok(())
    }

    /// A dataset's dtype, shape and data, or `None` when it is not numeric.
    fn dataset(&self, addr: u64, messages: &[Message]) -> Result<Option<Dataset>, String> {
        let find = |kind: u16, what: &str| {
            messages.iter().find(|m| m.kind == kind).ok_or_else(|| format!("a dataset without a {what} message"))
        };
        let datatype = find(0x03, "datatype")?;
        if datatype.flags & 0x02 != 0 {
            return Err("a shared (committed) datatype, which is not read".into());
        }
        let Some(dtype) = numeric_type(datatype.data)? else { return Ok(None) };
        let shape = self.dataspace(find(0x01, "dataspace")?.data)?;
        if messages.iter().any(|m| m.kind == 0x0B) {
            return Err(
                "compressed or filtered (a filter pipeline), which is not read: save it without compression".into()
            );
        }
        let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("shape overflows")?;
        let want = count.checked_mul(dtype.bitsize() / 8).ok_or("shape overflows")?;
        let mut r = Reader::new(find(0x08, "layout")?.data, 0);
        let version = r.u8()?;
        if !(3..=4).contains(&version) {
            return Err(format!("data layout message version {version}, not 3 or 4"));
        }
        let (start, len) = match r.u8()? {
            1 => {
                let data = r.uint(self.offsets)?;
                let len = usize::try_from(r.uint(self.lengths)?).map_err(|_| "data too long")?;
                if undefined(data, self.offsets) {
                    if want == 0 {
                        return Ok(Some(Dataset { path: String::new(), dtype, shape, start: 0, end: 0, header: addr }));
                    }
                    return Err("no data written".into());
                }
                (self.at(data)?, len)
            }
            0 => return Err("stored compactly (in its header), which is not read".into()),
            2 => return Err("stored in chunks, which is not read: save it without chunking or compression".into()),
            c => return Err(format!("data layout class {c}")),
        };
        if len != want {
            return Err(format!("{len} bytes of data for shape {shape:?} of {dtype:?} ({want} bytes)"));
        }
        let end = start.checked_add(len).filter(|&e| e <= self.b.len()).ok_or("data beyond the end of the file")?;
        Ok(Some(Dataset { path: String::new(), dtype, shape, start, end, header: addr }))
    }

    /// The dimensions of a dataspace message (a scalar has none).
    fn dataspace(&self, data: &[u8]) -> Result<Vec<usize>, String> {
        let mut r = Reader::new(data, 0);
        let version = r.u8()?;
        let rank = r.u8()? as usize;
        r.u8()?; // flags
        match version {
            1 => {
                r.take(5)?;
            }
            2 => {
                if r.u8()? == 2 {
                    return Ok(vec![0]); // the null dataspace: no elements
                }
            }
            v => return Err(format!("dataspace message version {v}")),
        }
        (0..rank)
            .map(|_| usize::try_from(r.uint(self.lengths)?).map_err(|_| "dimension too large".to_string()))
            .collect()
    }
}

/// A name in a local heap's data segment.
fn heap_name(heap: &[u8], offset: u64) -> Result<&str, String> {
    let rest = usize::try_from(offset).ok().and_then(|o| heap.get(o..)).ok_or("member name beyond its heap")?;
    let len = rest.iter().position(|&c| c == 0).ok_or("member name without its end")?;
    std::str::from_utf8(&rest[..len]).map_err(|_| "member name not UTF-8".into())
}

/// The dtype of a datatype message when it is a little-endian integer or an
/// IEEE float as numpy writes them; `None` for other classes (strings,
/// compounds, references). A float of another layout is an error.
fn numeric_type(data: &[u8]) -> Result<Option<Dtype>, String> {
    let mut r = Reader::new(data, 0);
    let class_version = r.u8()?;
    let bits = r.uint(3)?;
    let size = r.u32()?;
    let big_endian = bits & 1 != 0;
    match class_version & 0x0F {
        0 => {
            let signed = bits & 0x08 != 0;
            Ok(match (big_endian, signed, size) {
                (true, ..) => None,
                (false, true, 1) => Some(Dtype::I8),
                (false, false, 1) => Some(Dtype::U8),
                (false, true, 2) => Some(Dtype::I16),
                (false, false, 2) => Some(Dtype::U16),
                (false, true, 4) => Some(Dtype::I32),
                (false, false, 4) => Some(Dtype::U32),
                (false, true, 8) => Some(Dtype::I64),
                (false, false, 8) => Some(Dtype::U64),
                _ => None,
            })
        }
        1 => {
            let (offset, precision) = (r.u16()?, r.u16()?);
            let (exp_at, exp_bits, mant_at, mant_bits) = (r.u8()?, r.u8()?, r.u8()?, r.u8()?);
            let bias = r.u32()?;
            let sign_at = (bits >> 8) & 0xFF;
            let layout = (sign_at, offset, precision, exp_at, exp_bits, mant_at, mant_bits, bias);
            let ieee = match size {
                2 => layout == (15, 0, 16, 10, 5, 0, 10, 15),
                4 => layout == (31, 0, 32, 23, 8, 0, 23, 127),
                8 => layout == (63, 0, 64, 52, 11, 0, 52, 1023),
                _ => false,
            };
            if big_endian || bits & 0x40 != 0 || !ieee {
                return Err(format!("a {size}-byte float that is not little-endian IEEE 754, which is not read"));
            }
            Ok(Some(match size {
                2 => Dtype::F16,
                4 => Dtype::F32,
                _ => Dtype::F64,
            }))
        }
        _ => Ok(None),
    }
}
