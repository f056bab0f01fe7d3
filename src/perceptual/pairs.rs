//! What `vgg lpips` compares: two image files, or the files of two folders paired by name, read as
//! `lpips.im2tensor(lpips.load_image(path))` does (RGB, `pixel / 127.5 - 1`).

use std::path::{Path, PathBuf};

use super::PerceptualError;
use crate::image::{self, Filter};

/// Two images to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The first image (the one gradients are taken with respect to).
    pub a: PathBuf,
    /// The image it is compared with.
    pub b: PathBuf,
}

fn is_image(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        let e = e.to_ascii_lowercase();
        ["png", "jpg", "jpeg"].contains(&e.as_str())
    })
}

/// `a` and `b` as one pair (two files), or (two folders) each image file of `a` with the file of
/// the same name in `b`, sorted by name. A file of `a` without a partner in `b`, or the other way
/// round, is an error naming it; so are a file and a folder, and a folder without images.
pub fn pairs(a: &Path, b: &Path) -> Result<Vec<Pair>, PerceptualError> {
    match (a.is_dir(), b.is_dir()) {
        (false, false) => Ok(vec![Pair { a: a.to_path_buf(), b: b.to_path_buf() }]),
        (true, true) => {
            let list = |dir: &Path| -> Result<Vec<PathBuf>, PerceptualError> {
                let entries = std::fs::read_dir(dir)
                    .map_err(|e| PerceptualError::Input(format!("cannot list {}: {e}", dir.display())))?;
                let mut names: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file() && is_image(p))
                    .filter_map(|p| p.file_name().map(PathBuf::from))
                    .collect();
                names.sort();
                Ok(names)
            };
            let (in_a, in_b) = (list(a)?, list(b)?);
            if in_a.is_empty() {
                return Err(PerceptualError::Input(format!("{} holds no PNG or JPEG files", a.display())));
            }
            for name in &in_b {
                if !in_a.contains(name) {
                    return Err(PerceptualError::Input(format!(
                        "{} has no partner {}",
                        b.join(name).display(),
                        a.join(name).display()
                    )));
                }
            }
            in_a.iter()
                .map(|name| {
                    let partner = b.join(name);
                    if partner.is_file() {
                        Ok(Pair { a: a.join(name), b: partner })
                    } else {
                        Err(PerceptualError::Input(format!(
                            "{} has no partner {}",
                            a.join(name).display(),
                            partner.display()
                        )))
                    }
                })
                .collect()
        }
        _ => Err(PerceptualError::Input(format!(
            "compare two files or two folders, not {} and {}",
            a.display(),
            b.display()
        ))),
    }
}

/// An image as LPIPS takes it: `[3, h, w]` in [-1, 1], optionally resized to `size` x `size`
/// first (PIL's bilinear filter, as `Image.resize((size, size), Image.BILINEAR)`).
pub fn load(path: &Path, size: Option<usize>) -> Result<(Vec<f32>, [usize; 2]), PerceptualError> {
    let img = image::open(path).map_err(|e| PerceptualError::Input(e.to_string()))?;
    let img = match size {
        Some(s) => image::resize(&img, s, s, Filter::Bilinear),
        None => img,
    };
    let (h, w) = (img.height, img.width);
    let mut out = vec![0f32; 3 * h * w];
    for (p, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * h * w + p] = px[c] as f32 / 127.5 - 1.0;
        }
    }
    Ok((out, [h, w]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vgg-pairs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("a")).unwrap();
        std::fs::create_dir_all(d.join("b")).unwrap();
        d
    }

    #[test]
    fn folders_pair_by_name_and_a_missing_partner_is_named() {
        let d = scratch("names");
        for f in ["a/1.png", "a/2.jpg", "b/1.png", "b/2.jpg", "a/notes.txt"] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        let got = pairs(&d.join("a"), &d.join("b")).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], Pair { a: d.join("a/2.jpg"), b: d.join("b/2.jpg") });
        std::fs::write(d.join("a/3.png"), b"x").unwrap();
        let err = pairs(&d.join("a"), &d.join("b")).unwrap_err().to_string();
        assert!(err.contains("3.png") && err.contains("no partner"), "{err}");
        std::fs::write(d.join("b/3.png"), b"x").unwrap();
        std::fs::write(d.join("b/4.png"), b"x").unwrap();
        let err = pairs(&d.join("a"), &d.join("b")).unwrap_err().to_string();
        assert!(err.contains("4.png"), "{err}");
        let err = pairs(&d.join("a"), &d.join("b/1.png")).unwrap_err().to_string();
        assert!(err.contains("two files or two folders"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
