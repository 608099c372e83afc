//! A restricted unpickler: exactly what `torch.save` writes for a
//! state_dict (protocols 2 to 5: containers, scalars, strings, the
//! persistent ids of tensor storages, `collections.OrderedDict`,
//! `torch._utils._rebuild_tensor_v2` and `_v3`, `_rebuild_parameter`, the
//! typed storage classes, `UntypedStorage` and the `torch.<dtype>`s). Nothing is ever called or imported: those globals are
//! recognised by name and rebuilt as data, and any other global is refused
//! with an error naming it. Input size bounds the work (every opcode reads
//! at least one byte); containers are shared, never copied, so memo
//! references cannot multiply memory; nesting is bounded, and dropping a
//! deep structure does not recurse.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use safetensors::Dtype;

/// The element type of a legacy typed storage class (`FloatStorage`), as
/// `_rebuild_tensor_v2` reads them.
fn storage_dtype(class: &str) -> Option<Dtype> {
    Some(match class {
        "FloatStorage" => Dtype::F32,
        "HalfStorage" => Dtype::F16,
        "BFloat16Storage" => Dtype::BF16,
        "DoubleStorage" => Dtype::F64,
        "LongStorage" => Dtype::I64,
        "IntStorage" => Dtype::I32,
        "ShortStorage" => Dtype::I16,
        "CharStorage" => Dtype::I8,
        "ByteStorage" => Dtype::U8,
        "BoolStorage" => Dtype::BOOL,
        "ComplexFloatStorage" => Dtype::C64,
        _ => return None,
    })
}

/// The element type of a dtype name as torch names it (`torch.<name>`, as
/// `_rebuild_tensor_v3` names a tensor's on an untyped storage) and numpy
/// does (`dtype.name`, with ml_dtypes' `bfloat16` and `float8_*`, as Flax
/// writes them): the same names.
pub(crate) fn dtype_named(name: &str) -> Option<Dtype> {
    Some(match name {
        "float32" => Dtype::F32,
        "float16" => Dtype::F16,
        "bfloat16" => Dtype::BF16,
        "float64" => Dtype::F64,
        "int64" => Dtype::I64,
        "int32" => Dtype::I32,
        "int16" => Dtype::I16,
        "int8" => Dtype::I8,
        "uint8" => Dtype::U8,
        "uint16" => Dtype::U16,
        "uint32" => Dtype::U32,
        "uint64" => Dtype::U64,
        "bool" => Dtype::BOOL,
        "float8_e4m3fn" => Dtype::F8_E4M3,
        "float8_e5m2" => Dtype::F8_E5M2,
        "float8_e4m3fnuz" => Dtype::F8_E4M3FNUZ,
        "float8_e5m2fnuz" => Dtype::F8_E5M2FNUZ,
        "float8_e8m0fnu" => Dtype::F8_E8M0,
        "complex64" => Dtype::C64,
        _ => return None,
    })
}

/// The value of one element of `dtype` (little-endian bytes) as text
/// (`71.5`), for a float, integer or bool dtype; `None` for any other, or
/// bytes of another length.
pub(crate) fn scalar_text(dtype: Dtype, b: &[u8]) -> Option<String> {
    Some(match dtype {
        Dtype::F32 => f32::from_le_bytes(b.try_into().ok()?).to_string(),
        Dtype::F64 => f64::from_le_bytes(b.try_into().ok()?).to_string(),
        Dtype::F16 => half::f16::from_le_bytes(b.try_into().ok()?).to_string(),
        Dtype::BF16 => half::bf16::from_le_bytes(b.try_into().ok()?).to_string(),
        Dtype::I64 => i64::from_le_bytes(b.try_into().ok()?).to_string(),
        Dtype::I32 => i32::from_le_bytes(b.try_into().ok()?).to_string(),
        Dtype::I16 => i16::from_le_bytes(b.try_into().ok()?).to_string(),
        Dtype::I8 => i8::from_le_bytes(b.try_into().ok()?).to_string(),
        Dtype::U64 => u64::from_le_bytes(b.try_into().ok()?).to_string(),
        Dtype::U32 => u32::from_le_bytes(b.try_into().ok()?).to_string(),
        Dtype::U16 => u16::from_le_bytes(b.try_into().ok()?).to_string(),
        Dtype::U8 => u8::from_le_bytes(b.try_into().ok()?).to_string(),
        Dtype::BOOL => (<[u8; 1]>::try_from(b).ok()?[0] != 0).to_string(),
        _ => return None,
    })
}

/// Bytes per element of a dtype that torch stores whole bytes of.
pub fn dtype_size(dtype: Dtype) -> usize {
    dtype.bitsize().div_ceil(8)
}

/// A tensor storage named by a persistent id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    /// Its key: the archive entry `data/<key>`.
    pub key: String,
    /// Element type of a typed storage (`FloatStorage`); `None` for
    /// `UntypedStorage`, whose elements are bytes.
    pub dtype: Option<Dtype>,
    /// Elements it holds (bytes, when untyped).
    pub numel: usize,
}

impl Storage {
    /// Its length in bytes, `None` on overflow.
    pub fn bytes(&self) -> Option<usize> {
        self.numel.checked_mul(self.dtype.map_or(1, dtype_size))
    }
}

/// A tensor: a strided view of a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    /// The storage.
    pub storage: Rc<Storage>,
    /// Element type.
    pub dtype: Dtype,
    /// First element, in elements of `dtype`.
    pub offset: usize,
    /// Shape.
    pub shape: Vec<usize>,
    /// Strides, in elements.
    pub stride: Vec<usize>,
}

/// The globals this unpickler knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`: a tensor of a typed storage.
    RebuildTensor,
    /// `torch._utils._rebuild_tensor_v3`: a tensor of an untyped storage,
    /// of the dtype its last argument names (`uint16`, `float8_*`).
    RebuildTensorV3,
    /// `torch._utils._rebuild_parameter` (and `_with_state`).
    RebuildParameter,
    /// A typed storage class, by element type.
    Storage(Dtype),
    /// `torch.storage.UntypedStorage`.
    UntypedStorage,
    /// A `torch.<dtype>` (`torch.uint16`).
    TorchDtype(Dtype),
    /// `numpy.core.multiarray._reconstruct` (or `numpy._core`).
    NumpyReconstruct,
    /// `numpy.ndarray`.
    NdArray,
    /// `numpy.dtype`.
    NumpyDtype,
    /// `numpy.core.multiarray.scalar` (or `numpy._core`): a numpy scalar.
    NumpyScalar,
    /// `torch._tensor._rebuild_from_type_v2`: a tensor of a subclass,
    /// rebuilt by the function it names.
    RebuildFromType,
    /// `_codecs.encode(text, "latin1")`: bytes as protocol 2 writes them.
    Latin1,
    /// TorchScript's `torch.jit._pickle.build_intlist` (and the other
    /// `build_*list`s) and `restore_type_tag`: their first argument.
    JitValue,
}

/// An object of a class this unpickler does not know (an `argparse.Namespace`
/// of a training script's arguments, a `pathlib.Path`, a whole pickled
/// `nn.Module`): inert data, never constructed or called. It keeps what the
/// pickle gives it: the arguments of its creation, the state set on it
/// (`BUILD`) and the items of a dict or list subclass.
#[derive(Debug, Default)]
pub struct Object {
    /// The class (or function) that would have made it, `module.name`.
    pub class: Rc<str>,
    /// The arguments it would have been called with.
    pub args: Vec<Value>,
    /// Its state, as `BUILD` would set it (an `nn.Module`'s `__dict__`).
    pub state: RefCell<Option<Value>>,
    /// Items set on it as on a dict.
    pub items: RefCell<Vec<(Value, Value)>>,
    /// Items appended to it as to a list.
    pub list: RefCell<Vec<Value>>,
}

/// A numpy array's contents, as its pickled state gives them.
#[derive(Debug, Clone)]
pub enum ArrayData {
    /// The raw bytes of a numeric array.
    Bytes(Rc<[u8]>),
    /// The items of an object array.
    Objects(Vec<Value>),
}

/// A numpy array rebuilt as data: dtype string (`<f4`, `|O`), shape,
/// order and contents.
#[derive(Debug, Clone, Default)]
pub struct ArrayState {
    /// The dtype as numpy spells it (byte order and code).
    pub descr: Option<String>,
    /// Shape.
    pub shape: Vec<usize>,
    /// Column-major data.
    pub fortran: bool,
    /// Contents.
    pub data: Option<ArrayData>,
}

/// A value of the pickle.
#[derive(Debug, Clone)]
pub enum Value {
    /// `None`.
    None,
    /// A bool.
    Bool(bool),
    /// An integer that fits 64 bits.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(Rc<str>),
    /// Bytes.
    Bytes(Rc<[u8]>),
    /// A tuple.
    Tuple(Rc<Vec<Value>>),
    /// A list.
    List(Rc<RefCell<Vec<Value>>>),
    /// A dict (or OrderedDict), in insertion order.
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// A known global.
    Global(Global),
    /// Any other global (`module.name`): a class or function that is never
    /// imported or called.
    Class(Rc<str>),
    /// What calling a [`Value::Class`] would have made: inert data.
    Object(Rc<Object>),
    /// A storage.
    Storage(Rc<Storage>),
    /// A tensor.
    Tensor(Rc<TensorRef>),
    /// A numpy array.
    Array(Rc<RefCell<ArrayState>>),
    /// A numpy dtype: its code (`f4`) and byte order once set.
    DType(Rc<RefCell<(String, String)>>),
}

impl Drop for Value {
    /// Drops nested containers with an explicit stack, so a deeply nested
    /// pickle cannot overflow the call stack when its values are dropped.
    fn drop(&mut self) {
        let mut stack: Vec<Value> = Vec::new();
        let take = |v: &mut Value, stack: &mut Vec<Value>| match v {
            Value::List(l) if Rc::strong_count(l) == 1 => stack.append(&mut l.borrow_mut()),
            Value::Dict(d) if Rc::strong_count(d) == 1 => {
                for (k, v) in d.borrow_mut().drain(..) {
                    stack.push(k);
                    stack.push(v);
                }
            }
            Value::Tuple(t) if Rc::strong_count(t) == 1 => {
                if let Some(t) = Rc::get_mut(t) {
                    stack.append(t);
                }
            }
            Value::Object(o) if Rc::strong_count(o) == 1 => {
                if let Some(o) = Rc::get_mut(o) {
                    stack.append(&mut o.args);
                    stack.extend(o.state.get_mut().take());
                    for (k, v) in o.items.get_mut().drain(..) {
                        stack.push(k);
                        stack.push(v);
                    }
                    stack.append(o.list.get_mut());
                }
            }
            _ => {}
        };
        take(self, &mut stack);
        while let Some(mut v) = stack.pop() {
            take(&mut v, &mut stack);
        }
    }
}

/// How deep `MARK`s may nest.
const MAX_MARKS: usize = 1000;

fn err<T>(at: usize, what: impl std::fmt::Display) -> Result<T, String> {
    Err(format!("pickle byte {at}: {what}"))
}

/// Unpickles `data`; `Err` says what was refused or malformed and where.
pub fn load(data: &[u8]) -> Result<Value, String> {
    let mut stack: Vec<Value> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> Result<&[u8], String> {
        let end = pos.checked_add(n).filter(|&e| e <= data.len());
        let Some(end) = end else { return err(*pos, format!("{n} bytes needed past the end (truncated pickle)")) };
        let s = &data[*pos..end];
        *pos = end;
        Ok(s)
    };
    let u32le = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    let pop = |stack: &mut Vec<Value>, at: usize| stack.pop().map_or_else(|| err(at, "stack underflow"), Ok);
    let pop_mark = |stack: &mut Vec<Value>, marks: &mut Vec<usize>, at: usize| -> Result<Vec<Value>, String> {
        let m = marks.pop().map_or_else(|| err(at, "no MARK to pop to"), Ok)?;
        if m > stack.len() {
            return err(at, "MARK above the stack");
        }
        Ok(stack.split_off(m))
    };
    loop {
        let at = pos;
        let op = *take(&mut pos, 1)?.first().expect("one byte");
        match op {
            0x80 => {
                take(&mut pos, 1)?; // PROTO
            }
            0x95 => {
                take(&mut pos, 8)?; // FRAME: the length only frames the data
            }
            b'.' => return pop(&mut stack, at), // STOP
            b'(' => {
                if marks.len() >= MAX_MARKS {
                    return err(at, format!("MARKs nested deeper than {MAX_MARKS}"));
                }
                marks.push(stack.len());
            }
            b'}' => stack.push(Value::Dict(Rc::default())),
            b']' => stack.push(Value::List(Rc::default())),
            b')' => stack.push(Value::Tuple(Rc::default())),
            b't' => {
                let items = pop_mark(&mut stack, &mut marks, at)?;
                stack.push(Value::Tuple(Rc::new(items)));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if stack.len() < n {
                    return err(at, "stack underflow");
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(Rc::new(items)));
            }
            b'X' | 0x8c | 0x8d | b'B' | b'C' | 0x8e => {
                let n = match op {
                    0x8c | b'C' => usize::from(take(&mut pos, 1)?[0]),
                    b'X' | b'B' => u32le(take(&mut pos, 4)?) as usize,
                    _ => {
                        let n = u64::from_le_bytes(take(&mut pos, 8)?.try_into().expect("8 bytes"));
                        usize::try_from(n).map_or_else(|_| err(at, "length too large"), Ok)?
                    }
                };
                let bytes = take(&mut pos, n)?;
                stack.push(if matches!(op, b'X' | 0x8c | 0x8d) {
                    match std::str::from_utf8(bytes) {
                        Ok(s) => Value::Str(s.into()),
                        Err(_) => return err(at, "a string that is not UTF-8"),
                    }
                } else {
                    Value::Bytes(bytes.into())
                });
            }
            b'J' => stack.push(Value::Int(i64::from(i32::from_le_bytes(take(&mut pos, 4)?.try_into().expect("4"))))),
            b'K' => stack.push(Value::Int(i64::from(take(&mut pos, 1)?[0]))),
            b'M' => stack.push(Value::Int(i64::from(u16::from_le_bytes(take(&mut pos, 2)?.try_into().expect("2"))))),
            0x8a => {
                let n = usize::from(take(&mut pos, 1)?[0]);
                let b = take(&mut pos, n)?;
                if n > 8 {
                    return err(at, format!("an integer of {n} bytes"));
                }
                let mut v = [if b.last().is_some_and(|&x| x & 0x80 != 0) { 0xff } else { 0 }; 8];
                v[..n].copy_from_slice(b);
                stack.push(Value::Int(i64::from_le_bytes(v)));
            }
            b'G' => stack.push(Value::Float(f64::from_be_bytes(take(&mut pos, 8)?.try_into().expect("8")))),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'c' => {
                let line = |pos: &mut usize| -> Result<String, String> {
                    let rest = &data[*pos..];
                    let n =
                        rest.iter().position(|&b| b == b'\n').map_or_else(|| err(*pos, "unterminated GLOBAL"), Ok)?;
                    let s = String::from_utf8_lossy(&rest[..n]).into_owned();
                    *pos += n + 1;
                    Ok(s)
                };
                let module = line(&mut pos)?;
                let name = line(&mut pos)?;
                stack.push(global(&module, &name).map_or_else(|e| err(at, e), Ok)?);
            }
            0x93 => {
                let name = pop(&mut stack, at)?;
                let module = pop(&mut stack, at)?;
                let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                    return err(at, "STACK_GLOBAL of non-strings");
                };
                stack.push(global(module, name).map_or_else(|e| err(at, e), Ok)?);
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack, at)?;
                let f = pop(&mut stack, at)?;
                let Value::Tuple(args) = &args else { return err(at, "REDUCE with arguments that are not a tuple") };
                stack.push(call(&f, args).map_or_else(|e| err(at, e), Ok)?);
            }
            0x92 => {
                // NEWOBJ_EX: `cls.__new__(cls, *args, **kwargs)`.
                let _kwargs = pop(&mut stack, at)?;
                let args = pop(&mut stack, at)?;
                let f = pop(&mut stack, at)?;
                let Value::Tuple(args) = &args else { return err(at, "NEWOBJ_EX with arguments that are not a tuple") };
                stack.push(call(&f, args).map_or_else(|e| err(at, e), Ok)?);
            }
            0x8f => stack.push(Value::List(Rc::default())), // EMPTY_SET, as a list
            0x90 => {
                // ADDITEMS
                let items = pop_mark(&mut stack, &mut marks, at)?;
                match stack.last() {
                    Some(Value::List(l)) => l.borrow_mut().extend(items),
                    _ => return err(at, "ADDITEMS on something that is not a set"),
                }
            }
            0x91 => {
                // FROZENSET, as a list
                let items = pop_mark(&mut stack, &mut marks, at)?;
                stack.push(Value::List(Rc::new(RefCell::new(items))));
            }
            b'b' => {
                // BUILD: state set on an object (a state_dict's `_metadata`
                // is left; a numpy array's or dtype's state is kept as data).
                let state = pop(&mut stack, at)?;
                match stack.last() {
                    None => return err(at, "BUILD on an empty stack"),
                    Some(Value::Array(a)) => {
                        build_array(&mut a.borrow_mut(), &state).map_or_else(|e| err(at, e), Ok)?
                    }
                    Some(Value::DType(d)) => {
                        if let Value::Tuple(t) = &state {
                            if let Some(Value::Str(order)) = t.get(1) {
                                d.borrow_mut().1 = order.to_string();
                            }
                        }
                    }
                    Some(Value::Object(o)) => *o.state.borrow_mut() = Some(state),
                    Some(_) => {}
                }
            }
            b's' => {
                let v = pop(&mut stack, at)?;
                let k = pop(&mut stack, at)?;
                match stack.last() {
                    Some(Value::Dict(d)) => d.borrow_mut().push((k, v)),
                    Some(Value::Object(o)) => o.items.borrow_mut().push((k, v)),
                    _ => return err(at, "SETITEM on something that is not a dict"),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack, &mut marks, at)?;
                if items.len() % 2 != 0 {
                    return err(at, "SETITEMS with an odd number of items");
                }
                let mut pairs = Vec::with_capacity(items.len() / 2);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                match stack.last() {
                    Some(Value::Dict(d)) => d.borrow_mut().extend(pairs),
                    Some(Value::Object(o)) => o.items.borrow_mut().extend(pairs),
                    _ => return err(at, "SETITEMS on something that is not a dict"),
                }
            }
            b'a' | b'e' => {
                let items = if op == b'a' { vec![pop(&mut stack, at)?] } else { pop_mark(&mut stack, &mut marks, at)? };
                match stack.last() {
                    Some(Value::List(l)) => l.borrow_mut().extend(items),
                    Some(Value::Object(o)) => o.list.borrow_mut().extend(items),
                    _ => return err(at, "APPEND on something that is not a list"),
                }
            }
            b'q' | b'r' | 0x94 => {
                let key = match op {
                    b'q' => u32::from(take(&mut pos, 1)?[0]),
                    b'r' => u32le(take(&mut pos, 4)?),
                    _ => memo.len() as u32,
                };
                let top = stack.last().map_or_else(|| err(at, "PUT on an empty stack"), Ok)?;
                memo.insert(key, top.clone());
            }
            b'h' | b'j' => {
                let key = if op == b'h' { u32::from(take(&mut pos, 1)?[0]) } else { u32le(take(&mut pos, 4)?) };
                let v = memo.get(&key).map_or_else(|| err(at, format!("GET of memo {key}, never put")), Ok)?;
                stack.push(v.clone());
            }
            b'Q' => {
                let pid = pop(&mut stack, at)?;
                stack.push(persistent(&pid).map_or_else(|e| err(at, e), Ok)?);
            }
            b'0' => {
                pop(&mut stack, at)?;
            }
            b'1' => {
                pop_mark(&mut stack, &mut marks, at)?;
            }
            b'2' => {
                let top = stack.last().map_or_else(|| err(at, "DUP on an empty stack"), Ok)?.clone();
                stack.push(top);
            }
            other => return err(at, format!("opcode 0x{other:02x} is not one torch.save writes for tensors; refused")),
        }
    }
}

/// Modules whose globals rebuild tensors and storages: one of them this
/// unpickler does not know is refused, naming it, since the tensor it makes
/// would otherwise be missing from the checkpoint without a word.
const TENSOR_MODULES: [&str; 3] = ["torch._utils", "torch._tensor", "torch.storage"];

/// A global: one of the known ones ([`Global`]), or the inert
/// [`Value::Class`] of any other, except the tensor rebuilders it does not
/// know ([`TENSOR_MODULES`]), which are refused, naming them.
fn global(module: &str, name: &str) -> Result<Value, String> {
    let known = match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => Global::RebuildParameter,
        ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromType,
        ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => Global::NumpyReconstruct,
        ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => Global::NumpyScalar,
        ("numpy", "ndarray") => Global::NdArray,
        ("_codecs", "encode") => Global::Latin1,
        ("torch.jit._pickle", n) if n.starts_with("build_") || n == "restore_type_tag" => Global::JitValue,
        ("numpy", "dtype") => Global::NumpyDtype,
        ("torch._utils", "_rebuild_tensor_v3") => Global::RebuildTensorV3,
        ("torch.storage", "UntypedStorage") => Global::UntypedStorage,
        ("torch", s) if storage_dtype(s).is_some() => Global::Storage(storage_dtype(s).expect("checked")),
        ("torch", s) if dtype_named(s).is_some() => Global::TorchDtype(dtype_named(s).expect("checked")),
        ("torch", s) if s.ends_with("Storage") => {
            return Err(format!("`torch.{s}`: tensors of this dtype are not read"));
        }
        _ if TENSOR_MODULES.contains(&module) => {
            return Err(format!(
                "`{module}.{name}`: a kind of tensor or storage that is not read (tensors as \
                 `torch._utils._rebuild_tensor_v2` and `_v3` rebuild them are)"
            ))
        }
        _ => return Ok(Value::Class(format!("{module}.{name}").into())),
    };
    Ok(Value::Global(known))
}

/// The value of `key` in a dict's entries (text keys).
pub(crate) fn get<'a>(d: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    d.iter().find(|(k, _)| matches!(k, Value::Str(s) if &**s == key)).map(|(_, v)| v)
}

/// An integer that fits a `usize` (`what` names it in the error).
pub(crate) fn int(v: &Value, what: &str) -> Result<usize, String> {
    match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| format!("{what} is negative: {i}")),
        _ => Err(format!("{what} is not an integer")),
    }
}

/// A tuple of [`int`]s.
pub(crate) fn ints(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(t) => t.iter().map(|x| int(x, what)).collect(),
        _ => Err(format!("{what} is not a tuple")),
    }
}

/// A known global applied to its arguments, as data.
fn call(f: &Value, args: &[Value]) -> Result<Value, String> {
    match f {
        Value::Global(Global::OrderedDict) if args.is_empty() => Ok(Value::Dict(Rc::default())),
        Value::Global(Global::RebuildTensor) => {
            let [Value::Storage(storage), offset, shape, stride, ..] = args else {
                return Err("_rebuild_tensor_v2 without (storage, offset, size, stride)".into());
            };
            let dtype = storage.dtype.ok_or("_rebuild_tensor_v2 of an untyped storage")?;
            tensor(storage, dtype, offset, shape, stride)
        }
        Value::Global(Global::RebuildTensorV3) => {
            // (storage, offset, size, stride, requires_grad, hooks, dtype[, metadata])
            let [Value::Storage(storage), offset, shape, stride, _, _, dtype, ..] = args else {
                return Err("_rebuild_tensor_v3 without (storage, offset, size, stride, .., dtype)".into());
            };
            let dtype = match dtype {
                Value::Global(Global::TorchDtype(d)) => *d,
                Value::Class(name) => return Err(format!("a tensor of dtype `{name}`, which is not read")),
                _ => return Err("_rebuild_tensor_v3 whose dtype is not a torch dtype".into()),
            };
            tensor(storage, dtype, offset, shape, stride)
        }
        Value::Global(Global::RebuildParameter) => match args.first() {
            Some(t @ Value::Tensor(_)) => Ok(t.clone()),
            _ => Err("_rebuild_parameter of something not a tensor".into()),
        },
        Value::Global(Global::NumpyReconstruct) if matches!(args.first(), Some(Value::Global(Global::NdArray))) => {
            Ok(Value::Array(Rc::default()))
        }
        Value::Global(Global::NumpyDtype) => match args.first() {
            Some(Value::Str(code)) => Ok(Value::DType(Rc::new(RefCell::new((code.to_string(), "<".into()))))),
            _ => Err("numpy.dtype of something that is not a type code".into()),
        },
        Value::Global(Global::NumpyScalar) => Ok(numpy_scalar(args)),
        Value::Global(Global::Latin1) => match args {
            [Value::Str(text), Value::Str(codec)] if matches!(&**codec, "latin1" | "latin-1") => {
                let bytes: Option<Vec<u8>> = text.chars().map(|c| u8::try_from(c).ok()).collect();
                bytes.map(|b| Value::Bytes(b.into())).ok_or_else(|| "latin1 text with a character past 255".into())
            }
            _ => Err("_codecs.encode of something other than latin1 text".into()),
        },
        Value::Global(Global::JitValue) => {
            args.first().cloned().ok_or_else(|| "a TorchScript value without one".into())
        }
        Value::Global(Global::RebuildFromType) => match args {
            [f, _type, Value::Tuple(inner), ..] => call(f, inner),
            _ => Err("_rebuild_from_type_v2 without (function, type, arguments)".into()),
        },
        Value::Global(g) => Err(format!("{g:?} called with arguments it does not take")),
        // Never called: what the call would make, as data.
        Value::Class(class) => {
            Ok(Value::Object(Rc::new(Object { class: class.clone(), args: args.to_vec(), ..Object::default() })))
        }
        _ => Err("REDUCE of something that is neither a global nor a class".into()),
    }
}

/// A tensor: a view of `storage` with elements of `dtype`.
fn tensor(storage: &Rc<Storage>, dtype: Dtype, offset: &Value, shape: &Value, stride: &Value) -> Result<Value, String> {
    let (shape, stride) = (ints(shape, "a tensor size")?, ints(stride, "a tensor stride")?);
    if shape.len() != stride.len() {
        return Err(format!("a tensor of {} sizes but {} strides", shape.len(), stride.len()));
    }
    let offset = int(offset, "a storage offset")?;
    Ok(Value::Tensor(Rc::new(TensorRef { storage: storage.clone(), dtype, offset, shape, stride })))
}

/// A numpy scalar `scalar(dtype, bytes)` of a float or integer dtype as a
/// number (`best_acc = np.float64(0.93)` in a checkpoint); of any other
/// dtype, inert.
fn numpy_scalar(args: &[Value]) -> Value {
    if let [Value::DType(d), Value::Bytes(b)] = args {
        let (code, order) = d.borrow().clone();
        let le: Vec<u8> = if order == ">" { b.iter().rev().copied().collect() } else { b.to_vec() };
        let value = match code.as_str() {
            "f8" => <[u8; 8]>::try_from(&le[..]).ok().map(|a| Value::Float(f64::from_le_bytes(a))),
            "f4" => <[u8; 4]>::try_from(&le[..]).ok().map(|a| Value::Float(f32::from_le_bytes(a).into())),
            "i8" => <[u8; 8]>::try_from(&le[..]).ok().map(|a| Value::Int(i64::from_le_bytes(a))),
            "i4" => <[u8; 4]>::try_from(&le[..]).ok().map(|a| Value::Int(i32::from_le_bytes(a).into())),
            "b1" => <[u8; 1]>::try_from(&le[..]).ok().map(|[x]| Value::Bool(x != 0)),
            _ => None,
        };
        if let Some(v) = value {
            return v;
        }
    }
    Value::Object(Rc::new(Object {
        class: "numpy.core.multiarray.scalar".into(),
        args: args.to_vec(),
        ..Object::default()
    }))
}

/// A numpy array's state `(version, shape, dtype, is_fortran, data)`.
fn build_array(a: &mut ArrayState, state: &Value) -> Result<(), String> {
    let Value::Tuple(t) = state else { return Err("a numpy array state that is not a tuple".into()) };
    let [_, shape, Value::DType(d), fortran, data] = &t[..] else {
        return Err("a numpy array state that is not (version, shape, dtype, order, data)".into());
    };
    let (code, order) = d.borrow().clone();
    let code = if code.starts_with('O') { "O".to_string() } else { code };
    let order = if order == "=" { "<".to_string() } else { order };
    a.descr = Some(format!("{order}{code}"));
    a.shape = ints(shape, "an array shape")?;
    a.fortran = matches!(fortran, Value::Bool(true));
    a.data = Some(match data {
        Value::Bytes(b) => ArrayData::Bytes(b.clone()),
        Value::Str(s) => ArrayData::Bytes(s.as_bytes().into()),
        Value::List(l) => ArrayData::Objects(l.borrow().clone()),
        _ => return Err("a numpy array state without data".into()),
    });
    Ok(())
}

/// A storage from its persistent id `('storage', type, key, location, numel)`,
/// `type` a typed storage class or `UntypedStorage` (`numel` then in bytes).
fn persistent(pid: &Value) -> Result<Value, String> {
    let Value::Tuple(t) = pid else { return Err("a persistent id that is not a tuple".into()) };
    let [Value::Str(tag), Value::Global(class), Value::Str(key), _location, numel, ..] = &t[..] else {
        return Err("a persistent id that is not a tensor storage".into());
    };
    let dtype = match class {
        Global::Storage(dtype) => Some(*dtype),
        Global::UntypedStorage => None,
        _ => return Err("a persistent id that is not a tensor storage".into()),
    };
    if &**tag != "storage" {
        return Err("a persistent id that is not a tensor storage".into());
    }
    Ok(Value::Storage(Rc::new(Storage { key: key.to_string(), dtype, numel: int(numel, "a storage size")? })))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call of a global it does not know is never made: it is read as an
    /// inert object naming the function, its arguments kept as data.
    #[test]
    fn unknown_globals_are_inert_data_never_called() {
        // `cos\nsystem\n(S'touch /tmp/x'\ntR.` in protocol 2 form.
        let mut p = vec![0x80, 2];
        p.extend(b"cposix\nsystem\n");
        p.extend(b"X\x0c\x00\x00\x00touch /tmp/x");
        p.extend([0x85, b'R', b'.']);
        let Value::Object(ref o) = load(&p).unwrap() else { panic!("not an object") };
        assert_eq!(&*o.class, "posix.system");
        assert!(matches!(&o.args[..], [Value::Str(s)] if &**s == "touch /tmp/x"));
        let mut p = vec![0x80, 4, 0x8c, 8];
        p.extend(b"builtins");
        p.extend([0x8c, 4]);
        p.extend(b"eval");
        p.extend([0x93, b'.']);
        assert!(matches!(load(&p).unwrap(), Value::Class(ref c) if &**c == "builtins.eval"));
        // A tensor rebuilder it does not know is refused, naming it.
        let mut p = vec![0x80, 2];
        p.extend(b"ctorch._utils\n_rebuild_qtensor\n.");
        assert!(load(&p).unwrap_err().contains("`torch._utils._rebuild_qtensor`: a kind of tensor"));
        let mut p = vec![0x80, 2];
        p.extend(b"ctorch\nComplexDoubleStorage\n.");
        assert!(load(&p).unwrap_err().contains("`torch.ComplexDoubleStorage`: tensors of this dtype are not read"));
    }

    /// An object's state (`BUILD`) and items (`SETITEMS`, `APPENDS`) are
    /// kept; protocol 2's bytes (`_codecs.encode(text, "latin1")`) and numpy
    /// scalars read as the values they are.
    #[test]
    fn objects_keep_their_state_and_numpy_scalars_are_numbers() {
        // An object with state {"a": 1} and items {"k": 2}, as a dict
        // subclass pickles: GLOBAL, EMPTY_TUPLE, NEWOBJ, MARK, k, 2,
        // SETITEMS, EMPTY_DICT, a, 1, SETITEM, BUILD.
        let mut p = vec![0x80, 2];
        p.extend(b"c__main__\nAttributeDict\n)\x81(X\x01\x00\x00\x00kK\x02u}X\x01\x00\x00\x00aK\x01sb.");
        let Value::Object(ref o) = load(&p).unwrap() else { panic!("not an object") };
        assert_eq!(&*o.class, "__main__.AttributeDict");
        assert!(matches!(&o.items.borrow()[..], [(Value::Str(k), Value::Int(2))] if &**k == "k"));
        assert!(matches!(&*o.state.borrow(), Some(Value::Dict(d)) if d.borrow().len() == 1));
        // np.float64(71.25) as torch.save (protocol 2) writes it.
        let p = b"\x80\x02cnumpy._core.multiarray\nscalar\nq\x00cnumpy\ndtype\nq\x01X\x02\x00\x00\x00f8q\x02\x89\x88\x87q\x03R\
                  q\x04(K\x03X\x01\x00\x00\x00<q\x05NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x06bc_codecs\nencode\n\
                  q\x07X\t\x00\x00\x00\x00\x00\x00\x00\x00\xc3\x90Q@q\x08X\x06\x00\x00\x00latin1q\t\x86q\nRq\x0b\x86q\x0cRq\r.";
        assert!(matches!(load(p), Ok(Value::Float(f)) if f == 71.25), "{:?}", load(p));
    }

    #[test]
    fn deep_nesting_neither_overflows_nor_hangs() {
        // 200000 nested one-element tuples, then dropped.
        let mut p = vec![0x80, 2, b'N'];
        p.extend(std::iter::repeat_n(0x85u8, 200_000));
        p.push(b'.');
        let v = load(&p).unwrap();
        drop(v);
        // 200000 objects, each the state of the next (a module tree gone
        // wrong): read, then dropped without recursion.
        let mut p = vec![0x80, 2];
        p.extend(b"c__main__\nM\nq\x000N");
        for _ in 0..200_000 {
            p.extend(b"q\x010h\x00)Rh\x01b");
        }
        p.push(b'.');
        let v = load(&p).unwrap();
        assert!(matches!(&v, Value::Object(o) if o.state.borrow().is_some()));
        drop(v);
        // Marks nested beyond the bound are refused.
        let mut p = vec![0x80, 2];
        p.extend(std::iter::repeat_n(b'(', 5000));
        assert!(load(&p).unwrap_err().contains("deeper than"));
        // Memo references share, never copy: 60 doublings of a list stay small.
        let mut p = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..60 {
            p.extend([b'h', 0, b'a', b'q', 0]);
        }
        p.push(b'.');
        assert!(load(&p).is_ok());
    }

    /// `_rebuild_tensor_v3` (a tensor on an `UntypedStorage`, whose size is
    /// in bytes) keeps the dtype its last argument names; a dtype it does
    /// not read is refused, naming it.
    #[test]
    fn untyped_storages_give_their_tensors_the_named_dtype() {
        let v3 = |dtype: &str| {
            let x = |p: &mut Vec<u8>, s: &str| {
                p.push(b'X');
                p.extend((s.len() as u32).to_le_bytes());
                p.extend(s.as_bytes());
            };
            let mut p = vec![0x80, 2];
            p.extend(b"ctorch._utils\n_rebuild_tensor_v3\n((");
            x(&mut p, "storage");
            p.extend(b"ctorch.storage\nUntypedStorage\n");
            x(&mut p, "0");
            x(&mut p, "cpu");
            p.extend(b"K\x10tQK\x02K\x03\x85K\x01\x85\x89N");
            p.extend(format!("ctorch\n{dtype}\n").as_bytes());
            p.extend(b"tR.");
            load(&p)
        };
        let Value::Tensor(ref t) = v3("uint16").unwrap() else { panic!("not a tensor") };
        assert_eq!((t.dtype, t.offset, &t.shape[..], &t.stride[..]), (Dtype::U16, 2, &[3][..], &[1][..]));
        assert_eq!((t.storage.dtype, t.storage.numel, t.storage.bytes()), (None, 16, Some(16)));
        let Value::Tensor(ref t) = v3("float8_e4m3fn").unwrap() else { panic!("not a tensor") };
        assert_eq!(t.dtype, Dtype::F8_E4M3);
        assert_eq!(
            v3("complex128").unwrap_err(),
            "pickle byte 126: a tensor of dtype `torch.complex128`, which is not read"
        );
    }
}
