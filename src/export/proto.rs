//! The few protocol-buffer encodings an ONNX file needs, written by hand: varints, fixed 32-bit
//! floats and length-delimited fields. Repeated integers are written unpacked, which every
//! protobuf parser accepts for the proto2 syntax ONNX uses.

/// A message under construction.
#[derive(Debug, Default, Clone)]
pub struct Msg(pub Vec<u8>);

fn varint(out: &mut Vec<u8>, mut v: u64) {
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
        varint(&mut self.0, ((field as u64) << 3) | wire as u64);
    }

    /// An integer field (int32, int64 or enum; negative values as ten-byte varints).
    pub fn int(mut self, field: u32, v: i64) -> Self {
        self.tag(field, 0);
        varint(&mut self.0, v as u64);
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
        varint(&mut self.0, b.len() as u64);
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
