//! Image decoding and torchvision's preprocessing, reproduced to the 8-bit step.
//!
//! [`Preprocess::imagenet`] is `VGG16_Weights.IMAGENET1K_V1.transforms()`: PIL's `convert("RGB")`,
//! resize of the shorter side to 256 with PIL's antialiased bilinear filter (its fixed-point
//! arithmetic included), center crop 224, scale to [0, 1], normalise with ImageNet's mean and std.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};

/// Why an image could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be read.
    #[error("{path}: {err}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        err: std::io::Error,
    },
    /// The bytes are not an image we can decode.
    #[error("{path}: cannot decode image: {what}")]
    Decode {
        /// The file.
        path: String,
        /// The decoder's message.
        what: String,
    },
    /// A size that makes no sense.
    #[error("invalid preprocessing: {0}")]
    Invalid(String),
}

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb8 {
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// `height * width * 3` bytes.
    pub data: Vec<u8>,
}

/// The most pixels an image may have: PIL's `Image.MAX_IMAGE_PIXELS` (89,478,485, about
/// 9459x9459), past which PIL warns of a decompression bomb. The CLI and the server refuse larger
/// images from their headers, before decoding anything.
pub const MAX_PIXELS: u64 = 89_478_485;

/// Decodes PNG or JPEG bytes to RGB as PIL's `convert("RGB")` does: grayscale is replicated, alpha
/// is dropped (not blended), palettes are expanded; JPEG through libjpeg-turbo's code as PIL does
/// ([`decode_jpeg`]). Images over [`MAX_PIXELS`] are refused.
pub fn decode(bytes: &[u8], name: &str) -> Result<Rgb8, ImageError> {
    if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        return decode_jpeg(bytes, name);
    }
    let bad = |what: String| ImageError::Decode { path: name.to_string(), what };
    let reader =
        image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| bad(e.to_string()))?;
    let (w, h) = reader.into_dimensions().map_err(|e| bad(e.to_string()))?;
    if w as u64 * h as u64 > MAX_PIXELS {
        return Err(bad(format!("{w}x{h} is over the limit of {MAX_PIXELS} pixels (a decompression bomb?)")));
    }
    // The decoder's own allocations stay within the image crate's default limit (512 MiB).
    let reader =
        image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| bad(e.to_string()))?;
    let img = reader.decode().map_err(|e| bad(e.to_string()))?;
    let rgb = img.to_rgb8();
    Ok(Rgb8 { width: rgb.width() as usize, height: rgb.height() as usize, data: rgb.into_raw() })
}

/// Decodes a JPEG as PIL does (`Image.open(f).convert("RGB")`, hence torchvision's photos): the
/// libjpeg API of libjpeg-turbo (here its mozjpeg fork's decoder, built from source) with its
/// defaults — the accurate integer IDCT and fancy (triangular) chroma upsampling — so every
/// subsampling, progressive and arithmetic-free baseline file gives PIL's bytes. Grayscale is
/// replicated; CMYK is read as PIL reads it (inverted, Adobe's convention, "CMYK;I") and converted
/// with Pillow's formula; the EXIF orientation is ignored, as PIL's `open` ignores it. libjpeg's
/// errors (a damaged file) come back as errors, not aborts.
pub fn decode_jpeg(bytes: &[u8], name: &str) -> Result<Rgb8, ImageError> {
    let bad = |what: String| ImageError::Decode { path: name.to_string(), what };
    let decoded = std::panic::catch_unwind(|| -> Result<Rgb8, String> {
        let mut d = mozjpeg::Decompress::with_err(jpeg_errors()).from_mem(bytes).map_err(|e| e.to_string())?;
        let (w, h) = d.size();
        if w as u64 * h as u64 > MAX_PIXELS {
            return Err(format!("{w}x{h} is over the limit of {MAX_PIXELS} pixels (a decompression bomb?)"));
        }
        d.dct_method(mozjpeg::DctMethod::IntegerSlow);
        d.do_fancy_upsampling(true);
        let data = match d.image().map_err(|e| e.to_string())? {
            mozjpeg::decompress::Format::RGB(mut s) => {
                let px: Vec<[u8; 3]> = s.read_scanlines().map_err(|e| e.to_string())?;
                s.finish().map_err(|e| e.to_string())?;
                px.concat()
            }
            mozjpeg::decompress::Format::Gray(mut s) => {
                let px: Vec<u8> = s.read_scanlines().map_err(|e| e.to_string())?;
                s.finish().map_err(|e| e.to_string())?;
                px.iter().flat_map(|&v| [v, v, v]).collect()
            }
            mozjpeg::decompress::Format::CMYK(mut s) => {
                let px: Vec<[u8; 4]> = s.read_scanlines().map_err(|e| e.to_string())?;
                s.finish().map_err(|e| e.to_string())?;
                px.iter().flat_map(|p| cmyk_to_rgb(p.map(|v| 255 - v))).collect()
            }
        };
        if data.len() != w * h * 3 {
            return Err(format!("{} of {} bytes decoded (truncated?)", data.len(), w * h * 3));
        }
        Ok(Rgb8 { width: w, height: h, data })
    });
    match decoded {
        Ok(result) => result.map_err(bad),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "libjpeg could not decode it".into());
            Err(bad(what))
        }
    }
}

/// libjpeg's error handling as PIL's loader ends up with it: a fatal error unwinds with libjpeg's
/// message, and so does a file that ends before its image data does ("Premature end of JPEG
/// file", a warning to libjpeg, which pads with gray; PIL refuses such files as truncated). Other
/// warnings (extraneous bytes before a marker, …) are tolerated, as by PIL.
fn jpeg_errors() -> mozjpeg_sys::jpeg_error_mgr {
    use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr};
    extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
        std::panic::resume_unwind(Box::new(message(cinfo)))
    }
    extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: std::os::raw::c_int) {
        // SAFETY: libjpeg calls this with its own struct, whose `err` is the manager below.
        let code = unsafe { cinfo.err.as_ref() }.map_or(0, |e| e.msg_code);
        if level < 0 && code == mozjpeg_sys::JWRN_JPEG_EOF {
            std::panic::resume_unwind(Box::new("the file ends before its image data does (truncated?)".to_string()))
        }
    }
    fn message(cinfo: &mut jpeg_common_struct) -> String {
        // SAFETY: as above; libjpeg writes at most JMSG_LENGTH_MAX (200) bytes.
        let Some(format) = (unsafe { cinfo.err.as_ref() }).and_then(|e| e.format_message) else {
            return "libjpeg could not decode it".into();
        };
        let buffer = [0u8; 200];
        // SAFETY: the buffer is larger than libjpeg's 80-byte declaration (JMSG_LENGTH_MAX).
        unsafe { format(cinfo, &*(buffer.as_ptr() as *const [u8; 80])) };
        let text = buffer.split(|&c| c == 0).next().unwrap_or_default();
        String::from_utf8_lossy(text).into_owned()
    }
    // SAFETY: jpeg_std_error fills every field of a zeroed manager.
    let mut err: jpeg_error_mgr = unsafe { std::mem::zeroed() };
    unsafe { mozjpeg_sys::jpeg_std_error(&mut err) };
    err.error_exit = Some(error_exit);
    err.emit_message = Some(emit_message);
    err
}

/// Pillow's `cmyk2rgb` (Convert.c): `255 - k` scaled down by each ink, rounded as its MULDIV255.
fn cmyk_to_rgb([c, m, y, k]: [u8; 4]) -> [u8; 3] {
    let nk = 255 - k as i32;
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    [c, m, y].map(|v| (nk - muldiv255(v as i32, nk)).clamp(0, 255) as u8)
}

/// Reads and decodes an image file.
pub fn open(path: &Path) -> Result<Rgb8, ImageError> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|err| ImageError::Io { path: p.clone(), err })?;
    decode(&bytes, &p)
}

// ---- PIL's resampling (libImaging/Resample.c), 8 bits per channel ----

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Filter {
    /// Triangle filter, support 1 (`Image.BILINEAR`).
    Bilinear,
    /// Keys cubic, a = -0.5, support 2 (`Image.BICUBIC`).
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }
    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                let a = -0.5;
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
        }
    }
}

/// Per output pixel: first input index, tap count, and fixed-point weights (`precompute_coeffs`
/// followed by `normalize_coeffs_8bpc`).
fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> (Vec<(usize, usize)>, Vec<i32>, usize) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncates toward zero; the values here are ≥ -1 so this matches.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for x in 0..xmax {
            let w = if ww != 0.0 { k[x] / ww } else { k[x] };
            let f = w * (1u32 << PRECISION_BITS) as f64;
            kk[xx * ksize + x] = if w < 0.0 { (-0.5 + f) as i32 } else { (0.5 + f) as i32 };
        }
        bounds.push((xmin, xmax));
    }
    (bounds, kk, ksize)
}

fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// `Image.resize((width, height), filter)` for an RGB image, with Pillow's two passes
/// (horizontal, then vertical) and 8-bit rounding between them.
pub fn resize(img: &Rgb8, width: usize, height: usize, filter: Filter) -> Rgb8 {
    let mut cur = img.clone();
    if width != cur.width {
        let (bounds, kk, ksize) = coefficients(cur.width, width, filter);
        let mut out = vec![0u8; cur.height * width * 3];
        for y in 0..cur.height {
            let row = &cur.data[y * cur.width * 3..(y + 1) * cur.width * 3];
            for (xx, &(xmin, n)) in bounds.iter().enumerate() {
                let k = &kk[xx * ksize..xx * ksize + n];
                for c in 0..3 {
                    let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                    for (x, &w) in k.iter().enumerate() {
                        ss += row[(xmin + x) * 3 + c] as i32 * w;
                    }
                    out[(y * width + xx) * 3 + c] = clip8(ss);
                }
            }
        }
        cur = Rgb8 { width, height: cur.height, data: out };
    }
    if height != cur.height {
        let (bounds, kk, ksize) = coefficients(cur.height, height, filter);
        let w3 = cur.width * 3;
        let mut out = vec![0u8; height * w3];
        for (yy, &(ymin, n)) in bounds.iter().enumerate() {
            let k = &kk[yy * ksize..yy * ksize + n];
            for i in 0..w3 {
                let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                for (y, &w) in k.iter().enumerate() {
                    ss += cur.data[(ymin + y) * w3 + i] as i32 * w;
                }
                out[yy * w3 + i] = clip8(ss);
            }
        }
        cur = Rgb8 { width: cur.width, height, data: out };
    }
    cur
}

/// torchvision's `Resize(size)` with an int: the shorter side becomes `size`, the longer
/// `int(size * long / short)`.
pub fn resize_shorter(img: &Rgb8, size: usize, filter: Filter) -> Rgb8 {
    let (w, h) = (img.width, img.height);
    let (nw, nh) = if w <= h {
        (size, (size as f64 * h as f64 / w as f64) as usize)
    } else {
        ((size as f64 * w as f64 / h as f64) as usize, size)
    };
    if (nw, nh) == (w, h) { img.clone() } else { resize(img, nw, nh, filter) }
}

/// Python's `round()`: halves go to the even neighbour.
fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 { (r - x.signum()) as i64 } else { r as i64 }
}

/// torchvision's `center_crop`: zero-padded when the image is smaller than the crop.
pub fn center_crop(img: &Rgb8, crop_h: usize, crop_w: usize) -> Rgb8 {
    let mut out = vec![0u8; crop_h * crop_w * 3];
    // Offsets of the crop inside the (virtually padded) image, as torchvision computes them.
    let pad_l = crop_w.saturating_sub(img.width) / 2;
    let pad_t = crop_h.saturating_sub(img.height) / 2;
    let pw = img.width.max(crop_w);
    let ph = img.height.max(crop_h);
    let left = round_half_even((pw - crop_w) as f64 / 2.0) as usize;
    let top = round_half_even((ph - crop_h) as f64 / 2.0) as usize;
    for y in 0..crop_h {
        let sy = (top + y) as i64 - pad_t as i64;
        if sy < 0 || sy >= img.height as i64 {
            continue;
        }
        for x in 0..crop_w {
            let sx = (left + x) as i64 - pad_l as i64;
            if sx < 0 || sx >= img.width as i64 {
                continue;
            }
            let s = (sy as usize * img.width + sx as usize) * 3;
            out[(y * crop_w + x) * 3..(y * crop_w + x) * 3 + 3].copy_from_slice(&img.data[s..s + 3]);
        }
    }
    Rgb8 { width: crop_w, height: crop_h, data: out }
}

/// How pixel values become network inputs.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Normalize {
    /// `(v / 255 - mean) / std` per RGB channel, in f32 as torchvision computes it.
    MeanStd {
        /// Per-channel mean.
        mean: [f32; 3],
        /// Per-channel standard deviation.
        std: [f32; 3],
    },
    /// Caffe/Keras `preprocess_input(mode="caffe")`: channels reordered to BGR, values 0–255 with
    /// the BGR mean (103.939, 116.779, 123.68) subtracted.
    Caffe,
    /// One gray channel, `(L / 255 - mean) / std`, L as PIL's `convert("L")` computes it.
    Gray {
        /// Mean.
        mean: f32,
        /// Standard deviation.
        std: f32,
    },
}

/// `imagenet` (torchvision's mean and std), `caffe`, or `gray` (mean 0.5, std 0.5).
impl std::str::FromStr for Normalize {
    type Err = crate::parse::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "imagenet" => Ok(Normalize::imagenet()),
            "caffe" => Ok(Normalize::Caffe),
            "gray" | "grey" => Ok(Normalize::Gray { mean: 0.5, std: 0.5 }),
            _ => Err(crate::parse::ParseError::new("normalisation", s, "imagenet, caffe or gray")),
        }
    }
}

impl Normalize {
    /// ImageNet's mean and std, as torchvision's weights expect.
    pub fn imagenet() -> Self {
        Normalize::MeanStd { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }
    }
    /// `VGG16_Weights.IMAGENET1K_FEATURES`: 0–255 inputs minus the Caffe mean, in RGB order.
    pub fn amdegroot() -> Self {
        Normalize::MeanStd { mean: [0.48235, 0.45882, 0.40784], std: [1.0 / 255.0; 3] }
    }
    /// Number of channels produced.
    pub fn channels(&self) -> usize {
        if matches!(self, Normalize::Gray { .. }) { 1 } else { 3 }
    }
}

/// A preprocessing pipeline: resize, crop, normalise.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Preprocess {
    /// Shorter side after resizing (`None`: keep the size).
    pub resize: Option<usize>,
    /// Center crop `[H, W]` (`None`: no crop).
    pub crop: Option<[usize; 2]>,
    /// Resampling filter.
    pub filter: Filter,
    /// Value mapping.
    pub normalize: Normalize,
}

impl Preprocess {
    /// `VGG16_Weights.IMAGENET1K_V1.transforms()`: resize 256, crop 224, ImageNet mean/std.
    pub fn imagenet() -> Self {
        Self { resize: Some(256), crop: Some([224, 224]), filter: Filter::Bilinear, normalize: Normalize::imagenet() }
    }

    /// Applies the pipeline to a decoded image.
    pub fn apply(&self, img: &Rgb8) -> Result<ImageTensor, ImageError> {
        Ok(to_tensor(&self.geometry(img)?, &self.normalize))
    }

    /// The resize and crop alone: the picture the network sees, as 8-bit RGB (for overlays).
    pub fn geometry(&self, img: &Rgb8) -> Result<Rgb8, ImageError> {
        if img.width == 0 || img.height == 0 {
            return Err(ImageError::Invalid("empty image".into()));
        }
        let resized = match self.resize {
            Some(0) => return Err(ImageError::Invalid("resize size must be positive".into())),
            Some(s) => resize_shorter(img, s, self.filter),
            None => img.clone(),
        };
        let cropped = match self.crop {
            Some([h, w]) if h == 0 || w == 0 => return Err(ImageError::Invalid("crop size must be positive".into())),
            Some([h, w]) => center_crop(&resized, h, w),
            None => resized,
        };
        Ok(cropped)
    }

    /// Reads, decodes and preprocesses a file.
    pub fn load(&self, path: &Path) -> Result<ImageTensor, ImageError> {
        self.apply(&open(path)?)
    }
}

/// A preprocessed image, `[C, H, W]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTensor {
    /// `[C, H, W]`.
    pub shape: [usize; 3],
    /// Values.
    pub data: Vec<f32>,
}

impl ImageTensor {
    /// Dimensions as a batch of one, `[1, C, H, W]`.
    pub fn dims(&self) -> [usize; 4] {
        let [c, h, w] = self.shape;
        [1, c, h, w]
    }

    /// As a batch of one, `[1, C, H, W]`.
    pub fn to_tensor(&self, device: &Device) -> Tensor<4> {
        let [c, h, w] = self.shape;
        Tensor::from_data(TensorData::new(self.data.clone(), [1, c, h, w]), device)
    }

    /// Stacks images of equal shape into one batch.
    pub fn batch(images: &[ImageTensor], device: &Device) -> Result<Tensor<4>, ImageError> {
        let first = images.first().ok_or_else(|| ImageError::Invalid("empty batch".into()))?;
        if images.iter().any(|i| i.shape != first.shape) {
            return Err(ImageError::Invalid("images of a batch must share one shape".into()));
        }
        let [c, h, w] = first.shape;
        let data: Vec<f32> = images.iter().flat_map(|i| i.data.iter().copied()).collect();
        Ok(Tensor::from_data(TensorData::new(data, [images.len(), c, h, w]), device))
    }
}

/// `ToTensor` + `Normalize` (or Caffe's mapping) from 8-bit RGB.
pub fn to_tensor(img: &Rgb8, norm: &Normalize) -> ImageTensor {
    let (h, w) = (img.height, img.width);
    let n = h * w;
    match *norm {
        Normalize::MeanStd { mean, std } => {
            let mut data = vec![0f32; 3 * n];
            for c in 0..3 {
                for i in 0..n {
                    let v = img.data[i * 3 + c] as f32 / 255.0;
                    data[c * n + i] = (v - mean[c]) / std[c];
                }
            }
            ImageTensor { shape: [3, h, w], data }
        }
        Normalize::Caffe => {
            const BGR_MEAN: [f32; 3] = [103.939, 116.779, 123.68];
            let mut data = vec![0f32; 3 * n];
            for c in 0..3 {
                for i in 0..n {
                    data[c * n + i] = img.data[i * 3 + (2 - c)] as f32 - BGR_MEAN[c];
                }
            }
            ImageTensor { shape: [3, h, w], data }
        }
        Normalize::Gray { mean, std } => {
            let data = (0..n)
                .map(|i| {
                    let p = &img.data[i * 3..i * 3 + 3];
                    // PIL's ITU-R 601-2 luma in 16-bit fixed point.
                    let l = (p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16;
                    (l as f32 / 255.0 - mean) / std
                })
                .collect();
            ImageTensor { shape: [1, h, w], data }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding_goes_to_even() {
        assert_eq!(round_half_even(0.5), 0);
        assert_eq!(round_half_even(1.5), 2);
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(2.4), 2);
    }

    #[test]
    fn resize_keeps_a_constant_image_constant() {
        let img = Rgb8 { width: 37, height: 23, data: vec![200; 37 * 23 * 3] };
        for (w, h) in [(10, 7), (80, 50), (37, 11)] {
            let r = resize(&img, w, h, Filter::Bilinear);
            assert_eq!((r.width, r.height), (w, h));
            assert!(r.data.iter().all(|&v| v == 200));
        }
    }

    #[test]
    fn shorter_side_sizes_follow_torchvision() {
        let img = Rgb8 { width: 451, height: 300, data: vec![0; 451 * 300 * 3] };
        let r = resize_shorter(&img, 256, Filter::Bilinear);
        // int(256 * 451 / 300) = 384
        assert_eq!((r.width, r.height), (384, 256));
    }

    #[test]
    fn center_crop_pads_small_images_with_zeros() {
        let img = Rgb8 { width: 2, height: 2, data: vec![9; 12] };
        let c = center_crop(&img, 4, 4);
        let lit: Vec<bool> = c.data.chunks(3).map(|p| p[0] == 9).collect();
        #[rustfmt::skip]
        assert_eq!(lit, vec![false, false, false, false, false, true, true, false, false, true, true, false, false, false, false, false]);
    }

    #[test]
    fn caffe_mode_is_bgr_with_the_mean_subtracted() {
        let img = Rgb8 { width: 1, height: 1, data: vec![10, 20, 30] };
        let t = to_tensor(&img, &Normalize::Caffe);
        assert_eq!(t.shape, [3, 1, 1]);
        let want = [30.0 - 103.939, 20.0 - 116.779, 10.0 - 123.68];
        for (a, b) in t.data.iter().zip(want) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn gray_uses_pil_luma() {
        // PIL: Image.new("RGB", (1, 1), (255, 0, 0)).convert("L").getpixel((0, 0)) == 76
        let img = Rgb8 { width: 2, height: 1, data: vec![255, 0, 0, 255, 255, 255] };
        let t = to_tensor(&img, &Normalize::Gray { mean: 0.0, std: 1.0 });
        assert_eq!(t.shape, [1, 1, 2]);
        assert_eq!(t.data, vec![76.0 / 255.0, 1.0]);
    }

    #[test]
    fn imagenet_normalisation_is_torchvision_f32_arithmetic() {
        let img = Rgb8 { width: 1, height: 1, data: vec![0, 128, 255] };
        let t = to_tensor(&img, &Normalize::imagenet());
        assert_eq!(t.data[0], (0.0f32 - 0.485) / 0.229);
        assert_eq!(t.data[1], (128.0f32 / 255.0 - 0.456) / 0.224);
        assert_eq!(t.data[2], (1.0f32 - 0.406) / 0.225);
    }
}
