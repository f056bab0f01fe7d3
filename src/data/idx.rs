//! The IDX format of MNIST and Fashion-MNIST: a magic number giving the element type and rank,
//! big-endian dimensions, then the data. Gzipped files are recognised by their header.

use std::io::Read;
use std::path::Path;

use super::DataError;

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let p = path.display().to_string();
    let raw = crate::file::read(path)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::Format { path: p, what: format!("damaged gzip data: {e}") })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses unsigned-byte IDX data of the given rank: returns the dimensions and the data.
pub fn parse(bytes: &[u8], rank: usize, path: &str) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let bad = |what: String| DataError::Format { path: path.to_string(), what };
    if bytes.len() < 4 + 4 * rank {
        return Err(bad("too short for an IDX header (truncated file?)".into()));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("not an IDX file (bad magic number)".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!("element type 0x{:02x} is not unsigned bytes", bytes[2])));
    }
    if bytes[3] as usize != rank {
        return Err(bad(format!("rank {} where {rank} was expected", bytes[3])));
    }
    let dims: Vec<usize> =
        (0..rank).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    let n: usize = dims.iter().product();
    let data = &bytes[4 + 4 * rank..];
    if data.len() != n {
        return Err(bad(format!(
            "header promises {n} bytes of data for {dims:?}, the file holds {} (truncated file?)",
            data.len()
        )));
    }
    Ok((dims, data.to_vec()))
}

/// Reads an images file (`idx3-ubyte`): the pixels and `[h, w]`.
pub fn read_images(path: &Path) -> Result<(Vec<u8>, [usize; 2]), DataError> {
    let (dims, data) = parse(&read_maybe_gz(path)?, 3, &path.display().to_string())?;
    Ok((data, [dims[1], dims[2]]))
}

/// Reads a labels file (`idx1-ubyte`).
pub fn read_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    Ok(parse(&read_maybe_gz(path)?, 1, &path.display().to_string())?.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let mut f = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
        f.extend([1, 2, 3, 4]);
        let (dims, data) = parse(&f, 3, "x").unwrap();
        assert_eq!((dims, data), (vec![2, 1, 2], vec![1, 2, 3, 4]));
        assert!(parse(&f[..18], 3, "x").unwrap_err().to_string().contains("truncated"));
        assert!(parse(&f, 1, "x").is_err());
        let mut g = f.clone();
        g[2] = 0x0d;
        assert!(parse(&g, 3, "x").unwrap_err().to_string().contains("unsigned bytes"));
    }
}
