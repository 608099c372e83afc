//! The part of the zip format `torch.save` and `np.savez` write: stored
//! (uncompressed) entries, read in place, found through the central
//! directory (zip64 included), and deflated ones (`np.savez_compressed`),
//! inflated by [`inflate_into`] into exactly the size the directory
//! declares, so a zip bomb stops there. Readers that read in place take
//! stored entries only ([`stored`]); compressed entries that are not read
//! (a TorchScript archive's code) are listed only. Every offset read from
//! the file is checked against the file's length with checked arithmetic.

/// One entry: its name and where its bytes are in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipEntry {
    /// The name as the archive spells it.
    pub name: String,
    /// Its compression method (0: stored). Readers take stored entries only
    /// ([`stored`]).
    pub method: u16,
    /// First byte of the entry's data.
    pub start: usize,
    /// Its length in bytes.
    pub len: usize,
    /// Its length once inflated, as the directory declares it (`len` for a
    /// stored entry).
    pub size: usize,
    /// The CRC-32 of its inflated bytes, as the directory records it.
    pub crc: u32,
}

impl ZipEntry {
    /// An error unless the entry is deflated, the one compression read
    /// ([`inflate_into`]).
    pub fn deflated(&self) -> Result<(), String> {
        match self.method {
            DEFLATED => Ok(()),
            m => Err(format!("entry `{}`: compression method {m} is not read (only stored and deflated)", self.name)),
        }
    }

    /// An error unless the entry is stored (uncompressed): a compressed
    /// entry to be read is refused, never inflated.
    pub fn stored(&self) -> Result<(), String> {
        match self.method {
            STORED => Ok(()),
            m => Err(format!(
                "entry `{}` is compressed (method {m}): only stored entries are read, nothing is inflated",
                self.name
            )),
        }
    }
}

const EOCD: u32 = 0x0605_4b50;
const EOCD64_LOCATOR: u32 = 0x0706_4b50;
const EOCD64: u32 = 0x0606_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;
/// The compression method of stored entries.
pub const STORED: u16 = 0;
/// The compression method of deflated entries.
pub const DEFLATED: u16 = 8;
/// Entries an archive may list (a state_dict has one per tensor storage).
const MAX_ENTRIES: usize = 1 << 20;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

/// True when the bytes start like a zip archive.
pub fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// The entries of a zip archive when every one is stored (uncompressed);
/// a compressed one is refused, never inflated.
pub fn stored(b: &[u8]) -> Result<Vec<ZipEntry>, String> {
    let entries = entries(b)?;
    entries.iter().try_for_each(ZipEntry::stored)?;
    Ok(entries)
}

/// The entries of a zip archive (compressed ones listed, not read), or
/// what is wrong with it.
pub fn entries(b: &[u8]) -> Result<Vec<ZipEntry>, String> {
    let trunc = |what: &str| format!("truncated zip archive: {what} lies past the end of the file");
    // The end-of-central-directory record: in the last 64 KiB + 22 bytes.
    let lowest = b.len().saturating_sub(22 + 0xffff);
    let eocd = (lowest..=b.len().saturating_sub(22))
        .rev()
        .find(|&i| u32_at(b, i) == Some(EOCD))
        .ok_or("not a complete zip archive: no end-of-central-directory record (truncated?)")?;
    let mut count = usize::from(u16_at(b, eocd + 10).ok_or_else(|| trunc("the directory record"))?);
    let mut size = u32_at(b, eocd + 12).ok_or_else(|| trunc("the directory record"))? as u64;
    let mut offset = u32_at(b, eocd + 16).ok_or_else(|| trunc("the directory record"))? as u64;
    if count == 0xffff || size == 0xffff_ffff || offset == 0xffff_ffff {
        // zip64: a locator right before the record points at the zip64 record.
        let loc = eocd
            .checked_sub(20)
            .filter(|&l| u32_at(b, l) == Some(EOCD64_LOCATOR))
            .ok_or("zip64 archive without its locator")?;
        let at = u64_at(b, loc + 8).ok_or_else(|| trunc("the zip64 locator"))?;
        let at = usize::try_from(at).map_err(|_| trunc("the zip64 record"))?;
        if u32_at(b, at) != Some(EOCD64) {
            return Err("zip64 locator points at no zip64 record".into());
        }
        count = usize::try_from(u64_at(b, at + 32).ok_or_else(|| trunc("the zip64 record"))?).unwrap_or(usize::MAX);
        size = u64_at(b, at + 40).ok_or_else(|| trunc("the zip64 record"))?;
        offset = u64_at(b, at + 48).ok_or_else(|| trunc("the zip64 record"))?;
    }
    if count > MAX_ENTRIES {
        return Err(format!("the archive lists {count} entries (at most {MAX_ENTRIES} are read)"));
    }
    let dir_start = usize::try_from(offset).map_err(|_| trunc("the central directory"))?;
    let dir_end = usize::try_from(size).ok().and_then(|s| dir_start.checked_add(s)).filter(|&e| e <= b.len());
    let dir_end = dir_end.ok_or_else(|| trunc("the central directory"))?;
    let mut out = Vec::with_capacity(count);
    let mut at = dir_start;
    for _ in 0..count {
        if at.checked_add(46).is_none_or(|e| e > dir_end) || u32_at(b, at) != Some(CENTRAL) {
            return Err(format!("central directory entry {} is malformed", out.len()));
        }
        let method = u16_at(b, at + 10).expect("bounds checked");
        let crc = u32_at(b, at + 16).expect("bounds checked");
        let mut csize = u64::from(u32_at(b, at + 20).expect("bounds checked"));
        let mut usize_ = u64::from(u32_at(b, at + 24).expect("bounds checked"));
        let name_len = usize::from(u16_at(b, at + 28).expect("bounds checked"));
        let extra_len = usize::from(u16_at(b, at + 30).expect("bounds checked"));
        let comment_len = usize::from(u16_at(b, at + 32).expect("bounds checked"));
        let mut local = u64::from(u32_at(b, at + 42).expect("bounds checked"));
        let name_at = at + 46;
        let extra_at = name_at.checked_add(name_len).ok_or_else(|| trunc("an entry name"))?;
        let next = extra_at.checked_add(extra_len).and_then(|e| e.checked_add(comment_len));
        let next = next.filter(|&e| e <= dir_end).ok_or_else(|| trunc("a central directory entry"))?;
        let name = String::from_utf8_lossy(&b[name_at..extra_at]).into_owned();
        // zip64 sizes and offset in the extra field (id 1), in this order,
        // each present only where the 32-bit field is saturated.
        let mut e = extra_at;
        while e + 4 <= extra_at + extra_len {
            let (id, len) = (u16_at(b, e).expect("bounds"), usize::from(u16_at(b, e + 2).expect("bounds")));
            if id == 1 {
                let mut f = e + 4;
                for v in [&mut usize_, &mut csize, &mut local] {
                    if *v == 0xffff_ffff && f + 8 <= e + 4 + len {
                        *v = u64_at(b, f).ok_or_else(|| trunc("a zip64 field"))?;
                        f += 8;
                    }
                }
            }
            e = e.saturating_add(4 + len);
        }
        if method == STORED && csize != usize_ {
            return Err(format!("stored entry `{name}` declares {csize} stored bytes but {usize_} uncompressed"));
        }
        let local = usize::try_from(local).map_err(|_| trunc("a local header"))?;
        if u32_at(b, local) != Some(LOCAL) {
            return Err(format!("entry `{name}`: no local header where the directory says"));
        }
        let lname = usize::from(u16_at(b, local + 26).ok_or_else(|| trunc("a local header"))?);
        let lextra = usize::from(u16_at(b, local + 28).ok_or_else(|| trunc("a local header"))?);
        let start = local.checked_add(30 + lname + lextra).ok_or_else(|| trunc("an entry's data"))?;
        let len = usize::try_from(csize).map_err(|_| trunc("an entry's data"))?;
        if start.checked_add(len).is_none_or(|end| end > b.len()) {
            return Err(format!("entry `{name}`: its {len} bytes lie past the end of the file (truncated?)"));
        }
        let size = usize::try_from(usize_).map_err(|_| format!("entry `{name}` declares {usize_} bytes inflated"))?;
        out.push(ZipEntry { name, method, start, len, size, crc });
        at = next;
    }
    Ok(out)
}

/// Inflates deflated entry `e` of archive `b` into `out`, which holds
/// exactly the size its directory entry declares: the deflate stream must
/// end there (nothing is written past `out`, so a bomb stops at the
/// declared size) and the bytes must have the CRC-32 the directory
/// records.
pub fn inflate_into(b: &[u8], e: &ZipEntry, out: &mut [u8]) -> Result<(), String> {
    e.deflated()?;
    let input = &b[e.start..e.start + e.len];
    let mut d = flate2::Decompress::new(false);
    let declared = out.len();
    let wrong_size =
        || format!("entry `{}` does not inflate to the {declared} bytes its directory entry declares", e.name);
    let mut status = d.decompress(input, out, flate2::FlushDecompress::Finish);
    if matches!(status, Ok(s) if s != flate2::Status::StreamEnd) && d.total_out() == declared as u64 {
        // The output is full: the stream may still hold its end marker.
        let rest = &input[usize::try_from(d.total_in()).unwrap_or(input.len()).min(input.len())..];
        status = d.decompress(rest, &mut [], flate2::FlushDecompress::Finish);
    }
    match status {
        Ok(flate2::Status::StreamEnd) if d.total_out() == declared as u64 => {}
        // A stream that ends short of `out`, or fills it and goes on.
        Ok(_) => return Err(wrong_size()),
        Err(_) if d.total_out() == declared as u64 => return Err(wrong_size()),
        Err(err) => return Err(format!("entry `{}`: damaged deflate data ({err})", e.name)),
    }
    let mut crc = flate2::Crc::new();
    crc.update(out);
    if crc.sum() != e.crc {
        return Err(format!(
            "entry `{}`: its inflated bytes have CRC-32 {:08x}, the directory records {:08x} (a damaged file)",
            e.name,
            crc.sum(),
            e.crc
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An archive as the zip format lays it out, its entries stored as
    /// given (and declared as `method`).
    fn archive(files: &[(&str, &[u8])], method: u16) -> Vec<u8> {
        let entries: Vec<_> = files.iter().map(|&(name, data)| (name, data.to_vec(), data.len(), 0)).collect();
        laid_out(&entries, method)
    }

    /// An archive of deflated entries.
    fn deflated(files: &[(&str, &[u8])]) -> Vec<u8> {
        use std::io::Write;
        let entries: Vec<_> = files
            .iter()
            .map(|&(name, data)| {
                let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
                z.write_all(data).unwrap();
                let mut crc = flate2::Crc::new();
                crc.update(data);
                (name, z.finish().unwrap(), data.len(), crc.sum())
            })
            .collect();
        laid_out(&entries, DEFLATED)
    }

    /// Entries `(name, bytes as stored, size inflated, CRC-32)`.
    fn laid_out(files: &[(&str, Vec<u8>, usize, u32)], method: u16) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, data, size, crc) in files {
            let local = out.len() as u32;
            out.extend(LOCAL.to_le_bytes());
            out.extend([20, 0, 0, 0]);
            out.extend(method.to_le_bytes());
            out.extend([0; 4]); // time, date
            out.extend(crc.to_le_bytes());
            out.extend((data.len() as u32).to_le_bytes());
            out.extend((*size as u32).to_le_bytes());
            out.extend((name.len() as u16).to_le_bytes());
            out.extend(0u16.to_le_bytes());
            out.extend(name.as_bytes());
            out.extend(data);
            central.extend(CENTRAL.to_le_bytes());
            central.extend([20, 0, 20, 0, 0, 0]);
            central.extend(method.to_le_bytes());
            central.extend([0; 4]);
            central.extend(crc.to_le_bytes());
            central.extend((data.len() as u32).to_le_bytes());
            central.extend((*size as u32).to_le_bytes());
            central.extend((name.len() as u16).to_le_bytes());
            central.extend([0; 12]);
            central.extend(local.to_le_bytes());
            central.extend(name.as_bytes());
        }
        let dir = out.len() as u32;
        out.extend(&central);
        out.extend(EOCD.to_le_bytes());
        out.extend([0; 4]);
        out.extend((files.len() as u16).to_le_bytes());
        out.extend((files.len() as u16).to_le_bytes());
        out.extend((central.len() as u32).to_le_bytes());
        out.extend(dir.to_le_bytes());
        out.extend([0, 0]);
        out
    }

    #[test]
    fn stored_entries_are_found() {
        let a = archive(&[("x/data.pkl", b"hello"), ("x/data/0", b"12345678")], 0);
        let e = entries(&a).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(&a[e[1].start..e[1].start + e[1].len], b"12345678");
        assert_eq!(e[0].name, "x/data.pkl");
    }

    #[test]
    fn deflated_entries_inflate_to_exactly_their_declared_bytes() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let a = deflated(&[("a.npy", &data)]);
        let e = &entries(&a).unwrap()[0];
        assert_eq!((e.size, e.method), (data.len(), DEFLATED));
        let mut out = vec![0; e.size];
        inflate_into(&a, e, &mut out).unwrap();
        assert_eq!(out, data);
        // Room for fewer or more bytes than the stream holds.
        for room in [e.size - 1, e.size + 1] {
            let err = inflate_into(&a, e, &mut vec![0; room]).unwrap_err();
            assert!(err.contains(&format!("does not inflate to the {room} bytes")), "{err}");
        }
        // A stream cut short, and one whose bytes are not those recorded.
        let cut = ZipEntry { len: e.len / 2, ..e.clone() };
        assert!(inflate_into(&a, &cut, &mut out).is_err());
        let other = ZipEntry { crc: e.crc ^ 1, ..e.clone() };
        assert!(inflate_into(&a, &other, &mut out).unwrap_err().contains("CRC-32"));
        let bzip2 = ZipEntry { method: 12, ..e.clone() };
        assert!(inflate_into(&a, &bzip2, &mut out).unwrap_err().contains("method 12 is not read"));
    }

    #[test]
    fn compressed_and_truncated_archives_are_refused() {
        let a = archive(&[("x/data.pkl", b"hello")], 8);
        assert!(stored(&a).unwrap_err().contains("compressed"));
        let a = archive(&[("x/data.pkl", b"hello"), ("x/data/0", b"12345678")], 0);
        for cut in [1, 10, 30, a.len() / 2, a.len() - 1] {
            assert!(entries(&a[..cut]).is_err(), "cut at {cut}");
        }
        // Every single-byte change: an error or entries inside the file, never a panic.
        for i in 0..a.len() {
            for v in [0u8, 0xff, a[i].wrapping_add(1)] {
                let mut m = a.clone();
                m[i] = v;
                if let Ok(es) = entries(&m) {
                    assert!(es.iter().all(|e| e.start + e.len <= m.len()));
                }
            }
        }
    }
}
