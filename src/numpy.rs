//! NumPy files: `.npz` archives of named arrays (`np.savez(path, **weights)`)
//! read in place from their stored entries, and `.npy` weight lists of the
//! paper's own code (CNT-DNNs: `np.save` of Keras' `model.get_weights()`,
//! an object array, pickled) read through the restricted unpickler and
//! named as a keras-layout chain (`layer<i>/kernel`, `layer<i>/bias`).
//! Compressed archives (`np.savez_compressed`) are inflated, bounded by
//! the sizes they declare and checked against their CRC-32s. Headers are
//! parsed as data (a small literal parser, never evaluated).

use safetensors::tensor::Dtype;

use crate::pickle::{self, Value};
use crate::zip;

/// The magic of a `.npy` file.
pub(crate) const MAGIC: &[u8] = b"\x93NUMPY";

/// One array: name, dtype, shape, and its row-major bytes (a range of the
/// file, or gathered).
pub(crate) struct Array {
    pub(crate) name: String,
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
    pub(crate) place: crate::torch::Place,
}

/// The arrays of a NumPy file and the buffer of those that needed copying
/// (Fortran order, or data inside a pickle).
pub(crate) struct NumpyCheckpoint {
    pub(crate) arrays: Vec<Array>,
    pub(crate) gathered: Vec<u8>,
}

/// True when a zip archive holds `.npy` entries (an `.npz`).
pub(crate) fn is_npz(bytes: &[u8]) -> bool {
    zip::is_zip(bytes) && zip::entries(bytes).is_ok_and(|e| !e.is_empty() && e.iter().all(|e| e.name.ends_with(".npy")))
}

/// A `.npy` matrix's header, for readers that map the data themselves
/// (the flat-matrix zoos).
pub(crate) struct MatrixHeader {
    pub(crate) dtype: Dtype,
    pub(crate) fortran: bool,
    pub(crate) shape: Vec<usize>,
    /// Where the data starts.
    pub(crate) data: usize,
}

/// The header of a `.npy` file (checked as data, never evaluated).
pub(crate) fn matrix_header(b: &[u8]) -> Result<MatrixHeader, String> {
    let h = header(b)?;
    Ok(MatrixHeader { dtype: dtype(&h.descr)?, fortran: h.fortran, shape: h.shape, data: h.data })
}

/// The header of a `.npy`: dtype (as numpy writes it), Fortran order,
/// shape, and where the data starts.
struct Header {
    descr: String,
    fortran: bool,
    shape: Vec<usize>,
    data: usize,
}

fn header(b: &[u8]) -> Result<Header, String> {
    if !b.starts_with(MAGIC) || b.len() < 10 {
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    let (len, start): (usize, usize) = match b[6] {
        1 => (usize::from(u16::from_le_bytes([b[8], b[9]])), 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(format!(".npy format version {v} is not read")),
    };
    let end = start.checked_add(len).filter(|&e| e <= b.len()).ok_or(".npy header past the end of the file")?;
    let text = std::str::from_utf8(&b[start..end]).map_err(|_| ".npy header is not text")?;
    let mut h = Header { descr: String::new(), fortran: false, shape: Vec::new(), data: end };
    let mut seen = 0;
    for (key, value) in dict_items(text)? {
        match key.as_str() {
            "descr" => h.descr = value.trim_matches(|c| c == '\'' || c == '"').to_string(),
            "fortran_order" => h.fortran = value == "True",
            "shape" => {
                let inner = value.trim().trim_start_matches('(').trim_end_matches(')');
                h.shape = inner
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| s.trim_end_matches('L').parse::<usize>().map_err(|_| format!("shape entry `{s}`")))
                    .collect::<Result<_, _>>()?;
            }
            _ => continue,
        }
        seen += 1;
    }
    if seen != 3 {
        return Err(format!(".npy header lacks descr, fortran_order or shape: {text:?}"));
    }
    Ok(h)
}

/// The `key: value` items of the dict literal numpy writes
/// (`{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`).
fn dict_items(text: &str) -> Result<Vec<(String, String)>, String> {
    let body = text.trim().trim_start_matches('{').trim_end().trim_end_matches('}');
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(q) = rest.find(['\'', '"']) {
        let quote = rest.as_bytes()[q] as char;
        let after = &rest[q + 1..];
        let k_end = after.find(quote).ok_or("unterminated key in .npy header")?;
        let key = after[..k_end].to_string();
        let after = after[k_end + 1..].trim_start().strip_prefix(':').ok_or("`:` missing in .npy header")?.trim_start();
        // The value ends at the comma after a balanced tuple or quote.
        let (value, next) = if let Some(t) = after.strip_prefix('(') {
            let close = t.find(')').ok_or("unterminated tuple in .npy header")?;
            (format!("({})", &t[..close]), &t[close + 1..])
        } else if after.starts_with(['\'', '"']) {
            let qc = after.as_bytes()[0] as char;
            let close = after[1..].find(qc).ok_or("unterminated string in .npy header")? + 1;
            (after[..=close].to_string(), &after[close + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.push((key, value));
        rest = next.trim_start().trim_start_matches(',');
    }
    Ok(out)
}

/// A numpy dtype string as the analysis stores it.
pub(crate) fn dtype(descr: &str) -> Result<Dtype, String> {
    let (order, code) = descr.split_at(descr.len().min(1));
    if order == ">" && !code.ends_with('1') {
        return Err(format!("big-endian dtype `{descr}` is not read (save it little-endian: arr.astype('<f4'))"));
    }
    Ok(match code {
        "f4" => Dtype::F32,
        "f2" => Dtype::F16,
        "f8" => Dtype::F64,
        "i8" => Dtype::I64,
        "i4" => Dtype::I32,
        "i2" => Dtype::I16,
        "i1" => Dtype::I8,
        "u1" => Dtype::U8,
        "b1" => Dtype::BOOL,
        _ => return Err(format!("dtype `{descr}` is not read")),
    })
}

fn size(d: Dtype) -> usize {
    match d {
        Dtype::F64 | Dtype::I64 => 8,
        Dtype::F32 | Dtype::I32 => 4,
        Dtype::F16 | Dtype::I16 => 2,
        _ => 1,
    }
}

/// Appends a Fortran-ordered array's elements in row-major order.
fn gather_fortran(data: &[u8], shape: &[usize], elem: usize, out: &mut Vec<u8>) {
    let stride: Vec<usize> = shape.iter().scan(1usize, |acc, &d| Some(std::mem::replace(acc, *acc * d))).collect();
    let numel: usize = shape.iter().product();
    let mut index = vec![0usize; shape.len()];
    for _ in 0..numel {
        let at: usize = index.iter().zip(&stride).map(|(i, s)| i * s).sum();
        out.extend_from_slice(&data[at * elem..(at + 1) * elem]);
        for k in (0..index.len()).rev() {
            index[k] += 1;
            if index[k] < shape[k] {
                break;
            }
            index[k] = 0;
        }
    }
}

/// The dtype of array `name` with header `h`, checked against the `len`
/// bytes that hold its data.
fn checked_dtype(name: &str, h: &Header, len: usize) -> Result<Dtype, String> {
    let dt = dtype(&h.descr).map_err(|e| format!("array `{name}`: {e}"))?;
    let numel =
        h.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or(format!("array `{name}`: size overflows"))?;
    let bytes = numel.checked_mul(size(dt)).ok_or(format!("array `{name}`: size overflows"))?;
    if bytes != len {
        return Err(format!(
            "array `{name}`: shape {:?} of {} needs {bytes} bytes, the file holds {len}",
            h.shape, h.descr
        ));
    }
    Ok(dt)
}

/// True when an array's bytes are not already in row-major order.
fn column_major(h: &Header) -> bool {
    h.fortran && h.shape.iter().filter(|&&d| d > 1).count() > 1
}

/// One numeric array whose bytes are `data`: in place at `base` of the
/// file when given and row-major, else copied into `gathered` in
/// row-major order.
fn numeric(
    name: String,
    h: &Header,
    data: &[u8],
    base: Option<usize>,
    gathered: &mut Vec<u8>,
) -> Result<Array, String> {
    let dt = checked_dtype(&name, h, data.len())?;
    let place = match base {
        Some(at) if !column_major(h) => crate::torch::Place::Archive(at, at + data.len()),
        _ => {
            let start = gathered.len();
            if column_major(h) {
                gather_fortran(data, &h.shape, size(dt), gathered);
            } else {
                gathered.extend_from_slice(data);
            }
            crate::torch::Place::Gathered(start, gathered.len())
        }
    };
    Ok(Array { name, dtype: dt, shape: h.shape.clone(), place })
}

/// An `.npz`: every `.npy` entry, named without `.npy`. Stored entries
/// (`np.savez`) are read in place; deflated ones (`np.savez_compressed`)
/// are inflated side by side into the gathered buffer, each at a multiple
/// of 64 bytes (so its data, which numpy pads to 64 within the entry, is
/// aligned), bounded by their declared sizes, which together are bounded
/// by the deflated bytes ([`crate::fill::beyond_ratio`]: a deflate bomb
/// stops there), and checked against their CRC-32s.
pub(crate) fn read_npz(bytes: &[u8]) -> Result<NumpyCheckpoint, String> {
    let entries = zip::entries(bytes)?;
    let deflated: Vec<&zip::ZipEntry> = entries.iter().filter(|e| e.method != zip::STORED).collect();
    let mut places = Vec::with_capacity(deflated.len());
    let mut total = 0usize;
    for e in &deflated {
        e.deflated()?;
        places.push((total, e.size));
        total = total.checked_add(e.size.div_ceil(64) * 64).ok_or("the entries' declared sizes overflow")?;
    }
    let packed = deflated.iter().fold(0usize, |a, e| a.saturating_add(e.len));
    if let Some(why) = crate::fill::beyond_ratio(total, packed) {
        return Err(format!("its deflated entries declare {total} bytes from {packed}: {why}"));
    }
    let mut gathered = vec![0u8; total];
    let parts = crate::fill::split(&mut gathered, &places);
    crate::fill::side_by_side(&deflated, parts, total, |e, out| zip::inflate_into(bytes, e, out))?;
    let mut out = NumpyCheckpoint { arrays: Vec::with_capacity(entries.len()), gathered };
    let mut inflated = places.into_iter();
    for e in &entries {
        let name = e.name.trim_end_matches(".npy").to_string();
        let array = if e.method == zip::STORED {
            let b = &bytes[e.start..e.start + e.len];
            let h = header(b).map_err(|m| format!("array `{name}`: {m}"))?;
            numeric(name, &h, &b[h.data..], Some(e.start + h.data), &mut out.gathered)?
        } else {
            let (start, len) = inflated.next().expect("a place per deflated entry");
            let b = &mut out.gathered[start..start + len];
            let h = header(b).map_err(|m| format!("array `{name}`: {m}"))?;
            let dt = checked_dtype(&name, &h, len - h.data)?;
            let data = &mut b[h.data..];
            if column_major(&h) {
                let mut rows = Vec::with_capacity(data.len());
                gather_fortran(data, &h.shape, size(dt), &mut rows);
                data.copy_from_slice(&rows);
            }
            let place = crate::torch::Place::Gathered(start + h.data, start + len);
            Array { name, dtype: dt, shape: h.shape, place }
        };
        out.arrays.push(array);
    }
    Ok(out)
}

/// A `.npy`: an object array of weight arrays (CNT-DNNs), named as a
/// keras-layout chain. A single numeric array is not a checkpoint.
pub(crate) fn read_npy(bytes: &[u8]) -> Result<NumpyCheckpoint, String> {
    let h = header(bytes)?;
    if h.descr != "|O" {
        return Err(format!(
            "a single {} array of shape {:?}: not a checkpoint of named weights (save them with np.savez(path, **weights))",
            h.descr, h.shape
        ));
    }
    let root = pickle::load(&bytes[h.data..])?;
    let Value::Array(a) = &root else { return Err("the pickle holds no array".into()) };
    let Some(pickle::ArrayData::Objects(items)) = &a.borrow().data else {
        return Err("an object array without its items".into());
    };
    let mut out = NumpyCheckpoint { arrays: Vec::new(), gathered: Vec::new() };
    let mut layer = 0;
    for (k, item) in items.iter().enumerate() {
        let arr = match item {
            Value::Array(arr) => arr,
            Value::Object(o) => {
                return Err(format!(
                    "item {k} of the weight list is a `{}` (read as inert data, nothing of it run), not an array",
                    o.class
                ))
            }
            _ => return Err(format!("item {k} of the weight list is not an array")),
        };
        let arr = arr.borrow();
        let (Some(descr), Some(pickle::ArrayData::Bytes(data))) = (&arr.descr, &arr.data) else {
            return Err(format!("item {k} of the weight list is not a numeric array"));
        };
        let name = if arr.shape.len() == 1 && k > 0 {
            format!("layer{}/bias", layer - 1)
        } else {
            layer += 1;
            format!("layer{}/kernel", layer - 1)
        };
        let h = Header { descr: descr.clone(), fortran: arr.fortran, shape: arr.shape.clone(), data: 0 };
        out.arrays.push(numeric(name, &h, data, None, &mut out.gathered)?);
    }
    Ok(out)
}
