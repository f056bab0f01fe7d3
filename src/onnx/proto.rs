//! The few protocol-buffer encodings an ONNX file (and, read only, a Caffe model) needs, read and
//! written by hand: varints, fixed
//! 32-bit floats and length-delimited fields. Repeated integers are written unpacked, which every
//! protobuf parser accepts for the proto2 syntax ONNX uses, and read in both forms.

// ---------------------------------------------------------------------------------------------
// Writing.

/// A message under construction.
#[derive(Debug, Default, Clone)]
pub struct Msg(pub Vec<u8>);

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Msg {
    /// An empty message.
    pub fn new() -> Self {
        Self::default()
    }

    fn tag(&mut self, field: u32, wire: u8) {
        put_varint(&mut self.0, ((field as u64) << 3) | wire as u64);
    }

    /// An integer field (int32, int64 or enum; negative values as ten-byte varints).
    pub fn int(mut self, field: u32, v: i64) -> Self {
        self.tag(field, 0);
        put_varint(&mut self.0, v as u64);
        self
    }

    /// Repeated integers, one field each.
    pub fn ints(mut self, field: u32, vs: &[i64]) -> Self {
        for &v in vs {
            self = self.int(field, v);
        }
        self
    }

    /// A float field.
    pub fn float(mut self, field: u32, v: f32) -> Self {
        self.tag(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A bytes or string field.
    pub fn bytes(mut self, field: u32, b: &[u8]) -> Self {
        self.tag(field, 2);
        put_varint(&mut self.0, b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    /// A string field.
    pub fn str(self, field: u32, s: &str) -> Self {
        self.bytes(field, s.as_bytes())
    }

    /// An embedded message.
    pub fn msg(self, field: u32, m: &Msg) -> Self {
        self.bytes(field, &m.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Reading: enough of ModelProto, GraphProto, NodeProto, AttributeProto and TensorProto.

// TensorProto.

#[derive(Debug, Clone, Copy)]
pub(crate) enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
    Fixed64,
}

pub(crate) fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The fields of one message, in order.
pub(crate) fn fields(b: &[u8]) -> Option<Vec<(u32, Field<'_>)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let key = varint(b, &mut pos)?;
        let (num, wire) = ((key >> 3) as u32, key & 7);
        let f = match wire {
            0 => Field::Varint(varint(b, &mut pos)?),
            1 => {
                b.get(pos..pos + 8)?;
                pos += 8;
                Field::Fixed64
            }
            2 => {
                let len = varint(b, &mut pos)? as usize;
                let s = b.get(pos..pos.checked_add(len)?)?;
                pos += len;
                Field::Bytes(s)
            }
            5 => {
                let v = u32::from_le_bytes(b.get(pos..pos + 4)?.try_into().ok()?);
                pos += 4;
                Field::Fixed32(v)
            }
            _ => return None,
        };
        out.push((num, f));
    }
    Some(out)
}

pub(crate) fn bytes_of<'a, 'b>(fs: &'b [(u32, Field<'a>)], num: u32) -> impl Iterator<Item = &'a [u8]> + 'b {
    fs.iter().filter(move |(n, _)| *n == num).filter_map(|(_, f)| if let Field::Bytes(b) = f { Some(*b) } else { None })
}

pub(crate) fn string(fs: &[(u32, Field<'_>)], num: u32) -> String {
    bytes_of(fs, num).next().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
}

pub(crate) fn strings(fs: &[(u32, Field<'_>)], num: u32) -> Vec<String> {
    bytes_of(fs, num).map(|b| String::from_utf8_lossy(b).into_owned()).collect()
}

/// Repeated int64 field, packed or not.
pub(crate) fn ints(fs: &[(u32, Field<'_>)], num: u32) -> Option<Vec<i64>> {
    let mut out = Vec::new();
    for (n, f) in fs {
        if *n != num {
            continue;
        }
        match f {
            Field::Varint(v) => out.push(*v as i64),
            Field::Bytes(b) => {
                let mut pos = 0;
                while pos < b.len() {
                    out.push(varint(b, &mut pos)? as i64);
                }
            }
            _ => return None,
        }
    }
    Some(out)
}

pub(crate) fn int(fs: &[(u32, Field<'_>)], num: u32) -> Option<i64> {
    fs.iter()
        .rev()
        .find_map(|(n, f)| if *n == num { if let Field::Varint(v) = f { Some(*v as i64) } else { None } } else { None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_the_protobuf_documentation_shows() {
        // "150 in field 1" is 08 96 01; "testing" in field 2 is 12 07 74 65 73 74 69 6e 67.
        assert_eq!(Msg::new().int(1, 150).0, vec![0x08, 0x96, 0x01]);
        assert_eq!(Msg::new().str(2, "testing").0, b"\x12\x07testing".to_vec());
        assert_eq!(Msg::new().int(1, -1).0.len(), 11);
        assert_eq!(Msg::new().float(3, 1.0).0, vec![0x1d, 0, 0, 0x80, 0x3f]);
    }
}
