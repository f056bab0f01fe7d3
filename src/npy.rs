//! NumPy `.npy` arrays (version 1–3, little-endian, C order): read as f64, write f32.

use std::path::Path;

/// An array read from a `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Shape.
    pub shape: Vec<usize>,
    /// Values, widened to f64.
    pub data: Vec<f64>,
}

/// A file that could not be read, or is damaged or of another format.
pub type NpyError = crate::file::FileError;

/// Reads a `.npy` file of f32, f64, i64 or i32 values.
pub fn read(path: &Path) -> Result<Array, NpyError> {
    let p = path.display().to_string();
    let b = crate::file::read(path)?;
    parse(&b).map_err(|what| NpyError::Format { path: p, what })
}

/// Parses `.npy` bytes.
pub fn parse(b: &[u8]) -> Result<Array, String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not a .npy file".into());
    }
    let (hlen, start) = if b[6] == 1 {
        (u16::from_le_bytes([b[8], b[9]]) as usize, 10)
    } else {
        if b.len() < 12 {
            return Err("truncated header".into());
        }
        (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12)
    };
    let header =
        std::str::from_utf8(b.get(start..start + hlen).ok_or("truncated header")?).map_err(|e| e.to_string())?;
    let field = |name: &str| -> Option<&str> {
        let i = header.find(&format!("'{name}'"))?;
        Some(header[i + name.len() + 2..].trim_start_matches([':', ' ']))
    };
    let descr = field("descr").ok_or("no descr")?;
    let descr = &descr[1..descr[1..].find('\'').ok_or("bad descr")? + 1];
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err("Fortran order is not supported".into());
    }
    let shape_s = field("shape").ok_or("no shape")?;
    let shape_s = &shape_s[1..shape_s.find(')').ok_or("bad shape")?];
    let shape: Vec<usize> = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| "bad shape"))
        .collect::<Result<_, _>>()?;
    let n: usize = shape.iter().product();
    let body = &b[start + hlen..];
    let (size, conv): (usize, fn(&[u8]) -> f64) = match descr {
        "<f8" => (8, |c| f64::from_le_bytes(c.try_into().unwrap())),
        "<f4" => (4, |c| f32::from_le_bytes(c.try_into().unwrap()) as f64),
        "<i8" => (8, |c| i64::from_le_bytes(c.try_into().unwrap()) as f64),
        "<i4" => (4, |c| i32::from_le_bytes(c.try_into().unwrap()) as f64),
        "|u1" => (1, |c| c[0] as f64),
        other => return Err(format!("unsupported dtype {other}")),
    };
    if body.len() < n * size {
        return Err(format!("expected {} bytes of data, found {}", n * size, body.len()));
    }
    Ok(Array { shape, data: body[..n * size].chunks_exact(size).map(conv).collect() })
}

/// Encodes f32 values as `.npy` bytes.
pub fn to_bytes(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_s}, }}");
    // Pad so that the data starts on a 64-byte boundary, ending with a newline.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_f32() {
        let b = super::to_bytes(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, -6.5]);
        assert_eq!(b.len() % 64, 24, "data starts on a 64-byte boundary");
        let a = super::parse(&b).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, -6.5]);
    }
}
