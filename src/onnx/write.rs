//! ONNX export of any configuration and head (opset 17, IR version 8).
//!
//! - The input is `input`, `[batch, c, h, w]` with a dynamic batch; the output is `logits`
//!   (`features`, the pool5 map, for a network without a head). Nodes carry the paper's names,
//!   initializers torchvision's keys.
//! - The adaptive average pool of the ImageNet head is exported for the input size given (recorded
//!   in the metadata): nothing when the trunk map already has the pooled size (224² for VGG), an
//!   `AveragePool` when it divides evenly, and otherwise two `MatMul`s with PyTorch's bin-averaging
//!   matrices, exact for overlapping bins too (torchvision's own export fails for those sizes:
//!   pytorch#42653). Such a file takes only that size; the CIFAR-style head uses
//!   `GlobalAveragePool` and takes any size from 32² up.
//! - BatchNorm is a `BatchNormalization` node, or folded into the convolution before it
//!   (`fold_batchnorm`: `w·γ/σ`, `(b − μ)·γ/σ + β`).

use super::proto::Msg;
use crate::config::{Head, LRN_ALPHA, LRN_BETA, LRN_K, LRN_SIZE, LayerKind, VggConfig};
use crate::image::Preprocess;
use crate::model::layers::adaptive_pool_matrix;
use crate::weights::StateDict;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The weights lack a tensor the configuration needs.
    #[error("the weights have no {0}")]
    MissingKey(String),
    /// A tensor of the wrong shape.
    #[error("{key}: the weights hold {got:?}, the configuration needs {expected:?}")]
    Shape {
        /// The key.
        key: String,
        /// What the configuration needs.
        expected: Vec<usize>,
        /// What the weights hold.
        got: Vec<usize>,
    },
    /// Writing failed.
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightsError),
}

/// ONNX's opset and the IR version that goes with it.
pub const OPSET: i64 = 17;
const IR_VERSION: i64 = 8;
const FLOAT: i64 = 1;
const BN_EPS: f32 = 1e-5;

/// How to export.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxOptions {
    /// Input size `[h, w]` the adaptive pool is exported for (224² by default).
    pub input: [usize; 2],
    /// Fold BatchNorm into the preceding convolution.
    pub fold_batchnorm: bool,
}

impl Default for OnnxOptions {
    fn default() -> Self {
        Self { input: [224, 224], fold_batchnorm: false }
    }
}

/// What the exported graph accepts and returns.
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxSummary {
    /// The input's dims, `None` where dynamic.
    pub input: [Option<usize>; 4],
    /// Output name.
    pub output: String,
    /// Nodes written.
    pub nodes: usize,
}

struct Graph {
    nodes: Vec<Msg>,
    inits: Vec<Msg>,
}

impl Graph {
    fn init(&mut self, name: &str, dims: &[usize], data: &[f32]) {
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        self.inits.push(Msg::new().ints(1, &dims).int(2, FLOAT).str(8, name).bytes(9, &raw));
    }

    fn node(&mut self, op: &str, name: &str, inputs: &[&str], output: &str, attrs: Vec<Msg>) {
        let mut m = Msg::new();
        for i in inputs {
            m = m.str(1, i);
        }
        m = m.str(2, output).str(3, name).str(4, op);
        for a in &attrs {
            m = m.msg(5, a);
        }
        self.nodes.push(m);
    }
}

fn attr_ints(name: &str, v: &[i64]) -> Msg {
    Msg::new().str(1, name).ints(8, v).int(20, 7)
}
fn attr_int(name: &str, v: i64) -> Msg {
    Msg::new().str(1, name).int(3, v).int(20, 2)
}
fn attr_float(name: &str, v: f32) -> Msg {
    Msg::new().str(1, name).float(2, v).int(20, 1)
}

fn value_info(name: &str, dims: &[Result<usize, &str>]) -> Msg {
    let mut shape = Msg::new();
    for d in dims {
        let dim = match d {
            Ok(v) => Msg::new().int(1, *v as i64),
            Err(p) => Msg::new().str(2, p),
        };
        shape = shape.msg(1, &dim);
    }
    let tensor = Msg::new().int(1, FLOAT).msg(2, &shape);
    Msg::new().str(1, name).msg(2, &Msg::new().msg(1, &tensor))
}

fn get<'a>(sd: &'a StateDict, key: &str, shape: &[usize]) -> Result<&'a [f32], ExportError> {
    let e = sd.get(key).ok_or_else(|| ExportError::MissingKey(key.to_string()))?;
    if e.shape != shape {
        return Err(ExportError::Shape { key: key.to_string(), expected: shape.to_vec(), got: e.shape.clone() });
    }
    Ok(&e.data)
}

/// Serialises the network of `config` with the weights of `sd` (torchvision keys) as an ONNX
/// model; `preprocess` is recorded in the metadata with the configuration.
pub fn to_onnx(
    config: &VggConfig,
    sd: &StateDict,
    preprocess: Option<&Preprocess>,
    opts: &OnnxOptions,
) -> Result<(Vec<u8>, OnnxSummary), ExportError> {
    let plan = config.plan(opts.input);
    let mut g = Graph { nodes: vec![], inits: vec![] };
    let mut cur = "input".to_string();
    let mut map = [opts.input[0], opts.input[1]];
    let mut flat = false;
    let mut layers = plan.layers.iter().enumerate().peekable();
    while let Some((i, layer)) = layers.next() {
        let (key, name) = (&layer.key, &layer.name);
        let out = name.clone();
        match layer.kind {
            LayerKind::Conv { in_channels: ci, out_channels: co, kernel: k } => {
                let w = get(sd, &format!("{key}.weight"), &[co, ci, k, k])?;
                let b = get(sd, &format!("{key}.bias"), &[co])?;
                let p = (k / 2) as i64;
                let attrs = || {
                    vec![
                        attr_ints("kernel_shape", &[k as i64, k as i64]),
                        attr_ints("pads", &[p, p, p, p]),
                        attr_ints("strides", &[1, 1]),
                    ]
                };
                let next_bn = layers
                    .peek()
                    .filter(|(_, l)| matches!(l.kind, LayerKind::BatchNorm { .. }))
                    .map(|(_, l)| l.key.clone());
                match next_bn {
                    Some(bn) if opts.fold_batchnorm => {
                        let gamma = get(sd, &format!("{bn}.weight"), &[co])?;
                        let beta = get(sd, &format!("{bn}.bias"), &[co])?;
                        let mean = get(sd, &format!("{bn}.running_mean"), &[co])?;
                        let var = get(sd, &format!("{bn}.running_var"), &[co])?;
                        let per = ci * k * k;
                        let mut wf = vec![0f32; w.len()];
                        let mut bf = vec![0f32; co];
                        for o in 0..co {
                            let s = gamma[o] as f64 / (var[o] as f64 + BN_EPS as f64).sqrt();
                            for j in 0..per {
                                wf[o * per + j] = (w[o * per + j] as f64 * s) as f32;
                            }
                            bf[o] = ((b[o] as f64 - mean[o] as f64) * s + beta[o] as f64) as f32;
                        }
                        g.init(&format!("{key}.weight"), &[co, ci, k, k], &wf);
                        g.init(&format!("{key}.bias"), &[co], &bf);
                        let (_, bn_layer) = layers.next().expect("peeked");
                        let fused = bn_layer.name.clone();
                        g.node(
                            "Conv",
                            &format!("{name}+{fused}"),
                            &[&cur, &format!("{key}.weight"), &format!("{key}.bias")],
                            &fused,
                            attrs(),
                        );
                        cur = fused;
                        continue;
                    }
                    _ => {
                        g.init(&format!("{key}.weight"), &[co, ci, k, k], w);
                        g.init(&format!("{key}.bias"), &[co], b);
                        g.node("Conv", name, &[&cur, &format!("{key}.weight"), &format!("{key}.bias")], &out, attrs());
                    }
                }
            }
            LayerKind::BatchNorm { channels: c } => {
                let names = ["weight", "bias", "running_mean", "running_var"].map(|s| format!("{key}.{s}"));
                for n in &names {
                    let v = get(sd, n, &[c])?;
                    g.init(n, &[c], v);
                }
                let inputs = [cur.as_str(), &names[0], &names[1], &names[2], &names[3]];
                g.node("BatchNormalization", name, &inputs, &out, vec![attr_float("epsilon", BN_EPS)]);
            }
            LayerKind::Relu => g.node("Relu", name, &[&cur], &out, vec![]),
            LayerKind::Lrn => g.node(
                "LRN",
                name,
                &[&cur],
                &out,
                vec![
                    attr_int("size", LRN_SIZE as i64),
                    attr_float("alpha", LRN_ALPHA as f32),
                    attr_float("beta", LRN_BETA as f32),
                    attr_float("bias", LRN_K as f32),
                ],
            ),
            LayerKind::MaxPool => {
                g.node(
                    "MaxPool",
                    name,
                    &[&cur],
                    &out,
                    vec![attr_ints("kernel_shape", &[2, 2]), attr_ints("strides", &[2, 2])],
                );
                map = [map[0] / 2, map[1] / 2];
            }
            LayerKind::AdaptiveAvgPool { out: [oh, ow] } => {
                let [h, w] = map;
                if [h, w] == [oh, ow] {
                    continue;
                }
                if h % oh == 0 && w % ow == 0 {
                    let k = [(h / oh) as i64, (w / ow) as i64];
                    g.node(
                        "AveragePool",
                        name,
                        &[&cur],
                        &out,
                        vec![attr_ints("kernel_shape", &k), attr_ints("strides", &k)],
                    );
                } else {
                    // out = P_h · X · P_wᵀ, with PyTorch's (possibly overlapping) bins.
                    let pw = adaptive_pool_matrix(w, ow);
                    let mut pwt = vec![0f32; w * ow];
                    for r in 0..ow {
                        for c in 0..w {
                            pwt[c * ow + r] = pw[r * w + c];
                        }
                    }
                    g.init("avgpool.pool_cols", &[w, ow], &pwt);
                    g.init("avgpool.pool_rows", &[oh, h], &adaptive_pool_matrix(h, oh));
                    let mid = format!("{name}.cols");
                    g.node("MatMul", &mid, &[&cur, "avgpool.pool_cols"], &mid, vec![]);
                    g.node("MatMul", name, &["avgpool.pool_rows", &mid], &out, vec![]);
                }
                map = [oh, ow];
            }
            LayerKind::Dropout => continue,
            LayerKind::Linear { in_features: inp, out_features: o } => {
                if i == plan.trunk && config.head.averages_to_one() {
                    g.node("GlobalAveragePool", "avgpool", &[&cur], "avgpool", vec![]);
                    cur = "avgpool".into();
                }
                if !flat {
                    g.node("Flatten", "flatten", &[&cur], "flatten", vec![attr_int("axis", 1)]);
                    cur = "flatten".into();
                    flat = true;
                }
                let w = get(sd, &format!("{key}.weight"), &[o, inp])?;
                let b = get(sd, &format!("{key}.bias"), &[o])?;
                g.init(&format!("{key}.weight"), &[o, inp], w);
                g.init(&format!("{key}.bias"), &[o], b);
                g.node(
                    "Gemm",
                    name,
                    &[&cur, &format!("{key}.weight"), &format!("{key}.bias")],
                    &out,
                    vec![attr_int("transB", 1)],
                );
            }
        }
        cur = out;
    }
    // The last node's output is renamed to the graph's output.
    let output = if flat { "logits" } else { "features" };
    g.node("Identity", output, &[&cur], output, vec![]);
    let dynamic_size = !matches!(config.head, Head::Imagenet { .. });
    let c = config.in_channels;
    let (h, w) = (opts.input[0], opts.input[1]);
    let in_dims: [Result<usize, &str>; 4] = if dynamic_size {
        [Err("batch"), Ok(c), Err("height"), Err("width")]
    } else {
        [Err("batch"), Ok(c), Ok(h), Ok(w)]
    };
    let last = plan.layers.last().expect("a plan has layers");
    let out_dims: Vec<Result<usize, &str>> = if flat {
        vec![Err("batch"), Ok(config.num_classes)]
    } else if dynamic_size {
        vec![Err("batch"), Ok(last.out_shape[0]), Err("map_height"), Err("map_width")]
    } else {
        std::iter::once(Err("batch")).chain(last.out_shape.iter().map(|&d| Ok(d))).collect()
    };
    let mut graph = Msg::new();
    for n in &g.nodes {
        graph = graph.msg(1, n);
    }
    graph = graph.str(2, &config.arch_name());
    for t in &g.inits {
        graph = graph.msg(5, t);
    }
    graph = graph.msg(11, &value_info("input", &in_dims)).msg(12, &value_info(output, &out_dims));
    let config_json = serde_json::to_string(config).expect("a config serialises");
    let mut model = Msg::new()
        .int(1, IR_VERSION)
        .str(2, "vgg")
        .str(3, env!("CARGO_PKG_VERSION"))
        .msg(7, &graph)
        .msg(8, &Msg::new().str(1, "").int(2, OPSET));
    let mut meta = vec![
        (crate::weights::safetensors::CONFIG_KEY.to_string(), config_json),
        ("vgg.input_size".to_string(), format!("{h}x{w}")),
        ("vgg.batchnorm".to_string(), if opts.fold_batchnorm { "folded" } else { "BatchNormalization" }.to_string()),
        ("vgg.sizes".to_string(), if dynamic_size { "any from 32x32".to_string() } else { format!("{h}x{w} only") }),
    ];
    if let Some(p) = preprocess {
        meta.push((
            crate::weights::safetensors::PREPROCESS_KEY.to_string(),
            serde_json::to_string(p).expect("serialises"),
        ));
    }
    for (k, v) in &meta {
        model = model.msg(14, &Msg::new().str(1, k).str(2, v));
    }
    let summary = OnnxSummary {
        input: [None, Some(c), (!dynamic_size).then_some(h), (!dynamic_size).then_some(w)],
        output: output.to_string(),
        nodes: g.nodes.len(),
    };
    Ok((model.0, summary))
}
