//! Reading binary formats as data: a cursor whose every read is checked
//! against the end of its bytes (LEB128 varints included), protobuf
//! messages' fields read with it, and CRC-32C, the checksum of
//! tensorstore's OCDBT nodes and of TensorFlow's tables.

/// CRC-32C (Castagnoli).
pub(crate) fn crc32c(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 { (c >> 1) ^ 0x82f6_3b78 } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    !bytes.iter().fold(!0u32, |c, &b| TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

/// A cursor over bytes; every read checked against their end, errors
/// naming `what` is read.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    what: &'a str,
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `b`, a `what` (for errors).
    pub(crate) fn new(b: &'a [u8], what: &'a str) -> Self {
        Reader { b, at: 0, what }
    }

    /// True when every byte has been read.
    pub(crate) fn done(&self) -> bool {
        self.at >= self.b.len()
    }

    /// How many bytes have been read.
    pub(crate) fn position(&self) -> usize {
        self.at
    }

    fn short(&self) -> String {
        format!("a {} cut short (at byte {} of {})", self.what, self.at, self.b.len())
    }

    /// The next byte.
    pub(crate) fn byte(&mut self) -> Result<u8, String> {
        let v = *self.b.get(self.at).ok_or_else(|| self.short())?;
        self.at += 1;
        Ok(v)
    }

    /// The next `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len()).ok_or_else(|| self.short())?;
        let v = &self.b[self.at..end];
        self.at = end;
        Ok(v)
    }

    /// An unsigned LEB128 varint of up to 64 bits.
    pub(crate) fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(format!("a {} with a varint past 64 bits", self.what));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("a {} with a varint past 64 bits", self.what))
    }

    /// A varint that is a length of at most `max`.
    pub(crate) fn length(&mut self, max: usize) -> Result<usize, String> {
        let v = self.varint()?;
        usize::try_from(v).ok().filter(|&v| v <= max).ok_or_else(|| format!("a {} length of {v}", self.what))
    }

    /// A varint that is an index into a table of `n` entries.
    pub(crate) fn index(&mut self, n: usize) -> Result<usize, String> {
        let v = self.varint()?;
        usize::try_from(v).ok().filter(|&v| v < n).ok_or_else(|| format!("data file {v} of a table of {n}"))
    }
}

/// One protobuf field's value (fixed-width ones skipped).
pub(crate) enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of a protobuf message, as `(number, value)`, each bounded
/// by the message's bytes.
pub(crate) fn fields<'a>(b: &'a [u8], what: &'a str) -> Result<Vec<(u64, Field<'a>)>, String> {
    let mut r = Reader::new(b, what);
    let mut out = Vec::new();
    while !r.done() {
        let tag = r.varint()?;
        let value = match tag & 7 {
            0 => Field::Varint(r.varint()?),
            1 => r.bytes(8).map(|_| Field::Fixed)?,
            2 => {
                let n = r.length(b.len())?;
                Field::Bytes(r.bytes(n)?)
            }
            5 => r.bytes(4).map(|_| Field::Fixed)?,
            w => return Err(format!("a {what} with a field of wire type {w}")),
        };
        out.push((tag >> 3, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn varints_and_bounds() {
        let mut r = Reader::new(&[0xac, 0x02, 0x05], "test");
        assert_eq!(r.varint(), Ok(300));
        assert_eq!(r.varint(), Ok(5));
        assert!(r.done());
        assert!(r.varint().unwrap_err().contains("cut short"));
        let long = [0xffu8; 11];
        assert!(Reader::new(&long, "test").varint().unwrap_err().contains("64 bits"));
        assert!(Reader::new(&[9], "test").length(8).unwrap_err().contains("length of 9"));
    }
}
