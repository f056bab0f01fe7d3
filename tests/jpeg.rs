//! JPEG decoding exactly as PIL does it (torchvision's photos go through PIL): the files in
//! `tests/fixtures/jpeg/` were written by Pillow 13 (`bench/jpeg_pil.py`), each `NAME.jpg` with
//! `NAME.pil.png` = `Image.open("NAME.jpg").convert("RGB")` saved losslessly:
//!
//! ```python
//! img.save("s420.jpg", quality=85, subsampling=2)      # also 4:2:2, 4:4:4, progressive=True,
//! img.convert("L").save("gray.jpg"); img.convert("CMYK").save("cmyk.jpg")   # grayscale, CMYK,
//! img.save("exif_rotated.jpg", exif=orientation_6)     # an EXIF rotation (PIL's open ignores it)
//! Image.open("s420.jpg").convert("RGB").save("s420.pil.png")
//! ```

use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg")
}

#[test]
fn every_kind_of_jpeg_decodes_to_pils_exact_bytes() {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".jpg").map(str::to_string))
        .collect();
    names.sort();
    assert_eq!(names.len(), 8, "{names:?}");
    for name in names {
        let ours = vgg::image::open(&dir().join(format!("{name}.jpg"))).unwrap();
        let pil = vgg::image::open(&dir().join(format!("{name}.pil.png"))).unwrap();
        assert_eq!((ours.width, ours.height), (pil.width, pil.height), "{name}");
        let differ = ours.data.iter().zip(&pil.data).filter(|(a, b)| a != b).count();
        let worst = ours.data.iter().zip(&pil.data).map(|(&a, &b)| a.abs_diff(b)).max().unwrap_or(0);
        println!(
            "{name}: {}x{}, {differ} of {} values differ from PIL (at most {worst})",
            ours.width,
            ours.height,
            ours.data.len()
        );
        assert_eq!(differ, 0, "{name}: {differ} values differ from PIL's, by up to {worst}");
    }
}

#[test]
fn damaged_jpegs_are_errors_naming_the_file_not_panics() {
    let bytes = std::fs::read(dir().join("progressive.jpg")).unwrap();
    for cut in (3..bytes.len() - 2).step_by(37) {
        // libjpeg pads a truncated scan with gray and only warns; PIL refuses the file, and so do we.
        let r = std::panic::catch_unwind(|| vgg::image::decode(&bytes[..cut], "cut.jpg"));
        assert!(r.is_ok(), "panic at cut {cut}");
        let e = r.unwrap().expect_err("a truncated JPEG is an error");
        assert!(e.to_string().contains("cut.jpg"), "{e}");
    }
    let mut state = 0x94d049bb133111ebu64;
    for _ in 0..300 {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let at = 3 + (state >> 33) as usize % (bytes.len() - 3);
        let mut bad = bytes.clone();
        bad[at] = (state >> 9) as u8;
        let r = std::panic::catch_unwind(|| vgg::image::decode(&bad, "flipped.jpg"));
        assert!(r.is_ok(), "panic with byte {at} changed");
    }
}
