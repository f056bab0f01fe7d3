//! LPIPS (Zhang et al., 2018) with a VGG-16 trunk, exactly as the `lpips` package 0.1.4 computes
//! `lpips.LPIPS(net="vgg", version="0.1")`:
//!
//! ```python
//! in0, in1 = scaling_layer(in0), scaling_layer(in1)        # (x - shift) / scale, x in [-1, 1]
//! outs0, outs1 = net.forward(in0), net.forward(in1)         # relu1_2 relu2_2 relu3_3 relu4_3 relu5_3
//! for kk in range(5):
//!     feats0, feats1 = normalize_tensor(outs0[kk]), normalize_tensor(outs1[kk])  # x / (|x|_2 + 1e-10)
//!     diffs[kk] = (feats0 - feats1) ** 2
//! res = [spatial_average(lins[kk](diffs[kk]), keepdim=True) for kk in range(5)]   # 1x1 conv, no bias
//! val = sum(res)                                            # spatial=True: upsample(lins(diffs)), sum
//! ```
//!
//! `lpips=False` (here [`Heads::None`]) sums the squared differences over channels instead of
//! weighting them. The trunk is any VGG-16 the engine runs; the linear heads come from the `lpips`
//! wheel (`lpips/weights/v0.1/vgg.pth`, converted by `bench/lpips_reference.py`; BSD-2-Clause,
//! notice in `assets/lpips/LICENSE`).

use rayon::prelude::*;

use super::PerceptualError;
use crate::engine::{Engine, Trace};
use crate::explain::upsample;
use crate::weights::{self, StateDict};

/// The layers LPIPS compares, by their paper names.
pub const TAPS: [&str; 5] = ["relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"];
/// The scaling layer's shift, per RGB channel.
pub const SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
/// The scaling layer's scale, per RGB channel.
pub const SCALE: [f32; 3] = [0.458, 0.448, 0.450];
/// `normalize_tensor`'s epsilon.
const EPS: f64 = 1e-10;

/// `lpips/weights/v0.1/vgg.pth` of the `lpips` 0.1.4 wheel as safetensors (`lin{k}.model.1.weight`,
/// `[1, C, 1, 1]`).
const V0_1_VGG: &[u8] = include_bytes!("../../assets/lpips/vgg-v0.1.safetensors");

/// How the five layers' squared differences are weighted per channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Heads {
    /// The learned 1x1 linear heads (`lpips=True`), one weight per channel of each tap.
    Linear([Vec<f32>; 5]),
    /// Every channel weighted 1 (`lpips=False`).
    None,
}

impl Heads {
    /// The heads of `lpips` 0.1.4's `vgg.pth` (version 0.1).
    pub fn v0_1() -> Self {
        Self::from_state_dict(&weights::load_bytes(V0_1_VGG, "lpips vgg v0.1").expect("embedded heads are valid"))
            .expect("embedded heads have lpips's keys")
    }

    /// Heads from a state dict with `lpips`'s keys (`lin0.model.1.weight` … `lin4.model.1.weight`,
    /// `[1, C, 1, 1]`), such as `vgg.pth` itself.
    pub fn from_state_dict(sd: &StateDict) -> Result<Self, PerceptualError> {
        let mut heads: [Vec<f32>; 5] = Default::default();
        for (k, head) in heads.iter_mut().enumerate() {
            let key = format!("lin{k}.model.1.weight");
            let t = sd.get(&key).ok_or_else(|| PerceptualError::Heads(format!("no tensor '{key}'")))?;
            if t.shape.len() != 4 || t.shape[0] != 1 || t.shape[2] != 1 || t.shape[3] != 1 {
                return Err(PerceptualError::Heads(format!("'{key}' is {:?}, not [1, C, 1, 1]", t.shape)));
            }
            *head = t.data.clone();
        }
        Ok(Heads::Linear(heads))
    }

    fn weight(&self, tap: usize, channel: usize) -> f64 {
        match self {
            Heads::Linear(w) => w[tap][channel] as f64,
            Heads::None => 1.0,
        }
    }
}

/// LPIPS on an engine running a VGG-16 trunk.
pub struct Lpips<'a> {
    engine: &'a Engine,
    taps: [usize; 5],
    heads: Heads,
}

/// One image's distances and, with `spatial`, its map.
#[derive(Debug, Clone, PartialEq)]
pub struct Distance {
    /// The LPIPS value.
    pub value: f64,
    /// Each tap's share of it (`retPerLayer`).
    pub per_layer: [f64; 5],
}

impl<'a> Lpips<'a> {
    /// LPIPS on `engine`'s trunk; its activations must include the five taps with as many
    /// channels as the heads weigh.
    pub fn new(engine: &'a Engine, heads: Heads) -> Result<Self, PerceptualError> {
        let mut taps = [0; 5];
        for (slot, name) in taps.iter_mut().zip(TAPS) {
            *slot = engine.activation_index(name)?;
        }
        let plan = engine.config().plan([224, 224]);
        if let Heads::Linear(w) = &heads {
            for (k, name) in TAPS.iter().enumerate() {
                let have = plan.find(name).map_or(0, |i| plan.layers[i].out_shape[0]);
                if w[k].len() != have {
                    return Err(PerceptualError::Heads(format!(
                        "'lin{k}.model.1.weight' weighs {} channels but {name} has {have}",
                        w[k].len()
                    )));
                }
            }
        }
        Ok(Lpips { engine, taps, heads })
    }

    fn trace(&self, x: &[f32], dims: [usize; 4]) -> Trace {
        self.engine.trace(&scale(x, dims), dims, self.taps[4])
    }

    /// The five taps of `a` and `b` from one forward pass of both (`[2n, ...]`): for each tap, `a`'s
    /// images' activations, `b`'s, and the dims `[n, h, w, c]`.
    fn taps(&self, a: &[f32], b: &[f32], dims: [usize; 4]) -> Vec<(Vec<f32>, Vec<f32>, [usize; 4])> {
        let [n, c, h, w] = dims;
        let both: Vec<f32> = a.iter().chain(b).copied().collect();
        let acts = self.engine.activations(&scale(&both, [2 * n, c, h, w]), [2 * n, c, h, w], &self.taps);
        acts.into_iter()
            .map(|(mut act, [_, th, tw, tc])| {
                let second = act.split_off(act.len() / 2);
                (act, second, [n, th, tw, tc])
            })
            .collect()
    }

    /// LPIPS between the images of `a` and `b` (`[n, 3, h, w]`, values in [-1, 1], image `i` of
    /// `a` against image `i` of `b`).
    pub fn distance(&self, a: &[f32], b: &[f32], dims: [usize; 4]) -> Result<Vec<Distance>, PerceptualError> {
        self.check(a, b, dims)?;
        let mut out = vec![Distance { value: 0.0, per_layer: [0.0; 5] }; dims[0]];
        for (k, (fa, fb, [n, h, w, c])) in self.taps(a, b, dims).into_iter().enumerate() {
            // Per image, its positions' sums in parallel (in a fixed order: the same value on any
            // number of threads).
            let pixels = self.pixels(k, &fa, &fb, c);
            for (d, image) in out.iter_mut().zip(pixels.chunks_exact(h * w)) {
                d.per_layer[k] = image.iter().sum::<f64>() / (h * w) as f64;
            }
            debug_assert_eq!(n, dims[0]);
        }
        for d in &mut out {
            d.value = d.per_layer.iter().sum();
        }
        Ok(out)
    }

    /// The per-pixel map of each pair (`spatial=True`): each tap's weighted squared differences
    /// upsampled bilinearly (half-pixel centres) to the input's size, summed; `[n, h, w]`. Its mean
    /// is close to, not equal to, [`Lpips::distance`] (the upsampling does not keep means).
    pub fn spatial(&self, a: &[f32], b: &[f32], dims: [usize; 4]) -> Result<Vec<f32>, PerceptualError> {
        self.check(a, b, dims)?;
        let [n, _, height, width] = dims;
        let mut out = vec![0f32; n * height * width];
        for (k, (fa, fb, [_, h, w, c])) in self.taps(a, b, dims).into_iter().enumerate() {
            let pixels = self.pixels(k, &fa, &fb, c);
            for (map, image) in out.chunks_exact_mut(height * width).zip(pixels.chunks_exact(h * w)) {
                let layer: Vec<f32> = image.iter().map(|&v| v as f32).collect();
                for (m, v) in map.iter_mut().zip(upsample(&layer, [h, w], [height, width])) {
                    *m += v;
                }
            }
        }
        Ok(out)
    }

    /// LPIPS of each pair and its gradient with respect to `a` (`[n, 3, h, w]`, as `a`): what a
    /// model trained against LPIPS needs. At a position where all of a tap's channels are zero the
    /// normalisation has no gradient; it is taken as zero there (PyTorch's autograd gives NaN).
    pub fn distance_and_gradient(
        &self,
        a: &[f32],
        b: &[f32],
        dims: [usize; 4],
    ) -> Result<(Vec<f64>, Vec<f32>), PerceptualError> {
        self.check(a, b, dims)?;
        // `a` traced for its backward pass; `b` needs only its activations.
        let ta = self.trace(a, dims);
        let tb = self.engine.activations(&scale(b, dims), dims, &self.taps);
        let mut values = vec![0f64; dims[0]];
        let mut seeds = Vec::with_capacity(5);
        for (k, &tap) in self.taps.iter().enumerate() {
            let (fa, [_, h, w, c]) = ta.activation_nhwc(tap);
            let fb = &tb[k].0;
            let mut g = vec![0f32; fa.len()];
            let per_pixel = 1.0 / (h * w) as f64;
            for p in 0..fa.len() / c {
                let (xa, xb) = (&fa[p * c..(p + 1) * c], &fb[p * c..(p + 1) * c]);
                let (na, nb) = (norm(xa), norm(xb));
                // d/dy_a of Σ_c w_c (y_a − y_b)² / (h w), with y = x / (|x| + ε).
                let gy: Vec<f64> = (0..c)
                    .map(|ch| {
                        let d = xa[ch] as f64 / (na + EPS) - xb[ch] as f64 / (nb + EPS);
                        values[p / (h * w)] += self.heads.weight(k, ch) * d * d * per_pixel;
                        2.0 * self.heads.weight(k, ch) * d * per_pixel
                    })
                    .collect();
                // Through the normalisation: dy/dx = I / (n + ε) − x xᵀ / (n (n + ε)²).
                if na > 0.0 {
                    let dot: f64 = xa.iter().zip(&gy).map(|(&x, &g)| x as f64 * g).sum();
                    let along = dot / (na * (na + EPS) * (na + EPS));
                    for ((gx, &x), &gyc) in g[p * c..(p + 1) * c].iter_mut().zip(xa).zip(&gy) {
                        *gx = (gyc / (na + EPS) - x as f64 * along) as f32;
                    }
                }
            }
            seeds.push((tap, g));
        }
        // The trunk's input gradient (NHWC), then through the scaling layer, to NCHW.
        let gx = self.engine.gradient(&ta, seeds, 0);
        let [n, c, h, w] = dims;
        let mut grad = vec![0f32; a.len()];
        for i in 0..n {
            for p in 0..h * w {
                for ch in 0..c {
                    grad[((i * c + ch) * h * w) + p] = gx[(i * h * w + p) * c + ch] / SCALE[ch];
                }
            }
        }
        Ok((values, grad))
    }

    /// [`Lpips::pixel`] at every position of tap `k`'s NHWC maps `fa` and `fb` of `c` channels.
    fn pixels(&self, k: usize, fa: &[f32], fb: &[f32], c: usize) -> Vec<f64> {
        fa.par_chunks_exact(c).zip(fb.par_chunks_exact(c)).map(|(xa, xb)| self.pixel(k, xa, xb)).collect()
    }

    /// Σ_c w_c (x_a / (|x_a| + ε) − x_b / (|x_b| + ε))² at one position of tap `k`.
    fn pixel(&self, k: usize, xa: &[f32], xb: &[f32]) -> f64 {
        let (na, nb) = (norm(xa) + EPS, norm(xb) + EPS);
        xa.iter()
            .zip(xb)
            .enumerate()
            .map(|(ch, (&a, &b))| {
                let d = a as f64 / na - b as f64 / nb;
                self.heads.weight(k, ch) * d * d
            })
            .sum()
    }
}

fn norm(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt()
}

impl Lpips<'_> {
    /// The shape checks of every entry point: RGB, as many values as `dims` says, large enough.
    fn check(&self, a: &[f32], b: &[f32], dims: [usize; 4]) -> Result<(), PerceptualError> {
        check(a, b, dims)?;
        super::check_side(self.engine, self.taps[4], [dims[2], dims[3]])
    }
}

fn check(a: &[f32], b: &[f32], [n, c, h, w]: [usize; 4]) -> Result<(), PerceptualError> {
    if c != 3 {
        return Err(PerceptualError::Input(format!("LPIPS compares RGB images, not {c} channels")));
    }
    if a.len() != n * c * h * w || b.len() != a.len() {
        return Err(PerceptualError::Input(format!("{} and {} values for {n} images of 3x{h}x{w}", a.len(), b.len())));
    }
    Ok(())
}

/// The scaling layer: `(x − shift) / scale` per channel of NCHW images in [-1, 1].
pub fn scale(x: &[f32], [_, c, h, w]: [usize; 4]) -> Vec<f32> {
    x.iter().enumerate().map(|(i, &v)| (v - SHIFT[(i / (h * w)) % c]) / SCALE[(i / (h * w)) % c]).collect()
}
