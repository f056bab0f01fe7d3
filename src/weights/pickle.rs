//! A data-only reader for the pickle streams inside PyTorch `.pth` files.
//!
//! Nothing is ever executed: `GLOBAL`/`REDUCE` build inert [`Value::Object`]s, except for the few
//! callables PyTorch uses to rebuild tensors and ordered dicts, which are recognised by name and
//! turned into data. Tensor storages come back as references that the caller resolves.

use std::collections::HashMap;

use super::Dtype;

/// PyTorch storages' element types, by the class names it pickles.
impl Dtype {
    /// From the storage class name PyTorch pickles (`FloatStorage`, …).
    pub fn from_storage_name(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "DoubleStorage" => Self::F64,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }
}

/// A storage named by a persistent id.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    /// The key of its data (a file name in zip archives, a root key in legacy files).
    pub key: String,
    /// Element type.
    pub dtype: Dtype,
    /// Declared number of elements.
    pub numel: usize,
    /// Legacy files can name a view into another storage: (offset in elements).
    pub view_offset: usize,
}

/// A tensor as `_rebuild_tensor_v2` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// Where the data lives.
    pub storage: StorageRef,
    /// Offset into the storage, in elements.
    pub offset: usize,
    /// Shape.
    pub shape: Vec<usize>,
    /// Strides, in elements.
    pub stride: Vec<usize>,
}

/// A decoded pickle value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`
    None,
    /// `bool`
    Bool(bool),
    /// `int` that fits in 64 bits
    Int(i64),
    /// `int` that does not
    BigInt(Vec<u8>),
    /// `float`
    Float(f64),
    /// `str`
    Str(String),
    /// `bytes`
    Bytes(Vec<u8>),
    /// `list`
    List(Vec<Value>),
    /// `tuple`
    Tuple(Vec<Value>),
    /// `dict` and `OrderedDict`, in insertion order
    Dict(Vec<(Value, Value)>),
    /// A reference to a global, never imported
    Global(String, String),
    /// The inert result of calling something we do not know
    Object {
        /// What would have been called.
        callable: Box<Value>,
        /// Its arguments.
        args: Box<Value>,
        /// State given by `BUILD`.
        state: Option<Box<Value>>,
    },
    /// A storage
    Storage(StorageRef),
    /// A tensor
    Tensor(TensorRef),
}

impl Value {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        if let Value::Str(s) = self { Some(s) } else { None }
    }
    fn as_usize(&self) -> Option<usize> {
        match self {
            Value::Int(i) if *i >= 0 => Some(*i as usize),
            _ => None,
        }
    }
    fn as_usizes(&self) -> Option<Vec<usize>> {
        match self {
            Value::Tuple(v) | Value::List(v) => v.iter().map(|x| x.as_usize()).collect(),
            _ => None,
        }
    }
}

/// Why a pickle stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    /// The stream ended early.
    #[error("pickle data ends early (truncated file?)")]
    Truncated,
    /// An opcode this reader does not support.
    #[error("unsupported pickle opcode 0x{0:02x} at byte {1}")]
    Opcode(u8, usize),
    /// The stream is malformed.
    #[error("malformed pickle data at byte {at}: {what}")]
    Malformed {
        /// Byte offset.
        at: usize,
        /// What went wrong.
        what: String,
    },
}

/// Reads one pickle from `data` starting at `pos`; returns the value and the position after STOP.
pub fn read(data: &[u8], pos: usize) -> Result<(Value, usize), PickleError> {
    let mut m = Machine { data, pos, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() };
    let v = m.run()?;
    Ok((v, m.pos))
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl Machine<'_> {
    fn bad(&self, what: impl Into<String>) -> PickleError {
        PickleError::Malformed { at: self.pos, what: what.into() }
    }
    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        let end = self.pos.checked_add(n).ok_or(PickleError::Truncated)?;
        if end > self.data.len() {
            return Err(PickleError::Truncated);
        }
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or(PickleError::Truncated)?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
    fn utf8(&mut self, n: usize) -> Result<Value, PickleError> {
        let b = self.take(n)?.to_vec();
        String::from_utf8(b).map(Value::Str).map_err(|_| self.bad("invalid UTF-8 in string"))
    }
    fn pop(&mut self) -> Result<Value, PickleError> {
        self.stack.pop().ok_or_else(|| self.bad("stack underflow"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let m = self.marks.pop().ok_or_else(|| self.bad("no MARK"))?;
        if m > self.stack.len() {
            return Err(self.bad("MARK above stack"));
        }
        Ok(self.stack.split_off(m))
    }
    fn top(&mut self) -> Result<&mut Value, PickleError> {
        let at = self.pos;
        self.stack.last_mut().ok_or(PickleError::Malformed { at, what: "empty stack".into() })
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.u64()?; // FRAME: framing is only a read-ahead hint
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32 as i64;
                    self.stack.push(Value::Int(v))
                }
                b'K' => {
                    let v = self.u8()? as i64;
                    self.stack.push(Value::Int(v))
                }
                b'M' => {
                    let v = self.u16()? as i64;
                    self.stack.push(Value::Int(v))
                }
                0x8a | 0x8b => {
                    // LONG1 / LONG4: little-endian two's complement
                    let n = if op == 0x8a { self.u8()? as usize } else { self.u32()? as usize };
                    let b = self.take(n)?.to_vec();
                    self.stack.push(long_value(&b));
                }
                b'I' => {
                    let l = self.line()?;
                    let v = match l.as_str() {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        s => Value::Int(s.parse().map_err(|_| self.bad("bad INT"))?),
                    };
                    self.stack.push(v)
                }
                b'L' => {
                    let l = self.line()?;
                    let v = l.trim_end_matches('L').parse().map_err(|_| self.bad("bad LONG"))?;
                    self.stack.push(Value::Int(v))
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.stack.push(Value::Float(v))
                }
                b'F' => {
                    let l = self.line()?;
                    let v = l.parse().map_err(|_| self.bad("bad FLOAT"))?;
                    self.stack.push(Value::Float(v))
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v)
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v)
                }
                0x8d => {
                    let n = self.u64()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v)
                }
                b'V' => {
                    let l = self.line()?;
                    self.stack.push(Value::Str(l))
                }
                b'T' | b'U' | b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'T' | b'B' => self.u32()? as usize,
                        0x8e => self.u64()? as usize,
                        _ => self.u8()? as usize,
                    };
                    let b = self.take(n)?.to_vec();
                    // Python 2 `str` (BINSTRING) holds text in practice; keep it as a string.
                    let v = if matches!(op, b'T' | b'U') {
                        Value::Str(String::from_utf8_lossy(&b).into_owned())
                    } else {
                        Value::Bytes(b)
                    };
                    self.stack.push(v)
                }
                b'S' => {
                    let l = self.line()?;
                    let s = l.trim_matches(|c| c == '\'' || c == '"').to_string();
                    self.stack.push(Value::Str(s))
                }
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                0x8f => self.stack.push(Value::List(Vec::new())), // EMPTY_SET, kept as a list
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items))
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items)) // FROZENSET
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items).ok_or_else(|| self.bad("odd DICT"))?;
                    self.stack.push(Value::Dict(pairs))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.bad("stack underflow in TUPLEn"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items))
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        _ => return Err(self.bad("APPEND to a non-list")),
                    }
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err(PickleError::Malformed { at, what: "APPENDS to a non-list".into() }),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.setitems(vec![(k, v)], at)?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let p = pairs(items).ok_or_else(|| self.bad("odd SETITEMS"))?;
                    self.setitems(p, at)?;
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v)
                }
                b'p' => {
                    let l = self.line()?;
                    let i = l.parse().map_err(|_| self.bad("bad PUT"))?;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'r' => {
                    let i = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'g' | b'h' | b'j' => {
                    let i = match op {
                        b'g' => self.line()?.parse().map_err(|_| self.bad("bad GET"))?,
                        b'h' => self.u8()? as u32,
                        _ => self.u32()?,
                    };
                    let v = self.memo.get(&i).cloned().ok_or_else(|| self.bad(format!("memo {i} unset")))?;
                    self.stack.push(v)
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(module, name))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => return Err(self.bad("STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.stack.push(v)
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.stack.push(v)
                }
                b'b' => {
                    let state = self.pop()?;
                    // An OrderedDict's state is its `_metadata` attribute; a tensor's is its Python
                    // attributes. Neither carries weights, so only inert objects keep theirs.
                    if let Value::Object { state: s, .. } = self.top()? {
                        *s = Some(Box::new(state));
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.stack.push(v)
                }
                b'P' => {
                    let l = self.line()?;
                    let v = self.persistent(Value::Str(l))?;
                    self.stack.push(v)
                }
                _ => return Err(PickleError::Opcode(op, at)),
            }
        }
    }

    fn setitems(&mut self, items: Vec<(Value, Value)>, at: usize) -> Result<(), PickleError> {
        match self.top()? {
            Value::Dict(d) => {
                d.extend(items);
                Ok(())
            }
            _ => Err(PickleError::Malformed { at, what: "SETITEM on a non-dict".into() }),
        }
    }

    /// Persistent ids name storages: `('storage', StorageType, key, location, numel[, view])`.
    fn persistent(&self, pid: Value) -> Result<Value, PickleError> {
        let Value::Tuple(t) = pid else { return Err(self.bad("persistent id is not a tuple")) };
        if t.first().and_then(Value::as_str) != Some("storage") || t.len() < 5 {
            return Err(self.bad("persistent id is not a storage"));
        }
        let dtype = match &t[1] {
            Value::Global(_, name) => {
                Dtype::from_storage_name(name).ok_or_else(|| self.bad(format!("unsupported storage type {name}")))?
            }
            _ => return Err(self.bad("storage type is not a global")),
        };
        let key = match &t[2] {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            _ => return Err(self.bad("storage key is not a string")),
        };
        let numel = t[4].as_usize().ok_or_else(|| self.bad("storage size is not an integer"))?;
        // Legacy files may describe a view: (view_key, offset, view_size).
        let view_offset = match t.get(5) {
            Some(Value::Tuple(v)) if v.len() == 3 => v[1].as_usize().unwrap_or(0),
            _ => 0,
        };
        Ok(Value::Storage(StorageRef { key, dtype, numel, view_offset }))
    }

    fn reduce(&self, callable: Value, args: Value) -> Result<Value, PickleError> {
        if let Value::Global(module, name) = &callable {
            match (module.as_str(), name.as_str()) {
                ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                    let Value::Tuple(a) = &args else { return Err(self.bad("tensor args are not a tuple")) };
                    if a.len() < 4 {
                        return Err(self.bad("too few tensor args"));
                    }
                    let Value::Storage(storage) = &a[0] else {
                        return Err(self.bad("tensor without a storage"));
                    };
                    let offset = a[1].as_usize().ok_or_else(|| self.bad("bad storage offset"))?;
                    let shape = a[2].as_usizes().ok_or_else(|| self.bad("bad tensor size"))?;
                    let stride = a[3].as_usizes().ok_or_else(|| self.bad("bad tensor stride"))?;
                    if shape.len() != stride.len() {
                        return Err(self.bad("size and stride of different lengths"));
                    }
                    return Ok(Value::Tensor(TensorRef { storage: storage.clone(), offset, shape, stride }));
                }
                ("torch._utils", "_rebuild_parameter") | ("torch._utils", "_rebuild_parameter_with_state") => {
                    if let Value::Tuple(a) = &args
                        && let Some(t @ Value::Tensor(_)) = a.first()
                    {
                        return Ok(t.clone());
                    }
                    return Err(self.bad("parameter without a tensor"));
                }
                ("collections", "OrderedDict") | ("builtins", "dict") | ("__builtin__", "dict") => {
                    return Ok(Value::Dict(Vec::new()));
                }
                _ => {}
            }
        }
        Ok(Value::Object { callable: Box::new(callable), args: Box::new(args), state: None })
    }
}

fn pairs(items: Vec<Value>) -> Option<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Some(out)
}

fn long_value(b: &[u8]) -> Value {
    if b.is_empty() {
        return Value::Int(0);
    }
    if b.len() <= 8 {
        let neg = b[b.len() - 1] & 0x80 != 0;
        let mut buf = if neg { [0xffu8; 8] } else { [0u8; 8] };
        buf[..b.len()].copy_from_slice(b);
        Value::Int(i64::from_le_bytes(buf))
    } else {
        Value::BigInt(b.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_small_protocol_2_dict() {
        // pickle.dumps({'a': 1, 'b': [2.5, None]}, protocol=2)
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02]q\x03(G@\x04\x00\x00\x00\x00\x00\x00Neu.";
        let (v, end) = read(data, 0).unwrap();
        assert_eq!(end, data.len());
        assert_eq!(
            v,
            Value::Dict(vec![
                (Value::Str("a".into()), Value::Int(1)),
                (Value::Str("b".into()), Value::List(vec![Value::Float(2.5), Value::None])),
            ])
        );
    }

    #[test]
    fn unknown_callables_are_never_called() {
        // pickle.dumps of an object whose reduce is os.system('x'), protocol 2
        let data = b"\x80\x02cos\nsystem\nq\x00X\x01\x00\x00\x00xq\x01\x85q\x02Rq\x03.";
        let (v, _) = read(data, 0).unwrap();
        assert!(matches!(v, Value::Object { .. }));
    }

    #[test]
    fn truncated_data_is_an_error() {
        let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00a";
        assert!(matches!(read(data, 0), Err(PickleError::Truncated)));
    }

    #[test]
    fn long1_decodes_the_legacy_magic_number() {
        // LONG1 of 0x1950a86a20f9469cfc6c (torch's legacy magic) is wider than i64.
        let v = long_value(&[0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]);
        assert!(matches!(v, Value::BigInt(_)));
        assert_eq!(long_value(&[0xff]), Value::Int(-1));
        assert_eq!(long_value(&[0xe9, 0x03]), Value::Int(1001));
    }
}
