//! Keras 3 files: `.keras` archives (`model.save`: a zip of `config.json`, `metadata.json` and
//! `model.weights.h5`) and bare `.weights.h5` (`model.save_weights`).
//!
//! Keras 3's HDF5 layout differs from Keras 2's: each layer is a group `layers/<path>/vars` whose
//! datasets `0`, `1`, … are its variables in Keras' order (kernel, bias; gamma, beta, moving mean,
//! moving variance), `<path>` is named after the layer's class (`conv2d`, `conv2d_1`, …, `dense`)
//! and the `vars` group's attribute `name` is the layer's own name (`block1_conv1`). HDF5 lists
//! groups by name, not in the model's order, so the order comes from the archive's `config.json`
//! (the model's layers as built); a bare `.weights.h5` has only the class paths' counters, which
//! give the order within each class: convolutions then BatchNorms are interleaved one for one (a
//! VGG-BN trunk), dense layers follow. The tensors then go through the Keras 2 reader's matching
//! ([`super::keras`]), so both versions give the same state dict.

use std::io::{Cursor, Read};

use hdf5_pure::{File, Group};

use super::WeightsError;
use super::keras::{KerasImport, RawLayer, from_layers};
use crate::file::FileError;

/// Whether `bytes` is a `.keras` archive (a zip holding `model.weights.h5`).
pub fn looks_like_archive(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
        && zip::ZipArchive::new(Cursor::new(bytes)).is_ok_and(|z| z.file_names().any(|n| n == "model.weights.h5"))
}

/// Whether an HDF5 file has Keras 3's layout (a `layers` group, no `layer_names` attribute).
pub fn is_keras3(file: &File) -> bool {
    file.root().groups().is_ok_and(|g| g.iter().any(|n| n == "layers"))
        && file.root().attrs().is_ok_and(|a| !a.contains_key("layer_names"))
}

/// Reads a `.keras` archive.
pub fn read_archive(bytes: &[u8], path: &str) -> Result<KerasImport, WeightsError> {
    let bad = |what: String| WeightsError::File(FileError::Format { path: path.to_string(), what });
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| bad(format!("bad .keras archive: {e}")))?;
    let mut member = |name: &str| -> Result<Vec<u8>, WeightsError> {
        let mut f = zip.by_name(name).map_err(|e| bad(format!("{name}: {e}")))?;
        // The declared size bounds the allocation; a damaged archive fails in the read.
        let mut out = Vec::with_capacity((f.size() as usize).min(bytes.len().saturating_mul(64)));
        f.read_to_end(&mut out).map_err(|e| bad(format!("{name}: {e}")))?;
        Ok(out)
    };
    let config: serde_json::Value =
        serde_json::from_slice(&member("config.json")?).map_err(|e| bad(format!("config.json is not JSON: {e}")))?;
    let weights = member("model.weights.h5")?;
    let file = File::from_bytes(weights).map_err(|e| bad(format!("model.weights.h5 is not readable HDF5: {e}")))?;
    let layers = layers_of(&file, path)?;
    let order = config_order(&config);
    if order.is_empty() {
        return Err(bad("config.json lists no layers".into()));
    }
    let mut raw = Vec::with_capacity(order.len());
    for name in order {
        match layers.iter().position(|(n, _, _)| *n == name) {
            Some(i) => raw.push(read_vars(&layers[i].1, &name, path)?),
            // Layers of the config without a group (an InputLayer) weigh nothing.
            None => raw.push((name, vec![])),
        }
    }
    from_layers(raw, Some(&config), None, None, path)
}

/// Reads a Keras 3 `.weights.h5` (already opened).
pub fn read_weights(file: &File, path: &str) -> Result<KerasImport, WeightsError> {
    let bad = |what: String| WeightsError::File(FileError::Format { path: path.to_string(), what });
    let layers = layers_of(file, path)?;
    // (class path, counter) from `conv2d_3`; the layers of each class in counter order.
    let class_of = |p: &str| -> (String, usize) {
        match p.rsplit_once('_') {
            Some((class, n)) if !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) => {
                (class.to_string(), n.parse().unwrap_or(0))
            }
            _ => (p.to_string(), 0),
        }
    };
    let of_class = |class: &str| -> Vec<&(String, Group, String)> {
        let mut v: Vec<_> = layers.iter().filter(|(_, _, p)| class_of(p).0 == class).collect();
        v.sort_by_key(|(_, _, p)| class_of(p).1);
        v
    };
    let (convs, norms, dense) = (of_class("conv2d"), of_class("batch_normalization"), of_class("dense"));
    if !norms.is_empty() && norms.len() != convs.len() {
        return Err(bad(format!(
            "{} convolutions and {} BatchNormalizations: a .weights.h5 file does not record where each \
             BatchNormalization sits; read the model's .keras file instead (its config.json does)",
            convs.len(),
            norms.len()
        )));
    }
    let mut ordered = Vec::new();
    for (i, c) in convs.iter().enumerate() {
        ordered.push(*c);
        if let Some(n) = norms.get(i) {
            ordered.push(*n);
        }
    }
    ordered.extend(dense);
    let weighted = layers.iter().filter(|(_, g, _)| g.datasets().is_ok_and(|d| !d.is_empty())).count();
    if ordered.len() != weighted {
        return Err(bad(format!(
            "layers other than Conv2D, BatchNormalization and Dense carry weights ({} of {weighted} placed); \
             read the model's .keras file instead",
            ordered.len()
        )));
    }
    let raw = ordered.iter().map(|(name, g, _)| read_vars(g, name, path)).collect::<Result<Vec<_>, _>>()?;
    from_layers(raw, None, None, None, path)
}

/// Every `layers/<path>/vars` group: (the layer's own name, the group, the class path).
fn layers_of(file: &File, path: &str) -> Result<Vec<(String, Group, String)>, WeightsError> {
    let bad = |what: String| WeightsError::File(FileError::Format { path: path.to_string(), what });
    let top = file.group("layers").map_err(|e| bad(format!("no `layers` group: {e}")))?;
    let mut out = vec![];
    for p in top.groups().map_err(|e| bad(format!("layers: {e}")))? {
        let Ok(vars) = file.group(&format!("layers/{p}/vars")) else { continue };
        let name = vars
            .attrs()
            .ok()
            .and_then(|a| a.get("name").and_then(super::keras::strings).and_then(|s| s.into_iter().next()))
            .unwrap_or_else(|| p.clone());
        out.push((name, vars, p));
    }
    Ok(out)
}

/// A layer's variables `0`, `1`, … in order, as the Keras 2 reader takes them.
fn read_vars(vars: &Group, name: &str, path: &str) -> Result<RawLayer, WeightsError> {
    let bad = |what: String| WeightsError::File(FileError::Format { path: path.to_string(), what });
    let mut names = vars.datasets().map_err(|e| bad(format!("{name}: {e}")))?;
    names.sort_by_key(|n| n.parse::<usize>().unwrap_or(usize::MAX));
    let mut tensors = Vec::with_capacity(names.len());
    for n in names {
        let ds = vars.dataset(&n).map_err(|e| bad(format!("{name}/vars/{n}: {e}")))?;
        tensors.push(super::keras::read_dataset(&ds).map_err(|e| bad(format!("{name}/vars/{n}: {e}")))?);
    }
    Ok((name.to_string(), tensors))
}

/// The layer names of a Keras 3 `config.json`, in the model's order (a functional model's or a
/// Sequential's `config.layers`).
fn config_order(config: &serde_json::Value) -> Vec<String> {
    config["config"]["layers"]
        .as_array()
        .map(|layers| layers.iter().filter_map(|l| l["config"]["name"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}
